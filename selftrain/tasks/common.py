"""Shared helpers for every task: reading records, numbers, answer markers, prompts.

Everything here is dataset-agnostic; the task modules hold the dataset-specific rules.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Sequence


class TaskDataError(ValueError):
    """Bad task input (unreadable file, bad JSON, missing field); the message names file, line, field."""


@dataclass(frozen=True)
class Record:
    """One raw dataset record and where it came from (for error messages)."""

    source: str  # file path, or "hub:<id>[<split>]"
    line: int  # 1-based line (JSONL) or record index (JSON array, hub rows)
    data: dict

    def where(self) -> str:
        return f"{self.source} line {self.line}"

    def get(self, field: str, types: type | tuple[type, ...] | None = None, *, optional: bool = False) -> Any:
        """The value of `field`, checked against `types`; a missing/mistyped field raises TaskDataError."""
        if field not in self.data or self.data[field] is None:
            if optional:
                return None
            raise TaskDataError(f"{self.where()}: missing field {field!r}")
        value = self.data[field]
        if types is not None and not isinstance(value, types):
            expected = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
            raise TaskDataError(
                f"{self.where()}: field {field!r} should be {expected}, got {type(value).__name__}"
            )
        return value

    def first_of(self, fields: Sequence[str], types: type | tuple[type, ...] | None = None) -> Any:
        """The first present field among `fields` (datasets name the same column differently)."""
        for field in fields:
            if field in self.data and self.data[field] is not None:
                return self.get(field, types)
        raise TaskDataError(f"{self.where()}: missing field {' / '.join(repr(f) for f in fields)}")


# ---------------------------------------------------------------------------------------------
# Reading files and hub datasets


def read_records(path: str | Path) -> list[Record]:
    """Records of a JSONL file, a JSON array file, or a one-record JSON file.

    A `.json` file that is not a single JSON value is read as JSON lines (some dumps name JSONL
    files `.json`). Blank lines are skipped; every record must be a JSON object.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise TaskDataError(f"cannot read {path}: {e}") from e
    except UnicodeDecodeError as e:
        raise TaskDataError(f"{path}: not UTF-8 text ({e})") from e
    if path.suffix == ".json":
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None  # fall through to JSON lines
        if isinstance(whole, list):
            records = []
            for i, item in enumerate(whole, 1):
                if not isinstance(item, dict):
                    raise TaskDataError(
                        f"{path} record {i}: expected a JSON object, got {type(item).__name__}"
                    )
                records.append(Record(str(path), i, item))
            return records
        if isinstance(whole, dict):
            return [Record(str(path), 1, whole)]
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise TaskDataError(f"{path} line {lineno}: invalid JSON ({e.msg} at column {e.colno})") from e
        if not isinstance(item, dict):
            raise TaskDataError(f"{path} line {lineno}: expected a JSON object, got {type(item).__name__}")
        records.append(Record(str(path), lineno, item))
    return records


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


_FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".txt", ".gz", ".arrow")


def is_hub_id(path: str | Path) -> bool:
    """`org/name` that is not an existing local path nor looks like a file name."""
    text = str(path)
    if not _HUB_ID.match(text) or text.lower().endswith(_FILE_SUFFIXES):
        return False
    return not Path(text).exists()


def load_hub_records(hub_id: str, split: str, configs: Sequence[str | None] = (None,)) -> list[Record]:
    """Rows of a Hugging Face hub dataset split (one or several configs, concatenated in order).

    Needs the `datasets` package and network access; both failures give a clear error.
    """
    try:
        import datasets  # lazy: only hub loading needs it
    except ImportError as e:
        raise TaskDataError(
            f"loading the hub dataset {hub_id!r} needs the `datasets` package (pip install datasets); "
            "or pass a local file or folder as path"
        ) from e
    records: list[Record] = []
    for config in configs:
        label = f"hub:{hub_id}" + (f"/{config}" if config else "") + f"[{split}]"
        try:
            rows = datasets.load_dataset(hub_id, config, split=split)
        except Exception as e:  # offline, unknown id, unknown split: all surface the same way
            raise TaskDataError(
                f"could not load hub dataset {hub_id!r}"
                + (f" config {config!r}" if config else "")
                + f" split {split!r} (no local file or folder has that name; a hub dataset needs "
                f"network access, or pass a local copy as path): {e}"
            ) from e
        for i, row in enumerate(rows, 1):
            records.append(Record(label, i, dict(row)))
    return records


def find_split_file(folder: Path, patterns: Sequence[str], split: str) -> Path:
    """The first file in `folder` matching one of the glob `patterns` (tried in order)."""
    for pattern in patterns:
        matches = sorted(p for p in folder.glob(pattern) if p.is_file())
        if matches:
            return matches[0]
    raise TaskDataError(
        f"no file for split {split!r} in folder {folder} (looked for {', '.join(patterns)})"
    )


# ---------------------------------------------------------------------------------------------
# Numbers (GSM8K-style grading, also used by the arithmetic task)

# A number as people write it: optional sign and $, thousands commas, decimals.
_NUMBER = r"-?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_NUMBER_RE = re.compile(_NUMBER)
_STRICT_RE = re.compile(
    r"(?:the\s+(?:final\s+)?answer\s+is|####)\s*:?\s*\**\s*(" + _NUMBER + r")", re.IGNORECASE
)


def _unify_minus(text: str) -> str:
    return text.replace("\u2212", "-").replace("\u2013", "-")


