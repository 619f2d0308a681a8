"""Triton kernels for per-token log-probs and the DPO/RPO loss (imported only when chosen).

Runs on CUDA, or on CPU tensors through Triton's interpreter when TRITON_INTERPRET=1 was set
before triton was imported (tests do this in a subprocess).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._dispatch import interpreting

# ---------------------------------------------------------------------------------------------
# log-probs
# ---------------------------------------------------------------------------------------------


@triton.jit
def _logprob_fwd_kernel(
    h_ptr,
    w_ptr,
    tgt_ptr,
    part_max_ptr,
    part_sum_ptr,
    part_tgt_ptr,
    n_rows,
    vocab,
    hid,
    inv_temp,
    cols_per_split,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """One program: BLOCK_N rows x one vocabulary split. Computes logits tiles with tl.dot and keeps
    an online (running max, running sum of exp) per row plus the target logit; nothing of size
    [rows, V] is ever stored. Partial results per split are combined on the host side."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    tgt = tl.load(tgt_ptr + rows, mask=row_ok, other=-1)
    run_max = tl.full([BLOCK_N], float("-inf"), tl.float32)
    run_sum = tl.zeros([BLOCK_N], tl.float32)
    tgt_logit = tl.zeros([BLOCK_N], tl.float32)
    col_start = pid_s * cols_per_split
    col_stop = tl.minimum(col_start + cols_per_split, vocab)
    for v0 in range(col_start, col_stop, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < col_stop
        cols64 = cols.to(tl.int64)  # V * H can exceed 2**31 (e.g. 256k x 8k)
        acc = tl.zeros([BLOCK_N, BLOCK_V], tl.float32)
        for k0 in range(0, hid, BLOCK_H):
            ks = k0 + tl.arange(0, BLOCK_H)
            k_ok = ks < hid
            a = tl.load(
                h_ptr + rows[:, None] * hid + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0
            )
            b = tl.load(
                w_ptr + cols64[None, :] * hid + ks[:, None], mask=col_ok[None, :] & k_ok[:, None], other=0.0
            )
            if UPCAST:  # the interpreter's dot mishandles bf16 tiles
                a, b = a.to(tl.float32), b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
        z = tl.where(col_ok[None, :], acc * inv_temp, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(z, axis=1))
        # First tile: run_max = -inf, new_max finite -> exp(-inf) = 0, so no NaN arises.
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(z - new_max[:, None]), axis=1)
        run_max = new_max
        hit = (cols[None, :] == tgt[:, None]) & col_ok[None, :]
        tgt_logit += tl.sum(tl.where(hit, z, 0.0), axis=1)
    out = pid_s * n_rows + rows
    tl.store(part_max_ptr + out, run_max, mask=row_ok)
    tl.store(part_sum_ptr + out, run_sum, mask=row_ok)
    tl.store(part_tgt_ptr + out, tgt_logit, mask=row_ok)


