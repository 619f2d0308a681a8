"""Paged decode attention in Triton: one query token per sequence, K/V read in place from the
cache blocks through the block table (no gather copy), GQA, sliding windows.

This is the sampler's own GPU decode kernel for machines without flash-attn; its reference is
`SdpaBackend._decode` (tests/test_sampler_triton_decode.py compares them under Triton's CPU
interpreter, and on a GPU when one is present). It reads every input from device memory, never
from Python values, so a decode step that uses it can be captured in a CUDA graph.

One program per (sequence, KV head) handles all query heads that share the KV head: the keys and
values are read once for the whole group, which is what bounds decode (it moves bytes, the
arithmetic is tiny). The group's query rows are padded to 16, the smallest tile `tl.dot` takes.
Each loop step covers BLOCK_N = 64 key positions, which may span several cache blocks: every
position looks up its own block, so any block size works. Softmax is the online (running max)
form in fp32; in fp32 the dots run in IEEE precision (no TF32) so the kernel matches SDPA's fp32
results to rounding.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_N = 64  # key positions per loop step


@triton.jit
def _paged_decode_kernel(
    Q, K, V, Out, Tables, ContextLens, scale, window,
    stride_q_row, stride_q_head,
    stride_k_block, stride_k_slot, stride_k_head,
    stride_o_row, stride_o_head,
    stride_table_row,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    row = tl.program_id(0)
    kv_head = tl.program_id(1)
    context = tl.load(ContextLens + row).to(tl.int32)
    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, DIM_PAD)
    q_mask = (g < GROUP)[:, None] & (d < HEAD_DIM)[None, :]
    heads = kv_head * GROUP + g
    q = tl.load(Q + row * stride_q_row + heads[:, None] * stride_q_head + d[None, :], mask=q_mask, other=0.0)

    lowest = 0  # first visible key position (sliding window)
    if window > 0:
        lowest = tl.maximum(context - window, 0)
    m = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    denom = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, DIM_PAD], tl.float32)
    # every step's range meets [lowest, context), so each has a visible key and `m` stays finite
    for start in range((lowest // BLOCK_N) * BLOCK_N, context, BLOCK_N):
        pos = start + tl.arange(0, BLOCK_N)
        visible = (pos < context) & (pos >= lowest)
        block = tl.load(Tables + row * stride_table_row + pos // BLOCK_SIZE, mask=visible, other=0)
        slot = block.to(tl.int64) * stride_k_block + (pos % BLOCK_SIZE) * stride_k_slot
        slot += kv_head * stride_k_head
        kv_mask = visible[:, None] & (d < HEAD_DIM)[None, :]
        k = tl.load(K + slot[:, None] + d[None, :], mask=kv_mask, other=0.0)
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale  # [GROUP_PAD, BLOCK_N] fp32
        scores = tl.where(visible[None, :], scores, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, axis=1))
        p = tl.exp(scores - m_new[:, None])
        rescale = tl.exp(m - m_new)
        denom = denom * rescale + tl.sum(p, axis=1)
        v = tl.load(V + slot[:, None] + d[None, :], mask=kv_mask, other=0.0)
        acc = acc * rescale[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m = m_new
    out = acc / denom[:, None]
    o_ptr = Out + row * stride_o_row + heads[:, None] * stride_o_head + d[None, :]
    tl.store(o_ptr, out.to(Out.dtype.element_ty), mask=q_mask)


def paged_decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    context_lens: torch.Tensor, scale: float, sliding_window: int | None = None,
) -> torch.Tensor:
    """Attention of one query per row over that row's cached keys.

    q [B, heads, head_dim]; k_cache / v_cache [blocks, block_size, kv_heads, head_dim];
    block_tables [B, width] (int32 or int64) naming each row's blocks in position order;
    context_lens [B] keys per row (the newest, already stored, included). Returns [B, heads, head_dim].
    """
    rows, heads, head_dim = q.shape
    _, block_size, kv_heads, cache_dim = k_cache.shape
    if cache_dim != head_dim or heads % kv_heads or v_cache.shape != k_cache.shape:
        raise ValueError(f"triton decode: q {tuple(q.shape)} does not fit caches {tuple(k_cache.shape)} / "
                         f"{tuple(v_cache.shape)}")
    if k_cache.stride() != v_cache.stride() or k_cache.stride(-1) != 1:
        raise ValueError("triton decode: K and V caches need the same layout, head_dim contiguous")
    if block_tables.shape[0] != rows or context_lens.shape != (rows,):
        raise ValueError(f"triton decode: {rows} rows but block tables {tuple(block_tables.shape)}, "
                         f"context lengths {tuple(context_lens.shape)}")
    if q.stride(-1) != 1:
        q = q.contiguous()
    block_tables = block_tables if block_tables.stride(-1) == 1 else block_tables.contiguous()
    out = torch.empty_like(q)
    if rows == 0:
        return out
    group = heads // kv_heads
    _paged_decode_kernel[(rows, kv_heads)](
        q, k_cache, v_cache, out, block_tables, context_lens, scale, sliding_window or 0,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        out.stride(0), out.stride(1),
        block_tables.stride(0),
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)),
        HEAD_DIM=head_dim, DIM_PAD=max(16, triton.next_power_of_2(head_dim)),
        BLOCK_SIZE=block_size, BLOCK_N=BLOCK_N,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )
    return out
