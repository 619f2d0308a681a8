"""Paper B: filters over proxy utilities û, the generation-verification gap, and helpers around it.

A keep-mask is a list of bools, one per generation of a prompt (True = the weight w(û) is 1). A
score may be None or NaN when the verifier produced nothing usable; such a generation is never
kept and is left out of quantile computations. Edge-case choices are justified in docs/metrics.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._checks import binary_nested, is_missing, require_nonempty, require_same_length


def threshold_filter(scores: Sequence[float | None], tau: float, strict: bool = False) -> list[bool]:
    """Global threshold: keep û >= tau (paper B, Example 2.2); `strict=True` keeps û > tau (its Alg. 1)."""
    if is_missing(tau):
        raise ValueError("tau must be a number")
    kept = []
    for score in scores:
        if is_missing(score):
            kept.append(False)
        else:
            kept.append(float(score) > tau if strict else float(score) >= tau)
    return kept


def quantile_filter(scores_per_question: Sequence[Sequence[float | None]], top: float) -> list[list[bool]]:
    """Per-prompt quantile threshold ("top n" in paper B): keep û >= the `top`-quantile of its scores.

    So top = 0.8 keeps about the best 20% of each prompt's generations (all ties at the threshold are
    kept, hence "about"); top = 0 keeps every scored generation. The quantile is numpy's default
    linear interpolation over the prompt's non-missing scores. A prompt with no score keeps nothing.
    """
    if is_missing(top) or not 0.0 <= float(top) <= 1.0:
        raise ValueError(f"top must be a quantile level in [0, 1], got {top!r}")
    masks = []
    for q, scores in enumerate(scores_per_question):
        try:
            values = [float(s) for s in scores if not is_missing(s)]
        except ValueError as err:
            raise ValueError(f"scores_per_question[{q}]: {err}") from err
        if not values:
            masks.append([False] * len(scores))
            continue
        threshold = float(np.quantile(np.asarray(values), float(top)))
        masks.append(threshold_filter(scores, threshold))
    return masks


# A per-prompt row of a nested mask; numpy rows count too, numpy bool scalars do not.
_ROW_TYPES = (list, tuple, np.ndarray)


def and_ensemble(*masks: Sequence[Any]) -> list[Any]:
    """Logical AND of keep-masks of identical shape (flat lists or lists of per-prompt lists)."""
    if not masks:
        raise ValueError("and_ensemble needs at least one mask")
    first = masks[0]
    for m, mask in enumerate(masks[1:], start=1):
        _check_same_shape(first, mask, f"mask {m}")
    return _and(masks)


def _check_same_shape(reference: Sequence[Any], other: Sequence[Any], where: str) -> None:
    if len(reference) != len(other):
        raise ValueError(f"{where} has {len(other)} entries, mask 0 has {len(reference)}")
    for i, (a, b) in enumerate(zip(reference, other)):
        nested_a, nested_b = isinstance(a, _ROW_TYPES), isinstance(b, _ROW_TYPES)
        if nested_a != nested_b:
            raise ValueError(f"{where}[{i}]: nesting differs from mask 0")
        if nested_a:
            _check_same_shape(a, b, f"{where}[{i}]")


def _and(masks: Sequence[Sequence[Any]]) -> list[Any]:
    out = []
    for items in zip(*masks):
        if isinstance(items[0], _ROW_TYPES):
            out.append(_and(items))
        else:
            out.append(all(bool(x) for x in items))
    return out


def generation_verification_gap(
    rewards_per_question: Sequence[Sequence[float]], keep_masks_per_question: Sequence[Sequence[bool]]
) -> dict[str, Any]:
    """gap(f, g) = J(f[w(û_g)]) - J(f) and the relative gap, per prompt then averaged (Defs. 2.1, 2.2).

    Per prompt x: acc(x) = mean reward of all its generations, acc_kept(x) = mean reward of the kept
    ones. Edge cases:
      - nothing kept for x: the reweighted distribution is undefined (all weights 0); x contributes
        acc_kept(x) := acc(x), i.e. gap 0, stays in every mean, and is counted in n_empty;
      - acc(x) = 1: the relative gap's denominator 1 - acc(x) is 0; x is left out of the relative
        mean only and counted in n_saturated (relative_gap is None if every prompt is saturated).
    Returns accuracy, filtered_accuracy, gap, relative_gap, kept_fraction (kept / all generations),
    n_questions, n_empty, n_saturated, n_relative (prompts in the relative mean), per_question_gap,
    per_question_accuracy.
    """
    require_nonempty(rewards_per_question, "rewards_per_question")
    require_same_length(
        rewards_per_question, keep_masks_per_question, "rewards_per_question", "keep_masks_per_question"
    )
    rows = binary_nested(rewards_per_question, "rewards_per_question")
    acc_all, acc_kept, per_question_gap, relative = [], [], [], []
    n_empty = n_saturated = kept_total = sample_total = 0
    for q, (row, mask) in enumerate(zip(rows, keep_masks_per_question)):
        require_same_length(row, mask, f"rewards_per_question[{q}]", f"keep_masks_per_question[{q}]")
        acc = sum(row) / len(row)
        kept = [r for r, keep in zip(row, mask) if keep]
        kept_total += len(kept)
        sample_total += len(row)
        if kept:
            filtered = sum(kept) / len(kept)
        else:
            filtered = acc
            n_empty += 1
        acc_all.append(acc)
        acc_kept.append(filtered)
        per_question_gap.append(filtered - acc)
        if acc == 1:
            n_saturated += 1
        else:
            relative.append((filtered - acc) / (1.0 - acc))
    count = len(rows)
    return {
        "accuracy": sum(acc_all) / count,
        "filtered_accuracy": sum(acc_kept) / count,
        "gap": sum(per_question_gap) / count,
        "relative_gap": sum(relative) / len(relative) if relative else None,
        "kept_fraction": kept_total / sample_total,
        "n_questions": count,
        "n_empty": n_empty,
        "n_saturated": n_saturated,
        "n_relative": len(relative),
        "per_question_gap": per_question_gap,
        "per_question_accuracy": acc_all,  # with the gaps: the t intervals over prompts of both gaps
    }


def score_histogram(
    scores: Sequence[float | None],
    bins: int | Sequence[float] = 10,
    value_range: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Histogram of verifier scores (missing ones counted apart), e.g. CoT-Score's 1..10 distribution.

    Returns counts, edges (len(counts) + 1), n (scored), n_missing and mode_bin, the (low, high)
    edges of the most populated bin (the first one on ties; None when nothing is scored). For integer
    scores pass edges at half-integers, e.g. bins=[0.5, 1.5, ..., 10.5].
    """
    values = [float(s) for s in scores if not is_missing(s)]
    n_missing = len(scores) - len(values)
    if not values and value_range is None and isinstance(bins, int):
        value_range = (0.0, 1.0)  # numpy needs a finite range for an empty sample
    counts, edges = np.histogram(np.asarray(values, dtype=np.float64), bins=bins, range=value_range)
    mode_bin = None
    if values:
        top = int(np.argmax(counts))
        mode_bin = (float(edges[top]), float(edges[top + 1]))
    return {
        "counts": [int(c) for c in counts],
        "edges": [float(e) for e in edges],
        "n": len(values),
        "n_missing": n_missing,
        "mode_bin": mode_bin,
    }


