"""Sampler throughput: selftrain vs HF `generate` (and vLLM when importable), one process run.

Cases (the issue's): 8 math word problems through the model's chat template x n=8, and 64 x 8;
temperature 0.75, top-p 0.95, at most 256 new tokens. Generated tokens are counted up to and
including EOS. Prompts: GSM8K test questions read in place from ../shared/data when present,
otherwise built-in questions. HF generate runs batched and left-padded with the same settings;
for 64 x 8 it runs 8 prompts (64 rows) per call and, by default, only the first --hf-chunks
calls (HF is slow; its rate is per token, so a subset measures it).

    .venv/bin/python tools/bench_sampler.py [--cases 8x8,64x8] [--max-new-tokens 256]
        [--no-hf] [--hf-chunks 1] [--threads N] [--model smollm2-135m] [--questions FILE]
        [--device cpu|cuda] [--dtype float32|bfloat16]

On CUDA (bf16 by default; HF generate then runs on the GPU in the same dtype) it also prints
decode tokens/s and the fraction of the memory-bandwidth roofline (weights + KV read per decode
step vs a measured device-to-device copy bandwidth).
"""

from __future__ import annotations  # noqa: I001 (selftrain is imported before torch on purpose)

import argparse
import json
import time
from pathlib import Path

import selftrain  # noqa: F401  (before torch: it sets GOMP_SPINCOUNT, see selftrain/__init__.py)
import torch

# vLLM 0.32 CPU build on this 2-core machine, from MACHINE_NOTES.md: NOT measured by this script
VLLM_REFERENCE = {"8x8": 263.0, "64x8": 309.0}  # 64x8: middle of the noted 297-321 range

FALLBACK_QUESTIONS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "A baker makes 12 trays of 24 cookies and sells all but 30. How many cookies did he sell?",
    "Tom reads 15 pages a day for 2 weeks, then 20 pages a day for 10 days. How many pages did he read?",
    "A shirt costs $25 and is on sale for 20% off. How much do 3 shirts cost on sale?",
    "Sara has 3 times as many marbles as Ben. Together they have 64 marbles. How many does Sara have?",
    "A train travels 60 miles per hour for 3 hours and 45 miles per hour for 2 hours. How far does it go?",
    "There are 5 boxes with 17 apples each. 23 apples are rotten. How many good apples are there?",
    "Mia saves $7 every week. How many weeks does she need to buy a bike that costs $133?",
]


def load_questions(count: int, path: Path | None = None) -> tuple[list[str], str]:
    """`count` questions from a GSM8K-style jsonl (`path`, else ../shared/data when present, else
    built-in ones). A given path that cannot be read is an error, never a silent fallback."""
    if path is not None and not path.is_file():
        raise SystemExit(f"--questions: no such file: {path}")
    path = path or Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"
    if path.is_file():
        rows = []
        with open(path) as fh:
            for line_no, line in zip(range(1, count + 1), fh):
                try:
                    rows.append(json.loads(line)["question"])
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    problem = f"not a JSON object with a 'question' field ({e})"
                    raise SystemExit(f"{path}:{line_no}: {problem}") from e
        return rows, str(path)
    qs = [FALLBACK_QUESTIONS[k % len(FALLBACK_QUESTIONS)] + f" (Problem {k + 1}.)" if k >= 8 else
          FALLBACK_QUESTIONS[k] for k in range(count)]
    return qs, "built-in questions"


def chat_prompts(tokenizer, questions: list[str]) -> list[str]:
    return [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                          tokenize=False) for q in questions]


def tokens_until_eos(ids: list[int], eos: set[int]) -> int:
    for k, t in enumerate(ids):
        if t in eos:
            return k + 1
    return len(ids)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_selftrain(sampler, prompts, n, args) -> dict:
    _sync(sampler.device)
    t0 = time.perf_counter()
    before = sampler.stats.generated_tokens
    outs = sampler.generate(prompts, n=n, temperature=0.75, top_p=0.95,
                            max_new_tokens=args.max_new_tokens, seed=0)
    _sync(sampler.device)
    sec = time.perf_counter() - t0
    tokens = sum(len(c.token_ids) for o in outs for c in o)
    assert tokens == sampler.stats.generated_tokens - before
    return {"tokens": tokens, "seconds": sec, "tok_s": tokens / sec}


