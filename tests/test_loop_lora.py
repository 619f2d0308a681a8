"""The loop with LoRA, end to end on one process: the default config (recipes/configs/default.yaml)
with `lora.r=8`, shrunk to tiny-random on half_arith (tests/half_arith.py) and T = 3, so M1 (gold
SFT), M2 (SFT) and M3 (DPO) are each an adapter on the model before it. A second launch of the
same command resumes: every stage is skipped and the metrics are the same."""

from __future__ import annotations

import json
from pathlib import Path

from half_arith import run_recipe
from safetensors.torch import load_file
from test_iter_verify_e2e import ARGS as IV_ARGS

ARGS = [
    "config=recipes/configs/default.yaml",
    "lora.r=8",
    "model=tiny-random",
    "task=half_arith",
    "data.task_options={train_size: 6, test_size: 4, ood_size_per_level: 1}",
    "iterations=3",
    "n_samples=4",
    "sampling.max_new_tokens=12",
    "eval.n_samples=4",
    "eval.is_ns=[2,4]",
    "eval.max_new_tokens=12",
    "sft.global_batch_size=4",
    "dpo.global_batch_size=4",
    # LoRA's usual learning rates (the default's full-fine-tuning ones barely move an adapter)
    "sft.lr=1e-3",
    "dpo.lr=1e-4",
]


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_lora_loop_runs_end_to_end_chains_adapters_and_resumes(tmp_path):
    out = tmp_path / "run"
    run_recipe("iter_sft_dpo", [*ARGS, f"out_dir={out}"], procs=1)
    rows = _rows(out)
    assert [r["iteration"] for r in rows] == [0, 1, 2, 3]
    assert [r["step_kind"] for r in rows] == ["base", "gold_sft", "sft", "dpo"]
    for r in rows[1:]:
        assert r["train/skipped"] == 0 and r["train/steps"] >= 1 and 0 <= r["pass@1"] <= 1
    assert "train/rewards/margin" in rows[3]
    # each M_t is an adapter (kilobytes here) whose base is M_{t-1}: M0 by name, then the folders
    base = "tiny-random"
    for t in (1, 2, 3):
        adapter = out / f"iter_{t}" / "trainer" / "model"
        assert not (adapter / "config.json").exists()  # no full model per iteration
        meta = json.loads((adapter / "adapter_config.json").read_text())
        assert meta["base_model_name_or_path"] == base and meta["r"] == 8
        tensors = load_file(str(adapter / "adapter_model.safetensors"))
        assert len(tensors) == 28 and (adapter / "adapter_model.safetensors").stat().st_size < 500_000
        base = str(adapter.resolve())
    report = (out / "report.md").read_text()
    assert "| metric | M0 | M1 | M2 | M3 |" in report and "## Progress or regress since M1" in report
    for name in ("pass_at_1", "is_pass_at_n", "diversity", "ood", "pass_at_k"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000

    again = run_recipe("iter_sft_dpo", [*ARGS, f"out_dir={out}"], procs=1)
    assert "done earlier, skipped" in again.stdout + again.stderr
    assert _rows(out) == rows


def test_iter_verify_with_lora_trains_adapters_round_by_round(tmp_path):
    """Paper B's loop takes the same top-level lora section: f_{t+1} is an adapter on f_t."""
    out = tmp_path / "iv"
    # the 2-process end-to-end test's settings (tests/test_iter_verify_e2e.py), on one process
    run_recipe("iter_verify", [*IV_ARGS, "lora.r=4", f"out_dir={out}"], procs=1)
    bases = []
    for t in (0, 1):
        result = json.loads((out / f"round_{t}" / "train" / "result.json").read_text())
        adapter = out / f"round_{t}" / "trainer" / "model"
        if result["skipped"]:  # nothing kept: f_{t+1} = f_t, no adapter this round
            continue
        meta = json.loads((adapter / "adapter_config.json").read_text())
        assert meta["r"] == 4 and not (adapter / "config.json").exists()
        bases.append(meta["base_model_name_or_path"])
    assert bases and bases[0] == "tiny-random"


def test_a_lora_run_gets_its_own_default_folder():
    """`make run` then the same command with `lora.r=8` must not meet in one folder (the second
    would be refused as a run made with other settings)."""
    from selftrain.config import parse_cli
    from selftrain.loop.config import LoopConfig

    full = parse_cli(LoopConfig, ["config=recipes/configs/default.yaml", "paradigm=iter_sft_dpo"])
    lora = parse_cli(LoopConfig, ["config=recipes/configs/default.yaml", "paradigm=iter_sft_dpo", "lora.r=8"])
    assert full.run_dir == Path("runs/iter_sft_dpo-arith")
    assert lora.run_dir == Path("runs/iter_sft_dpo-arith-lora")
