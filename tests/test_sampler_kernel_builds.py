"""The CPU kernels' two builds (csrc/cpu_simd.h): SELFTRAIN_CPU_KERNELS=baseline forces the
baseline build at import, and the kernel tests pass on it as well as on the best build this
machine runs (the rest of the suite), so an AVX2-only CI host and an AVX-512 one test the same code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from selftrain.sampler import native

REPO = Path(__file__).resolve().parents[1]
EXTENSIONS = ("_paged_attention", "_cpu_layer_ops", "_cpu_logits")
KERNEL_TESTS = ("test_sampler_cpu_logits.py", "test_sampler_cpu_layer_ops.py", "test_sampler_attention.py",
                "test_sampler_sampling.py")


def _run(code_or_args: list[str], value: str | None, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SELFTRAIN_CPU_KERNELS"}
    if value is not None:
        env["SELFTRAIN_CPU_KERNELS"] = value
    return subprocess.run([sys.executable, *code_or_args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _isas(value: str | None) -> list[str]:
    code = ("from selftrain.sampler import native; "
            f"print(' '.join(native.load(e).ISA for e in {EXTENSIONS!r}))")
    done = _run(["-c", code], value)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_the_variable_forces_the_baseline_build_and_best_is_the_default():
    assert _isas("baseline") == ["baseline"] * 3
    best = [native.load(e).ISA for e in EXTENSIONS] if "SELFTRAIN_CPU_KERNELS" not in os.environ else None
    if best is not None:
        assert _isas(None) == best == _isas("best")


def test_a_bad_value_fails_the_import_naming_the_variable():
    done = _run(["-c", "from selftrain.sampler import native; native.load('_cpu_logits')"], "avx9000")
    assert done.returncode != 0
    assert "SELFTRAIN_CPU_KERNELS=avx9000" in done.stderr and "baseline" in done.stderr


def test_kernel_tests_pass_on_the_baseline_build():
    if os.environ.get("SELFTRAIN_CPU_KERNELS") == "baseline":
        pytest.skip("this run already forces the baseline build: the kernel tests run on it directly")
    if all(native.load(e).ISA == "baseline" for e in EXTENSIONS):
        pytest.skip("this CPU's best build is the baseline: the kernel tests already ran on it")
    done = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", *(f"tests/{t}" for t in KERNEL_TESTS)],
                "baseline", timeout=900)
    tail = "\n".join(done.stdout.splitlines()[-15:])
    assert done.returncode == 0, f"kernel tests failed on the baseline build:\n{tail}\n{done.stderr[-2000:]}"
    assert " passed" in tail and " failed" not in tail, tail
