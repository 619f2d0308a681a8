"""Per-sequence sums of token log-probs (padded or packed batches) and the LM-head weight helper."""

from __future__ import annotations

import torch


def sequence_logprob_sums(
    token_logp: torch.Tensor,
    mask: torch.Tensor,
    seq_ids: torch.Tensor | None = None,
    num_seqs: int | None = None,
    *,
    mean: bool = False,
    return_counts: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Sum (or with mean=True, average per counted token) of token log-probs per sequence, fp32.

    Padded: token_logp [B, T], mask [B, T] (bool or 0/1; True = response token) -> [B].
    Packed: token_logp [N], mask [N], seq_ids [N] (int, in [0, num_seqs)) -> [num_seqs]; num_seqs
    defaults to seq_ids.max() + 1 (one host sync). Masked-out positions never contribute, even if
    they hold -inf/NaN. With return_counts=True also returns the number of counted tokens per
    sequence (int64). A sequence with no counted token has sum 0 (and mean 0). Differentiable
    w.r.t. token_logp.
    """
    if not isinstance(token_logp, torch.Tensor) or not token_logp.is_floating_point():
        raise TypeError("sequence_logprob_sums: token_logp must be a float tensor")
    if not isinstance(mask, torch.Tensor) or mask.shape != token_logp.shape:
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(
            f"sequence_logprob_sums: mask must have token_logp's shape {tuple(token_logp.shape)}, got {got}"
        )
    if mask.device != token_logp.device:
        raise ValueError(
            f"sequence_logprob_sums: mask is on {mask.device}, token_logp on {token_logp.device}"
        )
    keep = mask.bool() if mask.dtype != torch.bool else mask
    values = torch.where(keep, token_logp.float(), torch.zeros((), device=token_logp.device))
    if seq_ids is None:
        if token_logp.dim() != 2:
            raise ValueError(
                f"sequence_logprob_sums: padded token_logp must be [B, T] (or pass seq_ids for a "
                f"packed [N] batch), got shape {tuple(token_logp.shape)}"
            )
        if num_seqs is not None and num_seqs != token_logp.shape[0]:
            raise ValueError(
                f"sequence_logprob_sums: num_seqs={num_seqs} but the padded batch has "
                f"{token_logp.shape[0]} rows"
            )
        sums = values.sum(1)
        counts = keep.sum(1)
    else:
        if token_logp.dim() != 1:
            raise ValueError(
                f"sequence_logprob_sums: packed token_logp must be 1-D [N], got shape "
                f"{tuple(token_logp.shape)}"
            )
        if not isinstance(seq_ids, torch.Tensor) or seq_ids.shape != token_logp.shape:
            raise ValueError("sequence_logprob_sums: seq_ids must be a tensor of token_logp's shape [N]")
        if seq_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"sequence_logprob_sums: seq_ids must be int64/int32, got {seq_ids.dtype}")
        if seq_ids.device != token_logp.device:
            raise ValueError(
                f"sequence_logprob_sums: seq_ids is on {seq_ids.device}, token_logp on {token_logp.device}"
            )
        ids = seq_ids.long()
        if num_seqs is None:
            num_seqs = int(ids.max()) + 1 if ids.numel() else 0
        if ids.numel() and (bool((ids < 0).any()) or int(ids.max()) >= num_seqs):
            raise ValueError(f"sequence_logprob_sums: seq_ids must lie in [0, num_seqs={num_seqs})")
        sums = values.new_zeros(num_seqs).index_add(0, ids, values)
        counts = torch.zeros(num_seqs, dtype=torch.int64, device=ids.device).index_add_(0, ids, keep.long())
    if mean:
        sums = sums / counts.clamp_min(1).to(sums.dtype)
    return (sums, counts) if return_counts else sums


def lm_head_weight(model: torch.nn.Module) -> torch.Tensor:
    """The [V, H] output-projection weight of an HF causal LM (the embedding itself when tied).

    Raises when the head is something fused_logprobs cannot reproduce (a bias, logit soft-capping,
    logit scaling) and when the weight is a sharded FSDP2 DTensor: under FSDP2 call this inside
    the forward of the module that owns the head (its pre-forward hook has unsharded it) or after
    `model.unshard()`; docs/kernels.md has the pattern.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        head = getattr(model, "lm_head", None)
    if head is None or not isinstance(getattr(head, "weight", None), torch.Tensor):
        raise ValueError(
            f"lm_head_weight: {type(model).__name__} has no output embedding / lm_head with a weight"
        )
    if getattr(head, "bias", None) is not None:
        raise ValueError("lm_head_weight: the LM head has a bias, which fused_logprobs does not add")
    config = getattr(model, "config", None)
    for attr in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale"):
        value = getattr(config, attr, None)
        if value not in (None, 1, 1.0):
            raise ValueError(
                f"lm_head_weight: config.{attr}={value} changes the logits; fused_logprobs "
                "computes plain hidden @ weight.T"
            )
    weight = head.weight
    if _is_dtensor(weight):
        raise RuntimeError(
            "lm_head_weight: the LM head weight is a sharded FSDP2 DTensor here; read it inside the forward "
            "of the FSDP module that owns it (after its pre-forward unshard) or after model.unshard()"
        )
    return weight


def _is_dtensor(t: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed
        return False
    return isinstance(t, DTensor)
