"""Shared test settings: offline W&B and hub, quiet tokenizers, the CPU device, the shared data
folder, and a model cache of the session's own."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite pins the CPU path, whose results it compares exactly with HF on the CPU, also on a GPU
# machine; the GPU tests (test_sampler_cuda.py, the CUDA cases of the kernel tests) name cuda.
os.environ.setdefault("SELFTRAIN_DEVICE", "cpu")
# The built-in models are built afresh into a cache of this session's own (removed at the end), so
# the suite is never fooled by a cache an older install built, and never damages the one `make run`
# uses. SELFTRAIN_TEST_CACHE names a cache to reuse instead (a developer's shortcut; CI sets none).
_OWN_CACHE = not os.environ.get("SELFTRAIN_TEST_CACHE")
os.environ["SELFTRAIN_CACHE"] = os.environ.get("SELFTRAIN_TEST_CACHE") or tempfile.mkdtemp(
    prefix="selftrain-test-cache-"
)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real benchmark files not present at {SHARED_DATA}")
    return SHARED_DATA


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _OWN_CACHE:
        shutil.rmtree(os.environ["SELFTRAIN_CACHE"], ignore_errors=True)
