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


def test_holm_by_hand():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> monotone 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = stats.holm([0.2, None, 0.5])  # None is not part of the family (m = 2)
    assert out[1] is None and out[0] == pytest.approx(0.4) and out[2] == pytest.approx(0.5)
    assert stats.holm([0.9, 0.3]) == pytest.approx([0.9, 0.6])  # monotone
    assert stats.holm([0.9, 0.8]) == [1.0, 1.0]  # capped at 1
    assert stats.holm([]) == []


def test_wilson_matches_the_closed_form():
    k, n, z = 9, 40, sps.norm.ppf(0.975)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert stats.wilson_interval(k, n) == pytest.approx((centre - half, centre + half), rel=1e-9)
    assert stats.wilson_interval(0, 0) is None
    assert stats.wilson_interval(0, 10)[0] == 0.0


def test_resample_counts_are_seeded_and_sum_to_n():
    a = stats.resample_counts(37, 500, seed=3)
    assert a.shape == (500, 37) and (a.sum(axis=1) == 37).all()
    assert np.array_equal(a, stats.resample_counts(37, 500, seed=3))
    assert not np.array_equal(a, stats.resample_counts(37, 500, seed=4))
    # each question is drawn 1 time per resample on average
    assert a.mean() == pytest.approx(1.0)


def test_percentile_interval_agrees_with_scipy_bootstrap():
    rng = np.random.default_rng(0)
    values = rng.beta(2, 3, size=150)
    ours = stats.bootstrap_interval(stats.mean_statistic(values), stats.resample_counts(150, 4000, 1))
    ref = sps.bootstrap((values,), np.mean, n_resamples=4000, method="percentile", random_state=2)
    ci = ref.confidence_interval
    width = ci.high - ci.low
    assert ours[0] == pytest.approx(ci.low, abs=0.05 * width) and ours[1] == pytest.approx(
        ci.high, abs=0.05 * width
    )


def test_paired_bootstrap_agrees_with_scipy_paired_bootstrap():
    rng = np.random.default_rng(1)
    a = rng.beta(2, 3, size=120)
    b = np.clip(a + rng.normal(0.03, 0.1, size=120), 0, 1)
    res = stats.paired_bootstrap(
        stats.mean_statistic(a), stats.mean_statistic(b), stats.resample_counts(120, 4000, 5)
    )
    ref = sps.bootstrap(
        (a, b),
        lambda x, y, axis: np.mean(y, axis=axis) - np.mean(x, axis=axis),
        paired=True,
        n_resamples=4000,
        method="percentile",
        random_state=6,
    ).confidence_interval
    width = ref.high - ref.low
    assert res.delta == pytest.approx(b.mean() - a.mean())
    assert res.ci[0] == pytest.approx(ref.low, abs=0.05 * width) and res.ci[1] == pytest.approx(
        ref.high, abs=0.05 * width
    )


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
        ((0.0, 0.05, 2000), "stats.alpha"),
        ((1.0, 0.05, 2000), "stats.alpha"),
        ((0.05, 0.0, 2000), "stats.power_effect"),
        ((0.05, -1, 2000), "stats.power_effect"),
        ((0.05, 0.05, 10), "stats.resamples"),
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


def test_question_bootstrap_coverage_on_a_clustered_metric():
    """Coverage (mean over questions of correct / n) with 8 samples per question: the question
    bootstrap covers the population value; resampling single samples would not (it ignores that
    samples of one question are correlated)."""
    rng = np.random.default_rng(11)
    q, n, truth = 150, 8, 0.6 / 1.5
    counts = stats.resample_counts(q, 1000, seed=12)
    hits = 0
    naive_hits = 0
    for _ in range(1000):
        _, c = _clustered(rng, q, n)
        lo, hi = stats.bootstrap_interval(stats.mean_statistic(c / n), counts)
        hits += lo <= truth <= hi
        # the wrong unit: an interval that treats the q*n samples as independent
        share = c.sum() / (q * n)
        half = 1.96 * math.sqrt(share * (1 - share) / (q * n))
        naive_hits += share - half <= truth <= share + half
    _report("question-bootstrap coverage (clustered)", hits / 1000)
    _report("sample-level interval coverage (wrong unit)", naive_hits / 1000)
    assert 0.93 <= hits / 1000 <= 0.97
    assert naive_hits / 1000 < 0.85


