"""The iterative loop (paper A, Algorithm 1) as a sequence of resumable stages.

    iter_0/eval                         evaluate M0
    iter_1/build -> train -> eval       M1 = SFT(M0) on the gold training answers
    iter_t/sample -> build -> train -> eval   for t = 2..T, with the paradigm's step kind
    iter_t/train -> eval                for an online step kind (grpo, rloo): one RL block

Every stage publishes its folder atomically with a done-marker (`stages.run_stage`); every later
stage reads its inputs back from those folders, so a fresh and a resumed run take the same path and
reach the same numbers. Seeds come from (seed, t, stage). Rank 0 writes all files; sampling,
grading and training are collective.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

from .. import dist
from ..config import to_dict
from ..report.logger import RunLogger, write_json_atomic, write_text_atomic
from .artifacts import JsonlTrainLogger, derive_seed, read_json, read_jsonl, say, write_jsonl_atomic
from .config import DataSection, LoopConfig, OODSection, config_differences
from .evaluation import EvalData, evaluate_model, grade, improvement_metrics
from .paradigms import GOLD_SFT, schedule, step_kind
from .run_folder import claim_run_folder, release_run_folder
from .stages import run_stage, stage_done
from .steps import BuildOptions, SampledQuestion, get_step_kind, gold_sft_set, is_correct, select_diverse

EVAL_STAGE_SEED = 0  # every model is evaluated with the same seeds: differences come from the models


class ConfigMismatchError(RuntimeError):
    """The run folder holds a run made with other settings."""


def load_task(name: str, options: dict[str, Any]) -> Any:
    from .. import tasks  # looked up at call time so tests can register tasks

    return tasks.get_task(name, **options)


def stop_strings_for(task: Any, tokenizer: Any, prompt_format: str = "chat") -> list[str] | None:
    """Stop strings for sampling answers to `task` (None: stop at EOS only)."""
    from ..tasks.common import uses_chat_template

    # With a chat template the answer ends at EOS; a plain-text prompt needs the task's stop strings.
    if uses_chat_template(tokenizer, prompt_format):
        return None
    return list(getattr(task, "stop", ()) or ()) or None


def sample_and_grade(
    sampler: Any, task: Any, examples: list[Any], prompts: list[str], sampling: Any, n: int,
    stop: list[str] | None, seed: int,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Sample n answers per prompt, grade them with the task: (samples.jsonl rows, stats).

    Collective (the sampler and the grading shard across ranks); every rank gets the same result.
    """
    outs = sampler.generate(
        prompts,
        n=n,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
        max_new_tokens=sampling.max_new_tokens,
        stop=stop,
        seed=seed,
    )
    texts = [[c.text for c in row] for row in outs]
    rewards = grade(task, examples, texts)
    rows = [
        SampledQuestion(str(ex.id), p, tx, rw, [c.finish_reason for c in row]).to_dict()
        for ex, p, tx, rw, row in zip(examples, prompts, texts, rewards, outs)
    ]
    flat = [r for row in rewards for r in row]
    stats = {
        "questions": len(rows),
        "samples": len(flat),
        "correct_fraction": sum(map(is_correct, flat)) / max(1, len(flat)),
        "questions_with_correct": sum(any(map(is_correct, row)) for row in rewards),
        "questions_all_correct": sum(all(map(is_correct, row)) for row in rewards),
        "truncated_fraction": sum(c.finish_reason == "length" for row in outs for c in row)
        / max(1, len(flat)),
    }
    return rows, stats


def write_eval_stage(
    tmp: Path, outcome: Any, reference_details: Path | None, is_ns: list[int]
) -> dict[str, Any]:
    """Add IS(t) metrics against the reference model's eval details (M1), write the eval artifacts
    (rank 0) and return the metrics."""
    metrics = dict(outcome.metrics)
    if reference_details is not None and is_ns:
        m1 = read_json(reference_details)
        metrics.update(
            improvement_metrics(
                outcome.details["ids"],
                outcome.details["greedy_rewards"],
                m1["greedy_rewards"],
                m1["extra_correct"],
                m1["extra_n"],
                is_ns,
            )
        )
    if dist.is_main():
        write_json_atomic(tmp / "metrics.json", metrics)
        write_json_atomic(tmp / "details.json", outcome.details)
        write_jsonl_atomic(tmp / "greedy.jsonl", outcome.greedy_rows)
        write_jsonl_atomic(tmp / "samples.jsonl", outcome.sample_rows)
    return metrics


