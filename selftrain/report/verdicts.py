"""Per-question data of evaluated models -> intervals, paired verdicts, churn and power.

Everything here is recomputed from a run folder alone (each model's `eval/details.json`, and for
folders written before per-question levels and diversity values were kept, `greedy.jsonl` and
`samples.jsonl`); what cannot be recomputed is reported as unavailable with the reason. The
statistics themselves live in `selftrain.metrics.stats`.

Verdict rule (docs/metrics.md, "Intervals and verdicts"): a metric **progressed** / **regressed**
only when its Holm-adjusted p-value (over the metrics of one comparison) is below alpha and the
(1 - alpha) interval of the difference excludes 0; otherwise **no detectable change**;
**undefined** when a value is missing on either side.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..metrics import stats
from ..metrics.passk import default_ks, pass_at_k

PROGRESSED, REGRESSED, NO_CHANGE, UNDEFINED = "progressed", "regressed", "no detectable change", "undefined"
VERDICT_KEYS = (
    "metric",
    "baseline",
    "model",
    "baseline_value",
    "value",
    "delta",
    "ci_low",
    "ci_high",
    "p_value",
    "p_adjusted",
    "verdict",
)
DEFAULT_ALPHA = 0.05
DEFAULT_EFFECT = 0.05

_LOWER_IS_BETTER = ("ood/group_disparity", "greedy/truncated")
_NO_VERDICT_PREFIXES = ("data/", "train/", "sample/", "is/", "churn/")


def direction(key: str) -> int:
    """+1 higher is better, -1 lower is better, 0 no verdict."""
    if key.endswith(("/ci_low", "/ci_high")):
        return 0
    if key in _LOWER_IS_BETTER:
        return -1
    if key.startswith(_NO_VERDICT_PREFIXES) or key.endswith("/n_questions"):
        return 0
    if key.startswith(("pass@", "maj@", "coverage", "diversity/", "ood/")):
        return 1
    return 0


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {i}: not valid JSON ({e.msg})") from None
    return rows


@dataclass
class Metric:
    """One metric of one model as a statistic over a question set ("test" or "ood")."""

    qset: str
    stat: stats.Statistic
    outcomes: np.ndarray | None = None  # 0/1 metrics: per-question outcome (Wilson, McNemar)
    members: np.ndarray | None = None  # ... and which questions count (a level)


@dataclass
class ModelData:
    """Per-question results of one evaluated model."""

    name: str  # "M3"
    qids: dict[str, list[str]] = field(default_factory=dict)  # question set -> ids, in order
    metrics: dict[str, Metric] = field(default_factory=dict)
    greedy: np.ndarray | None = None
    coverage_values: np.ndarray | None = None  # per-question correct share (coverage's power)
    extra_n: int | None = None  # samples behind pass@N on IS(t) (M1 only)
    extra_correct: np.ndarray | None = None
    unavailable: dict[str, str] = field(default_factory=dict)  # metric (or prefix*) -> reason


def _binary(qset: str, outcomes: np.ndarray, members: np.ndarray | None = None) -> Metric:
    m = np.ones(outcomes.shape, dtype=bool) if members is None else members
    return Metric(qset, stats.mean_statistic(outcomes, m), outcomes, m)


def _level_keys(levels: Sequence[Any]) -> list[Any]:
    seen: dict[Any, None] = {}
    for lv in levels:
        seen.setdefault(lv, None)
    try:
        return sorted(seen)
    except TypeError:
        return list(seen)


def load_model_data(eval_dir: Path, name: str, equations: bool = True) -> ModelData:
    """Read one model's eval folder. A folder written before this change lacks levels, truncation
    flags and per-question diversity in details.json: truncation comes from greedy.jsonl, distinct-n
    and distinct equations are recomputed from samples.jsonl, and the rest is marked unavailable."""
    out = ModelData(name)
    path = eval_dir / "details.json"
    if not path.is_file():
        out.unavailable["*"] = f"no per-question data: {path} does not exist"
        return out
    d = _read_json(path)
    for key in ("ids", "greedy_rewards"):
        if key not in d:
            raise ValueError(f"{path}: missing field {key!r}")
    ids = [str(i) for i in d["ids"]]
    out.qids["test"] = ids
    greedy = np.array([1.0 if float(r) >= 1 else 0.0 for r in d["greedy_rewards"]])
    if len(greedy) != len(ids):
        raise ValueError(f"{path}: {len(ids)} ids but {len(greedy)} greedy_rewards")
    out.greedy = greedy
    out.metrics["pass@1"] = _binary("test", greedy)

    levels = d.get("levels")
    if levels is not None:
        lv = np.array([str(x) for x in levels], dtype=object)
        for level in _level_keys(list(levels)):
            out.metrics[f"pass@1/level_{level}"] = _binary("test", greedy, lv == str(level))
    elif "levels" not in d:
        out.unavailable["pass@1/level_*"] = "details.json predates per-question levels"

    truncated = d.get("greedy_truncated")
    if truncated is None and (eval_dir / "greedy.jsonl").is_file():
        rows = [
            r for r in _read_jsonl(eval_dir / "greedy.jsonl") if not str(r.get("id", "")).startswith("ood:")
        ]
        if len(rows) == len(ids) and all("finish_reason" in r for r in rows):
            truncated = [int(r["finish_reason"] == "length") for r in rows]
    if truncated is not None:
        out.metrics["greedy/truncated"] = _binary("test", np.asarray(truncated, dtype=np.float64))
    else:
        out.unavailable["greedy/truncated"] = "no per-question finish reasons in details.json or greedy.jsonl"

    n = d.get("n_samples")
    correct = d.get("sample_correct")
    if n and correct is not None:
        c = np.asarray(correct, dtype=np.int64)
        out.coverage_values = c / n
        out.metrics["coverage"] = Metric("test", stats.mean_statistic(c / n))
        for k in default_ks(int(n)):
            out.metrics[f"pass@k/{k}"] = Metric(
                "test", stats.mean_statistic(_pass_at_k_per_question(int(n), c, k))
            )
    else:
        out.unavailable["coverage"] = out.unavailable["pass@k/*"] = "details.json has no sample_correct"
    if d.get("extra_correct") is not None and d.get("extra_n"):
        out.extra_n = int(d["extra_n"])
        out.extra_correct = np.asarray(d["extra_correct"], dtype=np.int64)

    diversity = d.get("diversity")
    if diversity is None:
        diversity = _diversity_from_samples(eval_dir, n, equations, out)
    for key, values in (diversity or {}).items():
        out.metrics[key] = Metric("test", stats.mean_statistic(values))
    for key, values in (d.get("majority") or {}).items():  # maj@k/<k>, per question
        out.metrics[key] = Metric("test", stats.mean_statistic(values))
    if d.get("majority") is None:
        out.unavailable["maj@k/*"] = "details.json predates maj@k (no per-question majority votes)"

    ood = d.get("ood_rewards") or []
    if ood:
        ood_arr = np.array([1.0 if float(r) >= 1 else 0.0 for r in ood])
        out.qids["ood"] = [str(i) for i in d.get("ood_ids") or range(len(ood))]
        out.metrics["ood/accuracy"] = _binary("ood", ood_arr)
        ood_levels = d.get("ood_levels")
        if ood_levels is not None:
            low, high = d.get("ood_low_high") or (1, 5)
            lv = np.array([str(x) for x in ood_levels], dtype=object)
            for level in _level_keys(list(ood_levels)):
                out.metrics[f"ood/level_{level}"] = _binary("ood", ood_arr, lv == str(level))
            out.metrics["ood/group_disparity"] = Metric(
                "ood", stats.disparity_statistic(ood_arr, [str(x) for x in ood_levels], str(low), str(high))
            )
        elif "ood_levels" not in d:
            reason = "details.json predates per-question OOD levels"
            out.unavailable["ood/level_*"] = out.unavailable["ood/group_disparity"] = reason
    return out


def _pass_at_k_per_question(n: int, correct: np.ndarray, k: int) -> np.ndarray:
    """pass@k of every question: the estimator tabulated over the n + 1 possible correct counts."""
    table = np.array([pass_at_k(n, c, k) for c in range(n + 1)])
    return table[np.asarray(correct, dtype=np.int64)]


def _diversity_from_samples(
    eval_dir: Path, n: int | None, equations: bool, out: ModelData
) -> dict[str, list[float | None]]:
    """Per-question distinct-n (and distinct equations) recomputed from samples.jsonl; semantic
    diversity would need the sentence encoder, so it is unavailable for such folders."""
    from ..metrics import diversity_report

    reason = "details.json predates per-question diversity values"
    path = eval_dir / "samples.jsonl"
    if not path.is_file() or not n:
        out.unavailable["diversity/*"] = f"{reason}, and {path} does not exist"
        return {}
    rows = _read_jsonl(path)
    for i, row in enumerate(rows, 1):
        for key in ("responses", "rewards"):
            if key not in row:
                raise ValueError(f"{path} line {i}: missing field {key!r}")
    texts = [list(r["responses"])[:n] for r in rows]
    rewards = [[1 if float(x) >= 1 else 0 for x in r["rewards"][:n]] for r in rows]
    report = diversity_report(texts, rewards, equations=equations)
    out.unavailable["diversity/*/semantic"] = f"{reason}; semantic diversity needs the sentence encoder"
    return {
        f"diversity/{group}/{measure}": values
        for group in ("correct", "incorrect")
        for measure, values in report[group]["per_question"].items()
    }


class Resampler:
    """One seeded matrix of bootstrap counts per question set, shared by every metric and model of a
    report (so the same resamples serve intervals and paired differences, and a regenerated report
    is identical)."""

    def __init__(self, n_resamples: int = stats.DEFAULT_RESAMPLES, seed: int = 0) -> None:
        self.n_resamples = n_resamples
        self.seed = seed
        self._cache: dict[tuple[str, int], np.ndarray] = {}

    def counts(self, qset: str, n: int) -> np.ndarray:
        key = (qset, n)
        if key not in self._cache:
            self._cache[key] = stats.resample_counts(
                n, self.n_resamples, stats.stable_seed(self.seed, qset, n)
            )
        return self._cache[key]


def metric_interval(metric: Metric, resampler: Resampler, confidence: float) -> tuple[float, float] | None:
    """Wilson for a per-question proportion, the question bootstrap for everything else."""
    if metric.outcomes is not None:
        m = metric.members
        return stats.wilson_interval(int(metric.outcomes[m].sum()), int(m.sum()), confidence)
    n = metric.stat.columns.shape[0]
    return stats.bootstrap_interval(metric.stat, resampler.counts(metric.qset, n), confidence)


def improvement_set_metrics(model: ModelData, m1: ModelData, ns: Sequence[int]) -> dict[str, Metric]:
    """M1's pass@N on IS(t) as question-bootstrap statistics (members: solved by M_t, not by M1)."""
    if model.greedy is None or m1.greedy is None or m1.extra_correct is None or m1.extra_n is None:
        return {}
    if model.qids.get("test") != m1.qids.get("test"):
        return {}
    members = (model.greedy == 1) & (m1.greedy == 0)
    out = {}
    for n in sorted({int(x) for x in ns if int(x) <= m1.extra_n}):
        values = _pass_at_k_per_question(m1.extra_n, m1.extra_correct, n)
        out[f"is/m1_pass@{n}"] = Metric("test", stats.mean_statistic(values, members))
    return out


