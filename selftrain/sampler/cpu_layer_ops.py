"""Python side of `selftrain._cpu_layer_ops` (csrc/cpu_layer_ops.c): RMSNorm, RoPE and
silu(gate) * up, each one fused pass over fp32 CPU tensors for the sampler's forward pass.
The torch functions in model.py (`rms_norm`, `apply_rope`, `F.silu(gate) * up`) are the
reference and the path everywhere else; `available()` says whether the extension was built.
"""

from __future__ import annotations

import torch

from selftrain.sampler import native

EXTENSION = "_cpu_layer_ops"


def available() -> bool:
    return native.available(EXTENSION)


def _kernel():
    return native.load(EXTENSION)


def _check(name: str, t: torch.Tensor, dtype: torch.dtype = torch.float32) -> None:
    native.check_tensor("cpu_layer_ops", name, t, dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * x / sqrt(mean(x^2, -1) + eps) for x [rows, dim]."""
    _check("x", x)
    _check("weight", weight)
    if x.dim() != 2 or weight.shape != (x.shape[1],):
        raise ValueError(f"cpu_layer_ops.rms_norm: x {tuple(x.shape)} and weight {tuple(weight.shape)}")
    out = torch.empty_like(x)
    _kernel().rms_norm(x.data_ptr(), weight.data_ptr(), out.data_ptr(), x.shape[0], x.shape[1], float(eps))
    return out


def rope_qk(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
            heads: int, kv_heads: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotated q [T, heads, head_dim] and k [T, kv_heads, head_dim], new contiguous tensors, from the
    rows of qkv [T, >= (heads + kv_heads) * head_dim] (q first, then k); cos/sin [max_len, head_dim]
    tables indexed by positions [T]."""
    for name, t in (("qkv", qkv), ("cos", cos), ("sin", sin)):
        _check(name, t)
    _check("positions", positions, torch.long)
    T = qkv.shape[0]
    if qkv.dim() != 2 or qkv.shape[1] < (heads + kv_heads) * head_dim or positions.shape != (T,) \
            or cos.shape != sin.shape or cos.dim() != 2 or cos.shape[1] != head_dim:
        raise ValueError(f"cpu_layer_ops.rope_qk: qkv {tuple(qkv.shape)}, cos {tuple(cos.shape)}, sin "
                         f"{tuple(sin.shape)}, positions {tuple(positions.shape)}, heads {heads}, kv_heads "
                         f"{kv_heads}, head_dim {head_dim}")
    if T and int(positions.max()) >= cos.shape[0]:
        raise ValueError(f"cpu_layer_ops.rope_qk: position {int(positions.max())} past the "
                         f"{cos.shape[0]}-row RoPE tables")
    q = torch.empty(T, heads, head_dim, dtype=torch.float32)
    k = torch.empty(T, kv_heads, head_dim, dtype=torch.float32)
    _kernel().rope(qkv.data_ptr(), q.data_ptr(), k.data_ptr(), cos.data_ptr(), sin.data_ptr(),
                   positions.data_ptr(), T, qkv.shape[1], heads, kv_heads, head_dim)
    return q, k


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for gate_up [2 * I, ...] split in halves along dim 0 -> [I, ...]."""
    _check("gate_up", gate_up)
    if gate_up.shape[0] % 2:
        raise ValueError(f"cpu_layer_ops.silu_mul: gate_up's first dim must be even, got "
                         f"{tuple(gate_up.shape)}")
    out = torch.empty((gate_up.shape[0] // 2,) + tuple(gate_up.shape[1:]), dtype=torch.float32)
    _kernel().silu_mul(gate_up.data_ptr(), out.data_ptr(), out.numel())
    return out
