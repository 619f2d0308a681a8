"""Plain-torch references for the fused kernels: the ground truth every kernel is tested against.

They materialise the full [N, V] logits, so they are for tests and small inputs only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def logprobs_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    temperature: float = 1.0,
) -> torch.Tensor:
    """log softmax(hidden @ weight.T / temperature)[targets], 0 where targets == ignore_index."""
    logits = (hidden.float() @ weight.float().t()) / temperature
    logp = F.log_softmax(logits, dim=-1)
    mask = targets != ignore_index
    safe = torch.where(mask, targets, torch.zeros_like(targets))
    out = logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, out, torch.zeros_like(out))


def dpo_loss_reference(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    rpo_alpha: float = 0.0,
    chosen_nll: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sigmoid DPO loss (with conservative label smoothing) plus rpo_alpha * mean chosen NLL."""
    chosen_reward = beta * (policy_chosen.float() - ref_chosen.float())
    rejected_reward = beta * (policy_rejected.float() - ref_rejected.float())
    margin = chosen_reward - rejected_reward
    losses = -(1 - label_smoothing) * F.logsigmoid(margin) - label_smoothing * F.logsigmoid(-margin)
    loss = losses.mean()
    if rpo_alpha:
        if chosen_nll is None:
            raise ValueError("rpo_alpha > 0 needs chosen_nll (per-sequence NLL of the chosen response)")
        loss = loss + rpo_alpha * chosen_nll.float().mean()
    metrics = {
        "rewards/chosen": chosen_reward.detach().mean(),
        "rewards/rejected": rejected_reward.detach().mean(),
        "rewards/margin": margin.detach().mean(),
        "rewards/accuracy": (margin.detach() > 0).float().mean(),
    }
    return loss, metrics
