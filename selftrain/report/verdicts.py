"""Per-question data of evaluated models -> intervals, paired verdicts, churn and power.

Everything here is recomputed from a run folder alone (each model's `eval/details.json`, and for
folders written before per-question levels and diversity values were kept, `greedy.jsonl` and
`samples.jsonl`); what cannot be recomputed is reported as unavailable with the reason. The
statistics themselves live in `selftrain.metrics.stats`.

Verdict rule (docs/metrics.md, "Intervals and verdicts"): every (comparison, metric) test of a
report belongs to one of two families. The **primary** family is the declared primary metrics
(`stats.primary_metrics`, default pass@1, coverage and OOD accuracy) of the headline comparison;
every other test the report shows (the secondary metrics of the headline, every step, every
comparison of runs) is **secondary**. Each family gets alpha / 2 (all of alpha when the other is
empty), split equally over its tests (Bonferroni), so the probability that a report marks any
change anywhere when nothing changed is at most alpha. A metric **progressed** / **regressed** when
its p-value is below its test's level; the interval printed beside it is the one that inverts the
test at that level, so the two agree; **undefined** when a value is missing on either side.
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
    "family",
    "level",
    "test",
    "verdict",
)
DEFAULT_ALPHA = 0.05
DEFAULT_EFFECT = 0.05
DEFAULT_PRIMARY = ("pass@1", "coverage", "ood/accuracy")
PRIMARY, SECONDARY = "primary", "secondary"
# pass@k/1 is the same number as coverage (the mean share of correct samples): no verdict of its own
_DUPLICATES = ("pass@k/1",)

_LOWER_IS_BETTER = ("ood/group_disparity", "greedy/truncated")
_NO_VERDICT_PREFIXES = ("data/", "train/", "sample/", "is/", "churn/")


def direction(key: str) -> int:
    """+1 higher is better, -1 lower is better, 0 no verdict."""
    if key.endswith(("/ci_low", "/ci_high")):
        return 0
    if key in _LOWER_IS_BETTER:
        return -1
    if key.startswith(_NO_VERDICT_PREFIXES) or key.endswith("/n_questions") or key in _DUPLICATES:
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
    unpaired: dict[str, str] = field(default_factory=dict)  # question set without ids -> reason


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
    path = eval_dir / "details.json"
    if not path.is_file():
        out = ModelData(name)
        out.unavailable["*"] = f"no per-question data: {path} does not exist"
        return out
    return model_data(_read_json(path), name, path, equations)


def model_data(d: dict[str, Any], name: str, path: Path, equations: bool = True) -> ModelData:
    """One model's metrics from its details.json content (`path`: where it was read, for messages
    and for the older files beside it)."""
    out = ModelData(name)
    eval_dir = path.parent
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
            if f"pass@k/{k}" in _DUPLICATES:
                continue
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
        if d.get("ood_ids") is not None:
            out.qids["ood"] = [str(i) for i in d["ood_ids"]]
        else:  # pairing by position would pair different questions after any reordering
            out.unpaired["ood"] = "details.json has no OOD question ids: the OOD questions cannot be paired"
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


def metric_interval(metric: Metric, confidence: float) -> tuple[float, float] | None:
    """Wilson for a per-question proportion, the t interval over questions for everything else."""
    if metric.outcomes is not None:
        m = metric.members
        return stats.wilson_interval(int(metric.outcomes[m].sum()), int(m.sum()), confidence)
    return stats.statistic_interval(metric.stat, confidence)


def improvement_set_metrics(model: ModelData, m1: ModelData, ns: Sequence[int]) -> dict[str, Metric]:
    """M1's pass@N on IS(t) as statistics over questions (members: solved by M_t, not by M1)."""
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
    model: ModelData, confidence: float, extra: dict[str, Metric] | None = None
) -> dict[str, tuple[float, float] | None]:
    """The (unadjusted) interval of every metric of one model at `confidence`."""
    metrics = {**model.metrics, **(extra or {})}
    return {key: metric_interval(m, confidence) for key, m in metrics.items()}


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
    """Model `model` against `baseline` on the same questions: one test per metric; `rows` are
    filled by `apply_error_control` once every comparison of the report is known."""

    baseline: str
    model: str
    tests: dict[str, stats.PairedTest | None] = field(default_factory=dict)  # None: no test possible
    rows: list[dict[str, Any]] = field(default_factory=list)
    gained: int | None = None  # pass@1 churn: solved by model, not by baseline (replicate 0)
    lost: int | None = None
    n_questions: int | None = None
    coverage_sd: float | None = None  # spread of the per-question coverage difference (power)
    replicates: int = 1
    notes: dict[str, str] = field(default_factory=dict)  # metric -> why undefined

    @property
    def discordance(self) -> float | None:
        if self.gained is None or not self.n_questions:
            return None
        return (self.gained + self.lost) / self.n_questions

    def row(self, metric: str) -> dict[str, Any] | None:
        return next((r for r in self.rows if r["metric"] == metric), None)


