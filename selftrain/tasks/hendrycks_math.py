"""MATH (Hendrycks et al.): competition problems with LaTeX answers, levels 1-5, seven subjects.

Data: the published tree `<folder>/<split>/<subject>/<n>.json`, a JSONL file of the same records
(`problem`, `level` "Level 3", `type` or `subject`, `solution`, optional `answer`, `unique_id`),
or the hub datasets `hendrycks/competition_math` / `EleutherAI/hendrycks_math` (one config per
subject). The gold answer is the `answer` field when present, else the last `\\boxed{}` of the
solution. Grading: the last `\\boxed{}`/`\\fbox{}` of the response (else the text after "The answer
is"), judged equivalent to the gold by `math-verify` under a time limit.
"""

from __future__ import annotations

import re
import threading
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, Callable

from selftrain.tasks.base import Example, FileTask, standard_split_files
from selftrain.tasks.common import (
    Record,
    TaskDataError,
    is_hub_id,
    last_boxed,
    read_records,
    strip_wrapping,
    text_after_answer_marker,
)

INSTRUCTION = (
    "Solve this math problem. Reason step by step, then state the final answer on the last line as "
    '"The answer is $\\boxed{ANSWER}$." with the answer in simplest form inside the box.'
)

# Canonical subject keys (the hub config names) and the names the published data uses.
SUBJECTS = {
    "algebra": "Algebra",
    "counting_and_probability": "Counting & Probability",
    "geometry": "Geometry",
    "intermediate_algebra": "Intermediate Algebra",
    "number_theory": "Number Theory",
    "prealgebra": "Prealgebra",
    "precalculus": "Precalculus",
}


