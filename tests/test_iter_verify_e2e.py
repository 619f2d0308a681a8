"""iter_verify end to end with the real sampler, MC verifier, trainer (RPO) and W&B offline:
tiny-random on arith, 2 update rounds, under `torchrun --nproc_per_node=2` (gloo).

The task is `half_arith` (tests/half_arith.py): its gold reward is 1 for about half of all texts, so
a random model gets non-trivial accuracies, gaps and pass@k; the MC verifier's quantile filter keeps
about half of each prompt's samples whatever the model says, so every round trains.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from half_arith import run_recipe

ARGS = [
    "model=tiny-random",
    "task=half_arith",
    "iterations=2",
    "n_samples=4",
    "filter=mc:top=0.5",
    "update=rpo",
    "max_pairs_per_question=2",
    "data.task_options={train_size: 4, test_size: 1, ood_size_per_level: 1}",
    "sampling.max_new_tokens=8",
    "verify.max_new_tokens=8",
    "dpo.global_batch_size=4",
    "dpo.micro_batch_size=2",
    "dpo.lr=1e-4",
    "sampler.kv_cache_tokens=4096",
    "sampler.max_num_seqs=16",
]

UNIT_KEYS = ("accuracy", "filtered_accuracy", "kept_fraction", "unparseable", "unparseable/mc",
             "pass@k/1", "pass@k/2", "pass@k/4", "sample/truncated_fraction")
SIGNED_KEYS = ("gap",)
DECOMP_KEYS = ("decomp/improvement", "decomp/prev_gap", "decomp/update_error")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("iter_verify_e2e") / "run"
    proc = run_recipe("iter_verify", [*ARGS, f"out_dir={out}"], procs=2)
    assert "## Per round" in proc.stdout  # the recipe prints the report
    return out


def test_two_process_run_logs_every_round_key_in_range(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    for r in rows:
        for key in UNIT_KEYS:
            assert key in r and 0.0 <= r[key] <= 1.0 + 1e-12, (r["iteration"], key, r.get(key))
        assert -1.0 <= r["gap"] <= 1.0
        assert r["relative_gap"] is None or -1.0 - 1e-12 <= r["relative_gap"] <= 1.0 + 1e-12
        # pass@k is non-decreasing in k and pass@1 is the sample accuracy.
        assert r["pass@k/1"] <= r["pass@k/2"] + 1e-12 <= r["pass@k/4"] + 2e-12
        assert abs(r["pass@k/1"] - r["accuracy"]) < 1e-9
        assert r["kept_fraction"] > 0 and r["data/records"] > 0
    for r in rows[1:]:
        for key in DECOMP_KEYS:
            assert -1.0 <= r[key] <= 1.0, key
        assert abs(r["decomp/improvement"] - r["decomp/prev_gap"] - r["decomp/update_error"]) < 1e-9
    for r in rows[:2]:  # f_1 and f_2 came out of real RPO steps
        assert r["train/skipped"] == 0 and r["train/steps"] >= 1
    assert rows[1]["model_source"] == 1 and rows[2]["model_source"] == 2
    assert (run_dir / "round_1" / "trainer" / "model").is_dir()


def test_artifacts_report_plot_and_wandb(run_dir):
    for t in range(3):
        for stage in ("sample", "verify", "filter"):
            assert (run_dir / f"round_{t}" / stage / ".done").is_file()
    assert not (run_dir / "round_2" / "train").exists()
    scores = json.loads((run_dir / "round_0" / "verify" / "scores.json").read_text())
    mc = scores["methods"]["mc"]["scores"]
    assert len(mc) == 4 and all(len(row) == 4 and all(0.0 <= s <= 1.0 for s in row) for row in mc)
    report = (run_dir / "report.md").read_text()
    assert "| 2 |" in report and "final (no update)" in report and "pass@k per round" in report
    assert (run_dir / "plots" / "iter_verify.png").stat().st_size > 1000
    assert list((run_dir / "wandb").glob("offline-run-*"))
