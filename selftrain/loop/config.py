"""The loop's settings: one dataclass with nested sections, read by `selftrain.config.parse_cli`.

Top-level keys are the ones people change most (`model=`, `task=`, `iterations=`, `n_samples=`,
`out_dir=`); the rest sits in sections (`data.train_size=`, `eval.n_samples=`, `sft.lr=`...).
Every size that decides the run time is a key here, so a config file can scale a run from a
2-core CPU smoke test to paper A's 7B settings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..train.config import TrainConfig
from ..train.grpo import RLConfig
from ..train.lora import LoraConfig


@dataclass
class DataSection:
    """Which questions the loop trains and evaluates on."""

    task_options: dict[str, Any] = field(default_factory=dict)  # get_task(task, **task_options)
    path: str | None = None  # data file / folder / hub id for file-backed tasks (None for arith)
    train_split: str = "train"
    test_split: str = "test"
    train_size: int | None = None  # first N training questions (None = all)
    test_size: int | None = None  # first N test questions (None = all)
    shots: int = 0  # worked examples in every prompt (paper A: zero-shot; paper B: 4-shot)
    # chat: the tokenizer's chat template when it has one, else plain text; fewshot: plain text
    # "Question: / Answer:" blocks always (paper B prompts base models lm-eval style). docs/tasks.md
    prompt_format: str = "chat"

    def __post_init__(self) -> None:
        from ..tasks.common import PROMPT_FORMATS

        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(
                f"data.prompt_format={self.prompt_format!r}: must be one of {', '.join(PROMPT_FORMATS)}"
            )


@dataclass
class OODSection:
    """The out-of-distribution evaluation: arith `ood` for arith, MATH algebra 1-5 for GSM8K."""

    task: str | None = None  # None = the training task
    task_options: dict[str, Any] = field(default_factory=dict)
    split: str = "ood"
    path: str | None = None
    size: int | None = None
    low_level: int = 1  # group disparity = (acc(low) - acc(high)) / acc(low)
    high_level: int = 5
    enabled: bool = True


@dataclass
class SamplingSection:
    """On-policy sampling of the training questions (paper A, Table 1: temperature 0.75, top-p
    0.95, top-k 50; recipes/configs/paper_*.yaml set top_k: 50)."""

    temperature: float = 0.75
    top_p: float = 0.95
    top_k: int = 0  # keep the k most likely tokens before top-p (ties kept); 0 = off
    max_new_tokens: int = 512


@dataclass
class EvalSection:
    """Evaluation of every model M0..MT on the test split."""

    n_samples: int = 50  # samples per test question: coverage, pass@k, diversity
    temperature: float = 0.75
    top_p: float = 0.95
    top_k: int = 0  # as sampling.top_k, for the N sampled answers (greedy ignores it)
    max_new_tokens: int = 512  # greedy and sampled answers alike
    # N for M1's pass@N on IS(t). M1 is sampled once with max(is_ns) samples per test question and
    # pass@N on any IS(t) is the unbiased estimate from those samples.
    is_ns: list[int] = field(default_factory=lambda: [2, 4, 8, 16, 32, 64])
    semantic: bool = True  # Sentence-BERT diversity (all-MiniLM-L6-v2)
    equations: bool = True  # distinct equations


@dataclass
class SamplerSection:
    """Settings of `selftrain.sampler.Sampler` (memory and batch shape, not results)."""

    max_num_seqs: int = 64
    kv_cache_tokens: int = 32768
    dtype: str | None = None  # None = the sampler's default (float32 on CPU, bfloat16 on GPU)


@dataclass
class StatsSection:
    """How the report judges progress or regress (docs/metrics.md, "Intervals and verdicts")."""

    alpha: float = 0.05  # for the whole report: P(any false progressed / regressed) <= alpha
    power_effect: float = 0.05  # the change (5 points) the report says how many questions would detect
    # The primary family: these metrics of the headline comparison (M_T vs M1) share alpha / 2; every
    # other test of the report (secondary metrics, steps) shares the other half.
    primary_metrics: list[str] = field(default_factory=lambda: ["pass@1", "coverage", "ood/accuracy"])

    def __post_init__(self) -> None:
        from ..metrics.stats import check_stats
        from ..report.verdicts import check_primary

        check_stats(self.alpha, self.power_effect, self.primary_metrics, "config")
        check_primary(self.primary_metrics, "config")


# Which model a DPO / RPO step of the loop compares against (its reference pi_ref).
DPO_REFERENCES = ("previous", "sft", "base")


@dataclass
class DPOSection(TrainConfig):
    """The preference steps' training settings (dpo and rpo step kinds), and their reference model.

    reference: previous = M_{t-1}, the model the step starts from (the default: paper A's
    Algorithm 1 refines M_{t-1} into M_t, and its training code, LLaMA Factory, takes the model it
    starts from as the DPO reference when none is named; the pi_SFT of its eq. 7, Appendix A.2, is
    DPO's own notation for that starting policy); sft = M1, the gold-SFT model (pi_SFT read
    literally as "the SFT model", fixed over iterations); base = M0.
    """

    reference: str = "previous"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.reference not in DPO_REFERENCES:
            raise ValueError(f"dpo.reference={self.reference!r}: must be one of {', '.join(DPO_REFERENCES)}")


@dataclass
class InterventionSection:
    """Changes to Algorithm 1 that the self-training literature uses against collapse; all off by
    default (paper A's loop). docs/loop.md, "Loop interventions", gives each one's source.

    restart_from_base: train every M_t (t >= 2) from M0 instead of M_{t-1}, on D_t sampled from
        M_{t-1} (STaR, Zelikman et al. 2022; ReST-EM, Singh et al. 2023).
    accumulate_data: train on D_1 ∪ ... ∪ D_t (those of the same record format: SFT records with
        the gold D_1, or DPO / RPO pairs) instead of D_t alone (Gerstgrasser et al. 2024, "Is model
        collapse inevitable?": accumulating data, rather than replacing it, avoids collapse).
    max_samples_per_question: m; before D_t is built each question keeps at most m correct and m
        incorrect samples, distinct reasoning (equations) and distinct wrong final answers first
        (RFT, Yuan et al. 2023, keeps distinct reasoning paths; paper A names the loss of diversity
        as its open problem). None = every sample.
    """

    restart_from_base: bool = False
    accumulate_data: bool = False
    max_samples_per_question: int | None = None

    def __post_init__(self) -> None:
        m = self.max_samples_per_question
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise ValueError(f"interventions.max_samples_per_question={m!r}: must be an integer >= 1 or null")


@dataclass
class WandbSection:
    mode: str = "offline"  # offline | online | disabled (WANDB_MODE in the environment wins)
    project: str = "selftrain"


@dataclass
class LoopConfig:
    """One iterative self-improvement run (paper A's Algorithm 1)."""

    paradigm: str = "iter_sft_dpo"
    name: str = ""  # run name; default: <paradigm>-<task>
    out_dir: str = ""  # default: runs/<name>
    model: str = "smollm2-135m"  # M0: a built-in name, an HF folder or a hub id
    task: str = "arith"
    iterations: int = 3  # T: M1 (gold SFT) then T - 1 self-improvement steps
    n_samples: int = 50  # N samples per training question at every t >= 2
    max_pairs_per_question: int | None = 8  # cap on DPO pairs per question (None = all)
    seed: int = 0
    # K independent reruns of the whole loop (replicate r >= 1 in <run>/replicate_<r>/ with its own
    # seed); the report pools them, so its verdicts include the training-seed spread.
    replicates: int = 1
    data: DataSection = field(default_factory=DataSection)
    ood: OODSection = field(default_factory=OODSection)
    sampling: SamplingSection = field(default_factory=SamplingSection)
    eval: EvalSection = field(default_factory=EvalSection)
    sampler: SamplerSection = field(default_factory=SamplerSection)
    sft: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-5, epochs=3, global_batch_size=128))
    dpo: DPOSection = field(
        default_factory=lambda: DPOSection(lr=2e-7, epochs=1, global_batch_size=32, beta=0.3)
    )
    # online RL steps (step kinds grpo / rloo; docs/rl.md): the loss, the sampling, the optimizer
    rl: RLConfig = field(default_factory=RLConfig)
    interventions: InterventionSection = field(default_factory=InterventionSection)
    wandb: WandbSection = field(default_factory=WandbSection)
    stats: StatsSection = field(default_factory=StatsSection)
    # LoRA / QLoRA for every training step (None = full fine-tuning). M_t is then an adapter whose
    # base is M_{t-1} (docs/training.md, "LoRA and QLoRA": how iterations chain adapters).
    lora: LoraConfig | None = None
    # Modules imported before anything else: they register tasks, step kinds or paradigms
    # (docs/extending.md). Dotted module names importable from the working directory / sys.path.
    plugins: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        from .paradigms import paradigm_names

        import_plugins(self.plugins)

        if self.paradigm not in paradigm_names():
            raise ValueError(
                f"paradigm={self.paradigm!r}: unknown; registered: {', '.join(paradigm_names())}"
            )
        check_positive(self, "iterations", "n_samples", "replicates")
        if self.max_pairs_per_question is not None and self.max_pairs_per_question < 1:
            raise ValueError(
                f"max_pairs_per_question={self.max_pairs_per_question}: must be >= 1 (or null for all)"
            )
        if not isinstance(self.dpo, DPOSection):  # a plain TrainConfig given in code
            fields = dataclasses.fields(TrainConfig)
            self.dpo = DPOSection(**{f.name: getattr(self.dpo, f.name) for f in fields})
        check_lora_sections(self)
        if self.lora is not None and self.interventions.restart_from_base:
            raise ValueError(
                "interventions.restart_from_base with lora: LoRA chains each M_t as an adapter on M_{t-1}"
            )
        check_online_interventions(self)
        if self.lora is not None and self.dpo.reference != "previous":
            raise ValueError(
                f"dpo.reference={self.dpo.reference!r} with lora: a LoRA step's reference is the model it "
                "trains with its adapter disabled, i.e. M_{t-1} (dpo.reference: previous)"
            )
        check_eval(self.eval)
        check_sampling(
            self.sampling.temperature, self.sampling.top_p, self.sampling.max_new_tokens, "sampling",
            self.sampling.top_k,
        )

    @property
    def run_name(self) -> str:
        # a LoRA run gets a folder of its own by default: `make run` then `... lora.r=8` must not
        # collide on one folder (its config check would refuse the second)
        return self.name or f"{self.paradigm}-{self.task}" + ("-lora" if self.lora is not None else "")

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir or Path("runs") / self.run_name)


