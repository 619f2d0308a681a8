"""LoRA and QLoRA through PEFT: the `lora:` config section, a fresh adapter on the model to train,
the adapter's trainable state, and saving it in PEFT's own format.

The trainer keeps its one path: the adapter layers live inside the HF model (PEFT injects them in
place), so `SequenceScorer`, FSDP2 wrapping, the fused log-prob kernels, the optimizer (over the
parameters that require grad: the adapters only) and clipping run unchanged. What differs is in
here: which model is built, what a state save holds (trainable tensors only) and what is saved
at the end (an adapter folder that `peft.PeftModel.from_pretrained(base, path)` loads, whose
`base_model_name_or_path` names the model trained on).
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import dist, hf_folder
from ..models import (
    BUILTIN_MODELS,
    declared_dtype,
    is_adapter_folder,
    load_model,
    load_tokenizer,
    peft_wraps_quietly,
    publish_folder,
    resolve_model_path,
    save_checkpoint,
)
from .fsdp import SequenceScorer, decoder_blocks, enable_activation_checkpointing, wrap_for_training

# Every attention and MLP projection of the Llama / Mistral / Qwen2 family.
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Keys of PeftModel.state_dict(): the HF model sits at base_model.model
PEFT_PREFIX = "base_model.model."
MERGED_DIR = "merged"


@dataclass
class LoraConfig:
    """The `lora:` section. Absent (None) = full fine-tuning."""

    r: int = 16
    alpha: float | None = None  # None = 2 * r (an update scale of 2 whatever the rank)
    dropout: float = 0.0  # 0 keeps a K-process run equal to a 1-process one (no per-rank RNG)
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    qlora: bool = False  # frozen base in 4-bit NF4 (bitsandbytes, CUDA only)
    merged: bool = False  # also write <out_dir>/merged: base + adapter as a plain HF folder

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ValueError(f"lora.{name}={getattr(self, name)!r}: {what}")

        whole = isinstance(self.r, int) and not isinstance(self.r, bool)
        need(whole and self.r >= 1, "r", "must be an integer >= 1")
        need(self.alpha is None or self.alpha > 0, "alpha", "must be > 0 (or null for 2 * r)")
        need(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        need(
            isinstance(self.target_modules, (list, tuple))
            and len(self.target_modules) > 0
            and all(isinstance(t, str) and t for t in self.target_modules),
            "target_modules",
            "must be a non-empty list of module names (e.g. [q_proj, v_proj])",
        )
        self.target_modules = list(self.target_modules)
        if self.qlora:
            need(
                dist.default_device().type == "cuda",
                "qlora",
                "needs a CUDA GPU (bitsandbytes' 4-bit NF4 kernels); none is in use here, so set "
                "lora.qlora=false (plain LoRA on an fp32/bf16 base)",
            )
            try:
                import bitsandbytes  # noqa: F401
            except ImportError:
                need(False, "qlora", "needs bitsandbytes (pip install -e '.[gpu]')")

    @property
    def scale_alpha(self) -> float:
        return float(self.alpha) if self.alpha is not None else 2.0 * self.r

    @classmethod
    def of(cls, value: Any) -> LoraConfig | None:
        """A LoraConfig from itself, a mapping (a config dict read back) or None."""
        if value is None or isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"lora={value!r}: expected a mapping of LoRA settings or null")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(
                f"lora: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}"
            )
        return cls(**value)


def base_name(model: str) -> str:
    """What an adapter records as its base: a built-in name or hub id as given, a folder as an
    absolute path (so the adapter loads from any working directory)."""
    path = resolve_model_path(model)
    if str(model) in BUILTIN_MODELS or not Path(path).exists():
        return str(model)
    return str(Path(path).resolve())


def _check_placement(model: nn.Module, cfg: LoraConfig) -> None:
    """Adapters only inside the decoder blocks. The LM head is read by the fused log-prob kernels
    as a bare weight (an adapter on it would be silently skipped) and, in tied models, it is the
    embedding, which merging would change for the input side too: both are refused."""
    from peft.tuners.lora import LoraLayer

    inside = {id(m) for block in decoder_blocks(model) for m in block.modules()}
    adapted = [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    outside = [n for n, m in adapted if id(m) not in inside]
    if outside:
        raise ValueError(
            f"lora.target_modules={cfg.target_modules}: {', '.join(outside[:3])} is outside the decoder "
            "blocks; only the blocks' projections can be adapted (the LM head is scored by the fused "
            "log-prob kernels from its plain weight, and is the embedding itself in tied models); "
            "train it with full fine-tuning (no lora section) instead"
        )
    if not adapted:
        raise ValueError(f"lora.target_modules={cfg.target_modules}: matched no module of the model")


def attach_adapter(model: nn.Module, cfg: LoraConfig, base: str) -> Any:
    """A fresh LoRA adapter on `model` (its weights frozen; B = 0, so the adapted model starts equal
    to `model`). Returns the PeftModel; the HF model inside it is `peft_model.get_base_model()`."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    pcfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.scale_alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    model.name_or_path = base  # PEFT records the model's own name as the adapter's base
    try:
        with peft_wraps_quietly():
            peft_model = get_peft_model(model, pcfg)
    except ValueError as e:  # PEFT: a target that names no module
        raise ValueError(f"lora.target_modules={cfg.target_modules}: {e}") from None
    _check_placement(peft_model.get_base_model(), cfg)
    return peft_model


