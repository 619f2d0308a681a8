"""The sigmoid DPO loss with conservative label smoothing and the RPO term, plus its metrics.

    margin_i = beta * ((policy_chosen_i - ref_chosen_i) - (policy_rejected_i - ref_rejected_i))
    loss     = mean_i[ -(1 - s) log sigmoid(margin_i) - s log sigmoid(-margin_i) ]
               + rpo_alpha * mean_i chosen_nll_i

Inputs are per-sequence log-prob sums [B] (see sequence_logprob_sums). chosen_nll is the
per-sequence NLL of the chosen response; the convention of this project is the mean per token,
chosen_nll = -sequence_logprob_sums(logp, mask, mean=True) (as in the RPO paper; a sum would weight
long answers more). Triton on CUDA (one launch computes loss, per-pair gradient and metrics), the
torch reference elsewhere; SELFTRAIN_KERNELS forces one (see _dispatch.py).
"""

from __future__ import annotations

import math

import torch

from ._dispatch import choose_backend
from .reference import dpo_loss_reference

METRIC_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy")


def _check(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    rpo_alpha: float,
    chosen_nll: torch.Tensor | None,
    label_smoothing: float,
) -> None:
    named = {
        "policy_chosen": policy_chosen,
        "policy_rejected": policy_rejected,
        "ref_chosen": ref_chosen,
        "ref_rejected": ref_rejected,
    }
    if chosen_nll is not None:
        named["chosen_nll"] = chosen_nll
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"dpo_loss: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 1:
            raise ValueError(
                f"dpo_loss: {name} must be 1-D [B] (per-sequence sums), got shape {tuple(t.shape)}"
            )
        if not t.is_floating_point():
            raise TypeError(f"dpo_loss: {name} must be a float tensor, got {t.dtype}")
        if t.shape != policy_chosen.shape:
            raise ValueError(
                f"dpo_loss: {name} has shape {tuple(t.shape)} but policy_chosen has "
                f"{tuple(policy_chosen.shape)}"
            )
        if t.device != policy_chosen.device:
            raise ValueError(
                f"dpo_loss: {name} is on {t.device} but policy_chosen is on {policy_chosen.device}"
            )
    if policy_chosen.shape[0] == 0:
        raise ValueError("dpo_loss: policy_chosen is empty (B = 0)")
    if policy_rejected.dtype != policy_chosen.dtype:
        raise TypeError(
            f"dpo_loss: policy_rejected dtype {policy_rejected.dtype} differs from policy_chosen "
            f"{policy_chosen.dtype}"
        )
    if ref_rejected.dtype != ref_chosen.dtype:
        raise TypeError(
            f"dpo_loss: ref_rejected dtype {ref_rejected.dtype} differs from ref_chosen {ref_chosen.dtype}"
        )
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise ValueError(f"dpo_loss: beta must be a finite number > 0, got {beta!r}")
    if not (isinstance(label_smoothing, (int, float)) and 0.0 <= label_smoothing <= 0.5):
        raise ValueError(f"dpo_loss: label_smoothing must be in [0, 0.5], got {label_smoothing!r}")
    if not (isinstance(rpo_alpha, (int, float)) and math.isfinite(rpo_alpha) and rpo_alpha >= 0):
        raise ValueError(f"dpo_loss: rpo_alpha must be a finite number >= 0, got {rpo_alpha!r}")
    if rpo_alpha and chosen_nll is None:
        raise ValueError("dpo_loss: rpo_alpha > 0 needs chosen_nll (per-sequence NLL of the chosen response)")


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    rpo_alpha: float = 0.0,
    chosen_nll: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(scalar fp32 loss, metrics of detached fp32 scalars keyed by METRIC_KEYS). See module doc."""
    _check(
        policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, rpo_alpha, chosen_nll, label_smoothing
    )
    if choose_backend(policy_chosen.device) == "torch":
        return dpo_loss_reference(
            policy_chosen,
            policy_rejected,
            ref_chosen,
            ref_rejected,
            beta,
            rpo_alpha,
            chosen_nll,
            label_smoothing,
        )
    from ._triton import TritonDPO

    nll = chosen_nll.contiguous() if rpo_alpha else None
    out = TritonDPO.apply(
        policy_chosen.contiguous(),
        policy_rejected.contiguous(),
        ref_chosen.contiguous(),
        ref_rejected.contiguous(),
        nll,
        float(beta),
        float(label_smoothing),
        float(rpo_alpha),
    )
    metrics = {key: out[i + 1].detach() for i, key in enumerate(METRIC_KEYS)}
    return out[0], metrics
