"""report.md, verdicts, paper A's suggestion, plots and the multi-run comparison, on synthetic runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from selftrain.metrics import stats
from selftrain.report import load_run, report_runs, write_run_report
from selftrain.report.__main__ import main as report_cli
from selftrain.report.summary import direction, render_report, suggestion


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
    assert direction("pass@1") == 1 and direction("diversity/correct/semantic") == 1
    assert direction("ood/group_disparity") == -1  # a wider gap is worse
    assert direction("greedy/truncated") == -1
    assert direction("data/records") == 0 and direction("diversity/correct/n_questions") == 0
    assert direction("pass@1/ci_low") == 0 and direction("is/m1_pass@4") == 0


def test_paper_a_suggestion_from_m1_coverage():
    assert "iterative DPO or iterative SFT-DPO" in suggestion(0.51)
    assert "iterative SFT to work best" in suggestion(0.5)
    assert "not known" in suggestion(None)


def test_report_without_per_question_data_lists_every_metric_and_says_why_verdicts_are_undefined(tmp_path):
    run = load_run(make_run(tmp_path / "r", "iter_sft_dpo", ROWS))
    text = render_report(run)
    assert "| metric | M0 | M1 | M2 | M3 |" in text
    for key in ROWS[3]:
        if key not in ("iteration", "step", "step_kind"):
            assert f"| `{key}` |" in text, key
    assert "- `pass@1` (primary): **undefined** (no per-question data:" in text
    assert "- `data/records`" not in text and "`data/records` (" not in text  # bookkeeping gets no verdict
    assert "M1's correct-answer coverage is 0.600 > 0.5" in text
    assert "M1 reaches 0.7500 on the 3 questions of IS(3)" in text
    assert "## Unavailable" in text and "details.json does not exist" in text


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


# ------------------------------------------------------------------ runs with per-question data


def synthetic_run(folder: Path, greedy: list, coverage_p: list, q: int, n: int = 8, seed: int = 0,
                  old: bool = False, n_ood: int = 50) -> Path:
    """A loop run folder with every model's eval details, as evaluate_model writes them.

    greedy[t] / coverage_p[t]: model t's per-question probability of a correct greedy answer / of a
    correct sample (arrays of length q, or a 0/1 array used as is for greedy when `exact`)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    cfg = {"paradigm": "iter_sft_dpo", "name": "", "model": "m", "task": "arith",
           "iterations": len(greedy) - 1, "n_samples": 8, "seed": 0,
           "eval": {"n_samples": n, "is_ns": [2, 4, 8], "equations": True}}
    (folder / "config.json").write_text(json.dumps(cfg))
    levels = [1 + i % 3 for i in range(q)]
    ood_levels = [1 + i % 5 for i in range(n_ood)]
    ood_p = np.linspace(0.9, 0.3, n_ood)  # level 1 is easy: the disparity is defined
    rows = []
    for t, (g, cp) in enumerate(zip(greedy, coverage_p)):
        g = np.asarray(g)
        flags = g.astype(int) if set(np.unique(g)) <= {0, 1} and g.dtype.kind == "i" else (rng.random(q) < g)
        flags = np.asarray(flags, dtype=int)
        correct = rng.binomial(n, cp)
        ood = (rng.random(n_ood) < ood_p).astype(int)
        details = {
            "ids": [f"q{i}" for i in range(q)], "greedy_rewards": flags.tolist(), "n_samples": n,
            "sample_correct": correct.tolist(), "extra_n": n, "extra_correct": correct.tolist(),
            "ood_rewards": ood.tolist(),
        }
        if not old:
            details.update({
                "levels": levels, "greedy_truncated": [0] * q, "ood_ids": [f"o{i}" for i in range(n_ood)],
                "ood_levels": ood_levels, "ood_low_high": [1, 5],
                "diversity": {"diversity/correct/distinct_n": rng.beta(5, 3, q).tolist(),
                              "diversity/incorrect/distinct_n": [None if i % 7 == 0 else float(v)
                                                                 for i, v in enumerate(rng.beta(3, 3, q))]},
            })
        ev = folder / f"iter_{t}" / "eval"
        ev.mkdir(parents=True)
        (ev / "details.json").write_text(json.dumps(details))
        (ev / "greedy.jsonl").write_text("".join(
            json.dumps({"id": f"q{i}", "response": "r", "reward": int(flags[i]), "finish_reason": "stop"})
            + "\n"
            for i in range(q)))
        (ev / "samples.jsonl").write_text("".join(
            json.dumps({"id": f"q{i}", "responses": ["2 + 3 = 5", "2 + 3 = 5", "one two", "one three"],
                        "rewards": [1, 1, 0, 0]}) + "\n" for i in range(q)))
        row = {"iteration": t, "step": t, "step_kind": "sft", "pass@1": float(flags.mean()),
               "coverage": float((correct / n).mean()), "ood/accuracy": float(ood.mean()), "data/records": 3}
        rows.append(row)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _verdicts(folder: Path) -> list[dict]:
    return json.loads((folder / "verdicts.json").read_text())


