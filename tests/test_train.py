"""End-to-end trainer runs on the tiny-random model, one process without torch.distributed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from killers import kill_after_save
from safetensors.torch import load_file

import selftrain.train.fsdp as fsdp_mod
from selftrain.dist import default_device
from selftrain.models import load_tokenizer
from selftrain.train import NonFiniteError, TrainConfig, reference, train

ROOT = Path(__file__).resolve().parents[1]
MODEL = "tiny-random"


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model" / "model.safetensors"))


def test_sft_memorises_four_examples_and_saves_a_transformers_checkpoint(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    import selftrain.train.trainer as trainer_mod

    recs = [
        {"prompt": f"Q{i}: add {i} and {i + 3}.", "response": f"{i} plus {i + 3} is {2 * i + 3}."}
        for i in range(4)
    ]
    probe = torch.tensor([[1, 2, 3, 400, 500, 600, 7]])
    seen = {}
    real_save = trainer_mod.save_checkpoint

    def spy(model, tokenizer, path):  # logits of the trained model just before it is written
        with torch.no_grad():
            seen["logits"] = model(input_ids=probe.to(model.device)).logits.cpu()
        return real_save(model, tokenizer, path)

    monkeypatch.setattr(trainer_mod, "save_checkpoint", spy)
    cfg = TrainConfig(
        lr=2e-2,
        epochs=20,
        global_batch_size=4,
        micro_batch_size=4,
        warmup_ratio=0.0,
        min_lr_ratio=0.5,
        wandb_mode="disabled",
    )
    res = train(cfg, MODEL, recs, tmp_path / "run")
    assert not res.skipped and res.steps == 20 and res.checkpoint == tmp_path / "run" / "model"
    losses = [r["loss"] for r in _rows(tmp_path / "run")]
    assert losses[0] > 5 and losses[-1] < 0.05, losses
    assert res.metrics["loss"] == losses[-1]

    # the saved folder loads in plain transformers and gives the trained model's logits
    hf = AutoModelForCausalLM.from_pretrained(str(res.checkpoint)).eval()
    # exact in fp32 on the CPU (the suite's device); trained in bf16 on a GPU, the spy's logits carry
    # bf16 rounding that the fp32 reload does not
    tol = 1e-5 if default_device().type == "cpu" else 5e-2
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=probe).logits, seen["logits"], atol=tol, rtol=tol)

    # greedy decoding reproduces each memorised response and stops at EOS
    tok = load_tokenizer(res.checkpoint)
    for r in recs:
        ids = torch.tensor([tok(r["prompt"], add_special_tokens=False)["input_ids"]])
        gen = hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=24,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
        assert tok.decode(gen[0, ids.shape[1] :]) == r["response"] + tok.eos_token

    # a finished run is not trained again
    again = train(cfg, MODEL, recs, tmp_path / "run")
    assert again.skipped and again.steps == 20 and again.metrics["loss"] == losses[-1]


def test_dpo_raises_margin_and_reuses_cached_reference(tmp_path):
    pairs = [
        {
            "prompt": f"Question {i}: what is {i}+{i}?",
            "chosen": f"The answer is {2 * i}.",
            "rejected": f"I think it is {2 * i + 1}, maybe.",
        }
        for i in range(4)
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    cfg = TrainConfig(
        lr=1e-3,
        epochs=6,
        global_batch_size=4,
        micro_batch_size=2,
        beta=0.1,
        warmup_ratio=0.0,
        wandb_mode="disabled",
    )
    before = reference.COMPUTE_COUNT
    train(cfg, MODEL, str(data), tmp_path / "a", loss="dpo")
    rows = _rows(tmp_path / "a")
    assert reference.COMPUTE_COUNT == before + 1 and rows[0]["ref/cache_hit"] == 0
    # policy == reference at the first step: 0 up to rounding. fp32 on the CPU (the suite's device)
    # stays under 1e-4; in bf16 on a GPU (SELFTRAIN_DEVICE=cuda) the reference pass and the training
    # forward round differently, and an H100 gave 3.7e-4 (beta 0.1: 3.7e-3 nats in the sums)
    tol = 1e-4 if default_device().type == "cpu" else 5e-3
    assert abs(rows[0]["rewards/margin"]) < tol
    assert rows[-1]["rewards/margin"] > rows[0]["rewards/margin"] + 1.0
    assert rows[-1]["rewards/accuracy"] == 1.0 and rows[-1]["loss"] < rows[0]["loss"]

    caches = list(tmp_path.glob("pairs.jsonl.ref-logps-*.pt"))  # stored beside the data
    assert len(caches) == 1
    mtime = caches[0].stat().st_mtime_ns
    train(
        TrainConfig(lr=5e-4, epochs=1, global_batch_size=4, micro_batch_size=4, wandb_mode="disabled"),
        MODEL,
        str(data),
        tmp_path / "b",
        loss="rpo",
    )
    assert reference.COMPUTE_COUNT == before + 1  # not recomputed
    assert caches[0].stat().st_mtime_ns == mtime and _rows(tmp_path / "b")[0]["ref/cache_hit"] == 1


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_state(tmp_path, monkeypatch):
    recs = [{"prompt": f"p{i}", "response": f"answer number {i}"} for i in range(4)]
    cfg = TrainConfig(
        lr=1e-3, epochs=6, global_batch_size=2, micro_batch_size=2, save_every=2, wandb_mode="disabled"
    )
    real = fsdp_mod.sequence_logprob_sums
    calls = {"n": 0}

    def poisoned(hidden, weight, targets):
        calls["n"] += 1
        sums, counts = real(hidden, weight, targets)
        return (sums * float("nan"), counts) if calls["n"] == 5 else (sums, counts)  # 5th forward = step 5

    monkeypatch.setattr(fsdp_mod, "sequence_logprob_sums", poisoned)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteError, match=r"step 5: non-finite loss") as err:
        train(cfg, MODEL, recs, out)
    assert "step-00000004" in str(err.value)
    assert not (out / "model").exists() and not (out / "train_result.json").exists()
    assert sorted(p.name for p in (out / "state").iterdir()) == ["latest", "step-00000004"]
    assert [r["step"] for r in _rows(out)] == [1, 2, 3, 4]

    monkeypatch.setattr(fsdp_mod, "sequence_logprob_sums", real)  # the fault is gone: resume finishes
    res = train(cfg, MODEL, recs, out)
    assert res.steps == 12 and (out / "model" / "model.safetensors").is_file()
    assert _rows(out)[4]["resumed_from"] == 4 and not (out / "state").exists()


KILL_RECS = [{"prompt": f"prompt {i}", "response": "response " * (i + 1)} for i in range(6)]
KILL_CFG = dict(
    lr=2e-3, epochs=3, global_batch_size=3, micro_batch_size=2, save_every=2, wandb_mode="disabled"
)
KILLER = kill_after_save("int(sys.argv[2])") + f"""
from selftrain.train import TrainConfig, train
train(TrainConfig(**{KILL_CFG!r}), "tiny-random", {KILL_RECS!r}, sys.argv[1])
"""


def test_kill_and_resume_equals_uninterrupted(tmp_path):
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    train(TrainConfig(**KILL_CFG), MODEL, KILL_RECS, tmp_path / "ref")  # uninterrupted, in this process
    killed = subprocess.run([sys.executable, str(script), str(tmp_path / "run"), "4"], cwd=ROOT, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "run" / "model").exists()
    assert (tmp_path / "run" / "state" / "latest").read_text().strip() == "step-00000004"
    train(TrainConfig(**KILL_CFG), MODEL, KILL_RECS, tmp_path / "run")  # resumes from step 4
    ref, got = _weights(tmp_path / "ref"), _weights(tmp_path / "run")
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], atol=1e-6, rtol=0, msg=name)
    ref_loss = [r["loss"] for r in _rows(tmp_path / "ref")]
    run_rows = _rows(tmp_path / "run")
    assert [r["step"] for r in run_rows] == [1, 2, 3, 4, 5, 6]
    assert run_rows[4]["resumed_from"] == 4
    assert [r["loss"] for r in run_rows] == pytest.approx(ref_loss, abs=1e-6)
    assert not (tmp_path / "run" / "state").exists()
