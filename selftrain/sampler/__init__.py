"""The batched sampler: paged KV cache, prefix sharing, continuous batching (see docs/sampler.md)."""

from selftrain.sampler.config import EngineConfig, SamplingParams
from selftrain.sampler.engine import Completion
from selftrain.sampler.sampler import Sampler
from selftrain.sampler.sampling import counter_uniform, sample_tokens
from selftrain.sampler.scheduler import EngineStats

__all__ = ["Completion", "EngineConfig", "EngineStats", "Sampler", "SamplingParams", "counter_uniform",
           "sample_tokens"]