def bench_hf(model, tokenizer, prompts, n, args, eos: set[int]) -> dict:
    tokenizer.padding_side = "left"
    tokens, sec = 0, 0.0
    chunks = [prompts[k : k + 8] for k in range(0, len(prompts), 8)]
    if len(chunks) > 1:
        chunks = chunks[: args.hf_chunks]
    for chunk in chunks:
        enc = tokenizer(chunk, return_tensors="pt", padding=True).to(model.device)
        torch.manual_seed(0)
        _sync(model.device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**enc, do_sample=True, temperature=0.75, top_p=0.95, top_k=0,
                                 max_new_tokens=args.max_new_tokens, num_return_sequences=n,
                                 pad_token_id=tokenizer.pad_token_id)
        _sync(model.device)
        sec += time.perf_counter() - t0
        width = enc["input_ids"].shape[1]
        tokens += sum(tokens_until_eos(row[width:].tolist(), eos) for row in out)
    return {"tokens": tokens, "seconds": sec, "tok_s": tokens / sec, "prompts": sum(len(c) for c in chunks)}


def bench_vllm(model_path: str, prompts, n, args) -> dict | None:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return None
    from vllm import LLM, SamplingParams

    llm = LLM(model=model_path, seed=0)
    sp = SamplingParams(n=n, temperature=0.75, top_p=0.95, max_tokens=args.max_new_tokens, seed=0)
    t0 = time.perf_counter()
    outs = llm.generate(prompts, sp)
    sec = time.perf_counter() - t0
    tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
    return {"tokens": tokens, "seconds": sec, "tok_s": tokens / sec}


