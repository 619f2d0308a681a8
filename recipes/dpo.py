"""Preference training (DPO or RPO = DPO + alpha * NLL of the chosen answer), one stage.

    torchrun --nproc_per_node=K recipes/dpo.py config=recipes/configs/dpo.yaml \
        model=smollm2-135m data=pairs.jsonl out=runs/dpo [loss=rpo beta=0.05 rpo_alpha=1 ...]

Data lines: {"prompt": str | chat messages, "chosen": str, "rejected": str}. The reference model
(`ref_model`, default: the starting model) scores the pairs once before training; the scores are
cached beside the data file and reused by later runs on the same data and reference.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from selftrain.config import ConfigError
from selftrain.dist import exit_with
from selftrain.train import TrainConfig
from selftrain.train.recipe import run_single_stage


@dataclass
class DPORecipe(TrainConfig):
    model: str = "smollm2-135m"
    ref_model: str = ""  # empty = the starting model
    data: str = ""  # JSONL file of pairs
    out: str = ""
    loss: str = "dpo"  # dpo | rpo


def _loss(cfg: DPORecipe) -> str:
    if cfg.loss not in ("dpo", "rpo"):
        raise ConfigError(f"loss={cfg.loss!r}: expected dpo or rpo")
    return cfg.loss


def main(argv: list[str]) -> int:
    return run_single_stage("dpo", DPORecipe, argv, loss_of=_loss, ref_of=lambda cfg: cfg.ref_model or None)


if __name__ == "__main__":
    exit_with(main(sys.argv[1:]))
