"""Intervals, paired tests, error control and power: the statistics behind every verdict.

Questions are a sample from a larger population of questions, so every interval and every test
treats the *question* as the unit (Miller 2024, "Adding Error Bars to Evals"): a question's several
samples are summarised per question first (its correct count, its pass@k, its diversity value), and
two models evaluated on the same questions are compared through per-question differences.

The tests and intervals (docs/metrics.md, "Intervals and verdicts"):

- a proportion of one model: the Wilson interval (`scipy.stats.binomtest(...).proportion_ci`);
- two models' 0/1 outcomes on the same questions: the exact McNemar test (`binomtest` on the
  discordant questions) and the exact interval that inverts it;
- any other statistic: a t-test on the jackknife (leave-one-question-out) values of the paired
  difference, with (questions that define it - 1) degrees of freedom. For a plain mean over the
  questions this *is* the paired t-test (`scipy.stats.ttest_rel`; tested), which keeps its level at
  10-30 questions where the percentile bootstrap does not; for a mean over a subset of questions or
  a ratio of level accuracies the jackknife is its delta-method extension;
- K replicate runs: a two-level t-test whose variance adds the between-replicate spread of the
  replicates' differences to the question-level spread (`replicate_test`).

Power is computed for the test that is actually applied, at the level it is actually applied at:
exactly for McNemar (a sum over the binomial distributions of the discordant and the gained
questions), and from the noncentral t distribution for the t-tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import optimize, stats

POWER = 0.8  # the power every "smallest detectable change" is stated at
# A t-test on fewer questions than this says little about the population of questions (a mean over
# 2 questions has 1 degree of freedom): a paired verdict on a metric that so few questions define is
# undefined. Simulated false-change rates at 10, 15 and 30 questions: tests/test_report_error_rates.py.
MIN_QUESTIONS = 10

MCNEMAR = "exact McNemar"
PAIRED_T = "paired t"
REPLICATE_T = "two-level t"


# ------------------------------------------------------------------ single proportions


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval of successes / n; None when n == 0 (no question, no proportion)."""
    if n == 0:
        return None
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


# ------------------------------------------------------------------ statistics over questions


@dataclass(frozen=True, eq=False)
class Statistic:
    """A per-question-set statistic written as a function of column sums.

    `columns` (n_questions, m) holds per-question values; the statistic is `combine(sums)` with
    `sums` (rows, m) column sums over the questions, NaN where it is undefined. Means, means over
    the questions where a value is defined, and ratios of level accuracies (the group disparity) all
    take this form, and so does every leave-one-question-out value (the sums minus one row).
    """

    columns: np.ndarray
    combine: Callable[[np.ndarray], np.ndarray]
    support: int | None = None  # how many questions the value rests on (the fewest, for a ratio)

    def value(self) -> float | None:
        out = float(self.combine(self.columns.sum(axis=0)[None, :])[0])
        return out if math.isfinite(out) else None

    def leave_one_out(self) -> np.ndarray:
        """(n_questions,) the statistic without question i (NaN where that is undefined)."""
        return self.combine(self.columns.sum(axis=0)[None, :] - self.columns)

    @property
    def n_questions(self) -> int:
        return int(self.columns.shape[0])


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
    has no question."""
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


def jackknife_se(leave_one_out: np.ndarray) -> float | None:
    """Jackknife standard error from the leave-one-out values (None when one is undefined). For a
    plain mean it is s / sqrt(n), the standard error of the t-test."""
    n = leave_one_out.size
    if n < 2 or not np.all(np.isfinite(leave_one_out)):
        return None
    dev = leave_one_out - leave_one_out.mean()
    return float(math.sqrt((n - 1) / n * float(dev @ dev)))


def _t_interval(centre: float, se: float, df: float, confidence: float) -> tuple[float, float]:
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    return centre - half, centre + half


def statistic_interval(stat: Statistic, confidence: float = 0.95) -> tuple[float, float] | None:
    """t interval of one statistic over questions: value +- t(support - 1) x jackknife SE (for a
    plain mean: the one-sample t interval). None with fewer than 2 supporting questions."""
    value = stat.value()
    support = stat.support if stat.support is not None else stat.n_questions
    if value is None or support < 2:
        return None
    se = jackknife_se(stat.leave_one_out())
    if se is None:
        return None
    return _t_interval(value, se, support - 1, confidence)


# ------------------------------------------------------------------ paired tests


@dataclass(frozen=True)
class PairedTest:
    """Model b minus model a on the same questions, with the test applied to the difference.

    `interval(confidence)` is the interval that inverts the test: it excludes 0 exactly when the
    test's p-value is below 1 - confidence, so a verdict and the interval printed beside it (at the
    verdict's level) always agree."""

    value_a: float | None
    value_b: float | None
    delta: float | None
    p_value: float | None
    method: str
    gained: int | None = None  # McNemar: questions b solves and a does not
    lost: int | None = None  # ... and the other way round
    n: int | None = None  # questions paired (McNemar: within the metric's members)
    se: float | None = None  # t-tests: standard error of the difference
    df: float | None = None  # ... and its degrees of freedom

    def interval(self, confidence: float) -> tuple[float, float] | None:
        if self.delta is None or self.p_value is None:
            return None
        if self.method == MCNEMAR:
            discordant = (self.gained or 0) + (self.lost or 0)
            if discordant == 0 or not self.n:
                return 0.0, 0.0
            # Clopper-Pearson interval of the gained share among the discordant questions (the
            # interval that inverts the exact binomial test; its beta-quantile form, which
            # binomtest(...).proportion_ci(method="exact") finds by root search), as a difference in
            # accuracy at the observed discordance: delta = discordance x (2 share - 1).
            g, tail = int(self.gained or 0), (1 - confidence) / 2
            low = float(stats.beta.ppf(tail, g, discordant - g + 1)) if g > 0 else 0.0
            high = float(stats.beta.ppf(1 - tail, g + 1, discordant - g)) if g < discordant else 1.0
            share = discordant / self.n
            return share * (2 * low - 1), share * (2 * high - 1)
        if self.se is None or self.df is None:
            return None
        if self.se == 0:
            return self.delta, self.delta
        return _t_interval(self.delta, self.se, self.df, confidence)


