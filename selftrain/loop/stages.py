"""Resumable stages: each stage's artifact is written into a temp folder and renamed into place
with a done-marker, so a run restarted after a kill (kill -9 included) skips finished stages and
never mistakes a half-written folder for a finished one.

The marker (`.done`) records every file of the stage with its size and xxh3-64 checksum, hashed
right after the stage wrote it (from the page cache). On resume a finished stage is checked
against its marker: a file that is missing, truncated, edited or has a flipped bit is named and
the stage is recomputed, never silently used. Markers written before checksums existed ("ok")
are taken as they are.

A stage that fails (an exception, SIGINT / SIGTERM turned into `RunInterrupted`, a full disk)
removes its partial folder, so nothing half-written is left and the space comes back; a full
disk (ENOSPC, EDQUOT, EFBIG) becomes a `StageDiskFull` naming the stage and the file.

Collective under torchrun: every rank calls `run_stage` with the same arguments; `compute` runs on
every rank (sampling and training are collective) and only rank 0 writes files. Ranks must share
the run folder's file system (one node, or a shared file system across nodes).

`SELFTRAIN_HOLD_AT=<path>[@before|@after]` (for tests of kills and signals) makes the stage whose
folder ends with <path> (e.g. `iter_2/eval`) block before or after its compute (default after),
once rank 0 has created `<partial folder>/.held`: a kill then lands at a known point, not a
raced one.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Sequence

from .. import dist

DONE = ".done"
HOLD_ENV = "SELFTRAIN_HOLD_AT"
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_HASH_CHUNK = 1 << 22
# stage folder -> the stat()s of its marker and files when this process last verified it in full
_verified: dict[Path, tuple] = {}


class StageDiskFull(OSError):
    """A stage ran out of disk space (or into a file-size limit) while writing."""


def file_checksum(path: str | os.PathLike) -> str:
    """xxh3-64 of a file's bytes, as 16 hex digits (a fast non-cryptographic hash: it guards against
    truncation and corruption, not against an adversary)."""
    import xxhash

    h = xxhash.xxh3_64()
    buf = bytearray(_HASH_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def _manifest(folder: Path, base: Path | None = None) -> dict[str, list]:
    """{path relative to `base` (default `folder`): [size, checksum]} of every file under
    `folder` except the marker."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != DONE):
        out[path.relative_to(base or folder).as_posix()] = [path.stat().st_size, file_checksum(path)]
    return out


def _read_marker(folder: Path) -> dict | None:
    """The stage's marker, or None for a marker that predates checksums ("ok")."""
    text = (folder / DONE).read_text(encoding="utf-8", errors="replace")
    if text.strip() == "ok":
        return None
    try:
        marker = json.loads(text)
        if isinstance(marker.get("files"), dict) and isinstance(marker.get("outputs", {}), dict):
            return marker
    except (ValueError, AttributeError):
        pass
    return {"files": {}, "outputs": {}, "unreadable": True}


def damaged_files(folder: str | os.PathLike) -> list[str]:
    """What no longer matches the stage's marker: one line per missing or changed file, in the
    stage folder or among its outputs elsewhere in the run (empty when the stage is intact, or
    when its marker predates checksums)."""
    folder = Path(folder)
    marker = _read_marker(folder)
    if marker is None:
        return []
    if marker.get("unreadable"):
        return [f"{folder / DONE}: unreadable marker"]
    entries = [(folder / rel, v) for rel, v in marker["files"].items()]
    entries += [(folder.parent / rel, v) for rel, v in marker.get("outputs", {}).items()]
    problems = []
    for path, (size, checksum) in entries:
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != size:
            problems.append(f"{path}: {path.stat().st_size} bytes, {size} when the stage finished")
        elif file_checksum(path) != checksum:
            problems.append(f"{path}: contents changed since the stage finished (checksum)")
    return problems


