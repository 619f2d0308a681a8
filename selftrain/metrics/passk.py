"""pass@k (unbiased estimator), coverage, greedy pass@1, per-level accuracy and improvement sets.

Paper A reports greedy pass@1, correct-answer coverage (mean fraction of correct samples) and pass@N
of M1 on the improvement set IS(t); paper B tracks pass@k for k = 1..128 per round ("effective
diversity"). All rewards are binary (see `_checks`).
"""

from __future__ import annotations

import numbers
from collections.abc import Hashable, Sequence
from typing import Any, TypeVar

from ._checks import binary_list, binary_nested, require_nonempty, require_same_length

Id = TypeVar("Id")


def _check_int(value: Any, name: str) -> int:
    # numbers.Integral admits numpy integers; floats such as 2.0 are rejected to catch swapped arguments.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    return int(value)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k).

    The ratio of binomials is evaluated as the product prod_{i=n-c+1..n} (1 - k/i), which never
    forms a large binomial coefficient (n = 128, k = 64 would overflow floats otherwise).
    Raises ValueError for k < 1, k > n, c < 0 or c > n.
    """
    n, c, k = _check_int(n, "n"), _check_int(c, "c"), _check_int(k, "k")
    if n < 1:
        raise ValueError(f"n must be >= 1 (number of samples), got {n}")
    if not 0 <= c <= n:
        raise ValueError(f"c must lie in [0, n] = [0, {n}], got {c}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k > n:
        raise ValueError(f"k = {k} exceeds the number of samples n = {n}; pass@k is not estimable")
    if c == 0:
        return 0.0
    if n - c < k:
        # Every k-subset contains at least one correct sample.
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def default_ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n, with n itself appended when it is not a power of two."""
    n = _check_int(n, "n")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    ks = []
    k = 1
    while k <= n:
        ks.append(k)
        k *= 2
    if ks[-1] != n:
        ks.append(n)
    return ks


def mean_pass_at_k(
    correct_counts: Sequence[int], n: int | Sequence[int], ks: Sequence[int] | None = None
) -> dict[int, float | None]:
    """Mean over questions of pass_at_k(n_q, c_q, k) for every k in `ks`.

    `n` is the number of samples per question (one int for all, or one per question). `ks` defaults
    to default_ks(min n). An empty question list (e.g. an empty improvement set) gives None for
    every k: the mean is undefined, and callers must report it as such rather than as 0.
    """
    counts = [_check_int(c, f"correct_counts[{i}]") for i, c in enumerate(correct_counts)]
    if isinstance(n, Sequence):
        ns = [_check_int(v, f"n[{i}]") for i, v in enumerate(n)]
        require_same_length(counts, ns, "correct_counts", "n")
    else:
        ns = [_check_int(n, "n")] * len(counts)
    if ks is None:
        if not ns:
            raise ValueError("ks must be given when there are no questions and n is a per-question list")
        ks = default_ks(min(ns))
    ks = [_check_int(k, "ks entry") for k in ks]
    if not counts:
        return {k: None for k in ks}
    result: dict[int, float | None] = {}
    for k in ks:
        total = 0.0
        for q, (nq, cq) in enumerate(zip(ns, counts)):
            try:
                total += pass_at_k(nq, cq, k)
            except ValueError as err:
                raise ValueError(f"question {q}: {err}") from err
        result[k] = total / len(counts)
    return result


def pass_at_k_from_rewards(
    rewards_per_question: Sequence[Sequence[float]], ks: Sequence[int] | None = None
) -> dict[int, float | None]:
    """mean_pass_at_k over binary rewards grouped per question (n may differ between questions)."""
    rows = binary_nested(rewards_per_question, "rewards_per_question")
    return mean_pass_at_k([sum(r) for r in rows], [len(r) for r in rows], ks)


def coverage(rewards_per_question: Sequence[Sequence[float]]) -> float:
    """Correct-answer coverage (paper A, eq. 1): mean over questions of (correct samples / samples)."""
    require_nonempty(rewards_per_question, "rewards_per_question")
    rows = binary_nested(rewards_per_question, "rewards_per_question")
    return sum(sum(r) / len(r) for r in rows) / len(rows)


def pass_at_1_greedy(rewards: Sequence[float]) -> float:
    """Greedy pass@1: the fraction of questions whose single greedy answer is correct."""
    require_nonempty(rewards, "rewards")
    values = binary_list(rewards, "rewards")
    return sum(values) / len(values)


def per_level_accuracy(rewards: Sequence[float], levels: Sequence[Hashable]) -> dict[Any, float]:
    """Greedy accuracy per difficulty level; keys are sorted when they are mutually comparable."""
    require_same_length(rewards, levels, "rewards", "levels")
    values = binary_list(rewards, "rewards")
    totals: dict[Any, list[int]] = {}
    for value, level in zip(values, levels):
        bucket = totals.setdefault(level, [0, 0])
        bucket[0] += value
        bucket[1] += 1
    try:
        keys = sorted(totals)
    except TypeError:
        keys = list(totals)
    return {key: totals[key][0] / totals[key][1] for key in keys}


def improvement_set(ids: Sequence[Id], correct_t: Sequence[bool], correct_m1: Sequence[bool]) -> list[Id]:
    """IS(t): the ids of questions that M_t answers correctly (greedy) and M1 does not, in input order."""
    require_same_length(ids, correct_t, "ids", "correct_t")
    require_same_length(ids, correct_m1, "ids", "correct_m1")
    flags_t = binary_list(correct_t, "correct_t")
    flags_m1 = binary_list(correct_m1, "correct_m1")
    if len(set(ids)) != len(ids):
        raise ValueError("ids must be unique: an improvement set is a set of questions")
    return [qid for qid, ok_t, ok_1 in zip(ids, flags_t, flags_m1) if ok_t and not ok_1]
