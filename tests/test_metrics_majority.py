"""maj@k (selftrain/metrics/majority.py): the vote, its tie-break, abstentions and the group estimate."""

from __future__ import annotations

import pytest

from selftrain.metrics import maj_at_k_per_question, majority_vote


def test_the_most_frequent_answer_wins_and_is_graded():
    assert majority_vote(["4", "5", "4"], [1, 0, 1]) == 1
    assert majority_vote(["5", "4", "5", "5"], [0, 1, 0, 0]) == 0  # the right answer is a minority
    assert majority_vote([None, None, "4"], [0, 0, 1]) == 1  # no answer casts no vote
    assert majority_vote([None, None], [0, 0]) == 0  # nobody answered: wrong


def test_ties_go_to_the_answer_seen_first():
    assert majority_vote(["7", "4", "4", "7"], [0, 1, 1, 0]) == 0  # 7 and 4 tie, 7 came first
    assert majority_vote(["4", "7", "7", "4"], [1, 0, 0, 1]) == 1
    # deterministic: the same input always votes the same way
    assert {majority_vote(["a", "b"], [1, 0]) for _ in range(5)} == {1}


def test_maj_at_k_is_the_mean_over_disjoint_groups_of_k():
    answers = [["1", "1", "2", "2", "2", "1", "3"]]
    rewards = [[1, 1, 0, 0, 0, 1, 0]]
    # k = 1: each sample alone -> coverage of the first 7
    assert maj_at_k_per_question(answers, rewards, 1) == [pytest.approx(3 / 7)]
    # k = 2: groups (1,1) (2,2) (2,1): votes 1, 0, 0 (tie -> "2" first); the 7th sample is unused
    assert maj_at_k_per_question(answers, rewards, 2) == [pytest.approx(1 / 3)]
    # k = 7: one group, "2" 3 votes vs "1" 3 votes: "1" appeared first -> correct
    assert maj_at_k_per_question(answers, rewards, 7) == [1.0]


def test_maj_at_k_matches_brute_force_on_random_questions():
    import random

    rng = random.Random(0)
    for _ in range(50):
        n = rng.randint(1, 9)
        k = rng.randint(1, n)
        answers = [rng.choice(["a", "b", "c", None]) for _ in range(n)]
        rewards = [int(a == "a") for a in answers]
        want = []
        for g in range(n // k):
            group = answers[g * k:(g + 1) * k]
            counts = {a: group.count(a) for a in group if a is not None}
            if not counts:
                want.append(0)
                continue
            best = max(counts.values())
            winner = next(a for a in group if a is not None and counts[a] == best)
            want.append(int(winner == "a"))
        assert maj_at_k_per_question([answers], [rewards], k) == [pytest.approx(sum(want) / len(want))]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="exceeds"):
        maj_at_k_per_question([["a"]], [[1]], 2)
    with pytest.raises(ValueError, match="k must be"):
        maj_at_k_per_question([["a"]], [[1]], 0)
    with pytest.raises(ValueError):
        maj_at_k_per_question([["a", "b"]], [[1]], 1)
