"""Hand-computed cases for selftrain.metrics: pass@k, accuracy, OOD, gap, filters, model-free diversity."""

from __future__ import annotations

import itertools
import json
import math
import random
import re
from pathlib import Path

import numpy as np
import pytest

from selftrain.metrics import (
    and_ensemble,
    coverage,
    default_ks,
    distinct_1_to_5,
    distinct_equations,
    distinct_n,
    diversity_report,
    extract_equations,
    generation_verification_gap,
    group_disparity,
    improvement_decomposition,
    improvement_set,
    mean_pass_at_k,
    normalize_equation,
    ood_report,
    parse_level,
    pass_at_1_greedy,
    pass_at_k,
    pass_at_k_from_rewards,
    pearson,
    per_level_accuracy,
    quantile_filter,
    score_histogram,
    semantic_diversity,
    semantic_diversity_from_embeddings,
    threshold_filter,
    tokenize,
    update_error,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


# ---------------------------------------------------------------- pass@k


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of k-subsets of n samples (the first c correct) that contain a correct sample."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_brute_force_combinatorics():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                expected = brute_force_pass_at_k(n, c, k)
                assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12), (n, c, k)


def test_pass_at_k_edge_cases_and_stability():
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 6, 5) == 1.0  # n - c < k: every 5-subset holds a correct one
    assert pass_at_k(5, 5, 1) == 1.0
    # One correct sample among n: pass@k = k / n, also where C(n, k) would overflow a float.
    assert pass_at_k(128, 1, 64) == pytest.approx(0.5, abs=1e-12)
    assert pass_at_k(2000, 1, 1000) == pytest.approx(0.5, abs=1e-9)
    assert pass_at_k(2000, 3, 1000) == pytest.approx(1 - math.comb(1997, 1000) / math.comb(2000, 1000))
    with pytest.raises(ValueError, match="exceeds"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="c must lie"):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError, match="k must be"):
        pass_at_k(4, 1, 0)
    with pytest.raises(TypeError, match="k must be an int"):
        pass_at_k(4, 1, 2.0)
    assert pass_at_k(np.int64(4), np.int64(1), np.int64(2)) == pytest.approx(0.5)


def test_default_ks():
    assert default_ks(1) == [1]
    assert default_ks(8) == [1, 2, 4, 8]
    assert default_ks(50) == [1, 2, 4, 8, 16, 32, 50]
    assert default_ks(128) == [1, 2, 4, 8, 16, 32, 64, 128]
    with pytest.raises(ValueError):
        default_ks(0)


def test_mean_pass_at_k_hand_case_and_empty_set():
    # n = 4 per question; pass@2 with one correct = 1 - C(3,2)/C(4,2) = 1/2.
    result = mean_pass_at_k([0, 1, 4], 4, [1, 2])
    assert result[1] == pytest.approx((0 + 0.25 + 1) / 3)
    assert result[2] == pytest.approx((0 + 0.5 + 1) / 3)
    assert list(mean_pass_at_k([2], 4)) == [1, 2, 4]
    # Per-question sample counts; default ks stop at the smallest n.
    mixed = mean_pass_at_k([1, 1], [2, 4])
    assert list(mixed) == [1, 2]
    assert mixed[2] == pytest.approx((1.0 + 0.5) / 2)
    # An empty improvement set: undefined, not 0.
    assert mean_pass_at_k([], 64, [1, 64]) == {1: None, 64: None}
    with pytest.raises(ValueError, match="question 1"):
        mean_pass_at_k([1, 1], [4, 2], [4])


def test_pass_at_k_from_rewards():
    result = pass_at_k_from_rewards([[1, 0, 0, 0], [0, 0], [True, True]], ks=[1, 2])
    assert result[1] == pytest.approx((0.25 + 0 + 1) / 3)
    assert result[2] == pytest.approx((0.5 + 0 + 1) / 3)


# ---------------------------------------------------------------- accuracy, coverage, improvement set


