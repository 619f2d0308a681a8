"""Whole-file checks on the real dataset files in ../shared/data (skipped when absent).

For every example of every file: the reference solution, phrased as a model response, is graded
1.0 and a corrupted answer 0.0. Exceptions, to keep the suite fast:
- MATH: the gold check covers all 7,500 problems; the corrupted check (which needs math-verify's
  symbolic comparison) covers a deterministic sample of 1,500 (every 5th problem).
- MBPP: each check runs one sandboxed Python process per problem (about 70 ms on 2 busy cores), so
  the gold check covers every 4th of the 474 problems (119) and the corrupted check every 8th (60),
  both on a 4-thread pool. (All 474 gold programs passed when run once by hand: docs/tasks.md.)
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from selftrain.tasks import Example, get_task


def _gold_and_corrupt(task, examples, corrupt) -> tuple[list[str], list[str]]:
    """Ids whose gold response is not graded 1.0, and ids whose corrupted response is not 0.0."""
    gold_fail = [ex.id for ex in examples if task.reward(ex, task.gold_response(ex)) != 1.0]
    corrupt_fail = [ex.id for ex in examples if task.reward(ex, corrupt(ex)) != 0.0]
    return gold_fail, corrupt_fail


def _shift_number(ex: Example) -> str:
    return f"The answer is {int(float(ex.answer)) + 1}."


@pytest.mark.parametrize("split, count", [("train", 7473), ("test", 1319)])
def test_gsm8k_whole_files(shared_data, split, count):
    task = get_task("gsm8k")
    examples = task.load(split, path=shared_data / "gsm8k")
    assert len(examples) == count
    gold_fail, corrupt_fail = _gold_and_corrupt(task, examples, _shift_number)
    assert gold_fail == [] and corrupt_fail == []
    # the gold keeps the reasoning but none of the calculator annotations
    assert all("<<" not in task.gold_response(ex) for ex in examples[:200])


def test_math_whole_file(shared_data):
    task = get_task("math")
    with pytest.warns(UserWarning, match="2 record"):  # two source records box nothing
        examples = task.load("train", path=shared_data / "math" / "train.jsonl")
    assert len(examples) == 7498
    assert {ex.meta["level"] for ex in examples} == {1, 2, 3, 4, 5, None}
    assert sum(ex.meta["level"] is None for ex in examples) == 2
    gold_fail = [ex.id for ex in examples if task.reward(ex, task.gold_response(ex)) != 1.0]
    assert gold_fail == []

    def corrupt(ex: Example) -> str:
        # a nearby integer where the answer is one, else a value no MATH answer has
        wrong = str(int(ex.answer) + 1) if re.fullmatch(r"-?\d+", ex.answer) else "-98765"
        return task.gold_response(ex).replace(f"\\boxed{{{ex.answer}}}", f"\\boxed{{{wrong}}}")

    sample = examples[::5]
    assert len(sample) == 1500
    corrupt_fail = [ex.id for ex in sample if task.reward(ex, corrupt(ex)) != 0.0]
    assert corrupt_fail == []
    with pytest.warns(UserWarning, match="empty gold answer"):
        algebra = get_task("math", subset="algebra").load("train", path=shared_data / "math")
    assert len(algebra) == 1744 and {ex.meta["subject"] for ex in algebra} == {"Algebra"}


def test_csqa_whole_file(shared_data):
    task = get_task("csqa")
    examples = task.load("train", path=shared_data / "commonsenseqa")
    assert len(examples) == 9741

    def corrupt(ex: Example) -> str:
        return f"The answer is ({'ABCDE'[('ABCDE'.index(ex.answer) + 1) % 5]})."

    gold_fail, corrupt_fail = _gold_and_corrupt(task, examples, corrupt)
    assert gold_fail == [] and corrupt_fail == []


def test_nq_open_whole_file(shared_data):
    task = get_task("nq_open")
    examples = task.load("validation", path=shared_data / "nq_open")
    assert len(examples) == 500
    gold_fail, corrupt_fail = _gold_and_corrupt(task, examples, lambda ex: "The answer is zzyzx quux.")
    assert gold_fail == [] and corrupt_fail == []


def test_mbpp_whole_file(shared_data):
    from selftrain import sandbox

    try:
        sandbox.run_python("print(1)", timeout_s=10)
    except sandbox.SandboxUnavailable as e:
        pytest.skip(f"sandbox unavailable here: {e}")
    task = get_task("mbpp")
    path = shared_data / "mbpp" / "mbpp.jsonl"
    splits = {split: task.load(split, path=path) for split in ("prompt", "validation", "train")}
    assert {s: len(v) for s, v in splits.items()} == {"prompt": 10, "validation": 90, "train": 374}
    with pytest.raises(ValueError, match="no examples of split 'test'"):  # ids 11-510 are not in it
        task.load("test", path=path)
    examples = [ex for split in splits.values() for ex in split]
    gold_sample = examples[::4]
    with ThreadPoolExecutor(4) as pool:
        gold = list(pool.map(lambda ex: task.reward(ex, task.gold_response(ex)), gold_sample))
    assert len(gold_sample) == 119 and [ex.id for ex, r in zip(gold_sample, gold) if r != 1.0] == []
    sample = examples[::8]
    # the corrupted program is the next problem's reference solution (wrong names and behaviour)
    wrong = {ex.id: task.gold_response(examples[(i * 8 + 1) % len(examples)]) for i, ex in enumerate(sample)}
    with ThreadPoolExecutor(4) as pool:
        corrupted = list(pool.map(lambda ex: task.reward(ex, wrong[ex.id]), sample))
    assert len(sample) == 60 and [ex.id for ex, r in zip(sample, corrupted) if r != 0.0] == []