def model_intervals(
    model: ModelData, resampler: Resampler, confidence: float, extra: dict[str, Metric] | None = None
) -> dict[str, tuple[float, float] | None]:
    """The (1 - alpha) interval of every metric of one model."""
    metrics = {**model.metrics, **(extra or {})}
    return {key: metric_interval(m, resampler, confidence) for key, m in metrics.items()}


def is_unavailable(model: ModelData, key: str) -> str | None:
    """The reason `key` cannot be computed for this model, or None."""
    for pattern, reason in model.unavailable.items():
        if pattern == "*" or pattern == key:
            return reason
        if "*" in pattern:
            head, _, tail = pattern.partition("*")
            if key.startswith(head) and key.endswith(tail):
                return reason
    return None


@dataclass
class Comparison:
    """Model `model` against `baseline` on the same questions: one row per metric."""

    baseline: str
    model: str
    rows: list[dict[str, Any]]
    gained: int | None = None  # pass@1 churn: solved by model, not by baseline
    lost: int | None = None
    n_questions: int | None = None
    coverage_sd: float | None = None  # spread of the per-question coverage difference (power)
    notes: dict[str, str] = field(default_factory=dict)  # metric -> why undefined

    @property
    def discordance(self) -> float | None:
        if self.gained is None or not self.n_questions:
            return None
        return (self.gained + self.lost) / self.n_questions

    def row(self, metric: str) -> dict[str, Any] | None:
        return next((r for r in self.rows if r["metric"] == metric), None)


