"""MBPP: short Python programming problems graded by running their assert tests.

Data: the published `mbpp.jsonl` (all 974 problems: `task_id`, `text`, `code`, `test_list`,
`test_setup_code`, `challenge_test_list`) or the hub layout of `google-research-datasets/mbpp`
(same columns; the `sanitized` config names the description `prompt` and adds `test_imports`).
Splits are by task id, as the dataset defines them: prompt 1-10, test 11-510, validation 511-600,
train 601-974. A response is graded by running its code, then `test_setup_code`, then every assert
of `test_list` in the confined runner `selftrain.sandbox.run_python`.
"""

from __future__ import annotations

import re
import uuid

from selftrain.tasks.base import Example, FileTask
from selftrain.tasks.common import Record, TaskDataError

SPLIT_IDS = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974)}

INSTRUCTION = (
    "Write a Python function that solves the task below. It must pass the given test. Reply with the "
    "complete code in a single ```python code block."
)

_FENCED = re.compile(r"```[ \t]*[\w+-]*[ \t]*\n(.*?)```", re.DOTALL)
_OPEN_FENCE = re.compile(r"```[ \t]*[\w+-]*[ \t]*\n(.*)$", re.DOTALL)


def _ex(text: str, test: str) -> Example:
    return Example(id="mbpp-exemplar", question=text, answer=None, meta={"tests": [test]})


_EXEMPLARS = (
    (
        _ex("Write a function that returns the largest of three numbers.",
            "assert largest_of_three(4, 9, 2) == 9"),
        "```python\ndef largest_of_three(a, b, c):\n    return max(a, b, c)\n```",
    ),
    (
        _ex("Write a function to count the vowels in a string.", "assert count_vowels('banana') == 3"),
        "```python\ndef count_vowels(text):\n    return sum(1 for ch in text.lower() if ch in 'aeiou')\n```",
    ),
    (
        _ex("Write a function to reverse the order of words in a sentence.",
            "assert reverse_words('red green blue') == 'blue green red'"),
        "```python\ndef reverse_words(sentence):\n    return ' '.join(reversed(sentence.split()))\n```",
    ),
    (
        _ex("Write a function that returns the sum of the squares of a list of integers.",
            "assert sum_of_squares([1, 2, 3]) == 14"),
        "```python\ndef sum_of_squares(numbers):\n    total = 0\n    for n in numbers:\n"
        "        total += n * n\n    return total\n```",
    ),
)


def _string_list(record: Record, field: str, optional: bool = False) -> list[str]:
    value = record.get(field, list, optional=optional)
    if value is None:
        return []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise TaskDataError(f"{record.where()}: field '{field}[{i}]' should be a string")
    return list(value)


class MBPP(FileTask):
    name = "mbpp"
    instruction = INSTRUCTION
    splits = ("train", "test", "validation", "prompt")
    train_split = "train"
    eval_split = "test"
    split_files = {
        split: (f"{split}.jsonl", f"{split}*.jsonl", "mbpp.jsonl", "mbpp*.jsonl", "mbpp*.json")
        for split in SPLIT_IDS
    }
    hub_ids = ("google-research-datasets/mbpp",)
    EXEMPLARS = _EXEMPLARS
    stop = ("\nQuestion:",)

    def __init__(self, timeout_s: float = 10.0, memory_mb: int = 1024) -> None:
        """`timeout_s`, `memory_mb`: limits of one graded run in the sandbox."""
        if not timeout_s > 0:
            raise ValueError(f"mbpp: timeout_s must be positive, got {timeout_s!r}")
        if not isinstance(memory_mb, int) or memory_mb < 64:
            raise ValueError(f"mbpp: memory_mb must be an integer >= 64, got {memory_mb!r}")
        self.timeout_s = float(timeout_s)
        self.memory_mb = memory_mb

    def parse_record(self, record: Record, split: str) -> Example:
        task_id = record.get("task_id", int)
        text = record.first_of(("text", "prompt"), str)
        code = record.get("code", str)
        tests = _string_list(record, "test_list")
        if not tests:
            raise TaskDataError(f"{record.where()}: field 'test_list' is empty")
        setup = record.get("test_setup_code", str, optional=True) or ""
        imports = _string_list(record, "test_imports", optional=True)
        if imports:  # sanitized config: imports the tests need
            setup = "\n".join(imports) + ("\n" + setup if setup else "")
        return Example(
            id=f"mbpp-{task_id}",
            question=text,
            answer=code,
            meta={
                "task_id": task_id,
                "tests": tests,
                "test_setup_code": setup,
                "challenge_tests": _string_list(record, "challenge_test_list", optional=True),
            },
        )

    def select_split(self, split: str, examples: list[Example]) -> list[Example]:
        low, high = SPLIT_IDS[split]
        return [ex for ex in examples if low <= ex.meta["task_id"] <= high]

    def format_question(self, example: Example) -> str:
        return f"{example.question}\nYour code should pass this test:\n{example.meta['tests'][0]}"

    def extract(self, response: str) -> str | None:
        blocks = _FENCED.findall(response)
        if blocks:
            code = blocks[-1]
        else:
            unterminated = _OPEN_FENCE.search(response)  # a generation cut off inside its block
            code = unterminated.group(1) if unterminated else response
        code = code.strip("\n")
        return code if code.strip() else None

    def test_program(self, example: Example, code: str, sentinel: str = "") -> str:
        """The program that grades `code`: the code, the setup, the asserts, then a sentinel print."""
        parts = [code, example.meta.get("test_setup_code", ""), "\n".join(example.meta["tests"])]
        if sentinel:
            parts.append(f"print({sentinel!r})")
        return "\n\n".join(p for p in parts if p) + "\n"

    def reward(self, example: Example, response: str) -> float:
        code = self.extract(response)
        if code is None:
            return 0.0
        from selftrain.sandbox import run_python  # lazy: the sandbox builds a C extension

        # A fresh random line printed after the asserts: a program that exits early with status 0
        # (exit(0), os._exit(0)) never prints it, so it cannot pass without running the tests.
        sentinel = f"mbpp-tests-passed-{uuid.uuid4().hex}"
        result = run_python(
            self.test_program(example, code, sentinel), timeout_s=self.timeout_s, memory_mb=self.memory_mb
        )
        passed = result.returncode == 0 and not result.timed_out and sentinel in (result.stdout or "")
        return 1.0 if passed else 0.0

    def gold_response(self, example: Example) -> str:
        code = str(example.answer).replace("\r\n", "\n").strip("\n")
        return f"```python\n{code}\n```"
