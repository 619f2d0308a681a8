"""runs/<name>/report.md and verdicts.json: every metric with its interval, and whether each
progressed or regressed, as a statistical statement.

The headline compares the last iteration M_T with M1 (paper A's question: did self-improvement after
the first SFT help?); a second table compares every M_t with M_{t-1} (where did the change happen?).
Every verdict is paired on the same questions (exact McNemar for 0/1 outcomes, a paired t-test over
questions for the rest) and every test of the report shares one alpha (primary and secondary
families, Bonferroni; `selftrain.report.verdicts.apply_error_control`; docs/metrics.md, "Intervals
and verdicts"). Direction per metric:
higher is better for accuracies, coverage, pass@k and diversity; lower for the OOD group disparity
and truncated answers; bookkeeping counts get no verdict.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..metrics import stats
from .logger import write_text_atomic
from .plots import plot_comparison, plot_run
from .runs import RunRecord, load_run
from .verdicts import (
    PRIMARY,
    PROGRESSED,
    REGRESSED,
    SECONDARY,
    UNDEFINED,
    Comparison,
    ErrorControl,
    ModelData,
    PowerLine,
    apply_error_control,
    compare_models,
    direction,
    eval_dir_of,
    improvement_set_metrics,
    is_unavailable,
    judge_run,
    load_model_data,
    model_intervals,
    power_lines,
    stats_settings,
    write_verdicts_json,
)

# Paper A: with M1's correct-answer coverage above this, iterative DPO / SFT-DPO did best.
COVERAGE_THRESHOLD = 0.5

__all__ = ["direction", "render_report", "report_runs", "suggestion", "write_run_report"]


def suggestion(m1_coverage: float | None) -> str:
    if m1_coverage is None:
        return "M1's correct-answer coverage is not known yet, so paper A's guidance cannot be applied."
    if m1_coverage > COVERAGE_THRESHOLD:
        return (
            f"M1's correct-answer coverage is {m1_coverage:.3f} > {COVERAGE_THRESHOLD}: "
            "paper A found iterative DPO or iterative SFT-DPO to work best for such a model and task."
        )
    return (
        f"M1's correct-answer coverage is {m1_coverage:.3f} <= {COVERAGE_THRESHOLD}: paper A found iterative "
        "SFT to work best for such a model and task."
    )


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        if value != 0 and abs(value) < 1e-3:  # learning rates and the like would print as 0.0000
            return f"{value:.3g}"
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.4g}"
    return str(value)


def _key_order(key: str) -> tuple[int, str, float, str]:
    """Group metrics in the order a reader wants them, numeric suffixes in numeric order."""
    groups = (
        "pass@1",
        "pass@1/",
        "coverage",
        "pass@k/",
        "maj@k/",
        "greedy/",
        "is/",
        "diversity/",
        "ood/",
        "sample/",
        "data/",
        "train/",
    )
    rank = next(
        (i for i, g in enumerate(groups) if key == g or (g.endswith("/") and key.startswith(g))), len(groups)
    )
    m = re.search(r"(\d+(?:\.\d+)?)$", key)
    stem = key[: m.start()] if m else key
    return (rank, stem, float(m.group(1)) if m else -1.0, key)


def baseline_of(run: RunRecord) -> int:
    """The iteration verdicts compare against: M1 for a loop run, `baseline` for an evaluate run."""
    return int(run.config.get("baseline", 1))


@dataclass
class RunAnalysis:
    """Everything report.md and verdicts.json say about one run, from its per-question data."""

    alpha: float
    effect: float
    baseline: int
    models: dict[int, ModelData]
    intervals: dict[int, dict[str, tuple[float, float] | None]]
    final: Comparison | None  # M_T vs the baseline
    steps: list[Comparison]  # M_t vs M_{t-1}
    churn: list[dict[str, Any]]  # per iteration after the baseline: gained / lost / net vs baseline
    power: list[PowerLine]
    n_questions: int | None
    n_ood: int | None
    unavailable: dict[str, str] = field(default_factory=dict)  # metric pattern -> reason
    control: ErrorControl | None = None
    primary: tuple[str, ...] = ()
    replicates: int = 1  # replicate runs pooled into the verdicts
    # metric -> iteration -> (mean, standard deviation, replicates that reached it)
    spread: dict[str, dict[int, tuple[float, float, int]]] = field(default_factory=dict)

    @property
    def confidence(self) -> float:
        return 1 - self.alpha

    @property
    def comparisons(self) -> list[Comparison]:
        """Every comparison once (M_T vs M1 is also a step when T = 2)."""
        seen, out = set(), []
        for c in ([self.final] if self.final else []) + self.steps:
            if (c.baseline, c.model) not in seen:
                seen.add((c.baseline, c.model))
                out.append(c)
        return out


def is_reference_of(run: RunRecord) -> int | None:
    """The model IS(t) is measured against: M1 in a loop run, `is_reference` in an evaluate run."""
    if run.config.get("checkpoints"):
        ref = run.config.get("is_reference")
        return None if ref is None else int(ref)
    return 1


def analyse_run(run: RunRecord) -> RunAnalysis:
    """Per-question data of every evaluated model -> intervals, verdicts, churn and power."""
    alpha, effect, primary = stats_settings(run.config, str(run.folder / "config.json"))
    equations = bool((run.config.get("eval") or {}).get("equations", True))
    is_ns = (run.config.get("eval") or {}).get("is_ns") or []
    models = {
        t: load_model_data(eval_dir_of(run.folder, run.config, t), f"M{t}", equations) for t in run.iterations
    }
    # Replicates (`replicates: K`): replicate_<r>/ holds the same loop run with its own seed.
    others = [load_run(f) for f in replicate_folders(run)]
    rep_models = [models] + [
        {t: load_model_data(eval_dir_of(o.folder, o.config, t), f"M{t}", equations) for t in o.iterations}
        for o in others
    ]
    ref = is_reference_of(run)
    intervals = {}
    for t, model in models.items():
        extra = improvement_set_metrics(model, models[ref], is_ns) if ref in models and t != ref else {}
        intervals[t] = model_intervals(model, 1 - alpha, extra)
    b = baseline_of(run)
    keys = sorted({k for m in models.values() for k in m.metrics} | set(run.metric_keys()), key=_key_order)
    later = [t for t in run.iterations if t > b]
    final, steps, control = judge_run(rep_models, run.iterations, b, keys, primary, alpha)
    churn = []
    for t in later:
        base, model = models[b], models[t]
        if base.greedy is None or model.greedy is None or base.qids.get("test") != model.qids.get("test"):
            continue
        gained = int(np.count_nonzero((model.greedy == 1) & (base.greedy == 0)))
        lost = int(np.count_nonzero((model.greedy == 0) & (base.greedy == 1)))
        churn.append({"iteration": t, "gained": gained, "lost": lost, "net": gained - lost,
                      "p_value": stats.mcnemar_exact(gained, lost)})
    base = models.get(b)
    n_q = len(base.qids["test"]) if base is not None and "test" in base.qids else None
    n_ood = len(base.qids["ood"]) if base is not None and "ood" in base.qids else None
    power = []
    if base is not None and n_q and final is not None:
        levels = {r["metric"]: r["level"] for r in final.rows if r["level"] is not None}
        power = power_lines(final, base, n_q, effect, levels)
    unavailable: dict[str, str] = {}
    for t, model in models.items():
        for pattern, reason in model.unavailable.items():
            unavailable.setdefault(pattern, f"{reason} (M{t})")
    spread = replicate_spread([run, *others]) if others else {}
    return RunAnalysis(
        alpha, effect, b, models, intervals, final, steps, churn, power, n_q, n_ood, unavailable,
        control=control, primary=primary, replicates=len(rep_models), spread=spread,
    )


def replicate_folders(run: RunRecord) -> list[Path]:
    """The other replicates' run folders (replicate_1 .. replicate_{K-1}) that have logged a row."""
    k = int(run.config.get("replicates", 1) or 1)
    found = [run.folder / f"replicate_{r}" for r in range(1, k)]
    return [f for f in found if (f / "metrics.jsonl").is_file()]