def verdict_word(
    sign: int, delta: float | None, ci: tuple[float, float] | None, p_adj: float | None, alpha: float
) -> str:
    """The issue's rule: adjusted p < alpha AND the interval of the difference excludes 0."""
    if delta is None or p_adj is None or ci is None:
        return UNDEFINED
    if p_adj < alpha and (ci[0] > 0 or ci[1] < 0):
        return PROGRESSED if delta * sign > 0 else REGRESSED
    return NO_CHANGE


def compare_models(
    base: ModelData, model: ModelData, keys: Sequence[str], resampler: Resampler, alpha: float
) -> Comparison:
    """Paired verdicts of `model` vs `base` for every key with a direction, Holm across them."""
    return compare_replicates([(base, model)], keys, resampler, alpha)


def compare_replicates(
    pairs: Sequence[tuple[ModelData, ModelData]], keys: Sequence[str], resampler: Resampler, alpha: float
) -> Comparison:
    """Paired verdicts of model vs base, pooled over replicates when there are several (one
    (base, model) pair per replicate: the bootstrap resamples questions and replicates; McNemar,
    a test of one pair of models, is used when there is one)."""
    confidence = 1 - alpha
    base, model = pairs[0]
    out = Comparison(base.name, model.name, [])
    results: list[tuple[str, stats.PairedResult | None]] = []
    for key in keys:
        if direction(key) == 0:
            continue
        found = [(b.metrics.get(key), m.metrics.get(key)) for b, m in pairs]
        if any(a is None or b is None for a, b in found):
            reasons = [is_unavailable(b, key) or is_unavailable(m, key) for b, m in pairs]
            out.notes[key] = next(
                (r for r in reasons if r), "no per-question values for this metric on one side"
            )
            results.append((key, None))
            continue
        qset = found[0][0].qset
        if any(
            b.qids.get(qset) != base.qids.get(qset) or m.qids.get(qset) != base.qids.get(qset)
            for b, m in pairs
        ):
            out.notes[key] = f"the models were evaluated on different {qset} questions"
            results.append((key, None))
            continue
        a, b = found[0]
        if a.outcomes is None or b.outcomes is None or len(pairs) > 1:  # a bootstrap test
            supports = [s.support for x, y in found for s in (x.stat, y.stat) if s.support is not None]
            if supports and min(supports) < stats.MIN_BOOTSTRAP_QUESTIONS:
                out.notes[key] = (
                    f"only {min(supports)} question(s) define it on one side, fewer than "
                    f"{stats.MIN_BOOTSTRAP_QUESTIONS}: too few for a bootstrap test"
                )
                results.append((key, None))
                continue
        counts = resampler.counts(qset, found[0][0].stat.columns.shape[0])
        if len(pairs) > 1:
            res = stats.pooled_paired_bootstrap(
                [(x.stat, y.stat) for x, y in found], counts, confidence, stats.stable_seed("replicates", key)
            )
        elif a.outcomes is not None and b.outcomes is not None:
            same = np.array_equal(a.members, b.members)
            res = stats.paired_binary(
                a.outcomes,
                b.outcomes,
                counts,
                a.members & b.members,
                confidence,
                (a.stat, b.stat) if same else None,
            )
        else:
            res = stats.paired_bootstrap(a.stat, b.stat, counts, confidence)
        if key == "pass@1" and base.greedy is not None and model.greedy is not None:
            out.gained = int(np.count_nonzero((model.greedy == 1) & (base.greedy == 0)))
            out.lost = int(np.count_nonzero((model.greedy == 0) & (base.greedy == 1)))
            out.n_questions = len(base.greedy)
        if res.delta is None:
            out.notes[key] = "undefined on one side (e.g. a ratio whose denominator is 0)"
        results.append((key, res))
    if (
        base.coverage_values is not None
        and model.coverage_values is not None
        and len(base.coverage_values) > 1
        and base.qids.get("test") == model.qids.get("test")
    ):
        out.coverage_sd = float(np.std(model.coverage_values - base.coverage_values, ddof=1))
    adjusted = stats.holm([r.p_value if r is not None and r.delta is not None else None for _, r in results])
    for (key, res), p_adj in zip(results, adjusted):
        ci = res.ci if res is not None else None
        delta = res.delta if res is not None else None
        out.rows.append(
            {
                "metric": key,
                "baseline": base.name,
                "model": model.name,
                "baseline_value": res.value_a if res is not None else None,
                "value": res.value_b if res is not None else None,
                "delta": delta,
                "ci_low": ci[0] if ci else None,
                "ci_high": ci[1] if ci else None,
                "p_value": res.p_value if res is not None else None,
                "p_adjusted": p_adj,
                "verdict": verdict_word(direction(key), delta, ci, p_adj, alpha),
            }
        )
    return out


