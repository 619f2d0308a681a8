"""The paged KV pool's bookkeeping: free blocks, reference counts, copy-on-write."""

from __future__ import annotations

from collections import deque

from selftrain.sampler.sequence import Sequence


class BlockManager:
    """Hands out fixed-size blocks of KV slots. Blocks shared by the samples of one prompt are
    reference counted; a sequence about to write into a shared block gets a private copy."""

    def __init__(self, num_blocks: int, block_size: int):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.refcount = [0] * num_blocks
        self.free: deque[int] = deque(range(num_blocks))

    @property
    def num_free(self) -> int:
        return len(self.free)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _take(self) -> int:
        block = self.free.popleft()
        self.refcount[block] = 1
        return block

    def share(self, blocks: list[int]) -> None:
        for b in blocks:
            self.refcount[b] += 1

    def release(self, seq: Sequence) -> None:
        for b in seq.block_table:
            self.refcount[b] -= 1
            if self.refcount[b] == 0:
                self.free.append(b)
        seq.block_table = []

    def reserve(self, seq: Sequence, num_tokens: int) -> list[tuple[int, int]] | None:
        """Make room for `seq` to write its next `num_tokens` tokens. Returns the (src, dst)
        block copies that copy-on-write needs, or None (nothing changed) if the pool is short."""
        start = seq.num_computed
        first_block = start // self.block_size
        cow = first_block < len(seq.block_table) and self.refcount[seq.block_table[first_block]] > 1
        new = self.blocks_for(start + num_tokens) - len(seq.block_table)
        if new + int(cow) > self.num_free:
            return None
        copies = []
        if cow:
            # only the prompt's last, partly filled block can be shared and written to
            src = seq.block_table[first_block]
            dst = self._take()
            self.refcount[src] -= 1
            seq.block_table[first_block] = dst
            copies.append((src, dst))
        for _ in range(new):
            seq.block_table.append(self._take())
        return copies
