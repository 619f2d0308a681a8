"""Paper A's evaluation of one model: greedy pass@1, N-sample metrics, OOD, and IS(t) against M1.

`evaluate_model` runs every generation through the sampler (sharded across ranks by the sampler
itself), grades answers sharded across ranks, and computes the metrics on rank 0 (the Sentence-BERT
encoder is loaded there only); every rank returns the same result.

Flat metric keys (the same in metrics.jsonl, W&B and report.md; definitions in docs/metrics.md):
  pass@1                     greedy accuracy on the test split
  pass@1/level_<L>           greedy accuracy per difficulty level (tasks with levels)
  greedy/truncated           fraction of greedy answers cut by max_new_tokens
  coverage                   mean over questions of correct samples / N (N = eval.n_samples)
  pass@k/<k>                 unbiased pass@k from the N samples, k = 1, 2, 4, ..., N
  maj@k/<k>                  majority vote over k samples' extracted answers (self-consistency),
                             mean over the N // k disjoint groups of k (metrics/majority.py)
  diversity/<group>/<m>      group correct | incorrect; m = distinct_n (distinct-1..5 averaged),
                             semantic (1 - mean pairwise SBERT cosine), equations (distinct
                             equations), n_questions (questions with >= 2 samples in the group)
  ood/accuracy, ood/level_<L>, ood/group_disparity   greedy, on the OOD split
  is/size, is/m1_pass@<N>    |IS(t)| and M1's pass@N on IS(t) (t >= 2 only)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from tqdm.auto import tqdm

from .. import dist
from ..metrics import (
    coverage,
    default_ks,
    diversity_report,
    improvement_set,
    maj_at_k_per_question,
    mean_pass_at_k,
    ood_report,
    parse_level,
    pass_at_1_greedy,
    per_level_accuracy,
)
from .config import EvalSection
from .steps import is_correct


@dataclass
class EvalData:
    """What a model is evaluated on: the test questions and, optionally, the OOD questions."""

    task: Any
    examples: list[Any]
    prompts: list[str]
    ood_task: Any = None
    ood_examples: list[Any] = field(default_factory=list)
    ood_prompts: list[str] = field(default_factory=list)
    stop: list[str] | None = None
    ood_stop: list[str] | None = None
    ood_levels: tuple[int, int] = (1, 5)


@dataclass
class EvalOutcome:
    metrics: dict[str, Any]
    details: dict[str, Any]  # per-question results later iterations need (IS(t), M1's samples)
    greedy_rows: list[dict[str, Any]]
    sample_rows: list[dict[str, Any]]


def grade(task: Any, examples: Sequence[Any], texts: Sequence[Sequence[str]]) -> list[list[float]]:
    """task.reward for every (question, response), sharded across ranks; same result on every rank."""
    if len(examples) != len(texts):
        raise ValueError(f"{len(examples)} questions but {len(texts)} lists of responses")
    flat = [(q, j) for q, row in enumerate(texts) for j in range(len(row))]

    def work(items: list[tuple[int, int]]) -> list[float]:
        return [float(task.reward(examples[q], texts[q][j])) for q, j in items]

    rewards = dist.map_sharded(flat, work)
    out: list[list[float]] = [[] for _ in texts]
    for (q, _), r in zip(flat, rewards):
        out[q].append(r)
    return out


def _level_key(level: Any) -> str:
    return str(level)


def _normalize_level(level: Any) -> Any:
    """3, "3" and "Level 3" (MATH's spelling) are one level, 3; other labels stay as they are."""
    try:
        return parse_level(level)
    except ValueError:
        return level


def _levels(examples: Sequence[Any]) -> list[Any] | None:
    levels = [(getattr(ex, "meta", None) or {}).get("level") for ex in examples]
    return None if any(lv is None for lv in levels) else [_normalize_level(lv) for lv in levels]


def sample_metrics(
    sample_texts: Sequence[Sequence[str]],
    sample_rewards: Sequence[Sequence[float]],
    encoder: Any = None,
    equations: bool = True,
    answers: Sequence[Sequence[Any]] | None = None,
) -> dict[str, Any]:
    """coverage, pass@k/<k>, maj@k/<k> (when the extracted `answers` are given) and
    diversity/<group>/<measure> from N graded samples per question."""
    return sample_metrics_per_question(sample_texts, sample_rewards, encoder, equations, answers)[0]


def sample_metrics_per_question(
    sample_texts: Sequence[Sequence[str]],
    sample_rewards: Sequence[Sequence[float]],
    encoder: Any = None,
    equations: bool = True,
    answers: Sequence[Sequence[Any]] | None = None,
) -> tuple[dict[str, Any], dict[str, list[float | None]]]:
    """`sample_metrics` and, per diversity key and maj@k key, its per-question values (None =
    question skipped), which details.json keeps for the report's tests over questions."""
    binary = [[1 if is_correct(r) else 0 for r in row] for row in sample_rewards]
    n = min(len(row) for row in binary)
    metrics: dict[str, Any] = {"coverage": coverage(binary)}
    for k, value in mean_pass_at_k([sum(row) for row in binary], n, default_ks(n)).items():
        metrics[f"pass@k/{k}"] = value
    per_question: dict[str, list[float | None]] = {}
    if answers is not None:
        for k in default_ks(n):
            values = maj_at_k_per_question(answers, binary, k)
            per_question[f"maj@k/{k}"] = list(values)
            metrics[f"maj@k/{k}"] = sum(values) / len(values)
    report = diversity_report(sample_texts, binary, encoder=encoder, equations=equations)
    for group in ("correct", "incorrect"):
        g = report[group]
        for measure, values in g["per_question"].items():
            per_question[f"diversity/{group}/{measure}"] = values
        metrics[f"diversity/{group}/distinct_n"] = g["distinct_n"]
        if encoder is not None:
            metrics[f"diversity/{group}/semantic"] = g["semantic"]
        if equations:
            metrics[f"diversity/{group}/equations"] = g["equations"]
        metrics[f"diversity/{group}/n_questions"] = g["n_questions"]
    return metrics, per_question


def greedy_metrics(rewards: Sequence[float], levels: Sequence[Any] | None) -> dict[str, Any]:
    binary = [1 if is_correct(r) else 0 for r in rewards]
    metrics: dict[str, Any] = {"pass@1": pass_at_1_greedy(binary)}
    if levels is not None:
        levels = [_normalize_level(lv) for lv in levels]
        for level, acc in per_level_accuracy(binary, levels).items():
            metrics[f"pass@1/level_{_level_key(level)}"] = acc
    return metrics


def ood_metrics(
    rewards: Sequence[float], levels: Sequence[Any] | None, low: int, high: int
) -> dict[str, Any]:
    binary = [1 if is_correct(r) else 0 for r in rewards]
    if levels is None:
        return {"ood/accuracy": pass_at_1_greedy(binary)}
    report = ood_report(binary, levels, low_level=low, high_level=high)
    metrics: dict[str, Any] = {"ood/accuracy": report["whole_accuracy"]}
    for level, acc in report["per_level_accuracy"].items():
        metrics[f"ood/level_{level}"] = acc
    # None when level `low` has accuracy 0 (the ratio is undefined) or a level is missing.
    metrics["ood/group_disparity"] = report["group_disparity"]
    return metrics


def improvement_metrics(
    ids: Sequence[str],
    greedy_t: Sequence[float],
    greedy_m1: Sequence[float],
    m1_correct_counts: Sequence[int],
    m1_n: int,
    ns: Sequence[int],
) -> dict[str, Any]:
    """|IS(t)| and M1's pass@N on IS(t) for every N in `ns` (N <= m1_n).

    M1 was sampled once with m1_n samples per test question; the unbiased estimator turns those
    into pass@N for any N <= m1_n on any subset, so every IS(t) reuses the same samples.
    None for every N when IS(t) is empty.
    """
    flags_t = [1 if is_correct(r) else 0 for r in greedy_t]
    flags_m1 = [1 if is_correct(r) else 0 for r in greedy_m1]
    members = set(improvement_set(list(ids), flags_t, flags_m1))
    counts = [c for qid, c in zip(ids, m1_correct_counts) if qid in members]
    usable = sorted({n for n in ns if n <= m1_n})
    metrics: dict[str, Any] = {"is/size": len(members)}
    for n, value in mean_pass_at_k(counts, m1_n, usable).items() if usable else []:
        metrics[f"is/m1_pass@{n}"] = value
    return metrics


def evaluate_model(
    sampler: Any,
    data: EvalData,
    cfg: EvalSection,
    seed: int,
    extra_samples: int = 0,
    encoder: Any = None,
    show_progress: bool = True,
) -> EvalOutcome:
    """Evaluate the model behind `sampler` on `data` (collective under torchrun).

    `extra_samples` > cfg.n_samples draws that many samples per test question instead (M1: the
    samples behind pass@N on IS(t)); the N-sample metrics still use the first cfg.n_samples.
    """
    n_total = max(cfg.n_samples, extra_samples)
    phases = ["greedy", "samples"] + (["ood"] if data.ood_task is not None and data.ood_examples else [])
    bar = tqdm(
        total=len(phases) + 1, desc="evaluate", disable=not (show_progress and dist.is_main()), leave=False
    )

    greedy = sampler.generate(
        data.prompts, n=1, temperature=0.0, max_new_tokens=cfg.max_new_tokens, stop=data.stop, seed=seed
    )
    greedy_texts = [row[0].text for row in greedy]
    greedy_rewards = [row[0] for row in grade(data.task, data.examples, [[t] for t in greedy_texts])]
    bar.update(1)

    sampled = sampler.generate(
        data.prompts,
        n=n_total,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        max_new_tokens=cfg.max_new_tokens,
        stop=data.stop,
        seed=seed + 1,
    )
    sample_texts = [[c.text for c in row] for row in sampled]
    sample_rewards = grade(data.task, data.examples, sample_texts)
    bar.update(1)

    ood_rewards: list[float] = []
    ood_texts: list[str] = []
    if "ood" in phases:
        ood = sampler.generate(
            data.ood_prompts,
            n=1,
            temperature=0.0,
            max_new_tokens=cfg.max_new_tokens,
            stop=data.ood_stop,
            seed=seed,
        )
        ood_texts = [row[0].text for row in ood]
        ood_rewards = [row[0] for row in grade(data.ood_task, data.ood_examples, [[t] for t in ood_texts])]
        bar.update(1)

    metrics: dict[str, Any] | None = None
    diversity: dict[str, list[float | None]] | None = None
    majority: dict[str, list[float | None]] | None = None
    if dist.is_main():
        levels = _levels(data.examples)
        metrics = greedy_metrics(greedy_rewards, levels)
        metrics["greedy/truncated"] = sum(row[0].finish_reason == "length" for row in greedy) / len(greedy)
        head = [row[: cfg.n_samples] for row in sample_texts]
        head_rewards = [row[: cfg.n_samples] for row in sample_rewards]
        answers = [[data.task.extract(t) for t in row] for row in head]
        found, per_question = sample_metrics_per_question(
            head, head_rewards, encoder=encoder, equations=cfg.equations, answers=answers
        )
        diversity = {k: v for k, v in per_question.items() if k.startswith("diversity/")}
        majority = {k: v for k, v in per_question.items() if k.startswith("maj@k/")}
        metrics.update(found)
        if ood_rewards:
            metrics.update(ood_metrics(ood_rewards, _levels(data.ood_examples), *data.ood_levels))
    metrics, diversity, majority = dist.broadcast_object((metrics, diversity, majority))
    bar.update(1)
    bar.close()

    ids = [str(ex.id) for ex in data.examples]
    # Per question, everything the report's intervals and paired tests need (docs/metrics.md,
    # "Intervals and verdicts"): any interval can be recomputed from the run folder alone.
    test_levels = _levels(data.examples)
    ood_levels = _levels(data.ood_examples) if ood_rewards else None
    details = {
        "ids": ids,
        "levels": test_levels,
        "greedy_truncated": [int(row[0].finish_reason == "length") for row in greedy],
        "diversity": diversity,
        "majority": majority,  # maj@k/<k>: per-question majority-vote correctness (metrics/majority.py)
        "ood_ids": [str(ex.id) for ex in data.ood_examples] if ood_rewards else [],
        "ood_levels": ood_levels,
        "ood_low_high": list(data.ood_levels),
        "greedy_rewards": greedy_rewards,
        "n_samples": cfg.n_samples,
        "sample_correct": [sum(is_correct(r) for r in row[: cfg.n_samples]) for row in sample_rewards],
        "extra_n": n_total,
        "extra_correct": [sum(is_correct(r) for r in row) for row in sample_rewards],
        "ood_rewards": ood_rewards,
    }
    greedy_rows = [
        {"id": i, "response": t, "reward": r, "finish_reason": row[0].finish_reason}
        for i, t, r, row in zip(ids, greedy_texts, greedy_rewards, greedy)
    ]
    greedy_rows += [
        {"id": f"ood:{ex.id}", "response": t, "reward": r}
        for ex, t, r in zip(data.ood_examples, ood_texts, ood_rewards)
    ]
    sample_rows = [
        {"id": i, "responses": t, "rewards": r} for i, t, r in zip(ids, sample_texts, sample_rewards)
    ]
    return EvalOutcome(metrics=metrics, details=details, greedy_rows=greedy_rows, sample_rows=sample_rows)
