"""What the recipes run: set-up (parse the config), run (the engine), report (where it went).

`recipes/iter_sft.py`, `iter_dpo.py` and `iter_sft_dpo.py` call `run_loop_recipe(<paradigm>)`;
`recipes/evaluate.py` calls `run_evaluate_recipe()`, which evaluates any list of checkpoints with
the same evaluation as the loop (stages under <out_dir>/model_<i>/eval, resumable), IS(t) measured
against the checkpoint named by `is_reference`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import dist
from ..config import ConfigError, parse_cli, to_dict
from .config import (
    DataSection,
    EvalSection,
    OODSection,
    SamplerSection,
    StatsSection,
    WandbSection,
    check_eval,
    import_plugins,
)
from .run_folder import claim_run_folder, exit_cleanly, release_run_folder


def _parse(cls: type, argv: list[str]) -> Any:
    try:
        return parse_cli(cls, argv)
    except (ConfigError, ValueError) as e:
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def run_loop_recipe(paradigm: str, argv: list[str] | None = None) -> dict[str, Any]:
    """`config=FILE key=value ...` -> run (or resume) the loop with `paradigm`; returns M_T's metrics."""
    from .config import LoopConfig
    from .engine import run_loop

    argv = sys.argv[1:] if argv is None else argv
    # The recipe names the paradigm; a `paradigm=` word on the command line still wins.
    cfg = _parse(LoopConfig, [f"paradigm={paradigm}", *argv])
    final = exit_cleanly(lambda: run_loop(cfg))
    if dist.is_main():
        print(f"report: {cfg.run_dir / 'report.md'}")
    return final


@dataclass
class EvaluateConfig:
    """Evaluate a list of checkpoints (HF folders, hub ids or built-in names) on one task."""

    checkpoints: list[str] = field(default_factory=list)
    # Index in `checkpoints` of the model IS(t) is measured against (paper A: M1); null = no IS metrics.
    is_reference: int | None = None
    baseline: int = 0  # index of the checkpoint the report's progressed/regressed verdicts compare with
    name: str = "evaluate"
    out_dir: str = ""  # default runs/<name>
    task: str = "arith"
    seed: int = 0
    data: DataSection = field(default_factory=DataSection)
    ood: OODSection = field(default_factory=OODSection)
    eval: EvalSection = field(default_factory=EvalSection)
    sampler: SamplerSection = field(default_factory=SamplerSection)
    wandb: WandbSection = field(default_factory=WandbSection)
    stats: StatsSection = field(default_factory=StatsSection)
    plugins: list[str] = field(default_factory=list)  # modules registering tasks (docs/extending.md)

    def __post_init__(self) -> None:
        import_plugins(self.plugins)
        if not self.checkpoints:
            raise ValueError("checkpoints=[...] is required: the models to evaluate")
        for key in ("is_reference", "baseline"):
            value = getattr(self, key)
            if value is not None and not 0 <= value < len(self.checkpoints):
                raise ValueError(f"{key}={value}: not an index into the {len(self.checkpoints)} checkpoints")
        check_eval(self.eval)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir or Path("runs") / self.name)


def evaluate_checkpoints(cfg: EvaluateConfig, show_progress: bool = True) -> list[dict[str, Any]]:
    """Evaluate every checkpoint (collective); log one row per checkpoint; write report.md."""
    from ..models import load_tokenizer
    from ..report import RunLogger, write_run_report
    from .artifacts import derive_seed, read_json, say
    from .engine import (
        EVAL_STAGE_SEED,
        SamplerCache,
        check_or_write_config,
        load_eval_data,
        load_task,
        write_eval_stage,
    )
    from .evaluation import evaluate_model
    from .stages import run_stage

    dist.init_distributed()
    root = cfg.run_dir
    claim_run_folder(root)  # one live run per folder; SIGINT / SIGTERM stop it cleanly
    # model_<i>/eval of an earlier launch is reused only if it evaluated the same checkpoint the same way.
    check_or_write_config(root, to_dict(cfg))
    tokenizer = load_tokenizer(cfg.checkpoints[0])
    task = load_task(cfg.task, cfg.data.task_options)
    data = load_eval_data(cfg.task, task, cfg.data, cfg.ood, tokenizer)
    samplers = SamplerCache(tokenizer, cfg.sampler)
    encoder = None
    if cfg.eval.semantic and dist.is_main():
        from ..metrics import load_sentence_encoder

        encoder = load_sentence_encoder()
    seed = derive_seed(cfg.seed, EVAL_STAGE_SEED, "eval")
    ref = cfg.is_reference
    # The reference goes first: every other model's IS metrics need its samples.
    order = ([ref] if ref is not None else []) + [i for i in range(len(cfg.checkpoints)) if i != ref]
    rows: dict[int, dict[str, Any]] = {}
    for i in order:
        folder = root / f"model_{i}"

        def compute(tmp: Path, i: int = i) -> None:
            extra = max(cfg.eval.is_ns) if i == ref and cfg.eval.is_ns else 0
            outcome = evaluate_model(
                samplers.get(cfg.checkpoints[i]),
                data,
                cfg.eval,
                seed=seed,
                extra_samples=extra,
                encoder=encoder,
                show_progress=show_progress,
            )
            is_other = ref is not None and i != ref
            reference = root / f"model_{ref}" / "eval" / "details.json" if is_other else None
            write_eval_stage(tmp, outcome, reference, cfg.eval.is_ns)

        run_stage(folder, "eval", compute)
        metrics = read_json(folder / "eval" / "metrics.json")
        rows[i] = {"iteration": i, "step_kind": "checkpoint", "model": cfg.checkpoints[i], **metrics}
        say(
            f"[model {i}] {cfg.checkpoints[i]}: pass@1 {metrics['pass@1']:.3f}, "
            f"coverage {metrics['coverage']:.3f}"
        )
    samplers.release()
    if dist.is_main():
        # Rewritten whole: an evaluate run has no partial rows worth keeping.
        (root / "metrics.jsonl").unlink(missing_ok=True)
        logger = RunLogger(
            root, project=cfg.wandb.project, name=cfg.name, config=to_dict(cfg), mode=cfg.wandb.mode
        )
        from ..report.verdicts import interval_row

        for i in range(len(cfg.checkpoints)):  # with each metric's interval (`<key>/ci_low`, `/ci_high`)
            logger.log({**rows[i], **interval_row(root, to_dict(cfg), i, cfg.is_reference)}, step=i)
        report = write_run_report(root)
        for png in sorted((root / "plots").glob("*.png")):
            logger.log_image(f"plots/{png.stem}", png, step=len(cfg.checkpoints) - 1)
        logger.finish()
        print(f"report: {report}")
    dist.barrier()
    release_run_folder(root)
    return [rows[i] for i in range(len(cfg.checkpoints))]


def run_evaluate_recipe(argv: list[str] | None = None) -> list[dict[str, Any]]:
    argv = sys.argv[1:] if argv is None else argv
    cfg = _parse(EvaluateConfig, argv)
    return exit_cleanly(lambda: evaluate_checkpoints(cfg))
