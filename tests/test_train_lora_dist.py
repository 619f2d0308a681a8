"""LoRA under 2-process FSDP2 (gloo) equals one process: SFT killed after a sharded (adapter-only)
state save and resumed, then DPO whose reference log-probs the sharded policy computes itself
with its adapter disabled (every rank running the same number of forwards, placeholders included:
5 pairs in micro-batches of 2 leave one rank a chunk short).

Tolerances follow tests/test_train_dist.py: a few steps at lr = 1e-4, where an AdamW entry whose
gradient differs between the runs only by the order of float additions moves by at most ~lr a
step, so 1e-4 bounds the weights; losses and margins agree to 1e-4 for the same reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from killers import kill_after_save
from safetensors.torch import load_file
from test_train_dist import _rows, _torchrun, _write  # the same launcher and file helpers

from selftrain.train import TrainConfig, train

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)

WORKER = kill_after_save("int(sys.argv[3])") + """
from selftrain import dist
from selftrain.train import TrainConfig, train
dist.init_distributed()
cfg = eval(sys.argv[4])
train(TrainConfig(**cfg), "tiny-random", sys.argv[1] + "/sft.jsonl", sys.argv[2] + "/sft")
train(TrainConfig(**{**cfg, "save_every": 0}), "tiny-random", sys.argv[1] + "/pairs.jsonl",
      sys.argv[2] + "/dpo", loss="dpo")
"""

CFG = dict(
    lr=1e-4,
    epochs=2,
    global_batch_size=4,
    micro_batch_size=1,
    save_every=2,
    warmup_ratio=0.0,
    wandb_mode="disabled",
    lora={"r": 4},
)


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model" / "adapter_model.safetensors"))


def test_two_process_lora_sft_resume_and_dpo_equal_one_process(tmp_path):
    sft = [
        {"prompt": f"Question {i}: what is {i}+{i}?", "response": f"It is {2 * i}." * (1 + i % 3)}
        for i in range(5)
    ]
    pairs = [
        {"prompt": f"What is {i} times 3?", "chosen": f"{3 * i}", "rejected": f"Maybe {3 * i + 1}."}
        for i in range(5)
    ]
    for d in ("d1", "d2"):  # separate folders: each run computes its own reference log-probs
        (tmp_path / d).mkdir()
        _write(tmp_path / d / "sft.jsonl", sft)
        _write(tmp_path / d / "pairs.jsonl", pairs)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    two = tmp_path / "two"
    killed = _torchrun([str(script), str(tmp_path / "d2"), str(two), "2", repr(CFG)])
    assert killed.returncode != 0 and not (two / "sft" / "model").exists(), killed.stderr[-2000:]
    assert (two / "sft" / "state" / "latest").read_text().strip() == "step-00000002"
    resumed = _torchrun([str(script), str(tmp_path / "d2"), str(two), "0", repr(CFG)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    one = tmp_path / "one"
    train(TrainConfig(**CFG), "tiny-random", str(tmp_path / "d1" / "sft.jsonl"), one / "sft")
    train(
        TrainConfig(**{**CFG, "save_every": 0}),
        "tiny-random",
        str(tmp_path / "d1" / "pairs.jsonl"),
        one / "dpo",
        loss="dpo",
    )
    r1, r2 = _rows(one / "sft"), _rows(two / "sft")
    assert [r["step"] for r in r2] == [1, 2, 3, 4] and r2[2]["resumed_from"] == 2
    for a, b in zip(r1, r2):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-4) and b["tokens"] == a["tokens"]
    d1, d2 = _rows(one / "dpo"), _rows(two / "dpo")
    assert len(d1) == len(d2) == 4
    for a, b in zip(d1, d2):
        for key in ("loss", "rewards/margin", "logps/chosen"):
            assert b[key] == pytest.approx(a[key], abs=1e-4), key
    ref1 = torch.load(next((tmp_path / "d1").glob("pairs.jsonl.ref-logps-*.pt")), weights_only=True)
    ref2 = torch.load(next((tmp_path / "d2").glob("pairs.jsonl.ref-logps-*.pt")), weights_only=True)
    # the same base weights; only the ranks' batch composition differs (padding-free rows)
    torch.testing.assert_close(ref2["logps"], ref1["logps"], atol=1e-4, rtol=0)
    for run in ("sft", "dpo"):
        a, b = _adapter(one / run), _adapter(two / run)
        assert a.keys() == b.keys() and len(a) == 28
        for name in a:
            torch.testing.assert_close(b[name], a[name], atol=1e-4, rtol=0, msg=f"{run} {name}")
        meta = json.loads((two / run / "model" / "adapter_config.json").read_text())
        assert meta["base_model_name_or_path"] == "tiny-random"
