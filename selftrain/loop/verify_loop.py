"""Paper B's iterative self-improvement (its Algorithm 1) as resumable stages, without gold labels.

f_0 is the configured model. Round t (t = 0 .. T) works on the model f_t:

    round_<t>/sample   N samples per training prompt from f_t; graded by the task (MEASUREMENT only)
    round_<t>/verify   proxy utilities û of every sample, from the verifier (f_t itself by default)
    round_<t>/filter   keep-masks from û alone (the gold reward is never read to select), the gap
                       metrics of f_t, and D_t: the kept responses (SFT) or kept x not-kept pairs (RPO)
    round_<t>/train    f_{t+1} = update(f_t | D_t); an empty D_t keeps f_t (t < T only)

Round T has no train stage: it is the final evaluation of f_T (accuracy, gap, pass@k), which also
gives the last update's error J(f_T) - J(f_{T-1}[w]). Row t of metrics.jsonl describes f_t: its
accuracy J(f_t), gap(f_t), J(f_t[w]), kept fraction, unparseable rate, pass@k, what D_t held and how
f_{t+1} was trained, and (t >= 1) the split of J(f_t) - J(f_{t-1}) into gap(f_{t-1}) + update error.

Every stage publishes its folder atomically with a done-marker (`stages.run_stage`), later stages
read their inputs back from those folders, seeds come from (seed, t, stage): a run killed at any
point and started again skips finished stages and reaches the same numbers. Under torchrun,
sampling, verification, grading and training are collective and rank 0 writes every file.
Details: docs/iter_verify.md.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .. import dist
from ..config import to_dict
from ..report.logger import RunLogger, write_json_atomic, write_text_atomic
from ..train.config import TrainConfig
from ..train.lora import LoraConfig
from .artifacts import JsonlTrainLogger, derive_seed, read_json, read_jsonl, say, write_jsonl_atomic
from .config import (
    DataSection,
    EvalSection,
    OODSection,
    SamplerSection,
    SamplingSection,
    WandbSection,
    check_eval,
    check_lora_sections,
    check_positive,
    check_sampling,
)
from .engine import (
    SamplerCache,
    check_or_write_config,
    describe_train_result,
    load_eval_data,
    load_task,
    run_engine,
    run_logged_stage,
    sample_and_grade,
    skipped_train_result,
    stop_strings_for,
    train_model,
    wandb_run_id,
)
from .evaluation import evaluate_model, sample_metrics
from .run_folder import claim_run_folder
from .steps import BuildOptions, SampledQuestion, get_step_kind, is_correct

UPDATES = ("sft", "rpo")
SELF = "self"
GOLD = "gold"


# ---------------------------------------------------------------------------------------- config
@dataclass
class HeldoutSection(EvalSection):
    """Optional held-out evaluation of every f_t on the task's test split (the loop's evaluation:
    greedy pass@1, coverage and pass@k from `n_samples` samples), logged under `heldout/`. Off by
    default: paper B measures the gap and the accuracy on the prompts it selects from."""

    enabled: bool = False
    n_samples: int = 8
    temperature: float = 0.7
    top_p: float = 0.9
    is_ns: list[int] = field(default_factory=list)  # no IS(t) here (that is paper A's question)
    semantic: bool = False
    equations: bool = False


@dataclass
class VerifySection:
    """How the verifier judges each sample (paper B: temperature 0.7, top-p 0.9, 512 tokens, 4-shot)."""

    shots: int = 0  # worked verifications before each verifier prompt (0..4)
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 512
    mc_word_probs: str = "first_token"  # MC: first_token | full (docs/verification.md)
    tournament_rounds: int | None = None  # None: the rounds the filter asks for
    family: str | None = None  # force a prompt-criteria family instead of the task's own
    batch_size: int = 4096  # verifier prompts per sampler call


@dataclass
class PaperBSampling(SamplingSection):
    """Sampling of the N generations (paper B: temperature 0.7, top-p 0.9, 512 tokens). A subclass,
    not a default_factory, so a config file that sets one key keeps these defaults for the rest."""

    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 512


@dataclass
class RejectionSFTConfig(TrainConfig):
    """The MLE update on the kept samples (paper B, table 8: minibatch 64, lr 1e-6, AdamW)."""

    lr: float = 1e-6
    global_batch_size: int = 64


@dataclass
class RPOConfig(TrainConfig):
    """The RL update (paper B, appendix F): RPO = DPO + NLL of the chosen, beta 0.05, SFT coefficient 1."""

    lr: float = 1e-6
    global_batch_size: int = 64
    beta: float = 0.05
    rpo_alpha: float = 1.0


@dataclass
class IterVerifyConfig:
    """One run of paper B's iterative self-improvement (recipes/iter_verify.py)."""

    name: str = ""  # run name; default "iter_verify"
    out_dir: str = ""  # default runs/<name>
    model: str = "smollm2-135m"  # f_0: a built-in name, an HF folder or a hub id
    task: str = "arith"
    iterations: int = 3  # T update rounds: models f_0 .. f_T are measured
    n_samples: int = 8  # N samples per training prompt and round (paper B's analysis: 128)
    # Who judges: "self" = the current model f_t (paper B's self-improvement), "gold" = the task's
    # grader (an ablation: then selection does use the gold reward), or a model (fixed verifier).
    verifier: str = SELF
    fixed_verifier: bool = False  # with verifier=self: judge with f_0 in every round instead of f_t
    # Which samples are kept (selftrain.verify.filters syntax): "cot_binary", "mc:top=0.7",
    # "mc:tau=0.8", "cot_score:tau=8", "tournament:rounds=2", AND ensembles "mc:top=0.8&cot_binary".
    # Empty: "cot_binary" (paper B's Fig. 4), or "gold" with verifier=gold.
    filter: str = ""
    update: str = "sft"  # sft: rejection-sampling SFT on the kept samples; rpo: kept vs not-kept pairs
    max_pairs_per_question: int | None = 8  # RPO pairs per prompt (drawn with a seeded RNG; None = all)
    seed: int = 0
    data: DataSection = field(default_factory=DataSection)
    sampling: PaperBSampling = field(default_factory=PaperBSampling)
    verify: VerifySection = field(default_factory=VerifySection)
    sampler: SamplerSection = field(default_factory=SamplerSection)
    sft: RejectionSFTConfig = field(default_factory=RejectionSFTConfig)  # update=sft
    # update=rpo. Named like the loop's section (its step kind "rpo" trains with the "dpo" section).
    dpo: RPOConfig = field(default_factory=RPOConfig)
    heldout: HeldoutSection = field(default_factory=HeldoutSection)
    wandb: WandbSection = field(default_factory=WandbSection)
    lora: LoraConfig | None = None  # LoRA / QLoRA for every update, as in the loop (docs/training.md)

    def __post_init__(self) -> None:
        from ..verify import parse_filter, verifier_names

        check_positive(self, "iterations", "n_samples")
        check_lora_sections(self)
        if self.update not in UPDATES:
            raise ValueError(f"update={self.update!r}: choose from {', '.join(UPDATES)}")
        if self.max_pairs_per_question is not None and self.max_pairs_per_question < 1:
            raise ValueError(
                f"max_pairs_per_question={self.max_pairs_per_question}: must be >= 1 (or null for all)"
            )
        if not isinstance(self.verifier, str) or not self.verifier.strip():
            raise ValueError("verifier: give self, gold or a model name / path")
        if self.fixed_verifier and self.verifier != SELF:
            raise ValueError(
                f"fixed_verifier=true applies to verifier=self (judge with f_0); verifier={self.verifier!r} "
                "is fixed already"
            )
        if not self.filter:
            self.filter = GOLD if self.verifier == GOLD else "cot_binary"
        try:
            spec = parse_filter(self.filter, verifier_names())
        except ValueError as err:
            raise ValueError(f"filter: {err}") from None
        if self.verifier == GOLD and set(spec.methods) != {GOLD}:
            raise ValueError(
                f"verifier=gold scores with the task's grader only; filter={self.filter!r} names "
                f"{', '.join(sorted(set(spec.methods) - {GOLD}))} (use filter=gold)"
            )
        s = self.sampling
        check_sampling(s.temperature, s.top_p, s.max_new_tokens, "sampling", s.top_k)
        if self.sampling.temperature == 0 and self.n_samples > 1:
            raise ValueError("sampling.temperature=0 with n_samples > 1: the N samples would be identical")
        v = self.verify
        check_sampling(v.temperature, v.top_p, v.max_new_tokens, "verify")
        if v.mc_word_probs not in ("first_token", "full"):
            raise ValueError(f"verify.mc_word_probs={v.mc_word_probs!r}: choose first_token or full")
        if v.tournament_rounds is not None and v.tournament_rounds < 0:
            raise ValueError(f"verify.tournament_rounds={v.tournament_rounds}: must be >= 0 (or null)")
        if self.heldout.enabled:
            check_eval(self.heldout)
        if not 0 <= v.shots <= 4:
            raise ValueError(f"verify.shots={v.shots}: must be 0..4")

    @property
    def run_name(self) -> str:
        return self.name or "iter_verify"

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir or Path("runs") / self.run_name)

    @property
    def methods(self) -> list[str]:
        """The verification methods the filter needs, in the order they appear."""
        from ..verify import parse_filter

        return list(dict.fromkeys(parse_filter(self.filter).methods))

    @property
    def tournament_rounds(self) -> int | None:
        if self.verify.tournament_rounds is not None:
            return self.verify.tournament_rounds
        from ..verify import parse_filter

        asked = [int(p.value) for p in parse_filter(self.filter).parts if p.kind == "rounds"]
        return max(asked) if asked else None


