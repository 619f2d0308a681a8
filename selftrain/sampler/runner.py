"""Turns a scheduled batch into flat model inputs plus attention metadata, runs the forward
pass, and returns the logits of the sequences that reached their last token.

Owns the KV pool: one tensor `[layers, 2, num_blocks + 1, block_size, kv_heads, head_dim]`.
The extra last block is scratch space that padded CUDA-graph rows write into.
"""

from __future__ import annotations

import torch

from selftrain.sampler.attention import AttentionMetadata, PrefillChunk
from selftrain.sampler.config import EngineConfig
from selftrain.sampler.model import Transformer
from selftrain.sampler.scheduler import Batch
from selftrain.sampler.sequence import Sequence


class ModelRunner:
    def __init__(self, model: Transformer, config: EngineConfig, backend: object, use_cuda_graphs: bool):
        self.model = model
        self.config = config
        self.backend = backend
        self.device = model.device
        a = model.args
        self.block_size = config.block_size
        self.scratch_block = config.num_blocks
        self.kv_cache = torch.zeros(
            a.num_layers, 2, config.num_blocks + 1, config.block_size, a.num_kv_heads, a.head_dim,
            dtype=model.dtype, device=self.device,
        )
        self.graphs = None
        if use_cuda_graphs and self.device.type == "cuda" and getattr(backend, "graph_safe", False):
            from selftrain.sampler.cuda_graphs import DecodeGraphs

            self.graphs = DecodeGraphs(self, max_batch=config.max_num_seqs)

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Copy-on-write: give a sequence its own copy of a shared block, in every layer."""
        src = torch.tensor([s for s, _ in copies], device=self.device)
        dst = torch.tensor([d for _, d in copies], device=self.device)
        self.kv_cache[:, :, dst] = self.kv_cache[:, :, src]

    def _additive(self, allowed: torch.Tensor) -> torch.Tensor:
        # a float mask built once per step; SDPA would otherwise convert a bool mask in every layer
        out = torch.zeros(allowed.shape, dtype=self.model.dtype, device=self.device)
        return out.masked_fill_(~allowed, float("-inf"))

    def _slots(self, seq: Sequence, start: int, n: int) -> list[int]:
        bs, table = self.block_size, seq.block_table
        return [table[p // bs] * bs + p % bs for p in range(start, start + n)]

    def prepare(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, list[int]]:
        """Flat input ids, positions, attention metadata and, per item, the row of its last
        token (or -1 when the item's chunk does not reach the end of its tokens)."""
        bs = self.block_size
        dev = self.device
        window = self.model.args.sliding_window
        decode = [(s, n) for s, n in batch.items if n == 1]
        prefill = [(s, n) for s, n in batch.items if n > 1]
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        for s, _ in decode:  # one token each: the common case, kept to plain appends
            p = s.num_computed
            ids.append(s.token_ids[p])
            positions.append(p)
            slots.append(s.block_table[p // bs] * bs + p % bs)
        for s, n in prefill:
            start = s.num_computed
            ids += s.token_ids[start : start + n]
            positions += range(start, start + n)
            slots += self._slots(s, start, n)
        meta = AttentionMetadata(slot_mapping=torch.tensor(slots, device=dev), sliding_window=window)
        masks = getattr(self.backend, "needs_masks", True)
        table_dtype = torch.long if masks else torch.int32
        if decode:
            ctx = [s.num_computed + 1 for s, _ in decode]
            width = max(len(s.block_table) for s, _ in decode)
            tables = [s.block_table + [0] * (width - len(s.block_table)) for s, _ in decode]
            meta.num_decode = len(decode)
            meta.decode_block_tables = torch.tensor(tables, dtype=table_dtype, device=dev)
            ctx_t = torch.tensor(ctx, device=dev)
            meta.decode_context_lens = ctx_t.to(torch.int32)
            meta.decode_context_lens_long = ctx_t
            if getattr(self.backend, "needs_decode_mask", masks):
                key_pos = torch.arange(width * bs, device=dev)
                mask = key_pos[None, :] < ctx_t[:, None]
                if window:
                    mask &= key_pos[None, :] >= (ctx_t[:, None] - window)
                meta.decode_mask = self._additive(mask)[:, None, None, :]
        row = len(decode)
        q_lens, k_lens, tables = [], [], []
        for s, n in prefill:
            start = s.num_computed
            ctx = start + n
            table = s.block_table[: -(-ctx // bs)]
            mask = None
            if masks and (start > 0 or (window and ctx > window)):
                q_pos = torch.arange(start, ctx, device=dev)[:, None]
                k_pos = torch.arange(ctx, device=dev)[None, :]
                mask = k_pos <= q_pos
                if window:
                    mask &= k_pos > q_pos - window
            mask = None if mask is None else self._additive(mask)
            meta.prefills.append(PrefillChunk(row, n, ctx, torch.tensor(table, device=dev), mask))
            q_lens.append(n)
            k_lens.append(ctx)
            tables.append(table)
            row += n
        if prefill and not masks:
            width = max(len(t) for t in tables)
            meta.prefill_block_tables = torch.tensor(
                [t + [0] * (width - len(t)) for t in tables], dtype=torch.int32, device=dev
            )
            meta.cu_seqlens_q = torch.tensor([0] + q_lens, device=dev).cumsum(0).to(torch.int32)
            meta.cu_seqlens_k = torch.tensor([0] + k_lens, device=dev).cumsum(0).to(torch.int32)
            meta.max_seqlen_q, meta.max_seqlen_k = max(q_lens), max(k_lens)
        # the row holding each item's last token, for items whose chunk finishes their tokens
        last_rows = {}
        row = 0
        for s, n in decode + prefill:
            row += n
            if s.num_computed + n == len(s.token_ids):
                last_rows[id(s)] = row - 1
        rows = [last_rows.get(id(s), -1) for s, _ in batch.items]
        input_ids = torch.tensor(ids, device=dev)
        pos = torch.tensor(positions, device=dev)
        return input_ids, pos, meta, rows

    @torch.inference_mode()
    def run(self, batch: Batch) -> tuple[torch.Tensor | None, list[Sequence]]:
        """Run one step; returns fp32 logits [R, V] for the R sequences whose tokens are now all
        computed (they need a next token), in batch order, and advances `num_computed`."""
        if batch.copies:
            self.copy_blocks(batch.copies)
        input_ids, positions, meta, rows = self.prepare(batch)
        all_decode = meta.num_decode == len(batch.items)
        if self.graphs is not None and all_decode and self.graphs.fits(meta.num_decode):
            hidden = self.graphs.run(input_ids, positions, meta)
        else:
            hidden = self.model.forward(input_ids, positions, self.kv_cache, meta, self.backend)
        done = [(s, r) for (s, _), r in zip(batch.items, rows) if r >= 0]
        for s, n in batch.items:
            s.num_computed += n
        if not done:
            return None, []
        index = torch.tensor([r for _, r in done], device=self.device)
        return self.model.logits(hidden.index_select(0, index)), [s for s, _ in done]
