"""Paper B's generation-verification gap study (what `recipes/gv_gap.py` runs): generate,
self- (or cross-) verify, filter, tabulate, draw.

For every generator: n sampled responses per question (temperature 0.7, top-p 0.9), graded by the
task (the true utility u). For every verifier (the generator itself by default) and every method
(mc, cot_binary, cot_score, tournament, gold): a proxy utility û per response. Every filter
(`mc:top=0.8`, `mc:tau=0.8`, `cot_binary`, `cot_score:tau=8`, `tournament:rounds=5`, AND
ensembles `a&b`) gives the gap, relative gap, accuracy of the kept responses and kept fraction.
Outputs in out_dir (rank 0 writes; files are atomic; each stage is resumable):
  stages/gen__<generator>/generations.json        questions, responses, rewards
  stages/score__<gen>__<ver>__<method>/scores.json scores, parse failures, verifier texts, extras
  responses.jsonl   one row per (generator, verifier, question, response): reward and every score
  results.json      all numbers: tables, unparseable rates, histograms, correlations, matrices
  results.md        paper B's tables 3/4 (+ cross-verification matrices), also printed
  cross_<filter>.png (several generators/verifiers), rel_gap_vs_flops.png (2+ generators with known
  pre-training FLOPs: selftrain/verify/flops.py or `flops:`; points and fitted line), W&B run.
"""

from __future__ import annotations

import gc
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from selftrain import dist
from selftrain.config import ConfigError, parse_cli, to_dict
from selftrain.loop.run_folder import claim_run_folder, exit_cleanly, release_run_folder
from selftrain.loop.stages import run_stage
from selftrain.metrics.stats import loglinear_fit
from selftrain.report import RunLogger, write_json_atomic, write_text_atomic
from selftrain.tasks import get_task
from selftrain.tasks.common import PROMPT_FORMATS
from selftrain.verify import get_verifier, parse_filter, verifier_names
from selftrain.verify.analysis import (
    accuracy,
    cot_score_histogram,
    cross_matrix,
    gap_correlations,
    gap_results,
    markdown_gap_tables,
    markdown_matrix,
    method_correlations,
    plot_heatmap,
    plot_model_figures,
    plot_vs_flops,
)
from selftrain.verify.figures import figure_data
from selftrain.verify.flops import pretraining_flops

PAPER_FILTERS = [
    "mc:top=0.7", "mc:top=0.8", "mc:tau=0.7", "mc:tau=0.8", "cot_binary", "cot_score:tau=8",
    "cot_score:tau=9", "tournament:rounds=5",
]
CROSS_FILTERS = ["mc:top=0.8", "cot_score:tau=8"]  # paper B's Fig. 3
FLOPS_FILTERS = ["mc:top=0.8", "cot_score:tau=8", "tournament:rounds=5"]  # paper B's Fig. 1


