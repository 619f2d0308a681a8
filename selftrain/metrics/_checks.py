"""Input validation shared by the metric modules.

Every metric in this package works on binary rewards: R(x, y) in {0, 1} (paper A) and u(x, y) in
{0, 1} (paper B, all four tasks). Accepting anything else silently would let a bug upstream (a
score passed where a reward was meant) produce plausible-looking numbers, so it is an error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def as_binary(value: Any, where: str) -> int:
    """Return `value` as 0 or 1; bool, int, float (and numpy scalars) equal to 0 or 1 are accepted."""
    if value is None or isinstance(value, (str, bytes)):
        raise ValueError(f"{where}: reward must be 0 or 1 (a binary correctness judgement), got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: reward must be 0 or 1, got {value!r}") from err
    if number == 0.0:
        return 0
    if number == 1.0:
        return 1
    raise ValueError(f"{where}: reward must be 0 or 1 (a binary correctness judgement), got {value!r}")


def binary_list(values: Sequence[Any], where: str) -> list[int]:
    """Validate a flat sequence of rewards; `where` names the argument in error messages."""
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{where}: expected a sequence of rewards, got a string")
    return [as_binary(v, f"{where}[{i}]") for i, v in enumerate(values)]


def binary_nested(
    values: Sequence[Sequence[Any]], where: str, allow_empty_rows: bool = False
) -> list[list[int]]:
    """Validate rewards grouped per question; empty rows are errors unless `allow_empty_rows`."""
    rows: list[list[int]] = []
    for i, row in enumerate(values):
        if not allow_empty_rows and len(row) == 0:
            raise ValueError(f"{where}[{i}]: question has no samples")
        rows.append(binary_list(row, f"{where}[{i}]"))
    return rows


def require_nonempty(values: Sequence[Any], where: str) -> None:
    if len(values) == 0:
        raise ValueError(f"{where}: empty input, the metric is undefined")


def require_same_length(a: Sequence[Any], b: Sequence[Any], name_a: str, name_b: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{name_a} has {len(a)} entries but {name_b} has {len(b)}; they must match")


def is_missing(score: Any) -> bool:
    """A verifier score that could not be produced (None or NaN, e.g. an unparseable CoT-Score)."""
    if score is None:
        return True
    try:
        return math.isnan(float(score))
    except (TypeError, ValueError) as err:
        raise ValueError(f"score must be a number, None or NaN, got {score!r}") from err
