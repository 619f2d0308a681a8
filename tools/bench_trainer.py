"""Trainer benchmark: SFT and DPO steps on the embedded SmolLM2-135M on CPU, selftrain vs TRL.

    .venv/bin/python tools/bench_trainer.py [--steps 3] [--trl-python PATH] [--only selftrain-sft,...]

Every variant runs in its own fresh subprocess, which reports its own peak resident memory
(VmHWM: model load, reference pass and training included) and the mean wall time of the timed
steps (the first step is a warm-up and is not timed). The batch is 4 sequences (SFT) or 4 pairs
(DPO) of GSM8K-style chat prompts with responses of 100-200 tokens, max length 512.

Tokens are counted the same way for both trainers, from the same token ids: every sequence's
prompt + response + EOS, i.e. for DPO the prompt counts once with the chosen and once with the
rejected answer (the tokens actually run through the model). tokens/s = tokens per step / step time.

TRL runs when `trl` imports in --trl-python (default: this interpreter, else /work/benchvenv/bin/python
when it exists); both sides use fp32 on CPU; TRL with gradient checkpointing on, as in its
measured reference. TRL's DPOTrainer keeps a second (reference) model in memory and scores the
reference every step; selftrain scores the reference once, caches it and frees the model.

GRPO variants (`selftrain-grpo`, `trl-grpo`): whole online steps, sampling included, on the same
GRPO_PROMPTS arith prompts (chat template applied once, the same text to both), GRPO_GROUP answers
each of at most GRPO_MAX_NEW tokens at temperature 1, the arith grader as reward, beta 0, one
update per batch, no gradient checkpointing; selftrain through its sampler with the weights
refreshed in process (`rl_block`), TRL's GRPOTrainer through HF `generate` (no vLLM). tokens/s =
completion tokens generated per step (each side counts its own; both may stop at EOS) / step time;
the weight-sync seconds of selftrain's steps are printed beside it.

LoRA variants (`-lora`: r = 16, alpha = 32, no dropout, every attention and MLP projection) run
the same batch and token counting: selftrain's adapters through PEFT under its own trainer, and
TRL's SFTTrainer / DPOTrainer given the same `peft_config` (TRL then scores the reference with
the adapter disabled, as selftrain does). Without trl importable, the TRL LoRA variants are
skipped with the reason printed (no reference numbers exist for them).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "smollm2-135m"
BATCH = 4
MAX_LENGTH = 512
RESPONSE_TOKENS = (100, 133, 166, 200)
# Measured on this machine with TRL 1.16 (issue 5 / MACHINE_NOTES.md); printed when TRL cannot run here.
LORA = {"r": 16, "alpha": 32.0, "dropout": 0.0}  # target_modules: selftrain's default, all projections
TRL_REFERENCE = {
    "trl-sft": {"tokens_per_s": 118.0, "peak_gib": 4.1},
    "trl-dpo": {"tokens_per_s": 86.0, "peak_gib": 6.2},
}
GRPO_PROMPTS, GRPO_GROUP, GRPO_MAX_NEW = 4, 8, 64
WORDS = (
    "so the total is the sum of each part and we add them step by step to check the result again "
    "because every number must be counted once"
).split()


def _questions(count: int) -> list[str]:
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "train.jsonl"
    if path.is_file():
        with open(path) as fh:
            return [json.loads(next(fh))["question"] for _ in range(count)]
    return [
        f"A shop sells {i + 3} boxes of {i + 7} pens each. How many pens does it sell?" for i in range(count)
    ]


def _text_of_tokens(tok, n: int, offset: int) -> str:
    """Plain text that tokenizes to exactly n - 1 tokens (the trainers append EOS)."""
    words = [WORDS[(offset + i) % len(WORDS)] for i in range(n * 2)]
    lo, hi = 1, len(words)
    while lo < hi:  # the longest word prefix with at most n - 1 tokens
        mid = (lo + hi + 1) // 2
        if len(tok(" ".join(words[:mid]), add_special_tokens=False)["input_ids"]) <= n - 1:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


def make_data(tok, batch: int = BATCH) -> tuple[list[dict], list[dict]]:
    """`batch` SFT records and DPO pairs (one step's batch) with prompts rendered through the chat
    template."""
    sft, pairs = [], []
    for i, q in enumerate(_questions(batch)):
        prompt = tok.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False
        )
        n = RESPONSE_TOKENS[i % len(RESPONSE_TOKENS)]
        sft.append({"prompt": prompt, "response": _text_of_tokens(tok, n, i)})
        pairs.append(
            {
                "prompt": prompt,
                "chosen": _text_of_tokens(tok, n, i),
                "rejected": _text_of_tokens(tok, RESPONSE_TOKENS[-1 - i % 4], i + 5),
            }
        )
    return sft, pairs


def count_tokens(tok, records: list[dict], kind: str) -> int:
    total = 0
    for r in records:
        p = len(tok(r["prompt"], add_special_tokens=False)["input_ids"])
        for key in ("response",) if kind == "sft" else ("chosen", "rejected"):
            total += p + len(tok(r[key], add_special_tokens=False)["input_ids"]) + 1
    return total


def _peak_rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# ------------------------------------------------------------------------------------ workers


def worker_selftrain(kind: str, records: list[dict], steps: int, model_path: str, extra: dict) -> dict:
    from selftrain.train import TrainConfig, train

    cfg = TrainConfig(
        lr=1e-6,
        epochs=steps + 1,
        global_batch_size=len(records),  # one step per epoch
        max_length=MAX_LENGTH,
        warmup_ratio=0.0,
        wandb_mode="disabled",
        beta=0.1,
        **extra,
    )
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        train(cfg, model_path, records, tmp, loss="sft" if kind == "sft" else "dpo")
        wall = time.perf_counter() - t0
        rows = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    times = [r["step_time_s"] for r in rows[1:]]
    return {"step_s": sum(times) / len(times), "wall_s": wall, "ref_s": rows[0].get("ref/time_s")}


def _step_clock(stamps: list[float]):
    """A TrainerCallback class that appends the wall time at every step's start and end."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

    return Clock


def worker_trl(kind: str, records: list[dict], steps: int, model_path: str, extra: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cuda = torch.cuda.is_available()  # on CUDA: fp32 weights under bf16 autocast, as selftrain's bf16
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    stamps: list[float] = []
    Clock = _step_clock(stamps)

    common = dict(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=len(records),
        gradient_accumulation_steps=1,
        max_steps=steps + 1,
        learning_rate=1e-6,
        lr_scheduler_type="constant",
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=not cuda,
        bf16=cuda,
        gradient_checkpointing=True,
        max_length=MAX_LENGTH,
        dataloader_num_workers=0,
        seed=0,
    )
    t0 = time.perf_counter()
    if kind == "sft":
        from trl import SFTConfig, SFTTrainer

        data = Dataset.from_list([{"prompt": r["prompt"], "completion": r["response"]} for r in records])
        trainer = SFTTrainer(
            model=model,
            args=SFTConfig(**common, completion_only_loss=True),
            train_dataset=data,
            processing_class=tok,
            callbacks=[Clock()],
            peft_config=_trl_peft_config(extra),
        )
    else:
        from trl import DPOConfig, DPOTrainer

        data = Dataset.from_list(records)
        trainer = DPOTrainer(
            model=model,
            args=DPOConfig(**common, beta=0.1),
            train_dataset=data,
            processing_class=tok,
            callbacks=[Clock()],
            peft_config=_trl_peft_config(extra),
        )
    trainer.train()
    wall = time.perf_counter() - t0
    times = [b - a for a, b in zip(stamps[0::2], stamps[1::2])][1:]
    return {"step_s": sum(times) / len(times), "wall_s": wall}


def grpo_prompts(tok) -> list[dict]:
    """GRPO_PROMPTS arith training questions: the rendered prompt text and the answer."""
    from selftrain.tasks import get_task

    task = get_task("arith", train_size=GRPO_PROMPTS)
    return [{"prompt": task.prompt(ex, tok), "answer": ex.answer, "id": ex.id} for ex in task.load("train")]


def worker_selftrain_grpo(records: list[dict], steps: int, model_path: str) -> dict:
    from selftrain.tasks import Example, get_task
    from selftrain.train import TrainConfig
    from selftrain.train.grpo import RLConfig, read_curve, rl_block
    from selftrain.train.rewards import task_reward

    task = get_task("arith")
    examples = [Example(r["id"], "", r["answer"], {}) for r in records]
    cfg = RLConfig(
        steps=steps + 1, prompts_per_step=len(records), group_size=GRPO_GROUP, max_new_tokens=GRPO_MAX_NEW,
        temperature=1.0, top_p=1.0, beta=0.0,
        optim=TrainConfig(lr=1e-6, warmup_ratio=0.0, micro_batch_size=GRPO_GROUP, wandb_mode="disabled"),
    )
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        rl_block(cfg, model_path, examples, [r["prompt"] for r in records], task_reward(task), tmp)
        wall = time.perf_counter() - t0
        curves = {k: read_curve(tmp, k)[1:] for k in ("sample_s", "train_s", "sync_s", "response_length")}
    step_s = [a + b + c for a, b, c in zip(curves["sample_s"], curves["train_s"], curves["sync_s"])]
    tokens = [n * len(records) * GRPO_GROUP for n in curves["response_length"]]
    return {
        "step_s": sum(step_s) / len(step_s), "wall_s": wall, "tokens_per_step": sum(tokens) / len(tokens),
        "sync_s": sum(curves["sync_s"]) / len(step_s),
    }


def worker_trl_grpo(records: list[dict], steps: int, model_path: str) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from selftrain.tasks import Example, get_task

    task = get_task("arith")
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    stamps: list[float] = []
    Clock = _step_clock(stamps)

    def reward(prompts, completions, answer, **kw):
        return [task.reward(Example("", "", a, {}), c) for c, a in zip(completions, answer)]

    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=len(records) * GRPO_GROUP,
        num_generations=GRPO_GROUP, max_completion_length=GRPO_MAX_NEW, temperature=1.0, top_p=1.0,
        beta=0.0, loss_type="grpo", learning_rate=1e-6, lr_scheduler_type="constant", max_steps=steps + 1,
        logging_steps=1,
        report_to=[], save_strategy="no", use_cpu=True, gradient_checkpointing=False, seed=0,
        dataloader_num_workers=0,
    )
    data = Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]} for r in records])
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=data,
                          processing_class=tok, callbacks=[Clock()])
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    times = [b - a for a, b in zip(stamps[0::2], stamps[1::2])][1:]
    key = "completions/mean_length"
    lengths = [h[key] for h in trainer.state.log_history if key in h]
    per_step = [n * len(records) * GRPO_GROUP for n in lengths[1:]]
    mean = sum(per_step) / len(per_step)
    return {"step_s": sum(times) / len(times), "wall_s": wall, "tokens_per_step": mean}