def test_coverage_and_greedy_accuracy():
    assert coverage([[1, 0, 0, 1], [1, 1], [0]]) == pytest.approx(0.5)
    assert coverage([[1.0, 0.0]]) == pytest.approx(0.5)
    assert pass_at_1_greedy([1, 0, True, False, 1.0]) == pytest.approx(0.6)
    with pytest.raises(ValueError, match=r"rewards_per_question\[1\]\[0\]"):
        coverage([[1], [0.5]])
    with pytest.raises(ValueError, match=r"rewards_per_question\[1\]: question has no samples"):
        coverage([[1], []])
    with pytest.raises(ValueError, match="empty"):
        pass_at_1_greedy([])


def test_per_level_accuracy():
    acc = per_level_accuracy([1, 0, 1, 1, 0], [2, 1, 1, 2, 3])
    assert acc == {1: 0.5, 2: 1.0, 3: 0.0}
    assert list(acc) == [1, 2, 3]
    with pytest.raises(ValueError, match="levels has 1"):
        per_level_accuracy([1, 0], [1])


def test_improvement_set():
    ids = ["a", "b", "c", "d", "e"]
    assert improvement_set(ids, [1, 1, 0, 0, True], [0, 1, 0, 1, False]) == ["a", "e"]
    assert improvement_set([], [], []) == []
    with pytest.raises(ValueError, match="correct_m1"):
        improvement_set(ids, [1] * 5, [0] * 4)
    with pytest.raises(ValueError, match="unique"):
        improvement_set(["a", "a"], [1, 1], [0, 0])


# ---------------------------------------------------------------- OOD


def test_group_disparity():
    assert group_disparity(0.8, 0.2) == pytest.approx(0.75)
    assert group_disparity(0.5, 0.6) == pytest.approx(-0.2)
    assert group_disparity(0.0, 0.1) is None
    assert group_disparity(0.0, 0.0) is None
    with pytest.raises(ValueError, match="acc_level5"):
        group_disparity(0.5, 1.5)


def test_ood_report_levels_and_undefined_disparity():
    report = ood_report([1, 1, 0, 1, 0, 0], [1, "Level 1", 5, "Level 5", "Level 3", "3"])
    assert report["whole_accuracy"] == pytest.approx(0.5)
    assert report["per_level_accuracy"] == {1: 1.0, 3: 0.0, 5: 0.5}
    assert report["n_per_level"] == {1: 2, 3: 2, 5: 2}
    assert report["group_disparity"] == pytest.approx(0.5)
    assert report["group_disparity_status"] == "ok"

    zero = ood_report([0, 0, 1], ["Level 1", "Level 1", "Level 5"])
    assert zero["group_disparity"] is None
    assert zero["group_disparity_status"].startswith("undefined")
    assert zero["whole_accuracy"] == pytest.approx(1 / 3)

    missing = ood_report([1, 0], [1, 2])
    assert missing["group_disparity"] is None
    assert "[5]" in missing["group_disparity_status"]
    # JSON-serialisable as the loop will write it.
    json.dumps(report)

    assert parse_level("level 4") == 4
    with pytest.raises(ValueError, match=r"levels\[1\]"):
        ood_report([1, 0], [1, "hard"])


# ---------------------------------------------------------------- filters and ensembles


def test_threshold_filter_inclusive_strict_and_missing_scores():
    scores = [0.9, 0.8, 0.79, None, float("nan")]
    assert threshold_filter(scores, 0.8) == [True, True, False, False, False]
    assert threshold_filter(scores, 0.8, strict=True) == [True, False, False, False, False]
    with pytest.raises(ValueError):
        threshold_filter(["high"], 0.5)


def test_quantile_filter_keeps_the_top_of_each_prompt():
    scores = [round(0.1 * i, 1) for i in range(1, 11)]  # 0.1 .. 1.0
    # Linear quantile at 0.8: position 0.8 * 9 = 7.2 -> 0.8 + 0.2 * 0.1 = 0.82: keeps 0.9 and 1.0.
    assert quantile_filter([scores], 0.8) == [[False] * 8 + [True, True]]
    assert quantile_filter([scores], 0.0) == [[True] * 10]
    assert quantile_filter([scores], 1.0) == [[False] * 9 + [True]]
    # Ties at the threshold are all kept.
    assert quantile_filter([[1, 1, 1, 0]], 0.8) == [[True, True, True, False]]
    # Missing scores are never kept and do not enter the quantile: quantile of [0.5, 0.7] at 0.5 is 0.6.
    assert quantile_filter([[None, 0.5, 0.7]], 0.5) == [[False, False, True]]
    assert quantile_filter([[None, None]], 0.5) == [[False, False]]
    with pytest.raises(ValueError, match="top"):
        quantile_filter([scores], 1.5)