def clean_number(text: str) -> str | None:
    """Drop `,`, `$`, spaces and a trailing `.` (as lm-evaluation-harness does); None if not a number."""
    text = _unify_minus(text).strip().replace(",", "").replace("$", "").replace(" ", "")
    text = text.rstrip(".")
    if not re.fullmatch(r"-?\d+(?:\.\d+)?", text):
        return None
    return text


def numbers_equal(a: str | int | float | None, b: str | int | float | None) -> bool:
    """Numeric equality of two answers after `clean_number` ("18.00" == "18"); strings if unparsable."""
    if a is None or b is None:
        return False
    ca, cb = clean_number(str(a)), clean_number(str(b))
    if ca is not None and cb is not None:
        return Fraction(ca) == Fraction(cb)
    return str(a).strip() == str(b).strip()


def extract_number_answer(response: str) -> str | None:
    """Strict ("The answer is N" / "#### N", last one wins), else the last number in the text."""
    text = _unify_minus(response)
    strict = _STRICT_RE.findall(text)
    if strict:
        return clean_number(strict[-1])
    numbers = _NUMBER_RE.findall(text)
    if numbers:
        return clean_number(numbers[-1])
    return None


# ---------------------------------------------------------------------------------------------
# Free-text answer markers and LaTeX boxes

_MARKER_RE = re.compile(r"the\s+(?:final\s+)?answer\s+is\s*:?[ \t]*", re.IGNORECASE)


def text_after_answer_marker(response: str) -> str | None:
    """The rest of the line after the last "The answer is" (None if there is no marker).

    A marker at the end of its line takes the next non-empty line instead.
    """
    matches = list(_MARKER_RE.finditer(response))
    if not matches:
        return None
    rest = response[matches[-1].end():]
    for line in rest.splitlines():
        if line.strip():
            return line.strip()
    return None


def strip_wrapping(text: str) -> str:
    """Remove markdown emphasis, surrounding $...$ and one trailing period from an answer string."""
    text = text.strip()
    text = text.strip("*").strip()
    if text.endswith("."):
        text = text[:-1].rstrip()
    if len(text) >= 2 and text.startswith("$") and text.endswith("$"):
        text = text.strip("$").strip()
    return text


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` or `\\fbox{...}` (balanced braces), or `\\boxed x`."""
    best: str | None = None
    best_pos = -1
    for command in ("\\boxed", "\\fbox"):
        start = text.rfind(command)
        while start != -1:
            content = _box_content(text, start + len(command))
            if content is not None:
                if start > best_pos:
                    best, best_pos = content, start
                break
            start = text.rfind(command, 0, start)
    return best


def _box_content(text: str, pos: int) -> str | None:
    if pos < len(text) and text[pos] == "{":
        depth = 0
        for i in range(pos, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[pos + 1 : i]
        return None  # unbalanced: a truncated answer
    if pos < len(text) and text[pos] == " ":
        # `\boxed 5` (no braces): up to the next `$` or whitespace
        m = re.match(r" +([^\s$]+)", text[pos:])
        return m.group(1) if m else None
    return None


# ---------------------------------------------------------------------------------------------
# Prompts


# chat: the tokenizer's chat template when it has one (plain text otherwise); fewshot: always plain
# text "Question: ...\nAnswer:\n" blocks, the lm-eval style paper B evaluates base models with.
PROMPT_FORMATS = ("chat", "fewshot")


def uses_chat_template(tokenizer: Any, prompt_format: str = "chat") -> bool:
    """Whether prompts in `prompt_format` are rendered with `tokenizer`'s chat template (and so end
    at EOS rather than at the task's stop strings)."""
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"prompt_format={prompt_format!r}: must be one of {', '.join(PROMPT_FORMATS)}")
    return prompt_format == "chat" and bool(getattr(tokenizer, "chat_template", None))


def render_prompt(
    instruction: str,
    turns: Sequence[tuple[str, str]],
    question: str,
    tokenizer: Any = None,
) -> str:
    """The prompt for `question` after worked examples `turns` ((question, response) pairs).

    With a tokenizer that has a chat template, every question (worked ones included) is a user
    message "instruction + question" and every worked response an assistant message; the result
    ends with the assistant's generation prompt. Without one, plain text: the instruction once,
    then "Question: ...\nAnswer:\n<response>" blocks, ending with "Answer:\n" (the response starts
    on a new line, so the prompt's tokens do not depend on the response's first token).
    """
    if uses_chat_template(tokenizer):
        messages: list[dict[str, str]] = []
        for user, assistant in turns:
            messages.append({"role": "user", "content": f"{instruction}\n\n{user}"})
            messages.append({"role": "assistant", "content": assistant})
        messages.append({"role": "user", "content": f"{instruction}\n\n{question}"})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    parts = [f"{instruction}\n\n"]
    for user, assistant in turns:
        parts.append(f"Question: {user}\nAnswer:\n{assistant}\n\n")
    parts.append(f"Question: {question}\nAnswer:\n")
    return "".join(parts)


def check_shots(shots: int, available: int, task: str) -> None:
    if not isinstance(shots, int) or shots < 0:
        raise ValueError(f"shots must be a non-negative integer, got {shots!r}")
    if shots > available:
        raise ValueError(f"task {task!r} has {available} worked examples; shots={shots} asks for more")


def take_limit(items: list, limit: int | None) -> list:
    """The first `limit` items (all when None); a negative limit is an error."""
    if limit is None:
        return items
    if not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit must be a non-negative integer or None, got {limit!r}")
    return items[:limit]
