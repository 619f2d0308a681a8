"""Run under torchrun: every rank asks for a built-in model on an empty cache, rank 0 only after
the others have it, so a non-zero rank builds it. Each build is recorded in <out>/builds.txt (one
line: the rank and the model), and every rank then checks the folder is complete and loads.

Usage: torchrun --nproc_per_node=N tests/cache_builders.py OUT MODEL
"""

import sys
from pathlib import Path

import torch.distributed as tdist

from selftrain import dist, hf_folder, models


def main() -> None:
    out, name = Path(sys.argv[1]), sys.argv[2]
    dist.init_distributed()
    rank = dist.rank()
    for built in list(models._BUILDERS):
        real = models._BUILDERS[built]

        def recorded(dest: Path, real=real, built=built) -> None:
            with open(out / "builds.txt", "a") as fh:
                fh.write(f"{rank} {built}\n")
            real(dest)

        models._BUILDERS[built] = recorded
    if rank != 0:
        path = models.builtin_path(name)
    tdist.barrier()
    if rank == 0:
        path = models.builtin_path(name)
    found = hf_folder.published_problems(path)
    assert found == [], f"rank {rank}: {path} is not complete: {found}"
    model = models.load_model(name)
    assert sum(p.numel() for p in model.parameters()) > 0
    (out / f"ok-{rank}").write_text(str(path))
    tdist.barrier()
    tdist.destroy_process_group()


if __name__ == "__main__":
    main()
