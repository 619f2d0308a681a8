"""Trainer data handling, batch plan, config and recipe argument checks (no training)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from selftrain.models import load_tokenizer
from selftrain.train import DataError, TrainConfig
from selftrain.train.data import (
    IGNORE,
    collate,
    epoch_batches,
    load_records,
    split_micro_batches,
    tokenize_records,
)
from selftrain.train.trainer import lr_factor

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny-random")


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.mark.parametrize(
    "line, kind, needle",
    [
        ('{"prompt": "a", "response": "b"', "sft", "line 2: not valid JSON"),
        ('{"prompt": "a"}', "sft", "line 2: missing field 'response'"),
        ('{"prompt": 3, "response": "b"}', "sft", "line 2: field 'prompt' must be a string or a list"),
        ('{"prompt": [{"role": "user"}], "response": "b"}', "sft", "line 2: field 'prompt' message 0"),
        ('{"prompt": "a", "response": ""}', "sft", "line 2: field 'response' is empty"),
        ('{"prompt": "a", "chosen": "b", "rejected": 5}', "dpo", "line 2: field 'rejected' must be a string"),
        ('["not", "an", "object"]', "sft", "line 2: expected a JSON object"),
    ],
)
def test_malformed_lines_name_file_line_and_field(tmp_path, line, kind, needle):
    good = (
        '{"prompt": "a", "response": "b"}'
        if kind == "sft"
        else '{"prompt": "a", "chosen": "b", "rejected": "c"}'
    )
    path = _write(tmp_path / "d.jsonl", [good, line])
    with pytest.raises(DataError) as err:
        load_records(path, kind)
    assert str(path) in str(err.value) and needle in str(err.value)


def test_missing_file_and_in_memory_record_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_records(tmp_path / "nope.jsonl", "sft")
    with pytest.raises(DataError, match="data record 1: missing field 'chosen'"):
        load_records(
            [{"prompt": "p", "chosen": "c", "rejected": "r"}, {"prompt": "p", "rejected": "r"}], "dpo"
        )


def test_tokenization_masks_response_and_eos_only(tok):
    recs = [{"prompt": "Say hi.", "response": "Hi there"}]
    (ex,), _ = tokenize_records(recs, tok, "sft", 64)
    prompt = tok("Say hi.", add_special_tokens=False)["input_ids"]
    resp = tok("Hi there", add_special_tokens=False)["input_ids"]
    assert ex.sequences[0] == prompt + resp + [tok.eos_token_id]
    mb = collate([ex], tok.pad_token_id)
    trained = mb.targets[0][mb.targets[0] != IGNORE].tolist()
    assert trained == resp + [tok.eos_token_id]  # the prompt is never a target
    assert ex.trained_tokens == len(trained)


def test_chat_messages_go_through_the_template(tok):
    msgs = [{"role": "user", "content": "What is 2+2?"}]
    (ex,), _ = tokenize_records([{"prompt": msgs, "response": "4"}], tok, "sft", 128)
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert ex.sequences[0][: ex.prompt_lens[0]] == tok(text, add_special_tokens=False)["input_ids"]


def test_truncation_and_skips_are_counted(tok):
    long_resp = " ".join(["word"] * 50)
    recs = [
        {"prompt": "short", "response": long_resp},
        {"prompt": " ".join(["x"] * 40), "response": "ok"},
        {"prompt": "fine", "response": "ok"},
    ]
    examples, stats = tokenize_records(recs, tok, "sft", 20)
    assert stats.truncated_responses == 1 and stats.skipped_long_prompt == 1
    assert [ex.index for ex in examples] == [0, 2]
    assert all(len(s) <= 20 for ex in examples for s in ex.sequences)
    with pytest.raises(DataError, match="nothing to train"):
        tokenize_records([recs[1]], tok, "sft", 20)


def test_pairs_collate_chosen_then_rejected(tok):
    recs = [{"prompt": f"p{i}", "chosen": "good answer", "rejected": "bad"} for i in range(2)]
    examples, _ = tokenize_records(recs, tok, "dpo", 64)
    mb = collate(examples, tok.pad_token_id)
    assert mb.input_ids.shape[0] == 4 and mb.n_examples == 2
    assert mb.input_ids[0, : len(examples[0].sequences[0])].tolist() == examples[0].sequences[0]
    assert mb.input_ids[2, : len(examples[0].sequences[1])].tolist() == examples[0].sequences[1]
    assert mb.real_tokens == sum(ex.n_tokens for ex in examples)


def test_plan_is_seeded_complete_and_length_grouped():
    lengths = [(i * 37) % 101 + 1 for i in range(200)]
    a = epoch_batches(lengths, 8, seed=3, epoch=0, group_by_length=True, window=4)
    assert a == epoch_batches(lengths, 8, seed=3, epoch=0, group_by_length=True, window=4)
    assert a != epoch_batches(lengths, 8, seed=3, epoch=1, group_by_length=True, window=4)
    assert sorted(j for b in a for j in b) == list(range(200))

    def padding(batches):
        return sum(len(b) * max(lengths[j] for j in b) - sum(lengths[j] for j in b) for b in batches)

    plain = epoch_batches(lengths, 8, seed=3, epoch=0, group_by_length=False, window=4)
    assert sorted(j for b in plain for j in b) == list(range(200))
    assert padding(a) < 0.5 * padding(plain)


def test_micro_batches_are_the_same_count_on_every_rank():
    lengths = [5, 9, 2, 7, 3]
    per_rank = split_micro_batches([0, 1, 2, 3, 4], lengths, micro=2, world=2)
    assert [len(m) for m in per_rank] == [2, 2]
    assert sorted(j for m in per_rank for mb in m for j in mb) == [0, 1, 2, 3, 4]
    assert per_rank[1][1] == []  # a placeholder keeps rank 1 in step with rank 0
    single = split_micro_batches([0, 1, 2, 3, 4], lengths, micro=2, world=1)
    assert sorted(j for mb in single[0] for j in mb) == [0, 1, 2, 3, 4]


def test_lr_schedule_warms_up_then_decays():
    total, warmup = 100, 10
    f = [lr_factor(s, total, warmup, 0.1) for s in range(total)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(x >= y for x, y in zip(f[10:], f[11:]))
    assert f[-1] > 0.1 and f[-1] < 0.12


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="TrainConfig.lr=-1"):
        TrainConfig(lr=-1)
    with pytest.raises(ValueError, match="dtype"):
        TrainConfig(dtype="fp8")


def test_recipe_rejects_unknown_keys_listing_valid_ones(tmp_path):
    data = _write(tmp_path / "d.jsonl", ['{"prompt": "a", "response": "b"}'])
    r = subprocess.run(
        [sys.executable, "recipes/sft.py", f"data={data}", f"out={tmp_path / 'o'}", "learning_rate=1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        r.returncode == 2 and "unknown key(s) learning_rate" in r.stderr and "global_batch_size" in r.stderr
    )
    bad = _write(tmp_path / "bad.jsonl", ['{"prompt": "a", "chosen": "b"}'])
    r = subprocess.run(
        [
            sys.executable,
            "recipes/dpo.py",
            "config=recipes/configs/dpo.yaml",
            "model=tiny-random",
            f"data={bad}",
            f"out={tmp_path / 'o2'}",
            "wandb_mode=disabled",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and f"{bad} line 1: missing field 'rejected'" in r.stderr, r.stderr