def _stamp(final: Path) -> tuple:
    """Size and mtime of the marker and of every file of the stage (its outputs included)."""
    paths = [final / DONE, *(p for p in final.rglob("*") if p.is_file())]
    marker = _read_marker(final) or {}
    paths += [final.parent / rel for rel in marker.get("outputs", {})]
    stats = []
    for path in paths:
        try:
            st = path.stat()
            stats.append((str(path), st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append((str(path), -1, -1))
    return tuple(stats)


def _intact(final: Path) -> bool:
    """Rank 0: whether `final` is a finished stage whose files match its marker (hashed in full
    once per process, then again only if a file's size or mtime changes). A damaged stage is
    reported by path and removed, with its outputs elsewhere, so that it is recomputed."""
    if not (final / DONE).is_file():
        return False
    stamp = _stamp(final)
    if _verified.get(final) == stamp:
        return True
    problems = damaged_files(final)
    if problems:
        from .artifacts import say

        say(f"stage {final} is damaged, recomputing it: " + "; ".join(problems))
        # its outputs elsewhere go too: a stage may skip work whose result looks complete
        marker = _read_marker(final) or {}
        for folder in marker.get("output_dirs", []):
            shutil.rmtree(final.parent / folder, ignore_errors=True)
        shutil.rmtree(final)
        return False
    _verified[final] = stamp
    return True


def stage_done(root: str | os.PathLike, name: str) -> bool:
    """Whether stage `name` under `root` finished and is intact (decided on rank 0, the same
    answer on every rank)."""
    done = _intact(Path(root) / name) if dist.is_main() else False
    return bool(dist.broadcast_object(done))


def _hold(final: Path, tmp: Path, when: str) -> None:
    """The test hook of SELFTRAIN_HOLD_AT (module doc): block here until killed."""
    spec = os.environ.get(HOLD_ENV, "")
    if not spec:
        return
    target, _, at = spec.partition("@")
    if (at or "after") != when or not final.as_posix().endswith("/" + target.strip("/")):
        return
    if dist.is_main():
        (tmp / ".held").write_text(f"{os.getpid()}\n")
    while True:
        time.sleep(0.05)


def _disk_full(final: Path, tmp: Path, e: OSError) -> StageDiskFull:
    """The error for a stage that ran out of space, naming the file being written (a failed
    write() does not say which file: the newest one in the partial folder is the one)."""
    where = e.filename
    if where is None:
        files = [p for p in tmp.rglob("*") if p.is_file()] if tmp.is_dir() else []
        where = max(files, key=lambda p: p.stat().st_mtime_ns) if files else tmp
    return StageDiskFull(e.errno, f"stage {final}: {os.strerror(e.errno)} while writing {where}; the partial "
                                  "folder was removed, rerun the same command once there is space")


def run_stage(root: str | os.PathLike, name: str, compute: Callable[[Path], None],
              outputs: Sequence[str] = ()) -> Path:
    """Run `compute(tmp_folder)` unless `root/name` is already done; publish the folder atomically.

    `compute` writes its outputs (rank 0 only) into the folder it is given. `outputs` names
    folders under `root` that the stage writes elsewhere with their own atomic publish (the
    trainer's checkpoint folder): their files are checksummed into the marker too, and removed
    with the stage when damage is found. Returns `root/name`.
    """
    root = Path(root)
    final = root / name
    if stage_done(root, name):
        return final
    tmp = root / f".{name}.partial"
    try:
        if dist.is_main():
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        dist.barrier()
        _hold(final, tmp, "before")
        compute(tmp)
        dist.barrier()
        _hold(final, tmp, "after")
        if dist.is_main():
            external = {}
            for folder in outputs:
                if (root / folder).is_dir():
                    external.update(_manifest(root / folder, base=root))
            marker = {"version": 1, "hash": "xxh3_64", "files": _manifest(tmp), "outputs": external,
                      "output_dirs": list(outputs)}
            (tmp / DONE).write_text(json.dumps(marker, sort_keys=True) + "\n")
            if final.exists():  # a leftover without a marker, or a damaged stage being recomputed
                shutil.rmtree(final)
            os.replace(tmp, final)
            _verified[final] = _stamp(final)
    except BaseException as e:
        # an error, a signal (RunInterrupted) or a full disk: leave no partial folder behind
        full = isinstance(e, OSError) and e.errno in _DISK_FULL and not isinstance(e, StageDiskFull)
        error = _disk_full(final, tmp, e) if full else None
        if dist.is_main():
            shutil.rmtree(tmp, ignore_errors=True)
        if error is not None:
            raise error from e
        raise
    dist.barrier()
    return final
