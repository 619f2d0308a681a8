"""Hostile programs must be contained, graded as failures, and leave the caller working."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from selftrain import sandbox
from selftrain.sandbox import Result, SandboxUnavailable, run_python

_native = pytest.importorskip("selftrain._sandbox", reason="C extension not built (pip install -e .)")
needs_landlock = pytest.mark.skipif(not sandbox.landlock_available(),
                                    reason="kernel without Landlock: no write confinement to test")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="uid drop happens only when run as root")


def _run(code: str, **kw) -> Result:
    return run_python(textwrap.dedent(code), **kw)


def _processes(pgid: int | None = None, uid: int | None = None) -> list[int]:
    """Live or zombie processes in process group pgid or owned by uid."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            owner = os.stat(f"/proc/{name}").st_uid
        except OSError:
            continue
        if (pgid is not None and int(fields[2]) == pgid) or (uid is not None and owner == uid):
            found.append(int(name))
    return found


def _world_writable_dir() -> Path:
    """A folder only Landlock stops the program from writing to (DAC would allow it)."""
    path = Path(tempfile.mkdtemp(prefix="sbx-test-"))
    path.chmod(0o777)
    return path


def test_normal_program_output_and_stdin():
    res = _run("""
        import sys, collections, json, math
        name = input()
        print("hello", name, math.factorial(5))
        print("warn", file=sys.stderr)
    """, stdin="world\n")
    assert res.ok and res.returncode == 0 and not res.timed_out
    assert res.stdout == "hello world 120\n"
    assert res.stderr == "warn\n"
    assert res.killed_signal is None and not res.output_truncated
    assert res.duration_s < 5


def test_large_stdin_is_fed_while_output_is_read():
    data = "line\n" * 1_000_000  # 5 MB: far more than a pipe buffer in both directions
    res = _run("""
        import sys
        text = sys.stdin.read()
        sys.stdout.write(text)
        print(len(text), file=sys.stderr)
    """, stdin=data, max_output_bytes=10_000_000)
    assert res.ok, res.stderr
    assert res.stdout == data and res.stderr == f"{len(data)}\n"


def test_failing_assert_is_failure():
    res = _run("assert 1 + 1 == 3, 'wrong'")
    assert not res.ok and res.returncode == 1
    assert "AssertionError: wrong" in res.stderr


def test_syntax_error_and_undecodable_code_are_failures():
    assert run_python("def f(:\n    pass").returncode == 1
    res = run_python("print('\ud800')")  # lone surrogate from a model's output
    assert not res.ok and "SyntaxError" in res.stderr


def test_infinite_loop_times_out():
    t0 = time.monotonic()
    res = _run("while True:\n    pass", timeout_s=1.0)
    elapsed = time.monotonic() - t0
    assert res.timed_out and not res.ok
    assert res.returncode is None and res.killed_signal == 9
    assert elapsed < 2.0


def test_background_child_holding_pipes_does_not_block():
    # The main process exits at once; its child keeps stdout open and would sleep for minutes.
    t0 = time.monotonic()
    res = _run("""
        import os, time
        print(os.getpgrp(), flush=True)
        if os.fork() == 0:
            time.sleep(300)
        print("parent done")
    """, timeout_s=5.0)
    assert time.monotonic() - t0 < 3.0
    assert res.ok and "parent done" in res.stdout
    pgid = int(res.stdout.split()[0])
    assert _processes(pgid=pgid) == []


def test_process_limit_and_fork_bomb_contained():
    # Count how many children the limit lets one program start.
    res = _run("""
        import os, time
        n = 0
        for _ in range(300):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            n += 1
        print(n)
    """, timeout_s=5.0)
    assert res.ok, res.stderr
    if os.geteuid() == 0:
        assert 0 < int(res.stdout) < sandbox.NPROC
    # A real fork bomb: contained, killed at the timeout, nothing of it survives.
    t0 = time.monotonic()
    res = _run("""
        import os
        print(os.getpgrp(), os.getuid(), flush=True)
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """, timeout_s=2.0)
    assert time.monotonic() - t0 < 3.0
    assert res.timed_out and not res.ok
    pgid, uid = map(int, res.stdout.split()[:2])
    assert _processes(pgid=pgid) == []
    if os.geteuid() == 0:
        assert _processes(uid=uid) == []
    assert run_python("print('still fine')").stdout == "still fine\n"


