"""The Triton paged decode-attention kernel (selftrain/sampler/triton_decode.py) against the SDPA
reference, and a whole sampler on the `triton` backend against the `sdpa` one.

On a machine without CUDA the checks run under Triton's CPU interpreter, which only takes effect
if TRITON_INTERPRET=1 is set before triton is first imported: so they run in a subprocess, this
file executed as a script (as tests/test_kernels_triton.py does). With CUDA they run compiled, in
this process.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
HAS_TRITON = importlib.util.find_spec("triton") is not None

# rows, heads, kv_heads, head_dim, block_size, window: GQA groups of 3, 2, 4 and 1 (MHA); head_dim
# 20 pads to 32 lanes; block sizes 16, 8, 4 and 32 (a 64-key step spans 4, 8, 16 and 2 blocks);
# context lengths up to 6 blocks, so several loop steps and a partial last one
CASES = [(13, 9, 3, 64, 16, None), (5, 4, 4, 32, 8, None), (7, 8, 2, 20, 16, 21), (1, 2, 1, 128, 4, None),
         (9, 12, 3, 64, 32, 70)]


def check_kernel_matches_sdpa(device: str) -> None:
    from test_sampler_attention import _case

    from selftrain.sampler.attention import SdpaBackend
    from selftrain.sampler.triton_decode import paged_decode_attention

    for rows, heads, kv_heads, head_dim, block_size, window in CASES:
        q, cache, meta = _case(rows, heads, kv_heads, head_dim, block_size, window)
        want = SdpaBackend._decode(q, cache, meta, head_dim**-0.5, kv_heads)
        for table_dtype in (torch.int32, torch.long):
            got = paged_decode_attention(
                q.to(device), cache[0].to(device), cache[1].to(device),
                meta.decode_block_tables.to(device, table_dtype), meta.decode_context_lens.to(device),
                head_dim**-0.5, window,
            ).cpu()
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        # half precision: inputs rounded once, fp32 softmax; the reference runs on the same rounded inputs
        half = torch.float16
        q_h, cache_h = q.to(half).float(), cache.to(half).float()
        want_h = SdpaBackend._decode(q_h, cache_h, meta, head_dim**-0.5, kv_heads)
        got_h = paged_decode_attention(
            q.to(device, half), cache[0].to(device, half), cache[1].to(device, half),
            meta.decode_block_tables.to(device), meta.decode_context_lens.to(device), head_dim**-0.5, window,
        ).cpu()
        assert got_h.dtype == half
        torch.testing.assert_close(got_h.float(), want_h, rtol=2e-2, atol=2e-2)


def check_kernel_refuses_mismatched_inputs(device: str) -> None:
    from selftrain.sampler.triton_decode import paged_decode_attention

    q = torch.zeros(3, 4, 16, device=device)
    cache = torch.zeros(8, 16, 2, 16, device=device)
    tables = torch.zeros(3, 2, dtype=torch.int32, device=device)
    ctx = torch.ones(3, dtype=torch.int32, device=device)
    with pytest.raises(ValueError, match="does not fit"):
        paged_decode_attention(q, cache[..., :8], cache[..., :8], tables, ctx, 1.0)
    with pytest.raises(ValueError, match="3 rows"):
        paged_decode_attention(q, cache, cache, tables[:2], ctx, 1.0)


def check_sampler_matches_sdpa_backend(device: str) -> None:
    from selftrain.models import load_model, load_tokenizer
    from selftrain.sampler import Sampler

    tok, hf = load_tokenizer("tiny-random"), load_model("tiny-random")
    prompts = ["Hello there, how are", "1 2 3", "What is 2+2? " * 6, "a", "Once upon a time"]
    outs = {}
    for backend in ("triton", "sdpa"):
        s = Sampler(hf, tokenizer=tok, device=device, dtype=torch.float32, attention_backend=backend,
                    kv_cache_tokens=2048, cuda_graphs=False)
        assert s.backend_name == backend
        outs[backend] = s.generate(prompts, n=2, max_new_tokens=12, temperature=0.3, seed=3, logprobs=True)
    # Log-probs: each backend's as accurate as HF's own fp32 forward, both against a float64 copy
    # of the model (tolerances.assert_as_accurate: the allowance moves with how the host rounds;
    # a bare 1e-4 between the backends failed once on a loaded machine at 6.8e-4).
    import copy

    from tolerances import assert_completion_logprobs_accurate

    hf64 = copy.deepcopy(hf).double()
    for prompt, a, b in zip(prompts, outs["triton"], outs["sdpa"]):
        ids = tok(prompt)["input_ids"]
        for ca, cb in zip(a, b):
            assert ca.token_ids == cb.token_ids
            for c in (ca, cb):
                assert_completion_logprobs_accurate(hf, hf64, ids, c.token_ids, c.logprobs)


CHECKS = [check_kernel_matches_sdpa, check_kernel_refuses_mismatched_inputs,
          check_sampler_matches_sdpa_backend]


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_triton_decode_in_interpreter():
    if torch.cuda.is_available():
        pytest.skip("CUDA is present: the checks run compiled in test_triton_decode_on_cuda")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve())], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"interpreter checks failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert "ALL TRITON DECODE CHECKS PASSED" in proc.stdout, proc.stdout[-4000:]


@pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()), reason="needs a CUDA GPU and triton")
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_triton_decode_on_cuda(check):
    sys.path.insert(0, str(HERE))
    check("cuda")


def test_triton_backend_is_offered_on_cuda_or_in_the_interpreter_only(monkeypatch):
    from selftrain.sampler.attention import available_backends

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "triton" not in available_backends(torch.device("cpu"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    names = available_backends(torch.device("cpu"))
    assert ("triton" in names) == HAS_TRITON and names[0] != "triton"  # never the CPU default


if __name__ == "__main__":
    assert os.environ.get("TRITON_INTERPRET") == "1" and "triton" not in sys.modules
    sys.path.insert(0, str(HERE))
    for check in CHECKS:
        check("cpu")
        print(f"ok {check.__name__}", flush=True)
    print("ALL TRITON DECODE CHECKS PASSED")
