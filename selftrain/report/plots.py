"""PNG plots of a run (or of several runs side by side), drawn with matplotlib's Agg backend.

- pass_at_1.png      greedy pass@1 per iteration; one line per run when several are given
- is_pass_at_n.png   M1's pass@N on IS(t), one line per t (the "already within M1's reach" plot)
- diversity.png      distinct-n / semantic / distinct equations per iteration, correct vs incorrect
- ood.png            OOD accuracy per level per iteration (whole accuracy dashed)
- pass_at_k.png      sampled pass@k against k, one line per iteration
- churn.png          questions gained (solved by M_t, not by M1) and lost (the reverse) per iteration

Given a run's intervals (`selftrain.report.summary.analyse_run`), per-iteration lines get a shaded
band and pass@k / IS points get error bars: the same (1 - alpha) intervals as report.md.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in tests
import matplotlib.pyplot as plt  # noqa: E402

from .runs import RunRecord  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> Path:
    """Save through a temp name and a rename, like every other artifact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.subplots_adjust(bottom=max(fig.subplotpars.bottom, 0.14), left=max(fig.subplotpars.left, 0.12))
    tmp = path.with_name(f".{path.stem}.tmp.png")
    # No bbox_inches="tight": it draws the figure twice (about 2x slower on a busy CPU).
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


Intervals = dict[int, dict[str, Any]]  # iteration -> metric -> (low, high) or None


def _line(
    ax: plt.Axes, xs: Sequence[float], ys: Sequence[float | None],
    bands: Sequence[tuple[float, float] | None] | None = None, errorbars: bool = False, **kwargs: object,
) -> bool:
    """A line through the defined points; with `bands`, its interval as a shaded band (or as error
    bars when the x values are not iterations)."""
    points = [(x, y, (bands[i] if bands else None)) for i, (x, y) in enumerate(zip(xs, ys)) if y is not None]
    if not points:
        return False
    (line,) = ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", **kwargs)
    with_ci = [p for p in points if p[2] is not None]
    if with_ci and errorbars:
        # clamped: a percentile interval need not hold the point estimate
        below = [max(0.0, p[1] - p[2][0]) for p in with_ci]
        above = [max(0.0, p[2][1] - p[1]) for p in with_ci]
        ax.errorbar([p[0] for p in with_ci], [p[1] for p in with_ci], yerr=[below, above],
                    fmt="none", ecolor=line.get_color(), capsize=3, alpha=0.8)
    elif with_ci:
        ax.fill_between([p[0] for p in with_ci], [p[2][0] for p in with_ci], [p[2][1] for p in with_ci],
                        color=line.get_color(), alpha=0.15, linewidth=0)
    return True


def _bands(run: RunRecord, key: str, intervals: Intervals | None) -> list[tuple[float, float] | None] | None:
    if not intervals:
        return None
    return [intervals.get(t, {}).get(key) for t in run.iterations]


def _legend(ax: plt.Axes, **kwargs: object) -> None:
    """A legend only when something was drawn (an all-None metric draws nothing)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def _log2_axis(ax: plt.Axes, values: Sequence[int]) -> None:
    """A log2 x axis labelled with the plain numbers (2, 4, 8 rather than 2^1, 2^2, 2^3)."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(values), labels=[str(v) for v in values])
    ax.minorticks_off()


def _iteration_axis(ax: plt.Axes, iterations: Sequence[int]) -> None:
    ax.set_xticks(list(iterations))
    ax.set_xticklabels([f"M{t}" for t in iterations])
    ax.set_xlabel("iteration")
    ax.grid(alpha=0.3)


def plot_pass_at_1(runs: Sequence[RunRecord], path: Path, intervals: Sequence[Intervals | None] = ()) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    iterations: set[int] = set()
    for i, run in enumerate(runs):
        xs, ys = run.series("pass@1")
        iterations.update(xs)
        cis = _bands(run, "pass@1", intervals[i] if i < len(intervals) else None)
        _line(ax, xs, ys, cis, label=run.label)
    _iteration_axis(ax, sorted(iterations))
    ax.set_ylabel("pass@1 (greedy, test)")
    ax.set_title("pass@1 per iteration")
    _legend(ax)
    return _save(fig, path)


def _sorted_suffix_keys(keys: Sequence[str], prefix: str) -> list[tuple[str, str]]:
    """(key, suffix) for keys `prefix<suffix>`, numeric suffixes in numeric order."""
    found = [(k, k[len(prefix) :]) for k in keys if k.startswith(prefix)]

    def order(item: tuple[str, str]) -> tuple[int, float, str]:
        m = re.fullmatch(r"\d+(?:\.\d+)?", item[1])
        return (0, float(item[1]), "") if m else (1, 0.0, item[1])

    return sorted(found, key=order)


