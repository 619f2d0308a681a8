"""selftrain/verify/figures.py (paper B's Figs. 5, 6, 7, 19 as data) and stats.pearson_interval."""

from __future__ import annotations

import math

import pytest

from selftrain.metrics import generation_verification_gap
from selftrain.metrics.stats import pearson_interval
from selftrain.verify.figures import (
    gap_accuracy_correlation,
    gap_distribution,
    threshold_sweep,
    tournament_by_round,
)
from selftrain.verify.filters import keep_masks, parse_filter

REWARDS = [[1, 0, 0, 1], [0, 0, 1, 0], [1, 1, 1, 0]]
SCORES = {
    "mc": [[0.9, 0.2, 0.4, 0.7], [0.1, 0.5, 0.8, 0.3], [0.6, 0.9, 0.7, 0.2]],
    "cot_score": [[9, 2, 5, 8], [1, 6, 9, 3], [7, 10, 8, 2]],
    "tournament": [[2, 0, 0, 1], [0, 1, 2, 0], [0, 2, 1, 0]],
}


def test_threshold_sweep_is_the_gap_at_every_threshold():
    sweep = threshold_sweep(REWARDS, SCORES)
    assert set(sweep) == {"mc:top", "cot_score:tau"}
    for name, rows in sweep.items():
        method, kind = name.split(":")
        for r in rows:
            spec = parse_filter(f"{method}:{kind}={r['threshold']:g}")
            want = generation_verification_gap(REWARDS, keep_masks(spec, SCORES))
            assert r["gap"] == pytest.approx(want["gap"]) and r["kept_fraction"] == want["kept_fraction"]
    assert threshold_sweep(REWARDS, {"cot_binary": [[1, 0, 0, 1]] * 3}) == {}  # one threshold: no sweep


def test_tournament_by_round_follows_the_survivors():
    rounds = tournament_by_round(REWARDS, SCORES, 2)
    accs = [r["filtered_accuracy"] for r in rounds]
    # round 0: every generation (question accuracies 0.5, 0.25, 0.75); round 2: each question's
    # champion (most rounds survived: q0 sample 0, q1 sample 2, q2 sample 1), all of them right
    assert accs[0] == pytest.approx(0.5) and accs[2] == pytest.approx(1.0)
    steps = [r["gap_vs_previous"] for r in rounds]
    assert steps == pytest.approx([0.0, accs[1] - accs[0], accs[2] - accs[1]])
    assert rounds[2]["gap"] == pytest.approx(accs[2] - accs[0])


def test_gap_distribution_bins_mean_and_sd():
    d = gap_distribution([0.0, 0.0, 0.25, -0.5], bin_width=0.25)
    assert d["mean"] == pytest.approx(-0.0625) and d["sd"] == pytest.approx(math.sqrt(0.07421875))
    assert d["bins"] == [[-0.5, 1], [0.0, 2], [0.25, 1]] and d["n"] == 4


def test_pearson_interval_is_fisher_z_around_scipy_r():
    from scipy.stats import norm, pearsonr

    x = [0.1, 0.4, 0.35, 0.8, 0.6, 0.9, 0.2]
    y = [0.0, 0.2, 0.1, 0.5, 0.45, 0.4, 0.05]
    r, ci = pearson_interval(x, y, 0.9)
    assert r == pytest.approx(pearsonr(x, y).statistic)
    half = norm.ppf(0.95) / math.sqrt(len(x) - 3)
    assert ci == pytest.approx([math.tanh(math.atanh(r) - half), math.tanh(math.atanh(r) + half)])
    assert pearson_interval([1, 2, 3], [1, 1, 1]) == (None, None)  # a constant side
    assert pearson_interval([1, 2, 3], [1, 3, 2])[1] is None  # below 4 pairs: no interval
    assert gap_accuracy_correlation(x, y)["n"] == len(x)
