"""CommonsenseQA: five-way multiple choice; the answer is a letter A-E.

Data: the published JSONL (`answerKey`, `id`, `question` {`stem`, `choices` [{`label`, `text`}],
`question_concept`}) or the hub layout of `tau/commonsense_qa` (`id`, `question` string,
`question_concept`, `choices` {`label`: [...], `text`: [...]}, `answerKey`). Splits: train and
validation (the public test split has no answers).
"""

from __future__ import annotations

import re

from selftrain.tasks.base import Example, FileTask
from selftrain.tasks.common import Record, TaskDataError

LETTERS = "ABCDE"

INSTRUCTION = (
    "Answer this multiple-choice question using common sense. You may explain briefly, then finish "
    'with "The answer is (X)." where X is the letter of the best choice.'
)

# After "answer is" / "answer:": a letter in parentheses, a capital letter on its own, or a
# lower-case letter followed only by punctuation or the end (so "the answer is a park" is no "A").
_AFTER_MARKER = re.compile(
    r"(?i:answer)\s*(?:(?i:is)|:)\s*:?\s*\**\s*"
    r"(?:\(\s*([A-Ea-e])\s*\)|([A-E])\b|([a-e])(?=\s*(?:$|[.)\]:,;!\n])))",
    re.MULTILINE,
)
# A response that opens with the letter: "B", "B.", "(B)", "B)", "B:" (not "A person ...").
_LEADING = re.compile(r"^\s*\**\s*\(?([A-E])(?:\)|\.|:|[ \t]*$|[ \t]*\n)")
_PAREN = re.compile(r"\(([A-E])\)")


def _ex(stem: str, texts: list[str]) -> Example:
    choices = [{"label": label, "text": text} for label, text in zip(LETTERS, texts)]
    return Example(id="csqa-exemplar", question=stem, answer=None, meta={"choices": choices})


_EXEMPLARS = (
    (
        _ex("Where would you keep milk so that it stays cold?", ["cupboard", "refrigerator", "oven",
            "mailbox", "garden"]),
        "Milk is kept cold in a refrigerator. The answer is (B).",
    ),
    (
        _ex("What do people usually do when they are very tired at night?", ["run a race", "cook dinner",
            "go to sleep", "paint a fence", "wash the car"]),
        "Tired people rest by sleeping. The answer is (C).",
    ),
    (
        _ex("Where is a child most likely to find a slide and swings?", ["library", "bank",
            "hospital", "office", "playground"]),
        "Slides and swings are found at a playground. The answer is (E).",
    ),
    (
        _ex("What might happen to ice cream left out in the sun?", ["melt", "freeze", "grow",
            "sing", "harden"]),
        "Heat from the sun makes ice cream melt. The answer is (A).",
    ),
)


class CommonsenseQA(FileTask):
    name = "csqa"
    instruction = INSTRUCTION
    splits = ("train", "validation")
    train_split = "train"
    eval_split = "validation"
    split_files = {
        "train": ("train_rand_split.jsonl", "train*.jsonl", "train*.json"),
        "validation": ("dev_rand_split.jsonl", "dev*.jsonl", "validation*.jsonl", "validation*.json",
                       "dev*.json"),
    }
    hub_ids = ("tau/commonsense_qa",)
    EXEMPLARS = _EXEMPLARS

    def parse_record(self, record: Record, split: str) -> Example:
        question = record.get("question", (str, dict))
        if isinstance(question, dict):  # published layout: question {stem, choices, concept}
            inner = Record(record.source, record.line, question)
            stem = inner.get("stem", str)
            raw_choices = inner.get("choices", list)
            concept = inner.get("question_concept", str, optional=True)
            choices = []
            for i, choice in enumerate(raw_choices):
                if not isinstance(choice, dict) or "label" not in choice or "text" not in choice:
                    raise TaskDataError(
                        f"{record.where()}: field 'question.choices[{i}]' needs label and text"
                    )
                choices.append({"label": str(choice["label"]), "text": str(choice["text"])})
        else:  # hub layout: question string, choices {label: [...], text: [...]}
            stem = question
            raw = record.get("choices", dict)
            labels, texts = raw.get("label"), raw.get("text")
            if not isinstance(labels, list) or not isinstance(texts, list) or len(labels) != len(texts):
                raise TaskDataError(
                    f"{record.where()}: field 'choices' should hold equal-length lists 'label' and 'text'"
                )
            choices = [{"label": str(lab), "text": str(txt)} for lab, txt in zip(labels, texts)]
            concept = record.get("question_concept", str, optional=True)
        key = record.get("answerKey", str).strip().upper()
        labels = [c["label"] for c in choices]
        if key not in labels:
            raise TaskDataError(
                f"{record.where()}: field 'answerKey' is {key!r}, not one of the choice labels {labels}"
            )
        return Example(
            id=str(record.get("id", (str, int), optional=True) or f"csqa-{split}-{record.line}"),
            question=stem,
            answer=key,
            meta={"choices": choices, "concept": concept},
        )

    def format_question(self, example: Example) -> str:
        options = "\n".join(f"({c['label']}) {c['text']}" for c in example.meta["choices"])
        return f"{example.question}\n{options}"

    def extract(self, response: str) -> str | None:
        matches = list(_AFTER_MARKER.finditer(response))
        if matches:
            groups = matches[-1].groups()
            return next(g for g in groups if g).upper()
        lead = _LEADING.match(response)
        if lead:
            return lead.group(1)
        parens = _PAREN.findall(response)
        if parens:
            return parens[-1]
        return None

    def reward(self, example: Example, response: str) -> float:
        return 1.0 if self.extract(response) == example.answer else 0.0

    def gold_response(self, example: Example) -> str:
        text = next(c["text"] for c in example.meta["choices"] if c["label"] == example.answer)
        return f"The best choice is {text}. The answer is ({example.answer})."
