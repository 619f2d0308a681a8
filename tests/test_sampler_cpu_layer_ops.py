"""csrc/cpu_layer_ops.c against the torch reference in selftrain/sampler/model.py: RMSNorm, RoPE,
silu(gate) * up; and the sampler's forward pass with and without the CPU kernels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tolerances import assert_as_accurate, assert_greedy_equal, logits_along

from selftrain.sampler import cpu_layer_ops
from selftrain.sampler.model import apply_rope, rms_norm


@pytest.mark.parametrize("rows,dim", [(0, 576), (1, 576), (13, 576), (5, 20), (3, 7)])
def test_rms_norm_matches_reference(rows, dim):
    x = torch.randn(rows, dim) * 3.0
    w = torch.randn(dim)
    got = cpu_layer_ops.rms_norm(x, w, 1e-5)
    truth = rms_norm(x.double(), w.double(), 1e-5)
    assert_as_accurate(got, rms_norm(x, w, 1e-5), truth, scale=float(truth.abs().max()) if rows else 0.0)


@pytest.mark.parametrize("heads,kv_heads,head_dim", [(9, 3, 64), (4, 4, 20), (2, 1, 6)])
def test_rope_matches_reference(heads, kv_heads, head_dim):
    from selftrain.sampler.model import ModelArgs, rope_tables

    args = ModelArgs(vocab_size=10, hidden_size=heads * head_dim, intermediate_size=8, num_layers=1,
                     num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim, rms_norm_eps=1e-5,
                     rope_theta=10000.0, rope_scaling=None, max_position_embeddings=64,
                     tie_word_embeddings=True, sliding_window=None)
    cos, sin = rope_tables(args, 64, torch.device("cpu"))
    T = 11
    qkv = torch.randn(T, (heads + 2 * kv_heads) * head_dim)  # q, k, then v (ignored)
    positions = torch.tensor([0, 5, 63, 2, 2, 17, 30, 1, 8, 44, 9])
    q, k = cpu_layer_ops.rope_qk(qkv, cos, sin, positions, heads, kv_heads, head_dim)
    c, s = cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)
    q_ref = apply_rope(qkv[:, : heads * head_dim].view(T, heads, head_dim), c, s)
    k_in = qkv[:, heads * head_dim : (heads + kv_heads) * head_dim]
    k_ref = apply_rope(k_in.view(T, kv_heads, head_dim), c, s)
    c64, s64 = c.double(), s.double()
    q_true = apply_rope(qkv[:, : heads * head_dim].double().view(T, heads, head_dim), c64, s64)
    k_true = apply_rope(k_in.double().view(T, kv_heads, head_dim), c64, s64)
    assert_as_accurate(q, q_ref, q_true, scale=float(qkv.abs().max()))
    assert_as_accurate(k, k_ref, k_true, scale=float(qkv.abs().max()))
    with pytest.raises(ValueError, match="past the 64-row RoPE tables"):
        cpu_layer_ops.rope_qk(qkv, cos, sin, positions + 1, heads, kv_heads, head_dim)


@pytest.mark.parametrize("shape", [(2 * 1536, 64), (2 * 7, 3), (2, 1)])
def test_silu_mul_matches_reference(shape):
    gate_up = torch.randn(shape) * 4.0
    tails = torch.tensor([-100.0, 100.0, 0.0, -0.5])  # far tails of the exp, and zero
    gate_up.view(-1)[: len(tails)] = tails[: gate_up.numel()]
    got = cpu_layer_ops.silu_mul(gate_up)
    gate, up = gate_up.chunk(2, dim=0)
    truth = F.silu(gate.double()) * up.double()
    assert_as_accurate(got, F.silu(gate) * up, truth, scale=float(truth.abs().max()))


def test_layer_ops_refuse_bad_input():
    with pytest.raises(TypeError, match="contiguous"):
        cpu_layer_ops.rms_norm(torch.randn(8, 4).t(), torch.randn(8), 1e-5)
    with pytest.raises(TypeError, match="float32"):
        cpu_layer_ops.silu_mul(torch.randn(4, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="weight"):
        cpu_layer_ops.rms_norm(torch.randn(2, 8), torch.randn(7), 1e-5)
    with pytest.raises(ValueError, match="even"):
        cpu_layer_ops.silu_mul(torch.randn(3, 2))


def test_forward_with_and_without_cpu_kernels_agrees():
    from selftrain.sampler import Sampler

    prompts = ["The quick brown fox", "1 2 3 4", "Hello"]
    fast = Sampler("tiny-random", kv_cache_tokens=1024)
    assert fast.model.fused_ops and fast.model.vocab_major_head
    plain = Sampler("tiny-random", kv_cache_tokens=1024)
    plain.model.fused_ops = plain.model.vocab_major_head = False  # the torch reference path
    kwargs = dict(n=2, temperature=0.0, max_new_tokens=12, logprobs=True)
    a, b = fast.generate(prompts, **kwargs), plain.generate(prompts, **kwargs)
    from selftrain.models import load_model, load_tokenizer

    tok = load_tokenizer("tiny-random")
    hf64 = load_model("tiny-random").double()  # the float64 truth both fp32 paths are measured against
    for prompt, pa, pb in zip(prompts, a, b):
        ids = tok(prompt)["input_ids"]
        for ca, cb in zip(pa, pb):
            full = torch.tensor(ids + cb.token_ids)  # along the torch path's tokens
            l64 = logits_along(hf64, full)[len(ids) - 1 : -1]
            truth = torch.log_softmax(l64, -1).gather(-1, torch.tensor(cb.token_ids)[:, None])[:, 0]
            scale = float(l64.abs().max() + torch.logsumexp(l64, -1).abs().max())
            # greedy tokens equal up to a rounding tie: logits closer than the torch path's own error
            torch_error = float((torch.tensor(cb.logprobs, dtype=torch.float64) - truth).abs().max())
            tie = 4 * torch_error + 8e-7 * scale
            same = assert_greedy_equal(ca.token_ids, cb.token_ids, l64, tie)
            got, want = torch.tensor(ca.logprobs[:same]), torch.tensor(cb.logprobs[:same])
            assert_as_accurate(got, want, truth[:same], scale=scale)


def test_rows_are_padded_to_multiples_of_8_from_3_rows():
    from selftrain.sampler.model import padded_rows

    assert [padded_rows(n) for n in (0, 1, 2, 3, 8, 9, 64, 65)] == [0, 1, 2, 8, 8, 16, 64, 72]


@pytest.mark.parametrize("extension", ["_paged_attention", "_cpu_layer_ops", "_cpu_logits"])
def test_kernels_run_their_avx2_build_where_the_cpu_has_it(extension):
    import os
    import platform
    from pathlib import Path

    from selftrain.sampler import native

    isa = native.load(extension).ISA
    cpuinfo = Path("/proc/cpuinfo")
    if os.environ.get("SELFTRAIN_CPU_KERNELS") == "baseline":  # forced (test_sampler_kernel_builds.py)
        assert isa == "baseline"
    elif platform.machine() == "x86_64" and cpuinfo.is_file():
        flags_line = next(line for line in cpuinfo.read_text().splitlines() if line.startswith("flags"))
        flags = set(flags_line.split())
        assert isa == ("avx2+fma" if {"avx2", "fma"} <= flags else "baseline")
    else:
        assert isa == "baseline"