@dataclass
class GVGapConfig:
    out_dir: str = ""
    model: str = "smollm2-135m"  # generator and verifier unless the lists below are given
    generators: list[str] = field(default_factory=list)
    verifiers: list[str] = field(default_factory=list)
    flops: dict[str, float] = field(default_factory=dict)  # model -> pre-training FLOPs (Fig. 1)
    task: str = "arith"
    data_path: str | None = None
    split: str = ""  # default: the task's evaluation split
    limit: int | None = 8
    shots: int = 0  # worked examples in the generation prompt (paper B: 4)
    prompt_format: str = "chat"  # chat (template when the tokenizer has one) | fewshot (plain text; paper B)
    n: int = 4  # generations per question (paper B: 128)
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 256
    methods: list[str] = field(default_factory=lambda: ["mc", "cot_binary", "cot_score", "tournament"])
    filters: list[str] = field(default_factory=lambda: list(PAPER_FILTERS))
    cross_filters: list[str] = field(default_factory=lambda: list(CROSS_FILTERS))
    flops_filters: list[str] = field(default_factory=lambda: list(FLOPS_FILTERS))
    verify_shots: int = 0  # worked verifications in each verifier prompt (paper B: 4)
    verify_temperature: float = 0.7
    verify_top_p: float = 0.9
    verify_max_new_tokens: int = 256
    tournament_rounds: int | None = None  # default: the most rounds any filter asks for
    mc_word_probs: str = "first_token"  # or "full": exact multi-token word probabilities (docs)
    seed: int = 0
    dtype: str = ""  # "" = the sampler's default (fp32 on CPU, bf16 on GPU)
    kv_cache_tokens: int = 32768
    max_num_seqs: int = 128
    project: str = "selftrain"
    name: str = ""
    wandb_mode: str = "offline"

    def __post_init__(self) -> None:
        flops = {}
        for model, value in self.flops.items():
            try:  # YAML reads 1.0e21 (no exponent sign) as text
                flops[str(model)] = float(value)
            except (TypeError, ValueError) as err:
                raise ConfigError(f"flops.{model}: expected a number of FLOPs, got {value!r}") from err
            if not flops[str(model)] > 0:
                raise ConfigError(f"flops.{model}: must be positive, got {value!r}")
        self.flops = flops
        if self.mc_word_probs not in ("first_token", "full"):
            raise ConfigError(f"mc_word_probs must be first_token or full, got {self.mc_word_probs!r}")
        if self.n < 1:
            raise ConfigError(f"n must be >= 1, got {self.n}")
        if self.prompt_format not in PROMPT_FORMATS:
            raise ConfigError(
                f"prompt_format must be one of {', '.join(PROMPT_FORMATS)}, got {self.prompt_format!r}"
            )
        unknown = [m for m in self.methods if m not in verifier_names()]
        if unknown:
            raise ConfigError(f"methods: unknown {unknown}; choose from {', '.join(verifier_names())}")
        if not self.methods:
            raise ConfigError("methods must name at least one verification method")
        for key, default in (("filters", PAPER_FILTERS), ("cross_filters", CROSS_FILTERS),
                             ("flops_filters", FLOPS_FILTERS)):
            if getattr(self, key) == default:  # untouched default: keep the filters of the methods run
                setattr(self, key, [f for f in default if set(parse_filter(f).methods) <= set(self.methods)])
            for text in getattr(self, key):
                try:
                    parse_filter(text, self.methods)
                except ValueError as err:
                    raise ConfigError(f"{key}: {err}") from err
        if not self.filters:
            raise ConfigError(f"filters: none given for the methods {self.methods} (e.g. mc:top=0.8)")
        plotted = (self.cross_filters if len(self.generator_list) > 1 or len(self.verifier_list) > 1 else [])
        plotted = plotted + self.flops_filters  # FLOPs may come from the built-in table
        for text in plotted:
            if text not in self.filters:
                self.filters.append(text)  # every plotted filter is also tabulated

    @property
    def generator_list(self) -> list[str]:
        return list(self.generators) or [self.model]

    @property
    def verifier_list(self) -> list[str]:
        return list(self.verifiers) or list(self.generator_list)


def slug(name: str) -> str:
    """A file-name-safe form of a model name or path."""
    return re.sub(r"[^A-Za-z0-9._-]+", "--", name.strip("/")) or "model"


def default_sampler_factory(cfg: GVGapConfig) -> Callable[[str], Any]:
    def make(name: str) -> Any:
        from selftrain.sampler import Sampler

        options: dict[str, Any] = {"kv_cache_tokens": cfg.kv_cache_tokens, "max_num_seqs": cfg.max_num_seqs}
        if cfg.dtype:
            options["dtype"] = cfg.dtype
        return Sampler(name, **options)

    return make


class _SamplerCache:
    """Holds one model at a time: asking for another frees the current one first."""

    def __init__(self, make: Callable[[str], Any]) -> None:
        self.make, self.name, self.sampler = make, None, None

    def get(self, name: str) -> Any:
        if name != self.name:
            self.sampler = None
            gc.collect()
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except ImportError:
                pass
            self.sampler, self.name = self.make(name), name
        return self.sampler


