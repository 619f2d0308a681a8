"""The version lock: its files are well formed and agree with setup.py, and tools/check_lock.py
finds every difference between an environment and a lock."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
LOCKS = REPO / "requirements"
# what PyPI's CUDA build of torch brings besides torch itself
TORCH_STACK = ("torch", "triton", "nvidia-", "cuda-")


def _check_lock():
    spec = importlib.util.spec_from_file_location("check_lock", REPO / "tools" / "check_lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _setup_requirements() -> list[Requirement]:
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            return [Requirement(ast.literal_eval(elt)) for elt in node.value.elts]
    raise AssertionError("setup.py has no install_requires")


@pytest.mark.parametrize("name", ["lock-cpu.txt", "lock-gpu.txt"])
def test_lock_pins_every_setup_requirement_within_its_range(name):
    lock = _check_lock().read_lock(LOCKS / name)
    for req in _setup_requirements() + [Requirement("pytest"), Requirement("ruff")]:
        key = canonicalize_name(req.name)
        assert key in lock, f"{name} lacks {req.name}"
        version = str(next(iter(lock[key].specifier)).version)
        ok = req.specifier.contains(version, prereleases=True)
        assert ok, f"{name}: {req.name}=={version} outside {req}"


def test_cpu_and_gpu_locks_differ_only_in_torchs_stack():
    check = _check_lock()
    cpu, gpu = check.read_lock(LOCKS / "lock-cpu.txt"), check.read_lock(LOCKS / "lock-gpu.txt")
    for key in set(cpu) & set(gpu):
        if not key.startswith(TORCH_STACK) or key == "torch":
            assert str(cpu[key].specifier) == str(gpu[key].specifier), key
    only = (set(cpu) ^ set(gpu))
    assert all(key.startswith(TORCH_STACK) for key in only), sorted(only)


def test_a_lock_line_without_one_exact_version_names_its_file_and_line(tmp_path):
    bad = tmp_path / "lock.txt"
    bad.write_text("# header\nnumpy==2.0.0\nscipy>=1.0\n")
    with pytest.raises(SystemExit, match=rf"{bad}:3: a lock line pins one exact version"):
        _check_lock().read_lock(bad)


def test_check_lock_names_each_difference(tmp_path, monkeypatch):
    check = _check_lock()
    installed = {"numpy": "2.4.6", "torch": "2.13.0+cpu", "stray": "1.0", "selftrain": "0.1.0"}
    monkeypatch.setattr(check, "installed_versions", lambda: installed)
    monkeypatch.setattr(check, "torch_stack", lambda: {"nvidia-cublas"})
    installed["nvidia-cublas"] = "13.1.1.3"  # what PyPI's CUDA torch brings: torch's, not the lock's
    lock = tmp_path / "lock.txt"
    lock.write_text("numpy==2.4.5\ntorch==2.13.0\nscipy==1.17.1\n")
    found = check.differences(check.read_lock(lock))
    assert found == [
        "numpy: locked ==2.4.5, installed 2.4.6",
        "scipy: locked ==1.17.1, not installed",
        "stray: installed 1.0, not in the lock",
    ]  # torch's CPU build 2.13.0+cpu satisfies ==2.13.0; the project itself is not listed
    lock.write_text("numpy==2.4.6\ntorch==2.13.0\nstray==1.0\n")
    assert check.differences(check.read_lock(lock)) == []
    assert check.main(["check_lock.py", str(lock)]) == 0


def test_this_environment_matches_the_lock_the_makefile_chose():
    """`make test` runs in the venv the Makefile installed from the lock: it must hold exactly it."""
    chosen = Path(sys.prefix) / ".lock"  # the Makefile writes the lock it installed there
    if not chosen.is_file():
        pytest.skip(f"not running in a venv the Makefile installed (no {chosen})")
    lock = REPO / chosen.read_text().strip()
    assert _check_lock().differences(_check_lock().read_lock(lock)) == []