def mcnemar_exact(gained: int, lost: int) -> float:
    """Exact two-sided McNemar p-value: under H0 each discordant question is gained or lost with
    probability 1/2, so `gained` ~ Binomial(gained + lost, 1/2). No discordant question: p = 1."""
    n = int(gained) + int(lost)
    if n == 0:
        return 1.0
    # = binomtest(gained, n, 1/2).pvalue (symmetric null: twice the smaller tail), without its overhead
    return float(min(1.0, 2 * stats.binom.cdf(min(int(gained), int(lost)), n, 0.5)))


def _t_p_value(delta: float, se: float, df: float) -> float:
    if se == 0:
        return 1.0 if delta == 0 else 0.0
    return float(2 * stats.t.sf(abs(delta) / se, df))


def paired_binary(
    a: Sequence[float], b: Sequence[float], members: Sequence[bool] | None = None
) -> PairedTest:
    """Two models' 0/1 outcomes on the same questions (those in `members`): exact McNemar."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    m = np.ones_like(x, dtype=bool) if members is None else np.asarray(members, dtype=bool)
    n = int(m.sum())
    if n == 0:
        return PairedTest(None, None, None, None, MCNEMAR)
    gained = int(np.count_nonzero(m & (y == 1) & (x == 0)))
    lost = int(np.count_nonzero(m & (x == 1) & (y == 0)))
    va, vb = float(x[m].mean()), float(y[m].mean())
    return PairedTest(va, vb, vb - va, mcnemar_exact(gained, lost), MCNEMAR, gained, lost, n)


def _support(a: Statistic, b: Statistic) -> int:
    return min(s.support if s.support is not None else s.n_questions for s in (a, b))


def paired_t(a: Statistic, b: Statistic) -> PairedTest:
    """b - a by a t-test on the jackknife values of the difference, df = (fewest supporting
    questions) - 1. For plain means this is `scipy.stats.ttest_rel(b, a)`. Undefined (p None) when
    a value, or a leave-one-out value, is undefined, or with fewer than 2 supporting questions."""
    va, vb = a.value(), b.value()
    if va is None or vb is None:
        return PairedTest(va, vb, None, None, PAIRED_T)
    support = _support(a, b)
    se = jackknife_se(b.leave_one_out() - a.leave_one_out())
    if se is None or support < 2:
        return PairedTest(va, vb, vb - va, None, PAIRED_T)
    delta = vb - va
    return PairedTest(va, vb, delta, _t_p_value(delta, se, support - 1), PAIRED_T, se=se, df=support - 1)


def replicate_test(pairs: Sequence[tuple[Statistic, Statistic]]) -> PairedTest:
    """b - a averaged over K >= 2 replicates (independent reruns of the loop, evaluated on the same
    questions), by a two-level t-test.

    The difference is D = mean_k D_k (D_k: replicate k's difference). Its variance has a seed part
    and a question part: se^2 = S_B^2 / K + S_Q^2 / n, with S_B^2 the variance of the K replicate
    differences (training-seed spread, plus the within-replicate question noise) and S_Q^2 / n the
    squared jackknife SE of the replicate-averaged difference over questions (the questions are
    shared by the replicates, so their sampling error does not average out over replicates). The
    within-replicate noise is counted in both terms, which makes the test conservative, never
    liberal. Degrees of freedom: K - 1, the fewest any part of the variance rests on (a
    Welch-Satterthwaite df is liberal at K = 2: when the two replicates happen to agree, it trusts
    the small between-replicate variance with many degrees of freedom; simulated in
    tests/test_report_error_rates.py)."""
    k = len(pairs)
    if k < 2:
        raise ValueError("replicate_test needs at least 2 replicates (one replicate: paired_t)")
    values = [(a.value(), b.value()) for a, b in pairs]
    if any(va is None or vb is None for va, vb in values):
        return PairedTest(None, None, None, None, REPLICATE_T)
    va = float(np.mean([v[0] for v in values]))
    vb = float(np.mean([v[1] for v in values]))
    deltas = np.array([v[1] - v[0] for v in values])  # type: ignore[operator]
    support = min(_support(a, b) for a, b in pairs)
    loo = np.mean([b.leave_one_out() - a.leave_one_out() for a, b in pairs], axis=0)
    se_q = jackknife_se(loo)
    if se_q is None or support < 2:
        return PairedTest(va, vb, vb - va, None, REPLICATE_T)
    between = float(np.var(deltas, ddof=1)) / k
    within = se_q * se_q
    var = between + within
    if var == 0:
        return PairedTest(va, vb, vb - va, _t_p_value(vb - va, 0.0, 1), REPLICATE_T, se=0.0, df=1.0)
    df = float(k - 1)
    se = math.sqrt(var)
    return PairedTest(va, vb, vb - va, _t_p_value(vb - va, se, df), REPLICATE_T, se=se, df=df)


def gap_intervals(
    per_question_gap: Sequence[float], per_question_accuracy: Sequence[float], confidence: float = 0.95
) -> dict[str, tuple[float, float] | None]:
    """t intervals over prompts of paper B's gap (mean of per-prompt gaps) and relative gap (mean
    over the prompts not saturated, acc < 1, of gap / (1 - acc); its jackknife leaves one prompt
    out of the unsaturated mean)."""
    gaps = np.asarray(per_question_gap, dtype=np.float64)
    acc = np.asarray(per_question_accuracy, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(acc < 1, gaps / (1 - acc), np.nan)
    return {
        "gap": statistic_interval(mean_statistic(gaps), confidence),
        "relative_gap": statistic_interval(mean_statistic(relative), confidence),
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


def check_stats(alpha: object, effect: object, primary: object = None, where: str = "config") -> None:
    """Config errors naming the key: alpha in (0, 1), a power effect > 0, and primary metrics a
    non-empty list of distinct metric names."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ValueError(f"{where}: stats.alpha={alpha!r}: must be in (0, 1)")
    if isinstance(effect, bool) or not isinstance(effect, (int, float)) or not effect > 0:
        raise ValueError(f"{where}: stats.power_effect={effect!r}: must be > 0")
    if primary is not None:
        if (
            not isinstance(primary, (list, tuple))
            or not primary
            or not all(isinstance(p, str) and p for p in primary)
            or len(set(primary)) != len(primary)
        ):
            raise ValueError(
                f"{where}: stats.primary_metrics={primary!r}: must be a non-empty list of distinct "
                "metric names"
            )


