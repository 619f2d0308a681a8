"""Time and peak memory of the fused log-prob kernel vs the naive path (forward + backward).

    .venv/bin/python tools/bench_kernels.py [--shapes smollm2,llama8b] [--repeats 3]
        [--device cpu|cuda] [--dtype float32|bfloat16] [--threads N]

Variants: naive (full logits -> log_softmax -> gather, autograd), fused (selftrain.kernels with
the path SELFTRAIN_KERNELS picks: chunked torch on CPU, Triton on CUDA), and Liger-Kernel's fused
linear cross entropy when `liger_kernel` imports (it is not installed by this project).

The loss is sum(logp * g) with a random per-token g, i.e. the general case where the upstream
gradient differs per token (as in DPO); each variant does forward + backward w.r.t. hidden and
weight. On CPU, fused_uniform is the token-mean loss -sum(logp)/N with uniform_grad=True (both
gradients formed in the forward: 3 matmuls instead of 4).

Time: min (and median) wall seconds over --repeats runs after one warm-up run, and on CPU also the
min process CPU seconds (user + sys of all threads), which is less disturbed when other jobs share
the cores (the machine may be shared: compare the mins, and run the tool twice).

Peak memory, honestly measured:
- CPU: every variant runs in a fresh subprocess. After the inputs exist, the kernel's peak-RSS
  counter is reset (`5` written to /proc/self/clear_refs) and the peak (VmHWM) over the warm-up
  and timed runs is read back; reported = peak - RSS right after the reset, i.e. everything the
  variant allocated (logits, softmax, gradients of hidden and weight) beyond its inputs. The
  worker runs with MALLOC_MMAP_THRESHOLD_=131072 so freed memory leaves RSS at once, and the reset
  follows one warm-up run so library start-up allocations are not charged to the variant.
- CUDA: torch.cuda.max_memory_allocated over the same runs minus the inputs' allocation.
Both variants hold grad_weight [V, H] at the end, so that is part of both peaks.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SHAPES = {
    "smollm2": (2048, 576, 49152),  # SmolLM2-135M: 2048 tokens, hidden 576, vocab 49152
    "llama8b": (8192, 4096, 128256),  # Llama-3-8B
    "tiny": (64, 32, 512),  # tools/gpu_check.py --dry-run: the same code paths in a second
}


def variants_for(device: str) -> list[str]:
    """The variants measured on `device`: naive and fused, the uniform-gradient fused path on CPU,
    Liger's fused linear cross entropy on CUDA when `liger_kernel` imports."""
    import importlib.util

    variants = ["naive", "fused"] + (["fused_uniform"] if device == "cpu" else [])
    if device == "cuda" and importlib.util.find_spec("liger_kernel") is not None:
        variants.append("liger")
    return variants


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _worker(variant: str, shape: str, device: str, repeats: int, dtype_name: str) -> dict:
    import torch

    n_tok, hid, voc = SHAPES[shape]
    dtype = getattr(torch, dtype_name)
    gen = torch.Generator(device=device).manual_seed(0)
    # In-place initialisation: no temporaries that would inflate the baseline.
    hidden = torch.empty(n_tok, hid, device=device, dtype=dtype).normal_(generator=gen).requires_grad_()
    weight = (
        torch.empty(voc, hid, device=device, dtype=dtype).normal_(0, 0.02, generator=gen).requires_grad_()
    )
    targets = torch.randint(0, voc, (n_tok,), device=device, generator=gen)
    upstream = torch.empty(n_tok, device=device).normal_(generator=gen)

    if variant == "naive":
        import torch.nn.functional as F

        def step() -> None:
            logits = hidden @ weight.t()
            logp = F.log_softmax(logits.float(), dim=-1).gather(1, targets[:, None]).squeeze(1)
            (logp * upstream).sum().backward()

    elif variant == "fused":
        from selftrain.kernels import fused_logprobs

        def step() -> None:
            (fused_logprobs(hidden, weight, targets) * upstream).sum().backward()

    elif variant == "fused_uniform":  # token-mean loss: gradients formed in the forward (3 matmuls)
        from selftrain.kernels import fused_logprobs

        def step() -> None:
            (-fused_logprobs(hidden, weight, targets, uniform_grad=True).sum() / n_tok).backward()

    elif variant == "liger":
        from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction

        def step() -> None:  # Liger returns the mean CE (a scalar), not per-token log-probs
            out = LigerFusedLinearCrossEntropyFunction.apply(hidden, weight, targets)
            loss = out[0] if isinstance(out, tuple) else out
            loss.backward()

    else:
        raise ValueError(f"unknown variant {variant!r}")

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up: library initialisation (thread pools, kernels, autotuning) is not the variant's memory
    hidden.grad = None
    weight.grad = None
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        base = _rss_bytes("VmRSS")
    times, cpu_times = [], []
    for _ in range(repeats):
        hidden.grad = None
        weight.grad = None
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        sync()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    peak = (torch.cuda.max_memory_allocated() if device == "cuda" else _rss_bytes("VmHWM")) - base
    return {
        "min_s": min(times),
        "median_s": statistics.median(times),
        "cpu_s": min(cpu_times),
        "peak_mib": peak / 2**20,
    }