def verdict_word(sign: int, delta: float | None, p_value: float | None, level: float | None) -> str:
    """progressed / regressed when the p-value is below the test's level (its Bonferroni share of
    alpha), by the metric's direction; undefined without a difference or a p-value."""
    if delta is None or p_value is None or level is None:
        return UNDEFINED
    if p_value < level and delta != 0:
        return PROGRESSED if delta * sign > 0 else REGRESSED
    return NO_CHANGE


def compare_models(base: ModelData, model: ModelData, keys: Sequence[str]) -> Comparison:
    """The paired test of `model` vs `base` for every key with a direction."""
    return compare_replicates([(base, model)], keys)


def _pairing_problem(pairs: Sequence[tuple[ModelData, ModelData]], qset: str) -> str | None:
    base = pairs[0][0]
    for b, m in pairs:
        for x in (b, m):
            if x.qids.get(qset) is None:
                return x.unpaired.get(qset) or f"{x.name} has no {qset} question ids: no pairing"
        if b.qids[qset] != base.qids[qset] or m.qids[qset] != base.qids[qset]:
            return f"the models were evaluated on different {qset} questions (or in another order)"
    return None


def compare_replicates(pairs: Sequence[tuple[ModelData, ModelData]], keys: Sequence[str]) -> Comparison:
    """Paired tests of model vs base, pooled over replicates when there are several (one (base,
    model) pair per replicate): exact McNemar for 0/1 outcomes and the paired t (jackknife) for the
    rest with one replicate, the two-level t-test with several."""
    base, model = pairs[0]
    out = Comparison(base.name, model.name, replicates=len(pairs))
    for key in keys:
        if direction(key) == 0:
            continue
        found = [(b.metrics.get(key), m.metrics.get(key)) for b, m in pairs]
        if any(a is None or b is None for a, b in found):
            reasons = [is_unavailable(b, key) or is_unavailable(m, key) for b, m in pairs]
            out.notes[key] = next(
                (r for r in reasons if r), "no per-question values for this metric on one side"
            )
            out.tests[key] = None
            continue
        qset = found[0][0].qset  # type: ignore[union-attr]
        problem = _pairing_problem(pairs, qset)
        if problem:
            out.notes[key] = problem
            out.tests[key] = None
            continue
        a, b = found[0]
        assert a is not None and b is not None
        binary = a.outcomes is not None and b.outcomes is not None
        res: stats.PairedTest
        if len(pairs) == 1 and binary:
            res = stats.paired_binary(a.outcomes, b.outcomes, a.members & b.members)  # type: ignore[operator]
        else:
            statistics = [(x.stat, y.stat) for x, y in found]  # type: ignore[union-attr]
            supports = [s.support for pair in statistics for s in pair if s.support is not None]
            res = stats.paired_t(a.stat, b.stat) if len(pairs) == 1 else stats.replicate_test(statistics)
            if supports and min(supports) < stats.MIN_QUESTIONS:
                out.notes[key] = (
                    f"only {min(supports)} question(s) define it on one side, fewer than "
                    f"{stats.MIN_QUESTIONS}: too few for a t-test over questions"
                )
                res = stats.PairedTest(res.value_a, res.value_b, res.delta, None, res.method)
        if res.delta is None:
            out.notes.setdefault(key, "undefined on one side (e.g. a ratio whose denominator is 0)")
        elif res.p_value is None:
            out.notes.setdefault(key, "a leave-one-question-out value is undefined: no test")
        out.tests[key] = res
    if base.greedy is not None and model.greedy is not None and _pairing_problem(pairs[:1], "test") is None:
        out.gained = int(np.count_nonzero((model.greedy == 1) & (base.greedy == 0)))
        out.lost = int(np.count_nonzero((model.greedy == 0) & (base.greedy == 1)))
        out.n_questions = len(base.greedy)
        if (
            base.coverage_values is not None
            and model.coverage_values is not None
            and len(base.coverage_values) > 1
        ):
            out.coverage_sd = float(np.std(model.coverage_values - base.coverage_values, ddof=1))
    return out


