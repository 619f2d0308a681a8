"""How the loop wires the metrics helpers: hand-computed cases for every metric key it reports."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from selftrain.loop.config import EvalSection
from selftrain.loop.evaluation import (
    EvalData,
    evaluate_model,
    greedy_metrics,
    improvement_metrics,
    ood_metrics,
    sample_metrics,
)


def test_coverage_and_pass_at_k_by_hand():
    texts = [["a", "b", "c", "d"], ["e", "f", "g", "h"]]
    m = sample_metrics(texts, [[1, 0, 0, 0], [1, 1, 1, 1]], equations=False)
    assert m["coverage"] == pytest.approx((0.25 + 1.0) / 2)
    assert m["pass@k/1"] == pytest.approx(0.625)
    # question 1: 1 - C(3,2)/C(4,2) = 0.5; question 2: 1
    assert m["pass@k/2"] == pytest.approx(0.75)
    assert m["pass@k/4"] == pytest.approx(1.0)
    assert set(k for k in m if k.startswith("pass@k/")) == {"pass@k/1", "pass@k/2", "pass@k/4"}


def test_diversity_split_by_correctness_with_a_fake_encoder():
    class Encoder:
        vectors = {"x": [1.0, 0.0], "y": [0.0, 1.0], "z": [1.0, 0.0]}

        def encode(self, texts):
            return np.array([self.vectors[t] for t in texts])

    # q1: correct {x, y} (orthogonal -> semantic 1), incorrect {z} (one sample: skipped)
    # q2: correct {x, x} (identical -> semantic 0), incorrect {x, y} -> 1
    m = sample_metrics([["x", "y", "z"], ["x", "x", "x", "y"]], [[1, 1, 0], [1, 1, 0, 0]], encoder=Encoder())
    assert m["diversity/correct/semantic"] == pytest.approx(0.5)
    assert m["diversity/incorrect/semantic"] == pytest.approx(1.0)
    assert m["diversity/correct/n_questions"] == 2 and m["diversity/incorrect/n_questions"] == 1
    # distinct-1 of {x, y} = 1, of {x, x} = 0.5 (higher orders undefined for 1-token texts)
    assert m["diversity/correct/distinct_n"] == pytest.approx((1.0 + 0.5) / 2)


def test_distinct_equations_are_reported_per_group():
    texts = [["2 + 3 = 5\nThe answer is 5.", "2 + 3 = 5\nso 5", "4 * 2 = 8", "4 * 2 = 8"]]
    m = sample_metrics(texts, [[1, 1, 0, 0]])
    assert m["diversity/correct/equations"] == pytest.approx(0.5)  # one unique of two
    assert m["diversity/incorrect/equations"] == pytest.approx(0.5)


def test_greedy_pass_at_1_per_level():
    m = greedy_metrics([1, 0, 1, 1], [1, 1, 2, "Level 2"])
    assert m == {"pass@1": 0.75, "pass@1/level_1": 0.5, "pass@1/level_2": 1.0}
    assert greedy_metrics([1.0, 0.0], None) == {"pass@1": 0.5}


def test_ood_accuracy_levels_and_group_disparity():
    m = ood_metrics([1, 1, 1, 0, 0, 1], [1, 1, 3, 3, 5, 5], 1, 5)
    assert m["ood/accuracy"] == pytest.approx(4 / 6)
    assert (m["ood/level_1"], m["ood/level_3"], m["ood/level_5"]) == (1.0, 0.5, 0.5)
    assert m["ood/group_disparity"] == pytest.approx(0.5)
    # Level-1 accuracy 0: the ratio is undefined, reported as None (not 0, not a crash).
    assert ood_metrics([0, 1], [1, 5], 1, 5)["ood/group_disparity"] is None


def test_improvement_set_and_m1_pass_at_n():
    ids = ["a", "b", "c", "d"]
    m = improvement_metrics(ids, [1, 1, 0, 1], [0, 1, 0, 0], [2, 4, 0, 0], m1_n=4, ns=[2, 4, 8])
    # IS = {a, d}; a: 1 - C(2,2)/C(4,2) = 5/6, d: 0
    assert m["is/size"] == 2
    assert m["is/m1_pass@2"] == pytest.approx(5 / 12)
    assert m["is/m1_pass@4"] == pytest.approx(0.5)
    assert "is/m1_pass@8" not in m  # N above the samples M1 drew cannot be estimated
    empty = improvement_metrics(ids, [0, 1, 0, 0], [0, 1, 0, 0], [2, 4, 0, 0], m1_n=4, ns=[2, 4])
    assert empty == {"is/size": 0, "is/m1_pass@2": None, "is/m1_pass@4": None}


class _Task:
    name = "toy"

    def reward(self, ex, response):
        return 1.0 if response == f"ok {ex.id}" else 0.0

    def extract(self, response):
        return response.split()[-1] if response.startswith("ok") else "wrong"


class _Sampler:
    """Greedy: right on even ids. Sample j: right when j is even (so 1 of 2, 2 of 4...)."""

    def __init__(self):
        self.calls = []
        self.top_ks = []

    def generate(self, prompts, n=1, temperature=0.0, top_p=1.0, max_new_tokens=512, stop=None, seed=0, **kw):
        self.calls.append((len(prompts), n, temperature, seed))
        self.top_ks.append(kw.get("top_k", 0))
        out = []
        for p in prompts:
            qid = int(p[1:])
            if temperature == 0:
                texts = [f"ok {qid}" if qid % 2 == 0 else "no"]
            else:
                texts = [f"ok {qid}" if j % 2 == 0 else f"no {j}" for j in range(n)]
            out.append([SimpleNamespace(text=t, finish_reason="stop") for t in texts])
        return out


def test_evaluate_model_uses_the_first_n_samples_and_keeps_the_extra_ones():
    examples = [SimpleNamespace(id=i, meta={"level": 1 + i % 2}) for i in range(4)]
    ood = [SimpleNamespace(id=i, meta={"level": lv}) for i, lv in enumerate([1, 1, 5, 5])]
    data = EvalData(
        task=_Task(),
        examples=examples,
        prompts=[f"q{i}" for i in range(4)],
        ood_task=_Task(),
        ood_examples=ood,
        ood_prompts=[f"q{i}" for i in range(4)],
    )
    cfg = EvalSection(n_samples=2, is_ns=[2, 4], semantic=False, top_k=50)
    sampler = _Sampler()
    out = evaluate_model(sampler, data, cfg, seed=11, extra_samples=4, show_progress=False)
    assert sampler.calls == [(4, 1, 0.0, 11), (4, 4, 0.75, 12), (4, 1, 0.0, 11)]
    assert sampler.top_ks == [0, 50, 0]  # eval.top_k reaches the sampled answers, not greedy
    m = out.metrics
    assert m["pass@1"] == 0.5 and m["pass@1/level_1"] == 1.0 and m["pass@1/level_2"] == 0.0
    assert m["coverage"] == 0.5 and m["pass@k/2"] == 1.0  # from the first 2 of the 4 samples
    # maj@k: answers "<id>" (right) and "wrong" alternate; k = 2 ties, the first (right) one wins
    assert m["maj@k/1"] == 0.5 and m["maj@k/2"] == 1.0
    assert out.details["majority"] == {"maj@k/1": [0.5] * 4, "maj@k/2": [1.0] * 4}
    assert m["ood/accuracy"] == 0.5 and m["ood/group_disparity"] == pytest.approx(0.0)
    assert out.details["sample_correct"] == [1, 1, 1, 1] and out.details["extra_correct"] == [2, 2, 2, 2]
    assert out.details["extra_n"] == 4 and out.details["greedy_rewards"] == [1.0, 0.0, 1.0, 0.0]
    assert len(out.sample_rows[0]["responses"]) == 4
    assert m["greedy/truncated"] == 0.0
    # what the report's intervals and paired tests need, per question (docs/metrics.md)
    d = out.details
    assert d["levels"] == [1, 2, 1, 2] and d["greedy_truncated"] == [0, 0, 0, 0]
    assert d["ood_ids"] == ["0", "1", "2", "3"] and d["ood_levels"] == [1, 1, 5, 5]
    assert d["ood_low_high"] == [1, 5]
    # samples "ok i" / "no 1" per question (first 2): one correct and one incorrect -> groups of 1, skipped
    assert d["diversity"]["diversity/correct/distinct_n"] == [None] * 4
    assert set(d["diversity"]) == {f"diversity/{g}/{m}" for g in ("correct", "incorrect")
                                   for m in ("distinct_n", "equations")}