def test_huge_allocation_fails_without_hurting_host():
    res = _run("x = bytearray(16 * 2**30)\nprint('allocated')")  # default memory_mb=1024
    assert not res.ok and "allocated" not in res.stdout
    assert "MemoryError" in res.stderr


def test_no_network():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.3)
    port = listener.getsockname()[1]
    try:
        res = _run(f"""
            import socket
            for family in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
                try:
                    socket.socket(family, socket.SOCK_STREAM)
                    print("socket created")
                except PermissionError as exc:  # seccomp: EPERM
                    print("denied", exc.errno)
            s = socket.create_connection(("127.0.0.1", {port}), timeout=2)
            print("connected")
        """, timeout_s=5.0)
        assert not res.ok and "connected" not in res.stdout
        assert res.stdout.split("\n")[:3] == ["denied 1"] * 3
        assert "PermissionError" in res.stderr or "Operation not permitted" in res.stderr
        with pytest.raises(TimeoutError):
            listener.accept()
    finally:
        listener.close()


@needs_landlock
def test_cannot_write_or_delete_outside_tmpdir():
    outside = _world_writable_dir()
    victim = outside / "keep.txt"
    victim.write_text("precious")
    victim.chmod(0o666)
    try:
        res = _run(f"""
            import os
            errors = []
            for action in (lambda: open({str(outside / 'new.txt')!r}, "w").write("x"),
                           lambda: os.remove({str(victim)!r}),
                           lambda: open({str(victim)!r}, "w"),
                           lambda: os.mkdir({str(outside / 'sub')!r})):
                try:
                    action()
                    errors.append("allowed")
                except PermissionError:
                    errors.append("denied")
            open("inside.txt", "w").write("ok")  # its own directory stays writable
            print(",".join(errors), open("inside.txt").read())
        """)
        assert res.ok, res.stderr
        assert res.stdout.split() == ["denied,denied,denied,denied", "ok"]
        assert not (outside / "new.txt").exists() and not (outside / "sub").exists()
        assert victim.read_text() == "precious"
    finally:
        for p in outside.iterdir():
            p.unlink()
        outside.rmdir()


def test_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("SELFTRAIN_TEST_SECRET", "s3cr3t-value")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    res = _run("""
        import os
        print(sorted(os.environ))
        print("SECRET" in repr(dict(os.environ)), os.environ.get("HF_TOKEN"))
        try:
            print("parent env readable", b"s3cr3t" in open(f"/proc/{os.getppid()}/environ", "rb").read())
        except OSError as exc:
            print("parent env blocked", type(exc).__name__)
    """)
    assert res.ok, res.stderr
    assert "s3cr3t-value" not in res.stdout and "hf_secret" not in res.stdout
    assert "False None" in res.stdout
    # The program's parent is the root-side supervisor, whose environ is the caller's.
    if os.geteuid() == 0:
        assert "parent env blocked" in res.stdout


def test_output_flood_is_capped():
    t0 = time.monotonic()
    res = _run("""
        import sys
        chunk = "x" * (1 << 20)
        for _ in range(1024):  # 1 GiB
            sys.stdout.write(chunk)
    """, timeout_s=20.0, max_output_bytes=100_000)
    elapsed = time.monotonic() - t0
    assert res.output_truncated and not res.ok
    assert len(res.stdout) == 100_000 and set(res.stdout) == {"x"}
    assert not res.timed_out and res.killed_signal == 9  # killed for flooding, long before 20 s
    assert elapsed < 10.0


