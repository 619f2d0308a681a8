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

from selftrain import dist
from selftrain.config import ConfigError, parse_cli
from selftrain.models import ModelLoadError
from selftrain.train import DataError, NonFiniteError, TrainConfig, train, train_config_of


@dataclass
class DPORecipe(TrainConfig):
    model: str = "smollm2-135m"
    ref_model: str = ""  # empty = the starting model
    data: str = ""  # JSONL file of pairs
    out: str = ""
    loss: str = "dpo"  # dpo | rpo


def main(argv: list[str]) -> int:
    try:
        cfg = parse_cli(DPORecipe, argv)
        if not cfg.data or not cfg.out:
            raise ConfigError("data=FILE.jsonl and out=DIR are required")
        if cfg.loss not in ("dpo", "rpo"):
            raise ConfigError(f"loss={cfg.loss!r}: expected dpo or rpo")
    except (ConfigError, ValueError) as e:
        print(f"dpo: {e}", file=sys.stderr)
        return 2
    dist.init_distributed()
    try:
        res = train(
            train_config_of(cfg), cfg.model, cfg.data, cfg.out, loss=cfg.loss, ref_model=cfg.ref_model or None
        )
    except (DataError, ModelLoadError, NonFiniteError) as e:
        print(f"dpo: {e}", file=sys.stderr)
        return 2
    if dist.is_main():
        print(
            f"dpo: {'already complete' if res.skipped else f'{res.steps} steps'}; model at {res.checkpoint}"
        )
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    if dist.is_initialized():
        import torch.distributed

        torch.distributed.destroy_process_group()
    sys.exit(code)