# ------------------------------------------------------------------ power


def _mcnemar_critical(n_discordant: np.ndarray, level: float) -> np.ndarray:
    """Per discordant count N: the largest gained count c with 2 P(Bin(N, 1/2) <= c) < level (the
    exact test rejects when gained <= c or gained >= N - c); -1 when no count is rejected."""
    c = stats.binom.ppf(level / 2, n_discordant, 0.5) - 1
    # ppf returns the smallest c with cdf >= q: step back where rounding put it one too far
    too_far = (c >= 0) & (2 * stats.binom.cdf(c, n_discordant, 0.5) >= level)
    return np.where(too_far, c - 1, c)


def mcnemar_power(n: int, discordance: float, delta: float, level: float) -> float:
    """Exact power of the two-sided exact McNemar test at `level` on n questions: each question is
    discordant with probability `discordance`, and a discordant one is gained with probability
    (discordance + delta) / (2 discordance). Summed over the number of discordant questions."""
    d, p = abs(delta), discordance
    if p <= 0 or n < 1:
        return 0.0
    d = min(d, p)
    share = 0.5 + d / (2 * p)
    big = np.arange(n + 1)
    crit = _mcnemar_critical(big, level)
    reject = np.where(
        crit >= 0, stats.binom.cdf(crit, big, share) + stats.binom.sf(big - crit - 1, big, share), 0.0
    )
    return float(np.sum(stats.binom.pmf(big, n, p) * reject))


