"""Per-token log-probabilities through the LM head without materialising [N, V] logits.

logp[i] = log softmax(hidden[i] @ weight.T / temperature)[targets[i]]   (0 where targets[i] == ignore_index)

Two implementations of the same math, chosen by `_dispatch.choose_backend`:
- Triton (`_triton.py`): the forward is one fused kernel (matmul tiles + online logsumexp, never
  storing logits); the backward recomputes logits for a chunk of rows inside a kernel that writes
  the logit gradient D = g/T * (onehot(target) - softmax) for that chunk only, then two matmuls
  turn D into grad_hidden and grad_weight.
- torch (this file): rows processed in chunks whose [chunk, V] logits block is bounded in bytes;
  the forward keeps only the per-row logsumexp; the backward recomputes each chunk's logits once
  and derives both gradients from the same in-place softmax block.
Ignored rows are dropped before either implementation runs, so they cost nothing.
docs/kernels.md explains the chunk sizes and the numerics.
"""

from __future__ import annotations

import math

import torch

from ._dispatch import choose_backend

# Bytes of the fp32 [chunk, V] logits block of the torch path. Measured on the 2-core EPYC
# (docs/kernels.md): 48 MiB keeps the matmuls at full speed (256 rows at V = 49152) while the
# block stays far below 1/8 of the naive path's [N, V] tensors.
TORCH_CHUNK_BYTES = 48 * 2**20
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check_inputs(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int, temperature: float
) -> None:
    """Raise a ValueError/TypeError naming the argument that is wrong."""
    for name, t in (("hidden", hidden), ("weight", weight), ("targets", targets)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"fused_logprobs: {name} must be a torch.Tensor, got {type(t).__name__}")
    if hidden.dim() != 2:
        raise ValueError(f"fused_logprobs: hidden must be 2-D [N, H], got shape {tuple(hidden.shape)}")
    if weight.dim() != 2:
        raise ValueError(f"fused_logprobs: weight must be 2-D [V, H], got shape {tuple(weight.shape)}")
    if targets.dim() != 1:
        raise ValueError(f"fused_logprobs: targets must be 1-D [N], got shape {tuple(targets.shape)}")
    if hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"fused_logprobs: hidden has H={hidden.shape[1]} but weight has H={weight.shape[1]} "
            f"(weight must be [V, H], hidden [N, H])"
        )
    if targets.shape[0] != hidden.shape[0]:
        raise ValueError(
            f"fused_logprobs: targets has {targets.shape[0]} entries but hidden has {hidden.shape[0]} rows"
        )
    if hidden.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"fused_logprobs: hidden dtype {hidden.dtype} is not one of fp32/bf16/fp16")
    if weight.dtype != hidden.dtype:
        raise TypeError(
            f"fused_logprobs: weight dtype {weight.dtype} differs from hidden dtype {hidden.dtype}"
        )
    if targets.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"fused_logprobs: targets must be int64 (or int32), got {targets.dtype}")
    if hidden.device != weight.device or hidden.device != targets.device:
        raise ValueError(
            f"fused_logprobs: hidden ({hidden.device}), weight ({weight.device}) and targets "
            f"({targets.device}) must be on one device"
        )
    if not hidden.is_contiguous():
        raise ValueError(
            "fused_logprobs: hidden must be contiguous (call .contiguous(); views of [B, T, H] "
            "reshaped to [B*T, H] are contiguous)"
        )
    if not weight.is_contiguous():
        raise ValueError(
            "fused_logprobs: weight must be contiguous [V, H] (an nn.Linear/embedding weight is)"
        )
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"fused_logprobs: temperature must be a finite number > 0, got {temperature!r}")
    if targets.numel():
        vocab = weight.shape[0]
        bad = (targets != ignore_index) & ((targets < 0) | (targets >= vocab))
        if bool(bad.any()):  # one host sync; out-of-range targets would otherwise read garbage
            first = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"fused_logprobs: targets[{first}] = {int(targets[first])} is outside [0, {vocab}) "
                f"and is not ignore_index ({ignore_index})"
            )