@dataclass(frozen=True)
class ErrorControl:
    """How alpha is split over the tests of one report (Bonferroni over two families)."""

    alpha: float
    primary: tuple[str, ...]
    n_primary: int
    n_secondary: int
    level_primary: float | None
    level_secondary: float | None

    def describe(self) -> str:
        parts = []
        if self.n_primary:
            names = ", ".join(f"`{m}`" for m in self.primary)
            parts.append(
                f"the primary family ({names} of the headline comparison: {self.n_primary} test(s)) "
                f"shares {self.n_primary * self.level_primary:.3g}, each at level {self.level_primary:.3g}"
            )
        if self.n_secondary:
            parts.append(
                f"the secondary family (every other test this report shows: {self.n_secondary}) shares "
                f"{self.n_secondary * self.level_secondary:.3g}, each at level {self.level_secondary:.3g}"
            )
        return (
            f"alpha = {self.alpha:g} for the whole report (Bonferroni): " + "; ".join(parts) + ". So on data "
            f"where nothing changed, the chance that any verdict below reads progressed or regressed is at "
            f"most {self.alpha:g}. p_adj = p x alpha / level."
        )


def apply_error_control(
    comparisons: Sequence[Comparison], headline: Sequence[Comparison], primary: Sequence[str], alpha: float
) -> ErrorControl:
    """Fill every comparison's rows: each test gets its family (primary: a primary metric of a
    headline comparison; secondary: any other), its level (the family's share of alpha, alpha / 2
    each, or all of it when the other family is empty, split equally over the family's tests), the
    interval at that level, p_adj = p x alpha / level, and its verdict. Counted in a family is every
    test a comparison could run (both sides have the metric's per-question values, paired by id),
    whatever its outcome, so the split does not depend on the data's values."""
    heads = {id(c) for c in headline}
    unique: list[Comparison] = []
    for c in comparisons:
        if all(c is not u for u in unique):
            unique.append(c)

    def family(c: Comparison, key: str) -> str:
        return PRIMARY if id(c) in heads and key in primary else SECONDARY

    sizes = {PRIMARY: 0, SECONDARY: 0}
    for c in unique:
        for key, res in c.tests.items():
            if res is not None:
                sizes[family(c, key)] += 1
    both = sizes[PRIMARY] > 0 and sizes[SECONDARY] > 0
    share = alpha / 2 if both else alpha
    levels = {f: (share / n if n else None) for f, n in sizes.items()}
    for c in unique:
        c.rows = []
        for key, res in c.tests.items():
            fam = family(c, key)
            level = levels[fam] if res is not None else None
            p = res.p_value if res is not None else None
            ci = res.interval(1 - level) if res is not None and level is not None and p is not None else None
            delta = res.delta if res is not None else None
            c.rows.append(
                {
                    "metric": key,
                    "baseline": c.baseline,
                    "model": c.model,
                    "baseline_value": res.value_a if res is not None else None,
                    "value": res.value_b if res is not None else None,
                    "delta": delta,
                    "ci_low": ci[0] if ci else None,
                    "ci_high": ci[1] if ci else None,
                    "p_value": p,
                    "p_adjusted": min(1.0, p * alpha / level) if p is not None and level else None,
                    "family": fam,
                    "level": level,
                    "test": res.method if res is not None else None,
                    "verdict": verdict_word(direction(key), delta, p, level),
                }
            )
    return ErrorControl(
        alpha, tuple(primary), sizes[PRIMARY], sizes[SECONDARY], levels[PRIMARY], levels[SECONDARY]
    )


