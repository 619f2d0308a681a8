"""Supervised fine-tuning on response tokens, one stage.

    torchrun --nproc_per_node=K recipes/sft.py config=recipes/configs/sft.yaml \
        model=smollm2-135m data=train.jsonl out=runs/sft [key=value ...]

Data lines: {"prompt": str | chat messages, "response": str}. Every TrainConfig field (lr, epochs,
global_batch_size, ...) can be set in the YAML file or as key=value; unknown keys are an error.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from selftrain.dist import exit_with
from selftrain.train import TrainConfig
from selftrain.train.recipe import run_single_stage


@dataclass
class SFTRecipe(TrainConfig):
    model: str = "smollm2-135m"
    data: str = ""  # JSONL file
    out: str = ""  # output folder: model/, metrics.jsonl, state/


def main(argv: list[str]) -> int:
    return run_single_stage("sft", SFTRecipe, argv, loss_of=lambda cfg: "sft", ref_of=lambda cfg: None)


if __name__ == "__main__":
    exit_with(main(sys.argv[1:]))
