"""Run a model-written Python program confined, and grade what happened.

    res = run_python("print(1 + 1)")
    res.ok, res.stdout  # (True, "2\\n")

The native extension `selftrain._sandbox` (csrc/sandbox.c) forks and confines the child before
exec: own session/process group, rlimits (CPU, address space, file size, open files, processes),
an unprivileged uid when started as root, Landlock (writes only below the program's temporary
directory, no TCP), and a seccomp filter (no sockets, cannot leave the process group, no
namespaces/mounts/io_uring/ptrace/bpf).  This module prepares the directory and environment,
feeds stdin, reads both output pipes concurrently with a byte cap, enforces the wall-clock
timeout, and kills the whole process group when the program ends or times out.  See
docs/sandbox.md for what is and is not confined.

Thread- and process-safe: the fork happens in C without running Python code in the child (no
preexec_fn), and when running as root every concurrent call takes its own uid from a pool
guarded by flock()ed slot files, so one program's fork bomb cannot starve another's process
limit, and the final sweep of a uid cannot hit another program.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import math
import os
import random
import select
import shutil
import signal
import stat
import struct
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

try:  # the extension is built by `pip install -e .`; without it nothing can run confined
    from selftrain import _sandbox as _native
except ImportError as _exc:  # pragma: no cover - exercised only on broken installs
    _native = None
    _NATIVE_IMPORT_ERROR: ImportError | None = _exc
else:
    _NATIVE_IMPORT_ERROR = None

# Pool of unprivileged uids/gids used when started as root: one per concurrent run.  The first
# base whose whole range the user namespace maps is used (rootless containers map only 0..65535).
UID_BASE_CHOICES = (1_900_000_000, 65_000, 50_000)
UID_BASE = UID_BASE_CHOICES[0]
UID_SLOTS = 128
FSIZE_BYTES = 16 * 2**20  # largest file the program may write
NOFILE = 64  # open file descriptors
NPROC = 64  # processes + threads of the program's uid
FLOOD_FACTOR = 16  # kill the program once a stream exceeds this many times max_output_bytes
DRAIN_S = 0.5  # after the program ends or is killed, how long to wait for the pipes' last bytes
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


class SandboxUnavailable(RuntimeError):
    """The confinement asked for cannot be provided here, so the program was not run."""


@dataclasses.dataclass(frozen=True)
class Result:
    """What happened to one program.

    returncode: exit status; -N if a signal N ended it (RLIMIT_CPU's SIGXCPU/SIGKILL, a crash,
    or the output-flood kill); None if it timed out (it never produced a status of its own).
    killed_signal: the signal that ended it (SIGKILL on timeout), else None.
    """

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    killed_signal: int | None
    output_truncated: bool
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


_warn_lock = threading.Lock()
_warned_no_landlock = False
_landlock_abi_cache: int | None = None


def landlock_abi() -> int:
    """The kernel's Landlock ABI version (0 when Landlock is missing); probed once."""
    global _landlock_abi_cache
    if _landlock_abi_cache is None:
        _landlock_abi_cache = _native.landlock_abi() if _native is not None else 0
    return _landlock_abi_cache


def landlock_available() -> bool:
    return landlock_abi() >= 1


def _check_native() -> None:
    if _native is None:
        raise SandboxUnavailable(
            f"selftrain._sandbox is not built ({_NATIVE_IMPORT_ERROR}); run `pip install -e .`"
        )
    if not sys.platform.startswith("linux"):
        raise SandboxUnavailable("the sandbox needs Linux (seccomp, Landlock, rlimits)")
    if not _native.SECCOMP_SUPPORTED:
        raise SandboxUnavailable(
            f"no seccomp filter for this architecture ({_native.ARCH}); only x86_64 and aarch64"
        )


