"""The sampler on a CUDA GPU: HF equality on the GPU, CUDA-graph decode against eager decode,
the default bf16 path. Skipped (with the reason) on machines without CUDA."""

from __future__ import annotations

import pytest
import torch

from selftrain.models import load_model, load_tokenizer
from selftrain.sampler import Sampler

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PROMPTS = ["Hello there, how are", "The quick brown fox jumps over the lazy dog and then", "1 2 3",
           "What is 2+2? " * 6, "Once upon a time", "def f(x):\n    return", "Paris is the capital of", "a"]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny-random")


@pytest.fixture(scope="module")
def hf_cuda():
    return load_model("tiny-random").to("cuda")


def test_greedy_fp32_on_cuda_matches_hf_generate_there(hf_cuda, tok):
    s = Sampler(hf_cuda, tokenizer=tok, device="cuda", dtype=torch.float32, kv_cache_tokens=4096)
    outs = s.generate(PROMPTS, max_new_tokens=24)
    for prompt, (c,) in zip(PROMPTS, outs):
        enc = tok(prompt, return_tensors="pt").to("cuda")
        ref = hf_cuda.generate(**enc, max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id)
        assert c.token_ids == ref[0, enc["input_ids"].shape[1]:].tolist(), prompt


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_decode_equals_eager_decode(hf_cuda, tok, dtype):
    runs = {}
    for graphs in (True, False):
        s = Sampler(hf_cuda, tokenizer=tok, device="cuda", dtype=dtype, kv_cache_tokens=4096,
                    cuda_graphs=graphs)
        assert s.backend_name in ("flash", "triton")
        runner = s.engine.runner
        assert (runner.graphs is not None) == graphs
        runs[graphs] = s.generate(PROMPTS, n=3, max_new_tokens=20, temperature=0.3, seed=5, logprobs=True)
        if graphs:
            assert runner.graphs.replays > 0  # decode steps really went through the graphs
    for a, b in zip(runs[True], runs[False]):
        for ca, cb in zip(a, b):
            if dtype == torch.float32:
                assert ca.token_ids == cb.token_ids
                lp_a, lp_b = torch.tensor(ca.logprobs), torch.tensor(cb.logprobs)
                torch.testing.assert_close(lp_a, lp_b, rtol=0, atol=1e-4)
            else:  # bf16 kernels may pick other reduction orders for other shapes: same length, mostly same
                assert len(ca.token_ids) == len(cb.token_ids)


def test_default_cuda_sampler_is_bf16_seeded_and_reproducible(hf_cuda, tok):
    s = Sampler(hf_cuda, tokenizer=tok, device="cuda", kv_cache_tokens=4096)
    assert s.dtype == torch.bfloat16 and s.engine.runner.graphs is not None
    first = s.generate(PROMPTS[:4], n=4, max_new_tokens=16, temperature=1.0, top_p=0.9, seed=11)
    again = s.generate(PROMPTS[:4], n=4, max_new_tokens=16, temperature=1.0, top_p=0.9, seed=11)
    assert [[c.token_ids for c in o] for o in first] == [[c.token_ids for c in o] for o in again]
    assert all(len({tuple(c.token_ids) for c in o}) > 1 for o in first)  # the n samples differ


def test_gpu_token_selection_equals_the_cpu_reference():
    from selftrain.sampler.sampling import counter_uniforms, sample_tokens

    g = torch.Generator().manual_seed(4)
    logits = torch.randn(300, 5000, generator=g) * 4.0
    u = torch.from_numpy(counter_uniforms(2, list(range(300)), [0] * 300, [0] * 300))
    for temperature, top_p in ((0.8, 0.9), (1.0, 1.0), (0.0, 1.0)):
        want = sample_tokens(logits, temperature, top_p, u)
        got = sample_tokens(logits.cuda(), temperature, top_p, u.cuda()).cpu()
        assert torch.equal(got, want), (temperature, top_p)


def test_gpu_top_k_selection_matches_the_cpu_reference():
    from tolerances import assert_same_draws

    from selftrain.sampler.sampling import counter_uniforms, sample_tokens

    g = torch.Generator().manual_seed(6)
    logits = torch.randn(300, 5000, generator=g) * 2.0
    u = torch.from_numpy(counter_uniforms(3, list(range(300)), [0] * 300, [0] * 300))
    for temperature, top_p, top_k in ((0.75, 0.95, 50), (1.0, 1.0, 7), (1.2, 0.9, 1000)):
        want = sample_tokens(logits, temperature, top_p, u, top_k)
        got = sample_tokens(logits.cuda(), temperature, top_p, u.cuda(), top_k).cpu()
        assert_same_draws(got, want, logits, temperature, top_p, u, top_k)
        kth = logits.topk(top_k, -1).values[:, -1]
        assert (logits.gather(-1, got[:, None]).squeeze(-1) >= kth).all()
