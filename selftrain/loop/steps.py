"""Post-training step kinds: how D_t is built from graded samples, and which loss trains on it.

A step kind names a builder (graded samples of M_{t-1} -> training records), the trainer's loss,
the config section holding its TrainConfig ("sft" or "dpo") and whether the trainer needs the
reference model M_{t-1}. Built in: "sft" (all correct answers), "dpo" and "rpo" (correct x
incorrect pairs). "gold_sft" is iteration 1: SFT on the task's gold responses. Online kinds
("grpo", "rloo") build nothing: their iteration is a block of online RL steps that sample from the
current policy (`selftrain.train.grpo.rl_block`) with the loop's `rl:` section.

A response counts as correct when its reward is >= 1 (paper A's rewards are binary 0/1).
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence


@dataclass
class SampledQuestion:
    """The N graded samples of one training question (one row of iter_<t>/sample/samples.jsonl)."""

    id: str
    prompt: str
    responses: list[str]
    rewards: list[float]
    finish_reasons: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.responses) != len(self.rewards):
            raise ValueError(
                f"question {self.id!r}: {len(self.responses)} responses but {len(self.rewards)} rewards"
            )

    @classmethod
    def from_dict(cls, row: dict[str, Any], where: str = "sample row") -> SampledQuestion:
        missing = [k for k in ("id", "prompt", "responses", "rewards") if k not in row]
        if missing:
            raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
        return cls(
            id=str(row["id"]),
            prompt=row["prompt"],
            responses=list(row["responses"]),
            rewards=[float(r) for r in row["rewards"]],
            finish_reasons=list(row.get("finish_reasons", [])),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "prompt": self.prompt,
            "responses": self.responses,
            "rewards": self.rewards,
            "finish_reasons": self.finish_reasons,
        }


def is_correct(reward: float) -> bool:
    return float(reward) >= 1.0


def _unique(texts: Sequence[str]) -> list[str]:
    """Texts with identical duplicates removed, first occurrence kept (order is stable)."""
    return list(dict.fromkeys(texts))


def build_sft_set(questions: Sequence[SampledQuestion]) -> list[dict[str, str]]:
    """D_t of an SFT step: every correct response, identical duplicates of one question removed.

    A question with no correct sample adds nothing. Records: {"prompt", "response"}.
    """
    records: list[dict[str, str]] = []
    for q in questions:
        correct = _unique([r for r, w in zip(q.responses, q.rewards) if is_correct(w)])
        records.extend({"prompt": q.prompt, "response": r} for r in correct)
    return records


def build_preference_pairs(
    questions: Sequence[SampledQuestion], max_pairs_per_question: int | None, seed: int
) -> list[dict[str, str]]:
    """D_t of a DPO step: (correct, incorrect) pairs of the same question.

    Candidates are all pairs of distinct correct x distinct incorrect responses (identical
    duplicates removed on both sides, so no pair repeats). When there are more than
    `max_pairs_per_question` (None = no cap), that many are drawn without replacement with an RNG
    seeded by (seed, question id): the choice for a question does not depend on the others.
    A question lacking a correct or an incorrect sample adds nothing. Records: {"prompt", "chosen",
    "rejected"}.
    """
    if max_pairs_per_question is not None and (
        isinstance(max_pairs_per_question, bool)
        or not isinstance(max_pairs_per_question, int)
        or max_pairs_per_question < 1
    ):
        raise ValueError(
            f"max_pairs_per_question must be an int >= 1 or None, got {max_pairs_per_question!r}"
        )
    records: list[dict[str, str]] = []
    for q in questions:
        correct = _unique([r for r, w in zip(q.responses, q.rewards) if is_correct(w)])
        incorrect = _unique([r for r, w in zip(q.responses, q.rewards) if not is_correct(w)])
        pairs = list(itertools.product(correct, incorrect))
        if max_pairs_per_question is not None and len(pairs) > max_pairs_per_question:
            # A str seed is hashed with SHA-512 by `random`, so the draw is the same in every process.
            rng = random.Random(f"{seed}:{q.id}")
            pairs = rng.sample(pairs, max_pairs_per_question)
        records.extend({"prompt": q.prompt, "chosen": c, "rejected": r} for c, r in pairs)
    return records


def _distinct_first(texts: Sequence[str], key: Callable[[str], Any], m: int) -> list[str]:
    """At most m of `texts` (identical duplicates removed): first, in sample order, each text whose
    key no kept text has yet; then the rest in sample order, until m are kept."""
    unique = _unique(texts)
    seen: set[Any] = set()
    first, rest = [], []
    for text in unique:
        k = key(text)
        (rest if k in seen else first).append(text)
        seen.add(k)
    return (first + rest)[:m]


def select_diverse(
    questions: Sequence[SampledQuestion], m: int, answer_of: Callable[[str], Any]
) -> list[SampledQuestion]:
    """Diversity-preserving selection before D_t is built (docs/loop.md, "Loop interventions"):
    each question keeps at most m correct and at most m incorrect samples (identical duplicates
    removed). Correct samples share their final answer, so they are told apart by their equations
    (`metrics.extract_equations`, normalised; the stripped text when a response has none) and the
    ones bringing a new equation list come first (RFT, Yuan et al. 2023); among incorrect samples,
    those with a final answer (`answer_of`, the task's extract) not seen yet come first. Within each
    group the order is the sample order: the choice is deterministic and depends on that question
    alone."""
    from ..metrics import extract_equations

    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"m must be an int >= 1, got {m!r}")

    def reasoning(text: str) -> Any:
        return tuple(extract_equations(text)) or text.strip()

    out = []
    for q in questions:
        correct = [r for r, w in zip(q.responses, q.rewards) if is_correct(w)]
        incorrect = [r for r, w in zip(q.responses, q.rewards) if not is_correct(w)]
        kept_c = _distinct_first(correct, reasoning, m)
        kept_i = _distinct_first(incorrect, answer_of, m)
        rewards = [1.0] * len(kept_c) + [0.0] * len(kept_i)
        out.append(SampledQuestion(q.id, q.prompt, kept_c + kept_i, rewards))
    return out


def gold_sft_set(task: Any, examples: Sequence[Any], prompts: Sequence[str]) -> list[dict[str, str]]:
    """D_1: the gold training set, one {"prompt", "response": task.gold_response(example)} per question."""
    if len(examples) != len(prompts):
        raise ValueError(f"{len(examples)} examples but {len(prompts)} prompts")
    return [{"prompt": p, "response": task.gold_response(ex)} for ex, p in zip(examples, prompts)]


@dataclass(frozen=True)
class BuildOptions:
    seed: int
    max_pairs_per_question: int | None


Builder = Callable[[Sequence[SampledQuestion], BuildOptions], list[dict[str, str]]]


@dataclass(frozen=True)
class StepKind:
    """One post-training step: build D_t, then `train(loss=loss)` with the `train_section` config."""

    name: str
    build: Builder | None  # None for an online kind
    loss: str
    train_section: str  # "sft" or "dpo": the loop config's TrainConfig section; "rl" (online kinds)
    needs_reference: bool  # pass ref_model = M_{t-1} to the trainer
    # Fields this step sets over its section (e.g. {"label_smoothing": 0.1}; {"advantage": "rloo"}).
    train_overrides: dict[str, Any] = field(default_factory=dict)
    online: bool = False  # an online RL block (rl_block) instead of sample -> build -> train


_STEP_KINDS: dict[str, StepKind] = {}


def register_step_kind(kind: StepKind, *, replace: bool = False) -> StepKind:
    sections = ("rl",) if kind.online else ("sft", "dpo")
    if kind.train_section not in sections:
        raise ValueError(
            f"step kind {kind.name!r}: train_section must be {' or '.join(map(repr, sections))}"
            f"{' (an online kind)' if kind.online else ''}, got {kind.train_section!r}"
        )
    if (kind.build is None) != kind.online:
        raise ValueError(f"step kind {kind.name!r}: an online kind has no builder, an offline one needs one")
    from ..train.config import TrainConfig
    from ..train.grpo import RLConfig

    section = RLConfig if kind.online else TrainConfig
    unknown = sorted(set(kind.train_overrides) - {f.name for f in dataclasses.fields(section)})
    if unknown:
        raise ValueError(
            f"step kind {kind.name!r}: train_overrides has unknown {section.__name__} field(s) {unknown}"
        )
    if kind.name in _STEP_KINDS and not replace:
        raise ValueError(f"step kind {kind.name!r} is already registered (pass replace=True to override)")
    _STEP_KINDS[kind.name] = kind
    return kind


def get_step_kind(name: str) -> StepKind:
    if name not in _STEP_KINDS:
        raise ValueError(f"unknown step kind {name!r}; registered: {', '.join(step_kind_names())}")
    return _STEP_KINDS[name]


def step_kind_names() -> list[str]:
    return sorted(_STEP_KINDS)


register_step_kind(StepKind("sft", lambda qs, o: build_sft_set(qs), "sft", "sft", False))
register_step_kind(
    StepKind(
        "dpo", lambda qs, o: build_preference_pairs(qs, o.max_pairs_per_question, o.seed), "dpo", "dpo", True
    )
)
# RPO = DPO + an NLL term on the chosen answer (paper B's RL update); same pairs, trainer's "rpo" loss.
register_step_kind(
    StepKind(
        "rpo", lambda qs, o: build_preference_pairs(qs, o.max_pairs_per_question, o.seed), "rpo", "dpo", True
    )
)
# Online RL (docs/rl.md): GRPO as the `rl:` section sets it (Dr. GRPO with rl.advantage=dr_grpo),
# RLOO with its leave-one-out baseline whatever rl.advantage says.
register_step_kind(StepKind("grpo", None, "grpo", "rl", False, online=True))
register_step_kind(StepKind("rloo", None, "rloo", "rl", False, {"advantage": "rloo"}, online=True))