def subject_key(name: str) -> str:
    """'Counting & Probability' / 'counting_and_probability' -> 'counting_and_probability'."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower().replace("&", "and")).strip("_")


def parse_level(value: object, where: str) -> int | None:
    """'Level 3' -> 3, 'Level ?' -> None; an int 1-5 is kept."""
    if isinstance(value, int) and not isinstance(value, bool):
        level = value
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*(?:level\s*)?(\d+|\?)\s*", value, re.IGNORECASE)
        if not m:
            raise TaskDataError(f"{where}: field 'level' should look like 'Level 3', got {value!r}")
        if m.group(1) == "?":
            return None
        level = int(m.group(1))
    else:
        raise TaskDataError(f"{where}: field 'level' should be a string like 'Level 3', got {value!r}")
    if not 1 <= level <= 5:
        raise TaskDataError(f"{where}: field 'level' should be 1-5, got {value!r}")
    return level


def _ex(question: str) -> Example:
    return Example(id="math-exemplar", question=question, answer=None)


_EXEMPLARS = (
    (
        _ex("What is the sum of the roots of $x^2 - 7x + 10 = 0$?"),
        "The quadratic factors as $(x-2)(x-5)=0$, so the roots are $2$ and $5$, and their sum is "
        "$2+5=7$.\nThe answer is $\\boxed{7}$.",
    ),
    (
        _ex("Simplify $\\frac{6}{8} + \\frac{1}{4}$."),
        "Reduce the first fraction: $\\frac{6}{8}=\\frac{3}{4}$. Then $\\frac{3}{4}+\\frac{1}{4}="
        "\\frac{4}{4}=1$.\nThe answer is $\\boxed{1}$.",
    ),
    (
        _ex("How many positive divisors does $36$ have?"),
        "Since $36 = 2^2 \\cdot 3^2$, the number of divisors is $(2+1)(2+1) = 9$.\n"
        "The answer is $\\boxed{9}$.",
    ),
    (
        _ex("A fair coin is flipped three times. What is the probability of getting exactly two heads? "
            "Express your answer as a common fraction."),
        "There are $2^3 = 8$ equally likely outcomes. Exactly two heads can happen in "
        "$\\binom{3}{2} = 3$ ways, so the probability is $\\frac{3}{8}$.\n"
        "The answer is $\\boxed{\\frac{3}{8}}$.",
    ),
)


def _verify_here(gold: str, pred: str, timeout_s: int) -> bool:
    """math-verify equivalence; its signal-based time limit needs the main thread."""
    from math_verify import parse, verify  # lazy: sympy import is slow

    gold_parsed = parse(f"$\\boxed{{{gold}}}$", parsing_timeout=timeout_s)
    pred_parsed = parse(f"$\\boxed{{{pred}}}$", parsing_timeout=timeout_s)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout_s))


_worker_lock = threading.Lock()
_worker: ProcessPoolExecutor | None = None


def run_in_worker(fn: Callable[..., Any], args: tuple, deadline_s: float, default: Any) -> Any:
    """`fn(*args)` in a helper process; past `deadline_s` the process is killed and `default` returned.

    Off the main thread math-verify's signal alarms are unavailable, so grading runs here instead.
    """
    global _worker
    import multiprocessing

    with _worker_lock:
        if _worker is None:
            _worker = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        worker = _worker
    future = worker.submit(fn, *args)
    try:
        return future.result(timeout=deadline_s)
    except FutureTimeout:
        with _worker_lock:
            for process in list((getattr(worker, "_processes", None) or {}).values()):
                process.kill()
            worker.shutdown(wait=False, cancel_futures=True)
            if _worker is worker:
                _worker = None
        return default


def math_equivalent(gold: str, pred: str, timeout_s: int = 3) -> bool:
    """Whether `pred` is mathematically equivalent to `gold` (both LaTeX answer strings)."""
    if " ".join(gold.split()) == " ".join(pred.split()):
        return True  # the same text: equivalent without a (slow) symbolic check
    if threading.current_thread() is threading.main_thread():
        return _verify_here(gold, pred, timeout_s)
    # parse gold, parse the prediction, then a few comparisons, each under its own limit inside
    return bool(run_in_worker(_verify_here, (gold, pred, timeout_s), 6 * timeout_s + 30, False))


class HendrycksMath(FileTask):
    name = "math"
    splits = ("train", "test")
    train_split = "train"
    eval_split = "test"
    split_files = standard_split_files("train", "test")
    hub_ids = ("EleutherAI/hendrycks_math", "hendrycks/competition_math")
    EXEMPLARS = _EXEMPLARS
    instruction = INSTRUCTION

    def __init__(self, subset: str | None = None, timeout_s: int = 3) -> None:
        """`subset`: keep one subject (e.g. "algebra"); `timeout_s`: math-verify limit per step."""
        if subset is not None and subject_key(subset) not in SUBJECTS:
            raise ValueError(f"math: unknown subset {subset!r}; choose one of {', '.join(SUBJECTS)}")
        if not isinstance(timeout_s, int) or timeout_s < 1:
            raise ValueError(f"math: timeout_s must be a positive integer (seconds), got {timeout_s!r}")
        self.subset = subject_key(subset) if subset is not None else None
        self.timeout_s = timeout_s

    def hub_configs_for(self, hub_id: str) -> tuple[str | None, ...]:
        if hub_id.lower() == "eleutherai/hendrycks_math":  # one config per subject
            return (self.subset,) if self.subset else tuple(SUBJECTS)
        return (None,)

    def _read(self, split: str, path: str | Path) -> list[Record]:
        tree = Path(path) / split
        if not is_hub_id(path) and tree.is_dir():  # the published layout: one JSON file per problem
            files = sorted(tree.rglob("*.json"), key=_tree_order)
            if not files:
                raise TaskDataError(f"{tree}: no .json problem files")
            return [rec for f in files for rec in read_records(f)]
        return super()._read(split, path)

    def parse_record(self, record: Record, split: str) -> Example:
        problem = record.get("problem", str)
        solution = record.get("solution", str)
        subject = record.first_of(("subject", "type"), str)
        level = parse_level(record.get("level"), record.where())
        answer = record.get("answer", str, optional=True)
        if answer is None:
            answer = last_boxed(solution)
            if answer is None:
                raise TaskDataError(f"{record.where()}: field 'solution' has no \\boxed{{}} answer")
        uid = record.get("unique_id", str, optional=True)
        if uid is None and Path(record.source).suffix == ".json" and record.line == 1:
            uid = "/".join(Path(record.source).parts[-3:])  # published tree: split/subject/n.json
        return Example(
            id=uid or f"math-{split}-{record.line}",
            question=problem,
            answer=answer.strip(),
            meta={
                "level": level,
                "subject": SUBJECTS.get(subject_key(subject), subject),
                "solution": solution,
            },
        )

    def select_split(self, split: str, examples: list[Example]) -> list[Example]:
        # A few source records box nothing (`\boxed{}`; 2 in the train split): no response can be
        # graded against them, so they are left out, with a warning naming them.
        empty = [ex.id for ex in examples if not ex.answer]
        if empty:
            warnings.warn(
                f"math: skipped {len(empty)} record(s) with an empty gold answer: {', '.join(empty[:10])}",
                stacklevel=4,
            )
            examples = [ex for ex in examples if ex.answer]
        if self.subset is None:
            return examples
        return [ex for ex in examples if subject_key(ex.meta["subject"]) == self.subset]

    def extract(self, response: str) -> str | None:
        boxed = last_boxed(response)
        if boxed is not None:
            return boxed.strip() or None
        after = text_after_answer_marker(response)
        if after is None:
            return None
        return strip_wrapping(after) or None

    def reward(self, example: Example, response: str) -> float:
        pred = self.extract(response)
        if pred is None:
            return 0.0
        return 1.0 if math_equivalent(str(example.answer), pred, self.timeout_s) else 0.0

    def gold_response(self, example: Example) -> str:
        solution = str(example.meta.get("solution", "")).strip()
        ending = f"The answer is $\\boxed{{{example.answer}}}$."
        return f"{solution}\n{ending}" if solution else ending


def _tree_order(path: Path) -> tuple:
    """Sort problem files by folder, then numerically by file name (2.json before 10.json)."""
    stem = path.stem
    return (str(path.parent), int(stem) if stem.isdigit() else float("inf"), stem)
