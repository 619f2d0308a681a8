"""runs/<name>/report.md: every metric per iteration, and whether each progressed or regressed since M1.

The verdict compares the last iteration M_T with M1 (paper A's question: did self-improvement after
the first SFT help?). Direction per metric: higher is better for accuracies, coverage, pass@k and
diversity; lower is better for the OOD group disparity and for truncated answers; the improvement
set's M1 pass@N gets its own sentence (a high value means M_T's "new" solutions were already within
M1's reach: selection, not new skill); bookkeeping counts (data/, train/, sample/, n_questions) get
no verdict.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Sequence

from .logger import write_text_atomic
from .plots import plot_comparison, plot_run
from .runs import RunRecord, load_run

# Paper A: with M1's correct-answer coverage above this, iterative DPO / SFT-DPO did best.
COVERAGE_THRESHOLD = 0.5
TOLERANCE = 1e-9

_LOWER_IS_BETTER = ("ood/group_disparity", "greedy/truncated")
_NO_VERDICT_PREFIXES = ("data/", "train/", "sample/", "is/")


def direction(key: str) -> int:
    """+1 higher is better, -1 lower is better, 0 no verdict."""
    if key in _LOWER_IS_BETTER:
        return -1
    if key.startswith(_NO_VERDICT_PREFIXES) or key.endswith("/n_questions"):
        return 0
    if key.startswith(("pass@", "coverage", "diversity/", "ood/")):
        return 1
    return 0


def verdict(key: str, m1: float | None, last: float | None) -> str | None:
    """'progressed', 'regressed', 'unchanged', 'undefined' (a value missing), or None (no verdict)."""
    sign = direction(key)
    if sign == 0:
        return None
    if m1 is None or last is None or not (math.isfinite(m1) and math.isfinite(last)):
        return "undefined"
    delta = (last - m1) * sign
    if abs(delta) <= TOLERANCE:
        return "unchanged"
    return "progressed" if delta > 0 else "regressed"


def suggestion(m1_coverage: float | None) -> str:
    if m1_coverage is None:
        return "M1's correct-answer coverage is not known yet, so paper A's guidance cannot be applied."
    if m1_coverage > COVERAGE_THRESHOLD:
        return (
            f"M1's correct-answer coverage is {m1_coverage:.3f} > {COVERAGE_THRESHOLD}: "
            "paper A found iterative DPO or iterative SFT-DPO to work best for such a model and task."
        )
    return (
        f"M1's correct-answer coverage is {m1_coverage:.3f} <= {COVERAGE_THRESHOLD}: paper A found iterative "
        "SFT to work best for such a model and task."
    )


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        if value != 0 and abs(value) < 1e-3:  # learning rates and the like would print as 0.0000
            return f"{value:.3g}"
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.4g}"
    return str(value)


def _key_order(key: str) -> tuple[int, str, float, str]:
    """Group metrics in the order a reader wants them, numeric suffixes in numeric order."""
    groups = (
        "pass@1",
        "pass@1/",
        "coverage",
        "pass@k/",
        "greedy/",
        "is/",
        "diversity/",
        "ood/",
        "sample/",
        "data/",
        "train/",
    )
    rank = next(
        (i for i, g in enumerate(groups) if key == g or (g.endswith("/") and key.startswith(g))), len(groups)
    )
    m = re.search(r"(\d+(?:\.\d+)?)$", key)
    stem = key[: m.start()] if m else key
    return (rank, stem, float(m.group(1)) if m else -1.0, key)


def baseline_of(run: RunRecord) -> int:
    """The iteration verdicts compare against: M1 for a loop run, `baseline` for an evaluate run."""
    return int(run.config.get("baseline", 1))


def verdict_lines(run: RunRecord) -> list[str]:
    """One line per metric with a direction: baseline (M1) -> last model, and the verdict."""
    b = baseline_of(run)
    m1 = run.row(b)
    later = [r for r in run.rows if int(r["iteration"]) > b]
    if m1 is None or not later:
        return [f"No model after M{b} has been evaluated yet: nothing to compare with M{b}."]
    last = later[-1]
    t = int(last["iteration"])
    lines = []
    for key in sorted(run.metric_keys(), key=_key_order):
        old, new = m1.get(key), last.get(key)
        word = verdict(key, old, new)
        if word is None:
            continue
        numeric = isinstance(old, (int, float)) and isinstance(new, (int, float))
        change = f", {new - old:+.4f}" if numeric else ""
        if word == "undefined":
            lines.append(f"- `{key}`: **undefined** (no value at M{b} or at M{t}: nothing to measure it on)")
        else:
            lines.append(f"- `{key}`: **{word}** since M{b} ({_fmt(old)} → {_fmt(new)} at M{t}{change})")
    is_keys = [k for k in sorted(run.metric_keys(), key=_key_order) if k.startswith("is/m1_pass@")]
    if is_keys:
        size = last.get("is/size")
        if not size:
            lines.append(f"- `is/*`: IS({t}) is empty: M{t} solves no test question that M1 fails (greedy).")
        else:
            top = is_keys[-1]
            value = last.get(top)
            lines.append(
                f"- `{top}`: M1 reaches {_fmt(value)} on the {size} questions of IS({t}) — "
                f"the share of M{t}'s new solutions that were already within M1's reach by sampling "
                "(high = selection, not new skill)."
            )
    return lines


def render_report(run: RunRecord) -> str:
    cfg = run.config
    lines = [f"# Run `{run.label}`", ""]
    if cfg.get("checkpoints"):  # an evaluate run: M<i> is the i-th checkpoint
        lines += ["Models: " + "; ".join(f"M{i} = `{c}`" for i, c in enumerate(cfg["checkpoints"])) + ".", ""]
    elif cfg:
        lines.append(
            f"Paradigm **{cfg.get('paradigm')}**, model `{cfg.get('model')}`, task `{cfg.get('task')}`, "
            f"T = {cfg.get('iterations')}, N = {cfg.get('n_samples')} samples per training question, "
            f"{(cfg.get('eval') or {}).get('n_samples')} per test question, seed {cfg.get('seed')}."
        )
        lines.append("")
    done = run.iterations
    lines.append(f"Finished iterations: {', '.join(f'M{t}' for t in done) or 'none'}.")
    kinds = [f"M{r['iteration']}: {r.get('step_kind', '?')}" for r in run.rows]
    lines += ["", "Step per iteration: " + "; ".join(kinds) + ".", ""]

    b = baseline_of(run)
    m1 = run.row(b)
    lines += [f"## Progress or regress since M{b}", ""]
    if b == 1:  # paper A's guidance is about M1, the model after the gold SFT
        lines += [suggestion(_number(m1.get("coverage")) if m1 else None), ""]
    lines += verdict_lines(run)
    lines += ["", "## Every metric per iteration", ""]
    header = "| metric | " + " | ".join(f"M{t}" for t in done) + " |"
    lines += [header, "|---|" + "---:|" * len(done)]
    for key in sorted(run.metric_keys(), key=_key_order):
        lines.append(f"| `{key}` | " + " | ".join(_fmt(r.get(key)) for r in run.rows) + " |")
    lines += ["", "Metric definitions: docs/metrics.md; loop and artifacts: docs/loop.md.", ""]
    plots = sorted((run.folder / "plots").glob("*.png"))
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{p.stem}](plots/{p.name})" for p in plots]
        lines.append("")
    return "\n".join(lines)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def write_run_report(folder: str | os.PathLike, plots: bool = True) -> Path:
    """<folder>/report.md (and, with `plots`, the PNGs in <folder>/plots/) from config.json and
    metrics.jsonl."""
    run = load_run(folder)
    if plots:
        plot_run(run, run.folder / "plots")
    return write_text_atomic(run.folder / "report.md", render_report(run))


def report_runs(folders: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> Path:
    """Compare several runs (e.g. one per paradigm): plots with one line per run and comparison.md
    holding pass@1, coverage and OOD accuracy per iteration for each run."""
    runs = [load_run(f) for f in folders]
    if not runs:
        raise ValueError("report_runs needs at least one run folder")
    out = Path(out_dir)
    plots = plot_comparison(runs, out)
    lines = ["# Comparison of runs", ""]
    for key in ("pass@1", "coverage", "ood/accuracy", "ood/group_disparity"):
        if not any(key in r.metric_keys() for r in runs):
            continue
        iterations = sorted({t for r in runs for t in r.iterations})
        lines += [
            f"## `{key}`",
            "",
            "| run | " + " | ".join(f"M{t}" for t in iterations) + " |",
            "|---|" + "---:|" * len(iterations),
        ]
        for r in runs:
            cells = [_fmt((r.row(t) or {}).get(key)) for t in iterations]
            lines.append(f"| {r.label} ({r.folder}) | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    return write_text_atomic(out / "comparison.md", "\n".join(lines) + "\n")