def test_quantile_versus_global_threshold():
    low = [0.1, 0.2, 0.3, 0.4, 0.5]
    high = [0.6, 0.7, 0.8, 0.9, 1.0]
    # A global tau = 0.8 keeps nothing of the low-scored prompt and 3 of the high one ...
    assert [threshold_filter(s, 0.8) for s in (low, high)] == [[False] * 5, [False, False, True, True, True]]
    # ... a per-prompt "top 0.8" keeps the best of each (quantiles 0.42 and 0.92).
    assert quantile_filter([low, high], 0.8) == [[False] * 4 + [True], [False] * 4 + [True]]


def test_and_ensemble():
    a = [True, True, False, True]
    b = [True, False, False, True]
    c = [False, True, False, True]
    assert and_ensemble(a, b) == [True, False, False, True]
    assert and_ensemble(a, b, c) == [False, False, False, True]
    assert and_ensemble(a) == a
    nested = and_ensemble([[True, True], [False]], [[True, False], [True]])
    assert nested == [[True, False], [False]]
    assert and_ensemble(np.array([[True, True]]), [[False, True]]) == [[False, True]]
    assert and_ensemble(np.array([True, False]), [True, True]) == [True, False]
    with pytest.raises(ValueError, match="mask 1"):
        and_ensemble(a, [True])
    with pytest.raises(ValueError, match=r"mask 1\[0\]"):
        and_ensemble([[True, True]], [[True]])
    with pytest.raises(ValueError):
        and_ensemble()


# ---------------------------------------------------------------- generation-verification gap


