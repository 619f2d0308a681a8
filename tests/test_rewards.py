"""Rewards for online RL (selftrain.train.rewards): grade(), and the self-verifier reward `self_verify`
(paper B's verifiers scoring the policy's own answers, or a fixed verifier model's)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from test_verify import ScriptedSampler, arith_examples, last_solution

import selftrain.sampler
from selftrain.tasks import get_task
from selftrain.train.config import TrainConfig
from selftrain.train.grpo import RLConfig, read_curve, rl_block
from selftrain.train.rewards import VerifierReward, grade, make_reward, verifier_reward
from selftrain.verify import get_verifier

TINY = "tiny-random"
WRONG = "The answer is -1."


def _groups(texts: list[list[str]]) -> list[list[SimpleNamespace]]:
    """Hand-made responses in the shape rl_block passes (sampler Completions: only .text is read)."""
    return [[SimpleNamespace(text=t, token_ids=[], finish_reason="stop") for t in row] for row in texts]


@pytest.fixture(scope="module")
def tiny_sampler() -> selftrain.sampler.Sampler:
    return selftrain.sampler.Sampler(TINY, kv_cache_tokens=4096, max_num_seqs=8, data_parallel=False)


# --- grade() ------------------------------------------------------------------------------------

def test_grade_calls_a_plain_function_once_per_response() -> None:
    calls = []

    def reward(example, completion):
        calls.append((example, completion.text))
        return len(completion.text)

    scores, stats = grade(reward, ["q0", "q1"], _groups([["a", "bb"], ["ccc"]]), policy_sampler=None)
    assert scores == [[1.0, 2.0], [3.0]] and stats == {}
    assert calls == [("q0", "a"), ("q0", "bb"), ("q1", "ccc")]


def test_grade_checks_a_batch_rewards_shape_and_logs_its_stats() -> None:
    class Batch:
        def __init__(self, out, stats=None):
            self.out, self.stats, self.seen = out, stats, None

        def score_groups(self, examples, groups, policy_sampler):
            self.seen = policy_sampler
            return self.out

        def step_stats(self):
            return self.stats

    groups = _groups([["a", "b"], ["c"]])
    good = Batch([[1, 0], [True]], {"x": 0.5})
    assert grade(good, ["q0", "q1"], groups, "the policy") == ([[1.0, 0.0], [1.0]], {"x": 0.5})
    assert good.seen == "the policy"
    no_stats = SimpleNamespace(score_groups=lambda e, g, s: [[0.0, 0.0], [1.0]])
    assert grade(no_stats, ["q0", "q1"], groups, None)[1] == {}
    with pytest.raises(ValueError, match=r"returned groups of sizes \[2, 2\], expected \[2, 1\]"):
        grade(Batch([[1, 0], [1, 1]]), ["q0", "q1"], groups, None)
    with pytest.raises(ValueError, match=r"sizes \[2\], expected \[2, 1\]"):
        grade(Batch([[1, 0]]), ["q0", "q1"], groups, None)


# --- self_verify: what it scores with -------------------------------------------------------------

def test_self_verify_mc_equals_the_verifiers_own_scores(tiny_sampler) -> None:
    task, examples = arith_examples(2)
    texts = [[task.gold_response(examples[0]), WRONG], ["The answer is 7.", "I do not know", ""]]
    reward = make_reward("self_verify", task, {"method": "mc", "seed": 3})
    assert isinstance(reward, VerifierReward)
    scores, stats = grade(reward, examples, _groups(texts), tiny_sampler)
    want = get_verifier("mc", tiny_sampler, seed=reward.step_seed(0)).score(task, examples, texts)
    assert scores == want.scores
    assert all(0.0 < s < 1.0 for row in scores for s in row)  # real probabilities, not the default
    assert stats["reward/verifier_failed"] == 0.0 and stats["reward/task"] == pytest.approx(1 / 5)


def test_the_verifier_seed_moves_with_every_step(tiny_sampler) -> None:
    """CoT samples: call k uses step_seed(k) (the verifier's own result with that seed), and the
    seeds of consecutive calls differ; a reward built with the same seed replays them."""
    task, examples = arith_examples(1)
    texts = [["The answer is 3.", "The answer is 4.", WRONG]]
    options = {"method": "cot_score", "max_new_tokens": 6, "seed": 11}
    reward = make_reward("self_verify", task, options)
    raws = []
    for call in range(2):
        scores = reward.score_groups(examples, _groups(texts), tiny_sampler)
        want = get_verifier("cot_score", tiny_sampler, max_new_tokens=6, seed=reward.step_seed(call)).score(
            task, examples, texts
        )
        assert scores == want.scores and reward.last_result.raw == want.raw
        raws.append(reward.last_result.raw)
    assert reward.calls == 2 and reward.step_seed(0) != reward.step_seed(1)
    assert raws[0] != raws[1]  # other random numbers, so other verifier texts
    again = make_reward("self_verify", task, options)
    assert [again.step_seed(k) for k in range(3)] == [reward.step_seed(k) for k in range(3)]
    assert make_reward("self_verify", task, {**options, "seed": 12}).step_seed(0) != reward.step_seed(0)


def _mc_judge(p_correct: float) -> ScriptedSampler:
    """A scripted verifier whose MC answer is p(Correct) = p_correct for every response."""
    return ScriptedSampler(probs=lambda prompt: {"Correct": p_correct, "In": 1.0 - p_correct})


def test_self_verification_judges_with_the_sampler_it_is_given() -> None:
    """model=None: whichever policy sampler rl_block passes (the current weights) is the judge."""
    task, examples = arith_examples(1)
    reward = verifier_reward(task)  # method mc by default
    groups = _groups([["x", "y"]])
    assert reward.score_groups(examples, groups, _mc_judge(0.75)) == [[pytest.approx(0.75)] * 2]
    assert reward.score_groups(examples, groups, _mc_judge(0.25)) == [[pytest.approx(0.25)] * 2]
    assert reward.calls == 2


def test_a_fixed_verifier_model_is_loaded_once_on_first_use(monkeypatch) -> None:
    built: list[tuple[str, dict]] = []
    real = selftrain.sampler.Sampler

    def counting(model, **kwargs):
        built.append((model, kwargs))
        return real(model, **kwargs)

    monkeypatch.setattr(selftrain.sampler, "Sampler", counting)
    task, examples = arith_examples(1)
    options = {"method": "mc", "model": TINY, "max_num_seqs": 4, "kv_cache_tokens": 2048}
    reward = make_reward("self_verify", task, options)
    assert built == []  # building the reward (config validation) loads nothing
    texts = [["The answer is 3.", WRONG]]
    policy = _mc_judge(0.75)  # would score 0.75: the fixed model must be the judge instead
    first = reward.score_groups(examples, _groups(texts), policy)
    second = reward.score_groups(examples, _groups(texts), policy)
    assert built == [(TINY, {"data_parallel": False, "max_num_seqs": 4, "kv_cache_tokens": 2048})]
    judge = reward.verifier_sampler(policy)
    assert judge is not policy and judge.config.max_num_seqs == 4
    want = get_verifier("mc", judge).score(task, examples, texts).scores
    assert first == second == want and first[0][0] != pytest.approx(0.75)


def test_step_stats_of_hand_made_responses() -> None:
    """Gold responses (task reward 1), a wrong one (0) and one the verifier cannot read: the failure
    rate, the task's mean and the scores are known exactly."""
    task, examples = arith_examples(2)
    gold = [task.gold_response(ex) for ex in examples]

    def probs(prompt: str) -> dict[str, float]:
        response = last_solution(prompt)
        if "mumble" in response:
            return {}  # no mass on either answer: a failed verification, scored 0.5
        return {"Correct": 0.2, "In": 0.6} if WRONG in response else {"Correct": 0.9, "In": 0.1}

    reward = make_reward("self_verify", task, {})
    assert reward.step_stats() == {}  # nothing measured before the first step
    texts = [[gold[0], WRONG], [gold[1], "mumble", gold[1]]]
    scores, stats = grade(reward, examples, _groups(texts), ScriptedSampler(probs=probs))
    high, low = pytest.approx(0.9), pytest.approx(0.25)
    assert scores == [[high, low], [high, 0.5, high]]
    assert stats["reward/verifier_failed"] == pytest.approx(1 / 5)
    assert stats["reward/task"] == pytest.approx(3 / 5)
    assert stats["reward/verify_s"] >= 0.0
    # the stats are those of the last call only
    _, stats = grade(reward, examples[:1], _groups([[WRONG, WRONG]]), ScriptedSampler(probs=probs))
    assert stats["reward/verifier_failed"] == 0.0 and stats["reward/task"] == 0.0


# --- self_verify: refused settings ----------------------------------------------------------------

@pytest.mark.parametrize("options, match", [
    ({"method": "gold"}, r"rl.reward_options.method='gold'.*use rl.reward=task"),
    ({"method": "tournament"}, r"rl.reward_options.method='tournament'.*bracket rank"),
    ({"method": "vote"}, r"rl.reward_options.method='vote': self_verify takes one of mc, cot_score"),
    ({"temprature": 0.7}, r"rl.reward_options: unknown option\(s\) 'temprature' .*allowed: .*temperature"),
    ({"method": "cot_score", "word_probs": "full"}, r"rl.reward_options: unknown option\(s\) 'word_probs'"),
    ({"max_num_seqs": 4}, r"rl.reward_options: max_num_seqs size a fixed verifier model's sampler"),
    ({"model": TINY, "kv_cache_tokens": 0}, r"rl.reward_options.kv_cache_tokens=0"),
    ({"model": TINY, "dtype": "float17"}, r"rl.reward_options.dtype='float17'"),
    ({"model": ""}, r"rl.reward_options.model=''"),
    ({"seed": "1"}, r"rl.reward_options.seed='1'"),
    ({"word_probs": "max"}, r"rl.reward_options: word_probs must be one of"),
    ({"method": "cot_binary", "batch_size": 0}, r"rl.reward_options: batch_size must be"),
])
def test_bad_settings_name_the_reward_options(options, match) -> None:
    with pytest.raises(ValueError, match=match):
        make_reward("self_verify", get_task("arith"), options)


def test_the_registry_lists_self_verify() -> None:
    with pytest.raises(ValueError, match=r"rl.reward='nope': unknown; registered: self_verify, task"):
        make_reward("nope", get_task("arith"))
    options = {"method": "cot_binary", "shots": 2, "model": TINY}
    reward = make_reward("self_verify", get_task("arith"), options)
    assert repr(reward) == "VerifierReward(method='cot_binary', verifier=tiny-random)"


def test_the_loop_configs_rl_section_builds_it() -> None:
    """docs/rl.md's settings, as the loop parses them, build the reward the engine hands rl_block."""
    from selftrain.config import parse_cli
    from selftrain.loop.config import LoopConfig

    cfg = parse_cli(LoopConfig, ["paradigm=iter_grpo", "rl.reward=self_verify",
                                 "rl.reward_options={method: cot_score, max_new_tokens: 64, seed: 5}"])
    reward = make_reward(cfg.rl.reward, get_task("arith"), cfg.rl.reward_options)
    assert isinstance(reward, VerifierReward) and reward.method == "cot_score" and reward.model is None
    assert reward.verifier_options == {"max_new_tokens": 64} and reward.seed == 5


# --- end to end ---------------------------------------------------------------------------------

def test_rl_block_with_the_self_verifier_reward(tmp_path) -> None:
    """Two online steps of GRPO on tiny-random, rewarded by the policy's own MC verification: the
    step rows carry the verifier's failure rate and the task's accuracy beside the reward."""
    task = get_task("arith", train_size=4)
    examples = task.load("train", limit=4)
    prompts = [task.prompt(ex) for ex in examples]
    cfg = RLConfig(
        steps=2,
        prompts_per_step=2,
        group_size=2,
        max_new_tokens=4,
        kv_cache_tokens=4096,
        max_num_seqs=8,
        reward="self_verify",
        reward_options={"method": "mc"},
        optim=TrainConfig(lr=1e-3, warmup_ratio=0.0, micro_batch_size=4, wandb_mode="disabled"),
    )
    reward = make_reward(cfg.reward, task, cfg.reward_options)
    result = rl_block(cfg, TINY, examples, prompts, reward, tmp_path, stop=task.stop)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    steps = [r for r in rows if "reward/mean" in r]
    assert len(steps) == 2 and reward.calls == 2
    for r in steps:
        assert 0.0 < r["reward/mean"] < 1.0  # MC probabilities of a random model, not 0/1 grades
        assert r["reward/verifier_failed"] == 0.0 and 0.0 <= r["reward/task"] <= 1.0
        assert r["reward/verify_s"] > 0.0
    assert read_curve(tmp_path, "reward/task") == [r["reward/task"] for r in steps]
    assert "reward/task" in result.metrics and "reward/verifier_failed" in result.metrics
