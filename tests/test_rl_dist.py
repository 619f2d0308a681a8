"""Online RL under torchrun: a 2-process FSDP2 (gloo) block, killed right after a sharded state
save and resumed, equals one uninterrupted process (same sampled tokens, losses and weights).

Both ranks sample their half of each step's prompts (the sampler gathers the completions), grade
the whole step and train on their half of the groups; the loss's normalisers count the whole
batch, so the split does not change it. Weights are compared at a small lr for the reason given in
test_train_dist: AdamW moves an entry whose gradient is ~0 on both sides by up to lr either way.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from killers import kill_after_save
from test_train_dist import ROOT, _assert_same_weights, _rows, _torchrun

from selftrain.train.config import TrainConfig
from selftrain.train.grpo import RLConfig, rl_block

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)

PROMPTS = [f"Question: {i}+{i + 1}=?\nAnswer:" for i in range(8)]
CFG = dict(
    steps=4,
    prompts_per_step=4,
    group_size=4,
    max_new_tokens=4,
    temperature=1.0,
    updates_per_batch=2,  # a second update per batch: ratios != 1 against the sampling policy
    beta=0.05,
    clip_high=0.28,
)
OPTIM = dict(lr=1e-4, warmup_ratio=0.0, micro_batch_size=3, save_every=2, wandb_mode="disabled")


def first_token_even(example, completion) -> float:
    return float(completion.token_ids[0] % 2 == 0)


WORKER = kill_after_save("int(sys.argv[2])") + f"""
sys.path.insert(0, {str(ROOT / "tests")!r})
from selftrain import dist
from selftrain.train.config import TrainConfig
from selftrain.train.grpo import RLConfig, rl_block
from test_rl_dist import CFG, OPTIM, PROMPTS, first_token_even
dist.init_distributed()
cfg = RLConfig(**CFG, optim=TrainConfig(**OPTIM))
rl_block(cfg, "tiny-random", list(range(len(PROMPTS))), PROMPTS, first_token_even, sys.argv[1],
         ref_model="tiny-random")
"""


def _config() -> RLConfig:
    return RLConfig(**CFG, optim=TrainConfig(**OPTIM))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The block on one process without torch.distributed, never killed: what both tests match."""
    out = tmp_path_factory.mktemp("rl") / "one"
    rl_block(_config(), "tiny-random", list(range(len(PROMPTS))), PROMPTS, first_token_even, out,
             ref_model="tiny-random")
    return out


def _same_rows(one: list[dict], two: list[dict]) -> None:
    assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2, 3, 4]
    for r1, r2 in zip(one, two):
        assert r2["reward/mean"] == r1["reward/mean"]  # the same sampled tokens
        assert r2["response_length"] == r1["response_length"]
        for key in ("loss", "kl", "entropy_mc", "clip_fraction"):
            assert r2[key] == pytest.approx(r1[key], abs=1e-5), key


def test_two_process_block_with_kill_and_resume_equals_one_process(tmp_path, uninterrupted):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out2 = tmp_path / "two"
    killed = _torchrun([str(script), str(out2), "2"])
    assert killed.returncode != 0 and not (out2 / "model").exists(), killed.stderr[-2000:]
    assert (out2 / "state" / "latest").read_text().strip() == "step-00000002"
    assert [r["step"] for r in _rows(out2)] == [1, 2]
    resumed = _torchrun([str(script), str(out2), "0"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not (out2 / "state").exists()

    _same_rows(_rows(uninterrupted), _rows(out2))
    _assert_same_weights(uninterrupted, out2, atol=1e-4)


KILLER = kill_after_save("2") + f"""
sys.path.insert(0, {str(ROOT / "tests")!r})
from test_rl_dist import CFG, OPTIM, PROMPTS, first_token_even
from selftrain.train.config import TrainConfig
from selftrain.train.grpo import RLConfig, rl_block
rl_block(RLConfig(**CFG, optim=TrainConfig(**OPTIM)), "tiny-random", list(range(len(PROMPTS))), PROMPTS,
         first_token_even, sys.argv[1], ref_model="tiny-random")
"""


def test_one_process_kill_and_resume_equals_uninterrupted_and_refuses_other_settings(tmp_path, uninterrupted):
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    run = tmp_path / "run"
    killed = subprocess.run([sys.executable, str(script), str(run)], cwd=ROOT, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert (run / "state" / "latest").read_text().strip() == "step-00000002"
    # rows the killed run logged after its last save are redone, not kept twice
    for name, row in (("metrics.jsonl", {"reward/mean": -1.0}), ("rollouts.jsonl", {"questions": []})):
        with (run / name).open("a") as fh:
            fh.write(json.dumps({"step": 3, **row}) + "\n")
    questions = list(range(len(PROMPTS)))
    other = RLConfig(**{**CFG, "temperature": 0.5}, optim=TrainConfig(**OPTIM))
    with pytest.raises(RuntimeError, match="other settings"):  # a save is resumed by its own run only
        rl_block(other, "tiny-random", questions, PROMPTS, first_token_even, run, ref_model="tiny-random")
    ref = uninterrupted
    rl_block(_config(), "tiny-random", questions, PROMPTS, first_token_even, run, ref_model="tiny-random")
    _same_rows(_rows(ref), _rows(run))
    rollouts = [(out / "rollouts.jsonl").read_text().splitlines() for out in (ref, run)]
    assert rollouts[0] == rollouts[1] and len(rollouts[0]) == 4  # rewound to the save, then redone
    _assert_same_weights(ref, run, atol=1e-6)
    assert not (run / "state").exists()


def test_prompts_per_step_must_split_over_ranks(tmp_path, monkeypatch):
    from selftrain import dist

    monkeypatch.setattr(dist, "world_size", lambda: 3)
    with pytest.raises(ValueError, match=r"prompts_per_step=4 must be a multiple of the 3 processes"):
        rl_block(_config(), "tiny-random", [0], ["q"], first_token_even, tmp_path, ref_model="tiny-random")
