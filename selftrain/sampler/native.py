"""What the Python sides of the sampler's C kernels share: finding the built extension, importing
it once, and refusing tensors whose memory is not laid out as the kernel reads it."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

import torch

_loaded: dict[str, ModuleType] = {}


def available(module: str) -> bool:
    """Whether `selftrain.<module>` was built (pip install -e . builds it where a C compiler is)."""
    return importlib.util.find_spec(f"selftrain.{module}") is not None


def load(module: str) -> ModuleType:
    if module not in _loaded:
        _loaded[module] = importlib.import_module(f"selftrain.{module}")
    return _loaded[module]


def check_tensor(owner: str, name: str, t: torch.Tensor, dtype: torch.dtype = torch.float32,
                 dims: int | None = None) -> None:
    """TypeError unless t is a contiguous CPU tensor of `dtype` (and `dims` dimensions)."""
    if t.dtype != dtype or t.device.type != "cpu" or not t.is_contiguous() or (dims and t.dim() != dims):
        shape = f"{dims}-d " if dims else ""
        raise TypeError(f"{owner}: {name} must be a contiguous {shape}{dtype} CPU tensor, got {t.dtype} "
                        f"{tuple(t.shape)} on {t.device} (contiguous: {t.is_contiguous()})")