# ------------------------------------------------------------------------- the round's pure logic
def select_kept(filter_text: str, scores_by_method: dict[str, Sequence[Sequence[float]]]) -> list[list[bool]]:
    """Keep-masks of the filter from the verifier's scores alone.

    The gold reward is deliberately not a parameter: selection cannot see it (it enters only as the
    `gold` method's scores, when the filter names that method).
    """
    from ..verify import keep_masks, parse_filter

    return keep_masks(parse_filter(filter_text), scores_by_method)


def build_update_set(
    questions: Sequence[SampledQuestion],
    masks: Sequence[Sequence[bool]],
    update: str,
    max_pairs_per_question: int | None,
    seed: int,
) -> list[dict[str, str]]:
    """D_t from the keep-masks: the loop's builders, with "kept" in place of "correct".

    The questions' gold rewards are replaced by the masks (1 = kept) before building, so D_t cannot
    depend on them. sft: every distinct kept response of each prompt; rpo: (kept, not kept) pairs
    of the same prompt, at most `max_pairs_per_question` per prompt.
    """
    if len(questions) != len(masks):
        raise ValueError(f"{len(questions)} questions but {len(masks)} keep-masks")
    weighted = []
    for q, mask in zip(questions, masks):
        if len(mask) != len(q.responses):
            raise ValueError(f"question {q.id!r}: {len(q.responses)} responses but a mask of {len(mask)}")
        weighted.append(SampledQuestion(q.id, q.prompt, list(q.responses), [1.0 if k else 0.0 for k in mask]))
    kind = get_step_kind(update)
    return kind.build(weighted, BuildOptions(seed=seed, max_pairs_per_question=max_pairs_per_question))


