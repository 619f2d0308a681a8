"""torch.distributed set-up and the few collective helpers the rest of selftrain uses.

Everything works on one process with torch.distributed never initialised: `rank()` is 0,
`world_size()` is 1 and the gathers return their input. Under torchrun the backend is nccl
when the device is CUDA and gloo otherwise. The device is this rank's GPU when CUDA is present,
else the CPU; the environment variable SELFTRAIN_DEVICE (`cpu`, `cuda`) overrides that choice,
e.g. to run the CPU path on a GPU machine (the test suite sets it to `cpu`).
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_distributed(timeout_s: float = 1800) -> bool:
    """Initialise the process group when launched by torchrun; return whether it is distributed."""
    if is_initialized():
        return True
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) < 1:
        return False
    backend = "nccl" if _device_type() == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return True


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def _device_type() -> str:
    forced = os.environ.get("SELFTRAIN_DEVICE", "").strip().lower()
    if not forced:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if forced not in ("cpu", "cuda"):
        raise ValueError(f"SELFTRAIN_DEVICE must be 'cpu' or 'cuda', got {forced!r}")
    if forced == "cuda" and not torch.cuda.is_available():
        raise ValueError("SELFTRAIN_DEVICE=cuda but torch sees no CUDA device")
    return forced


def default_device() -> torch.device:
    """This rank's GPU when CUDA is present, else the CPU (SELFTRAIN_DEVICE overrides)."""
    if _device_type() == "cuda":
        return torch.device("cuda", local_rank() if is_initialized() else torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def shard_indices(n: int, rank_: int | None = None, world: int | None = None) -> list[int]:
    """Indices of `n` items that this rank handles: a strided split, balanced to within one."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    return list(range(r, n, w))


def gather_objects(local: Any) -> list[Any]:
    """Every rank's `local`, in rank order, on every rank."""
    if not is_initialized():
        return [local]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, local)
    return out


def broadcast_object(obj: T, src: int = 0) -> T:
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def map_sharded(items: Sequence[Any], results_for_shard: Any) -> list[Any]:
    """Run `results_for_shard(list_of_items) -> list_of_results` on this rank's shard and return
    all results in the original order on every rank."""
    idx = shard_indices(len(items))
    local = results_for_shard([items[i] for i in idx])
    if len(local) != len(idx):
        raise RuntimeError(f"sharded call returned {len(local)} results for {len(idx)} items")
    out: list[Any] = [None] * len(items)
    for r, chunk in enumerate(gather_objects(local)):
        for i, res in zip(shard_indices(len(items), r, world_size()), chunk):
            out[i] = res
    return out


def exit_with(code: int) -> None:
    """The end of a recipe: tear down the process group (if any) and exit with `code`."""
    if dist.is_initialized():
        dist.destroy_process_group()
    raise SystemExit(code)
