"""The statistics behind every verdict (selftrain.metrics.stats), checked by simulation.

Each simulation draws >= 1,000 data sets with a fixed seed, so a run is deterministic; the figures it
measures are printed with `pytest -s` (docs/metrics.md quotes them).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from selftrain.metrics import stats

ALPHA = 0.05
SIMS = 2000


def _report(name: str, value: float) -> None:
    print(f"\n[stats simulation] {name}: {value:.4f}")


# ------------------------------------------------------------------ exact pieces


@pytest.mark.parametrize("gained,lost", [(3, 6), (0, 5), (7, 1), (4, 4), (12, 30), (0, 0), (1, 0)])
def test_mcnemar_equals_binomial_tail_sums(gained, lost):
    n = gained + lost
    if n == 0:
        expected = 1.0
    else:  # two-sided: twice the smaller tail of Binomial(n, 1/2), capped at 1
        low = min(gained, lost)
        expected = min(1.0, 2 * sum(math.comb(n, i) for i in range(low + 1)) / 2**n)
    assert stats.mcnemar_exact(gained, lost) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_the_issues_example_is_noise():
    # make run's report before this change: pass@1 9/40 -> 6/40. Whatever the pairing, the net loss
    # is 3 questions, and the smallest p-value that allows (0 gained, 3 lost) is 0.25: never a
    # regression at alpha 0.05; with more churn the p-value only grows.
    assert stats.mcnemar_exact(0, 3) == pytest.approx(0.25)
    assert stats.mcnemar_exact(4, 7) == pytest.approx(1124 / 2048)  # 2 * (1 + 11 + 55 + 165 + 330) / 2^11
    assert all(stats.mcnemar_exact(g, g + 3) > 0.25 for g in range(1, 20))


def test_wilson_matches_the_closed_form():
    k, n, z = 9, 40, sps.norm.ppf(0.975)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert stats.wilson_interval(k, n) == pytest.approx((centre - half, centre + half), rel=1e-9)
    assert stats.wilson_interval(0, 0) is None
    assert stats.wilson_interval(0, 10)[0] == 0.0


def test_paired_t_is_scipys_paired_t_test_for_means():
    rng = np.random.default_rng(0)
    a = rng.beta(2, 3, size=30)
    b = np.clip(a + rng.normal(0.03, 0.1, size=30), 0, 1)
    res = stats.paired_t(stats.mean_statistic(a), stats.mean_statistic(b))
    ref = sps.ttest_rel(b, a)
    assert res.delta == pytest.approx(b.mean() - a.mean())
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-9) and res.df == 29
    for level in (0.05, 0.01, 0.05 / 6):
        ci = ref.confidence_interval(1 - level)
        assert res.interval(1 - level) == pytest.approx((ci.low, ci.high), rel=1e-9)


def test_statistic_interval_is_the_t_interval_for_a_mean():
    values = np.random.default_rng(1).beta(2, 3, size=25)
    ci = sps.ttest_1samp(values, 0).confidence_interval(0.95)
    ours = stats.statistic_interval(stats.mean_statistic(values))
    assert ours == pytest.approx((ci.low, ci.high), rel=1e-9)
    # a mean over a subset (a ratio of sums over all n questions): df = defined questions m - 1, and
    # the jackknife over all n questions is the t standard error times sqrt((n - 1) m / (n (m - 1)))
    sub = [None if i % 3 == 0 else float(v) for i, v in enumerate(values)]
    kept = np.array([v for v in sub if v is not None])
    n, m = len(sub), len(kept)
    half = sps.t.ppf(0.975, m - 1) * kept.std(ddof=1) / math.sqrt(m) * math.sqrt((n - 1) * m / (n * (m - 1)))
    ours = stats.statistic_interval(stats.mean_statistic(sub))
    assert ours == pytest.approx((kept.mean() - half, kept.mean() + half), rel=1e-9)
    assert stats.statistic_interval(stats.mean_statistic([0.5])) is None


@pytest.mark.parametrize("level", [0.05, 0.01, 0.05 / 6, 0.05 / 120])
def test_mcnemar_interval_inverts_the_exact_test(level):
    """The interval beside a McNemar verdict excludes 0 exactly when p < level: words and
    interval cannot disagree on the page."""
    for gained in range(0, 25):
        for lost in range(0, 25):
            a = [0] * gained + [1] * lost + [1] * 40
            b = [1] * gained + [0] * lost + [1] * 40
            res = stats.paired_binary(a, b)
            lo, hi = res.interval(1 - level)
            assert lo - 1e-12 <= res.delta <= hi + 1e-12
            assert (lo > 0 or hi < 0) == (res.p_value < level), (gained, lost)


def test_exact_mcnemar_power_matches_a_simulation_of_the_exact_test():
    rng = np.random.default_rng(2)
    n, disc, delta, level = 120, 0.25, 0.12, 0.05 / 6
    discordant = rng.binomial(n, disc, size=20000)
    gained = rng.binomial(discordant, 0.5 + delta / (2 * disc))
    crit = {int(d): stats._mcnemar_critical(np.array([d]), level)[0] for d in np.unique(discordant)}
    reject = np.array([g <= crit[int(d)] or g >= d - crit[int(d)] for g, d in zip(gained, discordant)])
    rate = reject.mean()
    se = math.sqrt(rate * (1 - rate) / reject.size)
    assert abs(rate - stats.mcnemar_power(n, disc, delta, level)) < 4 * se
    for d in range(1, 60):  # the critical values reproduce the test's decisions
        c = stats._mcnemar_critical(np.array([d]), level)[0]
        for g in range(d + 1):
            assert (g <= c or g >= d - c) == (stats.mcnemar_exact(g, d - g) < level)


def test_sample_size_formulas_invert_the_power():
    level = 0.05 / 6
    n = stats.mcnemar_n_needed(0.2, 0.05, level)
    assert stats.mcnemar_power(n, 0.2, 0.05, level) >= 0.8  # the search's n (exact power saw-tooths in n)
    assert stats.mcnemar_power(n - 5, 0.2, 0.05, level) < 0.8
    n = stats.paired_t_n_needed(0.3, 0.05, level)
    assert stats.paired_t_power(n, 0.3, 0.05, level) >= 0.8 > stats.paired_t_power(n - 1, 0.3, 0.05, level)
    mde = stats.mcnemar_mde(400, 0.2, level)
    assert stats.mcnemar_power(400, 0.2, mde, level) == pytest.approx(0.8, abs=1e-4)
    mde = stats.paired_t_mde(40, 0.3, level)
    assert stats.paired_t_power(40, 0.3, mde, level) == pytest.approx(0.8, abs=1e-6)
    assert stats.mcnemar_mde(5, 0.01, level) is None  # even the largest change is not detectable
    # a stricter level needs a larger change
    assert stats.paired_t_mde(120, 0.4, 0.05 / 6) > stats.paired_t_mde(120, 0.4, 0.05)


def test_replicate_test_adds_the_seed_spread():
    rng = np.random.default_rng(3)
    q = 200
    p = rng.beta(1, 1, q)
    base = stats.mean_statistic(rng.binomial(8, p) / 8)
    with pytest.raises(ValueError, match="at least 2 replicates"):
        stats.replicate_test([(base, base)])
    shifts = [-0.1, -0.03, 0.03, 0.1]
    reps = [(base, stats.mean_statistic(rng.binomial(8, np.clip(p + s, 0, 1)) / 8)) for s in shifts]
    res = stats.replicate_test(reps)
    single = stats.paired_t(*reps[0])
    assert res.method == stats.REPLICATE_T and 1 <= res.df <= q - 1
    assert res.delta == pytest.approx(np.mean([b.value() - a.value() for a, b in reps]))
    assert res.se > 2 * single.se  # the seed spread dominates


def test_statistics_with_undefined_values():
    s = stats.mean_statistic([1.0, None, 0.0, float("nan")])
    assert s.value() == 0.5  # the mean over the two defined questions
    assert stats.mean_statistic([None, None]).value() is None
    # group disparity (acc(1) - acc(5)) / acc(1): level 1 2/4 correct, level 5 1/4 -> 0.5
    d = stats.disparity_statistic([1, 1, 0, 0, 1, 0, 0, 0], [1, 1, 1, 1, 5, 5, 5, 5], 1, 5)
    assert d.value() == pytest.approx(0.5)
    assert stats.disparity_statistic([0, 0, 1], [1, 1, 5], 1, 5).value() is None  # acc(1) = 0


def test_check_stats_names_the_key():
    for bad, key in (
        ((0.0, 0.05), "stats.alpha"),
        ((1.0, 0.05), "stats.alpha"),
        ((0.05, 0.0), "stats.power_effect"),
        ((0.05, -1), "stats.power_effect"),
        ((0.05, 0.05, []), "stats.primary_metrics"),
        ((0.05, 0.05, ["pass@1", "pass@1"]), "stats.primary_metrics"),
    ):
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            stats.check_stats(*bad)


# ------------------------------------------------------------------ simulations


def test_wilson_coverage():
    rng = np.random.default_rng(10)
    covered = []
    for n, p in ((40, 0.225), (200, 0.1), (60, 0.5)):
        ks = rng.binomial(n, p, size=SIMS)
        cis = {k: stats.wilson_interval(int(k), n) for k in np.unique(ks)}
        covered.append(np.mean([cis[k][0] <= p <= cis[k][1] for k in ks]))
    for c in covered:
        _report("Wilson coverage", c)
        assert 0.93 <= c <= 0.97


def _clustered(rng: np.random.Generator, q: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-question success probabilities (very different across questions) and correct counts."""
    p = rng.beta(0.6, 0.9, size=q)
    return p, rng.binomial(n, p)