def _run_variant(
    variant: str, shape: str, device: str, repeats: int, dtype: str, env: dict, threads: int | None
) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        variant,
        "--shapes",
        shape,
        "--device",
        device,
        "--repeats",
        str(repeats),
        "--dtype",
        dtype,
    ] + (["--threads", str(threads)] if threads else [])
    # A fixed mmap threshold makes glibc return every freed block above 128 KiB to the OS at once, so
    # RSS follows live memory (the default threshold adapts and keeps freed blocks up to 32 MiB).
    env = {**env, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="smollm2,llama8b")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: fp32 on CPU, bf16 on CUDA)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(_worker(args.worker, args.shapes, args.device, args.repeats, args.dtype)))
        return

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("bfloat16" if device == "cuda" else "float32")
    variants = variants_for(device)
    if "liger" not in variants:
        print("liger_kernel: not importable here (or no CUDA) -> Liger FLCE skipped")
    path = "triton" if device == "cuda" else "torch (chunked)"
    print(
        f"device={device} dtype={dtype} threads={torch.get_num_threads()} fused path={path} "
        f"SELFTRAIN_KERNELS={os.environ.get('SELFTRAIN_KERNELS', 'auto')}"
    )
    for shape in args.shapes.split(","):
        n_tok, hid, voc = SHAPES[shape]
        if device == "cpu" and shape == "llama8b":
            # naive holds ~4 fp32 [8192, 128256] tensors (~17 GB) plus W and grad_W (4 GB): not
            # comfortable in 24 GB shared with other jobs, and 3 GEMMs of 8.6 TFLOP take minutes.
            print(
                f"{shape} N={n_tok} H={hid} V={voc}: skipped on CPU (naive needs ~21 GB and minutes per pass)"
            )
            continue
        results = {}
        for variant in variants:
            results[variant] = _run_variant(
                variant, shape, device, args.repeats, dtype, dict(os.environ), args.threads
            )
            r = results[variant]
            if "error" in r:
                print(f"  {shape:8s} {variant:13s} ERROR {r['error']}")
            else:
                print(
                    f"  {shape:8s} {variant:13s} fwd+bwd min {r['min_s']:.3f} s  "
                    f"median {r['median_s']:.3f} s  cpu {r['cpu_s']:.2f} s  peak {r['peak_mib']:.0f} MiB"
                )
        base = results.get("naive", {})
        for variant in variants[1:]:
            r = results[variant]
            if "error" in r or "error" in base:
                continue
            print(
                f"  {shape:8s} {variant}/naive: time x{r['min_s'] / base['min_s']:.2f} (min) "
                f"x{r['median_s'] / base['median_s']:.2f} (median) "
                f"x{r['cpu_s'] / base['cpu_s']:.2f} (cpu), peak memory "
                f"x{r['peak_mib'] / base['peak_mib']:.3f}  (N={n_tok} H={hid} V={voc})"
            )


if __name__ == "__main__":
    main()
