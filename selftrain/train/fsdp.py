"""The model side of training: per-sequence log-probs through the kernels, FSDP2 wrapping, full
state dicts for saving.

`SequenceScorer` wraps an HF causal LM so that one `forward` call runs the decoder, picks the
hidden states of the trained (response) positions only and turns them into log-probs with
`selftrain.kernels.fused_logprobs`, never materialising the [tokens, vocab] logits of the prompt.
Doing the head inside the wrapper's own forward matters under FSDP2: the wrapper is the root FSDP
module, so the embedding / final norm / LM head (shared with the embedding when tied) are
all-gathered around this one call.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from .. import dist
from .. import kernels as K
from .data import IGNORE


def _decoder(model: nn.Module) -> nn.Module:
    prefix = getattr(model, "base_model_prefix", "model")
    inner = getattr(model, prefix, None)
    if inner is None:
        raise TypeError(f"{type(model).__name__} has no decoder attribute {prefix!r}; cannot train it")
    return inner


def token_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """log p(target) / temperature-scaled, at the positions where targets != IGNORE, in row-major
    order ([n_trained] float32). Only those positions go through the LM head (fused_logprobs,
    chunked over the vocabulary): the [tokens, vocab] logits are never built."""
    sel = targets != IGNORE
    if weight.dtype != hidden.dtype:  # autocast: bf16 hidden states, fp32 master weight
        weight = weight.to(hidden.dtype)
    return K.fused_logprobs(hidden[sel], weight, targets[sel], ignore_index=IGNORE, temperature=temperature)


def sequence_logprob_sums(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log p(target) over the positions where targets != IGNORE, per row, and the count of
    those positions: ([B] float32, [B] int64). The one place the trainer turns hidden states into
    per-sequence log-probs: `token_logprobs`, then the kernels' packed per-sequence sum."""
    rows = (targets != IGNORE).nonzero(as_tuple=True)[0]
    logp = token_logprobs(hidden, weight, targets)
    keep = torch.ones_like(rows, dtype=torch.bool)
    return K.sequence_logprob_sums(logp, keep, rows, targets.shape[0], return_counts=True)


class SequenceScorer(nn.Module):
    """forward(input_ids, attention_mask, targets) -> (log-prob sums [B], trained-token counts [B]);
    with per_token=True -> the per-token log-probs of the trained positions ([n_trained], row-major,
    `token_logprobs`) at `temperature`, for the online-RL loss (selftrain.train.rl)."""

    def __init__(self, model: nn.Module, autocast_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.model = model
        # without FSDP's mixed precision (one process, no torch.distributed) low precision runs
        # through autocast with the fp32 master weights kept as they are
        self.autocast_dtype = autocast_dtype

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        targets: torch.Tensor,
        per_token: bool = False,
        temperature: float = 1.0,
    ) -> Any:
        ctx: Any = contextlib.nullcontext()
        if self.autocast_dtype is not None:
            ctx = torch.autocast(device_type=input_ids.device.type, dtype=self.autocast_dtype)
        with ctx:
            out = _decoder(self.model)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
            weight = K.lm_head_weight(self.model)
            if per_token:
                return token_logprobs(hidden, weight, targets, temperature)
            return sequence_logprob_sums(hidden, weight, targets)


def compute_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks (the classes HF lists as `_no_split_modules`), in order."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise TypeError(f"cannot find the decoder blocks of {type(model).__name__} (no _no_split_modules)")
    return blocks


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations in backward (HF's per-layer checkpointing, non-reentrant,
    which keeps parameter names unchanged for saving)."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise TypeError(f"{type(model).__name__} does not support activation checkpointing")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # the newer name in transformers 5
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def wrap_for_training(
    model: nn.Module, dtype: torch.dtype, device: torch.device, activation_checkpointing: bool
) -> SequenceScorer:
    """The model ready to train: FSDP2-sharded (each block, then the root) when torch.distributed
    is initialised, with bf16 parameters / fp32 gradient reduction when `dtype` is bf16; a plain
    module on `device` otherwise. Parameters stay float32 (the optimizer's master copy)."""
    model = model.to(torch.float32)
    if activation_checkpointing:
        enable_activation_checkpointing(model)
    model.train()
    if not dist.is_initialized():
        scorer = SequenceScorer(model.to(device), autocast_dtype=None if dtype == torch.float32 else dtype)
        return scorer
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (dist.world_size(),))
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for block in decoder_blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=mp)
    scorer = SequenceScorer(model)
    fully_shard(scorer, mesh=mesh, mp_policy=mp)
    return scorer


def set_gradient_sync(scorer: nn.Module, enabled: bool) -> None:
    """Skip FSDP's gradient reduce-scatter on all but the last micro-batch of a step."""
    if hasattr(scorer, "set_requires_gradient_sync"):
        scorer.set_requires_gradient_sync(enabled)


def full_model_state_dict(scorer: SequenceScorer) -> dict[str, torch.Tensor]:
    """The HF model's full state dict on CPU, on rank 0 (empty elsewhere). Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not dist.is_initialized():
        return {k: v.detach().to("cpu", copy=True) for k, v in scorer.model.state_dict().items()}
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(scorer.model, options=opts)


def hf_model_from_state_dict(config: Any, state: dict[str, torch.Tensor], dtype: torch.dtype) -> nn.Module:
    """A fresh, unwrapped HF model built from `config` holding `state` (for save_checkpoint)."""
    from transformers import AutoModelForCausalLM

    fresh = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    bad = [k for k in missing if k not in tied and not k.endswith("inv_freq")]
    if bad or unexpected:
        raise RuntimeError(
            f"trained state does not fit the model: missing {bad[:5]}, unexpected {unexpected[:5]}"
        )
    if hasattr(fresh, "tie_weights"):
        fresh.tie_weights()
    return fresh.eval()