def _paired_greedy(rng: np.random.Generator, q: int, p: np.ndarray, shift: np.ndarray | None = None):
    a = (rng.random(q) < p).astype(float)
    b = (rng.random(q) < (p if shift is None else shift)).astype(float)
    return a, b


def test_paired_verdicts_false_positive_rate_under_the_null():
    """Two models with equal per-question success probabilities: McNemar's verdict and the paired
    bootstrap's verdict on coverage each fire in <= alpha + 0.01 of the data sets."""
    rng = np.random.default_rng(20)
    q, n = 200, 8
    counts = stats.resample_counts(q, 1000, seed=21)
    binary_hits = coverage_hits = 0
    for _ in range(SIMS):
        p = rng.beta(0.6, 0.9, size=q)
        a, b = _paired_greedy(rng, q, p)
        res = stats.paired_binary(a, b, counts, confidence=1 - ALPHA)
        binary_hits += res.p_value < ALPHA and not res.ci[0] <= 0 <= res.ci[1]
        ca, cb = rng.binomial(n, p), rng.binomial(n, p)
        cov = stats.paired_bootstrap(
            stats.mean_statistic(ca / n), stats.mean_statistic(cb / n), counts, 1 - ALPHA
        )
        coverage_hits += cov.p_value < ALPHA and not cov.ci[0] <= 0 <= cov.ci[1]
    _report("false-positive rate, McNemar verdict", binary_hits / SIMS)
    _report("false-positive rate, paired bootstrap verdict (coverage)", coverage_hits / SIMS)
    assert binary_hits / SIMS <= ALPHA + 0.01
    assert coverage_hits / SIMS <= ALPHA + 0.01


def test_detection_rate_matches_the_predicted_power_mcnemar():
    """A known effect at the smallest change the report says 80% power detects: the verdict's
    detection rate is within 5 points of the power predicted from each data set's discordance."""
    rng = np.random.default_rng(30)
    q, discordance = 300, 0.2
    delta = stats.paired_binary_mde(q, discordance, ALPHA)
    gain, loss = (discordance + delta) / 2, (discordance - delta) / 2
    counts = stats.resample_counts(q, 1000, seed=31)
    detected, predicted = 0, []
    for _ in range(SIMS):
        u = rng.random(q)
        same = (rng.random(q) < 0.4).astype(float)  # concordant questions: both right or both wrong
        a = np.where(u < gain, 0.0, np.where(u < gain + loss, 1.0, same))
        b = np.where(u < gain, 1.0, np.where(u < gain + loss, 0.0, same))
        res = stats.paired_binary(a, b, counts, confidence=1 - ALPHA)
        detected += res.p_value < ALPHA and res.ci[0] > 0
        predicted.append(stats.paired_binary_power(q, (res.gained + res.lost) / q, delta, ALPHA))
    _report("McNemar detection rate", detected / SIMS)
    _report("McNemar predicted power", float(np.mean(predicted)))
    assert abs(detected / SIMS - np.mean(predicted)) <= 0.05
    assert abs(np.mean(predicted) - 0.8) <= 0.05