def test_small_overflow_is_truncated_not_killed():
    res = _run("print('y' * 5000)", max_output_bytes=1000)
    assert res.ok and res.output_truncated and res.stdout == "y" * 1000


def test_tempdir_is_private_and_removed():
    res = _run("""
        import os
        print(os.getcwd(), os.environ["HOME"] == os.getcwd(), oct(os.stat(".").st_mode & 0o777))
        open("scratch.bin", "wb").write(b"1" * 1000)
    """)
    assert res.ok, res.stderr
    cwd, home_is_cwd, _mode = res.stdout.split()
    assert home_is_cwd == "True"
    assert not os.path.exists(cwd) and not os.path.exists(os.path.dirname(cwd))


def test_death_by_signal_is_reported():
    res = _run("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)")
    assert not res.ok and res.returncode == -11 and res.killed_signal == 11


@needs_root
def test_kill_uid_sweeps_every_process_of_a_uid():
    uid = sandbox._uid_base() + sandbox.UID_SLOTS + 7  # outside the pool: no run uses it
    procs = [subprocess.Popen(["sleep", "30"], user=uid, group=uid) for _ in range(3)]
    try:
        assert _native.kill_uid(uid) >= 1
        for p in procs:
            assert p.wait(timeout=2) == -9
    finally:
        for p in procs:
            p.kill()
            p.wait()
    with pytest.raises(ValueError, match="unprivileged"):
        _native.kill_uid(0)


def test_file_size_limit():
    res = _run("open('big.bin', 'wb').write(b'0' * (64 * 2**20))")
    assert not res.ok
    assert res.killed_signal is not None or "File too large" in res.stderr


def test_cannot_leave_process_group_or_use_namespaces():
    # Each attempt in a fresh child: the main process leads its group, where these fail anyway.
    res = _run("""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)

        def unshare_user():  # os.unshare needs Python 3.12
            if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER
                raise OSError(ctypes.get_errno(), "unshare")

        calls = [os.setsid, lambda: os.setpgid(0, 0), unshare_user]
        for call in calls:
            pid = os.fork()
            if pid == 0:
                try:
                    call()
                    print("allowed", flush=True)
                except OSError as exc:
                    print("denied", exc.errno, flush=True)
                os._exit(0)
            os.waitpid(pid, 0)
    """)
    assert res.ok, res.stderr
    assert res.stdout.split("\n")[:3] == ["denied 1"] * 3


@needs_root
def test_runs_as_unprivileged_uid():
    res = _run("import os; print(os.getuid(), os.getgid(), os.getgroups())")
    uid, gid, groups = res.stdout.split(maxsplit=2)
    base = sandbox._uid_base()
    assert base <= int(uid) < base + sandbox.UID_SLOTS
    assert int(gid) == int(uid) and groups.strip() == "[]"


def test_uid_range_follows_user_namespace_map():
    full = "         0          0 4294967295\n"
    rootless = "         0       1000          1\n         1     100000      65536\n"
    assert sandbox._mapped(full, 1_900_000_000, 128)
    assert not sandbox._mapped(rootless, 1_900_000_000, 128)
    assert sandbox._mapped(rootless, 65_000, 128) and not sandbox._mapped(rootless, 65_500, 128)


def test_strict_without_landlock(monkeypatch):
    monkeypatch.setattr(sandbox, "landlock_available", lambda: False)
    with pytest.raises(SandboxUnavailable, match="Landlock"):
        run_python("print(1)", strict=True)
    monkeypatch.setattr(sandbox, "_warned_no_landlock", False)
    with pytest.warns(RuntimeWarning, match="Landlock"):
        res = run_python("print(1)")
    assert res.ok and res.stdout == "1\n"