def judge_run(
    rep_models: Sequence[dict[int, ModelData]],
    iterations: Sequence[int],
    baseline: int,
    keys: Sequence[str],
    primary: Sequence[str],
    alpha: float,
) -> tuple[Comparison | None, list[Comparison], ErrorControl]:
    """Every comparison a run's report shows, under one error control: M_T vs the baseline (the
    headline) and every step M_t vs M_{t-1}, pooled over the replicates (`rep_models`: one
    {iteration: model} per replicate, replicate 0 first)."""
    models = rep_models[0]
    later = [t for t in iterations if t > baseline]
    final: Comparison | None = None

    def compare(s: int, t: int) -> Comparison:
        if final is not None and (s, t) == (baseline, later[-1]):
            return final  # M_T vs M1 is also a step when T = 2: one test, shown twice
        pairs = [(m[s], m[t]) for m in rep_models if s in m and t in m]
        return compare_replicates(pairs, keys)

    final = compare(baseline, later[-1]) if baseline in models and later else None
    steps = [compare(s, t) for s, t in zip(iterations, iterations[1:])]
    headline = [final] if final is not None else []
    return final, steps, apply_error_control(headline + steps, headline, primary, alpha)


@dataclass
class PowerLine:
    metric: str
    mde: float | None  # smallest change the report's own test detects with 80% power at its level
    n_needed: int | None  # questions needed for the configured effect (None: not stated)
    basis: str  # where the discordance / spread came from
    level: float | None = None  # the level the metric's test faces in this report
    test: str = ""
    ceiling: float | None = None  # mde None: the largest change possible (the discordance) is below 80%


def power_lines(
    comparison: Comparison | None, base: ModelData, n_questions: int, effect: float, levels: dict[str, float]
) -> list[PowerLine]:
    """What this test set can resolve for pass@1 and coverage, each under the test and at the level
    the report applies to it (`levels`: metric -> level; the headline comparison's)."""
    lines = []
    tests = comparison.tests if comparison is not None else {}
    for key in ("pass@1", "coverage"):
        level = levels.get(key)
        res = tests.get(key)
        if level is None:
            continue
        if res is not None and res.method == stats.REPLICATE_T:
            mde = stats.t_mde(res.se, res.df, level) if res.se and res.df else None
            lines.append(PowerLine(
                key, mde, None,
                f"the standard error of the two-level t-test over {comparison.replicates} replicates "  # type: ignore[union-attr]
                "(more questions do not shrink the seed-to-seed part, so no question count is stated)",
                level, stats.REPLICATE_T))
            continue
        if key == "pass@1":
            lines.append(_pass1_power(comparison, base, n_questions, effect, level))
        else:
            line = _coverage_power(comparison, base, n_questions, effect, level)
            if line is not None:
                lines.append(line)
    return lines


def _pass1_power(
    comparison: Comparison | None, base: ModelData, n: int, effect: float, level: float
) -> PowerLine:
    disc = comparison.discordance if comparison is not None else None
    basis = "the observed discordance between the two models"
    if not disc and base.greedy is not None and len(base.greedy):
        p = float(base.greedy.mean())
        disc = 2 * p * (1 - p)  # two independent draws at the baseline's accuracy disagree this often
        basis = "no discordant question observed; assuming independent answers at the baseline's pass@1"
    if not disc:
        why = "no discordance to base it on (pass@1 is 0 or 1)"
        return PowerLine("pass@1", None, None, why, level, stats.MCNEMAR)
    return PowerLine(
        "pass@1",
        stats.mcnemar_mde(n, disc, level),
        stats.mcnemar_n_needed(disc, effect, level),
        basis,
        level,
        stats.MCNEMAR,
        ceiling=disc,
    )


