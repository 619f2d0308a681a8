"""report.md, verdicts, paper A's suggestion, plots and the multi-run comparison, on synthetic runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selftrain.report import load_run, report_runs, write_run_report
from selftrain.report.__main__ import main as report_cli
from selftrain.report.summary import direction, render_report, suggestion, verdict


def _row(t: int, pass1: float, cov: float, disparity: float | None, kind: str) -> dict:
    row = {
        "iteration": t,
        "step": t,
        "step_kind": kind,
        "pass@1": pass1,
        "pass@1/level_1": min(1.0, pass1 + 0.1),
        "coverage": cov,
        "pass@k/1": cov,
        "pass@k/2": min(1.0, cov + 0.1),
        "diversity/correct/distinct_n": 0.8 - 0.1 * t,
        "diversity/incorrect/distinct_n": 0.9 - 0.1 * t,
        "diversity/correct/semantic": 0.3 - 0.05 * t,
        "diversity/incorrect/semantic": 0.4 - 0.05 * t,
        "diversity/correct/n_questions": 5,
        "ood/accuracy": 0.5,
        "ood/level_1": 0.8,
        "ood/level_5": 0.2,
        "ood/group_disparity": disparity,
        "data/records": 10 * t,
    }
    if t >= 2:
        row.update({"is/size": t, "is/m1_pass@2": 0.5, "is/m1_pass@4": 0.75})
    return row


def make_run(folder: Path, paradigm: str, rows: list[dict], torn: bool = False) -> Path:
    folder.mkdir(parents=True)
    cfg = {
        "paradigm": paradigm,
        "name": "",
        "model": "m",
        "task": "arith",
        "iterations": 3,
        "n_samples": 4,
        "eval": {"n_samples": 4},
        "seed": 0,
    }
    (folder / "config.json").write_text(json.dumps(cfg))
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (folder / "metrics.jsonl").write_text(text + ('{"iteration": 9, "pa' if torn else ""))
    return folder


ROWS = [
    _row(0, 0.1, 0.2, 0.7, "base"),
    _row(1, 0.3, 0.6, 0.5, "gold_sft"),
    _row(2, 0.4, 0.6, 0.6, "sft"),
    _row(3, 0.4, 0.7, 0.6, "dpo"),
]


def test_load_run_ignores_a_torn_tail_and_keeps_the_last_row_per_iteration(tmp_path):
    rows = ROWS + [dict(ROWS[3], **{"pass@1": 0.45})]
    run = load_run(make_run(tmp_path / "r", "iter_sft_dpo", rows, torn=True))
    assert run.iterations == [0, 1, 2, 3]
    assert run.series("pass@1") == ([0, 1, 2, 3], [0.1, 0.3, 0.4, 0.45])
    assert run.label == "iter_sft_dpo"
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        load_run(tmp_path / "missing")


def test_verdict_directions():
    assert verdict("pass@1", 0.3, 0.4) == "progressed"
    assert verdict("diversity/correct/semantic", 0.3, 0.1) == "regressed"
    assert verdict("ood/group_disparity", 0.5, 0.6) == "regressed"  # a wider gap is worse
    assert verdict("ood/group_disparity", 0.5, 0.4) == "progressed"
    assert verdict("coverage", 0.6, 0.6) == "unchanged"
    assert verdict("ood/group_disparity", None, 0.4) == "undefined"
    assert verdict("data/records", 1, 2) is None and direction("diversity/correct/n_questions") == 0


def test_paper_a_suggestion_from_m1_coverage():
    assert "iterative DPO or iterative SFT-DPO" in suggestion(0.51)
    assert "iterative SFT to work best" in suggestion(0.5)
    assert "not known" in suggestion(None)


def test_report_lists_every_metric_per_iteration_and_a_verdict_line(tmp_path):
    run = load_run(make_run(tmp_path / "r", "iter_sft_dpo", ROWS))
    text = render_report(run)
    assert "| metric | M0 | M1 | M2 | M3 |" in text
    for key in ROWS[3]:
        if key not in ("iteration", "step", "step_kind"):
            assert f"| `{key}` |" in text, key
    assert "- `pass@1`: **progressed** since M1 (0.3000 → 0.4000 at M3, +0.1000)" in text
    assert "- `diversity/correct/semantic`: **regressed**" in text
    assert "- `ood/group_disparity`: **regressed**" in text
    assert "`data/records`: **" not in text  # bookkeeping gets no verdict
    assert "M1's correct-answer coverage is 0.600 > 0.5" in text
    assert "M1 reaches 0.7500 on the 3 questions of IS(3)" in text


def test_report_before_any_step_after_m1(tmp_path):
    run = load_run(make_run(tmp_path / "r", "iter_sft", ROWS[:2]))
    assert "nothing to compare with M1" in render_report(run)


def test_write_run_report_draws_every_plot(tmp_path):
    folder = make_run(tmp_path / "r", "iter_sft_dpo", ROWS)
    report = write_run_report(folder)
    names = sorted(p.name for p in (folder / "plots").glob("*.png"))
    assert names == ["diversity.png", "is_pass_at_n.png", "ood.png", "pass_at_1.png", "pass_at_k.png"]
    assert all((folder / "plots" / n).read_bytes()[:4] == b"\x89PNG" for n in names)
    assert "![pass_at_1](plots/pass_at_1.png)" in report.read_text()


def test_comparison_of_several_paradigms(tmp_path, capsys):
    a = make_run(tmp_path / "a", "iter_sft", ROWS)
    b = make_run(tmp_path / "b", "iter_dpo", [dict(r, **{"pass@1": r["pass@1"] / 2}) for r in ROWS])
    out = report_runs([a, b], tmp_path / "cmp")
    text = out.read_text()
    assert "| iter_sft (" in text and "| iter_dpo (" in text and "## `pass@1`" in text
    assert (tmp_path / "cmp" / "pass_at_1.png").is_file() and (
        tmp_path / "cmp" / "ood_accuracy.png"
    ).is_file()
    assert report_cli([str(a), str(b), f"out={tmp_path / 'cmp2'}"]) == 0
    assert (tmp_path / "cmp2" / "comparison.md").is_file()


def test_small_values_are_not_printed_as_zero():
    from selftrain.report.summary import _fmt

    assert _fmt(1.9e-06) == "1.9e-06"
    assert _fmt(0.0) == "0.0000"
    assert _fmt(0.25) == "0.2500"
    assert _fmt(12345.0) == "1.234e+04"