def import_plugins(modules: list[str]) -> None:
    """Import each plugin module once (importing runs its register_* calls)."""
    import importlib
    import sys

    if "" not in sys.path and "." not in sys.path:
        sys.path.append("")  # `plugins=[my_paradigm]` finds my_paradigm.py in the working directory
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ValueError(f"plugins: cannot import {name!r} ({e})") from e


def check_online_interventions(cfg: Any) -> None:
    """accumulate_data and max_samples_per_question shape D_t, which an online step kind (grpo,
    rloo) does not build: refused when no step of the run's schedule after M1 is offline."""
    from .paradigms import schedule
    from .steps import get_step_kind

    kinds = schedule(cfg.paradigm, cfg.iterations)[1:]
    shaping = [name for name, on in (("accumulate_data", cfg.interventions.accumulate_data),
               ("max_samples_per_question", cfg.interventions.max_samples_per_question is not None)) if on]
    if shaping and kinds and all(get_step_kind(k).online for k in kinds):
        raise ValueError(
            f"interventions.{shaping[0]}: shapes the data set D_t of offline steps; paradigm "
            f"{cfg.paradigm!r} runs online RL blocks only ({', '.join(sorted(set(kinds)))}), which build none"
        )


def check_lora_sections(cfg: Any) -> None:
    """LoRA is one top-level `lora:` section of a loop config, used by every training step."""
    for section in ("sft", "dpo"):
        if getattr(cfg, section).lora is not None:
            raise ValueError(
                f"{section}.lora: set LoRA once, in the top-level lora: section (used by every step)"
            )


