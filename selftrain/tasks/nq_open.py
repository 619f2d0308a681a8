"""NQ-open: short factual questions; correct if the answer matches any reference after normalisation.

Data: the published JSONL (`question`, `answer` list of accepted strings) — `NQ-open.train.jsonl`,
`NQ-open.dev.jsonl` — which is also the layout of the hub dataset
`google-research-datasets/nq_open` (splits train, validation).
Normalisation (as in SQuAD-style exact match): lower-case, drop punctuation, drop the articles
a/an/the, collapse whitespace.
"""

from __future__ import annotations

import re
import string

from selftrain.tasks.base import Example, FileTask
from selftrain.tasks.common import Record, TaskDataError, strip_wrapping, text_after_answer_marker

INSTRUCTION = (
    "Answer this question with a short fact (a name, date, number or short phrase). End with "
    '"The answer is X." on one line.'
)

_PUNCTUATION = set(string.punctuation) | {"\u2018", "\u2019", "\u201c", "\u201d", "\u2013", "\u2014"}


def normalize_answer(text: str) -> str:
    """Lower-case, remove punctuation and the articles a/an/the, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def answers_match(pred: str, reference: str) -> bool:
    """Normalised equality. A reference that normalises to nothing (NQ-open holds a few, such as
    "---") needs the exact raw string, so an empty prediction never matches it by accident."""
    ref_norm = normalize_answer(reference)
    if ref_norm:
        return normalize_answer(pred) == ref_norm
    return pred.strip() == reference.strip()


def _ex(question: str) -> Example:
    return Example(id="nq-exemplar", question=question, answer=None)


_EXEMPLARS = (
    (_ex("what is the largest planet in the solar system"), "The answer is Jupiter."),
    (_ex("how many legs does a spider have"), "The answer is eight."),
    (_ex("who painted the mona lisa"), "The answer is Leonardo da Vinci."),
    (_ex("in which country is the city of kyoto"), "The answer is Japan."),
)


class NQOpen(FileTask):
    name = "nq_open"
    instruction = INSTRUCTION
    splits = ("train", "validation")
    train_split = "train"
    eval_split = "validation"
    split_files = {
        "train": ("NQ-open.train.jsonl", "NQ-open.train*.jsonl", "train*.jsonl", "train*.json"),
        "validation": ("NQ-open.dev.jsonl", "NQ-open.dev*.jsonl", "dev*.jsonl", "validation*.jsonl",
                       "validation*.json", "dev*.json"),
    }
    hub_ids = ("google-research-datasets/nq_open",)
    EXEMPLARS = _EXEMPLARS

    def parse_record(self, record: Record, split: str) -> Example:
        question = record.get("question", str)
        answers = record.get("answer", (list, str))
        if isinstance(answers, str):
            answers = [answers]
        if not answers or not all(isinstance(a, str) for a in answers):
            raise TaskDataError(f"{record.where()}: field 'answer' should be a non-empty list of strings")
        return Example(id=f"nq_open-{split}-{record.line}", question=question, answer=list(answers))

    def extract(self, response: str) -> str | None:
        after = text_after_answer_marker(response)
        if after is None:
            first = next((line for line in response.splitlines() if line.strip()), None)
            if first is None:
                return None
            after = first
        answer = strip_wrapping(after)
        return answer or None

    def reward(self, example: Example, response: str) -> float:
        pred = self.extract(response)
        if pred is None:
            return 0.0
        return 1.0 if any(answers_match(pred, ref) for ref in example.answer) else 0.0

    def gold_response(self, example: Example) -> str:
        return f"The answer is {example.answer[0]}."