def mcnemar_mde(n: int, discordance: float, level: float, power: float = POWER) -> float | None:
    """Smallest |difference in accuracy| the exact McNemar test at `level` detects with `power` on n
    questions at this discordance; None when even delta = discordance (every discordant question
    one way) is not detected that often."""
    if discordance <= 0 or n < 1:
        return None
    if mcnemar_power(n, discordance, discordance, level) < power:
        return None
    return float(
        optimize.brentq(
            lambda d: mcnemar_power(n, discordance, d, level) - power, 1e-9, discordance, xtol=1e-6
        )
    )


def _smallest_n(power_at: Callable[[int], float], power: float, start: int) -> int:
    """Smallest n with power_at(n) >= power, by doubling then bisection (exact McNemar power is
    not quite monotone in n, so this is the first n of the crossing bisection finds)."""
    lo, hi = 1, max(2, start)
    while power_at(hi) < power:
        lo, hi = hi, hi * 2
        if hi > 10_000_000:
            raise ValueError("more than 10 million questions would be needed")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if power_at(mid) < power else (lo, mid)
    return hi


def mcnemar_n_needed(discordance: float, effect: float, level: float, power: float = POWER) -> int:
    """Questions the exact McNemar test at `level` needs to detect a difference `effect` with
    `power`; the discordance is at least |effect| (a change of e needs a share e of questions to
    change)."""
    d = abs(effect)
    p = max(discordance, d)
    z = float(stats.norm.ppf(1 - level / 2)) * math.sqrt(p) + float(stats.norm.ppf(power)) * math.sqrt(
        max(p - d * d, 0.0)
    )
    start = int(math.ceil((z / d) ** 2))  # Connor's normal approximation: the search starts there
    return _smallest_n(lambda n: mcnemar_power(n, p, d, level), power, start)


def t_power(se: float, df: float, delta: float, level: float) -> float:
    """Power of a two-sided t-test at `level` with this standard error and degrees of freedom
    against a true difference `delta` (noncentral t)."""
    if se <= 0:
        return 1.0 if delta else level
    crit = float(stats.t.ppf(1 - level / 2, df))
    ncp = abs(delta) / se
    upper = float(stats.nct.sf(crit, df, ncp))
    lower = float(stats.nct.cdf(-crit, df, ncp))  # scipy returns NaN far in the tail, where it is 0
    return min(1.0, (upper if math.isfinite(upper) else 1.0) + (lower if math.isfinite(lower) else 0.0))


def t_mde(se: float, df: float, level: float, power: float = POWER) -> float | None:
    """Smallest difference a two-sided t-test at `level` detects with `power` (None: se unknown)."""
    if not se > 0 or df < 1:
        return None
    hi = se * (float(stats.t.ppf(1 - level / 2, df)) + float(stats.t.ppf(power, df)) + 1)
    while t_power(se, df, hi, level) < power:
        hi *= 2
    return float(optimize.brentq(lambda d: t_power(se, df, d, level) - power, 0.0, hi, xtol=1e-9))


def paired_t_power(n: int, sd: float, delta: float, level: float) -> float:
    """Power of the paired t-test at `level` on n questions whose per-question differences have
    standard deviation `sd`."""
    return t_power(sd / math.sqrt(n), n - 1, delta, level)


def paired_t_mde(n: int, sd: float, level: float, power: float = POWER) -> float | None:
    """Smallest paired mean difference the paired t-test at `level` detects with `power` on n
    questions (None: sd unknown)."""
    if not sd > 0 or n < 2:
        return None
    return t_mde(sd / math.sqrt(n), n - 1, level, power)


def paired_t_n_needed(sd: float, effect: float, level: float, power: float = POWER) -> int:
    """Questions the paired t-test at `level` needs to detect a mean difference `effect`."""
    z = (float(stats.norm.ppf(1 - level / 2)) + float(stats.norm.ppf(power))) * sd / abs(effect)
    return _smallest_n(lambda n: paired_t_power(n, sd, effect, level) if n > 1 else 0.0, power, int(z * z))
