"""The shared body of the single-stage recipes (recipes/sft.py, recipes/dpo.py): parse the config,
train, print one line, exit with 2 on bad input (the message names what is wrong)."""

from __future__ import annotations

import sys
from typing import Any, Callable

from .. import dist
from ..config import ConfigError, parse_cli
from ..models import ModelLoadError
from .config import train_config_of
from .data import DataError
from .trainer import NonFiniteError, train


def run_single_stage(
    name: str, recipe_cls: type, argv: list[str], loss_of: Callable[[Any], str], ref_of: Callable[[Any], Any]
) -> int:
    """Train one stage from `config=FILE key=value ...`; return the process exit code."""
    try:
        cfg = parse_cli(recipe_cls, argv)
        if not cfg.data or not cfg.out:
            raise ConfigError("data=FILE.jsonl and out=DIR are required")
        loss = loss_of(cfg)
    except (ConfigError, ValueError) as e:
        print(f"{name}: {e}", file=sys.stderr)
        return 2
    dist.init_distributed()
    try:
        res = train(train_config_of(cfg), cfg.model, cfg.data, cfg.out, loss=loss, ref_model=ref_of(cfg))
    except (DataError, ModelLoadError, NonFiniteError, ValueError) as e:  # ValueError: a setting (lora.*)
        print(f"{name}: {e}", file=sys.stderr)
        return 2
    if dist.is_main():
        done = "already complete" if res.skipped else f"{res.steps} steps"
        print(f"{name}: {done}; model at {res.checkpoint}")
    return 0
