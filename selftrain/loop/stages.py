"""Resumable stages: each stage's artifact is written into a temp folder and renamed into place
with a done-marker, so a run restarted after a kill (kill -9 included) skips finished stages and
never mistakes a half-written folder for a finished one.

Collective under torchrun: every rank calls `run_stage` with the same arguments; `compute` runs on
every rank (sampling and training are collective) and only rank 0 writes files. Ranks must share
the run folder's file system (one node, or a shared file system across nodes).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from .. import dist

DONE = ".done"


def stage_done(root: str | os.PathLike, name: str) -> bool:
    """Whether stage `name` under `root` finished (decided on rank 0, the same answer on every rank)."""
    done = (Path(root) / name / DONE).is_file() if dist.is_main() else False
    return bool(dist.broadcast_object(done))


def run_stage(root: str | os.PathLike, name: str, compute: Callable[[Path], None]) -> Path:
    """Run `compute(tmp_folder)` unless `root/name` is already done; publish the folder atomically.

    `compute` writes its outputs (rank 0 only) into the folder it is given. Returns `root/name`.
    """
    root = Path(root)
    final = root / name
    if stage_done(root, name):
        return final
    tmp = root / f".{name}.partial"
    if dist.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    compute(tmp)
    dist.barrier()
    if dist.is_main():
        (tmp / DONE).write_text("ok\n")
        if final.exists():  # a leftover without a marker from an older, interrupted publish
            shutil.rmtree(final)
        os.replace(tmp, final)
    dist.barrier()
    return final