def replicate_spread(runs: Sequence[RunRecord]) -> dict[str, dict[int, tuple[float, float, int]]]:
    """Per metric with a direction and iteration: mean and standard deviation over the replicates
    that reached it, and how many did."""
    out: dict[str, dict[int, tuple[float, float, int]]] = {}
    for key in runs[0].metric_keys():
        if direction(key) == 0:
            continue
        for t in runs[0].iterations:
            found = [_number((r.row(t) or {}).get(key)) for r in runs]
            values = [v for v in found if v is not None]
            if values:
                sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
                out.setdefault(key, {})[t] = (float(np.mean(values)), sd, len(values))
    return out


def _signed(x: float) -> str:
    return f"{x:+.3f}"


def _conf(level: float) -> str:
    """The confidence of an interval at a test's level: 0.05 -> 95%, 0.00833 -> 99.17%."""
    return f"{100 * (1 - level):.4g}%"


def _ci_text(lo: float | None, hi: float | None, level: float | None) -> str:
    if lo is None or hi is None or level is None:
        return "no interval"
    return f"{_conf(level)} CI {_signed(lo)} .. {_signed(hi)}"


def _p(p: float | None) -> str:
    return "–" if p is None else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def _change_text(row: dict[str, Any]) -> str:
    if row["delta"] is None:
        return "no difference can be computed"
    return f"{_signed(row['delta'])} ({_ci_text(row['ci_low'], row['ci_high'], row['level'])})"