def load_quantized_base(model: str, device: torch.device, work_dir: Path) -> nn.Module:
    """QLoRA's frozen base: the model in 4-bit NF4 (double quantization, bf16 compute) on `device`.
    An adapter folder is first merged in fp32 and written under `work_dir`, then quantized: the
    NF4 base of iteration t+1 is the quantized merge of M_t (docs/training.md: what that costs)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    qcfg = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    path = resolve_model_path(model)
    with contextlib.ExitStack() as stack:
        if is_adapter_folder(path):
            work_dir.mkdir(parents=True, exist_ok=True)
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix=".merged-", dir=work_dir))
            hf_folder.write_model(load_model(path, torch.float32, "cpu"), Path(tmp))
            path = tmp
        base = AutoModelForCausalLM.from_pretrained(
            path, quantization_config=qcfg, dtype=torch.bfloat16, device_map={"": str(device)}
        )
    return base


def build_policy(
    model: str,
    cfg: LoraConfig,
    dtype: torch.dtype,
    device: torch.device,
    activation_checkpointing: bool,
    work_dir: Path,
) -> tuple[SequenceScorer, Any]:
    """The model to train and its PeftModel: a fresh adapter on `model` (an HF folder, a built-in,
    or an adapter folder, merged first), wrapped like a fully fine-tuned model (FSDP2 shards the
    frozen base and the adapters alike). QLoRA: a 4-bit base on this process's GPU, not sharded."""
    base = base_name(model)
    if not cfg.qlora:
        peft_model = attach_adapter(load_model(model, torch.float32, "cpu"), cfg, base)
        scorer = wrap_for_training(peft_model.get_base_model(), dtype, device, activation_checkpointing)
        return scorer, peft_model
    if dist.world_size() > 1:
        raise ValueError(
            "lora.qlora=true runs on one process: FSDP2 does not shard bitsandbytes' packed 4-bit "
            "weights; run without torchrun's extra processes, or use lora.qlora=false"
        )
    peft_model = attach_adapter(load_quantized_base(model, device, work_dir), cfg, base)
    hf = peft_model.get_base_model()
    if activation_checkpointing:
        enable_activation_checkpointing(hf)
    hf.train()
    # the 4-bit weights cannot be cast to fp32 masters; compute in bf16, adapters stay fp32 (PEFT)
    return SequenceScorer(hf, autocast_dtype=torch.bfloat16), peft_model


def adapter_disabled(peft_model: Any) -> contextlib.AbstractContextManager:
    """The base model's forward: the same weights with every adapter bypassed."""
    return peft_model.disable_adapter()


def trainable_state_dict(hf_model: nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) trainable tensors on CPU, on rank 0 (empty elsewhere). Collective."""
    if not dist.is_initialized():
        return {n: p.detach().to("cpu", copy=True) for n, p in hf_model.named_parameters() if p.requires_grad}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    return get_model_state_dict(hf_model, options=opts)


def save_adapter(peft_model: Any, state: dict[str, torch.Tensor], tokenizer: Any, path: Path) -> Path:
    """Write the adapter in PEFT's format (adapter_config.json + adapter_model.safetensors) with
    the tokenizer, verified and atomically (hf_folder: no library decides by the rank whether to
    write). Call on the one process that writes."""

    def write(tmp: Path) -> None:
        hf_folder.write_adapter(peft_model, {PEFT_PREFIX + k: v for k, v in state.items()}, tmp)
        if tokenizer is not None:
            hf_folder.write_tokenizer(tokenizer, tmp)

    return publish_folder(write, path)


def save_merged(adapter: Path, dest: Path) -> Path:
    """base + adapter as a plain HF folder (merged in fp32, saved in the base's declared dtype)."""
    model = load_model(adapter, torch.float32, "cpu")
    model = model.to(declared_dtype(model))
    return save_checkpoint(model, load_tokenizer(adapter), dest)
