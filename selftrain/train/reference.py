"""Reference log-probs for DPO/RPO: computed once with the frozen reference model, stored with the
dataset, reused when the same inputs are trained against the same reference again.

The cache key hashes the tokenized examples (so it covers the data content, the tokenizer, the
chat template and max_length), the reference model's identity (its resolved path and the size and
mtime of its weight files, or the hub id) and the compute dtype. The file lives beside a data file
(`<data>.ref-<key>.pt`), or under the run's out_dir for in-memory data or a read-only data folder.
Ranks split the work; the reference model is deleted before the policy is loaded.

With LoRA there is no reference model: the policy itself scores the pairs with its adapter
disabled (`lora.adapter_disabled`), i.e. the frozen base weights it trains on, so DPO still holds
one model in memory. Under FSDP2 that forward is collective, so every rank runs the same number of
micro-batches (placeholders where it has run out).
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch

from .. import dist
from ..models import ADAPTER_CONFIG, adapter_base, is_adapter_folder, load_model, resolve_model_path
from .data import Example, collate
from .fsdp import SequenceScorer

# how many times reference log-probs were computed in this process (tests read it)
COMPUTE_COUNT = 0


def model_identity(name_or_path: str) -> dict[str, Any]:
    path = resolve_model_path(name_or_path)
    p = Path(path)
    if not p.is_dir():
        return {"hub_id": path}
    files = sorted(
        (f.name, f.stat().st_size, f.stat().st_mtime_ns)
        for f in p.iterdir()
        if f.suffix in (".safetensors", ".bin", ".pt", ".gguf") or f.name in ("config.json", ADAPTER_CONFIG)
    )
    ident: dict[str, Any] = {"path": str(p.resolve()), "files": files}
    if is_adapter_folder(p):  # the weights are the base's plus this adapter
        ident["base"] = model_identity(adapter_base(p))
    return ident


def cache_key(examples_digest: str, ref_model: str, dtype: torch.dtype, via: str = "model") -> str:
    blob = json.dumps(
        {"examples": examples_digest, "ref": model_identity(ref_model), "dtype": str(dtype), "via": via},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def cache_path(data: Any, out_dir: Path, key: str) -> Path:
    name = f"ref-logps-{key[:20]}.pt"
    if isinstance(data, (str, Path)):
        folder = Path(data).resolve().parent
        if os.access(folder, os.W_OK):
            return folder / f"{Path(data).name}.{name}"
    return out_dir / name


def _load_cached(path: Path, key: str, n: int) -> torch.Tensor | None:
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - an unreadable cache is recomputed, not trusted
        return None
    if blob.get("key") != key or tuple(blob["logps"].shape) != (n, 2):
        return None
    return blob["logps"]


def _save_atomic(path: Path, key: str, logps: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    os.close(fd)
    try:
        torch.save({"key": key, "logps": logps}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@torch.inference_mode()
def _compute(
    examples: Sequence[Example],
    ref_model: str,
    dtype: torch.dtype,
    device: torch.device,
    micro: int,
    pad_id: int,
) -> torch.Tensor:
    global COMPUTE_COUNT
    COMPUTE_COUNT += 1
    model = load_model(ref_model, dtype=dtype, device=device)
    scorer = SequenceScorer(model).eval()
    order = sorted(range(len(examples)), key=lambda i: -examples[i].length)
    chunks = [order[i : i + micro] for i in range(0, len(order), micro)]

    def run(my_chunks: list[list[int]]) -> list[list[tuple[float, float]]]:
        results = []
        for chunk in my_chunks:
            mb = collate([examples[i] for i in chunk], pad_id)
            sums, _ = scorer(mb.input_ids.to(device), mb.attention_mask.to(device), mb.targets.to(device))
            sums = sums.float().cpu()
            b = len(chunk)
            results.append([(float(sums[j]), float(sums[b + j])) for j in range(b)])
        return results

    per_chunk = dist.map_sharded(chunks, run)
    scorer = model = None  # free the reference before the policy is loaded
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    logps = torch.empty((len(examples), 2), dtype=torch.float64)
    for chunk, res in zip(chunks, per_chunk):
        for i, pair in zip(chunk, res):
            logps[i] = torch.tensor(pair, dtype=torch.float64)
    return logps.float()


@torch.no_grad()
def _compute_adapter_disabled(
    examples: Sequence[Example],
    scorer: Any,
    peft_model: Any,
    device: torch.device,
    micro: int,
    pad_id: int,
) -> torch.Tensor:
    """The policy's own weights with the adapter bypassed; every rank runs the same number of
    forwards (FSDP2 all-gathers inside each), results are gathered to all ranks."""
    from .lora import adapter_disabled

    global COMPUTE_COUNT
    COMPUTE_COUNT += 1
    order = sorted(range(len(examples)), key=lambda i: -examples[i].length)
    chunks = [order[i : i + micro] for i in range(0, len(order), micro)]
    world, rank = dist.world_size(), dist.rank()
    mine = chunks[rank::world]
    rounds = -(-len(chunks) // world)
    results: list[tuple[int, float, float]] = []
    with adapter_disabled(peft_model):
        for k in range(rounds):
            chunk = mine[k] if k < len(mine) else []
            mb = collate([examples[i] for i in chunk], pad_id)
            sums, _ = scorer(mb.input_ids.to(device), mb.attention_mask.to(device), mb.targets.to(device))
            sums = sums.float().cpu()
            b = len(chunk)
            results.extend((i, float(sums[j]), float(sums[b + j])) for j, i in enumerate(chunk))
    logps = torch.empty((len(examples), 2), dtype=torch.float32)
    for part in dist.gather_objects(results):
        for i, c, r in part:
            logps[i, 0], logps[i, 1] = c, r
    return logps


def reference_logps(
    examples: Sequence[Example],
    examples_digest: str,
    ref_model: str,
    data: Any,
    out_dir: Path,
    dtype: torch.dtype,
    device: torch.device,
    micro_batch_size: int,
    pad_id: int,
    policy: tuple[Any, Any] | None = None,
) -> tuple[torch.Tensor, bool, Path]:
    """[len(examples), 2] summed response log-probs (chosen, rejected) under the reference, whether
    they came from the cache, and the cache file. Collective. `policy` = (scorer, peft_model) of a
    LoRA run: score with its adapter disabled instead of loading `ref_model` (its base)."""
    key = cache_key(examples_digest, ref_model, dtype, via="model" if policy is None else "adapter-disabled")
    path = cache_path(data, out_dir, key)
    cached = _load_cached(path, key, len(examples)) if dist.is_main() else None
    hit = dist.broadcast_object(cached is not None)
    if hit:
        return dist.broadcast_object(cached), True, path
    if policy is None:
        logps = _compute(examples, ref_model, dtype, device, micro_batch_size, pad_id)
    else:
        logps = _compute_adapter_disabled(examples, *policy, device, micro_batch_size, pad_id)
    if dist.is_main():
        _save_atomic(path, key, logps)
    dist.barrier()
    return logps, False, path
