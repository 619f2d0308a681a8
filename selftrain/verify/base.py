"""The verifier interface, its result type and the registry of methods by name.

A verifier maps (question, response) pairs to proxy utilities û (paper B): it is given a task, its
examples and the responses generated for each, and returns one score per response. The verifier
model runs through its own `selftrain.sampler.Sampler` (the only generation path), so the generator
and the verifier can be different models (cross-verification). `gold` uses the task's grader.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .prompts import Family, family_for


@dataclass
class VerificationResult:
    """Scores of one verifier on responses grouped per question.

    scores[q][i]: û of response i of question q (the method's default where it failed).
    failed[q][i]: True when the verifier's output for that response could not be read.
    raw[q][i]: the verifier's text (MC: its two probabilities) for inspection.
    n_judgements / n_failed: how many verifier calls were made and how many were unreadable (for
    the tournament these count comparisons, not responses); failure_rate is their ratio.
    info: method-specific extras (tournament: comparisons, first-listed win rate, rounds run).
    """

    method: str
    scores: list[list[float]]
    failed: list[list[bool]]
    raw: list[list[str]]
    n_judgements: int
    n_failed: int
    default: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def failure_rate(self) -> float:
        return self.n_failed / self.n_judgements if self.n_judgements else 0.0

    def flat_scores(self) -> list[float]:
        return [s for row in self.scores for s in row]


def problem_text(task: Any, example: Any) -> str:
    """What the verifier is shown as the problem: the task's own user message when it has one.

    The user message carries the answer-format instruction and, for multiple-choice or code tasks,
    the choices or the test that the bare question lacks.
    """
    user_message = getattr(task, "user_message", None)
    if callable(user_message):
        try:
            return str(user_message(example))
        except NotImplementedError:
            pass
    return str(example.question)


def check_responses(examples: Sequence[Any], responses_per_example: Sequence[Sequence[str]]) -> None:
    if len(examples) != len(responses_per_example):
        raise ValueError(
            f"got {len(examples)} examples but responses for {len(responses_per_example)}; they must match"
        )
    for q, responses in enumerate(responses_per_example):
        if isinstance(responses, str):
            raise TypeError(f"responses_per_example[{q}] must be a list of responses, got a string")
        for i, r in enumerate(responses):
            if not isinstance(r, str):
                raise TypeError(f"responses_per_example[{q}][{i}] must be a string, got {type(r).__name__}")


class Verifier:
    """Base class. Subclasses set `name` and implement `score`.

    sampler: the verifier model's Sampler (None only for `gold`). shots: worked verifications put
    before the prompt (0..4). temperature / top_p / max_new_tokens: sampling of the verifier's
    reasoning (paper B: 0.7 / 0.9 / 512, one verification per response). family: force a prompt
    criteria family instead of the task's own. batch_size: prompts per sampler call (bounds memory
    on large runs; the sampler batches further inside).
    """

    name: str = ""
    needs_sampler: bool = True
    default_score: float | None = None

    def __init__(
        self,
        sampler: Any = None,
        *,
        shots: int = 0,
        temperature: float = 0.7,
        top_p: float = 0.9,
        max_new_tokens: int = 512,
        seed: int = 0,
        family: str | None = None,
        batch_size: int = 4096,
    ) -> None:
        if self.needs_sampler and sampler is None:
            raise ValueError(f"verifier {self.name!r} needs a sampler (the verifier model)")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.sampler = sampler
        self.shots = shots
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.family_override = family
        self.batch_size = batch_size

    @property
    def tokenizer(self) -> Any:
        return getattr(self.sampler, "tokenizer", None)

    def family(self, task: Any) -> Family:
        return family_for(getattr(task, "name", ""), self.family_override)

    def score(self, task: Any, examples: Sequence[Any], responses_per_example: Sequence[Sequence[str]]
              ) -> VerificationResult:
        raise NotImplementedError

    # --- helpers for subclasses ---------------------------------------------------------------
    def _generate(self, prompts: list[str], seed_offset: int = 0) -> list[str]:
        """One sampled verification per prompt (the text), in prompt order, in chunks of batch_size."""
        texts: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start:start + self.batch_size]
            out = self.sampler.generate(
                chunk,
                n=1,
                temperature=self.temperature,
                top_p=self.top_p,
                max_new_tokens=self.max_new_tokens,
                stop=["\nQuestion:"],  # the plain layout's next exemplar; chat models stop at eos
                seed=self.seed + seed_offset + start,
                truncate_prompts=True,  # an over-long prompt keeps its end (the response, the ask)
            )
            if len(out) != len(chunk):
                raise RuntimeError(f"sampler returned {len(out)} results for {len(chunk)} prompts")
            texts.extend(completions[0].text for completions in out)
        return texts


_REGISTRY: dict[str, Callable[..., Verifier]] = {}


def register(cls: type[Verifier]) -> type[Verifier]:
    """Class decorator: make a verifier available to `get_verifier` under its `name`."""
    _REGISTRY[cls.name] = cls
    return cls


def verifier_names() -> list[str]:
    return sorted(_REGISTRY)


def get_verifier(name: str, sampler: Any = None, **options: Any) -> Verifier:
    """A verifier by method name: mc, cot_binary, cot_score, tournament or gold."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown verification method {name!r}; choose from {', '.join(verifier_names())}")
    return _REGISTRY[name](sampler, **options)
