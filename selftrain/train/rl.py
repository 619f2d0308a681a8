"""The online-RL loss: group-relative advantages and the clipped policy-gradient objective.

One batch holds groups of G responses to the same prompt. Each response i gets one scalar reward
r_i and from it one advantage A_i shared by all its tokens:

- "grpo"    (Shao et al. 2024, DeepSeekMath):      A_i = (r_i - mean(r)) / (std(r) + eps)
- "dr_grpo" (Liu et al. 2025, Understanding R1-Zero-like training): A_i = r_i - mean(r)
- "rloo"    (Ahmadian et al. 2024, Back to Basics):  A_i = r_i - mean_{j != i} r_j
                                                         = G / (G - 1) * (r_i - mean(r))

std is the sample standard deviation (Bessel's correction, torch.std's default). A group whose
rewards are all equal carries no signal: its advantages are exactly 0 (not a rounding residue)
and it is counted (`zero_adv_groups`).

Per token t of response i, with ratio rho = exp(logp - logp_old) against the policy that sampled
the batch (PPO's clipped surrogate; clip_low / clip_high may differ, DAPO's "clip-higher",
Yu et al. 2025):

    l_t = -min(rho A_i, clip(rho, 1 - clip_low, 1 + clip_high) A_i) + beta * k3_t
    k3_t = exp(ref - logp) - (ref - logp) - 1        (GRPO's KL estimator; beta = 0: no reference)

and the batch loss is sum_t w_t l_t with the aggregation's weights:

- "token"    (DAPO's token-level mean):     w_t = 1 / (tokens in the batch)
- "sequence" (GRPO's per-response mean):    w_t = 1 / (|o_i| * responses in the batch)
- "constant" (Dr. GRPO's fixed normaliser): w_t = 1 / (responses in the batch * max_new_tokens)

The weights are computed over the whole (global) batch, so a batch split into micro-batches, or
over ranks, gives the loss and gradient of the batch in one piece. docs/rl.md has the details.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ADVANTAGES = ("grpo", "dr_grpo", "rloo")
AGGREGATIONS = ("token", "sequence", "constant")


@dataclass
class RLLossConfig:
    """The loss settings of one online-RL block (defaults: GRPO as in DeepSeekMath, beta off)."""

    advantage: str = "grpo"  # grpo | dr_grpo | rloo
    aggregation: str = "sequence"  # token | sequence | constant (Dr. GRPO: sum / (B * max_new_tokens))
    clip_low: float = 0.2  # ratio clipped below at 1 - clip_low
    clip_high: float = 0.2  # ... and above at 1 + clip_high (DAPO's clip-higher: 0.28)
    beta: float = 0.0  # KL-to-reference coefficient (k3 estimator); 0 = no reference model
    std_eps: float = 1e-4  # added to the group std (grpo only)

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ValueError(f"{type(self).__name__}.{name}={getattr(self, name)!r}: {what}")

        need(self.advantage in ADVANTAGES, "advantage", f"must be one of {', '.join(ADVANTAGES)}")
        need(self.aggregation in AGGREGATIONS, "aggregation", f"must be one of {', '.join(AGGREGATIONS)}")
        need(0.0 <= self.clip_low < 1.0, "clip_low", "must be in [0, 1)")
        need(self.clip_high >= 0.0, "clip_high", "must be >= 0")
        need(self.beta >= 0.0, "beta", "must be >= 0 (0 = no KL term)")
        need(self.std_eps > 0.0, "std_eps", "must be > 0")


def group_advantages(rewards: torch.Tensor, method: str, std_eps: float = 1e-4) -> tuple[torch.Tensor, int]:
    """Advantages [n_groups, G] of rewards [n_groups, G] and the number of all-equal-reward groups
    (whose advantages are set to exactly 0)."""
    if method not in ADVANTAGES:
        raise ValueError(f"advantage={method!r}: expected one of {', '.join(ADVANTAGES)}")
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be [n_groups, G] with G >= 2, got shape {tuple(rewards.shape)}")
    r = rewards.double()
    g = r.shape[1]
    centred = r - r.mean(dim=1, keepdim=True)
    if method == "grpo":
        adv = centred / (r.std(dim=1, keepdim=True) + std_eps)
    elif method == "dr_grpo":
        adv = centred
    else:  # rloo: r_i - (sum_j r_j - r_i) / (G - 1)
        adv = centred * (g / (g - 1))
    flat = (r == r[:, :1]).all(dim=1)
    adv = torch.where(flat[:, None], torch.zeros_like(adv), adv)
    return adv.to(rewards.dtype if rewards.is_floating_point() else torch.float32), int(flat.sum())


def token_weights(
    seq_of_token: torch.Tensor,
    seq_lengths: torch.Tensor,
    aggregation: str,
    n_tokens: int,
    n_seqs: int,
    max_new_tokens: int,
) -> torch.Tensor:
    """w_t of the aggregation for tokens whose response is `seq_of_token` [N] (indices into
    `seq_lengths`, the responses' token counts); `n_tokens` / `n_seqs` count the whole batch."""
    if aggregation == "token":
        return torch.full(seq_of_token.shape, 1.0 / max(n_tokens, 1), dtype=torch.float32)
    if aggregation == "sequence":
        return 1.0 / (seq_lengths[seq_of_token].float().clamp(min=1) * n_seqs)
    if aggregation == "constant":
        return torch.full(seq_of_token.shape, 1.0 / (n_seqs * max_new_tokens), dtype=torch.float32)
    raise ValueError(f"aggregation={aggregation!r}: expected one of {', '.join(AGGREGATIONS)}")


def clipped_token_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    weights: torch.Tensor,
    cfg: RLLossConfig,
    ref_logp: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """sum_t w_t l_t (module docstring) for per-token tensors [N]: the policy's log-probs (with
    grad), the sampling policy's, each token's advantage, its weight, and the reference's log-probs
    (needed when cfg.beta > 0). Returns the loss and, for logging, plain sums over the tokens of
    `clipped` (tokens where min() kept the clipped branch) and `kl` (k3, when ref_logp is given),
    and the weighted surrogate alone (`pg_loss`)."""
    if cfg.beta > 0 and ref_logp is None:
        raise ValueError("beta > 0 needs the reference model's per-token log-probs (ref_logp)")
    ratio = torch.exp(logp - old_logp)
    clipped = ratio.clamp(1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    surrogate = -torch.minimum(ratio * advantages, clipped * advantages)
    per_token = surrogate
    w = weights.to(logp.dtype)
    stats: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        # a token is clipped when the clipped branch is the one min() keeps and it differs
        is_clipped = (clipped * advantages < ratio * advantages) & (clipped != ratio)
        stats["clipped"] = is_clipped.sum().float()
        stats["pg_loss"] = (surrogate.detach() * w).sum()
    if ref_logp is not None:
        delta = ref_logp - logp
        kl = torch.exp(delta) - delta - 1.0
        stats["kl"] = kl.detach().sum()
        if cfg.beta > 0:
            per_token = per_token + cfg.beta * kl
    return (per_token * w).sum(), stats
