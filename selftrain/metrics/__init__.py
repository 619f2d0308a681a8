"""Evaluation metrics of both seed papers, as pure functions over plain Python data.

Paper A: greedy pass@1, correct-answer coverage, improvement sets and pass@k, diversity (distinct-n,
Sentence-BERT semantic diversity, distinct equations), OOD whole accuracy and group disparity.
Paper B: threshold / quantile filters and AND ensembles over proxy utilities, the
generation-verification gap and relative gap, score histograms, Pearson correlation, update error.
Definitions and edge cases: docs/metrics.md.
"""

from .diversity import (
    MIN_GROUP_SIZE,
    distinct_1_to_5,
    distinct_equations,
    distinct_n,
    diversity_report,
    extract_equations,
    load_sentence_encoder,
    normalize_equation,
    semantic_diversity,
    semantic_diversity_from_embeddings,
    tokenize,
)
from .gap import (
    and_ensemble,
    generation_verification_gap,
    improvement_decomposition,
    pearson,
    quantile_filter,
    score_histogram,
    threshold_filter,
    update_error,
)
from .majority import maj_at_k_per_question, majority_vote
from .ood import group_disparity, ood_report, parse_level
from .passk import (
    coverage,
    default_ks,
    improvement_set,
    mean_pass_at_k,
    pass_at_1_greedy,
    pass_at_k,
    pass_at_k_from_rewards,
    per_level_accuracy,
)

__all__ = [
    "MIN_GROUP_SIZE",
    "and_ensemble",
    "coverage",
    "default_ks",
    "distinct_1_to_5",
    "distinct_equations",
    "distinct_n",
    "diversity_report",
    "extract_equations",
    "generation_verification_gap",
    "group_disparity",
    "improvement_decomposition",
    "improvement_set",
    "load_sentence_encoder",
    "maj_at_k_per_question",
    "majority_vote",
    "mean_pass_at_k",
    "normalize_equation",
    "ood_report",
    "parse_level",
    "pass_at_1_greedy",
    "pass_at_k",
    "pass_at_k_from_rewards",
    "pearson",
    "per_level_accuracy",
    "quantile_filter",
    "score_histogram",
    "semantic_diversity",
    "semantic_diversity_from_embeddings",
    "threshold_filter",
    "tokenize",
    "update_error",
]