@dataclass
class PowerLine:
    metric: str
    mde: float | None  # smallest change detected with 80% power at alpha
    n_needed: int | None  # questions needed for the configured effect
    basis: str  # where the discordance / spread came from
    ceiling: float | None = None  # mde None: the largest change possible (the discordance) is below 80%


def power_lines(
    comparison: Comparison | None, base: ModelData, n_questions: int, alpha: float, effect: float
) -> list[PowerLine]:
    """What this test set can resolve for pass@1 (McNemar) and coverage (paired mean difference)."""
    lines = []
    disc = comparison.discordance if comparison is not None else None
    basis = "the observed discordance between the two models"
    if not disc and base.greedy is not None and len(base.greedy):
        p = float(base.greedy.mean())
        disc = 2 * p * (1 - p)  # two independent draws at the baseline's accuracy disagree this often
        basis = "no discordant question observed; assuming independent answers at the baseline's pass@1"
    if disc:
        lines.append(
            PowerLine(
                "pass@1",
                stats.paired_binary_mde(n_questions, disc, alpha),
                stats.paired_binary_n_needed(disc, effect, alpha),
                basis,
                ceiling=disc,
            )
        )
    else:
        lines.append(PowerLine("pass@1", None, None, "no discordance to base it on (pass@1 is 0 or 1)"))
    sd = comparison.coverage_sd if comparison is not None else None
    basis = "the observed spread of the per-question coverage differences"
    if not sd and base.coverage_values is not None and len(base.coverage_values) > 1:
        sd = float(np.std(base.coverage_values, ddof=1)) * math.sqrt(2)
        basis = "no difference observed; assuming independent models with the baseline's spread"
    if sd:
        lines.append(
            PowerLine(
                "coverage",
                stats.mean_difference_mde(n_questions, sd, alpha),
                stats.mean_difference_n_needed(sd, effect, alpha),
                basis,
            )
        )
    elif base.coverage_values is not None:
        lines.append(PowerLine("coverage", None, None, "every question has the same coverage"))
    return lines


