"""maj@k (self-consistency, Wang et al. 2023): the answer most of k samples give, graded.

Each sample's final answer is what the task's `extract` returns (None: no answer, which casts no
vote). The vote of a group of k samples is the answer given by the most samples; a tie goes to the
tied answer that appears first in sample order (the samples are i.i.d. draws, so this is as good
as a random tie-break and it is deterministic). The group is correct when the sample that first
gave the voted answer is correct (samples with the same extracted answer get the same reward under
answer-based grading); a group in which no sample gives an answer is wrong.

Estimate per question: the N samples are cut into floor(N / k) consecutive groups of k and maj@k
is the mean correctness of their votes. Every group is an independent draw of k samples, so this
is an unbiased estimate of the question's maj@k (one group for k = N), with less variance than
using the first k samples only.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from ._checks import binary_nested, require_same_length


def majority_vote(answers: Sequence[Hashable | None], correct: Sequence[int]) -> int:
    """1 when the majority answer of one group of samples is correct, else 0 (see module doc)."""
    require_same_length(answers, correct, "answers", "correct")
    votes: dict[Hashable, int] = {}
    first: dict[Hashable, int] = {}
    for j, answer in enumerate(answers):
        if answer is None:
            continue
        votes[answer] = votes.get(answer, 0) + 1
        first.setdefault(answer, j)
    if not votes:
        return 0
    winner = max(votes, key=lambda a: (votes[a], -first[a]))
    return int(correct[first[winner]])


def maj_at_k_per_question(
    answers_per_question: Sequence[Sequence[Hashable | None]],
    rewards_per_question: Sequence[Sequence[float]],
    k: int,
) -> list[float]:
    """maj@k of every question from its N >= k samples (mean over floor(N / k) disjoint groups)."""
    require_same_length(answers_per_question, rewards_per_question, "answers_per_question",
                        "rewards_per_question")
    rows = binary_nested(rewards_per_question, "rewards_per_question")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    out = []
    for q, (answers, correct) in enumerate(zip(answers_per_question, rows)):
        require_same_length(answers, correct, f"answers of question {q}", f"rewards of question {q}")
        groups = len(correct) // k
        if groups == 0:
            raise ValueError(f"question {q}: k = {k} exceeds its {len(correct)} samples")
        votes = [majority_vote(answers[g * k:(g + 1) * k], correct[g * k:(g + 1) * k]) for g in range(groups)]
        out.append(sum(votes) / groups)
    return out