def _copy_bandwidth(device: torch.device, nbytes: int) -> float:
    """Measured device-to-device copy bandwidth in bytes/s (bytes read + written per copy)."""
    x = torch.empty(nbytes, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    y.copy_(x)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    _sync(device)
    return 2 * x.numel() * 10 / (time.perf_counter() - t0)


def decode_roofline(sampler, copy_bytes: int = 256 * 1024 * 1024) -> dict:
    """Decode tokens/s, decode-only steps/s and achieved / measured-peak memory bandwidth over the
    sampler's decode-only steps so far: weights + KV read per step vs a measured copy bandwidth."""
    st = sampler.stats
    if st.decode_steps == 0:
        return {"decode_steps": 0}
    m = sampler.model
    elt = torch.tensor([], dtype=m.dtype).element_size()
    tensors = [m.embed, m.final_norm] + ([] if m.lm_head is m.embed else [m.lm_head])
    weight_bytes = sum(t.numel() for t in tensors) * elt
    for w in m.layers:
        parts = (w.qkv, w.o, w.gate_up, w.down, w.input_norm, w.post_norm)
        weight_bytes += sum(t.numel() for t in parts) * elt
    a = m.args
    kv_bytes = st.decode_step_context * a.num_layers * 2 * a.num_kv_heads * a.head_dim * elt
    moved = weight_bytes * st.decode_steps + kv_bytes
    peak = _copy_bandwidth(sampler.device, copy_bytes)
    achieved = moved / st.decode_step_seconds
    return {
        "decode_steps": st.decode_steps,
        "decode_tok_s": st.decode_step_tokens / st.decode_step_seconds,
        "decode_steps_per_s": st.decode_steps / st.decode_step_seconds,
        "mean_decode_step_ms": 1000 * st.decode_step_seconds / st.decode_steps,
        "weight_bytes": weight_bytes,
        "achieved_gb_s": achieved / 1e9,
        "copy_gb_s": peak / 1e9,
        "roofline_fraction": achieved / peak,
    }


def roofline_line(r: dict) -> str:
    if not r.get("decode_steps"):
        return "no decode-only steps"
    return (f"decode {r['decode_tok_s']:.0f} tok/s over {r['decode_steps']} decode-only steps "
            f"({r['mean_decode_step_ms']:.2f} ms each); {r['achieved_gb_s']:.0f} GB/s of measured "
            f"{r['copy_gb_s']:.0f} GB/s copy bandwidth = {100 * r['roofline_fraction']:.0f}% of the roofline")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--cases", default="8x8,64x8")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--hf-chunks", type=int, default=1, help="8-prompt HF calls measured in the 64x8 case")
    ap.add_argument("--threads", type=int, default=None)
    # 512: every sequence of the 64 x 8 case decodes in one batch (measured ~10% faster on the
    # 2-core CPU than 128 rows); the pool holds them all (~7.5 GB in fp32), so nothing is preempted
    ap.add_argument("--max-num-seqs", type=int, default=512)
    ap.add_argument("--kv-cache-tokens", type=int, default=163840)
    ap.add_argument("--questions", type=Path, default=None, help="GSM8K jsonl (default: ../shared/data)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on CUDA")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from selftrain.models import load_model, load_tokenizer, resolve_model_path
    from selftrain.sampler import Sampler

    tokenizer = load_tokenizer(args.model)
    t0 = time.perf_counter()
    sampler = Sampler(args.model, max_num_seqs=args.max_num_seqs, kv_cache_tokens=args.kv_cache_tokens,
                      device=args.device, dtype=args.dtype)
    startup = time.perf_counter() - t0
    sampler.generate(["warm up"], max_new_tokens=4)
    print(f"model {args.model}; device {sampler.device}; dtype {sampler.dtype}; "
          f"backend {sampler.backend_name}; torch threads {torch.get_num_threads()}; "
          f"selftrain start-up {startup:.1f} s")
    # HF generate runs on the sampler's device in its dtype
    hf_model = None if args.no_hf else load_model(args.model, dtype=sampler.dtype, device=sampler.device)
    eos = sampler.eos_ids
    for case in args.cases.split(","):
        num_prompts, n = (int(v) for v in case.split("x"))
        questions, source = load_questions(num_prompts, args.questions)
        prompts = chat_prompts(tokenizer, questions)
        print(f"\n== {case}: {num_prompts} prompts x n={n}, T=0.75, top-p 0.95, "
              f"max {args.max_new_tokens} new tokens; prompts from {source}")
        ours = bench_selftrain(sampler, prompts, n, args)
        print(f"selftrain     {ours['tok_s']:8.1f} generated tok/s  ({ours['tokens']} tokens in "
              f"{ours['seconds']:.1f} s)")
        if sampler.device.type == "cuda":
            print("  GPU: " + roofline_line(decode_roofline(sampler)))
        if hf_model is not None:
            hf = bench_hf(hf_model, tokenizer, prompts, n, args, eos)
            print(f"HF generate   {hf['tok_s']:8.1f} generated tok/s  ({hf['tokens']} tokens in "
                  f"{hf['seconds']:.1f} s on {hf['prompts']} of the prompts)")
            print(f"  measured ratio selftrain / HF generate: {ours['tok_s'] / hf['tok_s']:.2f}x")
        if sampler.device.type != "cpu":  # the vLLM references below are CPU numbers
            continue
        vl = bench_vllm(resolve_model_path(args.model), prompts, n, args)
        if vl is not None:
            print(f"vLLM          {vl['tok_s']:8.1f} generated tok/s  (measured in this run)")
            print(f"  measured ratio selftrain / vLLM: {ours['tok_s'] / vl['tok_s']:.2f}x")
        else:
            ref = VLLM_REFERENCE.get(case)
            if ref:
                print(f"vLLM (reference, NOT measured in this run: vLLM is not installed; MACHINE_NOTES.md "
                      f"value for this 2-core CPU) {ref:.0f} tok/s")
                ratio = ours["tok_s"] / ref
                print(f"  ratio to that reference (different run, different load): {ratio:.2f}x")


if __name__ == "__main__":
    main()
