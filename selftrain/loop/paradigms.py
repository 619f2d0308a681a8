"""Paradigms as schedules: which post-training step each iteration t >= 2 uses.

Iteration 1 is always "gold_sft" (M1 = SFT of M0 on the gold training answers, paper A's
Algorithm 1). A paradigm is a function t -> step-kind name for t >= 2; the step kinds themselves
(how D_t is built, which loss trains on it) live in `steps.py`. Adding a paradigm is one call to
`register_paradigm` (see docs/extending.md).
"""

from __future__ import annotations

from typing import Callable

GOLD_SFT = "gold_sft"

KindForIteration = Callable[[int], str]
_PARADIGMS: dict[str, KindForIteration] = {}


def register_paradigm(
    name: str, kind_for_iteration: KindForIteration | None = None, *, replace: bool = False
):
    """Register `kind_for_iteration(t) -> step kind` (t >= 2) under `name`; usable as a decorator."""

    def add(fn: KindForIteration) -> KindForIteration:
        if not isinstance(name, str) or not name:
            raise ValueError(f"paradigm name must be a non-empty string, got {name!r}")
        if name in _PARADIGMS and not replace:
            raise ValueError(f"paradigm {name!r} is already registered (pass replace=True to override)")
        _PARADIGMS[name] = fn
        return fn

    return add(kind_for_iteration) if kind_for_iteration is not None else add


def paradigm_names() -> list[str]:
    return sorted(_PARADIGMS)


def step_kind(paradigm: str, t: int) -> str:
    """The step kind of iteration `t` (1-based) under `paradigm`; t = 1 is always gold SFT."""
    if paradigm not in _PARADIGMS:
        raise ValueError(f"unknown paradigm {paradigm!r}; registered: {', '.join(paradigm_names())}")
    if isinstance(t, bool) or not isinstance(t, int) or t < 1:
        raise ValueError(f"iteration t must be an int >= 1, got {t!r}")
    if t == 1:
        return GOLD_SFT
    kind = _PARADIGMS[paradigm](t)
    from .steps import step_kind_names  # late import: steps registers kinds on import

    if kind not in step_kind_names():
        raise ValueError(
            f"paradigm {paradigm!r} gives step kind {kind!r} at t={t}; "
            f"known kinds: {', '.join(step_kind_names())}"
        )
    return kind


def schedule(paradigm: str, iterations: int) -> list[str]:
    """Step kinds for t = 1..iterations (e.g. iter_sft_dpo, 4 -> gold_sft, sft, dpo, sft)."""
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an int >= 1, got {iterations!r}")
    return [step_kind(paradigm, t) for t in range(1, iterations + 1)]


# The three paradigms of paper A.
register_paradigm("iter_sft", lambda t: "sft")
register_paradigm("iter_dpo", lambda t: "dpo")
# Alternating, starting with an SFT step right after M1: t = 2 sft, t = 3 dpo, t = 4 sft, ...
register_paradigm("iter_sft_dpo", lambda t: "sft" if t % 2 == 0 else "dpo")
# Online RL after M1's gold SFT: every later iteration a block of GRPO (or RLOO) steps.
register_paradigm("iter_grpo", lambda t: "grpo")
register_paradigm("iter_rloo", lambda t: "rloo")
