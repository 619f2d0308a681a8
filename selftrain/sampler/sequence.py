"""One sequence being generated: its tokens, its place in the KV pool, and its outputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Status(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """Sample `sample_index` of prompt `prompt_index` (a global index: it seeds the sampling).

    `num_computed` tokens have K/V in the cache; the rest of `token_ids` still has to be run
    (the prompt, a recompute after preemption, or the one token sampled last step).
    """

    seq_id: int
    prompt_index: int
    sample_index: int
    token_ids: list[int]
    num_prompt_tokens: int
    max_tokens: int  # most generated tokens (max_new_tokens capped by the context length)
    pending_samples: int = 0  # >0: the group leader; forks this many siblings after its prefill
    probe_ids: list[int] | None = None  # next_token_probs: read these ids' probabilities, then stop
    probe_probs: list[float] | None = None
    num_computed: int = 0
    block_table: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    stop_text_len: int | None = None  # where a stop string starts in the decoded text

    @property
    def num_generated(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_uncomputed(self) -> int:
        return len(self.token_ids) - self.num_computed

    @property
    def generated_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    def forked(self, seq_id: int, sample_index: int) -> "Sequence":
        """A sibling sharing this sequence's prompt blocks (the caller bumps their refcounts)."""
        return Sequence(
            seq_id=seq_id, prompt_index=self.prompt_index, sample_index=sample_index,
            token_ids=list(self.token_ids), num_prompt_tokens=self.num_prompt_tokens,
            max_tokens=self.max_tokens, num_computed=self.num_computed,
            block_table=list(self.block_table), status=self.status,
        )