def plot_is_pass_at_n(run: RunRecord, path: Path, intervals: Intervals | None = None) -> Path | None:
    keys = _sorted_suffix_keys(run.metric_keys(), "is/m1_pass@")
    if not keys:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for row in run.rows:
        ns = [int(s) for _, s in keys]
        ys = [row.get(k) for k, _ in keys]
        size = row.get("is/size")
        cis = [(intervals or {}).get(int(row["iteration"]), {}).get(k) for k, _ in keys]
        drawn |= _line(ax, ns, ys, cis, errorbars=True, label=f"IS({row['iteration']}), |IS|={size}")
    if not drawn:
        ax.text(0.5, 0.5, "every IS(t) is empty", ha="center", va="center", transform=ax.transAxes)
    _log2_axis(ax, [int(s) for _, s in keys])
    ax.set_xlabel("N (samples from M1)")
    ax.set_ylabel("M1's pass@N on IS(t)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Were M_t's new solutions already within M1's reach?")
    ax.grid(alpha=0.3)
    _legend(ax)
    return _save(fig, path)


DIVERSITY_MEASURES = (
    ("distinct_n", "distinct-n (1..5)"),
    ("semantic", "semantic (SBERT)"),
    ("equations", "distinct equations"),
)


def plot_diversity(run: RunRecord, path: Path, intervals: Intervals | None = None) -> Path | None:
    keys = set(run.metric_keys())
    measures = [(m, title) for m, title in DIVERSITY_MEASURES if f"diversity/correct/{m}" in keys]
    if not measures:
        return None
    fig, axes = plt.subplots(1, len(measures), figsize=(4.5 * len(measures), 3.8), squeeze=False)
    for ax, (measure, title) in zip(axes[0], measures):
        for group, style in (("correct", "-"), ("incorrect", "--")):
            key = f"diversity/{group}/{measure}"
            xs, ys = run.series(key)
            _line(ax, xs, ys, _bands(run, key, intervals), linestyle=style, label=group)
        _iteration_axis(ax, run.iterations)
        ax.set_title(title)
        _legend(ax)
    fig.suptitle("Diversity of N samples per question: correct vs incorrect")
    fig.subplots_adjust(top=0.84, wspace=0.3)
    return _save(fig, path)


def plot_ood(run: RunRecord, path: Path, intervals: Intervals | None = None) -> Path | None:
    keys = run.metric_keys()
    if "ood/accuracy" not in keys:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, level in _sorted_suffix_keys(keys, "ood/level_"):
        xs, ys = run.series(key)
        _line(ax, xs, ys, label=f"level {level}")
    xs, ys = run.series("ood/accuracy")
    # Bands on the whole accuracy only: five overlapping level bands would hide the lines.
    _line(ax, xs, ys, _bands(run, "ood/accuracy", intervals), linestyle="--", color="black", label="whole")
    _iteration_axis(ax, run.iterations)
    ax.set_ylabel("OOD accuracy (greedy)")
    ax.set_title("Out-of-distribution accuracy per level")
    _legend(ax, fontsize="small")
    return _save(fig, path)


def plot_pass_at_k(run: RunRecord, path: Path, intervals: Intervals | None = None) -> Path | None:
    keys = _sorted_suffix_keys(run.metric_keys(), "pass@k/")
    if not keys:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for row in run.rows:
        cis = [(intervals or {}).get(int(row["iteration"]), {}).get(k) for k, _ in keys]
        _line(ax, [int(s) for _, s in keys], [row.get(k) for k, _ in keys], cis, errorbars=True,
              label=f"M{row['iteration']}")
    _log2_axis(ax, [int(s) for _, s in keys])
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k (test, sampled)")
    ax.set_title("pass@k per iteration")
    ax.grid(alpha=0.3)
    _legend(ax)
    return _save(fig, path)


def plot_churn(churn: Sequence[dict[str, Any]], path: Path, baseline: str = "M1") -> Path | None:
    """Questions gained (up) and lost (down) against the baseline per iteration, and the net."""
    if not churn:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    ts = [int(r["iteration"]) for r in churn]
    ax.bar(ts, [r["gained"] for r in churn], color="tab:green", label=f"gained (solved, not by {baseline})")
    ax.bar(ts, [-r["lost"] for r in churn], color="tab:red", label=f"lost (solved by {baseline}, not now)")
    ax.plot(ts, [r["net"] for r in churn], marker="o", color="black", label="net")
    ax.axhline(0, color="grey", linewidth=0.8)
    _iteration_axis(ax, ts)
    ax.set_ylabel("test questions (greedy)")
    ax.set_title(f"Churn against {baseline}")
    _legend(ax, fontsize="small")
    return _save(fig, path)


