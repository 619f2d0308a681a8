"""Online RL blocks (GRPO / Dr. GRPO / RLOO): sample groups from the current policy, grade them,
take policy-gradient steps, repeat.

Each step of a block:
1. refresh the sampler's weights from the trainer's policy in process (`Sampler.load_weights`; no
   checkpoint is written or read) and sample `group_size` responses to each of `prompts_per_step`
   prompts (the prompts of step s are a seeded draw, so a rerun samples the same ones);
2. grade every response with the reward (`selftrain.train.rewards`: the task's grader, a
   self-verifier, or a reward a user registers);
3. advantages per group (`selftrain.train.rl.group_advantages`);
4. `updates_per_batch` optimizer steps on the batch, each over micro-batches whose losses use the
   whole batch's normalisers (`rl.token_weights`), so the split does not change the result. The
   log-probs come from `SequenceScorer(per_token=True)`, i.e. the fused kernel, and the sampling
   policy's ("old") log-probs from the same forward before the first update (with one update the
   ratio is exactly 1 and its gradient is the plain policy gradient, as in GRPO's mu = 1).

The optimizer (AdamW, no decay on vectors), the warm-up + cosine schedule, gradient clipping, the
model wrapping (FSDP2 under torchrun) and the resumable saves (`selftrain.train.state`) are the
SFT/DPO trainer's own (`selftrain.train.trainer`). docs/rl.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from .. import dist
from ..models import declared_dtype, is_complete_checkpoint, load_model, load_tokenizer
from ..report import write_json_atomic
from ..report.logger import append_jsonl, rewind_jsonl
from . import state as state_io
from .config import TrainConfig
from .data import IGNORE, Example, _prompt_ids, collate
from .fsdp import SequenceScorer, compute_dtype, set_gradient_sync, wrap_for_training
from .rewards import Reward, grade
from .rl import RLLossConfig, clipped_token_loss, group_advantages, token_weights
from .trainer import (
    RESULT_FILE,
    NonFiniteError,
    TrainResult,
    _grad_norm_and_clip,
    _make_optimizer,
    _read_result,
    _save_full_model,
    lr_factor,
    run_logger,
)

REFERENCES = ("previous", "sft", "base")
ROLLOUTS_FILE = "rollouts.jsonl"  # per step: the questions drawn (indices into `examples`) and each reward


@dataclass
class RLConfig(RLLossConfig):
    """One block of online RL steps: the loss (RLLossConfig's fields), the sampling, the batch.

    The optimizer settings come from `optim` (a TrainConfig): lr, warmup_ratio, min_lr_ratio,
    weight_decay, adam_*, grad_clip, micro_batch_size (responses per forward), dtype,
    activation_checkpointing, seed, save_every / keep_states (resumable saves inside the block),
    wandb_*. Its epochs / global_batch_size / max_length / beta / rpo_alpha / label_smoothing /
    max_steps do not apply to RL and must stay unset.
    """

    steps: int = 16  # online steps (each: sample, grade, update) per block
    prompts_per_step: int = 8
    group_size: int = 8  # G responses per prompt
    updates_per_batch: int = 1  # optimizer steps on each sampled batch (GRPO's mu; > 1 makes clipping bite)
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256  # also Dr. GRPO's constant normaliser
    kv_cache_tokens: int = 32768
    max_num_seqs: int = 64
    optim: TrainConfig = field(
        default_factory=lambda: TrainConfig(lr=1e-6, warmup_ratio=0.0, micro_batch_size=8)
    )
    # The loop's KL reference when beta > 0 (rl_block itself takes the model): "previous" = M_{t-1}
    # (the iteration's starting policy, GRPO's reference refreshed each round), "sft" = M1,
    # "base" = M0.
    reference: str = "previous"
    reward: str = "task"  # a registered reward (rewards.register_reward): "task" = the task's grader
    reward_options: dict[str, Any] = field(default_factory=dict)  # keyword arguments of its factory

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("steps", "prompts_per_step", "group_size", "updates_per_batch", "max_new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"RLConfig.{name}={value!r}: must be an integer >= 1")
        if self.group_size < 2:
            raise ValueError(
                f"RLConfig.group_size={self.group_size}: must be >= 2 (advantages compare a group)"
            )
        if not self.temperature > 0:
            raise ValueError(f"RLConfig.temperature={self.temperature}: must be > 0 (RL samples)")
        if self.reference not in REFERENCES:
            raise ValueError(f"RLConfig.reference={self.reference!r}: must be one of {', '.join(REFERENCES)}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"RLConfig.top_p={self.top_p}: must be in (0, 1]")
        if isinstance(self.optim, dict):
            self.optim = TrainConfig(**self.optim)
        default = TrainConfig()
        unused = (
            "epochs",
            "global_batch_size",
            "max_length",
            "beta",
            "rpo_alpha",
            "label_smoothing",
            "max_steps",
        )
        changed = [n for n in unused if getattr(self.optim, n) != getattr(default, n)]
        if changed:
            raise ValueError(
                f"RLConfig.optim: {', '.join(changed)} do not apply to online RL; leave them unset"
            )
        if self.optim.lora is not None:
            raise ValueError("RLConfig.optim.lora: LoRA is not supported for online RL yet")


def _policy_state(scorer: SequenceScorer) -> dict[str, torch.Tensor]:
    """The policy's full weights on every process, for its sampler: under FSDP2 one all-gather per
    tensor (`DTensor.full_tensor`), on one process the module's own tensors (the sampler copies)."""
    return {
        name: value.full_tensor() if hasattr(value, "full_tensor") else value
        for name, value in scorer.model.state_dict().items()
    }


def _step_prompts(n_prompts: int, per_step: int, seed: int, step: int) -> list[int]:
    """Prompt indices of step `step`: consecutive slices of seeded permutations of all prompts."""
    out: list[int] = []
    start = step * per_step
    while len(out) < per_step:
        epoch, pos = divmod(start + len(out), n_prompts)
        perm = list(range(n_prompts))
        random.Random(f"{seed}:{epoch}").shuffle(perm)
        out.extend(perm[pos : pos + per_step - len(out)])
    return out


@dataclass
class _Rollouts:
    examples: list[Example]  # one sequence each: prompt + response
    lengths: torch.Tensor  # response tokens per sequence
    advantages: torch.Tensor  # per sequence
    old_logp: list[torch.Tensor] = field(default_factory=list)  # per micro-batch, flat tokens
    ref_logp: list[torch.Tensor] = field(default_factory=list)


def _micro_batches(n: int, size: int) -> list[list[int]]:
    return [list(range(i, min(n, i + size))) for i in range(0, n, size)]


def _forward(
    scorer: SequenceScorer, examples: Sequence[Example], pad_id: int, device: torch.device, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of the response tokens and each token's sequence (within the micro-batch)."""
    mb = collate(list(examples), pad_id)
    targets = mb.targets.to(device)
    logp = scorer(
        mb.input_ids.to(device),
        mb.attention_mask.to(device),
        targets,
        per_token=True,
        temperature=temperature,
    )
    rows = (targets != IGNORE).nonzero(as_tuple=True)[0]
    return logp, rows


def _score_no_grad(
    scorer: SequenceScorer,
    rollouts: _Rollouts,
    micro: int,
    pad_id: int,
    device: torch.device,
    temperature: float,
) -> list[torch.Tensor]:
    with torch.no_grad():
        return [
            _forward(scorer, [rollouts.examples[j] for j in idx], pad_id, device, temperature)[0].detach()
            for idx in _micro_batches(len(rollouts.examples), micro)
        ]


def _update(
    scorer: SequenceScorer,
    rollouts: _Rollouts,
    cfg: RLConfig,
    pad_id: int,
    device: torch.device,
    n_tokens: int | None = None,
    n_seqs: int | None = None,
) -> dict[str, float]:
    """Forward/backward of one optimizer step over this rank's sequences of the batch; returns
    statistics summed over every rank. `n_tokens` / `n_seqs` count the whole batch (all ranks;
    default: this rank's rollouts are the whole batch): the loss's normalisers, so that the split
    over ranks and micro-batches does not change the result."""
    n_local = len(rollouts.examples)
    n_tokens = int(rollouts.lengths.sum()) if n_tokens is None else n_tokens
    n_seqs = n_local if n_seqs is None else n_seqs
    world = dist.world_size()
    names = ("loss", "pg_loss", "clipped", "kl", "neg_logp")
    totals = torch.zeros(len(names), dtype=torch.float64)
    micros = _micro_batches(n_local, cfg.optim.micro_batch_size)
    for k, idx in enumerate(micros):
        set_gradient_sync(scorer, k == len(micros) - 1)
        logp, rows = _forward(scorer, [rollouts.examples[j] for j in idx], pad_id, device, cfg.temperature)
        seq = torch.tensor(idx, device=device)[rows]
        old = rollouts.old_logp[k] if rollouts.old_logp else logp.detach()
        ref = rollouts.ref_logp[k] if rollouts.ref_logp else None
        w = token_weights(seq.cpu(), rollouts.lengths, cfg.aggregation, n_tokens, n_seqs, cfg.max_new_tokens)
        loss, stats = clipped_token_loss(
            logp, old, rollouts.advantages.to(device)[seq], w.to(device), cfg, ref
        )
        # FSDP2 averages gradients over ranks; the loss is a sum over the whole batch
        (loss * world).backward()
        totals += torch.tensor([
            float(loss.detach()),
            float(stats["pg_loss"]),
            float(stats["clipped"]),
            float(stats.get("kl", 0.0)),
            float(-logp.detach().sum()),
        ], dtype=torch.float64)
    if dist.is_initialized():
        totals = totals.to(device)
        torch.distributed.all_reduce(totals)
    return dict(zip(names, totals.tolist()))


def _run_key(cfg: RLConfig, model: str | Path, ref_model: str | Path | None, prompts: Sequence[str]) -> dict:
    """What a saved state must match to be resumed: every setting that changes the trajectory."""
    key = {k: v for k, v in asdict(cfg).items() if k not in ("optim", "kv_cache_tokens", "max_num_seqs")}
    digest = hashlib.sha256(json.dumps(list(prompts)).encode()).hexdigest()
    return {
        "rl": key,
        "optim": cfg.optim.trajectory_key(),
        "model": str(model),
        "ref_model": str(ref_model) if cfg.beta > 0 else None,
        "prompts": digest,
    }


def _local_groups(n_groups: int) -> range:
    """This rank's groups of a step: consecutive equal slices (rl_block checks divisibility)."""
    per = n_groups // dist.world_size()
    return range(dist.rank() * per, (dist.rank() + 1) * per)


def rl_block(
    cfg: RLConfig,
    model: str | Path,
    examples: Sequence[Any],
    prompts: Sequence[str],
    reward: Reward,
    out_dir: str | Path,
    ref_model: str | Path | None = None,
    stop: Sequence[str] = (),
    logger: Any = None,
) -> TrainResult:
    """Run `cfg.steps` online RL steps from `model` on the questions `examples` (their rendered
    `prompts`), graded by `reward`; save the policy after the block at out_dir/model (an HF folder)
    and per-step rows in the run log. `ref_model` is the KL reference (needed when cfg.beta > 0).

    Collective under torchrun: every rank samples its share of the step's prompts (the sampler
    shards them and gathers the completions on every rank), grades the whole step, and trains on
    its share of the groups under FSDP2; the result equals one process's. With
    `cfg.optim.save_every` the model, optimizer and step are saved to out_dir/state every that many
    steps, and a rerun resumes from the newest save (the logger's rows after it are dropped: a
    logger may have `rewind(step)`). Returns at once when out_dir/model is complete."""
    from ..sampler import Sampler

    if len(examples) != len(prompts) or not prompts:
        raise ValueError(
            f"{len(examples)} examples and {len(prompts)} prompts: need the same, non-zero number"
        )
    if cfg.beta > 0 and ref_model is None:
        raise ValueError("beta > 0 needs a reference model (ref_model)")
    world = dist.world_size()
    if cfg.prompts_per_step % world:
        raise ValueError(
            f"rl.prompts_per_step={cfg.prompts_per_step} must be a multiple of the {world} processes "
            f"(each trains on the same number of groups)"
        )
    out = Path(out_dir)
    final_dir = out / "model"
    if dist.broadcast_object(is_complete_checkpoint(final_dir) if dist.is_main() else None):
        return _read_result(out)
    opt = cfg.optim
    device = dist.default_device()
    cdtype = compute_dtype(opt.dtype, device)
    tokenizer = load_tokenizer(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompt_ids = [_prompt_ids(tokenizer, p) for p in prompts]

    random.seed(opt.seed)
    torch.manual_seed(opt.seed)
    hf = load_model(model, dtype=torch.float32, device="cpu")
    save_dtype, config_template = declared_dtype(hf), hf.config
    scorer = wrap_for_training(hf, cdtype, device, opt.activation_checkpointing)
    del hf
    ref_scorer = None
    if ref_model is not None and cfg.beta > 0:
        ref_scorer = wrap_for_training(
            load_model(ref_model, dtype=torch.float32, device="cpu"), cdtype, device, False
        )
        ref_scorer.eval().requires_grad_(False)
    optimizer = _make_optimizer(scorer, opt)

    run_key = _run_key(cfg, model, ref_model, prompts)
    state_root = out / "state"
    start = state_io.resume(state_root, run_key, scorer, optimizer)
    sampler = Sampler(
        str(model),
        tokenizer=tokenizer,
        max_num_seqs=cfg.max_num_seqs,
        kv_cache_tokens=cfg.kv_cache_tokens,
        data_parallel=True,
    )
    total = cfg.steps * cfg.updates_per_batch
    warmup = math.ceil(opt.warmup_ratio * total)

    own_logger = logger is None
    if own_logger:
        logger = run_logger(out, opt, {**asdict(cfg), "model": str(model), "world_size": world})
    if hasattr(logger, "rewind"):
        logger.rewind(start)  # rows of steps after the resumed save are redone below
    if dist.is_main():
        rewind_jsonl(out / ROLLOUTS_FILE, start)
    last: dict[str, Any] = {}
    update = start * cfg.updates_per_batch
    try:
        for step in range(start, cfg.steps):
            sync_s = sampler.load_weights(_policy_state(scorer)) if step else 0.0
            idx = _step_prompts(len(prompts), cfg.prompts_per_step, opt.seed, step)
            t0 = time.perf_counter()
            outs = sampler.generate(
                [prompt_ids[i] for i in idx],
                n=cfg.group_size,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                max_new_tokens=cfg.max_new_tokens,
                stop=list(stop),
                seed=opt.seed * 1_000_003 + step,
                progress=False,
            )
            sample_s = time.perf_counter() - t0
            # every rank grades the whole step (a batch reward may sample, collectively)
            scores, reward_stats = grade(reward, [examples[i] for i in idx], outs, sampler)
            rewards = torch.tensor(scores)
            adv, flat = group_advantages(rewards, cfg.advantage, cfg.std_eps)
            lengths = torch.tensor([len(c.token_ids) for group in outs for c in group])
            mine = _local_groups(len(idx))
            rollouts = _Rollouts(
                [
                    Example(k, [prompt_ids[idx[q]] + c.token_ids], [len(prompt_ids[idx[q]])])
                    for k, (q, c) in enumerate((q, c) for q in mine for c in outs[q])
                ],
                lengths.view(len(idx), -1)[mine.start : mine.stop].flatten(),
                adv[mine.start : mine.stop].flatten(),
            )
            n_tok, n_seqs = int(lengths.sum()), lengths.numel()
            t1 = time.perf_counter()
            if cfg.updates_per_batch > 1:
                rollouts.old_logp = _score_no_grad(
                    scorer, rollouts, opt.micro_batch_size, pad_id, device, cfg.temperature
                )
            if ref_scorer is not None:
                rollouts.ref_logp = _score_no_grad(
                    ref_scorer, rollouts, opt.micro_batch_size, pad_id, device, cfg.temperature
                )
            first: dict[str, float] = {}
            grad_norms = []
            clipped = 0.0
            for _ in range(cfg.updates_per_batch):
                lr = opt.lr * lr_factor(update, total, warmup, opt.min_lr_ratio)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                values = _update(scorer, rollouts, cfg, pad_id, device, n_tok, n_seqs)
                grad_norm = _grad_norm_and_clip(scorer, opt.grad_clip)
                if not (math.isfinite(values["loss"]) and math.isfinite(grad_norm)):
                    raise NonFiniteError(
                        f"step {step + 1}: non-finite loss or gradient "
                        f"(loss={values['loss']}, grad_norm={grad_norm}); last good state: "
                        f"{state_io.latest_state(state_root) or 'none saved'}"
                    )
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                update += 1
                grad_norms.append(grad_norm)
                clipped += values["clipped"]
                first = first or values  # the first update's statistics: the sampling policy's own
            train_s = time.perf_counter() - t1
            trained = sum(len(prompt_ids[i]) for i in idx) * cfg.group_size + n_tok
            row = {
                "reward/mean": float(rewards.mean()),
                "reward/std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
                "zero_adv_fraction": flat / rewards.shape[0],
                "loss": first["loss"],
                "pg_loss": first["pg_loss"],
                "clip_fraction": clipped / (cfg.updates_per_batch * n_tok),
                "entropy_mc": first["neg_logp"] / n_tok,
                "response_length": n_tok / n_seqs,
                "lr": lr,
                "grad_norm": grad_norms[-1],
                "sampling_tokens_per_s": n_tok / sample_s,
                "training_tokens_per_s": cfg.updates_per_batch * trained / train_s,
                "sync_s": sync_s,
                "sample_s": sample_s,
                "train_s": train_s,
            }
            if ref_scorer is not None:
                row["kl"] = first["kl"] / n_tok
            row.update(reward_stats)
            logger.log(row, step=step + 1)
            if dist.is_main():
                append_jsonl(out / ROLLOUTS_FILE, {"step": step + 1, "questions": idx, "rewards": scores})
            last = row
            done = step + 1
            if opt.save_every and done % opt.save_every == 0 and done < cfg.steps:
                meta = {"run_key": run_key}
                state_io.save_state(state_root, done, scorer, optimizer, meta, opt.keep_states)
        del optimizer
        _save_full_model(scorer, config_template, save_dtype, tokenizer, final_dir)
        if dist.is_main():
            write_json_atomic(out / RESULT_FILE, {"steps": cfg.steps, "metrics": last})
            shutil.rmtree(state_root, ignore_errors=True)
        dist.barrier()
    finally:
        if own_logger:
            logger.finish()
    return TrainResult(final_dir, cfg.steps, last, skipped=False)


def read_curve(out_dir: str | Path, key: str) -> list[float]:
    """One logged per-step value of a finished or running block, in step order."""
    path = Path(out_dir) / "metrics.jsonl"
    rows = (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    )
    return [float(r[key]) for r in rows if key in r]
