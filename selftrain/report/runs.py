"""Reading a finished (or partial) run folder back: its config and one metrics row per iteration."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CI_SUFFIXES = ("/ci_low", "/ci_high")


@dataclass
class RunRecord:
    folder: Path
    config: dict[str, Any]
    rows: list[dict[str, Any]]  # one per iteration, sorted by iteration

    @property
    def label(self) -> str:
        return str(self.config.get("name") or self.config.get("paradigm") or self.folder.name)

    @property
    def iterations(self) -> list[int]:
        return [int(r["iteration"]) for r in self.rows]

    def series(self, key: str) -> tuple[list[int], list[float | None]]:
        """(iterations, values) of one metric; None where an iteration lacks it."""
        return self.iterations, [_number(r.get(key)) for r in self.rows]

    def row(self, t: int) -> dict[str, Any] | None:
        for r in self.rows:
            if int(r["iteration"]) == t:
                return r
        return None

    def metric_keys(self) -> list[str]:
        keys: dict[str, None] = {}
        for r in self.rows:
            for k, v in r.items():
                if k in ("iteration", "step", "step_kind") or k.endswith(CI_SUFFIXES):
                    continue  # a metric's interval keys (W&B's `/ci_low`, `/ci_high`) belong to the metric
                if v is None or _number(v) is not None:
                    keys[k] = None
        return list(keys)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def load_run(folder: str | os.PathLike) -> RunRecord:
    """A run folder's config.json and metrics.jsonl (a torn last line is ignored; a later row for the
    same iteration replaces an earlier one)."""
    folder = Path(folder)
    metrics = folder / "metrics.jsonl"
    if not metrics.is_file():
        raise FileNotFoundError(f"{folder} is not a run folder: {metrics} does not exist")
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    by_iteration: dict[int, dict[str, Any]] = {}
    lines = metrics.read_text().splitlines()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines):
                break  # a kill during the last append
            raise ValueError(f"{metrics} line {i}: not valid JSON ({e.msg})") from None
        if "iteration" not in row:
            raise ValueError(f"{metrics} line {i}: missing field 'iteration'")
        by_iteration[int(row["iteration"])] = row
    return RunRecord(folder, config, [by_iteration[t] for t in sorted(by_iteration)])