def _validate(code: object, timeout_s: float, memory_mb: int, stdin: object,
              max_output_bytes: int, python: str) -> None:
    if not isinstance(code, str):
        raise TypeError(f"run_python: code must be str, got {type(code).__name__}")
    if not isinstance(stdin, str):
        raise TypeError(f"run_python: stdin must be str, got {type(stdin).__name__}")
    if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and timeout_s > 0):
        raise ValueError(f"run_python: timeout_s must be a positive finite number, got {timeout_s!r}")
    if not (isinstance(memory_mb, int) and memory_mb >= 16):
        raise ValueError(f"run_python: memory_mb must be an int >= 16, got {memory_mb!r}")
    if not (isinstance(max_output_bytes, int) and max_output_bytes >= 0):
        raise ValueError(f"run_python: max_output_bytes must be an int >= 0, got {max_output_bytes!r}")
    if not isinstance(python, str) or not os.path.isabs(python):
        raise ValueError(f"run_python: python must be an absolute path, got {python!r}")


def _interpreter(python: str, as_root: bool) -> tuple[str, tuple | None]:
    """Resolve the interpreter; when root, plan the mount that lets the sandbox uid reach it.

    Returns (real executable path, reveal plan or None).  The plan is (topmost ancestor the
    sandbox uid cannot search, interpreter prefix, dirs to recreate between them).
    """
    exe = os.path.realpath(python)
    if not os.path.isfile(exe) or not os.access(exe, os.X_OK):
        raise ValueError(f"run_python: python={python!r} is not an executable file")
    if not as_root:
        return exe, None
    prefix = os.path.dirname(os.path.dirname(exe))  # <prefix>/bin/pythonX.Y
    blocked = None
    path = "/"
    for part in os.path.dirname(exe).strip("/").split("/"):
        path = os.path.join(path, part)
        if not os.stat(path).st_mode & stat.S_IXOTH:
            blocked = path
            break
    if blocked is None:
        return exe, None
    if not prefix.startswith(blocked + "/"):
        raise SandboxUnavailable(
            f"the interpreter {exe} lies in {blocked}, which other users cannot search; pass "
            "python= an interpreter installed in a world-readable place (e.g. /usr/bin/python3)"
        )
    mkdirs = []
    rel = os.path.relpath(prefix, blocked).split("/")
    for i in range(len(rel)):
        mkdirs.append(os.path.join(blocked, *rel[: i + 1]))
    return exe, (blocked, prefix, mkdirs)


def _mapped(map_text: str, lo: int, count: int) -> bool:
    """Does a /proc/self/{uid,gid}_map text map all ids lo..lo+count-1 (inside view)?"""
    for line in map_text.splitlines():
        fields = line.split()
        if len(fields) == 3:
            start, _outside, length = map(int, fields)
            if start <= lo and lo + count <= start + length:
                return True
    return False


_uid_base_cache: int | None = None


def _uid_base() -> int:
    global _uid_base_cache
    if _uid_base_cache is None:
        try:
            maps = [Path(f"/proc/self/{k}_map").read_text() for k in ("uid", "gid")]
        except OSError:  # no user namespaces in this kernel: every id is valid
            maps = ["0 0 4294967295"] * 2
        for base in UID_BASE_CHOICES:
            if all(_mapped(m, base, UID_SLOTS) for m in maps):
                _uid_base_cache = base
                break
        else:
            raise SandboxUnavailable(
                f"none of the uid ranges {UID_BASE_CHOICES} (+{UID_SLOTS}) is mapped in this user "
                "namespace (/proc/self/uid_map), so the program cannot run as another uid")
    return _uid_base_cache


def _slot_dir() -> str:
    path = os.path.join(tempfile.gettempdir(), "selftrain-sandbox-slots")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    # Someone else's or a world-writable folder could be used to steal or block our slots.
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise SandboxUnavailable(f"{path} must be a directory owned by uid {os.geteuid()}, "
                                 "not writable by others")
    return path


