"""Data construction (SFT sets, preference pairs, gold set) and paradigm schedules."""

from __future__ import annotations

from pathlib import Path

import pytest

from selftrain.config import ConfigError, parse_cli
from selftrain.loop import (
    BuildOptions,
    LoopConfig,
    SampledQuestion,
    StepKind,
    build_preference_pairs,
    build_sft_set,
    get_step_kind,
    gold_sft_set,
    register_paradigm,
    register_step_kind,
    schedule,
    step_kind,
)
from selftrain.loop import paradigms as paradigms_mod
from selftrain.loop import steps as steps_mod
from selftrain.loop.artifacts import derive_seed
from selftrain.loop.config import config_differences


def q(qid: str, pairs: list[tuple[str, float]]) -> SampledQuestion:
    return SampledQuestion(qid, f"P{qid}", [r for r, _ in pairs], [w for _, w in pairs])


# ---------------------------------------------------------------- SFT set


def test_sft_set_keeps_correct_answers_and_drops_identical_duplicates():
    questions = [
        q("a", [("x", 1.0), ("y", 0.0), ("x", 1.0), ("z", 1.0)]),
        q("b", [("x", 1.0), ("w", 0.0)]),  # "x" again but for another question: kept
    ]
    assert build_sft_set(questions) == [
        {"prompt": "Pa", "response": "x"},
        {"prompt": "Pa", "response": "z"},
        {"prompt": "Pb", "response": "x"},
    ]


def test_sft_set_empty_cases():
    assert build_sft_set([]) == []
    assert build_sft_set([q("a", [("x", 0.0), ("y", 0.0)]), q("b", [])]) == []


# ---------------------------------------------------------------- preference pairs


def test_pairs_are_correct_times_incorrect_of_the_same_question():
    questions = [q("a", [("c1", 1), ("i1", 0), ("c2", 1), ("i1", 0)]), q("b", [("c", 1), ("i", 0)])]
    pairs = build_preference_pairs(questions, max_pairs_per_question=None, seed=0)
    assert {(p["prompt"], p["chosen"], p["rejected"]) for p in pairs} == {
        ("Pa", "c1", "i1"),
        ("Pa", "c2", "i1"),  # the duplicate "i1" does not double the pairs
        ("Pb", "c", "i"),
    }
    assert len(pairs) == 3


def test_pairs_capped_and_seeded():
    many = [q("a", [(f"c{i}", 1) for i in range(5)] + [(f"i{i}", 0) for i in range(5)])]
    first = build_preference_pairs(many, max_pairs_per_question=4, seed=7)
    again = build_preference_pairs(many, max_pairs_per_question=4, seed=7)
    other = build_preference_pairs(many, max_pairs_per_question=4, seed=8)
    assert len(first) == 4 and first == again
    assert len({(p["chosen"], p["rejected"]) for p in first}) == 4  # drawn without replacement
    assert first != other
    # The draw for a question does not depend on the other questions around it.
    with_neighbour = build_preference_pairs([q("z", [("c", 1), ("i", 0)])] + many, 4, seed=7)
    assert with_neighbour[1:] == first


def test_pairs_empty_cases():
    only_correct = q("a", [("c", 1), ("d", 1)])
    only_wrong = q("b", [("i", 0)])
    assert build_preference_pairs([only_correct, only_wrong], 4, seed=0) == []
    assert build_preference_pairs([], 4, seed=0) == []
    with pytest.raises(ValueError, match="max_pairs_per_question"):
        build_preference_pairs([only_correct], 0, seed=0)


def test_sampled_question_checks_lengths_and_fields():
    with pytest.raises(ValueError, match="2 responses but 1 rewards"):
        SampledQuestion("a", "p", ["x", "y"], [1.0])
    with pytest.raises(ValueError, match="row 3: missing field"):
        SampledQuestion.from_dict({"id": "a", "prompt": "p"}, "row 3")
    row = q("a", [("x", 1.0)]).to_dict()
    assert SampledQuestion.from_dict(row).to_dict() == row