def test_verdicts_json_schema_churn_and_step_table(tmp_path):
    q = 40
    m1 = np.array([1] * 10 + [0] * 30)
    m2 = np.array([1] * 8 + [0] * 2 + [1] * 5 + [0] * 25)  # gains 5, loses 2 against M1
    m3 = np.array([0] * 10 + [1] * 12 + [0] * 18)  # gains 12, loses 10 against M1
    probs = [np.full(q, 0.3)] * 4
    folder = synthetic_run(tmp_path / "r", [np.zeros(q, dtype=int), m1, m2, m3], probs, q)
    report = write_run_report(folder, plots=True).read_text()
    rows = _verdicts(folder)
    keys = {"metric", "baseline", "model", "baseline_value", "value", "delta", "ci_low", "ci_high", "p_value",
            "p_adjusted", "family", "level", "test", "verdict"}
    assert rows and all(set(r) == keys for r in rows)
    assert {r["verdict"] for r in rows} <= {"progressed", "regressed", "no detectable change", "undefined"}
    # M3 vs M1, then every step M_t vs M_{t-1} (M2 vs M1 is a step, M3 vs M1 the headline)
    pairs = list(dict.fromkeys((r["baseline"], r["model"]) for r in rows))
    assert pairs == [("M1", "M3"), ("M0", "M1"), ("M1", "M2"), ("M2", "M3")]
    head = next(r for r in rows if (r["baseline"], r["model"], r["metric"]) == ("M1", "M3", "pass@1"))
    assert head["baseline_value"] == 0.25 and head["value"] == 0.3 and head["delta"] == pytest.approx(0.05)
    assert head["p_value"] == pytest.approx(stats.mcnemar_exact(12, 10))
    assert head["ci_low"] < 0 < head["ci_high"] and head["verdict"] == "no detectable change"
    assert head["family"] == "primary" and head["test"] == "exact McNemar"
    # one alpha for the whole report: primary tests of the headline share alpha / 2, the rest the other half
    primary = [r for r in rows if r["family"] == "primary"]
    assert {(r["baseline"], r["model"]) for r in primary} == {("M1", "M3")}
    assert {r["metric"] for r in primary} == {"pass@1", "coverage", "ood/accuracy"}
    tested = [r for r in rows if r["level"] is not None]
    assert sum(r["level"] for r in tested) == pytest.approx(0.05)
    assert sum(r["level"] for r in primary) == pytest.approx(0.025)
    assert not any(r["metric"] == "pass@k/1" for r in rows)  # the same number as coverage
    for r in rows:
        if r["verdict"] != "undefined":
            assert r["p_adjusted"] >= r["p_value"]
            assert r["ci_low"] - 1e-12 <= r["delta"] <= r["ci_high"] + 1e-12
            # the interval beside a verdict is at the verdict's level: it excludes 0 iff a change is read
            assert (r["ci_low"] > 0 or r["ci_high"] < 0) == (r["verdict"] in ("progressed", "regressed"))
    # churn: the McNemar counts, per iteration, against M1
    assert "| M2 | 5 | 2 | +3 |" in report and "| M3 | 12 | 10 | +2 |" in report
    assert "M3 solves 12 questions M1 fails and fails 10 that M1 solves (net +2)" in report
    assert "| metric | M0 → M1 | M1 → M2 | M2 → M3 |" in report
    assert "## Summary" in report.split("## Progress or regress")[0]
    assert "This test set cannot resolve" in report and "a change in `pass@1` smaller than" in report
    assert re.search(r"\| `pass@1` \| 0\.0000 \[0\.000, 0\.0\d\d\] \| 0\.2500 \[0\.14\d, 0\.40\d\]", report)
    assert (folder / "plots" / "churn.png").read_bytes()[:4] == b"\x89PNG"