def _trl_peft_config(extra: dict):
    if "lora" not in extra:
        return None
    from peft import LoraConfig

    from selftrain.train.lora import DEFAULT_TARGETS

    lora = extra["lora"]
    return LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=list(DEFAULT_TARGETS),
        bias="none",
        task_type="CAUSAL_LM",
    )


def run_worker(spec: dict) -> None:
    kind = spec["variant"].split("-")[1]
    fn = worker_trl if spec["variant"].startswith("trl") else worker_selftrain
    torch_threads = spec.get("threads")
    if torch_threads:
        import torch

        torch.set_num_threads(torch_threads)
    if kind == "grpo":
        grpo = worker_trl_grpo if spec["variant"].startswith("trl") else worker_selftrain_grpo
        result = grpo(spec["records"], spec["steps"], spec["model_path"])
    else:
        result = fn(kind, spec["records"], spec["steps"], spec["model_path"], spec.get("extra", {}))
    result["peak_gib"] = _peak_rss_gib()
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
        result["peak_gpu_gib"] = sys.modules["torch"].cuda.max_memory_allocated() / 2**30
    print("RESULT " + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------ driver


def _trl_python(arg: str | None) -> str | None:
    candidates = [arg] if arg else [sys.executable, "/work/benchvenv/bin/python"]
    for py in candidates:
        if py and Path(py).exists():
            ok = subprocess.run([py, "-c", "import trl"], capture_output=True).returncode == 0
            if ok:
                return py
    return None


def _launch(python: str, spec: dict, timeout: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(spec, fh)
    try:
        env = {**os.environ, "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
        # a TRL interpreter without selftrain installed imports the workers' selftrain parts from here
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                          env.get("PYTHONPATH")]))
        proc = subprocess.run(
            [python, __file__, "--worker", fh.name], capture_output=True, text=True, timeout=timeout, env=env
        )
    finally:
        os.unlink(fh.name)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{spec['variant']} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def variant_spec(
    variant: str, records: list[dict], steps: int, model_path: str, micro: int, ac: bool
) -> dict:
    """A worker's spec for `variant` (selftrain-sft[-lora][-ac], trl-dpo[-lora], ...); `ac` turns
    activation checkpointing on for every selftrain variant."""
    parts = variant.split("-")[2:]  # suffixes: -lora, -ac, in either order
    lora = {"lora": dict(LORA)} if "lora" in parts else {}
    return {
        "variant": variant,
        "records": records,
        "steps": steps,
        "model_path": model_path,
        "extra": {"micro_batch_size": micro, "activation_checkpointing": ac or "ac" in parts, **lora}
        if variant.startswith("selftrain")
        else lora,
    }


