"""Turning verifier scores into paper B's numbers: gap tables, cross-verification matrices, plots.

Pure functions over plain data (rewards and scores grouped per question) built on
`selftrain.metrics`; `selftrain.verify.gv_gap` (recipes/gv_gap.py) feeds them and writes what they return.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from selftrain.metrics import generation_verification_gap, pearson, score_histogram
from selftrain.metrics.stats import gap_intervals

from .filters import FilterSpec, keep_masks


def gap_results(
    rewards: Sequence[Sequence[float]],
    scores_by_method: dict[str, Sequence[Sequence[float]]],
    specs: Sequence[FilterSpec],
) -> dict[str, dict[str, Any]]:
    """Per filter (keyed by its spec text): gap, relative gap, filtered accuracy, kept fraction, edges."""
    out = {}
    for spec in specs:
        masks = keep_masks(spec, scores_by_method)
        result = generation_verification_gap(rewards, masks)
        result["label"] = spec.label()
        cis = gap_intervals(result["per_question_gap"], result["per_question_accuracy"])
        result["gap_ci"], result["relative_gap_ci"] = cis["gap"], cis["relative_gap"]
        out[spec.text] = result
    return out


def accuracy(rewards: Sequence[Sequence[float]]) -> float:
    """Mean over questions of the share of correct generations (J(f))."""
    return sum(sum(row) / len(row) for row in rewards) / len(rewards)


def _pct(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * value:.2f}"


def _pct_ci(ci: Sequence[float] | None) -> str:
    """` [lo, hi]` in % (the 95% t interval over prompts), or nothing when there is none."""
    return "" if not ci else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def markdown_gap_tables(rows: Sequence[dict[str, Any]], specs: Sequence[FilterSpec]) -> str:
    """Paper B's tables 3 and 4: one row per (generator, verifier), one column per filter (in %).

    rows: dicts with generator, verifier, accuracy and results (gap_results output). The gap and
    relative gap carry their 95% t interval over prompts, `value [low, high]`.
    """
    head = "| Generator | Verifier | Accuracy | " + " | ".join(s.label() for s in specs) + " |"
    rule = "|---|---|---:|" + "---:|" * len(specs)
    parts = []
    for title, key in (("Gap (%)", "gap"), ("Relative gap (%)", "relative_gap"),
                       ("Accuracy of the kept generations (%)", "filtered_accuracy"),
                       ("Kept fraction (%)", "kept_fraction")):
        lines = [f"### {title}", "", head, rule]
        for row in rows:
            cells = [_pct(row["results"][s.text][key]) + _pct_ci(row["results"][s.text].get(f"{key}_ci"))
                     for s in specs]
            lines.append(f"| {row['generator']} | {row['verifier']} | {_pct(row['accuracy'])} | "
                         + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    edge = ["### Edge cases (questions with nothing kept / with every generation correct)", "",
            "| Generator | Verifier | " + " | ".join(s.label() for s in specs) + " |",
            "|---|---|" + "---:|" * len(specs)]
    for row in rows:
        res = row["results"]
        cells = [f"{res[s.text]['n_empty']} / {res[s.text]['n_saturated']}" for s in specs]
        edge.append(f"| {row['generator']} | {row['verifier']} | " + " | ".join(cells) + " |")
    parts.append("\n".join(edge))
    return "\n\n".join(parts) + "\n"


def method_correlations(scores_by_method: dict[str, Sequence[Sequence[float]]]) -> dict[str, float | None]:
    """Pearson correlation of û between every two methods, over all responses ("a~b" keys)."""
    flat = {m: [s for row in rows for s in row] for m, rows in scores_by_method.items()}
    names = sorted(flat)
    return {f"{a}~{b}": pearson(flat[a], flat[b]) for i, a in enumerate(names) for b in names[i + 1:]}


def gap_correlations(results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Pearson correlation of the per-question gaps between every two filters ("a~b" keys)."""
    names = list(results)
    return {
        f"{a}~{b}": pearson(results[a]["per_question_gap"], results[b]["per_question_gap"])
        for i, a in enumerate(names) for b in names[i + 1:]
    }