def test_detection_rate_matches_the_predicted_power_coverage():
    rng = np.random.default_rng(40)
    q, n = 200, 8
    counts = stats.resample_counts(q, 1000, seed=41)
    sd_guess = 0.22  # spread of the per-question coverage difference in this design (checked below)
    delta = stats.mean_difference_mde(q, sd_guess, ALPHA)
    big = rng.beta(0.6, 0.9, size=1_000_000)
    true_delta = float(np.mean(np.clip(big + delta, 0, 1) - big))  # the shift, after clipping at 1
    detected, predicted, sds = 0, [], []
    for _ in range(SIMS):
        p = rng.beta(0.6, 0.9, size=q)
        ca = rng.binomial(n, p)
        cb = rng.binomial(n, np.clip(p + delta, 0, 1))
        diff = cb / n - ca / n
        sds.append(diff.std(ddof=1))
        res = stats.paired_bootstrap(
            stats.mean_statistic(ca / n), stats.mean_statistic(cb / n), counts, 1 - ALPHA
        )
        detected += res.p_value < ALPHA and res.ci[0] > 0
        predicted.append(stats.mean_difference_power(q, sds[-1], true_delta, ALPHA))
    _report("coverage detection rate", detected / SIMS)
    _report("coverage predicted power", float(np.mean(predicted)))
    assert abs(np.mean(sds) - sd_guess) < 0.03
    assert abs(detected / SIMS - np.mean(predicted)) <= 0.05


def test_sample_size_formulas_invert_the_power():
    n = stats.paired_binary_n_needed(0.2, 0.05, ALPHA)
    assert stats.paired_binary_power(n, 0.2, 0.05, ALPHA) == pytest.approx(0.8, abs=0.01)
    n = stats.mean_difference_n_needed(0.3, 0.05, ALPHA)
    assert stats.mean_difference_power(n, 0.3, 0.05, ALPHA) == pytest.approx(0.8, abs=0.01)
    mde = stats.paired_binary_mde(400, 0.2, ALPHA)
    assert stats.paired_binary_power(400, 0.2, mde, ALPHA) == pytest.approx(0.8, abs=1e-6)
    assert stats.paired_binary_mde(5, 0.01, ALPHA) is None  # even the largest change is not detectable


def test_gap_intervals_resample_prompts_and_skip_saturated_ones():
    rng = np.random.default_rng(50)
    acc = rng.random(200)
    acc[:20] = 1.0  # saturated prompts: in the gap (as 0), not in the relative gap
    gaps = np.where(acc < 1, (1 - acc) * rng.random(200) * 0.5, 0.0)
    cis = stats.gap_intervals(gaps, acc, n_resamples=4000, seed=1)
    assert cis["gap"][0] < gaps.mean() < cis["gap"][1]
    relative = gaps[20:] / (1 - acc[20:])
    assert cis["relative_gap"][0] < relative.mean() < cis["relative_gap"][1]
    ref = sps.bootstrap((relative,), np.mean, n_resamples=4000, method="percentile", random_state=3)
    # resampling all 200 prompts (a varying number of them unsaturated) is close to resampling the 180
    width = ref.confidence_interval.high - ref.confidence_interval.low
    assert cis["relative_gap"][0] == pytest.approx(ref.confidence_interval.low, abs=0.1 * width)
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


def test_pooled_bootstrap_over_replicates_holds_the_between_replicate_spread():
    rng = np.random.default_rng(60)
    q = 200
    p = rng.beta(1, 1, q)
    counts = stats.resample_counts(q, 2000, seed=61)
    base = stats.mean_statistic(rng.binomial(8, p) / 8)
    # one replicate alone equals the paired bootstrap
    one = stats.mean_statistic(rng.binomial(8, p) / 8)
    alone = stats.paired_bootstrap(base, one, counts)
    pooled_one = stats.pooled_paired_bootstrap([(base, one)], counts)
    assert pooled_one.delta == alone.delta and pooled_one.ci == pytest.approx(alone.ci)
    # four replicates whose training seeds moved the model by -0.1 .. +0.1: a wider interval
    shifts = [-0.1, -0.03, 0.03, 0.1]
    reps = [(base, stats.mean_statistic(rng.binomial(8, np.clip(p + s, 0, 1)) / 8)) for s in shifts]
    res = stats.pooled_paired_bootstrap(reps, counts)
    single = stats.paired_bootstrap(*reps[0], counts)
    assert res.delta == pytest.approx(np.mean([b.value() - a.value() for a, b in reps]))
    assert (res.ci[1] - res.ci[0]) > 1.5 * (single.ci[1] - single.ci[0])


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