def test_models_identical_in_distribution_show_no_detectable_change(tmp_path):
    q, rng = 300, np.random.default_rng(5)
    p = rng.beta(0.7, 0.9, q)
    folder = synthetic_run(tmp_path / "r", [p] * 4, [p] * 4, q, seed=7)
    write_run_report(folder, plots=False)
    rows = _verdicts(folder)
    assert len(rows) >= 4 * 15
    moved = [(r["baseline"], r["model"], r["metric"]) for r in rows if r["verdict"] != "no detectable change"]
    assert not moved


def test_a_real_change_is_detected_with_its_direction(tmp_path):
    q, rng = 300, np.random.default_rng(6)
    p = rng.beta(0.7, 0.9, q)
    better = np.clip(p + 0.25, 0, 1)
    folder = synthetic_run(tmp_path / "r", [p, p, p, better], [p, p, p, better], q, seed=8)
    write_run_report(folder, plots=False)
    by = {r["metric"]: r for r in _verdicts(folder) if (r["baseline"], r["model"]) == ("M1", "M3")}
    assert by["pass@1"]["verdict"] == "progressed" and by["coverage"]["verdict"] == "progressed"
    assert by["pass@1"]["ci_low"] > 0 and by["pass@1"]["p_adjusted"] < 0.05


def test_regenerated_report_is_byte_identical(tmp_path):
    q, rng = 60, np.random.default_rng(9)
    p = rng.random(q)
    folder = synthetic_run(tmp_path / "r", [p] * 3, [p] * 3, q)
    write_run_report(folder)
    first = (folder / "report.md").read_bytes(), (folder / "verdicts.json").read_bytes()
    assert report_cli([str(folder)]) == 0
    assert ((folder / "report.md").read_bytes(), (folder / "verdicts.json").read_bytes()) == first


def test_a_run_folder_from_before_per_question_levels_is_reported(tmp_path):
    q, rng = 30, np.random.default_rng(10)
    p = rng.random(q)
    folder = synthetic_run(tmp_path / "r", [p] * 3, [p] * 3, q, old=True)
    text = write_run_report(folder, plots=True).read_text()
    assert "## Unavailable" in text
    assert "- `pass@1/level_*`: details.json predates per-question levels" in text
    assert "semantic diversity needs the sentence encoder" in text
    by = {r["metric"]: r for r in _verdicts(folder) if r["model"] == "M2" and r["baseline"] == "M1"}
    assert by["pass@1"]["verdict"] != "undefined"
    # no OOD ids in such a folder: the OOD questions are not paired by position
    assert by["ood/accuracy"]["verdict"] == "undefined"
    assert "details.json has no OOD question ids: the OOD questions cannot be paired" in text
    # distinct-n recomputed from samples.jsonl (every question: the same four answers)
    assert by["diversity/correct/distinct_n"]["delta"] == 0.0
    assert "greedy/truncated" in by  # from greedy.jsonl's finish reasons


def test_paired_tests_between_runs_on_the_same_questions(tmp_path):
    q, rng = 80, np.random.default_rng(11)
    p = rng.random(q)
    a = synthetic_run(tmp_path / "a", [p] * 3, [p] * 3, q, seed=1)
    b = synthetic_run(tmp_path / "b", [p] * 3, [p] * 3, q, seed=2)
    text = report_runs([a, b], tmp_path / "cmp").read_text()
    assert "## Paired tests against `iter_sft_dpo`" in text
    rows = json.loads((tmp_path / "cmp" / "comparison_verdicts.json").read_text())
    assert {r["baseline"] for r in rows} == {"iter_sft_dpo:M0", "iter_sft_dpo:M1", "iter_sft_dpo:M2"}
    first = next(r for r in rows if r["metric"] == "pass@1" and r["baseline"] == "iter_sft_dpo:M1")
    ga = np.array(json.loads((a / "iter_1" / "eval" / "details.json").read_text())["greedy_rewards"])
    gb = np.array(json.loads((b / "iter_1" / "eval" / "details.json").read_text())["greedy_rewards"])
    gained, lost = int(((gb == 1) & (ga == 0)).sum()), int(((ga == 1) & (gb == 0)).sum())
    assert first["p_value"] == pytest.approx(stats.mcnemar_exact(gained, lost))


