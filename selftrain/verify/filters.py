"""Filter specifications: which generations a method's scores keep (the weight w(û) of paper B).

A spec is a string:
  "mc:top=0.8"          per-question quantile: keep û >= the 0.8-quantile of the question's scores
  "mc:tau=0.8"          global threshold: keep û >= 0.8
  "cot_score:tau=8"     the same for any scored method
  "cot_binary"          shorthand for cot_binary:tau=1 (also "gold")
  "tournament:rounds=5" the survivors of 5 tournament rounds (û = rounds survived >= 5; a
                        question whose tournament ended earlier keeps its champion)
  "mc:top=0.8&cot_binary"   AND ensemble: kept only if every part keeps it
The masks come from `selftrain.metrics` (threshold_filter, quantile_filter, and_ensemble).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from selftrain.metrics import and_ensemble, quantile_filter, threshold_filter

_PART = re.compile(
    r"^\s*(?P<method>[a-z_]+)\s*(?::\s*(?P<kind>tau|top|rounds)\s*=\s*(?P<value>[-+0-9.eE]+))?\s*$"
)
_BARE = {"cot_binary": ("tau", 1.0), "gold": ("tau", 1.0)}
_LABELS = {"mc": "MC", "cot_binary": "CoT-B", "cot_score": "CoT-S", "tournament": "To", "gold": "Gold"}


@dataclass(frozen=True)
class FilterPart:
    method: str
    kind: str  # "tau", "top" or "rounds"
    value: float

    def label(self) -> str:
        name = _LABELS.get(self.method, self.method)
        if self.method in _BARE and (self.kind, self.value) == _BARE[self.method]:
            return name
        if self.kind == "top":
            return f"{name} top {self.value:g}"
        if self.kind == "rounds":
            return f"{name} round {int(self.value)}"
        return f"{name} τ={self.value:g}"


@dataclass(frozen=True)
class FilterSpec:
    text: str
    parts: tuple[FilterPart, ...]

    @property
    def methods(self) -> list[str]:
        return [p.method for p in self.parts]

    def label(self) -> str:
        return " + ".join(p.label() for p in self.parts)


def parse_filter(text: str, known_methods: Sequence[str] | None = None) -> FilterSpec:
    """Parse a spec string; errors name the spec and the offending part."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"filter spec must be a non-empty string, got {text!r}")
    parts = []
    for chunk in text.split("&"):
        m = _PART.match(chunk)
        if not m:
            raise ValueError(
                f"filter {text!r}: cannot read {chunk.strip()!r}; expected METHOD:tau=X, METHOD:top=Q, "
                "tournament:rounds=R or cot_binary, joined by & for an ensemble"
            )
        method, kind, value = m.group("method"), m.group("kind"), m.group("value")
        if known_methods is not None and method not in known_methods:
            raise ValueError(f"filter {text!r}: method {method!r} is not among the methods run "
                             f"({', '.join(known_methods)})")
        if kind is None:
            if method not in _BARE:
                raise ValueError(f"filter {text!r}: {method!r} needs a threshold, e.g. {method}:tau=0.8")
            kind, number = _BARE[method]
        else:
            try:
                number = float(value)
            except ValueError as err:
                raise ValueError(f"filter {text!r}: {value!r} is not a number") from err
        if kind == "top" and not 0.0 <= number <= 1.0:
            raise ValueError(f"filter {text!r}: top must be a quantile level in [0, 1]")
        if kind == "rounds":
            if method != "tournament":
                raise ValueError(f"filter {text!r}: rounds= applies to the tournament only")
            if number != int(number) or number < 0:
                raise ValueError(f"filter {text!r}: rounds must be a non-negative integer")
        if method == "tournament" and kind != "rounds":
            raise ValueError(f"filter {text!r}: the tournament is filtered by rounds=R")
        parts.append(FilterPart(method, kind, number))
    return FilterSpec(text.strip(), tuple(parts))


def _part_masks(part: FilterPart, scores: Sequence[Sequence[float]]) -> list[list[bool]]:
    if part.kind == "top":
        return quantile_filter(scores, part.value)
    if part.kind == "rounds":
        # Survivors after min(r, rounds played): the champion has the most rounds survived.
        return [threshold_filter(row, min(part.value, max(row))) if len(row) else [] for row in scores]
    return [threshold_filter(row, part.value) for row in scores]


def keep_masks(spec: FilterSpec, scores_by_method: dict[str, Sequence[Sequence[float]]]) -> list[list[bool]]:
    """Per-question keep masks of `spec` given each method's scores (grouped per question)."""
    masks = []
    for part in spec.parts:
        if part.method not in scores_by_method:
            raise ValueError(f"filter {spec.text!r} needs scores of {part.method!r}, which were not computed")
        masks.append(_part_masks(part, scores_by_method[part.method]))
    return masks[0] if len(masks) == 1 else and_ensemble(*masks)
