"""Python side of `selftrain._cpu_logits` (csrc/cpu_logits.c): the LM head's output to tokens on CPU.

`to_rows` turns the head's vocab-major product `W @ h.T` ([V, R], the orientation MKL computes
fastest here) into [R, V] logits; `sample` is the C twin of `sampling.sample_tokens` plus
`sampling.token_logprobs`. Both take fp32 CPU tensors only; `available()` says whether the
extension was built. The torch code in sampling.py stays the reference and the path off the CPU.
"""

from __future__ import annotations

import torch

from selftrain.sampler import native

EXTENSION = "_cpu_logits"


def available() -> bool:
    return native.available(EXTENSION)


def _kernel():
    return native.load(EXTENSION)


def _check(name: str, t: torch.Tensor, dtype: torch.dtype, dims: int) -> None:
    native.check_tensor("cpu_logits", name, t, dtype, dims)


def to_rows(vocab_major: torch.Tensor, rows: int | None = None, out: torch.Tensor | None = None
            ) -> torch.Tensor:
    """[V, C] -> contiguous [rows, V]: the transpose of the first `rows` (default all C) columns,
    on all torch threads; written into `out` when given (contiguous fp32 [rows, V])."""
    _check("vocab-major logits", vocab_major, torch.float32, 2)
    V, C = vocab_major.shape
    rows = C if rows is None else rows
    if not 0 <= rows <= C:
        raise ValueError(f"cpu_logits.to_rows: rows must be in [0, {C}], got {rows}")
    if out is None:
        out = torch.empty(rows, V, dtype=torch.float32)
    else:
        _check("out", out, torch.float32, 2)
        if tuple(out.shape) != (rows, V):
            raise ValueError(f"cpu_logits.to_rows: out must be [{rows}, {V}], got {tuple(out.shape)}")
    _kernel().to_rows(vocab_major.data_ptr(), out.data_ptr(), V, C, rows, torch.get_num_threads())
    return out


def sample(logits: torch.Tensor, temperature: float, top_p: float, uniforms: torch.Tensor,
           logprobs: bool = False, top_k: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token ids [R] for logits [R, V] and uniforms [R] (float64), and each chosen token's
    log-probability at temperature 1 when `logprobs`; top_k 0 = off (sampling.py's rule)."""
    _check("logits", logits, torch.float32, 2)
    _check("uniforms", uniforms, torch.float64, 1)
    R, V = logits.shape
    if uniforms.shape[0] != R:
        raise ValueError(f"cpu_logits: {R} rows of logits but {uniforms.shape[0]} uniforms")
    tokens = torch.empty(R, dtype=torch.long)
    logps = torch.empty(R, dtype=torch.float32) if logprobs else None
    _kernel().sample(
        logits.data_ptr(), uniforms.data_ptr(), tokens.data_ptr(), 0 if logps is None else logps.data_ptr(),
        R, V, float(temperature), float(top_p), int(top_k), torch.get_num_threads(),
    )
    return tokens, logps