@triton.jit
def _logit_grad_kernel(
    h_ptr,
    w_ptr,
    tgt_ptr,
    lse_ptr,
    g_ptr,
    d_ptr,
    n_rows,
    vocab,
    hid,
    inv_temp,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """D[rows, cols] = g * (onehot(target) - exp(z - lse)) for one chunk of rows, z recomputed.
    g already carries 1/temperature (both parameter gradients of z = h W^T / T carry it)."""
    pid_n = tl.program_id(0)
    pid_v = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok = rows < n_rows
    col_ok = cols < vocab
    cols64 = cols.to(tl.int64)  # V * H can exceed 2**31
    acc = tl.zeros([BLOCK_N, BLOCK_V], tl.float32)
    for k0 in range(0, hid, BLOCK_H):
        ks = k0 + tl.arange(0, BLOCK_H)
        k_ok = ks < hid
        a = tl.load(
            h_ptr + rows[:, None] * hid + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0
        )
        b = tl.load(
            w_ptr + cols64[None, :] * hid + ks[:, None], mask=col_ok[None, :] & k_ok[:, None], other=0.0
        )
        if UPCAST:
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    g = tl.load(g_ptr + rows, mask=row_ok, other=0.0)
    tgt = tl.load(tgt_ptr + rows, mask=row_ok, other=-1)
    prob = tl.exp(acc * inv_temp - lse[:, None])
    onehot = tl.where(cols[None, :] == tgt[:, None], 1.0, 0.0)
    d = g[:, None] * (onehot - prob)
    tl.store(
        d_ptr + rows.to(tl.int64)[:, None] * vocab + cols64[None, :],
        d.to(d_ptr.dtype.element_ty),
        mask=row_ok[:, None] & col_ok[None, :],
    )


class Tiles(NamedTuple):
    """Tile sizes and launch shape of the two log-prob kernels."""

    block_n: int  # rows
    block_v: int  # vocabulary columns
    block_h: int  # hidden (reduction) step
    precision: str  # tl.dot input precision
    num_warps: int
    num_stages: int


def _blocks(dtype: torch.dtype, device: torch.device | None = None) -> Tiles:
    """Small tiles under the interpreter so that tests with small shapes still cover partial tiles;
    fp32 uses IEEE dots (no TF32) to match torch.

    16-bit tiles by the GPU's shared memory per block (the pipelined loads of A and B tiles live
    there: (BLOCK_N + BLOCK_V) * BLOCK_H * 2 bytes per stage). Measured on an H100 (bf16, fwd+bwd,
    tools/bench_kernels.py shapes; docs/kernels.md): 128x256x64 / 8 warps / 4 stages (196 KiB) took
    71 ms against 84 ms for 64x128x64 / 4 warps / 3 stages at Llama-3-8B's 8192 x 4096 x 128256,
    and 1.73 against 1.89 ms at SmolLM2's 2048 x 576 x 49152; 128x128x64 / 8 warps / 3 stages
    (96 KiB) took 75 and 1.71 ms. GPUs with less shared memory keep the small tiles (72 KiB)."""
    precision = "ieee" if dtype == torch.float32 else "tf32"
    if interpreting():
        return Tiles(16, 32, 16, precision, 4, 2)
    if dtype == torch.float32:
        return Tiles(64, 128, 32, precision, 4, 3)
    smem = 0
    if device is not None and device.type == "cuda":
        smem = getattr(torch.cuda.get_device_properties(device), "shared_memory_per_block_optin", 0)
    if smem >= 200 * 1024:
        return Tiles(128, 256, 64, precision, 8, 4)
    if smem >= 100 * 1024:
        return Tiles(128, 128, 64, precision, 8, 3)
    return Tiles(64, 128, 64, precision, 4, 3)


def _num_splits(row_blocks: int, vocab: int, block_v: int, device: torch.device) -> int:
    """Vocabulary splits so that the forward grid has about two programs per SM."""
    if interpreting() or device.type != "cuda":
        return min(2, triton.cdiv(vocab, block_v))
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(triton.cdiv(vocab, block_v), triton.cdiv(2 * sms, row_blocks)))


# Bytes of the [chunk, V] logit-gradient block in the backward (in the weight's dtype).
TRITON_CHUNK_BYTES = 256 * 2**20