def test_interval_keys_for_wandb(tmp_path):
    from selftrain.report.verdicts import interval_row

    q = 40
    flags = np.array([1] * 9 + [0] * 31)
    folder = synthetic_run(tmp_path / "r", [flags, flags, flags], [np.full(q, 0.3)] * 3, q)
    row = interval_row(folder, json.loads((folder / "config.json").read_text()), 2, 1)
    assert (row["pass@1/ci_low"], row["pass@1/ci_high"]) == pytest.approx(stats.wilson_interval(9, 40))
    assert row["coverage/ci_low"] < row["coverage/ci_high"] and "pass@k/8/ci_low" in row
    assert "ood/group_disparity/ci_low" in row and "is/m1_pass@2/ci_low" not in row  # IS(2) is empty


def test_stats_config_errors_name_the_key():
    from selftrain.config import parse_cli
    from selftrain.loop.config import LoopConfig

    cases = (("stats.alpha=1.5", "stats.alpha"), ("stats.alpha=0", "stats.alpha"),
             ("stats.power_effect=0", "stats.power_effect"),
             ("stats.power_effect=-0.1", "stats.power_effect"))
    for word, key in cases:
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            parse_cli(LoopConfig, [word])
    with pytest.raises(ValueError, match="replicates=0"):
        parse_cli(LoopConfig, ["replicates=0"])
    assert parse_cli(LoopConfig, ["stats.alpha=0.1"]).stats.alpha == 0.1
    assert parse_cli(LoopConfig, []).stats.primary_metrics == ["pass@1", "coverage", "ood/accuracy"]
    assert parse_cli(LoopConfig, ["stats.primary_metrics=[pass@1]"]).stats.primary_metrics == ["pass@1"]
    for word in ("stats.primary_metrics=[pass@k/1]", "stats.primary_metrics=[data/records]",
                 "stats.primary_metrics=[]"):
        with pytest.raises(ValueError, match=r"stats\.primary_metrics"):
            parse_cli(LoopConfig, [word])
    with pytest.raises(ValueError, match="resamples"):  # the bootstrap is gone: an unknown key
        parse_cli(LoopConfig, ["stats.resamples=2000"])


def test_a_bad_alpha_in_an_existing_config_json_is_named(tmp_path):
    q = 10
    folder = synthetic_run(tmp_path / "r", [np.full(q, 0.5)] * 2, [np.full(q, 0.5)] * 2, q)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "stats": {"alpha": 2}}))
    with pytest.raises(ValueError, match=r"config\.json: stats\.alpha=2"):
        write_run_report(folder, plots=False)


def test_power_when_even_the_largest_possible_change_is_underpowered():
    from selftrain.report.verdicts import ModelData, power_lines

    base = ModelData("M1", greedy=np.array([1.0] * 4 + [0.0] * 36))
    level = 0.05 / 6  # pass@1's level in a default report: a third of the primary family's alpha / 2
    (line,) = power_lines(None, base, 40, 0.05, {"pass@1": level})  # no comparison: 2 p (1 - p) at p = 0.1
    assert line.mde is None and line.ceiling == pytest.approx(0.18) and line.n_needed > 40
    assert line.level == level and line.test == "exact McNemar"
    (line,) = power_lines(None, base, 400, 0.05, {"pass@1": level})
    assert stats.mcnemar_power(400, 0.18, line.mde, level) == pytest.approx(0.8, abs=1e-4)


def test_a_metric_that_few_questions_define_gets_no_bootstrap_verdict(tmp_path):
    """`diversity/correct/*` is defined only on questions with >= 2 correct samples: when one model
    has 2 such questions, a percentile interval over resamples of 2 values is far too narrow (the
    default run's first report called such a change "regressed"); the verdict is undefined, with
    the reason, while the metrics with enough questions are still tested."""
    q, rng = 120, np.random.default_rng(11)
    p = rng.beta(0.7, 0.9, q)
    folder = synthetic_run(tmp_path / "r", [p] * 4, [p] * 4, q, seed=3)
    for t, defined in ((1, 2), (3, 60)):  # M1: 2 questions define it, M3: 60 (with lower values)
        path = folder / f"iter_{t}" / "eval" / "details.json"
        details = json.loads(path.read_text())
        values = [1.0 if t == 1 else 0.5] * defined + [None] * (q - defined)
        details["diversity"]["diversity/correct/distinct_n"] = values
        path.write_text(json.dumps(details))
    report = write_run_report(folder, plots=False).read_text()
    by = {r["metric"]: r for r in _verdicts(folder) if (r["baseline"], r["model"]) == ("M1", "M3")}
    assert by["diversity/correct/distinct_n"]["verdict"] == "undefined"
    assert "only 2 question(s) define it on one side, fewer than 10" in report
    assert by["diversity/incorrect/distinct_n"]["verdict"] != "undefined"
    assert by["pass@1"]["verdict"] != "undefined"


