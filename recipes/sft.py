"""Supervised fine-tuning on response tokens, one stage.

    torchrun --nproc_per_node=K recipes/sft.py config=recipes/configs/sft.yaml \
        model=smollm2-135m data=train.jsonl out=runs/sft [key=value ...]

Data lines: {"prompt": str | chat messages, "response": str}. Every TrainConfig field (lr, epochs,
global_batch_size, ...) can be set in the YAML file or as key=value; unknown keys are an error.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from selftrain import dist
from selftrain.config import ConfigError, parse_cli
from selftrain.models import ModelLoadError
from selftrain.train import DataError, NonFiniteError, TrainConfig, train, train_config_of


@dataclass
class SFTRecipe(TrainConfig):
    model: str = "smollm2-135m"
    data: str = ""  # JSONL file
    out: str = ""  # output folder: model/, metrics.jsonl, state/


def main(argv: list[str]) -> int:
    try:
        cfg = parse_cli(SFTRecipe, argv)
        if not cfg.data or not cfg.out:
            raise ConfigError("data=FILE.jsonl and out=DIR are required")
    except (ConfigError, ValueError) as e:
        print(f"sft: {e}", file=sys.stderr)
        return 2
    dist.init_distributed()
    try:
        res = train(train_config_of(cfg), cfg.model, cfg.data, cfg.out, loss="sft")
    except (DataError, ModelLoadError, NonFiniteError) as e:
        print(f"sft: {e}", file=sys.stderr)
        return 2
    if dist.is_main():
        print(
            f"sft: {'already complete' if res.skipped else f'{res.steps} steps'}; model at {res.checkpoint}"
        )
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    if dist.is_initialized():
        import torch.distributed

        torch.distributed.destroy_process_group()
    sys.exit(code)
