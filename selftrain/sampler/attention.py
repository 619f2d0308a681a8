"""Attention over the paged KV cache, with three backends picked at run time.

The cache of one layer is `[2, num_blocks, block_size, kv_heads, head_dim]` (K then V), the
layout flash-attn's paged kernels read. A step's tokens are laid out flat: first the
single-token rows ("decode rows": one query each), then the multi-token prefill chunks.

- `flash`: flash-attn 2 on CUDA. `flash_attn_with_kvcache` with `block_table` for decode rows,
  `flash_attn_varlen_func` with `block_table` for prefill chunks (reads earlier chunks' K/V
  from the cache). Its paged kernels need block_size % 256 == 0.
- `xformers`: CUDA, when flash-attn is missing. Gathers each sequence's K/V from its blocks
  and runs `memory_efficient_attention` with a bottom-right causal block-diagonal mask.
- `triton`: CUDA without flash-attn (or any device under Triton's interpreter): decode rows through
  the Triton kernel of `triton_decode.py`, which reads each row's K/V in place from its blocks;
  prefill chunks through SDPA. Its decode steps can be captured in CUDA graphs.
- `cpu`: CPU, fp32 (the default there): decode rows through the C kernel of
  `csrc/paged_attention.c`, which reads each row's K/V in place from its blocks (no gather copy);
  prefill chunks through SDPA exactly as `sdpa` does.
- `sdpa`: PyTorch `scaled_dot_product_attention` everywhere; the fallback on any device and the
  reference the `cpu` kernel is tested against.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from selftrain.sampler import native


@dataclass
class PrefillChunk:
    start: int  # first row of this chunk in the flat token batch
    length: int  # query tokens in this chunk
    context_len: int  # keys visible to the last query (earlier tokens + this chunk)
    block_table: torch.Tensor  # [blocks] long, the blocks holding positions < context_len
    mask: torch.Tensor | None  # [length, context_len] 0 / -inf, None when causal from position 0


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] long: cache slot (block * block_size + offset) of each new token
    num_decode: int = 0
    decode_block_tables: torch.Tensor | None = None  # [B, max_blocks] (long for sdpa, int32 for flash)
    decode_context_lens: torch.Tensor | None = None  # [B] int32 keys per decode row
    decode_context_lens_long: torch.Tensor | None = None  # the same as int64 (cpu backend)
    decode_mask: torch.Tensor | None = None  # [B, 1, 1, max_blocks * block_size] 0 / -inf (sdpa)
    prefills: list[PrefillChunk] = field(default_factory=list)
    # flash-attn varlen view of the prefill chunks
    cu_seqlens_q: torch.Tensor | None = None
    cu_seqlens_k: torch.Tensor | None = None
    max_seqlen_q: int = 0
    max_seqlen_k: int = 0
    prefill_block_tables: torch.Tensor | None = None
    sliding_window: int | None = None


def store_kv(layer_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor) -> None:
    """Write the new tokens' K and V into their cache slots."""
    kv_heads, head_dim = k.shape[1], k.shape[2]
    layer_cache[0].view(-1, kv_heads, head_dim).index_copy_(0, slots, k)
    layer_cache[1].view(-1, kv_heads, head_dim).index_copy_(0, slots, v)


class SdpaBackend:
    name = "sdpa"
    needs_masks = True  # additive masks for prefill chunks that start after position 0
    needs_decode_mask = True
    graph_safe = False  # decode steps may be captured in a CUDA graph

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_cache: torch.Tensor,
               meta: AttentionMetadata, scale: float) -> torch.Tensor:
        store_kv(layer_cache, k, v, meta.slot_mapping)
        T, heads, head_dim = q.shape
        kv_heads = k.shape[1]
        if meta.num_decode == T and not meta.prefills:
            return self._decode(q, layer_cache, meta, scale, kv_heads)
        out = torch.empty_like(q)
        if meta.num_decode:
            out[: meta.num_decode] = self._decode(q[: meta.num_decode], layer_cache, meta, scale, kv_heads)
        for c in meta.prefills:
            qc = q[c.start : c.start + c.length].transpose(0, 1).unsqueeze(0)  # [1, heads, len, hd]
            if c.mask is None:
                # a chunk from position 0: its own K/V are all the keys there are
                kc = k[c.start : c.start + c.length].transpose(0, 1).unsqueeze(0)
                vc = v[c.start : c.start + c.length].transpose(0, 1).unsqueeze(0)
                o = F.scaled_dot_product_attention(qc, kc, vc, is_causal=True, scale=scale, enable_gqa=True)
            else:
                kc = layer_cache[0][c.block_table].flatten(0, 1)[: c.context_len]
                vc = layer_cache[1][c.block_table].flatten(0, 1)[: c.context_len]
                o = F.scaled_dot_product_attention(
                    qc, kc.transpose(0, 1).unsqueeze(0), vc.transpose(0, 1).unsqueeze(0),
                    attn_mask=c.mask, scale=scale, enable_gqa=True,
                )
            out[c.start : c.start + c.length] = o[0].transpose(0, 1)
        return out

    @staticmethod
    def _decode(q: torch.Tensor, layer_cache: torch.Tensor, meta: AttentionMetadata, scale: float,
                kv_heads: int) -> torch.Tensor:
        # One query per row: the query heads sharing a KV head become that head's query rows,
        # so GQA needs no repeated K/V. Keys are gathered block by block from the pool.
        B, heads, head_dim = q.shape
        group = heads // kv_heads
        kv = layer_cache[:, meta.decode_block_tables].flatten(2, 3)  # [2, B, S, kv_heads, hd], one gather
        keys, values = kv[0].transpose(1, 2), kv[1].transpose(1, 2)  # [B, kv_heads, S, hd]
        qg = q.view(B, kv_heads, group, head_dim)
        o = F.scaled_dot_product_attention(qg, keys, values, attn_mask=meta.decode_mask, scale=scale)
        return o.reshape(B, heads, head_dim)


