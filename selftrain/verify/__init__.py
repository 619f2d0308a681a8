"""Self-verification (paper B): verifiers that map (question, response) to a proxy utility û.

Methods (registry names): `mc` (p(Correct) / (p(Correct) + p(Incorrect))), `cot_binary`
(reason, then correct/incorrect -> 1/0), `cot_score` (reason, then a 1-10 score), `tournament`
(single-elimination pairwise comparisons; û = rounds survived) and `gold` (the task's grader).
Filters over their scores and AND ensembles: `selftrain.verify.filters`. Prompts and their
criteria: `selftrain.verify.prompts`. Details and defaults: docs/verification.md.
"""

from . import cot, gold, mc, tournament  # noqa: F401  (registers the methods)
from .base import (
    VerificationResult,
    Verifier,
    get_verifier,
    problem_text,
    register,
    verifier_names,
)
from .filters import FilterPart, FilterSpec, keep_masks, parse_filter
from .mc import candidate_groups, normalised_correct_probability
from .parse import parse_binary_verdict, parse_preference, parse_score
from .prompts import FAMILIES, build_prompt, family_for
from .tournament import bracket_rounds, first_round

__all__ = [
    "FAMILIES",
    "FilterPart",
    "FilterSpec",
    "VerificationResult",
    "Verifier",
    "bracket_rounds",
    "build_prompt",
    "candidate_groups",
    "family_for",
    "first_round",
    "get_verifier",
    "keep_masks",
    "normalised_correct_probability",
    "parse_binary_verdict",
    "parse_filter",
    "parse_preference",
    "parse_score",
    "problem_text",
    "register",
    "verifier_names",
]
