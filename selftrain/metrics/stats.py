"""Intervals, paired tests, multiplicity and power: the statistics behind every verdict.

Questions are a sample from a larger population of questions, so every interval and every test
treats the *question* as the unit (Miller 2024, "Adding Error Bars to Evals"): a question's several
samples are summarised per question first (its correct count, its pass@k, its diversity value) and
the bootstrap resamples whole questions. Two models evaluated on the same questions are compared
with paired statistics on the per-question differences.

What comes from scipy: the Wilson interval (`binomtest(...).proportion_ci(method="wilson")`), the
exact McNemar test (`binomtest` on the discordant questions) and the normal quantiles of the power
formulas. The question bootstrap is numpy: one seeded matrix of resample counts per question set is
shared by every metric and every model of a report, and a statistic over a resample is a function
of column sums, so the whole report is a few matrix products (scipy.stats.bootstrap resamples each
statistic separately, which for ~200 statistics of a 5,000-question run is minutes, not seconds;
the tests check our percentile intervals against scipy.stats.bootstrap on the same data).
Holm's adjustment is not in scipy (its `false_discovery_control` is Benjamini-Hochberg/Yekutieli).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from scipy import optimize, stats

DEFAULT_RESAMPLES = 2000
POWER = 0.8  # the power every "smallest detectable change" is stated at
# A bootstrap over fewer questions than this says little about the population of questions (a mean
# over 2 questions resamples to a handful of values, and its percentile interval is far too narrow):
# a paired bootstrap verdict on a metric that so few questions define is undefined.
MIN_BOOTSTRAP_QUESTIONS = 10


# ------------------------------------------------------------------ single proportions


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval of successes / n; None when n == 0 (no question, no proportion)."""
    if n == 0:
        return None
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


# ------------------------------------------------------------------ paired binary outcomes