class CpuPagedBackend(SdpaBackend):
    """Decode rows through `selftrain._paged_attention` (fp32 CPU tensors), prefill through SDPA."""

    name = "cpu"
    needs_decode_mask = False

    def __init__(self) -> None:
        self._kernel = native.load("_paged_attention").decode

    def _decode(self, q: torch.Tensor, layer_cache: torch.Tensor, meta: AttentionMetadata, scale: float,
                kv_heads: int) -> torch.Tensor:
        if q.dtype != torch.float32 or layer_cache.dtype != torch.float32:
            raise TypeError(f"the cpu attention backend runs in float32, got {q.dtype} / {layer_cache.dtype}")
        q = q.contiguous()
        out = torch.empty_like(q)
        keys, values = layer_cache[0], layer_cache[1]  # [blocks, block_size, kv_heads, head_dim] each
        tables, ctx = meta.decode_block_tables, meta.decode_context_lens_long
        rows, heads, head_dim = q.shape
        # the kernel reads raw memory: make sure every buffer has the layout it assumes
        for name, t, dtype in (("block tables", tables, torch.long), ("context lengths", ctx, torch.long),
                               ("KV cache", layer_cache, torch.float32)):
            if t.dtype != dtype or not t.is_contiguous() or t.device.type != "cpu":
                raise TypeError(f"cpu attention backend: {name} must be contiguous {dtype} on the CPU")
        if tables.shape[0] != rows or ctx.shape != (rows,):
            raise ValueError(f"cpu attention backend: {rows} rows but tables {tuple(tables.shape)}, "
                             f"context lengths {tuple(ctx.shape)}")
        # the pointers stay valid: every tensor is held by a local until the call returns
        self._kernel(
            q.data_ptr(), keys.data_ptr(), values.data_ptr(), out.data_ptr(), tables.data_ptr(),
            ctx.data_ptr(), rows, tables.shape[1], heads, kv_heads, head_dim, keys.shape[1],
            meta.sliding_window or 0, scale, torch.get_num_threads(),
        )
        return out


class TritonPagedBackend(SdpaBackend):
    """Decode rows through the Triton kernel of `triton_decode.py`, prefill through SDPA."""

    name = "triton"
    needs_decode_mask = False
    graph_safe = True

    def __init__(self) -> None:
        from selftrain.sampler.triton_decode import paged_decode_attention

        self._kernel = paged_decode_attention

    def _decode(self, q: torch.Tensor, layer_cache: torch.Tensor, meta: AttentionMetadata, scale: float,
                kv_heads: int) -> torch.Tensor:
        return self._kernel(q, layer_cache[0], layer_cache[1], meta.decode_block_tables,
                            meta.decode_context_lens, scale, meta.sliding_window)


