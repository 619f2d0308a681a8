"""Runs a recipe on `half_arith`, for the end-to-end tests, plus their subprocess helpers.

    python tests/half_arith.py recipes/<recipe>.py key=value ...      (or under torchrun)

`half_arith` is arith with one change: its reward is 1 for half of all texts (by a CRC of the
text), so a random model (tiny-random) earns both correct and incorrect samples and every stage
of a loop has data; with the true arith grader tiny-random never scores.
"""

from __future__ import annotations

import os
import runpy
import socket
import subprocess
import sys
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).parent / "torchrun"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env() -> dict[str, str]:
    """Offline, quiet, one thread per rank."""
    return dict(
        os.environ,
        OMP_NUM_THREADS="1",
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        SELFTRAIN_PROGRESS="0",
        TQDM_DISABLE="1",
    )


def recipe_command(recipe: str, args: list[str], procs: int) -> list[str]:
    """The command running recipes/<recipe>.py on half_arith: plain python for 1 process, else torchrun."""
    script = [str(Path(__file__).resolve()), str(REPO / "recipes" / f"{recipe}.py"), *args]
    if procs == 1:
        return [sys.executable, *script]
    return [str(TORCHRUN), f"--nproc_per_node={procs}", f"--master_port={free_port()}", *script]


def run_recipe(recipe: str, args: list[str], procs: int, timeout: float = 420) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        recipe_command(recipe, args, procs), cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def main() -> None:
    import selftrain.tasks as tasks
    from selftrain.tasks.arith import Arith

    class HalfRewardArith(Arith):
        name = "half_arith"

        def reward(self, example, response):
            return 1.0 if zlib.crc32(response.encode()) % 2 == 0 else 0.0

    tasks._REGISTRY["half_arith"] = HalfRewardArith
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