def nothing_yet(b: int) -> str:
    return f"No model after M{b} has been evaluated yet: nothing to compare with M{b}."


def summary_lines(run: RunRecord, a: RunAnalysis) -> list[str]:
    """The opening: the error control, the primary verdicts, what else changed detectably, what this
    test set cannot resolve."""
    if a.final is None or a.control is None:
        return [nothing_yet(a.baseline)]
    c = a.final
    sizes = f"{a.n_questions} test questions" + (f" and {a.n_ood} OOD questions" if a.n_ood else "")
    if a.replicates > 1:
        sizes += (f", pooled over {a.replicates} replicate runs (a two-level t-test: its variance holds the "
                  "question spread and the seed-to-seed spread)")
    lines = [
        f"{c.model} against {c.baseline} on the same {sizes}. Error control: {a.control.describe()} "
        "A verdict reads progressed or regressed when its p-value is below its test's level; every "
        "difference is printed with the interval at that level (Bonferroni-adjusted), which excludes 0 "
        "exactly when the verdict is a change.",
        "",
    ]
    primary = [r for r in c.rows if r["family"] == PRIMARY]
    if primary:
        lines.append("- **Primary (confirmatory):** " + "; ".join(
            f"`{r['metric']}` **{r['verdict']}** {_change_text(r)}, p_adj {_p(r['p_adjusted'])}"
            for r in primary) + ".")
    moved = [r for r in c.rows if r["family"] == SECONDARY and r["verdict"] in (PROGRESSED, REGRESSED)]
    secondary = [r for r in c.rows if r["family"] == SECONDARY and r["verdict"] != UNDEFINED]
    if moved:
        lines.append("- **Secondary (exploratory), changed detectably:** " + "; ".join(
            f"`{r['metric']}` **{r['verdict']}** {_change_text(r)}, p_adj {_p(r['p_adjusted'])}"
            for r in moved) + ".")
    elif secondary:
        lines.append(f"- **Secondary (exploratory):** no detectable change in any of {len(secondary)} "
                     "metric(s) (list below).")
    undefined = [r["metric"] for r in c.rows if r["verdict"] == UNDEFINED]
    if undefined:
        lines.append("- **Undefined** (a value or the per-question data is missing): "
                     + ", ".join(f"`{m}`" for m in undefined) + ".")
    if c.gained is not None:
        lines.append(
            f"- **Churn (pass@1):** {c.model} solves {c.gained} questions {c.baseline} fails and fails "
            f"{c.lost} that {c.baseline} solves (net {c.gained - c.lost:+d})."
        )
    resolve = []
    for p in a.power:
        if p.mde is None:
            resolve.append(_no_mde(p))
            continue
        need = ""
        if p.n_needed:
            need = f"; a change of {a.effect:g} would need about {p.n_needed} test questions"
        resolve.append(f"a change in `{p.metric}` smaller than {p.mde:.3f} ({_power_rule(p)}){need}")
    if resolve:
        lines.append("- **This test set cannot resolve** (80% power, each metric under the test and at the "
                     "level this report applies to it): " + "; ".join(resolve) + ".")
    return lines


