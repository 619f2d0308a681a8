"""Engine and per-request settings, validated when they are built."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineConfig:
    """How the engine uses memory and compute; fixed for the life of a `Sampler`.

    max_num_seqs: most sequences decoded together in one step (rows of the decode batch).
    max_num_batched_tokens: token budget of one step (decode rows + prefill chunk tokens);
        a prompt longer than what is left is prefilled in chunks over several steps.
    kv_cache_tokens: size of the paged KV pool in tokens (rounded up to whole blocks).
    block_size: tokens per KV block.
    """

    max_num_seqs: int = 128
    max_num_batched_tokens: int = 1024
    kv_cache_tokens: int = 32768
    block_size: int = 16
    max_model_len: int = 4096

    def __post_init__(self) -> None:
        names = ("max_num_seqs", "max_num_batched_tokens", "kv_cache_tokens", "block_size", "max_model_len")
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.max_num_batched_tokens < self.max_num_seqs:
            # every running sequence must be able to decode its one token in the same step
            self.max_num_batched_tokens = self.max_num_seqs

    @property
    def num_blocks(self) -> int:
        return -(-self.kv_cache_tokens // self.block_size)


@dataclass(frozen=True)
class SamplingParams:
    """One `generate` call's sampling settings (shared by all of its prompts)."""

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # keep the k largest logits (ties kept) before top-p; 0 = off
    max_new_tokens: int = 512
    stop: tuple[str, ...] = ()
    seed: int = 0
    logprobs: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or isinstance(self.n, bool) or self.n < 1:
            raise ValueError(f"n must be an int >= 1, got {self.n!r}")
        if not isinstance(self.temperature, (int, float)) or not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0 = off), got {self.top_k!r}")
        if not isinstance(self.max_new_tokens, int) or isinstance(self.max_new_tokens, bool) \
                or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise ValueError(f"stop strings must be non-empty str, got {s!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0
