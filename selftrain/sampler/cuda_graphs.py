"""CUDA graphs for decode-only steps with a graph-safe backend (flash, triton; GPU only).

A decode step of a 135M-parameter model is hundreds of small kernels; replaying them as one
graph removes the launch cost that otherwise dominates. One graph is captured per batch-size
bucket; a step with B rows replays the smallest bucket >= B with the extra rows pointed at the
runner's scratch block, whose outputs are ignored. Runs only where CUDA is (tests/test_sampler_cuda.py).
"""

from __future__ import annotations

from typing import Any

import torch

from selftrain.sampler.attention import AttentionMetadata


class DecodeGraphs:
    def __init__(self, runner: Any, max_batch: int):
        self.runner = runner
        dev = runner.device
        cfg = runner.config
        self.width = -(-cfg.max_model_len // cfg.block_size)  # block-table columns
        self.buckets = sorted({b for b in (1, 2, 4, 8) if b <= max_batch} | set(range(16, max_batch + 1, 16))
                              | {max_batch})
        top = self.buckets[-1]
        self.input_ids = torch.zeros(top, dtype=torch.long, device=dev)
        self.positions = torch.zeros(top, dtype=torch.long, device=dev)
        self.slots = torch.zeros(top, dtype=torch.long, device=dev)
        self.ctx = torch.ones(top, dtype=torch.int32, device=dev)
        self.tables = torch.zeros(top, self.width, dtype=torch.int32, device=dev)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = None
        self.replays = 0  # decode steps served by a graph (the tests check graphs are used)
        for b in reversed(self.buckets):  # largest first, so smaller graphs reuse its memory pool
            self._capture(b)

    def fits(self, batch: int) -> bool:
        return batch <= self.buckets[-1]

    def _meta(self, b: int) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slots[:b], num_decode=b, decode_block_tables=self.tables[:b],
            decode_context_lens=self.ctx[:b], sliding_window=self.runner.model.args.sliding_window,
        )

    @torch.inference_mode()
    def _capture(self, b: int) -> None:
        r = self.runner
        self._reset(0)
        meta = self._meta(b)
        run = lambda: r.model.forward(self.input_ids[:b], self.positions[:b], r.kv_cache, meta, r.backend)
        run()  # warm-up outside the graph (kernel selection, allocations)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = run()
        if self.pool is None:
            self.pool = graph.pool()
        self.graphs[b] = (graph, out)

    def _reset(self, start: int) -> None:
        # padded rows: one key, written to and read from the scratch block only
        scratch = self.runner.scratch_block
        self.slots[start:] = scratch * self.runner.block_size
        self.ctx[start:] = 1
        self.tables[start:] = scratch
        self.input_ids[start:] = 0
        self.positions[start:] = 0

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        b = meta.num_decode
        bucket = next(x for x in self.buckets if x >= b)
        self._reset(b)
        self.input_ids[:b] = input_ids
        self.positions[:b] = positions
        self.slots[:b] = meta.slot_mapping
        self.ctx[:b] = meta.decode_context_lens
        w = meta.decode_block_tables.shape[1]
        self.tables[:b, :w] = meta.decode_block_tables
        self.tables[:b, w:] = 0
        graph, out = self.graphs[bucket]
        graph.replay()
        self.replays += 1
        return out[:b]