def _power_rule(p: PowerLine) -> str:
    return f"{p.test} at level {p.level:.3g}" if p.level is not None else p.test


def _no_mde(p: PowerLine) -> str:
    if p.ceiling:
        return (f"no change in `{p.metric}` up to {p.ceiling:.3f} (the share of questions the models answer "
                f"differently: every one of them moving the same way) is detected with 80% power "
                f"({_power_rule(p)})")
    return f"no smallest detectable change in `{p.metric}` can be stated ({p.basis})"


def verdict_lines(a: RunAnalysis) -> list[str]:
    """One bullet per metric with a direction: baseline -> last model, the change and the verdict."""
    if a.final is None:
        return []
    c = a.final
    lines = []
    for r in c.rows:
        if r["verdict"] == UNDEFINED:
            why = c.notes.get(r["metric"], "a value is missing")
            lines.append(f"- `{r['metric']}` ({r['family']}): **undefined** ({why})")
            continue
        lines.append(
            f"- `{r['metric']}` ({r['family']}): **{r['verdict']}** since {c.baseline} "
            f"({_fmt(r['baseline_value'])} → {_fmt(r['value'])} at {c.model}, {_change_text(r)}; "
            f"{r['test']}, p {_p(r['p_value'])}, p_adj {_p(r['p_adjusted'])})"
        )
    return lines


def _step_cell(row: dict[str, Any] | None) -> str:
    if row is None or row["verdict"] == UNDEFINED:
        return "–"
    lo, hi = row["ci_low"], row["ci_high"]
    ci = f" [{_signed(lo)}, {_signed(hi)}]" if lo is not None else ""
    text = f"{_signed(row['delta'])}{ci}"
    if row["verdict"] == PROGRESSED:
        return f"**↑ {text}**"
    if row["verdict"] == REGRESSED:
        return f"**↓ {text}**"
    return text


def step_table(a: RunAnalysis) -> list[str]:
    if not a.steps:
        return []
    head = "| metric | " + " | ".join(f"{c.baseline} → {c.model}" for c in a.steps) + " |"
    lines = [head, "|---|" + "---:|" * len(a.steps)]
    metrics = [r["metric"] for r in a.steps[-1].rows]
    for m in dict.fromkeys(m for c in a.steps for m in (r["metric"] for r in c.rows) if m not in metrics):
        metrics.append(m)
    for m in metrics:
        lines.append(f"| `{m}` | " + " | ".join(_step_cell(c.row(m)) for c in a.steps) + " |")
    return lines


def churn_table(a: RunAnalysis) -> list[str]:
    if not a.churn:
        return []
    b = f"M{a.baseline}"
    lines = [f"| model | gained: IS(t), solved and not by {b} | lost: LS(t), solved by {b} and not | net | "
             "McNemar p (unadjusted, no verdict) | vs previous: gained / lost |",
             "|---|---:|---:|---:|---:|---:|"]
    steps = {c.model: c for c in a.steps}
    for row in a.churn:
        step = steps.get(f"M{row['iteration']}")
        prev = f"{step.gained} / {step.lost}" if step is not None and step.gained is not None else "–"
        lines.append(f"| M{row['iteration']} | {row['gained']} | {row['lost']} | {row['net']:+d} | "
                     f"{_p(row['p_value'])} | {prev} |")
    return lines


def _value_cell(value: Any, ci: tuple[float, float] | None) -> str:
    text = _fmt(value)
    if ci is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return text