def round_metrics(
    rewards: Sequence[Sequence[float]],
    masks: Sequence[Sequence[bool]],
    texts: Sequence[Sequence[str]],
    answers: Sequence[Sequence[Any]] | None = None,
) -> dict[str, Any]:
    """What row t reports about f_t's samples: accuracy, gap, J(f_t[w]), kept fraction, pass@k
    (and maj@k, the majority vote over k samples, when their extracted `answers` are given).

    accuracy = J(f_t) (mean over prompts of the share of correct samples); gap, relative_gap,
    filtered_accuracy = J(f_t[w]) and kept_fraction follow `metrics.generation_verification_gap`
    (a prompt with nothing kept counts gap 0; a prompt whose samples are all correct is left out of
    the relative gap). pass@k/<k> for k = 1, 2, 4 .. N (unbiased), and distinct-n diversity.
    """
    from ..metrics import generation_verification_gap

    gap = generation_verification_gap(rewards, masks)
    row: dict[str, Any] = {
        key: gap[key]
        for key in (
            "accuracy",
            "filtered_accuracy",
            "gap",
            "relative_gap",
            "kept_fraction",
            "n_empty",
            "n_saturated",
        )
    }
    from ..metrics.stats import gap_intervals

    # 95% t intervals over prompts (the report and W&B show them beside the values)
    cis = gap_intervals(gap["per_question_gap"], gap["per_question_accuracy"])
    for key, ci in cis.items():
        if ci is not None:
            row[f"{key}/ci_low"], row[f"{key}/ci_high"] = ci
    extra = sample_metrics(texts, rewards, encoder=None, equations=False, answers=answers)
    row.update({k: v for k, v in extra.items() if k.startswith(("pass@k/", "maj@k/", "diversity/"))})
    row["questions_with_kept"] = sum(any(m) for m in masks)
    row["kept_correct_fraction"] = _kept_precision(rewards, masks)
    return row


def _kept_precision(rewards: Sequence[Sequence[float]], masks: Sequence[Sequence[bool]]) -> float | None:
    """Share of kept samples that are correct (pooled over prompts; None when nothing is kept)."""
    kept = [r for row, m in zip(rewards, masks) for r, k in zip(row, m) if k]
    return sum(map(is_correct, kept)) / len(kept) if kept else None


def decomposition(previous: dict[str, Any], current: dict[str, Any]) -> dict[str, float]:
    """J(f_t) - J(f_{t-1}) = gap(f_{t-1}) + update error, with update error = J(f_t) - J(f_{t-1}[w])."""
    from ..metrics import improvement_decomposition

    parts = improvement_decomposition(
        previous["accuracy"], previous["filtered_accuracy"], current["accuracy"]
    )
    return {
        "decomp/improvement": parts["improvement"],
        "decomp/prev_gap": parts["gap"],
        "decomp/update_error": parts["update_error"],
    }


