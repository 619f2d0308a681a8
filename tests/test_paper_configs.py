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


MODELS = Path(__file__).parent.parent / "recipes" / "configs" / "paper_a_model"
# Table 1's learning rates (SFT, DPO) per base model
TABLE_1_LR = {
    "llama2_7b": ("meta-llama/Llama-2-7b-hf", 1e-5, 2e-6),
    "mistral_7b": ("mistralai/Mistral-7B-v0.1", 2e-6, 2e-7),
    "llama3_8b": ("meta-llama/Meta-Llama-3-8B", 2e-6, 2e-7),
}


def _check_table_1(cfg: LoopConfig, model: str, sft_lr: float, dpo_lr: float) -> None:
    assert (cfg.model, cfg.sft.lr, cfg.dpo.lr) == (model, sft_lr, dpo_lr)
    sft, dpo = cfg.sft, cfg.dpo
    assert (sft.global_batch_size, sft.epochs, sft.warmup_ratio) == (128, 3, 0.03)
    assert (dpo.global_batch_size, dpo.epochs, dpo.beta, dpo.reference) == (32, 1, 0.3, "previous")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_task_files_hold_llama2_7b_settings(path):
    _check_table_1(_load(path), *TABLE_1_LR["llama2_7b"])


@pytest.mark.parametrize("model", sorted(TABLE_1_LR))
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_model_files_set_table_1_learning_rates_over_any_task(path, model):
    assert sorted(p.stem for p in MODELS.glob("*.yaml")) == sorted(TABLE_1_LR)
    cfg = _load(path, f"config={MODELS / f'{model}.yaml'}")
    _check_table_1(cfg, *TABLE_1_LR[model])
    assert cfg.task == _load(path).task and cfg.sampling.top_k == 50  # the task file's other settings stay