def _grad_chunk_rows(n_rows: int, vocab: int, elt: int, block_n: int) -> int:
    if interpreting():
        return 2 * block_n  # small, so tests cover several chunks
    rows = max(block_n, (TRITON_CHUNK_BYTES // (vocab * elt)) // block_n * block_n)
    return min(rows, n_rows)


class TritonLogprobs(torch.autograd.Function):
    """Autograd wrapper of the two kernels; all rows valid (the caller drops ignored ones)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature):  # type: ignore[override]
        n_rows, hid = hidden.shape
        vocab = weight.shape[0]
        inv_temp = 1.0 / temperature
        tiles = _blocks(hidden.dtype, hidden.device)
        block_n, block_v, block_h, precision = tiles[:4]
        row_blocks = triton.cdiv(n_rows, block_n)
        splits = _num_splits(row_blocks, vocab, block_v, hidden.device)
        cols_per_split = triton.cdiv(triton.cdiv(vocab, splits), block_v) * block_v
        splits = triton.cdiv(vocab, cols_per_split)  # no empty split
        part = torch.empty(3, splits, n_rows, dtype=torch.float32, device=hidden.device)
        _logprob_fwd_kernel[(row_blocks, splits)](
            hidden,
            weight,
            targets,
            part[0],
            part[1],
            part[2],
            n_rows,
            vocab,
            hid,
            inv_temp,
            cols_per_split,
            BLOCK_N=block_n,
            BLOCK_V=block_v,
            BLOCK_H=block_h,
            PRECISION=precision,
            UPCAST=interpreting(),
            num_warps=tiles.num_warps,
            num_stages=tiles.num_stages,
        )
        part_max, part_sum, part_tgt = part[0], part[1], part[2]
        top = part_max.amax(0)
        lse = top + (part_sum * torch.exp(part_max - top)).sum(0).log()
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.inv_temp = inv_temp
        return part_tgt.sum(0) - lse

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        hidden, weight, targets, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_h or need_w):
            return None, None, None, None
        n_rows, hid = hidden.shape
        vocab = weight.shape[0]
        inv_temp = ctx.inv_temp
        tiles = _blocks(hidden.dtype, hidden.device)
        block_n, block_v, block_h, precision = tiles[:4]
        g = (grad_out.float() * inv_temp).contiguous()
        chunk = _grad_chunk_rows(n_rows, vocab, weight.element_size(), block_n)
        d_block = torch.empty(chunk * vocab, dtype=weight.dtype, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(vocab, hid, dtype=torch.float32, device=hidden.device) if need_w else None
        for start in range(0, n_rows, chunk):
            stop = min(n_rows, start + chunk)
            rows = stop - start
            d = d_block[: rows * vocab].view(rows, vocab)
            h_c = hidden[start:stop]
            _logit_grad_kernel[(triton.cdiv(rows, block_n), triton.cdiv(vocab, block_v))](
                h_c,
                weight,
                targets[start:stop],
                lse[start:stop],
                g[start:stop],
                d,
                rows,
                vocab,
                hid,
                inv_temp,
                BLOCK_N=block_n,
                BLOCK_V=block_v,
                BLOCK_H=block_h,
                PRECISION=precision,
                UPCAST=interpreting(),
                num_warps=tiles.num_warps,
                num_stages=tiles.num_stages,
            )
            if need_h:
                torch.mm(d, weight, out=grad_h[start:stop])
            if need_w:
                _accumulate_grad_weight(grad_w, d, h_c)
        if grad_w is not None:
            grad_w = grad_w.to(weight.dtype)
        return grad_h, grad_w, None, None


_OUT_DTYPE_ADDMM = [True]  # flipped to False if this torch/device lacks addmm(..., out_dtype=)


def _accumulate_grad_weight(grad_w: torch.Tensor, d: torch.Tensor, h_c: torch.Tensor) -> None:
    """grad_w (fp32) += d.T @ h_c. For bf16/fp16 operands the matmul writes fp32 straight into the
    accumulator where torch supports it (CUDA addmm out_dtype); otherwise the chunk's product is
    rounded to bf16 once before the fp32 accumulation (what a plain bf16 matmul returns)."""
    if d.dtype == torch.float32:
        grad_w.addmm_(d.t(), h_c)
        return
    if _OUT_DTYPE_ADDMM[0]:
        try:
            torch.addmm(grad_w, d.t(), h_c, out_dtype=torch.float32, out=grad_w)
            return
        except (RuntimeError, TypeError, NotImplementedError):
            _OUT_DTYPE_ADDMM[0] = False
    grad_w += torch.mm(d.t(), h_c).float()


# ---------------------------------------------------------------------------------------------
# DPO / RPO
# ---------------------------------------------------------------------------------------------


@triton.jit
def _log_sigmoid(x):
    # log sigmoid(x) = min(x, 0) - log1p(exp(-|x|)); log1p written so that tiny e stays exact
    e = tl.exp(-tl.abs(x))
    u = 1.0 + e
    log1p_e = tl.where(u == 1.0, e, tl.log(u) * (e / (u - 1.0)))
    return tl.minimum(x, 0.0) - log1p_e


@triton.jit
def _dpo_kernel(
    pc_ptr,
    pr_ptr,
    rc_ptr,
    rr_ptr,
    nll_ptr,
    grad_ptr,
    out_ptr,
    n,
    beta,
    smoothing,
    rpo_alpha,
    HAS_NLL: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Single program over the batch. out = [loss, mean chosen reward, mean rejected reward,
    mean margin, accuracy]; grad[i] = d loss / d policy_chosen[i] (policy_rejected gets -grad[i],
    ref_chosen -grad[i], ref_rejected +grad[i])."""
    loss_acc = tl.zeros([BLOCK], tl.float32)
    chosen_acc = tl.zeros([BLOCK], tl.float32)
    rejected_acc = tl.zeros([BLOCK], tl.float32)
    correct_acc = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        ok = offs < n
        pc = tl.load(pc_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        pr = tl.load(pr_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        rc = tl.load(rc_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        rr = tl.load(rr_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        chosen = beta * (pc - rc)
        rejected = beta * (pr - rr)
        margin = chosen - rejected
        ls_pos = _log_sigmoid(margin)
        ls_neg = _log_sigmoid(-margin)
        losses = -(1.0 - smoothing) * ls_pos - smoothing * ls_neg
        # d losses / d margin = -(1 - s) sigmoid(-m) + s sigmoid(m); d margin / d pc = beta
        dmargin = -(1.0 - smoothing) * tl.exp(ls_neg) + smoothing * tl.exp(ls_pos)
        tl.store(grad_ptr + offs, dmargin * beta / n, mask=ok)
        loss_acc += tl.where(ok, losses, 0.0)
        chosen_acc += tl.where(ok, chosen, 0.0)
        rejected_acc += tl.where(ok, rejected, 0.0)
        correct_acc += tl.where(ok & (margin > 0), 1.0, 0.0)
        if HAS_NLL:
            loss_acc += tl.where(
                ok, rpo_alpha * tl.load(nll_ptr + offs, mask=ok, other=0.0).to(tl.float32), 0.0
            )
    chosen_sum = tl.sum(chosen_acc, axis=0)
    rejected_sum = tl.sum(rejected_acc, axis=0)
    tl.store(out_ptr + 0, tl.sum(loss_acc, axis=0) / n)
    tl.store(out_ptr + 1, chosen_sum / n)
    tl.store(out_ptr + 2, rejected_sum / n)
    tl.store(out_ptr + 3, (chosen_sum - rejected_sum) / n)
    tl.store(out_ptr + 4, tl.sum(correct_acc, axis=0) / n)


class TritonDPO(torch.autograd.Function):
    """Loss and metrics in one launch; the backward only scales the stored per-pair gradient."""

    @staticmethod
    def forward(ctx, pc, pr, rc, rr, nll, beta, smoothing, rpo_alpha):  # type: ignore[override]
        n = pc.shape[0]
        grad = torch.empty(n, dtype=torch.float32, device=pc.device)
        out = torch.empty(5, dtype=torch.float32, device=pc.device)
        has_nll = nll is not None
        block = min(1024, max(16, triton.next_power_of_2(n)))
        _dpo_kernel[(1,)](
            pc,
            pr,
            rc,
            rr,
            nll if has_nll else pc,
            grad,
            out,
            n,
            float(beta),
            float(smoothing),
            float(rpo_alpha),
            HAS_NLL=has_nll,
            BLOCK=block,
        )
        ctx.save_for_backward(grad)
        ctx.meta = (n, float(rpo_alpha), has_nll, pc.dtype, rc.dtype, nll.dtype if has_nll else None)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        n, rpo_alpha, has_nll, policy_dtype, ref_dtype, nll_dtype = ctx.meta
        g = grad * grad_out[0]  # only the loss (out[0]) is differentiable; metrics are detached
        grad_nll = None
        if has_nll and ctx.needs_input_grad[4]:
            grad_nll = (grad_out[0] * (rpo_alpha / n)).expand(n).to(nll_dtype)
        return (
            g.to(policy_dtype) if ctx.needs_input_grad[0] else None,
            (-g).to(policy_dtype) if ctx.needs_input_grad[1] else None,
            (-g).to(ref_dtype) if ctx.needs_input_grad[2] else None,
            g.to(ref_dtype) if ctx.needs_input_grad[3] else None,
            grad_nll,
            None,
            None,
            None,
        )