def cot_score_histogram(scores: Sequence[Sequence[float]], failed: Sequence[Sequence[bool]] | None = None
                        ) -> dict[str, Any]:
    """Counts of CoT-Score's scores 1..10 (unparsed ones left out) and the mode (paper B: 10)."""
    flat = []
    for q, row in enumerate(scores):
        for i, s in enumerate(row):
            flat.append(None if failed is not None and failed[q][i] else s)
    hist = score_histogram(flat, bins=[k + 0.5 for k in range(11)])
    mode = None
    if hist["mode_bin"] is not None:
        mode = int(round((hist["mode_bin"][0] + hist["mode_bin"][1]) / 2))
    return {"scores": list(range(1, 11)), "counts": hist["counts"], "n": hist["n"],
            "n_unparsed": hist["n_missing"], "mode": mode}


def cross_matrix(rows: Sequence[dict[str, Any]], spec_text: str, key: str = "gap"
                 ) -> tuple[list[str], list[str], list[list[float | None]]]:
    """(generators, verifiers, matrix[g][v]) of one filter's `key` over all (generator, verifier) rows."""
    generators = list(dict.fromkeys(r["generator"] for r in rows))
    verifiers = list(dict.fromkeys(r["verifier"] for r in rows))
    matrix: list[list[float | None]] = [[None] * len(verifiers) for _ in generators]
    for r in rows:
        value = r["results"][spec_text][key]
        matrix[generators.index(r["generator"])][verifiers.index(r["verifier"])] = value
    return generators, verifiers, matrix