def fused_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    temperature: float = 1.0,
    *,
    uniform_grad: bool = False,
) -> torch.Tensor:
    """log softmax(hidden @ weight.T / temperature)[targets] per row, as fp32 [N]; 0 where ignored.

    hidden [N, H] and weight [V, H] share a float dtype (fp32/bf16/fp16; accumulation is fp32),
    targets [N] int64. Differentiable w.r.t. hidden and weight. See the module docstring.

    uniform_grad=True promises that the gradient reaching the returned log-probs is one value for
    every non-ignored token (e.g. loss = -logp.sum() / n_tokens, the token-mean SFT loss). The
    chunked torch path then computes both gradients during the forward (3 matmuls instead of 4)
    and the backward only scales them; it checks the promise and raises if the gradient differs
    between tokens. The Triton path ignores the flag (its cost does not change).
    """
    _check_inputs(hidden, weight, targets, ignore_index, temperature)
    targets = targets.long()
    n_rows = hidden.shape[0]
    valid = targets != ignore_index
    n_valid = int(valid.sum()) if n_rows else 0
    if n_valid == 0:
        # Nothing to score; keep the graph connected so .backward() still gives zero grads.
        # Empty slices sum to an exact 0 (NaN-proof) that is still attached to both inputs.
        zero = hidden[:0].float().sum() + weight[:0].float().sum()
        return zero.expand(n_rows).clone()
    if n_valid == n_rows:
        idx = None
        h_rows, t_rows = hidden, targets
    else:
        idx = valid.nonzero().squeeze(1)
        h_rows, t_rows = hidden.index_select(0, idx), targets.index_select(0, idx)
    backend = choose_backend(hidden.device)
    if backend == "triton":
        from ._triton import TritonLogprobs

        logp_rows = TritonLogprobs.apply(h_rows, weight, t_rows, float(temperature))
    else:
        logp_rows = TorchChunkedLogprobs.apply(h_rows, weight, t_rows, float(temperature), None, uniform_grad)
    if idx is None:
        return logp_rows
    return logp_rows.new_zeros(n_rows).index_copy(0, idx, logp_rows)