def test_concurrent_calls_from_threads():
    codes = [f"import time; time.sleep(0.2); print({i} * {i})" for i in range(6)]
    codes.append("while True: pass")  # a timeout alongside does not disturb the others
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda c: run_python(c, timeout_s=2.0), codes))
    for i, res in enumerate(results[:-1]):
        assert res.ok and res.stdout == f"{i * i}\n", res
    assert results[-1].timed_out


def test_program_dies_with_its_caller():
    marker = f"{600 + os.getpid() % 100}.{time.time_ns() % 10**6:06d}"  # unique sleep argument
    caller = subprocess.Popen([sys.executable, "-c", (
        "from selftrain.sandbox import run_python\n"
        f"run_python(\"import os; os.execv('/bin/sleep', ['sleep', '{marker}'])\", timeout_s=60)")])

    def sleepers() -> list[int]:
        found = []
        for name in filter(str.isdigit, os.listdir("/proc")):
            try:
                if Path(f"/proc/{name}/cmdline").read_bytes() == f"sleep\0{marker}\0".encode():
                    found.append(int(name))
            except OSError:
                pass
        return found

    leftover_dir = ""
    try:
        for _ in range(100):
            if sleepers():
                break
            time.sleep(0.05)
        assert sleepers(), "the sandboxed program never started"
        # The killed caller cannot remove its temporary directory: this test does.
        leftover_dir = os.path.dirname(os.readlink(f"/proc/{sleepers()[0]}/cwd"))
        caller.kill()
        caller.wait()
        for _ in range(40):
            if not sleepers():
                break
            time.sleep(0.05)
        assert sleepers() == []
    finally:
        caller.kill()
        caller.wait()
        for pid in sleepers():
            os.kill(pid, 9)
        if leftover_dir and os.path.basename(leftover_dir).startswith("selftrain-sbx-"):
            shutil.rmtree(leftover_dir, ignore_errors=True)


def test_refuses_without_native_support(monkeypatch):
    monkeypatch.setattr(sandbox, "_native", types.SimpleNamespace(SECCOMP_SUPPORTED=False, ARCH="riscv64"))
    with pytest.raises(SandboxUnavailable, match="architecture"):
        run_python("print(1)")
    monkeypatch.setattr(sandbox, "_native", None)
    with pytest.raises(SandboxUnavailable, match="not built"):
        run_python("print(1)")


def test_no_fd_leak_in_caller():
    before = len(os.listdir("/proc/self/fd"))
    run_python("print(1)")
    run_python("print(input())", stdin="a" * 200_000)
    run_python("import sys; sys.stdout.write('x' * (1 << 22))", max_output_bytes=1000)
    run_python("while True: pass", timeout_s=0.3)
    assert len(os.listdir("/proc/self/fd")) == before


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="timeout_s"):
        run_python("print(1)", timeout_s=0)
    with pytest.raises(ValueError, match="memory_mb"):
        run_python("print(1)", memory_mb=1)
    with pytest.raises(TypeError, match="code"):
        run_python(b"print(1)")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="python"):
        run_python("print(1)", python="/nonexistent/python3")


def test_setup_failure_raises_and_runs_nothing(tmp_path):
    # A working directory that does not exist fails the chdir step inside the child.
    marker = tmp_path / "ran"
    with pytest.raises(OSError, match="chdir"):
        _native.spawn([b"/bin/sh", b"-c", f"touch {marker}".encode()], [], b"/nonexistent-dir",
                      -1, -1, 5, 6, 2**30, 2**20, 64, 10_000, False, None)
    assert not marker.exists()


def test_interpreter_reveal_plan():
    exe, reveal = sandbox._interpreter("/bin/sh", as_root=False)
    assert reveal is None and os.path.isabs(exe)
    real = os.path.realpath(sys.executable)
    _exe, reveal = sandbox._interpreter(sys.executable, as_root=True)
    blocked = next((p for p in reversed(Path(real).parents) if not p.stat().st_mode & stat.S_IXOTH), None)
    if blocked is None:
        assert reveal is None
    else:
        assert reveal is not None and reveal[0] == str(blocked)