def _coverage_power(
    comparison: Comparison | None, base: ModelData, n: int, effect: float, level: float
) -> PowerLine | None:
    sd = comparison.coverage_sd if comparison is not None else None
    basis = "the observed spread of the per-question coverage differences"
    if not sd and base.coverage_values is not None and len(base.coverage_values) > 1:
        sd = float(np.std(base.coverage_values, ddof=1)) * math.sqrt(2)
        basis = "no difference observed; assuming independent models with the baseline's spread"
    if sd:
        return PowerLine(
            "coverage",
            stats.paired_t_mde(n, sd, level),
            stats.paired_t_n_needed(sd, effect, level),
            basis,
            level,
            stats.PAIRED_T,
        )
    if base.coverage_values is not None:
        why = "every question has the same coverage"
        return PowerLine("coverage", None, None, why, level, stats.PAIRED_T)
    return None


def check_primary(primary: Sequence[str], where: str = "config") -> None:
    """Every primary metric must be one that gets a verdict (not bookkeeping, not a duplicate)."""
    bad = [m for m in primary if direction(m) == 0]
    if bad:
        raise ValueError(
            f"{where}: stats.primary_metrics: {bad} get no verdict (bookkeeping, or the same number as "
            "another metric: pass@k/1 is coverage)"
        )


def stats_settings(
    config: dict[str, Any], where: str = "config.json"
) -> tuple[float, float, tuple[str, ...]]:
    """(alpha, power effect, primary metrics) from a run's config, checked (a hand-edited
    config.json). A `resamples` key of folders written when the report used a bootstrap is ignored."""
    section = config.get("stats") or {}
    alpha = section.get("alpha", DEFAULT_ALPHA)
    effect = section.get("power_effect", DEFAULT_EFFECT)
    primary = section.get("primary_metrics", list(DEFAULT_PRIMARY))
    stats.check_stats(alpha, effect, primary, where)
    check_primary(primary, where)
    return float(alpha), float(effect), tuple(primary)


def eval_dir_of(folder: Path, config: dict[str, Any], t: int) -> Path:
    """Where iteration (or checkpoint) t's evaluation lives in a run folder."""
    return folder / (f"model_{t}" if config.get("checkpoints") else f"iter_{t}") / "eval"


def interval_row(folder: Path, config: dict[str, Any], t: int, reference: int | None) -> dict[str, float]:
    """`<metric>/ci_low` and `<metric>/ci_high` of model t (what W&B and metrics.jsonl get beside
    each metric); IS(t) intervals against the `reference` model's samples."""
    alpha, _, _ = stats_settings(config)
    equations = bool((config.get("eval") or {}).get("equations", True))
    model = load_model_data(eval_dir_of(folder, config, t), f"M{t}", equations)
    extra: dict[str, Metric] = {}
    if reference is not None and reference != t:
        ref = load_model_data(eval_dir_of(folder, config, reference), f"M{reference}", equations)
        extra = improvement_set_metrics(model, ref, (config.get("eval") or {}).get("is_ns") or [])
    row: dict[str, float] = {}
    for key, ci in model_intervals(model, 1 - alpha, extra).items():
        if ci is not None:
            row[f"{key}/ci_low"], row[f"{key}/ci_high"] = ci
    return row


def write_verdicts_json(path: str | os.PathLike, comparisons: Sequence[Comparison]) -> Path:
    from .logger import write_json_atomic

    rows = [{k: row[k] for k in VERDICT_KEYS} for c in comparisons for row in c.rows]
    return write_json_atomic(path, rows)