def measure(spec: dict, python: str, tokens: int | None, timeout: int) -> dict:
    """Run one variant in a fresh `python` process; its result with tokens/s from `tokens` per step
    (None: the tokens the worker counted itself, as GRPO's generated tokens)."""
    r = _launch(python, spec, timeout)
    r["tokens_per_s"] = (tokens if tokens is not None else r["tokens_per_step"]) / r["step_s"]
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant (plus one warm-up step)")
    ap.add_argument("--trl-python", default=None, help="python with trl installed (default: auto)")
    ap.add_argument(
        "--only",
        default="",
        help="comma list of variants: selftrain-sft[-ac],selftrain-dpo[-ac],trl-sft,trl-dpo, and the "
        "LoRA ones selftrain-sft-lora[-ac],selftrain-dpo-lora[-ac],trl-sft-lora,trl-dpo-lora "
        "(-ac: with activation checkpointing)",
    )
    ap.add_argument("--sft-micro", type=int, default=1, help="selftrain SFT micro-batch size (sequences)")
    ap.add_argument("--dpo-micro", type=int, default=1, help="selftrain DPO micro-batch size (pairs)")
    ap.add_argument("--ac", action="store_true", help="every selftrain variant with activation checkpointing")
    ap.add_argument("--timeout", type=int, default=3600)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        run_worker(json.loads(Path(args.worker).read_text()))
        return

    from selftrain.models import load_tokenizer, resolve_model_path

    model_path = resolve_model_path(MODEL)
    tok = load_tokenizer(model_path)
    sft, pairs = make_data(tok)
    tokens = {"sft": count_tokens(tok, sft, "sft"), "dpo": count_tokens(tok, pairs, "dpo"), "grpo": None}
    data = {"sft": sft, "dpo": pairs, "grpo": grpo_prompts(tok)}
    trl_py = _trl_python(args.trl_python)
    variants = args.only.split(",") if args.only else [
        "selftrain-sft", "selftrain-sft-ac", "trl-sft", "selftrain-dpo", "selftrain-dpo-ac", "trl-dpo",
        "selftrain-sft-lora", "selftrain-sft-lora-ac", "trl-sft-lora",
        "selftrain-dpo-lora", "selftrain-dpo-lora-ac", "trl-dpo-lora",
        "selftrain-grpo", "trl-grpo",
    ]
    micro = {"sft": args.sft_micro, "dpo": args.dpo_micro, "grpo": GRPO_GROUP}
    print(
        f"model {MODEL}, batch {BATCH}, responses {RESPONSE_TOKENS} tokens, max length {MAX_LENGTH}, "
        f"fp32 CPU, {os.cpu_count()} cores; tokens per step: SFT {tokens['sft']}, DPO {tokens['dpo']} "
        "(prompt + response + EOS of every sequence; DPO counts the prompt with each answer)"
    )
    print(
        f"selftrain: micro-batches SFT {args.sft_micro} sequences / DPO {args.dpo_micro} pairs (gradient "
        f"accumulation up to batch {BATCH}), activation checkpointing only in -ac variants unless --ac; "
        f"TRL: {'python ' + trl_py if trl_py else 'not importable here'} (gradient checkpointing on)"
    )
    results: dict[str, dict] = {}
    for v in variants:
        kind = v.split("-")[1]
        if v.startswith("trl") and not trl_py and v not in TRL_REFERENCE:
            print(f"{v:17s} skipped: trl is not importable here (pip install trl to measure it)", flush=True)
            continue
        if v.startswith("trl") and not trl_py:
            ref = TRL_REFERENCE[v]
            results[v] = {**ref, "note": "reference, not measured in this run"}
            print(
                f"{v:17s} {ref['tokens_per_s']:8.1f} tokens/s  peak {ref['peak_gib']:.2f} GiB  "
                "(reference, not measured in this run: TRL 1.16 on this machine, issue 5)",
                flush=True,
            )
            continue
        spec = variant_spec(v, data[kind], args.steps, model_path, micro[kind], args.ac)
        r = measure(spec, trl_py if v.startswith("trl") else sys.executable, tokens[kind], args.timeout)
        results[v] = r
        ref = f", one-off reference pass {r['ref_s']:.1f} s" if r.get("ref_s") else ""
        if kind == "grpo":
            sync = f", weight sync {r['sync_s'] * 1000:.0f} ms/step" if "sync_s" in r else ""
            ref = f", {r['tokens_per_step']:.0f} generated tokens/step{sync}"
        print(
            f"{v:17s} {r['tokens_per_s']:8.1f} tokens/s  peak {r['peak_gib']:.2f} GiB  "
            f"({r['step_s']:.2f} s/step, {r['wall_s']:.0f} s in all{ref})",
            flush=True,
        )
    for kind, speed_goal, mem_goal in (("sft", 1.2, 0.6), ("dpo", 1.5, 0.6)):
        for suffix, what in (("", "no activation checkpointing"), ("-ac", "activation checkpointing")):
            a, b = results.get(f"selftrain-{kind}{suffix}"), results.get(f"trl-{kind}")
            if a and b:
                tag = " (vs reference numbers)" if "note" in b else ""
                print(
                    f"{kind.upper()} ({what}): selftrain / TRL = "
                    f"{a['tokens_per_s'] / b['tokens_per_s']:.2f}x tokens/s (target >= {speed_goal}x), "
                    f"{a['peak_gib'] / b['peak_gib']:.2f}x peak memory (target <= {mem_goal}x){tag}"
                )
    a, b = results.get("selftrain-grpo"), results.get("trl-grpo")
    if a and b:
        print(
            f"GRPO (whole steps, sampling included): selftrain / TRL = "
            f"{a['tokens_per_s'] / b['tokens_per_s']:.2f}x generated tokens/s (target >= 1.5x), "
            f"{a['peak_gib'] / b['peak_gib']:.2f}x peak memory (target <= 0.7x)"
        )
    for kind, goals in (("sft", ""), ("dpo", " (targets >= 1.5x tokens/s, <= 0.7x memory)")):
        for suffix in ("", "-ac"):
            a, b = results.get(f"selftrain-{kind}-lora{suffix}"), results.get(f"trl-{kind}-lora")
            if a and b:
                print(
                    f"LoRA {kind.upper()}{suffix}: selftrain / TRL+PEFT = "
                    f"{a['tokens_per_s'] / b['tokens_per_s']:.2f}x tokens/s, "
                    f"{a['peak_gib'] / b['peak_gib']:.2f}x peak memory{goals}"
                )
    for kind, goal in (("sft", 0.6), ("dpo", None)):
        a, b = results.get(f"selftrain-{kind}-lora"), results.get(f"selftrain-{kind}")
        if a and b:
            target = f" (target <= {goal}x)" if goal else ""
            print(
                f"{kind.upper()}: selftrain LoRA / full fine-tuning = "
                f"{a['peak_gib'] / b['peak_gib']:.2f}x peak memory{target}, "
                f"{a['tokens_per_s'] / b['tokens_per_s']:.2f}x tokens/s"
            )


if __name__ == "__main__":
    main()