def torch_chunk_rows(vocab: int, n_rows: int, chunk_bytes: int | None = None) -> int:
    """Rows per chunk so that the fp32 [chunk, V] block fits chunk_bytes (default TORCH_CHUNK_BYTES)."""
    rows = max(1, (chunk_bytes or TORCH_CHUNK_BYTES) // (4 * vocab))
    if rows >= 16:
        rows -= rows % 16  # whole SIMD/GEMM panels
    return min(rows, max(n_rows, 1))


class TorchChunkedLogprobs(torch.autograd.Function):
    """Chunked torch implementation; all rows valid (ignored ones were dropped by the caller).

    The logits of a chunk are computed transposed, as [V, chunk] = W @ h_chunk.T: on the measured
    CPU this matmul runs faster than h_chunk @ W.T, and the backward matmuls read the block in
    their natural layouts (grad_h = D.T @ W, grad_W += D @ h_chunk).

    General mode: the forward keeps only lse; the backward recomputes each chunk's logits (4
    matmuls in all). uniform_grad mode: the forward already forms D for a unit upstream gradient
    from the softmax it has in hand and accumulates both gradients (3 matmuls); the backward checks
    that the upstream gradient really is one value c for every row and returns c * those.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, chunk_rows, uniform_grad):  # type: ignore[override]
        inv_temp = 1.0 / temperature
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        eager = bool(uniform_grad) and (need_h or need_w)
        w32 = weight.float()  # a copy only for bf16/fp16: CPU matmuls cannot emit fp32 from bf16
        n_rows, vocab = hidden.shape[0], weight.shape[0]
        chunk = chunk_rows or torch_chunk_rows(vocab, n_rows)
        lse = torch.empty(n_rows, dtype=torch.float32, device=hidden.device)
        target_logit = torch.empty_like(lse)
        block = torch.empty(vocab * min(chunk, n_rows), dtype=torch.float32, device=hidden.device)
        grad_h, grad_w = _grad_buffers(hidden, vocab, need_h and eager, need_w and eager)
        for start in range(0, n_rows, chunk):
            stop = min(n_rows, start + chunk)
            h_c = _scaled_rows(hidden, start, stop, inv_temp)
            z = block[: vocab * (stop - start)].view(vocab, stop - start)
            torch.mm(w32, h_c.t(), out=z)
            t_c = targets[start:stop].unsqueeze(0)
            target_logit[start:stop] = z.gather(0, t_c).squeeze(0)
            col_max = z.amax(0, keepdim=True)
            sum_exp = z.sub_(col_max).exp_().sum(0)
            lse[start:stop] = sum_exp.log().add_(col_max.squeeze(0))
            if eager:  # D for g = 1: (onehot - exp(z - max) / sum) / T, from the block in hand
                z.mul_(sum_exp.reciprocal_().mul_(-inv_temp).unsqueeze(0))
                z.scatter_add_(0, t_c, torch.full_like(lse[start:stop], inv_temp).unsqueeze(0))
                _chunk_grads(z, hidden, w32, start, stop, grad_h, grad_w)
        ctx.inv_temp, ctx.chunk, ctx.eager = inv_temp, chunk, eager
        if eager:
            ctx.save_for_backward(grad_h, grad_w)
            ctx.dtypes = (hidden.dtype, weight.dtype)
        else:
            ctx.save_for_backward(hidden, weight, targets, lse)
        return target_logit.sub_(lse)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_h or need_w):
            return None, None, None, None, None, None
        if ctx.eager:
            return _scale_eager_grads(ctx, grad_out)
        hidden, weight, targets, lse = ctx.saved_tensors
        inv_temp, chunk = ctx.inv_temp, ctx.chunk
        n_rows, vocab = hidden.shape[0], weight.shape[0]
        w32 = weight.float()
        # dlogp/dz = onehot - softmax; z = h W^T / T, so both grads carry 1/T: fold it into D.
        g = grad_out.float() * inv_temp
        grad_h, grad_w = _grad_buffers(hidden, vocab, need_h, need_w)
        block = torch.empty(vocab * min(chunk, n_rows), dtype=torch.float32, device=hidden.device)
        for start in range(0, n_rows, chunk):
            stop = min(n_rows, start + chunk)
            g_c = g[start:stop]
            if not bool(g_c.any()):
                if need_h:
                    grad_h[start:stop] = 0.0
                continue
            h_c = _scaled_rows(hidden, start, stop, inv_temp)
            d = block[: vocab * (stop - start)].view(vocab, stop - start)
            torch.mm(w32, h_c.t(), out=d)
            # D = g * (onehot - softmax), built in place in the logits block.
            d.sub_(lse[start:stop].unsqueeze(0)).exp_().mul_(g_c.neg().unsqueeze(0))
            d.scatter_add_(0, targets[start:stop].unsqueeze(0), g_c.unsqueeze(0))
            _chunk_grads(d, hidden, w32, start, stop, grad_h, grad_w)
        return (
            None if grad_h is None else grad_h.to(hidden.dtype),
            None if grad_w is None else grad_w.to(weight.dtype),
            None,
            None,
            None,
            None,
        )


def _grad_buffers(
    hidden: torch.Tensor, vocab: int, need_h: bool, need_w: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """fp32 grad_hidden [N, H] (every row gets written) and zeroed grad_weight [V, H] accumulator."""
    kw = dict(dtype=torch.float32, device=hidden.device)
    grad_h = torch.empty(hidden.shape[0], hidden.shape[1], **kw) if need_h else None
    grad_w = torch.zeros(vocab, hidden.shape[1], **kw) if need_w else None
    return grad_h, grad_w


def _chunk_grads(
    d: torch.Tensor,
    hidden: torch.Tensor,
    w32: torch.Tensor,
    start: int,
    stop: int,
    grad_h: torch.Tensor | None,
    grad_w: torch.Tensor | None,
) -> None:
    """grad_h[start:stop] = D^T W and grad_w += D h[start:stop] for one [V, chunk] block D."""
    if grad_h is not None:
        torch.mm(d.t(), w32, out=grad_h[start:stop])
    if grad_w is not None:
        grad_w.addmm_(d, hidden[start:stop].float())


def _scale_eager_grads(ctx, grad_out: torch.Tensor) -> tuple:
    """Backward of uniform_grad mode: the unit-gradient results times the one upstream value."""
    if getattr(ctx, "consumed", False):
        raise RuntimeError("fused_logprobs(uniform_grad=True) supports a single backward pass per forward")
    grad_h, grad_w = ctx.saved_tensors
    g = grad_out.float()
    scale = g[:1]
    if not bool((g == scale).all()):
        raise RuntimeError(
            "fused_logprobs(uniform_grad=True): the upstream gradient differs between tokens "
            f"(from {float(g.min())} to {float(g.max())}); use uniform_grad=False for losses that "
            "weight tokens differently (DPO, per-sequence means)"
        )
    ctx.consumed = True  # the saved gradients are scaled in place below
    h_dtype, w_dtype = ctx.dtypes
    if grad_h is not None:
        grad_h = grad_h.mul_(scale).to(h_dtype)
    if grad_w is not None:
        grad_w = grad_w.mul_(scale).to(w_dtype)
    return grad_h, grad_w, None, None, None, None


def _scaled_rows(hidden: torch.Tensor, start: int, stop: int, inv_temp: float) -> torch.Tensor:
    """fp32 hidden[start:stop] / temperature (a view when nothing needs changing)."""
    rows = hidden[start:stop].float()
    return rows * inv_temp if inv_temp != 1.0 else rows
