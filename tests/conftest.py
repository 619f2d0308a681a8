"""Shared test settings: offline W&B and hub, quiet tokenizers, the CPU device, the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite pins the CPU path, whose results it compares exactly with HF on the CPU, also on a GPU
# machine; the GPU tests (test_sampler_cuda.py, the CUDA cases of the kernel tests) name cuda.
os.environ.setdefault("SELFTRAIN_DEVICE", "cpu")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real benchmark files not present at {SHARED_DATA}")
    return SHARED_DATA
