"""Rewards for online RL: the registry `rl.reward` names, and the one place a step's responses
are graded (`grade`).

A reward is either
- a plain function `reward(example, completion) -> float`, called once per response (the task's
  grader, `task_reward`, is one), or
- an object with `score_groups(examples, groups, policy_sampler) -> list[list[float]]`, called once
  per step with every sampled group; it gets the sampler holding the *current* policy weights, so a
  reward can ask the policy itself (a self-verifier) without loading another model. It may also
  have `step_stats() -> dict[str, float]`: extra values of the last call, logged with the step.

A user's reward is one file that calls `register_reward(name, factory)`, imported with the loop
config's `plugins=`; `factory(task, **rl.reward_options)` returns the reward (docs/extending.md).

Registered here: `task` (the task's grader) and `self_verify` (paper B's verifiers as the reward:
the policy rates its own answers, or a fixed verifier model does; `VerifierReward`, docs/rl.md).
"""

from __future__ import annotations

import hashlib
import inspect
import os
import time
from typing import Any, Callable, Sequence

Reward = Any  # a callable (example, completion) -> float, or an object with score_groups(...)
RewardFactory = Callable[..., Reward]


def task_reward(task: Any) -> Reward:
    """The reward of a task's grader: task.reward(example, completion text)."""
    return lambda example, completion: float(task.reward(example, completion.text))


# Verifiers that give each response a utility of its own. `tournament` is left out on purpose: its
# score is the rounds a response survived in a bracket of its group, so every group's scores are the
# same multiset (G = 8: one 3, one 2, two 1s, four 0s) whatever their quality. GRPO would then push
# apart equally wrong (or equally right) answers, a group can never say "all wrong", a response's
# reward depends on which group mate the seeded pairing drew, and reward/mean is a constant.
SELF_VERIFY_METHODS = ("mc", "cot_score", "cot_binary")
# Options that size a fixed verifier model's own Sampler (model=...); the policy's sampler is sized
# by rl.max_num_seqs / rl.kv_cache_tokens instead.
VERIFIER_SAMPLER_OPTIONS = ("max_num_seqs", "kv_cache_tokens", "dtype")


class _SamplerPending:
    """Stands in for the verifier's sampler while its options are checked (the real one comes per call)."""


def _verifier_option_names(cls: type) -> set[str]:
    """Keyword options a verifier class accepts: its own and, through **options, its bases'."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = list(inspect.signature(init).parameters.values())
        names |= {p.name for p in params if p.kind is p.KEYWORD_ONLY}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class VerifierReward:
    """Reward = a verifier's proxy utility û of each response (paper B's MC / CoT-Score / CoT-Binary).

    model=None scores with `policy_sampler`, the sampler rl_block refreshes with the current policy
    each step (self-verification: the judge changes with the policy). model="<HF folder, hub id or
    built-in name>" scores with a fixed verifier, loaded once on the first call into a Sampler of its
    own (a second model in memory beside the policy, its sampler and the trainer), sized by
    `max_num_seqs`, `kv_cache_tokens` and `dtype`. Every other option goes to the verifier (shots,
    temperature, top_p, max_new_tokens, family, batch_size, seed; MC also word_probs). Call k samples
    the verifier with `step_seed(k)`, so steps never replay the same verifier randomness while a
    rerun from the same seed does.
    """

    def __init__(self, task: Any, method: str = "mc", model: str | os.PathLike[str] | None = None,
                 **options: Any) -> None:
        from ..verify import get_verifier

        if method == "gold":
            raise ValueError(
                "rl.reward_options.method='gold' is the task's own grader: use rl.reward=task instead"
            )
        if method not in SELF_VERIFY_METHODS:
            why = {"tournament": " (its score is a bracket rank within the group, not a per-response score)"}
            raise ValueError(
                f"rl.reward_options.method={method!r}: self_verify takes one of "
                f"{', '.join(SELF_VERIFY_METHODS)}{why.get(method, '')}"
            )
        if model is not None and (not isinstance(model, (str, os.PathLike)) or not str(model)):
            raise ValueError(f"rl.reward_options.model={model!r}: give an HF folder, hub id or built-in name")
        sampler_options = {k: options.pop(k) for k in VERIFIER_SAMPLER_OPTIONS if k in options}
        if sampler_options and model is None:
            raise ValueError(
                f"rl.reward_options: {', '.join(sampler_options)} size a fixed verifier model's sampler "
                "(set model=...); self-verification uses the policy's sampler (rl.max_num_seqs, "
                "rl.kv_cache_tokens)"
            )
        for key in ("max_num_seqs", "kv_cache_tokens"):
            if key in sampler_options and (not _is_int(sampler_options[key]) or sampler_options[key] < 1):
                raise ValueError(f"rl.reward_options.{key}={sampler_options[key]!r}: must be an integer >= 1")
        if "dtype" in sampler_options:
            import torch

            if not isinstance(getattr(torch, str(sampler_options["dtype"]), None), torch.dtype):
                raise ValueError(f"rl.reward_options.dtype={sampler_options['dtype']!r}: not a torch dtype")
        seed = options.pop("seed", 0)
        if not _is_int(seed):
            raise ValueError(f"rl.reward_options.seed={seed!r}: must be an integer")
        allowed = _verifier_option_names(type(get_verifier(method, _SamplerPending()))) - {"seed"}
        unknown = sorted(set(options) - allowed)
        if unknown:
            choices = sorted(allowed | {"method", "model", "seed", *VERIFIER_SAMPLER_OPTIONS})
            raise ValueError(
                f"rl.reward_options: unknown option(s) {', '.join(map(repr, unknown))} for self_verify "
                f"with method {method!r}; allowed: {', '.join(choices)}"
            )
        try:  # the verifier's own checks of the values (word_probs, batch_size, ...), now, not at step 1
            get_verifier(method, _SamplerPending(), **options)
        except ValueError as err:
            raise ValueError(f"rl.reward_options: {err}") from err
        self.task = task
        self.method = method
        self.model = None if model is None else str(model)
        self.seed = seed
        self.verifier_options = options
        self.sampler_options = sampler_options
        self.calls = 0
        self.last_result: Any = None  # the last call's VerificationResult (raw verifier texts included)
        self._sampler: Any = None
        self._stats: dict[str, float] = {}

    def __repr__(self) -> str:
        judge = self.model or "the policy"
        return f"VerifierReward(method={self.method!r}, verifier={judge})"

    def step_seed(self, call: int) -> int:
        """The verifier's sampling seed for call `call` (0, 1, ...): fixed by (seed, call) alone."""
        digest = hashlib.sha256(f"self_verify/{self.seed}/{call}".encode()).digest()
        return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF

    def verifier_sampler(self, policy_sampler: Any) -> Any:
        """The sampler that judges: the policy's, or the fixed model's (built on first use)."""
        if self.model is None:
            return policy_sampler
        if self._sampler is None:
            from ..sampler import Sampler

            # data_parallel=False: each process judges its own responses (as rl_block samples them)
            self._sampler = Sampler(self.model, data_parallel=False, **self.sampler_options)
        return self._sampler

    def score_groups(self, examples: Sequence[Any], groups: Sequence[Sequence[Any]], policy_sampler: Any
                     ) -> list[list[float]]:
        from ..verify import get_verifier

        texts = [[c.text for c in group] for group in groups]
        sampler = self.verifier_sampler(policy_sampler)  # loading a fixed model is not verification time
        t0 = time.perf_counter()
        seed = self.step_seed(self.calls)
        result = get_verifier(self.method, sampler, seed=seed, **self.verifier_options).score(
            self.task, examples, texts
        )
        verify_s = time.perf_counter() - t0
        self.calls += 1
        self.last_result = result
        graded = [float(self.task.reward(ex, t)) for ex, row in zip(examples, texts) for t in row]
        self._stats = {
            "reward/verifier_failed": result.failure_rate,
            "reward/task": sum(graded) / len(graded) if graded else 0.0,
            "reward/verify_s": verify_s,
        }
        return result.scores

    def step_stats(self) -> dict[str, float]:
        """The last call's failure rate of the verifier (reward/verifier_failed), the task grader's
        mean over the same responses (reward/task: true accuracy beside the self-assessed reward)
        and the seconds the verification took (reward/verify_s; a fixed model's loading excluded);
        empty before the first call."""
        return dict(self._stats)


