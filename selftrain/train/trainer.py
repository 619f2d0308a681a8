"""The training loop: SFT, DPO and RPO with FSDP2, gradient accumulation, resumable state.

Loss definitions (the same whatever the world size, so 1 and K processes train identically):
- SFT: the sum of response-token NLLs over the whole global batch divided by the number of
  response tokens in that global batch (every rank knows that count from the shared batch plan).
- DPO / RPO: the mean over the global batch's pairs of `selftrain.kernels.dpo_loss` (sigmoid DPO
  with label smoothing); RPO adds rpo_alpha times each pair's chosen NLL, normalised by the
  number of chosen response tokens.
Each micro-batch contributes its share of that global quantity; the loss is multiplied by the
world size before backward because FSDP averages gradients over ranks.
"""

from __future__ import annotations

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
from .. import kernels as K
from ..models import declared_dtype, is_complete_checkpoint, load_model, load_tokenizer, save_checkpoint
from ..report import RunLogger, write_json_atomic
from . import lora as lora_io
from . import state as state_io
from .config import LOSSES, TrainConfig
from .data import (
    Example,
    MicroBatch,
    collate,
    epoch_batches,
    examples_digest,
    load_records,
    split_micro_batches,
    steps_per_epoch,
    tokenize_records,
)
from .fsdp import (
    SequenceScorer,
    compute_dtype,
    full_model_state_dict,
    hf_model_from_state_dict,
    set_gradient_sync,
    wrap_for_training,
)
from .reference import reference_logps

RESULT_FILE = "train_result.json"


class NonFiniteError(RuntimeError):
    """The loss or the gradient norm became NaN/inf; the message names the step."""


@dataclass
class TrainResult:
    checkpoint: Path
    steps: int
    metrics: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Multiplier of the peak lr for 0-based optimizer step `step`: linear warm-up reaching 1 at
    the last warm-up step, then a cosine down to `min_ratio` at the end of the run."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _make_optimizer(scorer: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # no weight decay on vectors (norm scales, biases), the usual practice
    decay = [p for p in scorer.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in scorer.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one in-place pass per tensor, no optimizer-wide temporaries (foreach would allocate
    # several parameter-sized buffers at the step, raising peak memory by ~2x the model size)
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps, fused=True
    )


def _grad_norm_and_clip(scorer: torch.nn.Module, max_norm: float) -> float:
    """The global L2 norm of all gradients (over every rank's shards), clipping when max_norm > 0."""
    grads_of = [p for p in scorer.parameters() if p.grad is not None]
    if max_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(grads_of, max_norm, foreach=True)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in grads_of], foreach=True)
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP2
        norm = norm.full_tensor()
    return float(norm)


def _all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        torch.distributed.all_reduce(values)
    return values


def _batch_shape_stats(
    batch: Sequence[int], examples: Sequence[Example], lengths: Sequence[int], micro: int, world: int
) -> tuple[int, int]:
    """(real tokens, padded slots) of one global batch as all ranks together run it."""
    real = slots = 0
    for rank_micros in split_micro_batches(batch, lengths, micro, world):
        for mb in rank_micros:
            if not mb:
                continue
            exs = [examples[j] for j in mb]
            width = max(len(s) for ex in exs for s in ex.sequences)
            real += sum(ex.n_tokens for ex in exs)
            slots += width * sum(len(ex.sequences) for ex in exs)
    return real, slots