def test_t_interval_coverage_on_a_clustered_metric():
    """Coverage (mean over questions of correct / n) with 8 samples per question: the t interval
    over questions covers the population value; an interval that treats the samples as
    independent does not (samples of one question are correlated)."""
    rng = np.random.default_rng(11)
    q, n, truth, sims = 150, 8, 0.6 / 1.5, 2000
    hits = naive_hits = 0
    for _ in range(sims):
        _, c = _clustered(rng, q, n)
        lo, hi = stats.statistic_interval(stats.mean_statistic(c / n))
        hits += lo <= truth <= hi
        share = c.sum() / (q * n)
        half = 1.96 * math.sqrt(share * (1 - share) / (q * n))
        naive_hits += share - half <= truth <= share + half
    _report("t-interval coverage (clustered)", hits / sims)
    _report("sample-level interval coverage (wrong unit)", naive_hits / sims)
    assert 0.93 <= hits / sims <= 0.97  # Monte-Carlo SE 0.005
    assert naive_hits / sims < 0.85


def test_gap_intervals_over_prompts_skip_saturated_ones():
    rng = np.random.default_rng(50)
    acc = rng.random(200)
    acc[:20] = 1.0  # saturated prompts: in the gap (as 0), not in the relative gap
    gaps = np.where(acc < 1, (1 - acc) * rng.random(200) * 0.5, 0.0)
    cis = stats.gap_intervals(gaps, acc)
    ref = sps.ttest_1samp(gaps, 0).confidence_interval(0.95)
    assert cis["gap"] == pytest.approx((ref.low, ref.high), rel=1e-9)
    relative = gaps[20:] / (1 - acc[20:])
    lo, hi = cis["relative_gap"]  # a mean over the 180 unsaturated prompts of 200: the t interval
    ref = sps.ttest_1samp(relative, 0).confidence_interval(0.95)  # up to sqrt(199 * 180 / (200 * 179))
    assert (hi - lo) / (ref.high - ref.low) == pytest.approx(math.sqrt(199 * 180 / (200 * 179)), rel=1e-9)
    assert (lo + hi) / 2 == pytest.approx(relative.mean(), rel=1e-12)
    assert stats.gap_intervals([0.0, 0.0], [1.0, 1.0])["relative_gap"] is None  # every prompt saturated


