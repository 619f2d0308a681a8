"""Chain-of-thought verification: the verifier reasons, then gives a verdict or a 1-10 score.

CoT-Binary: û = 1 for "Verdict: correct", 0 for "Verdict: incorrect".
CoT-Score:  û = the score N of "Score: N" (1..10).
Each response gets one sampled verification (paper B samples one per response). The verdict or
score is read by `selftrain.verify.parse`; an unreadable one is counted as a failure and mapped to
the method's default: 0 for CoT-Binary and 1 for CoT-Score, i.e. the verdict the prompts ask for
when a response has no final answer (a verifier that cannot say "correct" has not vouched for it).
"""

from __future__ import annotations

from typing import Any, Sequence

from .base import VerificationResult, Verifier, check_responses, problem_text, register
from .parse import parse_binary_verdict, parse_score
from .prompts import build_prompt


class _CoTVerifier(Verifier):
    """Shared flow: build one prompt per response, sample one verification each, parse it."""

    def parse(self, text: str) -> float | None:
        raise NotImplementedError

    def score(self, task: Any, examples: Sequence[Any], responses_per_example: Sequence[Sequence[str]]
              ) -> VerificationResult:
        check_responses(examples, responses_per_example)
        family = self.family(task)
        prompts, where = [], []
        for q, (example, responses) in enumerate(zip(examples, responses_per_example)):
            problem = problem_text(task, example)
            for i, response in enumerate(responses):
                prompts.append(
                    build_prompt(self.name, family, problem, [response], self.tokenizer, self.shots))
                where.append((q, i))
        texts = self._generate(prompts) if prompts else []
        scores = [[0.0] * len(r) for r in responses_per_example]
        failed = [[False] * len(r) for r in responses_per_example]
        raw = [[""] * len(r) for r in responses_per_example]
        n_failed = 0
        for (q, i), text in zip(where, texts):
            value = self.parse(text)
            if value is None:
                n_failed += 1
                failed[q][i] = True
                value = self.default_score
            scores[q][i] = float(value)
            raw[q][i] = text
        return VerificationResult(
            method=self.name, scores=scores, failed=failed, raw=raw, n_judgements=len(prompts),
            n_failed=n_failed, default=self.default_score,
        )


@register
class CoTBinaryVerifier(_CoTVerifier):
    name = "cot_binary"
    default_score = 0.0

    def parse(self, text: str) -> float | None:
        verdict = parse_binary_verdict(text)
        return None if verdict is None else float(verdict)


@register
class CoTScoreVerifier(_CoTVerifier):
    name = "cot_score"
    default_score = 1.0

    def parse(self, text: str) -> float | None:
        return parse_score(text, 1, 10)