class SamplerCache:
    """Holds one sampler (the model being sampled now); building another frees the previous."""

    def __init__(self, tokenizer: Any, settings: Any) -> None:
        self.tokenizer = tokenizer
        self.settings = settings
        self.model: str | None = None
        self.sampler: Any = None

    def get(self, model: str) -> Any:
        if self.model != model:
            self.release()
            from ..sampler import Sampler

            kwargs: dict[str, Any] = {
                "max_num_seqs": self.settings.max_num_seqs,
                "kv_cache_tokens": self.settings.kv_cache_tokens,
            }
            if self.settings.dtype:
                kwargs["dtype"] = self.settings.dtype
            self.sampler = Sampler(model, tokenizer=self.tokenizer, **kwargs)
            self.model = model
        return self.sampler

    def release(self) -> None:
        """Free the sampler's weights and KV cache (training needs the memory)."""
        if self.sampler is not None:
            self.sampler = None
            self.model = None
            gc.collect()
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def check_or_write_config(root: Path, new: dict[str, Any]) -> None:
    """Refuse to reuse a run folder made with settings that change its artifacts; else save `new`."""
    error = None
    if dist.is_main():
        path = root / "config.json"
        if path.is_file():
            diffs = config_differences(read_json(path), new)
            if diffs:
                error = (
                    f"{root} holds a run made with other settings ({', '.join(diffs)} differ from "
                    f"{path}); use another out_dir= or remove that folder"
                )
        if error is None:
            write_json_atomic(path, new)
    error = dist.broadcast_object(error)
    if error:
        raise ConfigMismatchError(error)


def wandb_run_id(root: Path) -> str | None:
    """One W&B run per experiment: the id is stored beside the run and reused on resume. Collective."""
    run_id = None
    if dist.is_main():
        path = root / "wandb_id.txt"
        if path.is_file():
            run_id = path.read_text().strip()
        else:
            run_id = uuid.uuid4().hex[:12]
            write_text_atomic(path, run_id + "\n")
    return dist.broadcast_object(run_id)


def run_logged_stage(root: Path, name: str, compute: Any, describe: Any, label: str,
                     outputs: Sequence[str] = ()) -> Path:
    """Run one stage under `root` (or skip it when finished) and print `[label] name: summary (time)`."""
    done = stage_done(root, name)
    start = time.perf_counter()
    folder = run_stage(root, name, compute, outputs)
    took = "done earlier, skipped" if done else f"{time.perf_counter() - start:.1f}s"
    text = describe(folder) if dist.is_main() else ""
    say(f"[{label}] {name}: {text} ({took})")
    return folder


def skipped_train_result(source: int, reason: str) -> dict[str, Any]:
    """A train stage's result.json when there was nothing to train on: the model stays `source`."""
    return {"source": source, "skipped": True, "reason": reason, "steps": 0, "metrics": {}}


def train_model(
    tcfg: Any, base: str, data_path: Path, out_dir: Path, step: Any, source: int, name: str,
    logger: JsonlTrainLogger, reference: str | None = None,
) -> dict[str, Any]:
    """Train `name` from `base` on data_path into out_dir/model with step kind `step`; returns the
    train stage's result.json record (the model is now `source`). A step that needs a reference
    model gets `reference` (default: `base`, the model it starts from). Collective."""
    from ..train import train
    from ..train.config import train_config_of

    try:
        res = train(
            train_config_of(tcfg),
            model=base,
            data=str(data_path),
            out_dir=str(out_dir),
            loss=step.loss,
            ref_model=(reference or base) if step.needs_reference else None,
            logger=logger,
        )
    finally:
        logger.finish()
    if Path(res.checkpoint).resolve() != (out_dir / "model").resolve():
        raise RuntimeError(f"the trainer saved {name} at {res.checkpoint}, expected {out_dir / 'model'}")
    # Wall-clock figures differ between a resumed and an uninterrupted run: not kept.
    kept = {k: v for k, v in res.metrics.items() if "time" not in k and "per_s" not in k}
    return {"source": source, "skipped": False, "steps": res.steps, "metrics": kept, "loss": step.loss}


