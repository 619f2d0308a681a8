"""recipes/study.py (selftrain/loop/study.py): a grid of loop runs, resumable, and the study report,
on the loop engine's fakes (tests/test_loop_engine.py) so the grid runs in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_loop_engine import FAIL, TRAIN_CALLS, fakes, no_plots  # noqa: F401 - pytest fixtures

from selftrain.config import ConfigError
from selftrain.loop.study import parse_study, run_study

BASE = [
    "model=fake-base", "task=arith", "iterations=3", "n_samples=4", "max_pairs_per_question=2",
    "data.task_options={train_size: 12, test_size: 12, ood_size_per_level: 2}",
    "eval.n_samples=4", "eval.is_ns=[2,4]", "eval.semantic=false", "wandb.mode=disabled",
]
GRID = ["grid.paradigm=[iter_sft,iter_dpo,iter_sft_dpo]"]


def test_grid_expands_to_named_cells_and_checks_every_config(tmp_path):
    plan = parse_study([*BASE, *GRID, "grid.seed=[0,1]", f"out_dir={tmp_path}"])
    names = [name for name, _ in plan.cells()]
    assert names[:2] == ["paradigm=iter_sft,seed=0", "paradigm=iter_sft,seed=1"] and len(names) == 6
    words = dict(w.split("=", 1) for w in plan.cells()[3][1])
    assert (words["paradigm"], words["seed"], words["out_dir"]) == (
        "iter_dpo", "1", str(tmp_path / "cells" / "paradigm=iter_dpo,seed=1"))
    with pytest.raises(ConfigError, match="non-empty list"):
        parse_study(["grid.seed=3"])
    with pytest.raises(ConfigError, match="cell=6"):
        parse_study([*GRID, "grid.seed=[0,1]", "cell=6"])
    with pytest.raises(ConfigError, match="cell paradigm=iter_sft: .*unknown key"):
        run_study([*BASE, *GRID, "sft.lrr=1", f"out_dir={tmp_path}"])


def test_study_runs_every_cell_resumes_and_writes_figure_2(fakes, no_plots, tmp_path):  # noqa: F811
    out = tmp_path / "study"
    argv = [*BASE, *GRID, f"out_dir={out}"]
    FAIL["at"] = 5  # the second cell's second training crashes
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_study(argv, show_progress=False)
    calls_before = len(TRAIN_CALLS)
    FAIL.clear()
    assert run_study([*argv, "cell=2"], show_progress=False) is None  # one cell; the second is unfinished
    report = run_study(argv, show_progress=False)  # resumes the crashed cell, skips the finished ones
    assert report == out / "study.md"
    # 3 cells x 3 trainings: 4 had finished before the crash (the 5th crashed and is redone), none twice
    assert len(TRAIN_CALLS) - calls_before == 9 - 4
    text = report.read_text()
    for paradigm in ("iter_sft", "iter_dpo", "iter_sft_dpo"):
        assert f"| paradigm={paradigm} |" in text
    results = json.loads((out / "study_results.json").read_text())["figure_2"]
    assert [r["paradigm"] for r in results] == ["iter_sft", "iter_dpo", "iter_sft_dpo"]
    for r in results:
        rows = [json.loads(x) for x in (out / "cells" / r["cell"] / "metrics.jsonl").read_text().splitlines()]
        by_t = {row["iteration"]: row for row in rows}
        assert r["m1_coverage"] == by_t[1]["coverage"]
        best = max((t for t in by_t if t >= 1), key=lambda t: (by_t[t]["pass@1"], -t))
        assert r["best_iteration"] == best and r["best_pass@1"] == by_t[best]["pass@1"]
        if best != 1:
            assert {x["metric"] for x in r["tests"]} == {"pass@1", "coverage"}
    for key in ("pass@1", "coverage", "maj@k_4", "pass@k_4", "ood_accuracy"):  # overlaid, with bands
        assert (out / "curves" / f"{key}.png").stat().st_size > 1000, key
        assert f"(curves/{key}.png)" in text
    assert (out / "comparison" / "comparison.md").is_file()
    assert "paradigm=iter_dpo" in (out / "comparison" / "comparison.md").read_text()
    assert run_study([*argv, "report_only=true"], show_progress=False) == report  # nothing reruns
    assert len(TRAIN_CALLS) - calls_before == 5


def test_report_only_before_the_cells_finish_says_so(tmp_path, capsys):
    assert run_study([*BASE, *GRID, f"out_dir={tmp_path}", "report_only=true"], show_progress=False) is None
    assert "3 of 3 cells not finished" in capsys.readouterr().out
    assert Path(tmp_path / "study.json").is_file()
