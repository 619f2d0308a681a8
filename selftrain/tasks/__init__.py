"""Tasks: loading data, prompts, answer extraction and grading, and a registry by name.

    from selftrain.tasks import get_task
    task = get_task("gsm8k")
    examples = task.load("test", path="../shared/data/gsm8k", limit=100)
    prompt = task.prompt(examples[0], tokenizer, shots=0)
    reward = task.reward(examples[0], response)        # 1.0 or 0.0

Tasks: arith (generated, the offline default), sudoku4 (generated), gsm8k, math, csqa, mbpp,
nq_open (read from a file, a folder or a hub dataset id). docs/tasks.md describes each one.
"""

from __future__ import annotations

import inspect
from typing import Any

from selftrain.tasks.arith import Arith
from selftrain.tasks.base import Example, FileTask, Task
from selftrain.tasks.common import TaskDataError
from selftrain.tasks.csqa import CommonsenseQA
from selftrain.tasks.gsm8k import GSM8K
from selftrain.tasks.hendrycks_math import HendrycksMath
from selftrain.tasks.mbpp import MBPP
from selftrain.tasks.nq_open import NQOpen
from selftrain.tasks.sudoku4 import Sudoku4

_REGISTRY: dict[str, type[Task]] = {
    cls.name: cls for cls in (Arith, GSM8K, HendrycksMath, CommonsenseQA, MBPP, NQOpen, Sudoku4)
}
TASKS: tuple[str, ...] = tuple(_REGISTRY)

DEFAULT_TASK = "arith"


def get_task(name: str, **options: Any) -> Task:
    """The task called `name`, built with its `options` (e.g. get_task("math", subset="algebra")).

    Unknown names and unknown options raise ValueError listing the valid ones.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; available tasks: {', '.join(TASKS)}")
    cls = _REGISTRY[name]
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = inspect.signature(cls).parameters.values() if cls.__init__ is not object.__init__ else ()
    accepted = [p.name for p in params if p.kind in named]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        valid = ", ".join(accepted) if accepted else "none"
        raise ValueError(f"task {name!r} has no option {', '.join(map(repr, unknown))}; its options: {valid}")
    return cls(**options)


__all__ = ["Example", "FileTask", "Task", "TaskDataError", "TASKS", "DEFAULT_TASK", "get_task"]
