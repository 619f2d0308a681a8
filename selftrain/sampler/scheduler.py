"""Continuous batching: which sequences run this step, and how many tokens each.

Every step: all running sequences that need one token (decode rows) go first; then running
sequences still in prefill get chunks from what is left of the token budget; then waiting
sequences are admitted (FIFO, preempted ones first) while budget, sequence slots and blocks
last. When the pool runs out of blocks for a decode row, the most recently admitted running
sequence is preempted: its blocks are freed and it goes back to the front of the queue, to be
recomputed (its tokens so far are kept; only their K/V are rebuilt).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from selftrain.sampler.block_manager import BlockManager
from selftrain.sampler.config import EngineConfig
from selftrain.sampler.sequence import Sequence, Status


@dataclass
class EngineStats:
    """Counters over the life of a Sampler (tests and benchmarks read them)."""

    prefill_tokens: int = 0  # prompt / recompute tokens run through the model
    decode_tokens: int = 0  # single newest tokens run through the model
    generated_tokens: int = 0  # tokens sampled (each sample of each prompt)
    preemptions: int = 0
    steps: int = 0
    cow_copies: int = 0
    # steps made only of decode rows (for decode throughput and roofline numbers)
    decode_steps: int = 0
    decode_step_tokens: int = 0
    decode_step_context: int = 0  # keys read, summed over rows
    decode_step_seconds: float = 0.0


@dataclass
class Batch:
    items: list[tuple[Sequence, int]] = field(default_factory=list)  # (sequence, tokens to run)
    copies: list[tuple[int, int]] = field(default_factory=list)  # copy-on-write (src, dst) blocks

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.items)


class Scheduler:
    def __init__(self, config: EngineConfig, blocks: BlockManager, stats: EngineStats):
        self.config = config
        self.blocks = blocks
        self.stats = stats
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        # keep a few blocks free when admitting new work, so running rows rarely get preempted
        self.watermark = max(1, blocks.num_blocks // 100)

    def add(self, seq: Sequence) -> None:
        seq.status = Status.WAITING
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, seq: Sequence) -> None:
        seq.status = Status.FINISHED
        self.blocks.release(seq)
        self.running.remove(seq)

    def join(self, seqs: list[Sequence]) -> None:
        """Forked siblings start running right away (their prompt K/V is shared)."""
        for s in seqs:
            s.status = Status.RUNNING
        self.running.extend(seqs)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.release(seq)
        seq.num_computed = 0
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
        self.stats.preemptions += 1

    def schedule(self) -> Batch:
        while True:
            batch = self._try_schedule()
            if batch.items or not self.running:
                break
            # every running sequence is stuck mid-prefill waiting for blocks: free the newest
            self._preempt(self.running[-1])
        if not batch.items and self.waiting:
            seq = self.waiting[0]
            raise RuntimeError(
                f"KV pool of {self.blocks.num_blocks} blocks x {self.blocks.block_size} tokens cannot hold "
                f"one sequence of {len(seq.token_ids)} tokens; raise kv_cache_tokens"
            )
        return batch

    def _try_schedule(self) -> Batch:
        batch = Batch()
        budget = self.config.max_num_batched_tokens
        # 1. decode rows; on a shortage, preempt from the newest end of `running`
        i = 0
        while i < len(self.running):
            seq = self.running[i]
            if seq.num_uncomputed != 1:
                i += 1
                continue
            copies = self.blocks.reserve(seq, 1)
            while copies is None:
                victim = self.running[-1]
                self._preempt(victim)
                if victim is seq:
                    break
                copies = self.blocks.reserve(seq, 1)
            if copies is None:
                break  # seq itself was the newest; everything after it is preempted already
            batch.items.append((seq, 1))
            batch.copies += copies
            budget -= 1
            i += 1
        # 2. running sequences part-way through their prefill: chunks from the leftover budget
        for seq in self.running:
            if seq.num_uncomputed <= 1 or budget <= 0:
                continue
            n = min(seq.num_uncomputed, budget)
            copies = self.blocks.reserve(seq, n)
            if copies is None:
                continue
            batch.items.append((seq, n))
            batch.copies += copies
            budget -= n
        # 3. admit waiting sequences. A leader admitted earlier brings its n - 1 siblings once its
        # prompt is done, so they hold seats already: without counting them, a step could admit
        # max_num_seqs leaders and decode n times that many rows later.
        seats = len(self.running) + sum(s.pending_samples for s in self.running)
        while self.waiting and budget > 0:
            seq = self.waiting[0]
            group = 1 + seq.pending_samples
            if self.running and seats + group > self.config.max_num_seqs:
                break
            n = min(seq.num_uncomputed, budget)
            if self.running and self.blocks.num_free - self.blocks.blocks_for(n) < self.watermark:
                break
            copies = self.blocks.reserve(seq, n)
            if copies is None:
                break
            self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
            seats += group
            batch.items.append((seq, n))
            batch.copies += copies
            budget -= n
        return batch