def stats_settings(config: dict[str, Any], where: str = "config.json") -> tuple[float, float, int]:
    """(alpha, power effect, resamples) from a run's config, checked (a hand-edited config.json)."""
    section = config.get("stats") or {}
    alpha = section.get("alpha", DEFAULT_ALPHA)
    effect = section.get("power_effect", DEFAULT_EFFECT)
    resamples = section.get("resamples", stats.DEFAULT_RESAMPLES)
    stats.check_stats(alpha, effect, resamples, where)
    return float(alpha), float(effect), int(resamples)


def eval_dir_of(folder: Path, config: dict[str, Any], t: int) -> Path:
    """Where iteration (or checkpoint) t's evaluation lives in a run folder."""
    return folder / (f"model_{t}" if config.get("checkpoints") else f"iter_{t}") / "eval"


def interval_row(folder: Path, config: dict[str, Any], t: int, reference: int | None) -> dict[str, float]:
    """`<metric>/ci_low` and `<metric>/ci_high` of model t (what W&B and metrics.jsonl get beside
    each metric); IS(t) intervals against the `reference` model's samples."""
    alpha, _, resamples = stats_settings(config)
    equations = bool((config.get("eval") or {}).get("equations", True))
    model = load_model_data(eval_dir_of(folder, config, t), f"M{t}", equations)
    extra: dict[str, Metric] = {}
    if reference is not None and reference != t:
        ref = load_model_data(eval_dir_of(folder, config, reference), f"M{reference}", equations)
        extra = improvement_set_metrics(model, ref, (config.get("eval") or {}).get("is_ns") or [])
    row: dict[str, float] = {}
    for key, ci in model_intervals(model, Resampler(resamples), 1 - alpha, extra).items():
        if ci is not None:
            row[f"{key}/ci_low"], row[f"{key}/ci_high"] = ci
    return row


def write_verdicts_json(path: str | os.PathLike, comparisons: Sequence[Comparison]) -> Path:
    from .logger import write_json_atomic

    rows = [{k: row[k] for k in VERDICT_KEYS} for c in comparisons for row in c.rows]
    return write_json_atomic(path, rows)