def render_report(run: RunRecord, analysis: RunAnalysis | None = None) -> str:
    a = analysis or analyse_run(run)
    cfg = run.config
    lines = [f"# Run `{run.label}`", ""]
    if cfg.get("checkpoints"):  # an evaluate run: M<i> is the i-th checkpoint
        lines += ["Models: " + "; ".join(f"M{i} = `{c}`" for i, c in enumerate(cfg["checkpoints"])) + ".", ""]
    elif cfg:
        lines.append(
            f"Paradigm **{cfg.get('paradigm')}**, model `{cfg.get('model')}`, task `{cfg.get('task')}`, "
            f"T = {cfg.get('iterations')}, N = {cfg.get('n_samples')} samples per training question, "
            f"{(cfg.get('eval') or {}).get('n_samples')} per test question, seed {cfg.get('seed')}."
        )
        lines.append("")
    lines += ["## Summary", ""] + summary_lines(run, a) + [""]
    done = run.iterations
    lines.append(f"Finished iterations: {', '.join(f'M{t}' for t in done) or 'none'}.")
    kinds = [f"M{r['iteration']}: {r.get('step_kind', '?')}" for r in run.rows]
    lines += ["", "Step per iteration: " + "; ".join(kinds) + ".", ""]

    b = a.baseline
    m1 = run.row(b)
    lines += [f"## Progress or regress since M{b}", ""]
    if b == 1:  # paper A's guidance is about M1, the model after the gold SFT
        lines += [suggestion(_number(m1.get("coverage")) if m1 else None), ""]
    lines += verdict_lines(a) or [nothing_yet(b)]
    is_lines = _is_lines(run, a)
    lines += is_lines
    if a.steps:
        lines += ["", "## Step by step: M_t against M_{t-1}", "",
                  "Difference [interval at the test's level]; **↑** progressed, **↓** regressed, plain: no "
                  "detectable change, –: undefined. Every cell is a secondary test (except the primary "
                  "metrics of the headline comparison, when a step is the headline), at the levels of the "
                  "error control stated in the summary.", ""]
        lines += step_table(a)
    if a.churn:
        lines += ["", "## Churn: questions gained and lost (greedy)", ""] + churn_table(a)
    if a.power:
        lines += ["", "## Power: what this test set can detect", ""]
        for p in a.power:
            mde = f"{p.mde:.3f}" if p.mde is not None else _no_mde(p)
            need = f"; {a.effect:g} needs about {p.n_needed} questions" if p.n_needed else ""
            lines.append(f"- `{p.metric}`: smallest change the report's own verdict ({_power_rule(p)}, "
                         f"its share of alpha {a.alpha:g}) detects with 80% power on {a.n_questions} "
                         f"questions: {mde}{need} (from {p.basis}).")
    lines += rl_block_lines(run, a.confidence)
    if a.spread:
        lines += replicate_table(a, done)
    if a.unavailable:
        lines += ["", "## Unavailable", ""]
        lines += [f"- `{k}`: {v}" for k, v in sorted(a.unavailable.items())]
    lines += ["", "## Every metric per iteration", "",
              f"Value [{a.confidence:.0%} interval, unadjusted (no verdict): Wilson for per-question "
              "proportions, t over questions for the rest].", ""]
    header = "| metric | " + " | ".join(f"M{t}" for t in done) + " |"
    lines += [header, "|---|" + "---:|" * len(done)]
    for key in sorted(run.metric_keys(), key=_key_order):
        if key.endswith(("/ci_low", "/ci_high")):
            continue
        cells = [_value_cell(r.get(key), a.intervals.get(int(r["iteration"]), {}).get(key)) for r in run.rows]
        lines.append(f"| `{key}` | " + " | ".join(cells) + " |")
    lines += ["", "Metric definitions and the statistics: docs/metrics.md; loop and artifacts: docs/loop.md."]
    lines.append("")
    plots = sorted((run.folder / "plots").glob("*.png"))
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{p.stem}](plots/{p.name})" for p in plots]
        lines.append("")
    return "\n".join(lines)