RL_CURVES = (
    ("reward/mean", "reward"),
    ("reward/task", "task grade\n(self_verify)"),  # the true accuracy beside a self-verifier's approval
    ("kl", "KL to ref. (k3)"),
    ("entropy_mc", "entropy (MC, nats)"),
    ("response_length", "response length\n(tokens)"),
)


def plot_rl_curves(run: RunRecord, path: Path) -> Path | None:
    """The online RL blocks' per-step curves (iter_<t>/trainer/train_log.jsonl of grpo / rloo
    iterations): reward with its spread, the task's grade when a self-verifier gave the reward, KL
    when logged, entropy, response length; one x axis of online steps, a
    dotted line where each iteration's block starts. None for a run with no online step."""
    import json

    blocks = []
    for t in run.iterations:
        log = run.folder / f"iter_{t}" / "trainer" / "train_log.jsonl"
        if not log.is_file():
            continue
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if "reward/mean" in r]
        if rows:
            blocks.append((t, rows))
    if not blocks:
        return None
    keys = [(k, label) for k, label in RL_CURVES if any(k in r for _, rows in blocks for r in rows)]
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.6 * len(keys)), sharex=True, squeeze=False)
    start = 0
    for t, rows in blocks:
        xs = [start + i + 1 for i in range(len(rows))]
        for ax, (key, label) in zip(axes[:, 0], keys):
            ys = [r.get(key) for r in rows]
            bands = None
            if key == "reward/mean":
                bands = [(r[key] - r.get("reward/std", 0.0), r[key] + r.get("reward/std", 0.0)) for r in rows]
            _line(ax, xs, ys, bands, color="tab:blue", markersize=3)
            ax.axvline(start + 0.5, color="grey", linestyle=":", linewidth=0.8)
            ax.text(start + 0.6, 1.0, f"M{t}", transform=ax.get_xaxis_transform(), va="top", fontsize="small")
            ax.set_ylabel(label, fontsize="small")
        start += len(rows)
    axes[-1, 0].set_xlabel("online step")
    axes[0, 0].set_title("Online RL per step (shaded: reward ± std of the step's answers)", fontsize="medium")
    return _save(fig, path)


def plot_run(
    run: RunRecord, folder: Path, intervals: Intervals | None = None,
    churn: Sequence[dict[str, Any]] = (), baseline: str = "M1",
) -> list[Path]:
    """Every plot of one run into `folder`; returns the files written."""
    made = [
        plot_pass_at_1([run], folder / "pass_at_1.png", [intervals]),
        plot_is_pass_at_n(run, folder / "is_pass_at_n.png", intervals),
        plot_diversity(run, folder / "diversity.png", intervals),
        plot_ood(run, folder / "ood.png", intervals),
        plot_pass_at_k(run, folder / "pass_at_k.png", intervals),
        plot_churn(churn, folder / "churn.png", baseline),
        plot_rl_curves(run, folder / "rl_curves.png"),
    ]
    return [p for p in made if p is not None]


def plot_overlay(runs: Sequence[RunRecord], key: str, path: Path) -> Path | None:
    """One metric against the iteration, one line per run, each with its (1 - alpha) interval as a
    band (the `<key>/ci_low` / `<key>/ci_high` values the run logged beside it); None when no run
    has the metric."""
    fig, ax = plt.subplots(figsize=(6, 4))
    iterations: set[int] = set()
    drawn = False
    for run in runs:
        xs, ys = run.series(key)
        lows, highs = run.series(f"{key}/ci_low")[1], run.series(f"{key}/ci_high")[1]
        bands = [(lo, hi) if lo is not None and hi is not None else None for lo, hi in zip(lows, highs)]
        iterations.update(xs)
        drawn |= _line(ax, xs, ys, bands, label=run.label)
    if not drawn:
        plt.close(fig)
        return None
    _iteration_axis(ax, sorted(iterations))
    ax.set_ylabel(key)
    ax.set_title(f"{key} per iteration")
    _legend(ax, fontsize=8)
    return _save(fig, path)


def plot_comparison(runs: Sequence[RunRecord], folder: Path) -> list[Path]:
    """Plots with one line per run (e.g. one per paradigm): pass@1 and OOD whole accuracy."""
    made = [plot_pass_at_1(runs, folder / "pass_at_1.png")]
    if any("ood/accuracy" in r.metric_keys() for r in runs):
        fig, ax = plt.subplots(figsize=(6, 4))
        iterations: set[int] = set()
        for run in runs:
            xs, ys = run.series("ood/accuracy")
            iterations.update(xs)
            _line(ax, xs, ys, label=run.label)
        _iteration_axis(ax, sorted(iterations))
        ax.set_ylabel("OOD accuracy (greedy)")
        ax.set_title("OOD accuracy per iteration")
        _legend(ax)
        made.append(_save(fig, folder / "ood_accuracy.png"))
    return made
