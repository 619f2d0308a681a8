"""Resumable training state: model and optimizer shards (torch.distributed.checkpoint), the step
(which fixes the data position and the lr schedule), and every rank's RNG state.

Layout under `out_dir/state/`: `step-00000010/` folders and a `latest` file naming the newest.
Each save is written to a hidden temp folder and renamed into place by rank 0 once every rank
has finished writing, then `latest` is replaced atomically: a kill at any moment leaves the
previous save intact and never a half-written one that looks complete. DCP saves each rank's
shards (no gather on one rank) and reshards on load, so a run may resume on another world size.
All ranks must see the same file system (one node, or a shared folder).

A LoRA run (`trainable_only=True`) saves and restores only the tensors that train (the adapters
and their optimizer state): the frozen base is rebuilt from its own files, so a save is megabytes.
"""

from __future__ import annotations

import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import dist
from ..report import write_json_atomic, write_text_atomic

LATEST = "latest"
# DCP warns on every call without a process group; one process is a supported case here
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def latest_state(root: Path) -> Path | None:
    """The newest complete save under `root`, or None."""
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    folder = root / pointer.read_text().strip()
    return folder if (folder / "meta.json").is_file() else None


def _options(trainable_only: bool) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # strict=False on load: the frozen tensors are absent from a trainable-only save by design
    return StateDictOptions(ignore_frozen_params=trainable_only, strict=not trainable_only)


def _trainable(model_sd: dict[str, Any], scorer: nn.Module) -> dict[str, Any]:
    # ignore_frozen_params misses a frozen weight tied to another (the LM head of a tied model:
    # named_parameters lists it once, under the embedding), so filter by name as well
    names = {n for n, p in scorer.named_parameters() if p.requires_grad}
    return {k: v for k, v in model_sd.items() if k in names}


def save_state(
    root: Path,
    step: int,
    scorer: nn.Module,
    optimizer: torch.optim.Optimizer,
    meta: dict[str, Any],
    keep: int,
    trainable_only: bool = False,
) -> Path:
    """Save everything needed to continue after `step`. Collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final = root / f"step-{step:08d}"
    tmp = root / f".step-{step:08d}.tmp"
    if dist.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    model_sd, optim_sd = get_state_dict(scorer, optimizer, options=_options(trainable_only))
    model_sd = _trainable(model_sd, scorer) if trainable_only else model_sd
    # no_dist on one process: DCP's collective writer (each rank its own shards) needs no group there
    single = not dist.is_initialized()
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp), no_dist=single)
    rngs = dist.gather_objects(_rng_state())
    if dist.is_main():
        torch.save(rngs, tmp / "rng.pt")
        write_json_atomic(tmp / "meta.json", {**meta, "step": step, "world_size": dist.world_size()})
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        write_text_atomic(root / LATEST, final.name + "\n")
        saves = sorted(p for p in root.glob("step-*") if p.is_dir())
        for old in saves[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def load_state(
    folder: Path, scorer: nn.Module, optimizer: torch.optim.Optimizer, trainable_only: bool = False
) -> dict[str, Any]:
    """Restore model, optimizer and RNG from `folder`; return its meta (with the step). Collective."""
    import json

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    opts = _options(trainable_only)
    model_sd, optim_sd = get_state_dict(scorer, optimizer, options=opts)
    model_sd = _trainable(model_sd, scorer) if trainable_only else model_sd
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(folder), no_dist=not dist.is_initialized())
    set_state_dict(
        scorer, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"], options=opts
    )
    meta = json.loads((folder / "meta.json").read_text())
    rngs = torch.load(folder / "rng.pt", weights_only=False)
    if len(rngs) == dist.world_size():
        _set_rng_state(rngs[dist.rank()])
    return meta


def resume(
    root: Path,
    run_key: dict[str, Any],
    scorer: nn.Module,
    optimizer: torch.optim.Optimizer,
    trainable_only: bool = False,
) -> int:
    """Restore the newest save under `root` and return its step (0 when there is none). A save
    whose meta `run_key` differs from `run_key` (other settings, data or model) is refused, naming
    the folder. Collective."""
    import json

    latest = dist.broadcast_object(str(latest_state(root) or "") if dist.is_main() else None)
    if not latest:
        return 0
    saved = json.loads((Path(latest) / "meta.json").read_text())
    if saved.get("run_key") != json.loads(json.dumps(run_key)):
        raise RuntimeError(
            f"{latest} was saved by a run with other settings, data or model; remove {root} or "
            f"choose another out_dir"
        )
    return int(load_state(Path(latest), scorer, optimizer, trainable_only=trainable_only)["step"])
