"""The gold verifier: û = the task's own grader u(x, y) (for ablations and as an upper bound)."""

from __future__ import annotations

from typing import Any, Sequence

from .base import VerificationResult, Verifier, check_responses, register


@register
class GoldVerifier(Verifier):
    name = "gold"
    needs_sampler = False

    def score(self, task: Any, examples: Sequence[Any], responses_per_example: Sequence[Sequence[str]]
              ) -> VerificationResult:
        check_responses(examples, responses_per_example)
        scores = [[float(task.reward(ex, r)) for r in responses]
                  for ex, responses in zip(examples, responses_per_example)]
        return VerificationResult(
            method=self.name, scores=scores, failed=[[False] * len(r) for r in scores],
            raw=[[""] * len(r) for r in scores], n_judgements=sum(len(r) for r in scores), n_failed=0,
        )