def describe_train_result(folder: Path, name: str, previous: str) -> str:
    """The one-line summary of a train stage: steps and last loss, or why it kept `previous`."""
    res = read_json(folder / "result.json")
    if res["skipped"]:
        return f"skipped ({res['reason']}); {name} = {previous}"
    loss = res["metrics"].get("loss")
    tail = f", last loss {loss:.4f}" if loss is not None else ""
    return f"{res['loss']}: {res['steps']} steps{tail}"


def load_eval_data(task_name: str, task: Any, data: DataSection, ood: OODSection, tokenizer: Any) -> EvalData:
    """The test questions and (when configured) the OOD questions, with their prompts."""
    examples = task.load(data.test_split, path=data.path, limit=data.test_size)
    if not examples:
        raise ValueError(f"task {task_name!r} split {data.test_split!r} has no questions")
    out = EvalData(
        task=task,
        examples=examples,
        prompts=[
            task.prompt(ex, tokenizer, shots=data.shots, prompt_format=data.prompt_format) for ex in examples
        ],
        stop=stop_strings_for(task, tokenizer, data.prompt_format),
        ood_levels=(ood.low_level, ood.high_level),
    )
    if not ood.enabled:
        return out
    same_task = ood.task is None or ood.task == task_name
    if same_task and not ood.task_options:
        ood_task = task  # e.g. arith: its own `ood` split (levels 1-5)
    else:
        ood_task = load_task(ood.task or task_name, ood.task_options)
    if ood.split not in getattr(ood_task, "splits", (ood.split,)):
        say(f"OOD evaluation off: task {ood.task or task_name!r} has no split {ood.split!r}")
        return out
    out.ood_task = ood_task
    path = ood.path if ood.path is not None or not same_task else data.path
    out.ood_examples = ood_task.load(ood.split, path=path, limit=ood.size)
    out.ood_prompts = [
        ood_task.prompt(ex, tokenizer, shots=data.shots, prompt_format=data.prompt_format)
        for ex in out.ood_examples
    ]
    out.ood_stop = stop_strings_for(ood_task, tokenizer, data.prompt_format)
    return out