# -------------------------------------------------------------------------------------- engine
class IterVerifyEngine:
    """Runs (or resumes) one iter_verify experiment."""

    def __init__(self, cfg: IterVerifyConfig) -> None:
        self.cfg = cfg
        self.root = cfg.run_dir
        self.logger: Any = None

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        from ..models import load_tokenizer

        dist.init_distributed()
        claim_run_folder(self.root)  # one live run per folder; SIGINT / SIGTERM stop it cleanly
        self._check_or_write_config()
        cfg = self.cfg
        self.tokenizer = load_tokenizer(cfg.model)
        self.task = load_task(cfg.task, cfg.data.task_options)
        self.examples = self.task.load(cfg.data.train_split, path=cfg.data.path, limit=cfg.data.train_size)
        if not self.examples:
            raise ValueError(f"task {cfg.task!r} split {cfg.data.train_split!r} has no questions")
        self.prompts = [
            self.task.prompt(ex, self.tokenizer, shots=cfg.data.shots, prompt_format=cfg.data.prompt_format)
            for ex in self.examples
        ]
        self.stop = stop_strings_for(self.task, self.tokenizer, cfg.data.prompt_format)
        self.heldout_data = None
        if cfg.heldout.enabled:
            no_ood = OODSection(enabled=False)
            self.heldout_data = load_eval_data(cfg.task, self.task, cfg.data, no_ood, self.tokenizer)
        self.samplers = SamplerCache(self.tokenizer, cfg.sampler)
        self._verifier_samplers: SamplerCache | None = None
        self.logger = RunLogger(
            self.root,
            project=cfg.wandb.project,
            name=cfg.run_name,
            config=to_dict(cfg),
            mode=cfg.wandb.mode,
            resume_id=self._wandb_id(),
        )
        say(
            f"run {cfg.run_name}: iter_verify, T={cfg.iterations}, model {cfg.model}, task {cfg.task} "
            f"({len(self.examples)} prompts x {cfg.n_samples} samples), filter {cfg.filter} judged by "
            f"{judge_text(cfg)}, update {cfg.update}, {dist.world_size()} process(es) "
            f"-> {self.root}"
        )

    def _check_or_write_config(self) -> None:
        check_or_write_config(self.root, to_dict(self.cfg))

    def _wandb_id(self) -> str | None:
        return wandb_run_id(self.root)

    # ------------------------------------------------------------------ models
    def round_dir(self, t: int) -> Path:
        return self.root / f"round_{t}"

    def _source_of(self, t: int) -> int:
        """Which model's weights f_t are: 0 = the base, s >= 1 = round_<s-1>/trainer/model."""
        if t == 0:
            return 0
        return int(read_json(self.round_dir(t - 1) / "train" / "result.json")["source"])

    def model_of(self, t: int) -> str:
        source = self._source_of(t)
        return self.cfg.model if source == 0 else str(self.round_dir(source - 1) / "trainer" / "model")

    def verifier_model(self, t: int) -> str | None:
        """The model judging round t's samples (None for the gold grader)."""
        cfg = self.cfg
        if cfg.verifier == GOLD:
            return None
        if cfg.verifier == SELF:
            return cfg.model if cfg.fixed_verifier else self.model_of(t)
        return cfg.verifier

    def _verifier_sampler(self, model: str) -> Any:
        """The verifier's sampler: the generator's cache when it uses the generator's tokenizer (self-
        verification needs no second copy), else a cache with the verifier's own tokenizer."""
        if self.cfg.verifier == SELF:
            return self.samplers.get(model)
        self.samplers.release()  # one model in memory at a time
        if self._verifier_samplers is None:
            from ..models import load_tokenizer

            self._verifier_samplers = SamplerCache(load_tokenizer(model), self.cfg.sampler)
        return self._verifier_samplers.get(model)

    def _release_all(self) -> None:
        self.samplers.release()
        if self._verifier_samplers is not None:
            self._verifier_samplers.release()

    # ------------------------------------------------------------------ stages
    def _stage(self, t: int, name: str, compute: Any, describe: Any, outputs: tuple[str, ...] = ()) -> Path:
        return run_logged_stage(self.round_dir(t), name, compute, describe, f"round {t}", outputs)

    def _questions(self, t: int) -> list[SampledQuestion]:
        rows = read_jsonl(self.round_dir(t) / "sample" / "samples.jsonl")
        return [SampledQuestion.from_dict(r, f"samples.jsonl row {i}") for i, r in enumerate(rows, 1)]

    def sample_stage(self, t: int) -> Path:
        """N samples per training prompt from f_t, graded by the task (for measurement only)."""
        cfg = self.cfg

        def compute(tmp: Path) -> None:
            if self._verifier_samplers is not None:
                self._verifier_samplers.release()
            rows, stats = sample_and_grade(
                self.samplers.get(self.model_of(t)),
                self.task,
                self.examples,
                self.prompts,
                cfg.sampling,
                cfg.n_samples,
                self.stop,
                derive_seed(cfg.seed, t, "sample"),
            )
            if dist.is_main():
                write_jsonl_atomic(tmp / "samples.jsonl", rows)
                write_json_atomic(tmp / "stats.json", {"model": self.model_of(t), **stats})

        def describe(folder: Path) -> str:
            st = read_json(folder / "stats.json")
            return (
                f"{st['questions']} prompts x {cfg.n_samples} samples, {st['correct_fraction']:.1%} correct"
            )

        return self._stage(t, "sample", compute, describe)

    def verify_stage(self, t: int) -> Path:
        """û of every sample for each method the filter needs; the verifier never sees the rewards."""
        cfg = self.cfg

        def compute(tmp: Path) -> None:
            from ..verify import get_verifier

            responses = [q.responses for q in self._questions(t)]
            judge = self.verifier_model(t)
            out: dict[str, Any] = {"verifier": judge or GOLD, "methods": {}}
            for method in cfg.methods:
                options: dict[str, Any] = {}
                sampler = None
                if method != GOLD:
                    v = cfg.verify
                    options = {
                        "shots": v.shots,
                        "temperature": v.temperature,
                        "top_p": v.top_p,
                        "max_new_tokens": v.max_new_tokens,
                        "family": v.family,
                        "batch_size": v.batch_size,
                        "seed": derive_seed(cfg.seed, t, f"verify/{method}"),
                    }
                    if method == "tournament":
                        options["rounds"] = cfg.tournament_rounds
                    if method == "mc":
                        options["word_probs"] = v.mc_word_probs
                    if judge is None:
                        raise RuntimeError(f"method {method!r} needs a verifier model, not the gold grader")
                    sampler = self._verifier_sampler(judge)
                result = get_verifier(method, sampler, **options).score(self.task, self.examples, responses)
                info = {k: v for k, v in result.info.items() if k != "comparisons"}
                out["methods"][method] = {
                    "scores": result.scores,
                    "failed": result.failed,
                    "n_judgements": result.n_judgements,
                    "n_failed": result.n_failed,
                    "failure_rate": result.failure_rate,
                    "default": result.default,
                    "info": info,
                }
                if dist.is_main():
                    # The verifier's own words, for inspection (tournament: also every comparison).
                    rows = [{"id": str(ex.id), "texts": raw} for ex, raw in zip(self.examples, result.raw)]
                    if "comparisons" in result.info:
                        rows.append({"comparisons": result.info["comparisons"]})
                    write_jsonl_atomic(tmp / f"{method}_texts.jsonl", rows)
            if dist.is_main():
                write_json_atomic(tmp / "scores.json", out)

        def describe(folder: Path) -> str:
            data = read_json(folder / "scores.json")
            rates = ", ".join(f"{m} unparseable {d['failure_rate']:.1%}" for m, d in data["methods"].items())
            return f"verifier {data['verifier']}: {rates}"

        return self._stage(t, "verify", compute, describe)

    def filter_stage(self, t: int) -> Path:
        """Keep-masks from û alone; the gap metrics of f_t; D_t for the update."""
        cfg = self.cfg

        def compute(tmp: Path) -> None:
            if not dist.is_main():
                return
            questions = self._questions(t)
            scores = read_json(self.round_dir(t) / "verify" / "scores.json")
            by_method = {m: d["scores"] for m, d in scores["methods"].items()}
            masks = select_kept(cfg.filter, by_method)  # û only
            records = build_update_set(
                questions, masks, cfg.update, cfg.max_pairs_per_question, derive_seed(cfg.seed, t, "build")
            )
            texts = [q.responses for q in questions]
            answers = [[self.task.extract(r) for r in row] for row in texts]
            metrics = round_metrics([q.rewards for q in questions], masks, texts, answers)
            judgements = sum(d["n_judgements"] for d in scores["methods"].values())
            failures = sum(d["n_failed"] for d in scores["methods"].values())
            metrics["unparseable"] = failures / judgements if judgements else 0.0
            for m, d in scores["methods"].items():
                metrics[f"unparseable/{m}"] = d["failure_rate"]
                if m == "tournament":
                    metrics["verify/tournament/first_wins_rate"] = d["info"].get("first_wins_rate")
                if m == "cot_score":
                    from ..verify.analysis import cot_score_histogram

                    metrics["verify/cot_score/mode"] = cot_score_histogram(d["scores"], d["failed"])["mode"]
            used = {r["prompt"] for r in records}
            metrics["data/records"] = len(records)
            metrics["data/questions_used"] = sum(q.prompt in used for q in questions)
            metrics["data/empty"] = int(not records)
            write_json_atomic(tmp / "masks.json", {"filter": cfg.filter, "masks": masks})
            write_json_atomic(tmp / "metrics.json", metrics)
            write_jsonl_atomic(tmp / "train.jsonl", records)

        def describe(folder: Path) -> str:
            m = read_json(folder / "metrics.json")
            rel = m["relative_gap"]
            data = (
                f"D_{t} EMPTY (nothing kept)"
                if m["data/empty"]
                else f"D_{t}: {m['data/records']} {'records' if cfg.update == 'sft' else 'pairs'}"
            )
            rel_text = "n/a" if rel is None else f"{rel:+.3f}"
            return (
                f"J(f_{t}) {m['accuracy']:.3f}, J(f_{t}[w]) {m['filtered_accuracy']:.3f}, "
                f"gap {m['gap']:+.3f} (relative {rel_text}), kept {m['kept_fraction']:.1%}; {data}"
            )

        return self._stage(t, "filter", compute, describe)

    def heldout_stage(self, t: int) -> Path:
        """f_t on the test split with the loop's evaluation (same seeds for every model)."""
        cfg = self.cfg

        def compute(tmp: Path) -> None:
            if self._verifier_samplers is not None:
                self._verifier_samplers.release()
            outcome = evaluate_model(
                self.samplers.get(self.model_of(t)), self.heldout_data, cfg.heldout,
                seed=derive_seed(cfg.seed, 0, "heldout"), show_progress=False,
            )
            if dist.is_main():
                metrics = {f"heldout/{k}": v for k, v in outcome.metrics.items()}
                write_json_atomic(tmp / "metrics.json", metrics)
                write_jsonl_atomic(tmp / "greedy.jsonl", outcome.greedy_rows)
                write_jsonl_atomic(tmp / "samples.jsonl", outcome.sample_rows)

        def describe(folder: Path) -> str:
            m = read_json(folder / "metrics.json")
            return f"test pass@1 {m['heldout/pass@1']:.3f}, coverage {m['heldout/coverage']:.3f}"

        return self._stage(t, "heldout", compute, describe)

    def train_stage(self, t: int) -> Path:
        """f_{t+1} = update(f_t | D_t); an empty D_t keeps f_t (logged, never an error)."""
        cfg = self.cfg
        base = self.model_of(t)
        data_path = self.round_dir(t) / "filter" / "train.jsonl"

        def compute(tmp: Path) -> None:
            metrics = read_json(self.round_dir(t) / "filter" / "metrics.json")
            if metrics["data/empty"]:
                result = skipped_train_result(self._source_of(t), "empty D_t (nothing kept)")
            else:
                step = get_step_kind(cfg.update)
                section = getattr(cfg, step.train_section)
                tcfg = dataclasses.replace(section, seed=derive_seed(cfg.seed, t, "train"), lora=cfg.lora)
                self._release_all()
                out_dir = self.round_dir(t) / "trainer"
                log = JsonlTrainLogger(out_dir / "train_log.jsonl")
                result = train_model(tcfg, base, data_path, out_dir, step, t + 1, f"f_{t + 1}", log)
            if dist.is_main():
                write_json_atomic(tmp / "result.json", result)

        def describe(folder: Path) -> str:
            return describe_train_result(folder, f"f_{t + 1}", f"f_{t}")

        # the checkpoint lives beside the stage (round_t/trainer, the trainer's own resumable folder)
        return self._stage(t, "train", compute, describe, outputs=("trainer",))

    # ------------------------------------------------------------------ rows and report
    def round_row(self, t: int) -> dict[str, Any]:
        """Everything logged for f_t (read back from the stage folders only)."""
        row: dict[str, Any] = {"iteration": t, "model_source": self._source_of(t)}
        row.update(read_json(self.round_dir(t) / "filter" / "metrics.json"))
        if self.cfg.heldout.enabled:
            row.update(read_json(self.round_dir(t) / "heldout" / "metrics.json"))
        sample = read_json(self.round_dir(t) / "sample" / "stats.json")
        row["sample/truncated_fraction"] = sample["truncated_fraction"]
        if t >= 1:
            previous = read_json(self.round_dir(t - 1) / "filter" / "metrics.json")
            row.update(decomposition(previous, row))
        if t < self.cfg.iterations:
            train = read_json(self.round_dir(t) / "train" / "result.json")
            row["train/skipped"] = int(train["skipped"])
            row["train/steps"] = train["steps"]
            for key, value in train["metrics"].items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    row[f"train/{key}"] = value
        return row

    def _logged_rounds(self) -> set[int]:
        """Rounds whose row is logged and complete. A row logged as the final round of a shorter run
        (no update yet) is not: extending the run trains from it, and its row is logged again."""
        path = self.root / "metrics.jsonl"
        if not dist.is_main() or not path.is_file():
            return set()
        rows = read_jsonl(path, tolerate_torn_tail=True)
        write_jsonl_atomic(path, rows)  # without a torn tail, so the next append starts cleanly
        return {
            int(r["iteration"]) for r in rows
            if "iteration" in r and ("train/skipped" in r or int(r["iteration"]) >= self.cfg.iterations)
        }

    def _rows(self) -> list[dict[str, Any]]:
        path = self.root / "metrics.jsonl"
        rows = read_jsonl(path, tolerate_torn_tail=True) if path.is_file() else []
        by_t = {int(r["iteration"]): r for r in rows}  # a later row for a round replaces an earlier one
        return [by_t[t] for t in sorted(by_t)]

    def log_round(self, t: int, logged: set[int]) -> None:
        if dist.is_main() and t not in logged:
            self.logger.log(self.round_row(t), step=t)
            logged.add(t)
            self.write_report(plots=False)

    def write_report(self, plots: bool = True) -> Path | None:
        if not dist.is_main():
            return None
        rows = self._rows()
        png = None
        if plots and rows:
            png = plot_rounds(rows, self.root / "plots" / "iter_verify.png")
        return write_text_atomic(self.root / "report.md", render_report(self.cfg, rows, png))

    def run(self) -> dict[str, Any]:
        """Every missing stage of rounds 0..T; returns f_T's row."""
        cfg = self.cfg
        logged = self._logged_rounds()
        for t in range(cfg.iterations + 1):
            self.sample_stage(t)
            self.verify_stage(t)
            self.filter_stage(t)
            if cfg.heldout.enabled:
                self.heldout_stage(t)
            if t < cfg.iterations:
                self.train_stage(t)
            self.log_round(t, logged)
        self._release_all()
        self.write_report()
        return dist.broadcast_object(self.round_row(cfg.iterations) if dist.is_main() else None)

    def finish(self) -> None:
        if self.logger is None:
            return
        if dist.is_main():
            png = self.root / "plots" / "iter_verify.png"
            if png.is_file():
                self.logger.log_image("plots/iter_verify", png, step=self.cfg.iterations)
        self.logger.finish()


