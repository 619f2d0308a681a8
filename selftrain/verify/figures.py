"""The data of paper B's per-model figures, from one generator's rewards and its verifier's scores.

- Fig. 5, `threshold_sweep`: the gap as the filter's threshold moves — MC's per-question quantile
  (top 0.1 .. 0.9) and CoT-Score's global threshold (tau 1 .. 10); CoT-Binary has one threshold.
- Fig. 6, `tournament_by_round`: the accuracy of the survivors after each round r and the gap
  against the previous round's survivors (round 0: every generation).
- Fig. 7 (left), `gap_distribution`: the per-question gaps of one filter, binned, with mean and sd.
- Fig. 7 (right) / Fig. 19, `gap_accuracy_correlation`: Pearson r between a question's gap and its
  generation accuracy, with the Fisher-z interval (`metrics.stats.pearson_interval`).
Pure functions over plain data; `selftrain.verify.gv_gap` (recipes/gv_gap.py) writes them to
results.json and draws them with `verify.analysis.plot_*`.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from selftrain.metrics import generation_verification_gap
from selftrain.metrics.stats import pearson_interval

from .filters import keep_masks, parse_filter

MC_QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
COT_SCORE_TAUS = tuple(range(1, 11))
SWEEPS = {"mc": ("top", MC_QUANTILES), "cot_score": ("tau", COT_SCORE_TAUS)}


def _gap(rewards: Sequence[Sequence[float]], scores: dict[str, Sequence[Sequence[float]]], text: str
         ) -> dict[str, Any]:
    return generation_verification_gap(rewards, keep_masks(parse_filter(text), scores))


def threshold_sweep(
    rewards: Sequence[Sequence[float]], scores_by_method: dict[str, Sequence[Sequence[float]]]
) -> dict[str, list[dict[str, float | None]]]:
    """{"mc:top" / "cot_score:tau": [{threshold, gap, relative_gap, kept_fraction}, ...]} for the
    methods that were run."""
    out = {}
    for method, (kind, thresholds) in SWEEPS.items():
        if method not in scores_by_method:
            continue
        rows = []
        for x in thresholds:
            g = _gap(rewards, scores_by_method, f"{method}:{kind}={x:g}")
            rows.append({"threshold": float(x), "gap": g["gap"], "relative_gap": g["relative_gap"],
                         "kept_fraction": g["kept_fraction"]})
        out[f"{method}:{kind}"] = rows
    return out


def tournament_by_round(
    rewards: Sequence[Sequence[float]], scores_by_method: dict[str, Sequence[Sequence[float]]], rounds: int
) -> list[dict[str, float]]:
    """Round 0 (every generation) .. `rounds`: the survivors' accuracy, the gap against round 0 and
    against the previous round (paper B, Fig. 6 right)."""
    out = []
    previous = None
    for r in range(rounds + 1):
        acc = _gap(rewards, scores_by_method, f"tournament:rounds={r}")["filtered_accuracy"]
        base = out[0]["filtered_accuracy"] if out else acc
        out.append({"round": r, "filtered_accuracy": acc, "gap": acc - base,
                    "gap_vs_previous": 0.0 if previous is None else acc - previous})
        previous = acc
    return out


def gap_distribution(per_question_gap: Sequence[float], bin_width: float = 0.005) -> dict[str, Any]:
    """Mean, sd (population) and the non-empty bins [left edge, count] of width `bin_width` (paper
    B bins at 0.005)."""
    n = len(per_question_gap)
    mean = sum(per_question_gap) / n
    sd = math.sqrt(sum((g - mean) ** 2 for g in per_question_gap) / n)
    counts: dict[int, int] = {}
    for g in per_question_gap:
        b = math.floor(round(g / bin_width, 9))
        counts[b] = counts.get(b, 0) + 1
    return {"mean": mean, "sd": sd, "n": n, "bin_width": bin_width,
            "bins": [[round(b * bin_width, 12), c] for b, c in sorted(counts.items())]}


def gap_accuracy_correlation(
    per_question_gap: Sequence[float], per_question_accuracy: Sequence[float], confidence: float = 0.95
) -> dict[str, Any]:
    """Pearson r between the per-question gap and generation accuracy, with its interval."""
    r, ci = pearson_interval(per_question_gap, per_question_accuracy, confidence)
    return {"r": r, "ci": ci, "n": len(per_question_gap)}


def figure_data(
    rewards: Sequence[Sequence[float]],
    scores_by_method: dict[str, Sequence[Sequence[float]]],
    results: dict[str, dict[str, Any]],
    tournament_rounds: int | None = None,
) -> dict[str, Any]:
    """Everything above for one self-verifying model: the sweeps, the tournament by round (when
    it ran, up to `tournament_rounds`), and per filter of `results` (from `gap_results`) the gap
    distribution and the gap-accuracy correlation."""
    out: dict[str, Any] = {"threshold_sweep": threshold_sweep(rewards, scores_by_method)}
    if "tournament" in scores_by_method and tournament_rounds:
        out["tournament_by_round"] = tournament_by_round(rewards, scores_by_method, tournament_rounds)
    out["gap_distribution"] = {t: gap_distribution(r["per_question_gap"]) for t, r in results.items()}
    out["gap_accuracy"] = {t: gap_accuracy_correlation(r["per_question_gap"], r["per_question_accuracy"])
                           for t, r in results.items()}
    return out