def verifier_reward(task: Any, method: str = "mc", model: str | os.PathLike[str] | None = None,
                    **verifier_options: Any) -> VerifierReward:
    """`rl.reward: self_verify`: a verifier's score of each response as its reward (VerifierReward)."""
    return VerifierReward(task, method, model, **verifier_options)


_REWARDS: dict[str, RewardFactory] = {"task": task_reward, "self_verify": verifier_reward}


def register_reward(name: str, factory: RewardFactory, *, replace: bool = False) -> RewardFactory:
    """Register `factory(task, **options) -> reward` under `name`."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"reward name must be a non-empty string, got {name!r}")
    if name in _REWARDS and not replace:
        raise ValueError(f"reward {name!r} is already registered (pass replace=True to override)")
    _REWARDS[name] = factory
    return factory


def make_reward(name: str, task: Any, options: dict[str, Any] | None = None) -> Reward:
    """The registered reward `name` for `task`, built with `options` (rl.reward_options).
    An unknown name lists the registered ones; options the factory does not take are named."""
    if name not in _REWARDS:
        raise ValueError(f"rl.reward={name!r}: unknown; registered: {', '.join(sorted(_REWARDS))}")
    try:
        return _REWARDS[name](task, **(options or {}))
    except TypeError as err:
        raise ValueError(f"rl.reward={name!r} with rl.reward_options={options!r}: {err}") from err


def grade(
    reward: Reward, examples: Sequence[Any], groups: Sequence[Sequence[Any]], policy_sampler: Any
) -> tuple[list[list[float]], dict[str, float]]:
    """Rewards of every response (groups[q][i] is response i to examples[q], a sampler Completion)
    and the reward's own per-step statistics (empty for a plain function)."""
    if hasattr(reward, "score_groups"):
        scores = reward.score_groups(examples, groups, policy_sampler)
        shape = [len(g) for g in groups]
        if [len(row) for row in scores] != shape:
            sizes = [len(row) for row in scores]
            raise ValueError(f"reward {reward!r} returned groups of sizes {sizes}, expected {shape}")
        stats = reward.step_stats() if hasattr(reward, "step_stats") else {}
        return [[float(s) for s in row] for row in scores], dict(stats)
    return [[float(reward(ex, c)) for c in group] for ex, group in zip(examples, groups)], {}
