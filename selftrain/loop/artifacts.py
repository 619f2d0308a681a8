"""Small file helpers of the loop: JSONL artifacts, derived seeds, stage summaries."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from .. import dist
from ..report.logger import _jsonable, write_text_atomic


def derive_seed(seed: int, t: int, stage: str) -> int:
    """A seed for stage `stage` of iteration `t`, fixed by (seed, t, stage) alone, so a resumed run
    draws exactly what an uninterrupted one would (31 bits: fits every RNG's seed)."""
    digest = hashlib.sha256(f"{seed}/{t}/{stage}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def write_jsonl_atomic(path: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> Path:
    text = "".join(json.dumps(_jsonable(r), ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
    return write_text_atomic(path, text)


def read_jsonl(path: str | os.PathLike, tolerate_torn_tail: bool = False) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a bad line is an error naming file and line, except a torn last line
    (a kill during an append) when `tolerate_torn_tail`."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if tolerate_torn_tail and i == len(lines):
                break
            raise ValueError(f"{path} line {i}: not valid JSON ({e.msg})") from None
    return rows


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def say(message: str) -> None:
    """One line on rank 0's stderr (kept apart from tqdm's bars by tqdm.write)."""
    if dist.is_main():
        from tqdm.auto import tqdm

        tqdm.write(message, file=sys.stderr)


class JsonlTrainLogger:
    """What the trainer logs per step: a JSONL file beside the checkpoint and a tqdm bar (rank 0).

    The run's W&B rows are per iteration; with `series=(run_logger, prefix, offset)` each row also
    goes to W&B as `<prefix>/<key>` against its own axis `<prefix>/step` = offset + step (online
    RL blocks: one axis of online steps across iterations). `total_steps` sizes the bar (the
    trainer may end a little earlier when it drops over-long records)."""

    def __init__(
        self,
        path: str | os.PathLike,
        total_steps: int = 0,
        desc: str = "train",
        show_progress: bool = True,
        series: tuple[Any, str, int] | None = None,
    ) -> None:
        self.path = Path(path)
        self.series = series
        self._bar = None
        if dist.is_main() and show_progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps or None, desc=desc, unit="step", leave=False)

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if not dist.is_main():
            return
        from ..report.logger import append_jsonl

        append_jsonl(self.path, {**metrics, **({"step": step} if step is not None else {})})
        if self.series is not None and step is not None:
            run_logger, prefix, offset = self.series
            run_logger.log_series(prefix, metrics, offset + step)
        if self._bar is not None and step is not None:
            self._bar.update(step - self._bar.n)
            loss = metrics.get("loss")
            if isinstance(loss, (int, float)):
                self._bar.set_postfix(loss=f"{loss:.4f}")

    def rewind(self, step: int) -> None:
        """Drop rows after `step` (a resumed block redoes those steps)."""
        if dist.is_main():
            from ..report.logger import rewind_jsonl

            rewind_jsonl(self.path, step)

    def log_image(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_table(self, *args: Any, **kwargs: Any) -> None:
        pass

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