class FlashAttnBackend:
    """flash-attn 2 paged kernels (CUDA only; not installable on the CPU dev machines)."""

    name = "flash"
    needs_masks = False
    needs_decode_mask = False
    graph_safe = True

    def __init__(self) -> None:
        from flash_attn import flash_attn_varlen_func, flash_attn_with_kvcache

        self._varlen = flash_attn_varlen_func
        self._with_kvcache = flash_attn_with_kvcache

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_cache: torch.Tensor,
               meta: AttentionMetadata, scale: float) -> torch.Tensor:
        store_kv(layer_cache, k, v, meta.slot_mapping)
        window = (meta.sliding_window - 1, 0) if meta.sliding_window else (-1, -1)
        out = torch.empty_like(q)
        nd = meta.num_decode
        if nd:
            o = self._with_kvcache(
                q[:nd].unsqueeze(1), layer_cache[0], layer_cache[1],
                cache_seqlens=meta.decode_context_lens, block_table=meta.decode_block_tables,
                softmax_scale=scale, causal=True, window_size=window,
            )
            out[:nd] = o.squeeze(1)
        if meta.prefills:
            o = self._varlen(
                q[nd:], layer_cache[0], layer_cache[1],
                cu_seqlens_q=meta.cu_seqlens_q, cu_seqlens_k=meta.cu_seqlens_k,
                max_seqlen_q=meta.max_seqlen_q, max_seqlen_k=meta.max_seqlen_k,
                softmax_scale=scale, causal=True, window_size=window, block_table=meta.prefill_block_tables,
            )
            out[nd:] = o
        return out


class XformersBackend:
    """xformers memory-efficient attention (CUDA); K/V gathered from the blocks per sequence."""

    name = "xformers"
    needs_masks = False
    needs_decode_mask = False
    graph_safe = False

    def __init__(self) -> None:
        import xformers.ops as xops
        from xformers.ops import fmha

        self._attn = xops.memory_efficient_attention
        self._mask = fmha.attn_bias.BlockDiagonalCausalFromBottomRightMask

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_cache: torch.Tensor,
               meta: AttentionMetadata, scale: float) -> torch.Tensor:
        store_kv(layer_cache, k, v, meta.slot_mapping)
        heads, kv_heads = q.shape[1], k.shape[1]
        keys, values, q_lens, k_lens = [], [], [], []
        if meta.num_decode:
            lens = meta.decode_context_lens.tolist()
            for row, n in enumerate(lens):
                bt = meta.decode_block_tables[row]
                keys.append(layer_cache[0][bt].flatten(0, 1)[:n])
                values.append(layer_cache[1][bt].flatten(0, 1)[:n])
            q_lens += [1] * meta.num_decode
            k_lens += lens
        for c in meta.prefills:
            keys.append(layer_cache[0][c.block_table].flatten(0, 1)[: c.context_len])
            values.append(layer_cache[1][c.block_table].flatten(0, 1)[: c.context_len])
            q_lens.append(c.length)
            k_lens.append(c.context_len)
        kk = torch.cat(keys).repeat_interleave(heads // kv_heads, dim=1)
        vv = torch.cat(values).repeat_interleave(heads // kv_heads, dim=1)
        bias = self._mask.from_seqlens(q_seqlen=q_lens, kv_seqlen=k_lens)
        o = self._attn(q.unsqueeze(0), kk.unsqueeze(0), vv.unsqueeze(0), attn_bias=bias, scale=scale)
        return o[0]


BACKENDS = {
    "flash": FlashAttnBackend, "xformers": XformersBackend, "triton": TritonPagedBackend,
    "cpu": CpuPagedBackend, "sdpa": SdpaBackend,
}


def available_backends(device: torch.device, dtype: torch.dtype = torch.float32) -> list[str]:
    """Backends that can run on `device` in `dtype`, best first."""
    names = []
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        names.append("flash")
    has_triton = importlib.util.find_spec("triton") is not None
    if device.type == "cuda":
        if has_triton:  # reads K/V in place and can be graph-captured; xformers gathers per sequence
            names.append("triton")
        if importlib.util.find_spec("xformers") is not None:
            names.append("xformers")
    has_kernel = native.available("_paged_attention")
    if device.type == "cpu" and dtype == torch.float32 and has_kernel:
        names.append("cpu")
    names.append("sdpa")
    # off CUDA only Triton's interpreter runs the kernel (how the tests run it): never the default
    if device.type != "cuda" and has_triton and os.environ.get("TRITON_INTERPRET") == "1":
        names.append("triton")
    return names


def make_backend(
    name: str | None, device: torch.device, dtype: torch.dtype = torch.float32
) -> SdpaBackend | FlashAttnBackend | XformersBackend:
    """The named backend, or the best available one for `device` and `dtype` when `name` is None."""
    options = available_backends(device, dtype)
    if name is None:
        name = options[0]
    if name not in BACKENDS:
        raise ValueError(f"attention_backend must be one of {', '.join(BACKENDS)} or None, got {name!r}")
    if name not in options:
        raise ValueError(
            f"attention backend {name!r} is not available on {device} in {dtype} (available: {options})"
        )
    return BACKENDS[name]()