class _Step:
    """Runs one optimizer step's forward/backward passes on this rank's micro-batches."""

    METRICS_SFT = ("loss",)
    METRICS_PREF = (
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margin",
        "rewards/accuracy",
        "logps/chosen",
        "logps/rejected",
        "nll/chosen",
    )

    def __init__(
        self,
        scorer: SequenceScorer,
        cfg: TrainConfig,
        loss: str,
        examples: Sequence[Example],
        ref: torch.Tensor | None,
        pad_id: int,
        device: torch.device,
    ) -> None:
        self.scorer, self.cfg, self.loss, self.examples = scorer, cfg, loss, examples
        self.ref, self.pad_id, self.device = ref, pad_id, device
        self.lengths = [ex.length for ex in examples]
        self.names = self.METRICS_SFT if loss == "sft" else self.METRICS_PREF

    def _sft_part(
        self, sums: torch.Tensor, counts: torch.Tensor, mb: MicroBatch, trained_tokens: int, n_batch: int
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        part = -sums.sum() / trained_tokens
        return part, [part.detach()]

    def _pref_part(
        self, sums: torch.Tensor, counts: torch.Tensor, mb: MicroBatch, idx: list[int], n_batch: int
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        b = mb.n_examples
        pc, pr = sums[:b], sums[b:]
        ref = self.ref[idx].to(self.device)
        chosen_nll = -pc / counts[:b].clamp(min=1).to(pc.dtype)
        alpha = self.cfg.rpo_alpha if self.loss == "rpo" else 0.0
        loss, m = K.dpo_loss(
            pc,
            pr,
            ref[:, 0],
            ref[:, 1],
            self.cfg.beta,
            rpo_alpha=alpha,
            chosen_nll=chosen_nll if alpha else None,
            label_smoothing=self.cfg.label_smoothing,
        )
        w = b / n_batch  # this micro-batch's share of the global mean over pairs
        extra = [
            m["rewards/chosen"],
            m["rewards/rejected"],
            m["rewards/margin"],
            m["rewards/accuracy"],
            pc.detach().mean(),
            pr.detach().mean(),
            chosen_nll.detach().mean(),
        ]
        return loss * w, [loss.detach() * w] + [v.float() * w for v in extra]

    def run(self, batch: list[int]) -> dict[str, float]:
        world, rank = dist.world_size(), dist.rank()
        micros = split_micro_batches(batch, self.lengths, self.cfg.micro_batch_size, world)[rank]
        trained_tokens = sum(self.examples[j].trained_tokens for j in batch)
        totals = torch.zeros(len(self.names), dtype=torch.float64, device=self.device)
        for i, idx in enumerate(micros):
            set_gradient_sync(self.scorer, i == len(micros) - 1)
            mb = collate([self.examples[j] for j in idx], self.pad_id)
            sums, counts = self.scorer(
                mb.input_ids.to(self.device), mb.attention_mask.to(self.device), mb.targets.to(self.device)
            )
            if mb.n_examples == 0:  # placeholder: keeps FSDP's collectives in step, adds nothing
                part, values = sums.sum() * 0.0, [torch.zeros((), device=self.device)] * len(self.names)
            elif self.loss == "sft":
                part, values = self._sft_part(sums, counts, mb, trained_tokens, len(batch))
            else:
                part, values = self._pref_part(sums, counts, mb, idx, len(batch))
            (part * world).backward()
            totals += torch.stack([v.double() for v in values])
        totals = _all_reduce_sum(totals).tolist()
        return dict(zip(self.names, totals))


def _save_full_model(
    scorer: SequenceScorer, config_template: Any, save_dtype: torch.dtype, tokenizer: Any, final_dir: Path
) -> None:
    """The trained model as an HF folder (gathered to rank 0 under FSDP2). Collective."""
    full = full_model_state_dict(scorer)
    if dist.is_main():
        if not dist.is_initialized() and save_dtype == torch.float32:
            to_save = scorer.model  # the plain model itself: no second copy needed
        else:
            to_save = hf_model_from_state_dict(config_template, full, save_dtype)
        del full
        save_checkpoint(to_save, tokenizer, final_dir)


def _save_lora(scorer: SequenceScorer, peft_model: Any, lcfg: Any, tokenizer: Any, out: Path) -> None:
    """The adapter in PEFT's format at out/model (and base + adapter at out/merged when asked). Collective."""
    adapter = lora_io.trainable_state_dict(scorer.model)
    if dist.is_main():
        lora_io.save_adapter(peft_model, adapter, tokenizer, out / "model")
        if lcfg.merged:
            lora_io.save_merged(out / "model", out / lora_io.MERGED_DIR)


def run_logger(out: Path, cfg: TrainConfig, config: dict[str, Any]) -> RunLogger:
    """The run's own logger (W&B + metrics.jsonl in `out`) when the caller passes none."""
    return RunLogger(out, project=cfg.wandb_project, name=out.name, mode=cfg.wandb_mode, config=config)


def _read_result(out: Path) -> TrainResult:
    path = out / RESULT_FILE
    info = json.loads(path.read_text()) if path.is_file() else {}
    return TrainResult(out / "model", int(info.get("steps", 0)), dict(info.get("metrics", {})), skipped=True)


def train(
    cfg: TrainConfig,
    model: str,
    data: str | Path | list[dict[str, Any]],
    out_dir: str | Path,
    loss: str = "sft",
    ref_model: str | None = None,
    logger: RunLogger | None = None,
) -> TrainResult:
    """Train `model` on `data` with `loss` ("sft", "dpo" or "rpo"); save an HF folder at
    out_dir/model. Collective under torchrun (every rank calls it with the same arguments); works
    on one process without torch.distributed. Returns at once if out_dir/model is complete, and
    resumes from out_dir/state when a save is there."""
    if loss not in LOSSES:
        raise ValueError(f"loss={loss!r}: expected one of {', '.join(LOSSES)}")
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    out = Path(out_dir)
    final_dir = out / "model"
    if dist.broadcast_object(is_complete_checkpoint(final_dir) if dist.is_main() else None):
        return _read_result(out)

    kind = "sft" if loss == "sft" else "dpo"
    records = load_records(data, kind)
    tokenizer = load_tokenizer(model)
    examples, tok_stats = tokenize_records(records, tokenizer, kind, cfg.max_length)
    digest = examples_digest(examples)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = dist.default_device()
    cdtype = compute_dtype(cfg.dtype, device)
    world = dist.world_size()

    lcfg = cfg.lora
    other_ref = ref_model and lora_io.base_name(ref_model) != lora_io.base_name(model)
    if lcfg is not None and kind == "dpo" and other_ref:
        raise ValueError(
            f"ref_model={ref_model!r}: with a lora section the DPO reference is the trained model "
            f"({model!r}) with its adapter disabled; leave ref_model unset"
        )
    data_stats: dict[str, Any] = {
        "data/records": tok_stats.records,
        "data/examples": len(examples),
        "data/skipped_long_prompt": tok_stats.skipped_long_prompt,
        "data/truncated_responses": tok_stats.truncated_responses,
    }
    ref = None

    def score_reference(policy: tuple[Any, Any] | None) -> torch.Tensor:
        t_ref = time.perf_counter()
        logps, hit, _ = reference_logps(
            examples, digest, ref_model or model, data, out, cdtype, device, cfg.micro_batch_size, pad_id,
            policy=policy,
        )
        data_stats["ref/cache_hit"] = int(hit)
        data_stats["ref/time_s"] = time.perf_counter() - t_ref
        return logps

    if kind == "dpo" and lcfg is None:  # before the policy loads: the reference model is freed first
        ref = score_reference(None)

    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    peft_model = None
    if lcfg is None:
        hf = load_model(model, dtype=torch.float32, device="cpu")
        save_dtype = declared_dtype(hf)
        config_template = hf.config
        scorer = wrap_for_training(hf, cdtype, device, cfg.activation_checkpointing)
        del hf
    else:
        scorer, peft_model = lora_io.build_policy(
            model, lcfg, cdtype, device, cfg.activation_checkpointing, out
        )
        if kind == "dpo":  # the same weights with the adapter bypassed: no second model
            ref = score_reference((scorer, peft_model))
    optimizer = _make_optimizer(scorer, cfg)

    spe = steps_per_epoch(len(examples), cfg.global_batch_size)
    total = cfg.epochs * spe
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    warmup = math.ceil(cfg.warmup_ratio * total)
    run_key = {
        "config": cfg.trajectory_key(),
        "loss": loss,
        "model": str(model),
        "ref_model": str(ref_model or model) if kind == "dpo" else None,
        "examples": digest,
    }

    state_root = out / "state"
    start = state_io.resume(state_root, run_key, scorer, optimizer, trainable_only=lcfg is not None)

    own_logger = logger is None
    if own_logger:
        logger = run_logger(out, cfg, {
            **asdict(cfg),
            "loss": loss,
            "model": str(model),
            "world_size": world,
            "data": str(data) if isinstance(data, (str, Path)) else "<in-memory>",
        })
    step_runner = _Step(scorer, cfg, loss, examples, ref, pad_id, device)
    lengths = [ex.length for ex in examples]
    last: dict[str, Any] = {}
    pending = dict(data_stats, **{"resumed_from": start} if start else {})
    plans: dict[int, list[list[int]]] = {}
    try:
        for step in range(start, total):
            epoch, pos = divmod(step, spe)
            if epoch not in plans:
                plans = {
                    epoch: epoch_batches(
                        lengths,
                        cfg.global_batch_size,
                        cfg.seed,
                        epoch,
                        cfg.group_by_length,
                        cfg.length_window,
                    )
                }
            batch = plans[epoch][pos]
            t0 = time.perf_counter()
            lr = cfg.lr * lr_factor(step, total, warmup, cfg.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            values = step_runner.run(batch)
            grad_norm = _grad_norm_and_clip(scorer, cfg.grad_clip)
            if not (math.isfinite(values["loss"]) and math.isfinite(grad_norm)):
                kept = state_io.latest_state(state_root)
                what = "loss" if not math.isfinite(values["loss"]) else "gradient"
                raise NonFiniteError(
                    f"step {step + 1}: non-finite {what} "
                    f"(loss={values['loss']}, grad_norm={grad_norm}); stopped before the optimizer update; "
                    f"last good state: {kept or 'none saved'}"
                )
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - t0
            done = step + 1
            if done % cfg.log_every == 0 or done == total:
                real, slots = _batch_shape_stats(batch, examples, lengths, cfg.micro_batch_size, world)
                row = {
                    **values,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "epoch": epoch + (pos + 1) / spe,
                    "tokens": real,
                    "tokens_per_s": real / elapsed,
                    "padding_fraction": 1 - real / slots,
                    "step_time_s": elapsed,
                    **pending,
                }
                if kind == "sft":
                    row.pop("nll/chosen", None)
                pending = {}
                logger.log(row, step=done)
                last = row
            if cfg.save_every and done % cfg.save_every == 0 and done < total:
                state_io.save_state(
                    state_root, done, scorer, optimizer, {"run_key": run_key}, cfg.keep_states,
                    trainable_only=lcfg is not None,
                )

        del optimizer
        if lcfg is None:
            _save_full_model(scorer, config_template, save_dtype, tokenizer, final_dir)
        else:
            _save_lora(scorer, peft_model, lcfg, tokenizer, out)
        if dist.is_main():
            write_json_atomic(out / RESULT_FILE, {"steps": total, "metrics": last})
            shutil.rmtree(state_root, ignore_errors=True)
        dist.barrier()
    finally:
        if own_logger:
            logger.finish()
    return TrainResult(final_dir, total, last, skipped=False)