def test_gap_hand_case_with_both_edge_cases():
    rewards = [
        [1, 0, 0, 0],  # acc 0.25, keeps the correct one: gap 0.75, relative 1
        [1, 1, 0, 0],  # keeps nothing: counted empty, gap 0, relative 0
        [1, 1],  # acc 1: saturated, gap 0, excluded from the relative mean
    ]
    masks = [[True, False, False, False], [False] * 4, [True, False]]
    result = generation_verification_gap(rewards, masks)
    assert result["accuracy"] == pytest.approx((0.25 + 0.5 + 1) / 3)
    assert result["filtered_accuracy"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert result["gap"] == pytest.approx(0.25)
    assert result["relative_gap"] == pytest.approx(0.5)
    assert result["kept_fraction"] == pytest.approx(2 / 10)
    counts = (result["n_questions"], result["n_empty"], result["n_saturated"], result["n_relative"])
    assert counts == (3, 1, 1, 2)
    assert result["per_question_gap"] == pytest.approx([0.75, 0.0, 0.0])
    assert result["gap"] == pytest.approx(result["filtered_accuracy"] - result["accuracy"])


def test_gap_negative_and_all_saturated():
    # A verifier that prefers the wrong answer widens nothing: negative gap, relative -1.
    bad = generation_verification_gap([[1, 0]], [[False, True]])
    assert bad["gap"] == pytest.approx(-0.5)
    assert bad["relative_gap"] == pytest.approx(-1.0)
    saturated = generation_verification_gap([[1, 1], [1]], [[True, False], [False]])
    assert saturated["relative_gap"] is None
    assert saturated["n_saturated"] == 2 and saturated["n_empty"] == 1 and saturated["gap"] == 0
    # Every prompt wrong: acc 0, relative gap 0 (denominator 1).
    wrong = generation_verification_gap([[0, 0]], [[True, False]])
    assert wrong["relative_gap"] == 0 and wrong["gap"] == 0


def test_gap_input_errors():
    with pytest.raises(ValueError, match=r"keep_masks_per_question\[0\]"):
        generation_verification_gap([[1, 0]], [[True]])
    with pytest.raises(ValueError, match="keep_masks_per_question has 0"):
        generation_verification_gap([[1, 0]], [])
    with pytest.raises(ValueError, match="empty"):
        generation_verification_gap([], [])


def test_gap_from_quantile_filter_end_to_end():
    # A perfect verifier (score = reward + noise) with top 0.5 keeps the correct half.
    rng = random.Random(0)
    rewards = [[1, 0, 1, 0, 0, 0], [0, 1, 0, 0, 0, 0]]
    scores = [[r + rng.uniform(0, 0.1) for r in row] for row in rewards]
    result = generation_verification_gap(rewards, quantile_filter(scores, 0.5))
    assert result["filtered_accuracy"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert result["gap"] > 0


# ---------------------------------------------------------------- histogram, pearson, update error


def test_score_histogram():
    edges = [i + 0.5 for i in range(11)]  # 0.5 .. 10.5: one bin per integer score 1..10
    hist = score_histogram([10, 10, 9, 8, None], bins=edges)
    assert hist["counts"] == [0] * 7 + [1, 1, 2]
    assert hist["n"] == 4 and hist["n_missing"] == 1
    assert hist["mode_bin"] == (9.5, 10.5)
    assert len(hist["edges"]) == len(hist["counts"]) + 1
    empty = score_histogram([None], bins=4)
    assert empty["counts"] == [0, 0, 0, 0] and empty["mode_bin"] is None
    assert score_histogram([0.1, 0.2, 0.9], bins=2, value_range=(0, 1))["counts"] == [2, 1]


def test_pearson():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # Hand computed: dx = dy-permuted (-1.5, -0.5, 0.5, 1.5); sum dx*dy = 4, sum dx^2 = 5 -> 0.8.
    assert pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert pearson([1, 1, 1], [1, 2, 3]) is None
    assert pearson([0.1, 0.1, 0.1], [1, 2, 3]) is None
    assert pearson([1], [2]) is None
    # Pairs with a missing side are dropped.
    assert pearson([1, None, 2, 3], [2, 5, float("nan"), 6]) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=50), rng.normal(size=50)
    assert pearson(list(x), list(y)) == pytest.approx(float(np.corrcoef(x, y)[0, 1]))
    with pytest.raises(ValueError, match="y has 1"):
        pearson([1, 2], [1])


def test_update_error_and_decomposition():
    assert update_error(0.6, 0.7) == pytest.approx(-0.1)
    parts = improvement_decomposition(acc_t=0.5, acc_filtered_t=0.7, acc_next=0.6)
    assert parts["gap"] == pytest.approx(0.2)
    assert parts["update_error"] == pytest.approx(-0.1)
    assert parts["improvement"] == pytest.approx(parts["gap"] + parts["update_error"])
    with pytest.raises(ValueError, match="acc_next"):
        update_error(1.2, 0.5)


# ---------------------------------------------------------------- distinct-n and equations


def test_tokenize():
    expected = ["Hello", ",", "world", "!", "$", "1,250.50", "costs", "."]
    assert tokenize("Hello, world! $1,250.50 costs.") == expected
    assert tokenize("48/2=24") == ["48", "/", "2", "=", "24"]
    assert tokenize("  ") == []


def test_distinct_n_hand_cases():
    assert distinct_n(["a b a b"], 1) == pytest.approx(2 / 4)
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)  # ab, ba, ab
    assert distinct_n(["a b a b"], 5) is None
    assert distinct_n(["a b", "a b"], 2) == pytest.approx(1 / 2)
    # n-grams never cross the boundary between two samples.
    assert distinct_n(["a", "a"], 2) is None
    assert distinct_n(["a b", "c d"], 2) == pytest.approx(1.0)
    # Punctuation is its own token: "a," -> a , ; "a." -> a .
    assert distinct_n(["a, a."], 1) == pytest.approx(3 / 4)
    with pytest.raises(TypeError, match="single string"):
        distinct_n("a b", 1)
    with pytest.raises(ValueError):
        distinct_n(["a"], 0)


