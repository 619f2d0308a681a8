"""Fused kernels: per-token log-probs through the LM head, the DPO/RPO loss, per-sequence sums.

Triton on CUDA, a chunked torch implementation of the same math elsewhere; SELFTRAIN_KERNELS
(auto|triton|torch) forces a path. docs/kernels.md explains dispatch, chunk sizes and numerics.
"""

from ._dispatch import choose_backend
from .dpo import dpo_loss
from .logprob import fused_logprobs
from .sequence import lm_head_weight, sequence_logprob_sums

__all__ = ["choose_backend", "dpo_loss", "fused_logprobs", "lm_head_weight", "sequence_logprob_sums"]
