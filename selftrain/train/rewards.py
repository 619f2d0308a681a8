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
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

Reward = Any  # a callable (example, completion) -> float, or an object with score_groups(...)
RewardFactory = Callable[..., Reward]


def task_reward(task: Any) -> Reward:
    """The reward of a task's grader: task.reward(example, completion text)."""
    return lambda example, completion: float(task.reward(example, completion.text))


_REWARDS: dict[str, RewardFactory] = {"task": task_reward}


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