def pearson(x: Sequence[float | None], y: Sequence[float | None]) -> float | None:
    """Pearson correlation; pairs with a missing value on either side are dropped.

    None when fewer than 2 pairs remain or either side is constant (the correlation is undefined).
    """
    require_same_length(x, y, "x", "y")
    pairs = [(float(a), float(b)) for a, b in zip(x, y) if not is_missing(a) and not is_missing(b)]
    if len(pairs) < 2:
        return None
    xs = np.array([p[0] for p in pairs])
    ys = np.array([p[1] for p in pairs])
    # Exact comparison: the mean of identical floats can differ from them by rounding, which would
    # turn a constant side into a garbage correlation instead of None.
    if xs.min() == xs.max() or ys.min() == ys.max():
        return None
    dx, dy = xs - xs.mean(), ys - ys.mean()
    sx, sy = math.sqrt(float(dx @ dx)), math.sqrt(float(dy @ dy))
    return float(np.clip(float(dx @ dy) / (sx * sy), -1.0, 1.0))


def update_error(acc_next: float, acc_filtered: float) -> float:
    """J(f_{t+1}) - J(f_t[w]): how far the updated model is from the filtered distribution it was fit to."""
    for name, value in (("acc_next", acc_next), ("acc_filtered", acc_filtered)):
        if is_missing(value) or not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name} must be an accuracy in [0, 1], got {value!r}")
    return float(acc_next) - float(acc_filtered)


def improvement_decomposition(acc_t: float, acc_filtered_t: float, acc_next: float) -> dict[str, float]:
    """Split J(f_{t+1}) - J(f_t) into gap(f_t) + update error (paper B, section 2.1)."""
    gap = update_error(acc_filtered_t, acc_t)  # same arithmetic and checks: J(f_t[w]) - J(f_t)
    error = update_error(acc_next, acc_filtered_t)
    return {"improvement": float(acc_next) - float(acc_t), "gap": gap, "update_error": error}