def test_replicates_are_tested_and_powered_by_the_two_level_t(tmp_path):
    """K = 2 replicates: every metric (0/1 ones too) gets the two-level t-test, and the power line
    is that test's, at the level the metric faces, with no question count (the seed part does not
    shrink with more questions)."""
    from selftrain.report.verdicts import (
        apply_error_control,
        compare_replicates,
        load_model_data,
        power_lines,
    )

    q, rng = 60, np.random.default_rng(12)
    p = rng.beta(0.7, 0.9, q)
    reps = [synthetic_run(tmp_path / f"r{k}", [p] * 2, [p] * 2, q, seed=20 + k) for k in range(2)]
    models = [[load_model_data(r / f"iter_{t}" / "eval", f"M{t}") for t in range(2)] for r in reps]
    c = compare_replicates([(m[0], m[1]) for m in models], sorted(models[0][0].metrics))
    control = apply_error_control([c], [c], ("pass@1", "coverage"), 0.05)
    assert control.n_primary == 2 and control.level_primary == pytest.approx(0.025 / 2)
    assert {r["test"] for r in c.rows if r["test"]} == {stats.REPLICATE_T}
    levels = {r["metric"]: r["level"] for r in c.rows if r["level"] is not None}
    lines = {x.metric: x for x in power_lines(c, models[0][0], q, 0.05, levels)}
    for key in ("pass@1", "coverage"):
        res = c.tests[key]
        assert lines[key].test == stats.REPLICATE_T and lines[key].n_needed is None
        assert lines[key].mde == pytest.approx(stats.t_mde(res.se, res.df, levels[key]))
        assert stats.t_power(res.se, res.df, lines[key].mde, levels[key]) == pytest.approx(0.8, abs=1e-6)


def _rollouts(folder: Path, steps: list[tuple[list[int], list[list[float]]]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"step": s + 1, "questions": q, "rewards": r} for s, (q, r) in enumerate(steps)]
    (folder / "rollouts.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_rl_block_reward_change_pairs_first_and_last_draw_of_each_question(tmp_path):
    from scipy.stats import ttest_rel

    from selftrain.report.summary import rl_reward_change

    folder = tmp_path / "r" / "iter_2" / "trainer"
    # question 3 is drawn once (left out); 0, 1, 2 twice or three times
    _rollouts(folder, [
        ([0, 1], [[0, 0, 1, 0], [0, 0, 0, 0]]),
        ([2, 3], [[1, 0, 0, 0], [1, 1, 1, 1]]),
        ([0, 1], [[1, 0, 1, 0], [0, 1, 0, 0]]),
        ([2, 0], [[1, 1, 1, 0], [1, 1, 1, 1]]),
    ])
    test, n = rl_reward_change(folder)
    first, last = [0.25, 0.0, 0.25], [1.0, 0.25, 0.75]
    assert n == 3
    assert (test.value_a, test.value_b) == (pytest.approx(np.mean(first)), pytest.approx(np.mean(last)))
    want = ttest_rel(last, first)
    assert test.p_value == pytest.approx(want.pvalue)
    ci = want.confidence_interval(0.95)
    assert test.interval(0.95) == (pytest.approx(ci.low), pytest.approx(ci.high))

    rows = [_row(0, 0.1, 0.2, 0.7, "base"), _row(1, 0.3, 0.6, 0.5, "gold_sft"),
            _row(2, 0.4, 0.6, 0.6, "grpo")]
    run_dir = tmp_path / "r"
    run_dir.mkdir(exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps({"paradigm": "iter_grpo", "iterations": 2}))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = render_report(load_run(run_dir))
    assert "## Online RL blocks: reward on the training questions" in text
    lo, hi = test.interval(0.95)
    assert "on the 3 training questions it drew at least twice" in text
    assert f"{test.delta:+.3f} (95% CI {lo:+.3f} .. {hi:+.3f}, paired t over questions, unadjusted" in text

    _rollouts(folder, [([0, 1], [[0, 1], [1, 1]]), ([2, 3], [[0, 0], [1, 0]])])  # nothing drawn twice
    assert rl_reward_change(folder) is None
    assert "fewer than 2 training questions were drawn twice" in render_report(load_run(run_dir))