def check_positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: must be an integer >= 1")


def check_sampling(temperature: float, top_p: float, max_new_tokens: int, where: str,
                   top_k: int = 0) -> None:
    if temperature < 0:
        raise ValueError(f"{where}.temperature={temperature}: must be >= 0")
    if not 0 < top_p <= 1:
        raise ValueError(f"{where}.top_p={top_p}: must be in (0, 1]")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"{where}.top_k={top_k!r}: must be an integer >= 0 (0 = off)")
    if max_new_tokens < 1:
        raise ValueError(f"{where}.max_new_tokens={max_new_tokens}: must be >= 1")


def check_eval(section: EvalSection) -> None:
    check_positive(section, "n_samples")
    check_sampling(section.temperature, section.top_p, section.max_new_tokens, "eval", section.top_k)
    if section.temperature == 0:
        raise ValueError("eval.temperature=0: the N-sample metrics need sampling (paper A: 0.75)")
    bad = [n for n in section.is_ns if n < 1]
    if bad:
        raise ValueError(f"eval.is_ns={section.is_ns}: every N must be >= 1")


# Keys that may differ between the first launch of a run and a resumed one: they do not change any
# artifact that already exists (more iterations extend the run; logging and batching are cosmetic).
# stats: the report only; replicates: more replicates add folders beside the existing ones
RESUMABLE_CHANGES = ("iterations", "out_dir", "wandb", "sampler", "stats", "replicates")


def config_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts (ignoring RESUMABLE_CHANGES)."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        dotted = f"{prefix}{key}"
        if not prefix and key in RESUMABLE_CHANGES:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            if prefix == "" and key in ("sft", "dpo"):
                # Trainer settings that do not change the weights may differ (save_every, micro batch...).
                kind = DPOSection if key == "dpo" else TrainConfig
                a = _trajectory(a, kind)
                b = _trajectory(b, kind)
            diffs.extend(config_differences(a, b, f"{dotted}."))
        elif a != b:
            diffs.append(dotted)
    return diffs


def _trajectory(section: dict[str, Any], kind: type[TrainConfig]) -> dict[str, Any]:
    """The weight-changing settings of a saved section (missing keys take `kind`'s defaults, so a
    run saved before a key existed still resumes under that key's default)."""
    keys = kind(**{k: v for k, v in section.items() if k in {f.name for f in dataclasses.fields(kind)}})
    return keys.trajectory_key()
