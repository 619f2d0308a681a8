"""Paper A's iterative self-improvement loop: paradigms, data construction, resumable stages,
evaluation of every model, and the engine tying them together (docs/loop.md)."""

from .config import LoopConfig
from .evaluation import EvalData, EvalOutcome, evaluate_model, improvement_metrics
from .paradigms import paradigm_names, register_paradigm, schedule, step_kind
from .stages import run_stage, stage_done
from .steps import (
    BuildOptions,
    SampledQuestion,
    StepKind,
    build_preference_pairs,
    build_sft_set,
    get_step_kind,
    gold_sft_set,
    register_step_kind,
    step_kind_names,
)

__all__ = [
    "BuildOptions",
    "EvalData",
    "EvalOutcome",
    "LoopConfig",
    "SampledQuestion",
    "StepKind",
    "build_preference_pairs",
    "build_sft_set",
    "evaluate_model",
    "get_step_kind",
    "gold_sft_set",
    "improvement_metrics",
    "paradigm_names",
    "register_paradigm",
    "register_step_kind",
    "run_loop",
    "run_stage",
    "schedule",
    "stage_done",
    "step_kind",
    "step_kind_names",
]


def run_loop(*args, **kwargs):  # imported lazily: the engine pulls in the sampler and the trainer
    from .engine import run_loop as _run_loop

    return _run_loop(*args, **kwargs)
