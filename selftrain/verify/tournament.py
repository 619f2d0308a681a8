"""Tournament verification: single-elimination rounds of pairwise comparisons (paper B, appendix C).

For each question, its n responses are placed in a bracket in a seeded random order (seed,
question index); in each round adjacent entries meet, the verifier reads "Solution A" (the
first-listed) and "Solution B" and prefers one, and the preferred one advances. The proxy utility
of a response is the number of rounds it survived, so the kept set after r rounds is exactly
{û >= r} (a global threshold, `threshold_filter(scores, r)`): r = 0 keeps all, r = 1 the winners
of round 1, ..., r = R the champion.

Counts that are not a power of two: the bracket is padded to the next power of two 2^R with byes,
given to the first (2^R - n) entries of the seeded order; a bye advances without a comparison and
counts as a survived round. From round 2 on every round is full, so after round k (k >= 1) exactly
2^(R-k) responses remain, as in the paper. n = 1: no round is played (R = 0).

`rounds` caps how many rounds are played (None: until one is left); asking a filter for more
rounds than were played keeps the survivors of the last round played. An unreadable comparison
is counted and decided by a seeded coin flip, so a broken verifier favours neither position.
`info["first_wins_rate"]` is the share of readable comparisons won by the first-listed response
(0.5 = no position bias); every comparison is listed in `info["comparisons"]`.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

from .base import VerificationResult, Verifier, check_responses, problem_text, register
from .parse import parse_preference
from .prompts import build_prompt


def bracket_rounds(n: int) -> int:
    """R = ceil(log2 n): the rounds needed to reduce n entries to one (0 for n <= 1)."""
    return max(0, (n - 1).bit_length())


def first_round(order: Sequence[int]) -> tuple[list[int], list[tuple[int, int]]]:
    """(entries with a bye, matches) of round 1 for entries in bracket `order`."""
    n = len(order)
    if n <= 1:
        return list(order), []
    size = 1 << bracket_rounds(n)
    byes = size - n
    return list(order[:byes]), [(order[k], order[k + 1]) for k in range(byes, n, 2)]


def _rng(seed: int, question: int) -> random.Random:
    return random.Random(seed * 1_000_003 + question)


@register
class TournamentVerifier(Verifier):
    name = "tournament"

    def __init__(self, sampler: Any = None, *, rounds: int | None = None, **options: Any) -> None:
        super().__init__(sampler, **options)
        if rounds is not None and (not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 0):
            raise ValueError(f"tournament rounds must be a non-negative integer or None, got {rounds!r}")
        self.rounds = rounds

    def judge(self, prompts: list[str], round_index: int) -> list[str]:
        """The verifier's texts for a batch of comparison prompts (overridable in tests)."""
        return self._generate(prompts, seed_offset=10_000_019 * round_index) if prompts else []

    def score(self, task: Any, examples: Sequence[Any], responses_per_example: Sequence[Sequence[str]]
              ) -> VerificationResult:
        check_responses(examples, responses_per_example)
        family = self.family(task)
        problems = [problem_text(task, ex) for ex in examples]
        rngs = [_rng(self.seed, q) for q in range(len(examples))]
        scores = [[0.0] * len(r) for r in responses_per_example]
        failed = [[False] * len(r) for r in responses_per_example]
        raw = [[""] * len(r) for r in responses_per_example]
        total_rounds = [bracket_rounds(len(r)) for r in responses_per_example]
        to_play = [t if self.rounds is None else min(t, self.rounds) for t in total_rounds]
        # alive[q]: entries still in, in bracket order; byes of round 1 are decided up front.
        alive: list[list[int]] = []
        pending: list[list[tuple[int, int]]] = []
        for q, responses in enumerate(responses_per_example):
            order = list(range(len(responses)))
            rngs[q].shuffle(order)
            byes, matches = first_round(order)
            alive.append(order)
            pending.append(matches if to_play[q] >= 1 else [])
            if to_play[q] >= 1:
                for i in byes:
                    scores[q][i] += 1.0
        comparisons: list[dict[str, Any]] = []
        n_failed = first_wins = readable = 0
        round_index = 1
        while any(pending):
            prompts, where = [], []
            for q, matches in enumerate(pending):
                for a, b in matches:
                    pair = [responses_per_example[q][a], responses_per_example[q][b]]
                    prompts.append(
                        build_prompt("tournament", family, problems[q], pair, self.tokenizer, self.shots))
                    where.append((q, a, b))
            texts = self.judge(prompts, round_index)
            if len(texts) != len(prompts):
                raise RuntimeError(f"judge returned {len(texts)} texts for {len(prompts)} comparisons")
            losers: list[set[int]] = [set() for _ in pending]
            for (q, a, b), text in zip(where, texts):
                choice = parse_preference(text)
                if choice is None:
                    n_failed += 1
                    failed[q][a] = failed[q][b] = True
                    winner = a if rngs[q].random() < 0.5 else b
                else:
                    readable += 1
                    first_wins += choice == "A"
                    winner = a if choice == "A" else b
                loser = b if winner == a else a
                scores[q][winner] += 1.0
                losers[q].add(loser)
                raw[q][a] = raw[q][b] = text
                comparisons.append({"question": q, "round": round_index, "a": a, "b": b, "winner": winner,
                                    "verdict": choice})
            for q in range(len(pending)):
                if not pending[q]:
                    continue
                alive[q] = [i for i in alive[q] if i not in losers[q]]
                played = round_index
                pending[q] = ([(alive[q][k], alive[q][k + 1]) for k in range(0, len(alive[q]), 2)]
                              if played < to_play[q] else [])
            round_index += 1
        n_comparisons = len(comparisons)
        info = {
            "comparisons": comparisons,
            "n_comparisons": n_comparisons,
            "first_wins_rate": first_wins / readable if readable else None,
            "rounds_played": to_play,
            "rounds_full": total_rounds,
        }
        return VerificationResult(
            method=self.name, scores=scores, failed=failed, raw=raw, n_judgements=n_comparisons,
            n_failed=n_failed, default=None, info=info,
        )