def markdown_matrix(title: str, generators: Sequence[str], verifiers: Sequence[str],
                    matrix: Sequence[Sequence[float | None]]) -> str:
    lines = [f"### {title}", "", "| Generator \\ Verifier | " + " | ".join(verifiers) + " |",
             "|---|" + "---:|" * len(verifiers)]
    for g, row in zip(generators, matrix):
        lines.append(f"| {g} | " + " | ".join(_pct(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never a display
    import matplotlib.pyplot as plt

    return plt


def plot_heatmap(path: str | Path, title: str, generators: Sequence[str], verifiers: Sequence[str],
                 matrix: Sequence[Sequence[float | None]]) -> Path:
    """Paper B's Fig. 3: gap (%) per generator (rows) and verifier (columns), annotated."""
    import numpy as np

    plt = _pyplot()
    values = np.array([[np.nan if v is None else 100 * v for v in row] for row in matrix], dtype=float)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(verifiers), 1.2 + 0.8 * len(generators)))
    limit = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
    image = ax.imshow(values, cmap="RdBu", vmin=-max(limit, 1e-9), vmax=max(limit, 1e-9))
    ax.set_xticks(range(len(verifiers)), labels=list(verifiers), rotation=30, ha="right")
    ax.set_yticks(range(len(generators)), labels=list(generators))
    ax.set_xlabel("verifier")
    ax.set_ylabel("generator")
    for i in range(len(generators)):
        for j in range(len(verifiers)):
            text = "n/a" if np.isnan(values[i, j]) else f"{values[i, j]:.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="gap (%)")
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_vs_flops(path: str | Path, series: dict[str, list[tuple[float, float | None]]], ylabel: str,
                  fits: dict[str, dict[str, Any] | None] | None = None) -> Path:
    """Paper B's Fig. 1: a metric (%) against log10 of pre-training FLOPs, one line of points per
    filter, and its least-squares line (`metrics.stats.loglinear_fit`) dashed when `fits` has one."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, points in series.items():
        pts = sorted((math.log10(f), 100 * v) for f, v in points if v is not None and f > 0)
        if pts:
            (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", linestyle="none",
                              label=label)
            fit = (fits or {}).get(label)
            if fit is not None:
                xs = [pts[0][0], pts[-1][0]]
                ax.plot(xs, [100 * (fit["intercept"] + fit["slope"] * x) for x in xs], linestyle="--",
                        color=line.get_color(), label=f"{label}: {100 * fit['slope']:.1f} pts/decade")
    ax.set_xlabel("log10 pre-training FLOPs")
    ax.set_ylabel(ylabel)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.legend()
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_threshold_sweep(path: str | Path, sweep: dict[str, list[dict[str, Any]]], title: str) -> Path:
    """Paper B's Fig. 5: the gap (%) against the filter threshold, one panel per swept method."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, max(len(sweep), 1), figsize=(4.5 * max(len(sweep), 1), 3.6), squeeze=False)
    for ax, (name, rows) in zip(axes[0], sweep.items()):
        ax.plot([r["threshold"] for r in rows], [100 * r["gap"] for r in rows], marker="o")
        ax.set_xlabel(name.replace(":", " ") + " threshold")
        ax.set_ylabel("gap (%)")
        ax.axhline(0.0, color="grey", linewidth=0.8)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_tournament_rounds(path: str | Path, rounds: list[dict[str, Any]], title: str) -> Path:
    """Paper B's Fig. 6: survivors' accuracy (left) and the gap against the previous round (right)."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    xs = [r["round"] for r in rounds]
    left.plot(xs, [100 * r["filtered_accuracy"] for r in rounds], marker="o")
    left.set_xlabel("tournament round")
    left.set_ylabel("accuracy of the survivors (%)")
    right.plot(xs[1:], [100 * r["gap_vs_previous"] for r in rounds[1:]], marker="o")
    right.set_xlabel("tournament round")
    right.set_ylabel("gap vs previous round (%)")
    right.axhline(0.0, color="grey", linewidth=0.8)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_gap_histogram(path: str | Path, distributions: dict[str, dict[str, Any]], title: str) -> Path:
    """Paper B's Fig. 7 (left): the per-question gap distribution of each filter, mean and sd."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, d in distributions.items():
        lefts = [b[0] for b in d["bins"]]
        ax.bar(lefts, [b[1] for b in d["bins"]], width=d["bin_width"], align="edge", alpha=0.5,
               label=f"{label} (μ={d['mean']:.3f}, σ={d['sd']:.3f})")
    ax.set_xlabel("per-question gap")
    ax.set_ylabel("questions")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_gap_vs_accuracy(path: str | Path, points: dict[str, tuple[Sequence[float], Sequence[float], Any]],
                         title: str) -> Path:
    """Paper B's Fig. 19: per-question gap against generation accuracy, Pearson r [interval]."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, (acc, gap, corr) in points.items():
        r = "n/a" if corr["r"] is None else f"{corr['r']:.2f}"
        ci = "" if not corr["ci"] else f" [{corr['ci'][0]:.2f}, {corr['ci'][1]:.2f}]"
        ax.scatter(acc, gap, s=12, alpha=0.6, label=f"{label}: r = {r}{ci}")
    ax.set_xlabel("generation accuracy of the question")
    ax.set_ylabel("per-question gap")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_model_figures(out_dir: str | Path, row: dict[str, Any], labels: dict[str, str], name: str
                       ) -> dict[str, Path]:
    """Figs. 5, 6, 7 and 19 of one self-verifying model (a gv_gap row with `figures` from
    `verify.figures.figure_data`) as PNGs `<figure>_<name>.png` in out_dir; {W&B key: path}."""
    out, fig, model = Path(out_dir), row["figures"], row["generator"]
    images = {}
    if fig["threshold_sweep"]:
        images[f"threshold_sweep/{name}"] = plot_threshold_sweep(
            out / f"threshold_sweep_{name}.png", fig["threshold_sweep"], model)
    if fig.get("tournament_by_round"):
        images[f"tournament_rounds/{name}"] = plot_tournament_rounds(
            out / f"tournament_rounds_{name}.png", fig["tournament_by_round"], model)
    distributions = {labels[t]: d for t, d in fig["gap_distribution"].items()}
    images[f"gap_histogram/{name}"] = plot_gap_histogram(
        out / f"gap_histogram_{name}.png", distributions, model)
    results = row["results"]
    points = {labels[t]: (results[t]["per_question_accuracy"], results[t]["per_question_gap"], c)
              for t, c in fig["gap_accuracy"].items()}
    images[f"gap_vs_accuracy/{name}"] = plot_gap_vs_accuracy(
        out / f"gap_vs_accuracy_{name}.png", points, model)
    return images


def _save(fig: Any, plt: Any, path: str | Path) -> Path:
    """Save through a temp name and a rename so a killed run never leaves half a PNG."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path