def test_distinct_1_to_5():
    assert distinct_1_to_5(["a b c"]) == pytest.approx(1.0)  # orders 4, 5 undefined and skipped
    expected = (1 / 6 + 1 / 5 + 1 / 4 + 1 / 3 + 1 / 2) / 5
    assert distinct_1_to_5(["a a a a a a"]) == pytest.approx(expected)
    assert distinct_1_to_5([""]) is None


def test_extract_equations():
    gsm8k = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nAltogether 48+24 = <<48+24=72>>72 clips."
    assert extract_equations(gsm8k) == ["48/2=24", "48+24=72"]
    assert extract_equations("So 2 + 3 = 5 * 2 = 10 dollars") == ["2+3=5", "5*2=10"]
    assert extract_equations("$1,200 x 3 = $3,600.") == ["1200*3=3600"]
    assert extract_equations("4 × 3 = 12 and 12 ÷ 4 = 3") == ["4*3=12", "12/4=3"]
    assert extract_equations("It is 4 \\times 2.50 = 10.00") == ["4*2.5=10"]
    assert extract_equations("He drives 2-.5=1.5 hours") == ["2-0.5=1.5"]
    assert extract_equations("$20/hour * 35 hours/week = $700/week") == ["20*35=700"]
    assert extract_equations("(3 + 4) * 2 = 14") == ["(3+4)*2=14"]
    assert extract_equations("5 - 3 = 2, then 3-5=-2") == ["5-3=2", "3-5=-2"]
    # Not equations: symbolic algebra, no operator, numbers glued to words, no number after "=".
    assert extract_equations("2x + 3 = 7") == []
    assert extract_equations("The answer = 5, x = 3") == []
    assert extract_equations("abc12+3=15") == []
    assert extract_equations("2 + 3 = five") == []
    # Annotations need an operator on the left; plain text mixed with annotations keeps text order.
    assert extract_equations("<<125=125>> then 1+1=2 and <<2*3=6>>") == ["1+1=2", "2*3=6"]
    with pytest.raises(TypeError):
        extract_equations(None)


def test_normalize_equation():
    assert normalize_equation(" $1,200 × 3 = $3,600 ") == "1200*3=3600"
    assert normalize_equation("12 ÷ 4 = 3.00") == "12/4=3"
    assert normalize_equation("2 \\cdot .50 = 1.0") == "2*0.5=1"
    assert normalize_equation("100 X 0.250 = 25") == "100*0.25=25"


def test_distinct_equations():
    texts = ["2+3=5 and later 2 + 3 = 5", "<<4*5=20>>", "no math here"]
    assert distinct_equations(texts) == pytest.approx(2 / 3)
    assert distinct_equations(["no math", "none either"]) is None
    assert distinct_equations(["1+1=2", "2*1=2"]) == pytest.approx(1.0)


@pytest.mark.skipif(not (DATA / "gsm8k" / "test.jsonl").exists(), reason=f"real data folder absent: {DATA}")
def test_equations_on_real_gsm8k_solutions():
    # Every gold solution's calculator annotations are found, and the same equations written as plain
    # text (annotations removed) are recovered for the large majority.
    lines = (DATA / "gsm8k" / "test.jsonl").read_text().splitlines()[:200]
    annotated = plain = 0
    for line in lines:
        answer = json.loads(line)["answer"]
        annotations = [a for a in re.findall(r"<<([^<>]*)>>", answer) if re.search(r".[-+*/]", a)]
        equations = extract_equations(answer)
        assert len(equations) >= len(annotations)
        annotated += len(annotations)
        plain += len(extract_equations(re.sub(r"<<[^<>]*>>", "", answer)))
    assert annotated > 500
    assert plain >= 0.85 * annotated


# ---------------------------------------------------------------- semantic diversity (no model)


class LookupEncoder:
    """A stand-in encoder with fixed vectors per text; counts its calls."""

    def __init__(self, table: dict[str, list[float]]):
        self.table = table
        self.calls = 0

    def encode(self, sentences: list[str]) -> np.ndarray:
        self.calls += 1
        return np.array([self.table[s] for s in sentences], dtype=np.float32)


