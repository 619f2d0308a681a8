"""Fused kernels (temporary: dispatches to the torch references until the fused paths land)."""

from .reference import dpo_loss_reference as dpo_loss  # noqa: F401
from .reference import logprobs_reference as fused_logprobs  # noqa: F401