def run_iter_verify(cfg: IterVerifyConfig) -> dict[str, Any]:
    """Set up, run (or resume) and report one experiment; returns f_T's row (every rank)."""
    return run_engine(IterVerifyEngine(cfg), cfg.run_dir)


# ------------------------------------------------------------------------------ report and plot
def judge_text(cfg: IterVerifyConfig) -> str:
    if cfg.verifier == SELF:
        return "f_0 (fixed)" if cfg.fixed_verifier else "the current model f_t"
    return "the gold grader" if cfg.verifier == GOLD else f"`{cfg.verifier}` (fixed)"


def _pct(value: Any, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}"


def _pct_ci(row: dict[str, Any], key: str) -> str:
    """A signed % value with its t interval over prompts when the row has one: `+12.50 [+3.1, +20.0]`."""
    low, high = row.get(f"{key}/ci_low"), row.get(f"{key}/ci_high")
    ci = f" [{100 * low:+.1f}, {100 * high:+.1f}]" if low is not None and high is not None else ""
    return _pct(row.get(key), True) + ci


def _pass_ks(rows: Sequence[dict[str, Any]]) -> list[int]:
    return sorted({int(k.split("/", 1)[1]) for r in rows for k in r if k.startswith("pass@k/")})


def render_report(cfg: IterVerifyConfig, rows: Sequence[dict[str, Any]], png: Path | None) -> str:
    lines = [
        f"# iter_verify run `{cfg.run_name}`",
        "",
        f"Model f_0 `{cfg.model}`, task `{cfg.task}`, T = {cfg.iterations} update rounds, "
        f"N = {cfg.n_samples} "
        f"samples per prompt (temperature {cfg.sampling.temperature}, top-p {cfg.sampling.top_p}), "
        f"filter `{cfg.filter}` judged by {judge_text(cfg)}, "
        f"update `{cfg.update}`, seed {cfg.seed}.",
        "",
        "Row t measures f_t on the training prompts: J(f_t) = accuracy of its samples (gold reward, used "
        "for measurement only), J(f_t[w]) = accuracy of the kept samples, gap = J(f_t[w]) - J(f_t). "
        "The last three columns split J(f_t) - J(f_{t-1}) into gap(f_{t-1}) + update error "
        "(update error = J(f_t) - J(f_{t-1}[w])). All in %; the gap and relative gap carry their 95% "
        "t interval over prompts [low, high].",
        "",
        "## Per round",
        "",
        "| t | J(f_t) | J(f_t[w]) | gap | rel. gap | kept | kept correct | unparseable | D_t | update "
        "| J(f_t)-J(f_t-1) | gap(f_t-1) | update error |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        t = int(r["iteration"])
        if "train/skipped" not in r:
            update = "final (no update)"
        elif r["train/skipped"]:
            update = "skipped: empty D_t"
        else:
            update = f"{cfg.update}, {r.get('train/steps')} steps"
        lines.append(
            f"| {t} | {_pct(r['accuracy'])} | {_pct(r['filtered_accuracy'])} | {_pct_ci(r, 'gap')} | "
            f"{_pct_ci(r, 'relative_gap')} | {_pct(r['kept_fraction'])} | "
            f"{_pct(r.get('kept_correct_fraction'))} | "
            f"{_pct(r.get('unparseable'))} | {r.get('data/records')} | {update} | "
            f"{_pct(r.get('decomp/improvement'), True)} | {_pct(r.get('decomp/prev_gap'), True)} | "
            f"{_pct(r.get('decomp/update_error'), True)} |"
        )
    ks = _pass_ks(rows)
    if ks:
        lines += [
            "",
            "## pass@k per round (effective diversity)",
            "",
            "| t | " + " | ".join(f"k={k}" for k in ks) + " |",
            "|---:|" + "---:|" * len(ks),
        ]
        for r in rows:
            lines.append(f"| {r['iteration']} | " + " | ".join(_pct(r.get(f"pass@k/{k}")) for k in ks) + " |")
    if any("heldout/pass@1" in r for r in rows):
        lines += ["", "## Held-out test split (greedy pass@1, sampled coverage)", "",
                  "| t | pass@1 | coverage |", "|---:|---:|---:|"]
        for r in rows:
            cells = f"{_pct(r.get('heldout/pass@1'))} | {_pct(r.get('heldout/coverage'))}"
            lines.append(f"| {r['iteration']} | {cells} |")
    if png is not None:
        lines += ["", "## Plot", "", f"![iter_verify]({png.relative_to(cfg.run_dir).as_posix()})"]
    lines += ["", "Definitions and artifacts: docs/iter_verify.md.", ""]
    return "\n".join(lines)


def plot_rounds(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """One PNG: accuracy and J(f_t[w]) per round; gap and relative gap per round; pass@k per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts = [int(r["iteration"]) for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))

    def line(ax: Any, xs: Sequence[float], ys: Sequence[Any], **kw: Any) -> None:
        pts = [(x, y) for x, y in zip(xs, ys) if isinstance(y, (int, float))]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", **kw)

    line(axes[0], ts, [r["accuracy"] for r in rows], label="J(f_t)")
    line(axes[0], ts, [r["filtered_accuracy"] for r in rows], label="J(f_t[w]) (kept)")
    line(axes[0], ts, [r.get("heldout/pass@1") for r in rows], label="test pass@1 (greedy)", linestyle=":")
    axes[0].set_title("accuracy per round")
    for key, label in (("gap", "gap"), ("relative_gap", "relative gap")):
        line(axes[1], ts, [r[key] for r in rows], label=label)
        band = [(t, r[f"{key}/ci_low"], r[f"{key}/ci_high"])
                for t, r in zip(ts, rows) if f"{key}/ci_low" in r]
        if band:  # the 95% t interval over prompts
            color = axes[1].get_lines()[-1].get_color()
            axes[1].fill_between([b[0] for b in band], [b[1] for b in band], [b[2] for b in band],
                                 color=color, alpha=0.15, linewidth=0)
    line(
        axes[1],
        ts[1:],
        [r.get("decomp/update_error") for r in rows[1:]],
        label="update error (into f_t)",
        linestyle="--",
    )
    axes[1].axhline(0.0, color="grey", linewidth=0.8)
    axes[1].set_title("generation-verification gap per round")
    for ax in axes[:2]:
        ax.set_xticks(ts)
        ax.set_xticklabels([f"f{t}" for t in ts])
        ax.set_xlabel("round (model)")
    ks = _pass_ks(rows)
    for r in rows:
        line(axes[2], ks, [r.get(f"pass@k/{k}") for k in ks], label=f"f{r['iteration']}")
    if ks:
        axes[2].set_xscale("log", base=2)
        axes[2].set_xticks(ks, labels=[str(k) for k in ks])
        axes[2].minorticks_off()
    axes[2].set_xlabel("k")
    axes[2].set_title("pass@k per round")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
    return path
