"""recipes/configs/paper_*.yaml against paper A's Table 1 (hyperparameters of all its experiments)."""

from __future__ import annotations

from pathlib import Path

import pytest

from selftrain.config import parse_cli
from selftrain.loop.config import LoopConfig

CONFIGS = sorted((Path(__file__).parent.parent / "recipes" / "configs").glob("paper_*.yaml"))


def _load(path: Path, *overrides: str) -> LoopConfig:
    return parse_cli(LoopConfig, [f"config={path}", *overrides])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_sampling_is_table_1s(path):
    cfg = _load(path)
    for section in (cfg.sampling, cfg.eval):  # the N on-policy samples and the N evaluation samples
        got = (section.temperature, section.top_p, section.top_k, section.max_new_tokens)
        assert got == (0.75, 0.95, 50, 512)


def test_top_k_must_be_a_non_negative_int():
    with pytest.raises(ValueError, match="sampling.top_k"):
        _load(CONFIGS[0], "sampling.top_k=-1")
    with pytest.raises(ValueError, match="eval.top_k"):
        _load(CONFIGS[0], "eval.top_k=-5")