def rl_reward_change(trainer_dir: Path) -> tuple[stats.PairedTest, int] | None:
    """How an online RL block changed the reward on its own training questions: each question drawn
    at least twice in the block, its group's mean reward the first time against the last time,
    paired over those questions (t-test); with their number. None when the block left no
    rollouts.jsonl or drew fewer than 2 questions twice. Only questions drawn again compare fairly:
    a step's mean reward moves with which questions it happened to draw."""
    import json

    path = trainer_dir / "rollouts.jsonl"
    if not path.is_file():
        return None
    draws: dict[int, list[float]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            for q, group in zip(row["questions"], row["rewards"]):
                draws.setdefault(int(q), []).append(float(np.mean(group)))
    again = [means for means in draws.values() if len(means) >= 2]
    if len(again) < 2:
        return None
    test = stats.paired_t(stats.mean_statistic([m[0] for m in again]),
                          stats.mean_statistic([m[-1] for m in again]))
    return test, len(again)


def rl_block_lines(run: RunRecord, confidence: float) -> list[str]:
    """The report's section on online RL blocks: the training reward's change per block."""
    lines = []
    for t in run.iterations:
        folder = run.folder / f"iter_{t}" / "trainer"
        if not (folder / "rollouts.jsonl").is_file():
            continue
        change = rl_reward_change(folder)
        if change is None or change[0].delta is None:
            lines.append(f"- M{t}'s block: fewer than 2 training questions were drawn twice, so its reward "
                         "change is not measured (a fair comparison needs the same questions).")
            continue
        test, n = change
        ci = test.interval(confidence)
        ci_text = f"{confidence:.0%} CI {ci[0]:+.3f} .. {ci[1]:+.3f}" if ci else "interval undefined"
        lines.append(
            f"- M{t}'s block: on the {n} training questions it drew at least twice, the mean reward of "
            f"a question's group went from {test.value_a:.3f} (first draw) to {test.value_b:.3f} (last "
            f"draw): {test.delta:+.3f} ({ci_text}, paired t over questions, unadjusted: a description "
            "of training, outside the verdicts' error control)."
        )
    if not lines:
        return []
    return ["", "## Online RL blocks: reward on the training questions", "",
            "Per-step curves (reward, KL, entropy): plots/rl_curves.png; each step's questions and "
            "rewards: iter_<t>/trainer/rollouts.jsonl.", ""] + lines


def replicate_table(a: RunAnalysis, done: Sequence[int]) -> list[str]:
    lines = ["", f"## Replicates: mean ± standard deviation over {a.replicates} runs", "",
             "Each replicate reruns the whole loop with its own seed (training order, sampling); the "
             "verdicts above pool them. The other tables show replicate 0 (this folder).", "",
             "| metric | " + " | ".join(f"M{t}" for t in done) + " |", "|---|" + "---:|" * len(done)]
    for key in sorted(a.spread, key=_key_order):
        cells = []
        for t in done:
            m = a.spread[key].get(t)
            partial = "" if m is None or m[2] == a.replicates else f" ({m[2]} runs)"
            cells.append("–" if m is None else f"{m[0]:.4f} ± {m[1]:.4f}{partial}")
        lines.append(f"| `{key}` | " + " | ".join(cells) + " |")
    return lines


def _is_lines(run: RunRecord, a: RunAnalysis) -> list[str]:
    if a.final is None:
        return []
    t = int(a.final.model[1:])
    last = run.row(t) or {}
    is_keys = [k for k in sorted(run.metric_keys(), key=_key_order) if k.startswith("is/m1_pass@")]
    if not is_keys:
        return []
    size = last.get("is/size")
    if not size:
        return [f"- `is/*`: IS({t}) is empty: M{t} solves no test question that M1 fails (greedy)."]
    top = is_keys[-1]
    ci = a.intervals.get(t, {}).get(top)
    return [
        f"- `{top}`: M1 reaches {_value_cell(last.get(top), ci)} on the {size} questions of IS({t}) — "
        f"the share of M{t}'s new solutions that were already within M1's reach by sampling "
        "(high = selection, not new skill)."
    ]


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def write_run_report(folder: str | os.PathLike, plots: bool = True) -> Path:
    """<folder>/report.md, <folder>/verdicts.json (and, with `plots`, the PNGs in <folder>/plots/)
    from config.json, metrics.jsonl and every model's per-question eval data."""
    run = load_run(folder)
    analysis = analyse_run(run)
    if plots:
        plot_run(run, run.folder / "plots", analysis.intervals, analysis.churn, f"M{analysis.baseline}")
    write_verdicts_json(run.folder / "verdicts.json", analysis.comparisons)
    return write_text_atomic(run.folder / "report.md", render_report(run, analysis))


def report_runs(folders: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> Path:
    """Compare several runs (e.g. one per paradigm): plots with one line per run, comparison.md with
    pass@1, coverage and OOD accuracy per iteration for each run, and paired tests of every run
    against the first one on the same questions at each iteration (comparison_verdicts.json)."""
    runs = [load_run(f) for f in folders]
    if not runs:
        raise ValueError("report_runs needs at least one run folder")
    out = Path(out_dir)
    plots = plot_comparison(runs, out)
    lines = ["# Comparison of runs", ""]
    for key in ("pass@1", "coverage", "ood/accuracy", "ood/group_disparity"):
        if not any(key in r.metric_keys() for r in runs):
            continue
        iterations = sorted({t for r in runs for t in r.iterations})
        lines += [
            f"## `{key}`",
            "",
            "| run | " + " | ".join(f"M{t}" for t in iterations) + " |",
            "|---|" + "---:|" * len(iterations),
        ]
        for r in runs:
            cells = [_fmt((r.row(t) or {}).get(key)) for t in iterations]
            lines.append(f"| {r.label} ({r.folder}) | " + " | ".join(cells) + " |")
        lines.append("")
    comparisons, control = _paired_between_runs(runs)
    if comparisons and control is not None:
        primary = control.primary
        lines += [f"## Paired tests against `{runs[0].label}` (same questions, same iteration)", "",
                  "The headline comparisons are each run's last iteration shared with the first run. "
                  f"Error control: {control.describe()} Difference [interval at the test's level, "
                  "which excludes 0 exactly when the verdict is a change].", "",
                  "| run | model | metric | baseline | value | difference | p_adj | verdict |",
                  "|---|---|---|---:|---:|---:|---:|---|"]
        for label, c in comparisons:
            for r in c.rows:
                if r["verdict"] == UNDEFINED and r["metric"] not in primary:
                    continue
                lines.append(
                    f"| {label} | {c.model} | `{r['metric']}` | {_fmt(r['baseline_value'])} | "
                    f"{_fmt(r['value'])} | {_step_cell(r)} | {_p(r['p_adjusted'])} | {r['verdict']} |"
                )
        lines.append("")
        write_verdicts_json(out / "comparison_verdicts.json", [c for _, c in comparisons])
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    return write_text_atomic(out / "comparison.md", "\n".join(lines) + "\n")


def _paired_between_runs(
    runs: Sequence[RunRecord],
) -> tuple[list[tuple[str, Comparison]], ErrorControl | None]:
    """Every later run against the first, iteration by iteration, where both hold per-question data
    on the same questions (otherwise the rows read undefined with the reason), under one error
    control: the primary family is the primary metrics at each run's last shared iteration."""
    if len(runs) < 2:
        return [], None
    first = runs[0]
    alpha, _, primary = stats_settings(first.config, str(first.folder / "config.json"))
    out: list[tuple[str, Comparison]] = []
    headline: list[Comparison] = []
    for other in runs[1:]:
        last = None
        for t in sorted(set(first.iterations) & set(other.iterations)):
            a = load_model_data(eval_dir_of(first.folder, first.config, t), f"{first.label}:M{t}")
            b = load_model_data(eval_dir_of(other.folder, other.config, t), f"{other.label}:M{t}")
            if is_unavailable(a, "pass@1") or is_unavailable(b, "pass@1"):
                continue
            keys = sorted(set(a.metrics) | set(b.metrics), key=_key_order)
            last = compare_models(a, b, keys)
            out.append((other.label, last))
        if last is not None:
            headline.append(last)
    if not out:
        return [], None
    control = apply_error_control([c for _, c in out], headline, primary, alpha)
    return out, control