def test_gap_results_and_tables_carry_the_intervals():
    from selftrain.verify.analysis import gap_results, markdown_gap_tables
    from selftrain.verify.filters import parse_filter

    rewards = [[1, 0, 0, 1], [0, 0, 1, 1], [1, 1, 0, 0], [0, 1, 0, 0]]
    scores = {"cot_binary": [[1, 0, 0, 1], [0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 1, 0]]}
    specs = [parse_filter("cot_binary", ["cot_binary"])]
    res = gap_results(rewards, scores, specs)["cot_binary"]
    lo, hi = res["gap_ci"]
    assert lo <= res["gap"] <= hi and lo < hi
    table = markdown_gap_tables(
        [{"generator": "g", "verifier": "v", "accuracy": 0.4, "results": {"cot_binary": res}}], specs
    )
    assert f"{100 * res['gap']:.2f} [{100 * lo:.1f}, {100 * hi:.1f}]" in table


def test_loglinear_fit_is_least_squares_on_log10_flops_with_a_t_interval():
    from scipy import stats as sps

    from selftrain.metrics.stats import loglinear_fit

    flops = [1e20, 1e21, 3e21, 1e22, 1e23]
    values = [0.01, 0.05, 0.04, 0.09, 0.12]
    fit = loglinear_fit(flops, values, confidence=0.9)
    x = np.log10(flops)
    slope, intercept = np.polyfit(x, values, 1)
    assert fit["slope"] == pytest.approx(slope) and fit["intercept"] == pytest.approx(intercept)
    resid = np.asarray(values) - (slope * x + intercept)
    se = math.sqrt(resid @ resid / (len(x) - 2) / ((x - x.mean()) @ (x - x.mean())))
    half = sps.t.ppf(0.95, len(x) - 2) * se
    assert fit["slope_ci"] == pytest.approx([slope - half, slope + half])
    two = loglinear_fit([1e20, 1e21], [0.0, 0.1])
    assert two["slope"] == pytest.approx(0.1) and two["slope_ci"] is None  # no residual spread left
    assert loglinear_fit([1e20], [0.1]) is None and loglinear_fit([1e20, 1e20], [0.1, 0.2]) is None
    assert loglinear_fit([1e20, 1e21, 1e22], [0.1, None, 0.3])["n"] == 2  # a missing value is skipped
    flat = loglinear_fit([1e20, 1e21, 1e22], [0.2, 0.2, 0.2])
    assert flat["slope"] == 0 and flat["slope_ci"] == pytest.approx([0, 0], abs=1e-12) and flat["r"] is None


def test_pretraining_flops_table_and_overrides():
    from selftrain.verify.flops import model_key, pretraining_flops

    assert model_key("meta-llama/Llama-2-7b-hf") == "llama-2-7b" == model_key("/models/Llama-2-7b-chat-hf/")
    got = pretraining_flops(["smollm2-135m", "meta-llama/Llama-2-7b-hf", "Qwen/Qwen2.5-7B-Instruct",
                             "mystery", "Qwen/Qwen1.5-7B"], {"mystery": 5e20})
    assert got == {"smollm2-135m": 6 * 135e6 * 2e12, "meta-llama/Llama-2-7b-hf": 6 * 7e9 * 2e12,
                   "Qwen/Qwen2.5-7B-Instruct": 6 * 7e9 * 18e12, "mystery": 5e20}
    assert pretraining_flops(["smollm2-135m"], {"smollm2-135m": 1.0}) == {"smollm2-135m": 1.0}
