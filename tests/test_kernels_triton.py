"""The Triton kernels on CPU through Triton's interpreter, checked against the torch references.

TRITON_INTERPRET=1 only takes effect if set before triton is first imported, so the checks run
in a subprocess: this same file executed as a script (the `__main__` block below), which reuses
the cases and comparison helpers of test_kernels.py. The interpreter uses small tiles (16 rows x
32 vocab x 16 hidden), two vocabulary splits and 32-row backward chunks, so these small shapes
cover partial tiles, the split combination and several chunks.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_kernels_in_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "SELFTRAIN_KERNELS": "triton"}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve())], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"interpreter checks failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert "ALL TRITON CHECKS PASSED" in proc.stdout, proc.stdout[-4000:]


def _main() -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1" and "triton" not in sys.modules
    sys.path.insert(0, str(HERE))
    import torch
    from selftrain.kernels import choose_backend, fused_logprobs
    from test_kernels import (
        DPO_CASES,
        LOGPROB_CASES,
        assert_matches_reference,
        check_dpo_against_reference,
        make_case,
    )

    assert choose_backend(torch.device("cpu")) == "triton"
    for case in LOGPROB_CASES:
        if case[2] > 200:  # the V=1000 case is slow in the interpreter; the others cover its features
            continue
        assert_matches_reference(case)
        print("logprobs ok", case, flush=True)
    assert_matches_reference((40, 24, 37, 0.7, "every3", 8.0), dtype=torch.bfloat16, rtol=1e-2)
    print("logprobs bf16 ok", flush=True)
    for case in DPO_CASES:
        check_dpo_against_reference(*case)
        print("dpo ok", case, flush=True)
    check_dpo_against_reference(37, 0.3, 0.1, 0.5, dtype=torch.bfloat16, rtol=1e-2)
    # The kernel path really ran: the Triton module is loaded.
    hidden, weight, targets, _ = make_case(8, 16, 40, 1.0, "none")
    hidden.requires_grad_()
    fused_logprobs(hidden, weight, targets, uniform_grad=True).sum().backward()  # flag ignored by Triton
    assert "selftrain.kernels._triton" in sys.modules
    print("ALL TRITON CHECKS PASSED", flush=True)


if __name__ == "__main__":
    _main()
