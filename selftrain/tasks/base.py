"""The task interface: `Example`, the `Task` base class and the base of file-backed tasks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selftrain.tasks.common import (
    Record,
    TaskDataError,
    check_shots,
    find_split_file,
    is_hub_id,
    load_hub_records,
    read_records,
    render_prompt,
    take_limit,
    uses_chat_template,
)


@dataclass
class Example:
    """One question with its gold answer. `meta` holds task extras (level, subject, tests, choices...)."""

    id: str
    question: str
    answer: Any
    meta: dict = field(default_factory=dict)


class Task:
    """A task: loads examples, builds prompts, extracts and grades answers.

    Subclasses set `name`, `instruction`, `splits`, `train_split`, `eval_split` and implement
    `_load_split`, `extract`, `reward`, `gold_response`, `_exemplars` (and `format_question` when
    the question needs more than `example.question`).
    """

    name: str = ""
    # What the model is asked to do, including how to state the final answer so `extract` finds it.
    instruction: str = ""
    splits: tuple[str, ...] = ()
    train_split: str = "train"
    eval_split: str = "test"
    # Strings after which a base model's plain-text continuation should stop (it starts a new question).
    stop: tuple[str, ...] = ("\nQuestion:",)

    def load(self, split: str, path: str | Path | None = None, limit: int | None = None) -> list[Example]:
        """Examples of `split` (from `path`: file, folder or hub id, for file-backed tasks)."""
        self._check_split(split)
        return take_limit(self._load_split(split, path), limit)

    def prompt(
        self, example: Example, tokenizer: Any = None, shots: int = 0, prompt_format: str = "chat"
    ) -> str:
        """Zero-shot by default; `shots=k` puts k worked examples first. prompt_format "chat": the
        tokenizer's chat template when it has one; "fewshot": plain text whatever the tokenizer."""
        template = tokenizer if uses_chat_template(tokenizer, prompt_format) else None
        pairs = self._exemplars(example, shots)
        turns = [(self.format_question(ex), response) for ex, response in pairs]
        return render_prompt(self.instruction, turns, self.format_question(example), template)

    def user_message(self, example: Example) -> str:
        """The instruction and the question as one user message (what a chat prompt's last turn holds)."""
        return f"{self.instruction}\n\n{self.format_question(example)}"

    # --- to implement -------------------------------------------------------------------------
    def _load_split(self, split: str, path: str | Path | None) -> list[Example]:
        raise NotImplementedError

    def format_question(self, example: Example) -> str:
        """The question as shown to the model (with choices, tests, grid... as the task needs)."""
        return example.question

    def extract(self, response: str) -> str | None:
        raise NotImplementedError

    def reward(self, example: Example, response: str) -> float:
        raise NotImplementedError

    def gold_response(self, example: Example) -> str:
        raise NotImplementedError

    def _exemplars(self, example: Example, shots: int) -> list[tuple[Example, str]]:
        """`shots` (example, worked response) pairs, never `example` itself."""
        raise NotImplementedError

    # --- helpers ------------------------------------------------------------------------------
    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise ValueError(
                f"task {self.name!r} has no split {split!r}; its splits: {', '.join(self.splits)}"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def standard_split_files(*splits: str) -> dict[str, tuple[str, ...]]:
    """`split_files` for datasets whose files are named after their splits (train.jsonl, test*.json...)."""
    return {split: (f"{split}.jsonl", f"{split}*.jsonl", f"{split}*.json") for split in splits}


class FileTask(Task):
    """A task read from a dataset file, a folder holding the split's file, or a hub dataset id.

    Subclasses give `split_files` (glob patterns per split, tried in order inside a folder),
    `hub_ids` (known hub ids, first one used in hints), `hub_configs` (configs to load per hub id,
    lower-case keys) and `parse_record` (raw record -> Example, raising TaskDataError on bad fields).
    Worked examples for few-shot prompts are fixed: `EXEMPLARS` of (Example, response) written for
    this project.
    """

    split_files: dict[str, tuple[str, ...]] = {}
    hub_ids: tuple[str, ...] = ()
    hub_configs: dict[str, tuple[str | None, ...]] = {}
    EXEMPLARS: tuple[tuple[Example, str], ...] = ()

    def _load_split(self, split: str, path: str | Path | None) -> list[Example]:
        if path is None:
            hint = f" or a hub id such as {self.hub_ids[0]!r}" if self.hub_ids else ""
            raise ValueError(
                f"task {self.name!r} needs path= (a data file, a folder holding "
                f"{' / '.join(self.split_files.get(split, ()))}{hint})"
            )
        records = self._read(split, path)
        examples = self.select_split(split, [self.parse_record(rec, split) for rec in records])
        if not examples:  # an empty evaluation would look like a result; say what is wrong instead
            raise TaskDataError(f"task {self.name!r}: no examples of split {split!r} in {path}")
        return examples

    def _read(self, split: str, path: str | Path) -> list[Record]:
        if is_hub_id(path):
            return load_hub_records(str(path), split, self.hub_configs_for(str(path)))
        p = Path(path)
        if p.is_dir():
            return read_records(find_split_file(p, self.split_files.get(split, ()), split))
        if p.is_file():
            return read_records(p)
        raise TaskDataError(f"{p}: no such file or folder (nor a hub id of the form org/name)")

    def hub_configs_for(self, hub_id: str) -> tuple[str | None, ...]:
        """Which configs of a hub dataset make up the task's data (None: the default config)."""
        return self.hub_configs.get(hub_id.lower(), (None,))

    def parse_record(self, record: Record, split: str) -> Example:
        raise NotImplementedError

    def select_split(self, split: str, examples: list[Example]) -> list[Example]:
        """Keep the examples that belong to `split` (a whole-dataset file may hold several splits)."""
        return examples

    def _exemplars(self, example: Example, shots: int) -> list[tuple[Example, str]]:
        check_shots(shots, len(self.EXEMPLARS), self.name)
        return list(self.EXEMPLARS[:shots])

