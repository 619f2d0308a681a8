"""TrainConfig: every setting of one training run (SFT, DPO or RPO), checked when it is built."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .lora import LoraConfig

DTYPES = ("auto", "float32", "bfloat16")
WANDB_MODES = ("offline", "online", "disabled")
LOSSES = ("sft", "dpo", "rpo")


@dataclass
class TrainConfig:
    """Settings of one training run.

    Batch sizes count sequences for SFT and pairs for DPO/RPO. `global_batch_size` is what one
    optimizer step sees whatever the number of processes: each rank runs ceil(global / (world *
    micro)) micro-batches of at most `micro_batch_size` and the gradients are accumulated.
    """

    lr: float = 1e-5
    epochs: int = 1
    global_batch_size: int = 32
    micro_batch_size: int = 4
    max_length: int = 512
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.0  # the cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    grad_clip: float = 1.0  # 0 = no clipping (the norm is still computed, logged and checked)
    seed: int = 0
    beta: float = 0.1  # DPO/RPO KL coefficient
    rpo_alpha: float = 1.0  # weight of the chosen NLL; used only when loss == "rpo"
    label_smoothing: float = 0.0  # conservative DPO
    save_every: int = 0  # steps between resumable state saves; 0 = only the final model
    keep_states: int = 1  # how many state saves to keep on disk
    activation_checkpointing: bool = False
    dtype: str = "auto"  # compute dtype: auto = bfloat16 on CUDA, float32 on CPU
    group_by_length: bool = True
    length_window: int = 16  # global batches sorted together by length (a larger window pads less)
    wandb_mode: str = "offline"
    wandb_project: str = "selftrain"
    log_every: int = 1
    max_steps: int = 0  # 0 = no limit; otherwise the run (and its lr schedule) stops there
    lora: LoraConfig | None = None  # LoRA / QLoRA adapters (selftrain.train.lora); None = full fine-tuning

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r}: {what}")

        need(self.lr > 0, "lr", "must be > 0")
        need(self.epochs >= 1, "epochs", "must be >= 1")
        need(self.global_batch_size >= 1, "global_batch_size", "must be >= 1")
        need(self.micro_batch_size >= 1, "micro_batch_size", "must be >= 1")
        need(self.max_length >= 2, "max_length", "must be >= 2 (a prompt token and a response token)")
        need(0.0 <= self.warmup_ratio < 1.0, "warmup_ratio", "must be in [0, 1)")
        need(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio", "must be in [0, 1]")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(0.0 <= self.adam_beta1 < 1.0, "adam_beta1", "must be in [0, 1)")
        need(0.0 <= self.adam_beta2 < 1.0, "adam_beta2", "must be in [0, 1)")
        need(self.adam_eps > 0, "adam_eps", "must be > 0")
        need(self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 turns clipping off)")
        need(self.beta > 0, "beta", "must be > 0")
        need(self.rpo_alpha >= 0, "rpo_alpha", "must be >= 0")
        need(0.0 <= self.label_smoothing < 0.5, "label_smoothing", "must be in [0, 0.5)")
        need(self.save_every >= 0, "save_every", "must be >= 0 (0 = save only at the end)")
        need(self.keep_states >= 1, "keep_states", "must be >= 1")
        need(self.dtype in DTYPES, "dtype", f"must be one of {', '.join(DTYPES)}")
        need(self.length_window >= 1, "length_window", "must be >= 1")
        need(self.wandb_mode in WANDB_MODES, "wandb_mode", f"must be one of {', '.join(WANDB_MODES)}")
        need(self.log_every >= 1, "log_every", "must be >= 1")
        need(self.max_steps >= 0, "max_steps", "must be >= 0 (0 = no limit)")
        self.lora = LoraConfig.of(self.lora)  # a mapping when read back from a saved config

    # Settings that change the trained weights: a saved state written under other values of these
    # is not resumed (it would silently mix two runs).
    def trajectory_key(self) -> dict[str, Any]:
        skip = {
            "save_every",
            "keep_states",
            "wandb_mode",
            "wandb_project",
            "log_every",
            "activation_checkpointing",
            "micro_batch_size",
        }
        key = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
        if key["lora"] is not None:
            key["lora"].pop("merged")  # an extra output folder, not the weights
        return key


def train_config_of(cfg: Any) -> TrainConfig:
    """The TrainConfig part of a recipe's config (a dataclass that extends TrainConfig)."""
    return TrainConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainConfig)})
