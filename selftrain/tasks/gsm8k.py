"""GSM8K: grade-school math word problems with a numeric answer.

Data: the published JSONL (`question`, `answer` ending with `#### N`), which is also the layout of
the hub dataset `openai/gsm8k` (config `main`). Grading: the number after the last "The answer is"
or "####" (strict), else the last number in the response (flexible); compared numerically after
removing `,`, `$` and a trailing `.`.
"""

from __future__ import annotations

import re

from selftrain.tasks.base import Example, FileTask, standard_split_files
from selftrain.tasks.common import (
    Record,
    TaskDataError,
    clean_number,
    extract_number_answer,
    numbers_equal,
)

INSTRUCTION = (
    "Solve this math word problem. Work it out step by step, then write the final answer on the "
    'last line as "The answer is N." where N is a number.'
)

_CALCULATOR = re.compile(r"<<[^<>]*>>")


def _ex(question: str) -> Example:
    return Example(id="gsm8k-exemplar", question=question, answer=None)


# Worked examples written for this project (the few-shot set for shots=1..4).
_EXEMPLARS = (
    (
        _ex("A baker fills 6 trays with 8 rolls each. She sells 29 rolls. How many rolls are left?"),
        "The trays hold 6 * 8 = 48 rolls.\nAfter selling, 48 - 29 = 19 rolls are left.\nThe answer is 19.",
    ),
    (
        _ex("Ravi reads 12 pages on Monday and twice as many on Tuesday. How many pages does he read "
            "over the two days?"),
        "On Tuesday he reads 2 * 12 = 24 pages.\nIn total he reads 12 + 24 = 36 pages.\nThe answer is 36.",
    ),
    (
        _ex("A ticket costs $15 and a snack costs $4. Mia buys 3 tickets and 2 snacks and pays with a "
            "$100 bill. How much change does she get?"),
        "The tickets cost 3 * 15 = $45.\nThe snacks cost 2 * 4 = $8.\nShe spends 45 + 8 = $53.\n"
        "Her change is 100 - 53 = $47.\nThe answer is 47.",
    ),
    (
        _ex("A garden has 90 plants. One third of them are tomatoes and half of the rest are peppers. "
            "How many plants are peppers?"),
        "Tomatoes: 90 / 3 = 30 plants.\nThe rest: 90 - 30 = 60 plants.\nPeppers: 60 / 2 = 30 plants.\n"
        "The answer is 30.",
    ),
)


def gold_final(answer_text: str) -> str | None:
    """The number after `####` in a GSM8K reference answer (cleaned), None if absent."""
    if "####" not in answer_text:
        return None
    return clean_number(answer_text.rsplit("####", 1)[1])


class GSM8K(FileTask):
    name = "gsm8k"
    splits = ("train", "test")
    train_split = "train"
    eval_split = "test"
    split_files = standard_split_files("train", "test")
    hub_ids = ("openai/gsm8k",)
    hub_configs = {"openai/gsm8k": ("main",)}
    EXEMPLARS = _EXEMPLARS
    instruction = INSTRUCTION

    def parse_record(self, record: Record, split: str) -> Example:
        question = record.get("question", str)
        solution = record.get("answer", str)
        final = gold_final(solution)
        if final is None:
            raise TaskDataError(f"{record.where()}: field 'answer' has no '#### N' final number")
        return Example(
            id=f"gsm8k-{split}-{record.line}",
            question=question,
            answer=final,
            meta={"solution": solution},
        )

    def extract(self, response: str) -> str | None:
        return extract_number_answer(response)

    def reward(self, example: Example, response: str) -> float:
        return 1.0 if numbers_equal(self.extract(response), example.answer) else 0.0

    def gold_response(self, example: Example) -> str:
        solution = example.meta.get("solution")
        if not solution:
            return f"The answer is {example.answer}."
        steps = _CALCULATOR.sub("", solution.rsplit("####", 1)[0]).strip()
        return f"{steps}\nThe answer is {example.answer}."