def test_gold_set_uses_the_task_gold_response():
    class Task:
        def gold_response(self, ex):
            return f"gold {ex}"

    assert gold_sft_set(Task(), [1, 2], ["p1", "p2"]) == [
        {"prompt": "p1", "response": "gold 1"},
        {"prompt": "p2", "response": "gold 2"},
    ]


def test_step_kinds_wire_builders_losses_and_references():
    questions = [q("a", [("c", 1), ("i", 0)])]
    opts = BuildOptions(seed=0, max_pairs_per_question=2)
    sft, dpo, rpo = get_step_kind("sft"), get_step_kind("dpo"), get_step_kind("rpo")
    assert sft.build(questions, opts) == [{"prompt": "Pa", "response": "c"}]
    assert dpo.build(questions, opts) == [{"prompt": "Pa", "chosen": "c", "rejected": "i"}]
    assert (sft.loss, sft.needs_reference, dpo.loss, dpo.needs_reference, rpo.loss) == (
        "sft",
        False,
        "dpo",
        True,
        "rpo",
    )
    with pytest.raises(ValueError, match="unknown step kind"):
        get_step_kind("nope")


# ---------------------------------------------------------------- paradigms


def test_paper_a_schedules():
    assert schedule("iter_sft", 4) == ["gold_sft", "sft", "sft", "sft"]
    assert schedule("iter_dpo", 3) == ["gold_sft", "dpo", "dpo"]
    assert schedule("iter_sft_dpo", 5) == ["gold_sft", "sft", "dpo", "sft", "dpo"]
    assert schedule("iter_sft", 1) == ["gold_sft"]
    with pytest.raises(ValueError, match="unknown paradigm"):
        step_kind("iter_nope", 2)
    with pytest.raises(ValueError, match="iterations"):
        schedule("iter_sft", 0)


def test_registering_a_paradigm_and_a_step_kind(monkeypatch):
    monkeypatch.setattr(paradigms_mod, "_PARADIGMS", dict(paradigms_mod._PARADIGMS))
    monkeypatch.setattr(steps_mod, "_STEP_KINDS", dict(steps_mod._STEP_KINDS))
    register_paradigm("dpo_then_sft", lambda t: "dpo" if t == 2 else "sft")
    assert schedule("dpo_then_sft", 4) == ["gold_sft", "dpo", "sft", "sft"]
    with pytest.raises(ValueError, match="already registered"):
        register_paradigm("iter_sft", lambda t: "sft")
    register_paradigm("bad", lambda t: "unknown_kind")
    with pytest.raises(ValueError, match="gives step kind 'unknown_kind'"):
        schedule("bad", 2)
    register_step_kind(StepKind("unknown_kind", lambda qs, o: [], "sft", "sft", False))
    assert schedule("bad", 2) == ["gold_sft", "unknown_kind"]
    with pytest.raises(ValueError, match="train_section"):
        register_step_kind(StepKind("x", lambda qs, o: [], "sft", "ppo", False))
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        register_step_kind(StepKind("x", lambda qs, o: [], "dpo", "dpo", True, {"betta": 0.1}))


# ---------------------------------------------------------------- seeds and config


def test_derived_seeds_are_stable_and_distinct():
    assert derive_seed(0, 2, "sample") == derive_seed(0, 2, "sample")
    seeds = {derive_seed(s, t, st) for s in (0, 1) for t in range(4) for st in ("sample", "build", "train")}
    assert len(seeds) == 24 and all(0 <= s < 2**31 for s in seeds)


