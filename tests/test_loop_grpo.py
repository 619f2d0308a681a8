"""Online RL inside the measured loop: iter_grpo / iter_rloo end to end on tiny-random.

M1 = gold SFT, M2 = one block of online steps; the evaluation, report, metrics.jsonl and resume are
the offline loops' own. The task is half_arith (tests/half_arith.py): reward 1 for half of all
texts, so every group has both rewards and the advantages are not all zero.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from half_arith import REPO, recipe_command, run_recipe, subprocess_env

LOOP = [
    "model=tiny-random",
    "task=half_arith",
    "iterations=2",
    "data.task_options={train_size: 4, test_size: 4, ood_size_per_level: 1}",
    "eval.n_samples=2",
    "eval.is_ns=[2]",
    "eval.max_new_tokens=8",
    "eval.semantic=false",
    "sft.global_batch_size=4",
    "sft.micro_batch_size=2",
    "rl.steps=3",
    "rl.prompts_per_step=2",
    "rl.group_size=4",
    "rl.max_new_tokens=8",
    "rl.optim.lr=1e-3",
    "rl.optim.micro_batch_size=4",
    "wandb.mode=disabled",
]


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


RLOO_KL = ["rl.beta=0.05", "rl.reference=sft", "rl.updates_per_batch=2"]


@pytest.mark.parametrize("paradigm, extra, kl", [("iter_grpo", [], False), ("iter_rloo", RLOO_KL, True)])
def test_an_online_rl_iteration_is_measured_like_any_other(tmp_path, paradigm, extra, kl):
    out = tmp_path / "run"
    args = [f"out_dir={out}", *LOOP, *extra]
    proc = run_recipe("iter_grpo", [f"paradigm={paradigm}", *args], procs=1)
    kind = paradigm.removeprefix("iter_")
    assert f"{kind}: 3 online steps" in proc.stdout + proc.stderr
    result = json.loads((out / "iter_2" / "train" / "result.json").read_text())
    assert result["loss"] == kind and result["steps"] == 3 and not result["skipped"]
    assert not (out / "iter_2" / "sample").exists() and not (out / "iter_2" / "build").exists()
    steps = _rows(out / "iter_2" / "trainer" / "train_log.jsonl")
    assert [r["step"] for r in steps] == [1, 2, 3]
    for r in steps:
        assert 0.0 <= r["reward/mean"] <= 1.0 and 0.0 <= r["zero_adv_fraction"] <= 1.0
        assert r["sampling_tokens_per_s"] > 0 and r["training_tokens_per_s"] > 0 and r["sync_s"] >= 0
        assert ("kl" in r) == kl
    assert steps[0]["sync_s"] == 0.0 and steps[1]["sync_s"] > 0  # refreshed in process after step 1
    logged = {r["iteration"]: r for r in _rows(out / "metrics.jsonl")}
    assert set(logged) == {0, 1, 2}
    assert logged[2]["step_kind"] == kind and "train/reward/mean" in logged[2]
    assert "pass@1" in logged[2] and "coverage" in logged[2]
    report = (out / "report.md").read_text()
    assert "M2" in report and kind in report
    assert "](plots/rl_curves.png)" in report and (out / "plots" / "rl_curves.png").stat().st_size > 0

    # the same command again: every stage is found finished, nothing is recomputed
    before = (out / "iter_2" / "eval" / "metrics.json").read_text()
    again = run_recipe("iter_grpo", [f"paradigm={paradigm}", *args], procs=1)
    assert "3 online steps" in again.stdout + again.stderr
    assert (out / "iter_2" / "eval" / "metrics.json").read_text() == before
    assert len(_rows(out / "iter_2" / "trainer" / "train_log.jsonl")) == 3


def test_a_block_killed_midway_reruns_to_the_uninterrupted_result(tmp_path):
    """SIGKILL once the block has logged a step; the rerun resumes the block from its saved state
    (rl.optim.save_every=1; or starts it over from M1 when the kill came before the save: seeded,
    the same steps) and ends with the uninterrupted run's model, metrics and a log of one block."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    loop = [*LOOP, "rl.optim.save_every=1"]
    run_recipe("iter_grpo", [f"out_dir={whole}", *loop], procs=1)
    log = killed / "iter_2" / "trainer" / "train_log.jsonl"
    proc = subprocess.Popen(recipe_command("iter_grpo", [f"out_dir={killed}", *loop], 1), cwd=REPO,
                            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while not (log.is_file() and log.read_text().strip()) and proc.poll() is None:
            assert time.monotonic() < deadline, "the block never logged a step"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    run_recipe("iter_grpo", [f"out_dir={killed}", *loop], procs=1)
    for name in ("iter_2/eval/metrics.json", "iter_2/train/result.json"):
        assert json.loads((killed / name).read_text()) == json.loads((whole / name).read_text()), name
    assert [r["step"] for r in _rows(log)] == [1, 2, 3]


def test_an_unknown_reward_lists_the_registered_ones():
    from selftrain.tasks import get_task
    from selftrain.train.rewards import make_reward

    with pytest.raises(ValueError, match=r"rl.reward='nope': unknown; registered: self_verify, task"):
        make_reward("nope", get_task("arith"))


def test_data_set_interventions_are_refused_for_an_online_only_schedule():
    from selftrain.config import ConfigError, parse_cli
    from selftrain.loop.config import LoopConfig

    with pytest.raises((ConfigError, ValueError), match="interventions.accumulate_data: shapes the data set"):
        parse_cli(LoopConfig, ["paradigm=iter_grpo", "interventions.accumulate_data=true"])
    cfg = parse_cli(LoopConfig, ["paradigm=iter_grpo", "interventions.restart_from_base=true"])
    assert cfg.interventions.restart_from_base  # an RL block can start from M0 as well