class LoopEngine:
    """Runs (or resumes) one experiment described by a LoopConfig."""

    def __init__(self, cfg: LoopConfig, show_progress: bool = True) -> None:
        self.cfg = cfg
        self.root = cfg.run_dir
        self.show_progress = show_progress
        self._encoder: Any = None
        self.logger: Any = None

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        from ..models import load_tokenizer

        dist.init_distributed()
        cfg = self.cfg
        schedule(cfg.paradigm, cfg.iterations)  # an unknown step kind fails now, not after M1 trained
        claim_run_folder(self.root)  # one live run per folder; SIGINT / SIGTERM stop it cleanly
        self._check_or_write_config()
        self.tokenizer = load_tokenizer(cfg.model)
        self.task = load_task(cfg.task, cfg.data.task_options)
        self.train_examples = self.task.load(
            cfg.data.train_split, path=cfg.data.path, limit=cfg.data.train_size
        )
        if not self.train_examples:
            raise ValueError(f"task {cfg.task!r} split {cfg.data.train_split!r} has no questions")
        self.train_prompts = [
            self.task.prompt(ex, self.tokenizer, shots=cfg.data.shots, prompt_format=cfg.data.prompt_format)
            for ex in self.train_examples
        ]
        self.train_stop = stop_strings_for(self.task, self.tokenizer, cfg.data.prompt_format)
        if any(self._is_online(step_kind(cfg.paradigm, t)) for t in range(1, cfg.iterations + 1)):
            from ..train.rewards import make_reward

            make_reward(cfg.rl.reward, self.task, cfg.rl.reward_options)  # a bad reward fails now, not at M_t
        self.eval_data = load_eval_data(cfg.task, self.task, cfg.data, cfg.ood, self.tokenizer)
        self.samplers = SamplerCache(self.tokenizer, cfg.sampler)
        self.logger = RunLogger(
            self.root,
            project=cfg.wandb.project,
            name=cfg.run_name,
            config=to_dict(cfg),
            mode=cfg.wandb.mode,
            resume_id=self._wandb_id(),
        )
        say(
            f"run {cfg.run_name}: {cfg.paradigm}, T={cfg.iterations}, model {cfg.model}, task {cfg.task} "
            f"({len(self.train_examples)} train / {len(self.eval_data.examples)} test / "
            f"{len(self.eval_data.ood_examples)} OOD questions), {dist.world_size()} process(es) "
            f"-> {self.root}"
        )

    def _check_or_write_config(self) -> None:
        check_or_write_config(self.root, to_dict(self.cfg))

    def _wandb_id(self) -> str | None:
        return wandb_run_id(self.root)

    def encoder(self) -> Any:
        if self._encoder is None and self.cfg.eval.semantic and dist.is_main():
            from ..metrics import load_sentence_encoder

            self._encoder = load_sentence_encoder()
        return self._encoder

    # ------------------------------------------------------------------ stages
    def iter_dir(self, t: int) -> Path:
        return self.root / f"iter_{t}"

    def _stage(self, t: int, name: str, compute: Any, describe: Any, outputs: tuple[str, ...] = ()) -> Path:
        return run_logged_stage(self.iter_dir(t), name, compute, describe, f"iter {t}", outputs)

    def _source_of(self, t: int) -> int:
        """The iteration whose trained checkpoint M_t is (t itself, or earlier after empty D_t's)."""
        if t == 0:
            return 0
        return int(read_json(self.iter_dir(t) / "train" / "result.json")["source"])

    def _model_of(self, t: int) -> str:
        """M_t: M0 is the config's model; later ones live in iter_<s>/trainer/model (kept relative to
        the run folder in result.json, so a run folder can be moved between a kill and a resume)."""
        source = self._source_of(t)
        return self.cfg.model if source == 0 else str(self.iter_dir(source) / "trainer" / "model")

    def _accumulated(self, t: int, kind: str) -> list[dict[str, Any]]:
        """D_1 ∪ ... ∪ D_{t-1} of the same record format as `kind`'s: the latest earlier build of
        that format (it already holds every one before it, accumulation being on for the run)."""
        def section(k: str) -> str:
            return "sft" if k == GOLD_SFT else get_step_kind(k).train_section

        for s in range(t - 1, 0, -1):
            folder = self.iter_dir(s) / "build"
            if section(read_json(folder / "stats.json")["kind"]) == section(kind):
                return read_jsonl(folder / "train.jsonl")
        return []

    def _reference_model(self, t: int) -> str:
        """The reference of a preference step at iteration t >= 2 (`dpo.reference`)."""
        which = self.cfg.dpo.reference
        return self._model_of({"previous": t - 1, "sft": 1, "base": 0}[which])

    def sample_stage(self, t: int) -> Path:
        """Sample N answers per training question from M_{t-1} and grade them."""
        cfg = self.cfg

        def compute(tmp: Path) -> None:
            rows, stats = sample_and_grade(
                self.samplers.get(self._model_of(t - 1)),
                self.task,
                self.train_examples,
                self.train_prompts,
                cfg.sampling,
                cfg.n_samples,
                self.train_stop,
                derive_seed(cfg.seed, t, "sample"),
            )
            if dist.is_main():
                write_jsonl_atomic(tmp / "samples.jsonl", rows)
                write_json_atomic(tmp / "stats.json", stats)

        def describe(folder: Path) -> str:
            st = read_json(folder / "stats.json")
            return (
                f"{st['questions']} questions x {cfg.n_samples} samples, "
                f"{st['correct_fraction']:.1%} correct, "
                f"{st['questions_with_correct']} questions with a correct one"
            )

        return self._stage(t, "sample", compute, describe)

    def build_stage(self, t: int, kind: str) -> Path:
        """Build D_t: the gold set (t = 1) or the step kind's records from the graded samples."""
        cfg = self.cfg

        def compute(tmp: Path) -> None:
            if not dist.is_main():
                return
            if kind == GOLD_SFT:
                records = gold_sft_set(self.task, self.train_examples, self.train_prompts)
                questions_used = len(records)
            else:
                rows = read_jsonl(self.iter_dir(t) / "sample" / "samples.jsonl")
                questions = [
                    SampledQuestion.from_dict(r, f"samples.jsonl row {i}") for i, r in enumerate(rows, 1)
                ]
                options = BuildOptions(
                    seed=derive_seed(cfg.seed, t, "build"), max_pairs_per_question=cfg.max_pairs_per_question
                )
                m = cfg.interventions.max_samples_per_question
                if m is not None:
                    questions = select_diverse(questions, m, self.task.extract)
                records = get_step_kind(kind).build(questions, options)
                if cfg.interventions.accumulate_data:
                    records = self._accumulated(t, kind) + records
                    records = list({json.dumps(r, sort_keys=True): r for r in records}.values())
                used = {r["prompt"] for r in records}
                questions_used = sum(q.prompt in used for q in questions)
            write_jsonl_atomic(tmp / "train.jsonl", records)
            write_json_atomic(
                tmp / "stats.json",
                {
                    "kind": kind,
                    "records": len(records),
                    "questions_used": questions_used,
                    "empty": not records,
                },
            )

        def describe(folder: Path) -> str:
            st = read_json(folder / "stats.json")
            if st["empty"]:
                return f"{kind}: D_{t} is EMPTY (no usable sample), M_{t} will be M_{t - 1}"
            unit = "records" if kind in (GOLD_SFT, "sft") else "pairs"
            return f"{kind}: {st['records']} {unit} from {st['questions_used']} questions"

        return self._stage(t, "build", compute, describe)

    def train_stage(self, t: int, kind: str) -> Path:
        """M_t = F_t(M_{t-1} | D_t); an empty D_t keeps M_{t-1}. The trainer resumes by itself."""
        cfg = self.cfg
        restart = cfg.interventions.restart_from_base and kind != GOLD_SFT
        base = self._model_of(0 if restart else t - 1)
        data_path = self.iter_dir(t) / "build" / "train.jsonl"

        def compute(tmp: Path) -> None:
            stats = read_json(self.iter_dir(t) / "build" / "stats.json")
            if stats["empty"]:
                result = skipped_train_result(self._source_of(t - 1), "empty D_t")
            else:
                step = get_step_kind("sft" if kind == GOLD_SFT else kind)
                section = cfg.sft if step.train_section == "sft" else cfg.dpo
                tcfg = dataclasses.replace(
                    section,
                    **{**step.train_overrides, "seed": derive_seed(cfg.seed, t, "train"), "lora": cfg.lora},
                )
                self.samplers.release()
                out_dir = self.iter_dir(t) / "trainer"
                steps = tcfg.epochs * -(-stats["records"] // tcfg.global_batch_size)
                log = JsonlTrainLogger(
                    out_dir / "train_log.jsonl",
                    total_steps=min(steps, tcfg.max_steps) if tcfg.max_steps else steps,
                    desc=f"train M{t} ({step.loss})",
                    show_progress=self.show_progress,
                )
                result = train_model(tcfg, base, data_path, out_dir, step, t, f"M_{t}", log,
                                     reference=self._reference_model(t) if step.needs_reference else None)
            if dist.is_main():
                write_json_atomic(tmp / "result.json", result)

        def describe(folder: Path) -> str:
            return describe_train_result(folder, f"M_{t}", f"M_{t - 1}")

        # the checkpoint lives beside the stage (iter_t/trainer, the trainer's own resumable folder)
        return self._stage(t, "train", compute, describe, outputs=("trainer",))

    @staticmethod
    def _is_online(kind: str) -> bool:
        return kind != GOLD_SFT and get_step_kind(kind).online

    def _rl_steps(self, t: int) -> int:
        """Online steps of iteration t's block (the W&B `rl/step` axis runs on across blocks)."""
        overrides = get_step_kind(step_kind(self.cfg.paradigm, t)).train_overrides
        return int(overrides.get("steps", self.cfg.rl.steps))

    def rl_stage(self, t: int, kind: str) -> Path:
        """M_t = a block of online RL steps from M_{t-1} on the training questions, graded by the
        task (rl_block samples from the current policy in process); per-step rows (reward, KL,
        clip fraction, ...) in iter_t/trainer/train_log.jsonl."""
        from ..train.grpo import rl_block
        from ..train.rewards import make_reward

        cfg = self.cfg
        base = self._model_of(0 if cfg.interventions.restart_from_base else t - 1)
        step = get_step_kind(kind)
        rcfg = dataclasses.replace(
            cfg.rl,
            **step.train_overrides,
            optim=dataclasses.replace(cfg.rl.optim, seed=derive_seed(cfg.seed, t, "train")),
        )
        references = {"previous": base, "sft": self._model_of(1), "base": cfg.model}
        # an unknown name or option fails here, before anything runs
        reward = make_reward(rcfg.reward, self.task, rcfg.reward_options)

        def compute(tmp: Path) -> None:
            self.samplers.release()
            # rl_block resumes from out_dir/state when `rl.optim.save_every` saved one, and rewinds
            # this log to that step (to 0 when there is none: a killed block then starts over)
            out_dir = self.iter_dir(t) / "trainer"
            earlier = [u for u in range(1, t) if self._is_online(step_kind(cfg.paradigm, u))]
            log = JsonlTrainLogger(
                out_dir / "train_log.jsonl", total_steps=rcfg.steps, desc=f"train M{t} ({kind})",
                show_progress=self.show_progress,
                series=(self.logger, "rl", sum(self._rl_steps(u) for u in earlier)),
            )
            try:
                res = rl_block(
                    rcfg, base, self.train_examples, self.train_prompts, reward, out_dir,
                    ref_model=references[rcfg.reference] if rcfg.beta > 0 else None,
                    stop=self.train_stop or (), logger=log,
                )
            finally:
                log.finish()
            kept = {k: v for k, v in res.metrics.items() if not k.endswith("_s") and "per_s" not in k}
            result = {"source": t, "skipped": False, "steps": res.steps, "metrics": kept, "loss": kind}
            if dist.is_main():
                write_json_atomic(tmp / "result.json", result)

        def describe(folder: Path) -> str:
            res = read_json(folder / "result.json")
            reward = res["metrics"].get("reward/mean")
            return f"{kind}: {res['steps']} online steps" + (
                f", last reward {reward:.3f}" if reward is not None else ""
            )

        return self._stage(t, "train", compute, describe, outputs=("trainer",))

    def eval_stage(self, t: int) -> Path:
        """Evaluate M_t; M1 is also sampled max(is_ns) times per test question for IS(t) later."""
        cfg = self.cfg

        def compute(tmp: Path) -> None:
            sampler = self.samplers.get(self._model_of(t))
            extra = max(cfg.eval.is_ns) if t == 1 and cfg.eval.is_ns else 0
            outcome = evaluate_model(
                sampler,
                self.eval_data,
                cfg.eval,
                seed=derive_seed(cfg.seed, EVAL_STAGE_SEED, "eval"),
                extra_samples=extra,
                encoder=self.encoder(),
                show_progress=self.show_progress,
            )
            reference = self.iter_dir(1) / "eval" / "details.json" if t >= 2 else None
            write_eval_stage(tmp, outcome, reference, cfg.eval.is_ns)

        def describe(folder: Path) -> str:
            m = read_json(folder / "metrics.json")
            parts = [f"pass@1 {m['pass@1']:.3f}", f"coverage {m['coverage']:.3f}"]
            if "ood/accuracy" in m:
                parts.append(f"OOD {m['ood/accuracy']:.3f}")
            if "is/size" in m:
                parts.append(f"|IS| {m['is/size']}")
            return ", ".join(parts)

        return self._stage(t, "eval", compute, describe)

    # ------------------------------------------------------------------ the loop
    def iteration_row(self, t: int, kind: str | None) -> dict[str, Any]:
        """Everything logged for iteration t: its evaluation plus what built and trained M_t."""
        row: dict[str, Any] = {"iteration": t, "step_kind": kind or "base"}
        row.update(read_json(self.iter_dir(t) / "eval" / "metrics.json"))
        from ..report.verdicts import interval_row  # the report's intervals, for W&B (`<key>/ci_low`)

        row.update(interval_row(self.root, to_dict(self.cfg), t, 1 if t >= 2 else None))
        if t >= 1 and (self.iter_dir(t) / "build").is_dir():  # an online step builds no D_t
            build = read_json(self.iter_dir(t) / "build" / "stats.json")
            row["data/records"] = build["records"]
            row["data/questions_used"] = build["questions_used"]
            row["data/empty"] = int(build["empty"])
        if t >= 1:
            train = read_json(self.iter_dir(t) / "train" / "result.json")
            row["train/skipped"] = int(train["skipped"])
            row["train/steps"] = train["steps"]
            for key, value in train["metrics"].items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    row[f"train/{key}"] = value
        if t >= 2 and (self.iter_dir(t) / "sample").is_dir():
            sample = read_json(self.iter_dir(t) / "sample" / "stats.json")
            row["sample/correct_fraction"] = sample["correct_fraction"]
            row["sample/questions_with_correct"] = sample["questions_with_correct"]
            row["sample/truncated_fraction"] = sample["truncated_fraction"]
        return row

    def _logged_iterations(self) -> set[int]:
        path = self.root / "metrics.jsonl"
        if not dist.is_main() or not path.is_file():
            return set()
        rows = read_jsonl(path, tolerate_torn_tail=True)
        # Rewrite without a torn tail, so the next append starts on a clean line.
        write_jsonl_atomic(path, rows)
        return {int(r["iteration"]) for r in rows if "iteration" in r}

    def log_iteration(self, t: int, kind: str | None, logged: set[int]) -> None:
        """Log iteration t once (a resumed run does not repeat rows) and refresh report.md."""
        if dist.is_main() and t not in logged:
            self.logger.log(self.iteration_row(t, kind), step=t)
            logged.add(t)
            self.write_report(plots=False)  # the table after every iteration; plots at the end

    def write_report(self, plots: bool = True) -> None:
        if dist.is_main():
            from ..report import write_run_report

            write_run_report(self.root, plots=plots)

    def run(self) -> dict[str, Any]:
        """Run every missing stage of iterations 0..T; returns the last iteration's row."""
        cfg = self.cfg
        logged = self._logged_iterations()
        from tqdm.auto import tqdm

        bar = tqdm(
            total=cfg.iterations + 1, desc="iterations", disable=not (self.show_progress and dist.is_main())
        )
        self.eval_stage(0)
        self.log_iteration(0, None, logged)
        bar.update(1)
        kind = None
        for t in range(1, cfg.iterations + 1):
            kind = step_kind(cfg.paradigm, t)
            if self._is_online(kind):
                self.rl_stage(t, kind)
            else:
                if kind != GOLD_SFT:
                    self.sample_stage(t)
                self.build_stage(t, kind)
                self.train_stage(t, kind)
            self.eval_stage(t)
            self.log_iteration(t, kind, logged)
            bar.update(1)
        bar.close()
        self.samplers.release()
        self.write_report()
        return read_json(self.iter_dir(cfg.iterations) / "eval" / "metrics.json")

    def finish(self) -> None:
        """Log the plots to W&B as images and close the W&B run."""
        if self.logger is None:
            return
        if dist.is_main():
            for png in sorted((self.root / "plots").glob("*.png")):
                self.logger.log_image(f"plots/{png.stem}", png, step=self.cfg.iterations)
        self.logger.finish()


def run_engine(engine: Any, run_dir: Path, release: bool = True) -> Any:
    """Set up, run (or resume) and report one experiment of a loop engine (paper A's or paper B's);
    the run folder claimed by its set-up is released however the run ends (unless `release` is
    False: the caller holds it longer)."""
    try:
        engine.setup()
        try:
            final = engine.run()
        finally:
            engine.finish()
        dist.barrier()
    finally:
        if release:
            release_run_folder(run_dir)
    return final


def replicate_config(cfg: LoopConfig, r: int) -> LoopConfig:
    """Replicate r >= 1 of a run: the same settings and questions, its own seed (so its own training
    order and samples), in <run>/replicate_<r>/; W&B is left to replicate 0's run."""
    return dataclasses.replace(
        cfg,
        seed=derive_seed(cfg.seed, r, "replicate"),
        replicates=1,
        name=f"{cfg.run_name}-replicate_{r}",
        out_dir=str(cfg.run_dir / f"replicate_{r}"),
        wandb=dataclasses.replace(cfg.wandb, mode="disabled"),
    )


def run_loop(cfg: LoopConfig, show_progress: bool = True) -> dict[str, Any]:
    """Set up, run (or resume) and report one experiment, then its other replicates (each resumable
    like any run, each holding its own folder's lock); returns M_T's metrics of replicate 0."""
    try:
        # replicate 0's folder (the run's) stays locked until every replicate is done
        final = run_engine(LoopEngine(cfg, show_progress=show_progress), cfg.run_dir, release=False)
        for r in range(1, cfg.replicates):
            rcfg = replicate_config(cfg, r)
            run_engine(LoopEngine(rcfg, show_progress=show_progress), rcfg.run_dir)
        if cfg.replicates > 1 and dist.is_main():
            from ..report import write_run_report

            write_run_report(cfg.run_dir)  # replicate 0's report, now pooled over every replicate
        dist.barrier()
    finally:
        release_run_folder(cfg.run_dir)
    return final