def test_config_overrides_and_errors(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model: tiny-random\niterations: 2\nsft:\n  lr: 3.0e-5\neval:\n  n_samples: 4\n")
    cfg = parse_cli(LoopConfig, [f"config={f}", "n_samples=3", "out_dir=/tmp/x", "task=arith"])
    assert (cfg.model, cfg.iterations, cfg.n_samples, cfg.sft.lr, cfg.eval.n_samples) == (
        "tiny-random",
        2,
        3,
        3e-5,
        4,
    )
    assert str(cfg.run_dir) == "/tmp/x"
    assert str(parse_cli(LoopConfig, ["name=abc"]).run_dir) == "runs/abc"
    assert str(parse_cli(LoopConfig, ["paradigm=iter_dpo"]).run_dir) == "runs/iter_dpo-arith"
    with pytest.raises(ConfigError, match="valid keys"):
        parse_cli(LoopConfig, ["n_sample=3"])
    with pytest.raises(ValueError, match="unknown; registered"):
        parse_cli(LoopConfig, ["paradigm=iter_ppo"])
    with pytest.raises(ValueError, match="eval.temperature=0"):
        parse_cli(LoopConfig, ["eval.temperature=0"])


def test_config_differences_ignore_resumable_keys():
    from selftrain.config import to_dict

    a = to_dict(LoopConfig())
    b = to_dict(LoopConfig(iterations=5, out_dir="elsewhere"))
    b["sft"]["save_every"] = 10  # does not change the weights
    assert config_differences(a, b) == []
    c = to_dict(LoopConfig(seed=3))
    c["sft"]["lr"] = 1.0
    assert config_differences(a, c) == ["seed", "sft.lr"]


@pytest.mark.parametrize("name", ["default", "paper_gsm8k", "paper_math", "paper_csqa", "paper_mbpp"])
def test_shipped_configs_parse(name):
    path = Path(__file__).resolve().parents[1] / "recipes" / "configs" / f"{name}.yaml"
    cfg = parse_cli(LoopConfig, [f"config={path}", "paradigm=iter_sft_dpo"])
    if name == "default":
        assert (cfg.model, cfg.task, cfg.iterations) == ("smollm2-135m", "arith", 3)
    else:  # paper A's settings
        assert (cfg.n_samples, cfg.iterations, cfg.eval.n_samples, cfg.sampling.max_new_tokens) == (
            50,
            5,
            50,
            512,
        )
        assert (cfg.sft.lr, cfg.sft.global_batch_size, cfg.sft.epochs, cfg.sft.warmup_ratio) == (
            1e-5,
            128,
            3,
            0.03,
        )
        # LLaMA2-7B in Table 1 (the task files; paper_a_model/ holds the other two models)
        assert (cfg.dpo.lr, cfg.dpo.global_batch_size, cfg.dpo.beta, cfg.dpo.epochs) == (2e-6, 32, 0.3, 1)
        assert cfg.eval.is_ns == [2, 4, 8, 16, 32, 64]
    assert cfg.ood.enabled == (name in ("default", "paper_gsm8k"))


def test_select_diverse_keeps_m_per_side_distinct_reasoning_and_answers_first():
    from selftrain.loop.steps import select_diverse

    q = SampledQuestion(
        "q1",
        "P",
        [
            "2 + 3 = 5. The answer is 5.",  # correct, equations (2+3=5)
            "2 + 3 = 5. So the answer is 5.",  # correct, same equations: a repeat of the reasoning
            "2 + 3 = 5. The answer is 5.",  # identical duplicate
            "1 + 4 = 5. The answer is 5.",  # correct, new equations
            "The answer is 7.",  # wrong, answer 7
            "I think the answer is 7.",  # wrong, answer 7 again
            "The answer is 9.",  # wrong, answer 9
        ],
        [1, 1, 1, 1, 0, 0, 0],
    )
    (out,) = select_diverse([q], 2, lambda text: text.rstrip(".").split()[-1])
    assert out.responses == ["2 + 3 = 5. The answer is 5.", "1 + 4 = 5. The answer is 5.",
                             "The answer is 7.", "The answer is 9."]
    assert out.rewards == [1.0, 1.0, 0.0, 0.0]
    # with room for more, the repeats follow the distinct ones (duplicates never)
    (wide,) = select_diverse([q], 5, lambda text: text.rstrip(".").split()[-1])
    assert wide.responses[:3] == ["2 + 3 = 5. The answer is 5.", "1 + 4 = 5. The answer is 5.",
                                  "2 + 3 = 5. So the answer is 5."]
    assert wide.responses[3:] == ["The answer is 7.", "The answer is 9.", "I think the answer is 7."]
    with pytest.raises(ValueError, match="m must be"):
        select_diverse([q], 0, str)