def mcnemar_exact(gained: int, lost: int) -> float:
    """Exact two-sided McNemar p-value: under H0 each discordant question is gained or lost with
    probability 1/2, so `gained` ~ Binomial(gained + lost, 1/2). No discordant question: p = 1."""
    n = int(gained) + int(lost)
    if n == 0:
        return 1.0
    return float(stats.binomtest(int(gained), n, 0.5).pvalue)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment (family-wise error <= alpha); None entries stay None and are not
    counted in the family."""
    idx = [i for i, p in enumerate(p_values) if p is not None]
    m = len(idx)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda j: p_values[j])):  # type: ignore[arg-type, return-value]
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))  # type: ignore[arg-type]
        out[i] = running
    return out


# ------------------------------------------------------------------ question bootstrap


def stable_seed(*parts: object) -> int:
    """A seed from names (not Python's salted hash), so a regenerated report is identical."""
    return zlib.crc32("/".join(map(str, parts)).encode())


def resample_counts(n_questions: int, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """(n_resamples, n_questions) counts: how often each question is drawn in each bootstrap resample
    (questions drawn with replacement, n_questions per resample)."""
    if n_questions < 1:
        raise ValueError(f"n_questions={n_questions}: a bootstrap needs at least one question")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_questions, size=(n_resamples, n_questions))
    draws += np.arange(n_resamples)[:, None] * n_questions  # row r's questions -> bins of row r
    return (
        np.bincount(draws.ravel(), minlength=n_resamples * n_questions)
        .reshape(n_resamples, n_questions)
        .astype(np.float64)
    )


@dataclass(frozen=True, eq=False)
class Statistic:
    """A per-question-set statistic written as a function of column sums.

    `columns` (n_questions, m) holds per-question values; the statistic is `combine(sums)` with
    `sums` the m column sums over the questions (over a resample: the count-weighted sums), NaN
    where it is undefined. Means, means over the questions where a value is defined, and ratios of
    level accuracies (the group disparity) all take this form.
    """

    columns: np.ndarray
    combine: Callable[[np.ndarray], np.ndarray]
    support: int | None = None  # how many questions the value rests on (the fewest, for a ratio)
    # counts matrix id -> resampled values: a report resamples one statistic for its interval and
    # again in every comparison it enters; the product with 2,000 x 5,000 counts is the slow part.
    _memo: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    def value(self) -> float | None:
        out = float(self.combine(self.columns.sum(axis=0)[None, :])[0])
        return out if math.isfinite(out) else None

    def resampled(self, counts: np.ndarray) -> np.ndarray:
        """The statistic on every resample of `counts` (NaN where undefined)."""
        hit = self._memo.get(id(counts))
        if hit is not None and hit[0] is counts:  # the memo keeps `counts` alive, so ids cannot recur
            return hit[1]
        out = self.combine(counts @ self.columns)
        self._memo[id(counts)] = (counts, out)
        return out


def _ratio(sums: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sums[:, 1] > 0, sums[:, 0] / np.where(sums[:, 1] > 0, sums[:, 1], 1), np.nan)


def mean_statistic(values: Sequence[float | None], members: Sequence[bool] | None = None) -> Statistic:
    """Mean of `values` over the questions where a value is defined (None / NaN = undefined) and,
    when given, `members` is true (a level, an improvement set)."""
    v = np.array([np.nan if x is None else float(x) for x in values], dtype=np.float64)
    defined = np.isfinite(v)
    if members is not None:
        defined &= np.asarray(members, dtype=bool)
    columns = np.stack([np.where(defined, v, 0.0), defined.astype(np.float64)], axis=1)
    return Statistic(columns, _ratio, support=int(defined.sum()))


def disparity_statistic(
    correct: Sequence[float], levels: Sequence[object], low: object, high: object
) -> Statistic:
    """(acc(low) - acc(high)) / acc(low), paper A's group disparity; NaN when acc(low) = 0 or a level
    has no question (in the data or in a resample)."""
    c = np.asarray(correct, dtype=np.float64)
    lo = np.array([lv == low for lv in levels], dtype=np.float64)
    hi = np.array([lv == high for lv in levels], dtype=np.float64)

    def combine(s: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            acc_lo = s[:, 0] / s[:, 1]
            acc_hi = s[:, 2] / s[:, 3]
            out = (acc_lo - acc_hi) / acc_lo
        return np.where(np.isfinite(out), out, np.nan)

    support = int(min(lo.sum(), hi.sum()))
    return Statistic(np.stack([c * lo, lo, c * hi, hi], axis=1), combine, support=support)


def percentile_interval(resampled: np.ndarray, confidence: float = 0.95) -> tuple[float, float] | None:
    """Percentile interval over the resamples where the statistic is defined; None when fewer than
    half are (the statistic is then too often undefined for an interval to mean anything)."""
    finite = resampled[np.isfinite(resampled)]
    if finite.size == 0 or finite.size < resampled.size / 2:
        return None
    tail = (1 - confidence) / 2
    low, high = np.quantile(finite, [tail, 1 - tail])
    return float(low), float(high)


def bootstrap_interval(
    stat: Statistic, counts: np.ndarray, confidence: float = 0.95
) -> tuple[float, float] | None:
    """Question-bootstrap percentile interval of one statistic."""
    return percentile_interval(stat.resampled(counts), confidence)


@dataclass(frozen=True)
class PairedResult:
    """Model b minus model a on the same questions."""

    value_a: float | None
    value_b: float | None
    delta: float | None
    ci: tuple[float, float] | None
    p_value: float | None
    gained: int | None = None  # binary metrics: questions b solves and a does not
    lost: int | None = None  # ... and the other way round


def bootstrap_p_value(deltas: np.ndarray) -> float | None:
    """Two-sided p-value of H0: delta = 0 from the bootstrap distribution of the difference (the
    smallest alpha whose percentile interval excludes 0), with the +1 correction of a Monte Carlo
    p-value so it is never 0."""
    finite = deltas[np.isfinite(deltas)]
    if finite.size == 0 or finite.size < deltas.size / 2:
        return None
    below = (1 + np.count_nonzero(finite <= 0)) / (finite.size + 1)
    above = (1 + np.count_nonzero(finite >= 0)) / (finite.size + 1)
    return float(min(1.0, 2 * min(below, above)))


def paired_bootstrap(
    a: Statistic, b: Statistic, counts: np.ndarray, confidence: float = 0.95
) -> PairedResult:
    """b - a with both statistics evaluated on the same resampled questions (the pairing)."""
    va, vb = a.value(), b.value()
    if va is None or vb is None:
        return PairedResult(va, vb, None, None, None)
    deltas = b.resampled(counts) - a.resampled(counts)
    return PairedResult(va, vb, vb - va, percentile_interval(deltas, confidence), bootstrap_p_value(deltas))


def paired_binary(
    a: Sequence[float],
    b: Sequence[float],
    counts: np.ndarray,
    members: Sequence[bool] | None = None,
    confidence: float = 0.95,
    statistics: tuple[Statistic, Statistic] | None = None,
) -> PairedResult:
    """Two models' 0/1 outcomes on the same questions: exact McNemar p-value, bootstrap interval of
    the difference in accuracy, and the churn (gained, lost). `statistics`: the two accuracies as
    already-built `mean_statistic(outcomes, members)` (their resamples are then reused)."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    m = np.ones_like(x, dtype=bool) if members is None else np.asarray(members, dtype=bool)
    gained = int(np.count_nonzero(m & (y == 1) & (x == 0)))
    lost = int(np.count_nonzero(m & (x == 1) & (y == 0)))
    sa, sb = statistics or (mean_statistic(x, m), mean_statistic(y, m))
    boot = paired_bootstrap(sa, sb, counts, confidence)
    if boot.delta is None:
        return boot
    return PairedResult(
        boot.value_a, boot.value_b, boot.delta, boot.ci, mcnemar_exact(gained, lost), gained, lost
    )


def pooled_paired_bootstrap(
    pairs: Sequence[tuple[Statistic, Statistic]],
    counts: np.ndarray,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedResult:
    """b - a averaged over K replicates (independent reruns of the whole loop, evaluated on the same
    questions): each bootstrap draw resamples the questions (one row of `counts`, shared by every
    replicate) and the replicates (K draws with replacement), so the interval holds both the
    question sampling and the between-replicate (training-seed) spread. K = 1 is `paired_bootstrap`."""
    values = [(a.value(), b.value()) for a, b in pairs]
    if not pairs or any(va is None or vb is None for va, vb in values):
        return PairedResult(None, None, None, None, None)
    va = float(np.mean([v[0] for v in values]))
    vb = float(np.mean([v[1] for v in values]))
    deltas = np.stack([b.resampled(counts) - a.resampled(counts) for a, b in pairs])  # (K, B)
    k, n_resamples = deltas.shape
    pick = np.random.default_rng(seed).integers(0, k, size=(n_resamples, k))
    pooled = deltas[pick, np.arange(n_resamples)[:, None]].mean(axis=1)
    return PairedResult(va, vb, vb - va, percentile_interval(pooled, confidence), bootstrap_p_value(pooled))


def gap_intervals(
    per_question_gap: Sequence[float],
    per_question_accuracy: Sequence[float],
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[str, tuple[float, float] | None]:
    """Question-bootstrap intervals of paper B's gap (mean of per-prompt gaps) and relative gap
    (mean over the prompts not saturated, acc < 1, of gap / (1 - acc)), prompts resampled."""
    gaps = np.asarray(per_question_gap, dtype=np.float64)
    acc = np.asarray(per_question_accuracy, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(acc < 1, gaps / (1 - acc), np.nan)
    counts = resample_counts(len(gaps), n_resamples, seed)
    return {
        "gap": bootstrap_interval(mean_statistic(gaps), counts, confidence),
        "relative_gap": bootstrap_interval(mean_statistic(relative), counts, confidence),
    }


def loglinear_fit(
    flops: Sequence[float], values: Sequence[float], confidence: float = 0.95
) -> dict[str, float | int | list[float] | None] | None:
    """Least-squares line of `values` against log10(`flops`) (paper B, Fig. 1: "the relative gap is
    linear in the log of the pre-training FLOPs"): slope per decade of FLOPs, intercept, and the
    t interval of the slope (n - 2 degrees of freedom; None below 3 points, where no spread of the
    residuals is left). None when fewer than 2 points or all FLOPs are equal. The points are
    models, not questions: the interval says how well the line is pinned by these models only."""
    pts = [(math.log10(f), float(v)) for f, v in zip(flops, values) if v is not None and f > 0]
    if len(pts) < 2 or len({x for x, _ in pts}) < 2:
        return None
    x = np.array([p[0] for p in pts])
    y = np.array([p[1] for p in pts])
    n = len(pts)
    dx, dy = x - x.mean(), y - y.mean()
    sxx, syy = float(dx @ dx), float(dy @ dy)
    slope = float(dx @ dy) / sxx
    intercept = float(y.mean()) - slope * float(x.mean())
    ci = None
    if n >= 3:
        residual = y - (intercept + slope * x)
        se = math.sqrt(float(residual @ residual) / (n - 2) / sxx)
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 2)) * se
        ci = [slope - half, slope + half]
    r = float(dx @ dy) / math.sqrt(sxx * syy) if np.ptp(y) > 0 else None  # undefined for equal values
    return {"slope": slope, "intercept": intercept, "slope_ci": ci, "n": n, "r": r}


def pearson_interval(
    x: Sequence[float], y: Sequence[float], confidence: float = 0.95
) -> tuple[float | None, list[float] | None]:
    """Pearson r and its Fisher-z interval (tanh(atanh r ± z / sqrt(n - 3)); None below 4 pairs);
    r is None when either side is constant. The pairs are taken as independent (one per question)."""
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(xs) != len(ys):
        raise ValueError(f"pearson_interval: {len(xs)} x values but {len(ys)} y values")
    if len(xs) < 2 or np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return None, None
    r = float(np.corrcoef(xs, ys)[0, 1])
    if len(xs) < 4:
        return r, None
    if abs(r) >= 1.0:
        return r, [r, r]
    half = float(stats.norm.ppf(0.5 + confidence / 2)) / math.sqrt(len(xs) - 3)
    z = math.atanh(r)
    return r, [math.tanh(z - half), math.tanh(z + half)]


def check_stats(alpha: object, effect: object, resamples: object, where: str = "config") -> None:
    """Config errors naming the key: alpha in (0, 1), a power effect > 0, >= 100 resamples."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ValueError(f"{where}: stats.alpha={alpha!r}: must be in (0, 1)")
    if isinstance(effect, bool) or not isinstance(effect, (int, float)) or not effect > 0:
        raise ValueError(f"{where}: stats.power_effect={effect!r}: must be > 0")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 100:
        raise ValueError(f"{where}: stats.resamples={resamples!r}: must be an integer >= 100")


# ------------------------------------------------------------------ power


def _z(alpha: float) -> float:
    return float(stats.norm.ppf(1 - alpha / 2))


def paired_binary_power(n: int, discordance: float, delta: float, alpha: float = 0.05) -> float:
    """Power of the two-sided McNemar test (normal approximation, Connor 1987) on n questions, with
    `discordance` the share of questions the two models answer differently and `delta` the
    difference in accuracy (|delta| <= discordance)."""
    d, p = abs(delta), discordance
    if d == 0 or p <= 0:
        return alpha
    spread = math.sqrt(max(p - d * d, 1e-12))
    return float(stats.norm.cdf((d * math.sqrt(n) - _z(alpha) * math.sqrt(p)) / spread))


def paired_binary_mde(n: int, discordance: float, alpha: float = 0.05, power: float = POWER) -> float | None:
    """Smallest |difference in accuracy| detected with `power` by McNemar on n questions at this
    discordance; None when even delta = discordance (every discordant question one way) is not."""
    if discordance <= 0 or n < 1:
        return None
    if paired_binary_power(n, discordance, discordance, alpha) < power:
        return None
    return float(
        optimize.brentq(lambda d: paired_binary_power(n, discordance, d, alpha) - power, 1e-9, discordance)
    )


def paired_binary_n_needed(
    discordance: float, effect: float, alpha: float = 0.05, power: float = POWER
) -> int:
    """Questions McNemar needs to detect a difference `effect` with `power`; the discordance is at
    least |effect| (a change of e needs at least a share e of questions to change)."""
    d = abs(effect)
    p = max(discordance, d)
    n = ((_z(alpha) * math.sqrt(p) + float(stats.norm.ppf(power)) * math.sqrt(max(p - d * d, 0.0))) / d) ** 2
    return int(math.ceil(n))


def mean_difference_power(n: int, sd: float, delta: float, alpha: float = 0.05) -> float:
    """Power of a two-sided test of a paired mean difference (normal approximation), per-question
    differences with standard deviation `sd`."""
    if sd <= 0:
        return 1.0 if delta else alpha
    k = abs(delta) * math.sqrt(n) / sd
    return float(stats.norm.cdf(k - _z(alpha)) + stats.norm.cdf(-k - _z(alpha)))


def mean_difference_mde(n: int, sd: float, alpha: float = 0.05, power: float = POWER) -> float | None:
    """Smallest paired mean difference detected with `power` on n questions (None: sd unknown)."""
    if sd <= 0 or n < 1:
        return None
    return (_z(alpha) + float(stats.norm.ppf(power))) * sd / math.sqrt(n)


def mean_difference_n_needed(sd: float, effect: float, alpha: float = 0.05, power: float = POWER) -> int:
    """Questions needed to detect a paired mean difference `effect` with `power`."""
    return int(math.ceil(((_z(alpha) + float(stats.norm.ppf(power))) * sd / abs(effect)) ** 2))
