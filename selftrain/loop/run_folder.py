"""One live run per run folder, and a clean stop on SIGINT / SIGTERM.

`claim_run_folder(root)` takes an advisory lock (flock) on `root/.lock` for the life of the
process and writes the holder's pid into it. The kernel drops the lock when the holder exits,
however it exits (kill -9 included), so a lock is never stale; a second launch into a folder
that a live run holds stops at once with an error naming the folder and the holder's pid.

It also turns SIGINT and SIGTERM into `RunInterrupted`, an exception that `run_stage` lets
through after removing the unfinished stage's partial folder; the recipes turn it into exit
status 128 + signal (130, 143), the shell's convention for "killed by that signal". Under
torchrun, the launcher forwards the signal to every rank.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import threading
from pathlib import Path
from typing import Any, Callable

from .. import dist

LOCK_NAME = ".lock"
_held: dict[Path, int] = {}  # run folder -> open lock file descriptor, for this process


class RunFolderBusy(RuntimeError):
    """Another live process holds the run folder."""


class RunInterrupted(BaseException):
    """SIGINT or SIGTERM arrived; a BaseException so that no `except Exception` swallows it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _lock(root: Path) -> str | None:
    """Take root/.lock for this process; None, or the error text when a live process holds it."""
    if root in _held:
        return None
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return (f"run folder {root} is in use by a live run (pid {holder}, lock {path}); wait for it to "
                    "end or stop it, or use another out_dir=")
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[root] = fd
    return None


def release_run_folder(root: str | os.PathLike) -> None:
    """Drop this process's lock on `root` (a process exit drops it too)."""
    fd = _held.pop(Path(root).resolve(), None)
    if fd is not None:
        os.close(fd)


def claim_run_folder(root: str | os.PathLike) -> None:
    """Collective: rank 0 locks `root` (created if missing); every rank raises RunFolderBusy if a
    live run holds it. Also installs the SIGINT / SIGTERM handlers (`interrupt_on_signals`)."""
    root = Path(root).resolve()
    error = _lock(root) if dist.is_main() else None
    error = dist.broadcast_object(error)
    if error:
        raise RunFolderBusy(error)
    interrupt_on_signals()


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise RunInterrupted(signum)


def interrupt_on_signals() -> None:
    """SIGINT and SIGTERM raise RunInterrupted in the main thread (a no-op elsewhere: Python
    delivers signals to the main thread only)."""
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _raise_interrupted)


BUSY_EXIT = 75  # EX_TEMPFAIL of sysexits.h: try again once the other run has ended


def exit_cleanly(run: Callable[[], Any]) -> Any:
    """A recipe's body: call `run()`; on RunInterrupted say where the run stands and exit
    128 + signal; on RunFolderBusy print the error and exit 75, at once."""
    import sys

    try:
        return run()
    except RunInterrupted as e:
        if dist.is_main():
            print(f"{e}: the unfinished stage was removed; run the same command again to resume from the "
                  "last finished stage", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    except RunFolderBusy as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(BUSY_EXIT) from None