def _tournament_rounds(cfg: GVGapConfig) -> int | None:
    if cfg.tournament_rounds is not None:
        return cfg.tournament_rounds
    asked = [int(p.value) for f in cfg.filters for p in parse_filter(f).parts if p.kind == "rounds"]
    return max(asked) if asked else None


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def generation_settings(cfg: GVGapConfig, generator: str) -> dict[str, Any]:
    """What a generation stage depends on; a resumed run must ask for the same."""
    return {"generator": generator, "task": cfg.task, "data_path": cfg.data_path, "split": cfg.split,
            "limit": cfg.limit, "shots": cfg.shots, "n": cfg.n, "temperature": cfg.temperature,
            "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed}


def scoring_settings(cfg: GVGapConfig, generator: str, verifier: str, method: str) -> dict[str, Any]:
    """What a scoring stage depends on (besides its generations)."""
    settings: dict[str, Any] = {"generator": generator, "verifier": verifier, "method": method}
    if method != "gold":
        settings.update(shots=cfg.verify_shots, temperature=cfg.verify_temperature, top_p=cfg.verify_top_p,
                        max_new_tokens=cfg.verify_max_new_tokens, seed=cfg.seed)
    if method == "tournament":
        settings["rounds"] = _tournament_rounds(cfg)
    if method == "mc":
        settings["word_probs"] = cfg.mc_word_probs
    return settings


def _check_settings(folder: Path, saved: dict[str, Any], wanted: dict[str, Any]) -> None:
    """A finished stage made with other settings is an error, not silently reused."""
    if saved != wanted:
        diff = {k: (saved.get(k), wanted.get(k)) for k in sorted(set(saved) | set(wanted))
                if saved.get(k) != wanted.get(k)}
        raise ConfigError(
            f"{folder} was computed with other settings (saved vs asked: {diff}); use a new out_dir "
            "or delete that stage to recompute it"
        )


def generate_stage(cfg: GVGapConfig, task: Any, examples: list[Any], cache: _SamplerCache, generator: str,
                   stages: Path) -> dict[str, Any]:
    def compute(folder: Path) -> None:
        sampler = cache.get(generator)
        prompts = [task.prompt(ex, sampler.tokenizer, cfg.shots, cfg.prompt_format) for ex in examples]
        outs = sampler.generate(prompts, n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p,
                                max_new_tokens=cfg.max_new_tokens, stop=list(task.stop), seed=cfg.seed)
        questions = []
        for ex, completions in zip(examples, outs):
            responses = [c.text for c in completions]
            questions.append({"id": ex.id, "question": ex.question, "responses": responses,
                              "rewards": [float(task.reward(ex, r)) for r in responses],
                              "finish_reasons": [c.finish_reason for c in completions]})
        if dist.is_main():
            write_json_atomic(folder / "generations.json", {"generator": generator, "settings": settings,
                                                            "questions": questions})

    settings = generation_settings(cfg, generator)
    folder = run_stage(stages, f"gen__{slug(generator)}", compute)
    data = _read_json(folder / "generations.json")
    _check_settings(folder, data["settings"], settings)
    if [q["id"] for q in data["questions"]] != [ex.id for ex in examples]:
        raise ConfigError(f"{folder} holds other questions than the task gives now; use a new out_dir")
    return data


def score_stage(cfg: GVGapConfig, task: Any, examples: list[Any], cache: _SamplerCache, generator: str,
                verifier: str, method: str, generations: dict[str, Any], stages: Path) -> dict[str, Any]:
    def compute(folder: Path) -> None:
        options: dict[str, Any] = {}
        if method != "gold":
            options = {"shots": cfg.verify_shots, "temperature": cfg.verify_temperature,
                       "top_p": cfg.verify_top_p, "max_new_tokens": cfg.verify_max_new_tokens,
                       "seed": cfg.seed + 1}
            if method == "tournament":
                options["rounds"] = _tournament_rounds(cfg)
            if method == "mc":
                options["word_probs"] = cfg.mc_word_probs
        sampler = cache.get(verifier) if method != "gold" else None
        result = get_verifier(method, sampler, **options).score(
            task, examples, [q["responses"] for q in generations["questions"]])
        if dist.is_main():
            write_json_atomic(folder / "scores.json", {
                "generator": generator, "verifier": verifier, "method": method, "settings": settings,
                "scores": result.scores,
                "failed": result.failed, "raw": result.raw, "n_judgements": result.n_judgements,
                "n_failed": result.n_failed, "failure_rate": result.failure_rate, "default": result.default,
                "info": result.info,
            })

    settings = scoring_settings(cfg, generator, verifier, method)
    name = f"score__{slug(generator)}__{slug(verifier)}__{method}"
    folder = run_stage(stages, name, compute)
    data = _read_json(folder / "scores.json")
    _check_settings(folder, data["settings"], settings)
    return data


def _pairs(cfg: GVGapConfig) -> list[tuple[str, str]]:
    """(generator, verifier) pairs, self-verification first."""
    pairs = [(g, v) for g in cfg.generator_list for v in cfg.verifier_list]
    return sorted(pairs, key=lambda p: p[0] != p[1])


def analyse(cfg: GVGapConfig, generations: dict[str, dict[str, Any]],
            scores: dict[tuple[str, str, str], dict[str, Any]]) -> dict[str, Any]:
    """Every number of the run, from the saved generations and scores only."""
    specs = [parse_filter(f, cfg.methods) for f in cfg.filters]
    rows = []
    for g, v in _pairs(cfg):
        rewards = [q["rewards"] for q in generations[g]["questions"]]
        by_method = {m: scores[(g, v, m)]["scores"] for m in cfg.methods}
        results = gap_results(rewards, by_method, specs)
        row: dict[str, Any] = {
            "generator": g, "verifier": v, "accuracy": accuracy(rewards), "results": results,
            "unparseable_rate": {m: scores[(g, v, m)]["failure_rate"] for m in cfg.methods},
            "method_correlation": method_correlations(by_method),
            "gap_correlation": gap_correlations(results),
        }
        if "cot_score" in cfg.methods:
            s = scores[(g, v, "cot_score")]
            row["cot_score_histogram"] = cot_score_histogram(s["scores"], s["failed"])
        if "tournament" in cfg.methods:
            info = scores[(g, v, "tournament")]["info"]
            row["tournament"] = {k: info[k] for k in ("first_wins_rate", "n_comparisons", "rounds_played")}
        if g == v:  # paper B's per-model figures (Figs. 5, 6, 7, 19) are of self-improvement
            rounds = max(row.get("tournament", {}).get("rounds_played") or [0])  # per question
            row["figures"] = figure_data(rewards, by_method, results, int(rounds))
        rows.append(row)
    report: dict[str, Any] = {"config": to_dict(cfg), "filters": {s.text: s.label() for s in specs},
                              "rows": rows}
    if len(cfg.generator_list) > 1 or len(cfg.verifier_list) > 1:
        report["cross"] = {}
        for text in cfg.cross_filters:
            gens, vers, matrix = cross_matrix(rows, text)
            report["cross"][text] = {"generators": gens, "verifiers": vers, "gap": matrix}
    self_rows = [r for r in rows if r["generator"] == r["verifier"]]
    flops_points = pretraining_flops([r["generator"] for r in self_rows], cfg.flops)
    if len(flops_points) >= 2:
        report["flops"] = {
            text: [(flops_points[r["generator"]], r["results"][text]["relative_gap"])
                   for r in self_rows if r["generator"] in flops_points]
            for text in cfg.flops_filters
        }
        report["flops_source"] = {m: "config" if m in cfg.flops else "built-in" for m in flops_points}
        report["flops_fit"] = {text: loglinear_fit([f for f, _ in pts], [v for _, v in pts])
                               for text, pts in report["flops"].items()}
    return report


def markdown_report(cfg: GVGapConfig, report: dict[str, Any]) -> str:
    specs = [parse_filter(f, cfg.methods) for f in cfg.filters]
    parts = [f"## Generation-verification gap: task {cfg.task}, n={cfg.n}, "
             f"{len(report['rows'][0]['results'][specs[0].text]['per_question_gap'])} questions", "",
             markdown_gap_tables(report["rows"], specs)]
    lines = ["### Verifier diagnostics", "",
             "| Generator | Verifier | " + " | ".join(f"unparseable {m} (%)" for m in cfg.methods)
             + " | CoT-S mode | To first-listed wins (%) |",
             "|---|---|" + "---:|" * (len(cfg.methods) + 2)]
    for r in report["rows"]:
        rates = " | ".join(f"{100 * r['unparseable_rate'][m]:.1f}" for m in cfg.methods)
        mode = r.get("cot_score_histogram", {}).get("mode")
        first = r.get("tournament", {}).get("first_wins_rate")
        mode_text = "n/a" if mode is None else str(mode)
        first_text = "n/a" if first is None else f"{100 * first:.1f}"
        lines.append(f"| {r['generator']} | {r['verifier']} | {rates} | {mode_text} | {first_text} |")
    parts.append("\n".join(lines) + "\n")
    for r in report["rows"]:
        corr = ", ".join(f"{k}: {'n/a' if v is None else f'{v:.3f}'}"
                         for k, v in r["method_correlation"].items())
        parts.append(f"Pearson of û between methods ({r['generator']} / {r['verifier']}): {corr or 'n/a'}\n")
        defined = {k: v for k, v in r["gap_correlation"].items() if v is not None}
        gaps = ", ".join(f"{k}: {v:.3f}" for k, v in defined.items())
        undefined = len(r["gap_correlation"]) - len(defined)
        parts.append(f"Pearson of per-question gaps between filters ({r['generator']} / {r['verifier']}): "
                     f"{gaps or 'none defined'}" + (f" ({undefined} pairs undefined: a constant side)"
                                                    if undefined else "") + "\n")
    for text, fit in report.get("flops_fit", {}).items():
        if fit is None:
            continue
        ci = fit["slope_ci"]
        ci_text = f" [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]" if ci else " (no interval below 3 models)"
        parts.append(f"Relative gap vs log10 pre-training FLOPs, {report['filters'][text]}: slope "
                     f"{100 * fit['slope']:.2f} points per decade{ci_text}, r = "
                     f"{'n/a' if fit['r'] is None else format(fit['r'], '.3f')}, "
                     f"{fit['n']} models\n")
    for text, cross in report.get("cross", {}).items():
        parts.append(markdown_matrix(f"Cross-verification gap (%), {report['filters'][text]}",
                                     cross["generators"], cross["verifiers"], cross["gap"]))
    return "\n".join(parts)


def write_outputs(cfg: GVGapConfig, out: Path, report: dict[str, Any], generations: dict[str, Any],
                  scores: dict[tuple[str, str, str], dict[str, Any]], logger: RunLogger) -> str:
    lines = []
    for g, v in _pairs(cfg):
        for q, question in enumerate(generations[g]["questions"]):
            for i, reward in enumerate(question["rewards"]):
                row: dict[str, Any] = {"generator": g, "verifier": v, "question_id": question["id"],
                                       "response_index": i, "reward": reward}
                for m in cfg.methods:
                    row[m] = scores[(g, v, m)]["scores"][q][i]
                    row[f"{m}_failed"] = scores[(g, v, m)]["failed"][q][i]
                lines.append(json.dumps(row, sort_keys=True))
    write_text_atomic(out / "responses.jsonl", "\n".join(lines) + "\n")
    write_json_atomic(out / "results.json", report)
    md = markdown_report(cfg, report)
    write_text_atomic(out / "results.md", md)
    images = {}
    for text, cross in report.get("cross", {}).items():
        images[f"cross/{text}"] = plot_heatmap(out / f"cross_{slug(text)}.png",
                                               f"gap (%), {report['filters'][text]}",
                                               cross["generators"], cross["verifiers"], cross["gap"])
    if "flops" in report:
        series = {report["filters"][t]: pts for t, pts in report["flops"].items()}
        fits = {report["filters"][t]: fit for t, fit in report["flops_fit"].items()}
        images["rel_gap_vs_flops"] = plot_vs_flops(out / "rel_gap_vs_flops.png", series, "relative gap (%)",
                                                   fits)
    specs = [parse_filter(f, cfg.methods) for f in cfg.filters]
    for r in report["rows"]:
        if "figures" in r:
            images.update(plot_model_figures(out, r, report["filters"], slug(r["generator"])))
    metrics: dict[str, Any] = {}
    for r in report["rows"]:
        prefix = f"{r['generator']}|{r['verifier']}"
        metrics[f"{prefix}/accuracy"] = r["accuracy"]
        for s in specs:
            for key in ("gap", "relative_gap", "filtered_accuracy", "kept_fraction"):
                metrics[f"{prefix}/{s.label()}/{key}"] = r["results"][s.text][key]
            for key in ("gap", "relative_gap"):  # the t interval over prompts beside the value
                ci = r["results"][s.text].get(f"{key}_ci")
                if ci:
                    metrics[f"{prefix}/{s.label()}/{key}/ci_low"] = ci[0]
                    metrics[f"{prefix}/{s.label()}/{key}/ci_high"] = ci[1]
        for m, rate in r["unparseable_rate"].items():
            metrics[f"{prefix}/unparseable/{m}"] = rate
    logger.log(metrics, step=0)
    columns = ["generator", "verifier", "accuracy"]
    columns += [f"{s.label()} {k}" for s in specs for k in ("gap", "rel")]
    table = [[r["generator"], r["verifier"], r["accuracy"]]
             + [r["results"][s.text][k] for s in specs for k in ("gap", "relative_gap")]
             for r in report["rows"]]
    logger.log_table("gv_gap", columns, table)
    for key, path in images.items():
        logger.log_image(key, path)
    return md


def run(cfg: GVGapConfig, sampler_factory: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Run every stage (skipping finished ones) and write the outputs; returns the report."""
    if not cfg.out_dir:
        raise ConfigError("out_dir=DIR is required")
    out = Path(cfg.out_dir)
    claim_run_folder(out)  # one live run per folder; SIGINT / SIGTERM stop it cleanly
    try:
        return _run_stages(cfg, out, sampler_factory)
    finally:
        release_run_folder(out)


def _run_stages(cfg: GVGapConfig, out: Path, sampler_factory: Callable[[str], Any] | None) -> dict[str, Any]:
    stages = out / "stages"
    task = get_task(cfg.task)
    split = cfg.split or task.eval_split
    examples = task.load(split, path=cfg.data_path, limit=cfg.limit)
    if not examples:
        raise ConfigError(f"task {cfg.task!r} split {split!r} gave no examples (limit={cfg.limit})")
    cache = _SamplerCache(sampler_factory or default_sampler_factory(cfg))
    generations = {g: generate_stage(cfg, task, examples, cache, g, stages) for g in cfg.generator_list}
    scores: dict[tuple[str, str, str], dict[str, Any]] = {}
    for v in cfg.verifier_list:  # verifier outer: each verifier model is loaded once
        for g in cfg.generator_list:
            for m in cfg.methods:
                scores[(g, v, m)] = score_stage(cfg, task, examples, cache, g, v, m, generations[g], stages)
    report = analyse(cfg, generations, scores)
    if dist.is_main():
        logger = RunLogger(out, project=cfg.project, name=cfg.name or None, config=to_dict(cfg),
                           mode=cfg.wandb_mode, jsonl_name="metrics.jsonl")
        try:
            md = write_outputs(cfg, out, report, generations, scores, logger)
        finally:
            logger.finish()
        print(md)
    dist.barrier()
    return report


def main(argv: Sequence[str]) -> int:
    try:
        cfg = parse_cli(GVGapConfig, list(argv))
        if not cfg.out_dir:
            raise ConfigError("out_dir=DIR is required")
    except (ConfigError, ValueError) as err:
        print(f"gv_gap: {err}", file=sys.stderr)
        return 2
    dist.init_distributed()
    try:
        exit_cleanly(lambda: run(cfg))
    except ConfigError as err:
        print(f"gv_gap: {err}", file=sys.stderr)
        return 2
    return 0

