"""Out-of-distribution evaluation (paper A, section 5.3): whole accuracy and group disparity.

The OOD test set is MATH algebra, levels 1-5, for models trained on GSM8K.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from typing import Any

from .passk import pass_at_1_greedy, per_level_accuracy

_LEVEL_RE = re.compile(r"^\s*(?:level\s*)?(\d+)\s*$", re.IGNORECASE)
UNDEFINED_ZERO_LOW = "undefined: the easiest level's accuracy is 0"


def parse_level(level: Hashable) -> int:
    """MATH difficulty as an int: 3, "3" and "Level 3" all give 3; anything else is a ValueError."""
    if isinstance(level, bool):
        raise ValueError(f"level must be an int or 'Level N', got {level!r}")
    if isinstance(level, int):
        return level
    if isinstance(level, str):
        match = _LEVEL_RE.match(level)
        if match:
            return int(match.group(1))
    raise ValueError(f"level must be an int or a string like 'Level 3', got {level!r}")


def group_disparity(acc_level1: float, acc_level5: float) -> float | None:
    """(acc1 - acc5) / acc1; None when acc1 == 0, where the ratio is undefined.

    A negative value means the hardest level is solved more often than the easiest one.
    """
    for name, value in (("acc_level1", acc_level1), ("acc_level5", acc_level5)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be an accuracy in [0, 1], got {value!r}")
    if acc_level1 == 0:
        return None
    return (acc_level1 - acc_level5) / acc_level1


def ood_report(
    rewards: Sequence[float], levels: Sequence[Hashable], low_level: int = 1, high_level: int = 5
) -> dict[str, Any]:
    """Whole accuracy, per-level accuracy and group disparity between `low_level` and `high_level`.

    `rewards` are the greedy 0/1 rewards, one per test question, and `levels` their difficulty (int,
    "3" or "Level 3"). Keys: whole_accuracy, per_level_accuracy {level: acc}, group_disparity (float
    or None) and group_disparity_status ("ok", or why it is undefined), n_per_level.
    """
    parsed = []
    for i, level in enumerate(levels):
        try:
            parsed.append(parse_level(level))
        except ValueError as err:
            raise ValueError(f"levels[{i}]: {err}") from err
    per_level = per_level_accuracy(rewards, parsed)
    counts: dict[int, int] = {}
    for level in parsed:
        counts[level] = counts.get(level, 0) + 1
    missing = [lv for lv in (low_level, high_level) if lv not in per_level]
    if missing:
        disparity, status = None, f"undefined: no question at level(s) {missing}"
    else:
        disparity = group_disparity(per_level[low_level], per_level[high_level])
        status = "ok" if disparity is not None else UNDEFINED_ZERO_LOW
    return {
        "whole_accuracy": pass_at_1_greedy(rewards),
        "per_level_accuracy": per_level,
        "n_per_level": {lv: counts[lv] for lv in sorted(counts)},
        "group_disparity": disparity,
        "group_disparity_status": status,
    }