def test_semantic_diversity_from_embeddings_hand_cases():
    assert semantic_diversity_from_embeddings(np.array([[1, 0], [0, 1]])) == pytest.approx(1.0)
    # Pairs: cos 1, 0, 0 -> mean 1/3 -> diversity 2/3; scale does not matter.
    assert semantic_diversity_from_embeddings(np.array([[2, 0], [1, 0], [0, 5]])) == pytest.approx(2 / 3)
    assert semantic_diversity_from_embeddings(np.array([[1, 0], [-1, 0]])) == pytest.approx(2.0)
    assert semantic_diversity_from_embeddings(np.array([[1, 2, 3]] * 4)) == pytest.approx(0.0, abs=1e-12)
    assert semantic_diversity_from_embeddings(np.array([[1, 0]])) is None
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(7, 5))
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    pairs = [float(unit[i] @ unit[j]) for i in range(7) for j in range(i + 1, 7)]
    assert semantic_diversity_from_embeddings(emb) == pytest.approx(1 - sum(pairs) / len(pairs))
    with pytest.raises(ValueError, match="zero vector"):
        semantic_diversity_from_embeddings(np.array([[1, 0], [0, 0]]))


def test_semantic_diversity_with_stand_in_encoder():
    encoder = LookupEncoder({"a": [1, 0], "b": [0, 1], "c": [1, 0]})
    assert semantic_diversity(["a", "b"], encoder) == pytest.approx(1.0)
    assert semantic_diversity(["a", "c"], encoder) == pytest.approx(0.0)
    assert semantic_diversity(["a"], encoder) is None


def test_diversity_report_groups_and_skips():
    encoder = LookupEncoder({"a b": [1, 0], "c d": [0, 1], "x y z": [1, 0], "p q r": [0, 1], "1+1=2": [1, 1]})
    samples = [
        ["a b", "a b", "c d"],  # correct: 2 identical; incorrect: 1 sample (skipped, counted small)
        ["x y z", "p q r"],  # incorrect: 2 different
        ["1+1=2", "1+1=2", "a b"],  # correct: 2 identical equations; incorrect: 1 sample
        [],  # no samples at all: contributes nothing
    ]
    rewards = [[1, 1, 0], [0, 0], [1, 1, 0], []]
    report = diversity_report(samples, rewards, encoder=encoder)
    assert encoder.calls == 1  # one batched call for every qualifying text
    correct, incorrect = report["correct"], report["incorrect"]
    # ["a b","a b"]: d1 = 2/4, d2 = 1/2 -> 0.5.  ["1+1=2"]*2, tokens 1 + 1 = 2: d1 = 4/10, d2 = 4/8,
    # d3 = 3/6, d4 = 2/4, d5 = 1/2.
    eq_group = [4 / 10, 4 / 8, 3 / 6, 2 / 4, 1 / 2]
    assert correct["distinct_n"] == pytest.approx((0.5 + sum(eq_group) / 5) / 2)
    assert correct["distinct_by_n"][1] == pytest.approx((0.5 + 0.4) / 2)
    assert correct["distinct_by_n"][3] == pytest.approx(3 / 6)  # only the equation group has trigrams
    assert correct["semantic"] == pytest.approx(0.0)
    assert correct["equations"] == pytest.approx(0.5)
    assert correct["n_questions_equations"] == 1
    assert (correct["n_questions"], correct["n_questions_small"], correct["n_samples"]) == (2, 0, 4)
    assert incorrect["distinct_n"] == pytest.approx(1.0)
    assert incorrect["semantic"] == pytest.approx(1.0)
    assert incorrect["equations"] is None
    assert (incorrect["n_questions"], incorrect["n_questions_small"], incorrect["n_samples"]) == (1, 2, 4)
    json.dumps(report)

    plain = diversity_report(samples, rewards)
    assert "semantic" not in plain["correct"]
    assert plain["correct"]["distinct_n"] == correct["distinct_n"]


def test_diversity_report_input_errors():
    with pytest.raises(ValueError, match=r"samples_per_question\[0\]"):
        diversity_report([["a", "b"]], [[1]])
    with pytest.raises(ValueError, match="rewards_per_question has 2"):
        diversity_report([["a"]], [[1], [0]])
    with pytest.raises(ValueError, match=r"rewards_per_question\[0\]\[0\]"):
        diversity_report([["a"]], [[0.3]])