@contextmanager
def _uid_slot() -> Iterator[int]:
    """Hold one uid of the pool for the duration of a run (flock: across threads and processes)."""
    folder = _slot_dir()
    order = list(range(UID_SLOTS))
    random.shuffle(order)
    fd = -1
    slot = -1
    for i in order:
        cand = os.open(os.path.join(folder, f"{i}.lock"),
                       os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(cand, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(cand)
            continue
        fd, slot = cand, i
        break
    if fd < 0:  # every slot busy: wait for one
        slot = order[0]
        fd = os.open(os.path.join(folder, f"{slot}.lock"),
                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
    uid = _uid_base() + slot
    try:
        yield uid
    finally:
        os.close(fd)


def _count_tasks(uid: int) -> int:
    """Tasks (threads) that uid runs now: RLIMIT_NPROC counts them all, so a non-root caller's
    limit must be this plus the program's allowance."""
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                fields = dict(line.split(b":", 1) for line in f if b":" in line)
            if int(fields[b"Uid"].split()[0]) == uid:
                total += int(fields[b"Threads"])
        except (OSError, KeyError, ValueError):
            continue  # the process ended meanwhile
    return total


def _warn_no_landlock() -> None:
    global _warned_no_landlock
    with _warn_lock:
        if _warned_no_landlock:
            return
        _warned_no_landlock = True
    msg = ("selftrain sandbox: Landlock is not available in this kernel; programs run without "
           "filesystem write confinement (pass strict=True to refuse instead)")
    logger.warning(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=3)


def _rmtree(path: str) -> None:
    def fix_and_retry(func, p, _exc):  # the program may have chmod-ed its own dirs to 000
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
        except OSError:
            pass
        func(p)

    try:
        shutil.rmtree(path, onerror=fix_and_retry)
    except OSError as exc:
        logger.warning("selftrain sandbox: could not remove %s: %s", path, exc)


def _exited(pid: int) -> bool:
    """Has the supervisor exited?  WNOWAIT keeps it a zombie, so its pid cannot be reused."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None and info.si_pid != 0


def _reap(pid: int, wait_s: float) -> bool:
    """Reap the supervisor, SIGKILLing it if it is not gone within wait_s; True if it ended by
    itself (then no process of the program is left)."""
    deadline = time.monotonic() + wait_s
    while not _exited(pid) and time.monotonic() < deadline:
        time.sleep(0.005)
    clean = _exited(pid)
    if not clean:
        os.kill(pid, signal.SIGKILL)  # the program's leader dies with it (PDEATHSIG)
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:  # the application set SIGCHLD to SIG_IGN: already reaped
        pass
    return clean


@dataclasses.dataclass
class _Outcome:
    stdout: bytes
    stderr: bytes
    timed_out: bool
    truncated: bool
    flood_killed: bool
    status: int | None  # the program's wait status, None if unknown
    clean: bool  # the supervisor confirmed that no process of the program is left


def _supervise(sup: int, in_w: int, out_r: int, err_r: int, status_r: int, stdin_data: bytes,
               timeout_s: float, cap: int, start: float) -> _Outcome:
    """Feed stdin, collect capped output, enforce the timeout; return once the supervisor (and
    with it every process of the program) is gone."""
    try:
        pidfd: int | None = os.pidfd_open(sup)
    except (AttributeError, OSError):
        pidfd = None  # pre-5.3 kernel: poll the supervisor's state with waitid(WNOWAIT)
    bufs = {out_r: bytearray(), err_r: bytearray()}
    seen = {out_r: 0, err_r: 0}
    flood_limit = max(FLOOD_FACTOR * cap, 1 << 20)
    poller = select.poll()
    for fd in (out_r, err_r):
        os.set_blocking(fd, False)
        poller.register(fd, select.POLLIN)
    readers = {out_r, err_r}
    view = memoryview(stdin_data)
    stdin_open = bool(view)
    if stdin_open:
        os.set_blocking(in_w, False)
        poller.register(in_w, select.POLLOUT)
    else:
        os.close(in_w)
    if pidfd is not None:
        poller.register(pidfd, select.POLLIN)

    deadline = start + timeout_s
    give_up_at = deadline + 0.5  # the supervisor normally ends within ms of a kill request
    kill_sent = False
    sup_done = False
    drain_until = math.inf
    timed_out = truncated = flood_killed = False
    reaped = False

    def request_kill() -> None:
        nonlocal kill_sent, give_up_at
        if not kill_sent:
            kill_sent = True
            give_up_at = min(give_up_at, time.monotonic() + 0.5)
            os.kill(sup, signal.SIGTERM)  # unreaped child: the pid is certainly the supervisor

    try:
        while True:
            now = time.monotonic()
            if not sup_done and (pidfd is None and _exited(sup)):
                sup_done, drain_until = True, now + DRAIN_S
            if not kill_sent and now >= deadline:
                timed_out = True
                request_kill()
            if sup_done and (not readers or now >= drain_until):
                break
            if not sup_done and now >= give_up_at:
                break  # the supervisor did not finish the kill in time; _reap forces it
            wait_s = (drain_until if sup_done else deadline if not kill_sent else give_up_at) - now
            if pidfd is None:
                wait_s = min(wait_s, 0.01)
            for fd, _ev in poller.poll(max(0.0, wait_s) * 1000):
                if fd == pidfd:
                    poller.unregister(pidfd)
                    sup_done, drain_until = True, time.monotonic() + DRAIN_S
                elif fd == in_w:
                    try:
                        view = view[os.write(in_w, view[:65536]):]
                    except BlockingIOError:
                        continue
                    except OSError:  # EPIPE: the program stopped reading
                        view = view[:0]
                    if not view:
                        poller.unregister(in_w)
                        os.close(in_w)
                        stdin_open = False
                else:
                    try:
                        chunk = os.read(fd, 1 << 16)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        poller.unregister(fd)
                        readers.discard(fd)
                        os.close(fd)
                        continue
                    seen[fd] += len(chunk)
                    room = cap - len(bufs[fd])
                    if room > 0:
                        bufs[fd] += chunk[:room]
                    if len(chunk) > room:
                        truncated = True
                    if seen[fd] > flood_limit and not kill_sent:
                        flood_killed = True
                        request_kill()
        clean = _reap(sup, wait_s=0.0 if sup_done else 0.05)
        reaped = True
        status = None
        os.set_blocking(status_r, False)
        try:
            report = os.read(status_r, 64)
        except OSError:
            report = b""
        if len(report) >= 8:  # int32 wait status, int32 collected (spawn read the pid)
            st, collected = struct.unpack_from("=ii", report, 0)
            if collected:
                status = st
    finally:
        if not reaped:  # interrupted (e.g. KeyboardInterrupt): never leave the program running
            if not kill_sent:
                os.kill(sup, signal.SIGTERM)
            _reap(sup, wait_s=0.5)
        for fd in readers | {status_r}:
            os.close(fd)
        if stdin_open:
            os.close(in_w)
        if pidfd is not None:
            os.close(pidfd)
    return _Outcome(bytes(bufs[out_r]), bytes(bufs[err_r]), timed_out, truncated, flood_killed,
                    status, clean)


def run_python(code: str, timeout_s: float = 10.0, memory_mb: int = 1024, stdin: str = "",
               max_output_bytes: int = 1_000_000, strict: bool = False,
               python: str = sys.executable) -> Result:
    """Run `code` with `python -S -s -B` in a fresh temporary directory, confined.

    Returns within about timeout_s + 1 s whatever the program does.  strict=True raises
    SandboxUnavailable where Landlock is missing instead of running without filesystem
    confinement (the other layers are always required).  Raises SandboxUnavailable when the
    confinement cannot be set up at all; the program is then never run.
    """
    _validate(code, timeout_s, memory_mb, stdin, max_output_bytes, python)
    _check_native()
    use_landlock = landlock_available()
    if not use_landlock:
        if strict:
            raise SandboxUnavailable("Landlock is not available in this kernel and strict=True")
        _warn_no_landlock()
    as_root = os.geteuid() == 0
    exe, reveal = _interpreter(python, as_root)

    with (_uid_slot() if as_root else _no_slot()) as uid:
        base = tempfile.mkdtemp(prefix="selftrain-sbx-")
        clean = False
        try:
            result, clean = _run_in(base, uid, exe, reveal, code, timeout_s, memory_mb, stdin,
                                    max_output_bytes, use_landlock)
            return result
        finally:
            if uid >= 0 and not clean:
                _native.kill_uid(uid)  # the supervisor did not confirm: sweep the whole uid
            _rmtree(base)


@contextmanager
def _no_slot() -> Iterator[int]:
    yield -1


def _run_in(base: str, uid: int, exe: str, reveal: tuple | None, code: str, timeout_s: float,
            memory_mb: int, stdin: str, cap: int, use_landlock: bool) -> tuple[Result, bool]:
    # base (root-owned, searchable) holds work/ (the program's cwd and HOME, its only writable
    # place) and, when needed, stage/ (mount point used while revealing the interpreter).
    os.chmod(base, 0o711)
    work = os.path.join(base, "work")
    os.mkdir(work, 0o700)
    script = os.path.join(work, "main.py")
    # surrogatepass: a lone surrogate from a model makes an undecodable file, i.e. a program that
    # fails with SyntaxError like any other broken program, not an exception in the grader.
    with open(script, "w", encoding="utf-8", errors="surrogatepass") as f:
        f.write(code)
    reveal_arg = None
    if reveal is not None:
        stage = os.path.join(base, "stage")
        os.mkdir(stage, 0o700)
        blocked, prefix, mkdirs = reveal
        reveal_arg = (os.fsencode(blocked), os.fsencode(prefix), os.fsencode(stage),
                      [os.fsencode(d) for d in mkdirs])
    if uid >= 0:
        os.chown(work, uid, uid)
        os.chown(script, uid, uid)
        nproc = NPROC
    else:
        nproc = _count_tasks(os.getuid()) + NPROC
    env = {
        "PATH": SAFE_PATH,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": work,
        "TMPDIR": work,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
        "PYTHONIOENCODING": "utf-8",
    }
    # No -I: it would also ignore the PYTHON* variables above; the environment is ours anyway.
    argv = [exe, "-S", "-s", "-B", script]
    cpu_soft = int(math.ceil(timeout_s)) + 1
    start = time.monotonic()
    try:
        sup, _prog, in_w, out_r, err_r, status_r = _native.spawn(
            [os.fsencode(a) for a in argv],
            [f"{k}={v}".encode() for k, v in env.items()],
            os.fsencode(work), uid, uid,
            cpu_soft, cpu_soft + 1, memory_mb * 2**20, FSIZE_BYTES, NOFILE, nproc,
            use_landlock, reveal_arg,
        )
    except OSError as exc:
        raise SandboxUnavailable(str(exc)) from exc
    outcome = _supervise(sup, in_w, out_r, err_r, status_r,
                         stdin.encode("utf-8", errors="surrogatepass"), timeout_s, cap, start)
    duration = time.monotonic() - start

    returncode: int | None = None
    killed: int | None = None
    if outcome.timed_out:
        killed = int(signal.SIGKILL)
    elif outcome.status is not None:
        if os.WIFSIGNALED(outcome.status):
            killed = os.WTERMSIG(outcome.status)
            returncode = -killed
        else:
            returncode = os.waitstatus_to_exitcode(outcome.status)
    result = Result(
        returncode=returncode,
        stdout=outcome.stdout.decode("utf-8", errors="replace"),
        stderr=outcome.stderr.decode("utf-8", errors="replace"),
        timed_out=outcome.timed_out,
        killed_signal=killed,
        output_truncated=outcome.truncated or outcome.flood_killed,
        duration_s=duration,
    )
    return result, outcome.clean


__all__ = ["Result", "SandboxUnavailable", "landlock_abi", "landlock_available", "run_python"]
