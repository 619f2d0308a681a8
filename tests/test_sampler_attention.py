"""The CPU paged decode-attention kernel (csrc/paged_attention.c) against the SDPA reference."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tolerances import assert_as_accurate

from selftrain.sampler.attention import (
    AttentionMetadata,
    CpuPagedBackend,
    SdpaBackend,
    available_backends,
    make_backend,
)


def _case(rows: int, heads: int, kv_heads: int, head_dim: int, block_size: int, window: int | None,
          seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
    g = torch.Generator().manual_seed(seed)
    num_blocks = 64
    cache = torch.randn(2, num_blocks, block_size, kv_heads, head_dim, generator=g)
    ctx = torch.randint(1, 6 * block_size, (rows,), generator=g)
    ctx[0] = 1  # a row that sees only its own new token
    width = int((ctx.max() + block_size - 1) // block_size)
    shared = torch.randperm(num_blocks, generator=g)[:width]  # rows share leading blocks, like siblings
    tables = torch.stack([torch.cat([shared[:2], torch.randperm(num_blocks, generator=g)[: width - 2]])
                          for _ in range(rows)]) if width > 2 else shared[:width].repeat(rows, 1)
    key_pos = torch.arange(width * block_size)
    allowed = key_pos[None, :] < ctx[:, None]
    if window:
        allowed &= key_pos[None, :] >= ctx[:, None] - window
    mask = torch.zeros(allowed.shape).masked_fill_(~allowed, float("-inf"))[:, None, None, :]
    meta = AttentionMetadata(
        slot_mapping=torch.zeros(rows, dtype=torch.long), num_decode=rows,
        decode_block_tables=tables.long().contiguous(), decode_context_lens=ctx.to(torch.int32),
        decode_context_lens_long=ctx.long(), decode_mask=mask, sliding_window=window,
    )
    q = torch.randn(rows, heads, head_dim, generator=g)
    return q, cache, meta


@pytest.mark.parametrize(
    "rows,heads,kv_heads,head_dim,block_size,window",
    [(13, 9, 3, 64, 16, None), (5, 4, 4, 32, 8, None), (7, 8, 2, 20, 16, 21), (1, 2, 1, 128, 4, None)],
)
def test_cpu_kernel_matches_sdpa(rows, heads, kv_heads, head_dim, block_size, window):
    q, cache, meta = _case(rows, heads, kv_heads, head_dim, block_size, window)
    want = SdpaBackend._decode(q, cache, meta, head_dim**-0.5, kv_heads)
    got = CpuPagedBackend()._decode(q, cache, meta, head_dim**-0.5, kv_heads)
    meta64 = dataclasses.replace(meta, decode_mask=meta.decode_mask.double())
    truth = SdpaBackend._decode(q.double(), cache.double(), meta64, head_dim**-0.5, kv_heads)
    assert_as_accurate(got, want, truth, scale=float(cache[1].abs().max()))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_cpu_kernel_is_the_same_for_any_thread_count(threads):
    q, cache, meta = _case(11, 9, 3, 64, 16, None, seed=1)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = CpuPagedBackend()._decode(q, cache, meta, 0.125, 3)
        torch.set_num_threads(threads)
        many = CpuPagedBackend()._decode(q, cache, meta, 0.125, 3)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, many)  # each row is computed by one thread in a fixed order


def test_cpu_backend_is_the_fp32_cpu_default_and_refuses_other_dtypes():
    assert available_backends(torch.device("cpu"))[0] == "cpu"
    assert "cpu" not in available_backends(torch.device("cpu"), torch.bfloat16)
    assert make_backend(None, torch.device("cpu"), torch.bfloat16).name == "sdpa"
    with pytest.raises(ValueError, match="not available on cpu in torch.bfloat16"):
        make_backend("cpu", torch.device("cpu"), torch.bfloat16)
    q, cache, meta = _case(3, 4, 2, 16, 8, None)
    with pytest.raises(TypeError, match="float32"):
        CpuPagedBackend()._decode(q.bfloat16(), cache, meta, 0.25, 2)


def test_cpu_kernel_refuses_mismatched_metadata():
    q, cache, meta = _case(4, 4, 2, 16, 8, None)
    meta.decode_context_lens_long = meta.decode_context_lens_long[:3]
    with pytest.raises(ValueError, match="4 rows"):
        CpuPagedBackend()._decode(q, cache, meta, 0.25, 2)
    q, cache, meta = _case(4, 4, 2, 16, 8, None)
    meta.decode_block_tables = meta.decode_block_tables.to(torch.int32)
    with pytest.raises(TypeError, match="block tables"):
        CpuPagedBackend()._decode(q, cache, meta, 0.25, 2)


@pytest.mark.parametrize("given,expected", [(None, "1000"), ("7", "7")])
def test_importing_selftrain_sets_a_short_openmp_spin_unless_given(given, expected):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    if given is not None:
        env["GOMP_SPINCOUNT"] = given
    out = subprocess.run(
        [sys.executable, "-c", "import os, selftrain; print(os.environ['GOMP_SPINCOUNT'])"],
        env=env, capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() == expected
