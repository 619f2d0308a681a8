"""Choosing between the Triton kernels and the chunked torch implementation of the same math.

`SELFTRAIN_KERNELS` (read at every call, so tests and scripts can switch it at run time):
  auto   (default) Triton for CUDA tensors when triton imports, chunked torch otherwise;
  triton always Triton: CUDA tensors, or CPU tensors when `TRITON_INTERPRET=1` was set before
         triton was first imported (Triton's interpreter; slow, for tests);
  torch  always the chunked torch path (any device).
Triton is imported only when a Triton path is chosen, so the package imports where it is missing.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

ENV_VAR = "SELFTRAIN_KERNELS"
_MODES = ("auto", "triton", "torch")


def requested_mode() -> str:
    """The value of SELFTRAIN_KERNELS, validated (default "auto")."""
    mode = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if mode not in _MODES:
        raise ValueError(f"{ENV_VAR}={mode!r} is not one of {', '.join(_MODES)}")
    return mode


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """True when the triton package can be found (found, not imported: importing costs ~1 s)."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").strip() == "1"


def choose_backend(device: torch.device) -> str:
    """ "triton" or "torch" for tensors on `device`, following SELFTRAIN_KERNELS."""
    mode = requested_mode()
    if mode == "torch":
        return "torch"
    if mode == "triton":
        if not triton_available():
            raise RuntimeError(f"{ENV_VAR}=triton but the triton package is not installed")
        if device.type != "cuda" and not interpreting():
            raise RuntimeError(
                f"{ENV_VAR}=triton with {device.type} tensors needs TRITON_INTERPRET=1 set before "
                "triton is imported (Triton's interpreter), or CUDA tensors"
            )
        return "triton"
    return "triton" if device.type == "cuda" and triton_available() else "torch"
