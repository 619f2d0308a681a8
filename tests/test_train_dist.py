"""2-process FSDP2 (gloo) runs equal 1-process runs with the same global batch.

The SFT run is also killed right after a (sharded) state save and resumed under torchrun, so the
comparison covers FSDP sharding, gradient accumulation with a placeholder micro-batch (the last
global batch does not fill both ranks), and resuming sharded model and optimizer state.

The weights are compared after a few steps at a small lr: AdamW divides each update by the root
of the gradient's second moment, so an entry whose gradient is ~1e-9 on both sides (and differs
only by the order of float additions) moves by up to lr per step either way; lr=1e-4 keeps that
far below the 1e-4 tolerance while every other weight moves by ~lr per step.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from killers import kill_after_save
from safetensors.torch import load_file

from selftrain.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)

WORKER = kill_after_save("int(sys.argv[3])") + """
from selftrain import dist
from selftrain.train import TrainConfig, train
dist.init_distributed()
cfg = TrainConfig(**eval(sys.argv[4]))
train(cfg, "tiny-random", sys.argv[1], sys.argv[2])
"""

SFT_CFG = dict(
    lr=1e-4,
    epochs=2,
    global_batch_size=4,
    micro_batch_size=1,
    save_every=2,
    warmup_ratio=0.0,
    wandb_mode="disabled",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _assert_same_weights(a: Path, b: Path, atol: float) -> None:
    wa, wb = (
        load_file(str(a / "model" / "model.safetensors")),
        load_file(str(b / "model" / "model.safetensors")),
    )
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], atol=atol, rtol=0, msg=name)


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_two_process_sft_with_kill_and_resume_equals_one_process(tmp_path):
    recs = [
        {"prompt": f"Question {i}: what is {i}+{i}?", "response": f"It is {2 * i}." * (1 + i % 3)}
        for i in range(5)
    ]
    data = _write(tmp_path / "sft.jsonl", recs)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out2 = tmp_path / "two"
    killed = _torchrun([str(script), str(data), str(out2), "2", repr(SFT_CFG)])
    assert killed.returncode != 0 and not (out2 / "model").exists(), killed.stderr[-2000:]
    assert (out2 / "state" / "latest").read_text().strip() == "step-00000002"
    resumed = _torchrun([str(script), str(data), str(out2), "0", repr(SFT_CFG)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    out1 = tmp_path / "one"
    train(TrainConfig(**SFT_CFG), "tiny-random", str(data), out1)  # no torch.distributed at all
    one, two = _rows(out1), _rows(out2)
    assert [r["step"] for r in two] == [1, 2, 3, 4] and two[2]["resumed_from"] == 2
    for r1, r2 in zip(one, two):
        assert r2["loss"] == pytest.approx(r1["loss"], abs=1e-4)
        assert r2["tokens"] == r1["tokens"]
    _assert_same_weights(out1, out2, atol=1e-4)


def test_two_process_rpo_recipe_equals_one_process(tmp_path):
    pairs = [
        {
            "prompt": [{"role": "user", "content": f"What is {i} times 3?"}],
            "chosen": f"{3 * i}",
            "rejected": f"Probably {3 * i + 1}, but I am not sure.",
        }
        for i in range(3)
    ]
    (tmp_path / "d1").mkdir()
    (tmp_path / "d2").mkdir()
    data1 = _write(tmp_path / "d1" / "pairs.jsonl", pairs)  # separate folders: each run computes its own
    data2 = _write(tmp_path / "d2" / "pairs.jsonl", pairs)  # reference log-probs
    over = dict(
        lr=1e-4,
        epochs=2,
        global_batch_size=3,
        micro_batch_size=1,
        beta=0.05,
        rpo_alpha=1.0,
        warmup_ratio=0.0,
        wandb_mode="disabled",
    )
    args = [f"{k}={v}" for k, v in over.items()]
    out2 = tmp_path / "two"
    r = _torchrun(
        [
            "recipes/dpo.py",
            "config=recipes/configs/dpo.yaml",
            "model=tiny-random",
            f"data={data2}",
            f"out={out2}",
            "loss=rpo",
            "save_every=0",
            *args,
        ]
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (
        len(list(data2.parent.glob("pairs.jsonl.ref-logps-*.pt"))) == 1
    )  # computed by both ranks, saved once

    cfg = TrainConfig(**{**over, "grad_clip": 1.0, "weight_decay": 0.0, "max_length": 512})
    out1 = tmp_path / "one"
    train(cfg, "tiny-random", str(data1), out1, loss="rpo")
    one, two = _rows(out1), _rows(out2)
    assert len(one) == len(two) == 2
    for r1, r2 in zip(one, two):
        for key in ("loss", "rewards/margin", "nll/chosen"):
            assert r2[key] == pytest.approx(r1[key], abs=1e-4), key
    _assert_same_weights(out1, out2, atol=1e-4)
