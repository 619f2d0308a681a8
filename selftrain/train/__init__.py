"""The trainer: SFT, DPO and RPO on FSDP2 with the fused log-prob kernels (see docs/training.md).

from selftrain.train import TrainConfig, train
res = train(TrainConfig(lr=1e-5), model="smollm2-135m", data="train.jsonl", out_dir="runs/sft")
"""

from .config import TrainConfig, train_config_of
from .data import DataError
from .trainer import NonFiniteError, TrainResult, train

__all__ = ["DataError", "NonFiniteError", "TrainConfig", "TrainResult", "train", "train_config_of"]
