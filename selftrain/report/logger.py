"""One logger for every recipe: a local `metrics.jsonl` plus a Weights & Biases run.

W&B runs offline by default, so nothing needs a network or an account; it goes online when the
user sets WANDB_MODE=online (or `wandb_mode=online` in the config). Only rank 0 writes anything;
on other ranks every method is a no-op. `wandb_mode=disabled` turns W&B off (metrics.jsonl stays).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from .. import dist


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` through a temp file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes the file private; artifacts are meant to be read
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(_jsonable(obj), indent=2, sort_keys=True) + "\n")


def append_jsonl(path: str | os.PathLike, row: dict[str, Any]) -> None:
    """Append one JSON line (flushed and fsynced, so a kill loses at most the line being written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(_jsonable(row), sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def rewind_jsonl(path: str | os.PathLike, step: int) -> None:
    """Drop the rows of `path` logged for steps after `step` (a resumed run redoes them)."""
    path = Path(path)
    if not path.is_file():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
    if len(kept) != len(lines):
        write_text_atomic(path, "".join(line + "\n" for line in kept))


class RunLogger:
    """Logs scalar dicts to `<out_dir>/<jsonl_name>` and to W&B (rank 0 only).

    `mode`: "offline" (default), "online", or "disabled"; WANDB_MODE in the environment overrides
    "offline"/"online" but never re-enables a logger created with mode="disabled".
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        project: str = "selftrain",
        name: str | None = None,
        config: dict[str, Any] | None = None,
        mode: str = "offline",
        jsonl_name: str = "metrics.jsonl",
        resume_id: str | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.enabled = dist.is_main()
        self.jsonl = self.out_dir / jsonl_name
        self._wandb = None
        self._x_of: dict[str, str] = {}  # W&B key -> the key it is charted against
        if not self.enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if mode != "disabled":  # an explicit "disabled" wins; otherwise WANDB_MODE may switch it
            mode = os.environ.get("WANDB_MODE", mode)
        if mode != "disabled":
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self._wandb = wandb.init(
                project=project,
                name=name,
                config=_jsonable(config or {}),
                dir=str(self.out_dir),
                mode=mode,
                id=resume_id,
                resume="allow" if resume_id else None,
                reinit="create_new",
            )

    @property
    def wandb_dir(self) -> str | None:
        return getattr(self._wandb, "dir", None) if self._wandb is not None else None

    def _log_against(self, values: dict[str, Any], x_key: str, x: int | None) -> None:
        """One W&B row whose keys are charted against `x_key` (W&B's define_metric). W&B's own step
        is never passed: it only goes forward, and a run holds several x axes (iterations, online
        RL steps) whose values interleave."""
        if x is not None:
            new = [k for k in values if k not in self._x_of]
            if x_key not in self._x_of:
                self._wandb.define_metric(x_key)
                self._x_of[x_key] = x_key
            for key in new:
                self._wandb.define_metric(key, step_metric=x_key)
                self._x_of[key] = x_key
            values = {**values, x_key: x}
        self._wandb.log(values)

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if not self.enabled:
            return
        row = dict(metrics)
        if step is not None:
            row["step"] = step
        append_jsonl(self.jsonl, row)
        if self._wandb is not None:
            flat = {k: v for k, v in _jsonable(metrics).items() if isinstance(v, (int, float))}
            self._log_against(flat, "step", step)

    def log_series(self, prefix: str, metrics: dict[str, Any], x: int) -> None:
        """W&B only: `metrics` as `<prefix>/<key>`, charted against their own axis `<prefix>/step`
        = x (e.g. online RL steps across iterations, beside the loop's per-iteration rows)."""
        if not self.enabled or self._wandb is None:
            return
        flat = {f"{prefix}/{k}": v for k, v in _jsonable(metrics).items() if isinstance(v, (int, float))}
        self._log_against(flat, f"{prefix}/step", x)

    def rewind(self, step: int) -> None:
        """Forget metrics.jsonl rows after `step` (W&B keeps what it has: its steps only go forward)."""
        if self.enabled:
            rewind_jsonl(self.jsonl, step)

    def log_image(self, key: str, png_path: str | os.PathLike, step: int | None = None) -> None:
        if not self.enabled or self._wandb is None:
            return
        import wandb

        self._log_against({key: wandb.Image(str(png_path))}, "step", step)

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        if not self.enabled or self._wandb is None:
            return
        import wandb

        self._wandb.log({key: wandb.Table(columns=columns, data=_jsonable(rows))})

    def finish(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
