"""The embedded SmolLM2-135M: greedy outputs equal HF generate token for token, and per-token
logprobs equal a plain HF forward, for 8 chat prompts of different lengths run as one batch; on
the CPU and, where there is one, on a CUDA GPU (both in fp32, HF on the same device)."""

from __future__ import annotations

import pytest
import torch

from selftrain.models import load_model, load_tokenizer
from selftrain.sampler import Sampler

QUESTIONS = [
    "Hi",
    "What is 2+3? Answer briefly.",
    "List three colors, please.",
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain gravity to a child in two sentences.",
    "Translate 'good morning' into Spanish and French, and say which language is older.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May? Think step by step.",
]


@pytest.mark.parametrize("device", [
    "cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
])
def test_smollm2_greedy_and_logprobs_match_hf(device):
    try:
        tok = load_tokenizer("smollm2-135m")
        hf = load_model("smollm2-135m", device=device)
    except Exception as e:  # noqa: BLE001 - the embedded model's package may be missing
        pytest.skip(f"embedded SmolLM2 unavailable: {e}")
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                       tokenize=False) for q in QUESTIONS]
    lengths = {len(tok(p)["input_ids"]) for p in prompts}
    assert len(lengths) == len(prompts)  # all different lengths
    sampler = Sampler(hf, tokenizer=tok, kv_cache_tokens=8192, device=device, dtype=torch.float32)
    outs = sampler.generate(prompts, max_new_tokens=28, logprobs=True)
    stopped = 0
    for prompt, (c,) in zip(prompts, outs):
        enc = tok(prompt, return_tensors="pt").to(device)
        ref = hf.generate(**enc, max_new_tokens=28, do_sample=False, pad_token_id=tok.pad_token_id)
        n = enc["input_ids"].shape[1]
        assert c.token_ids == ref[0, n:].tolist(), prompt
        stopped += c.finish_reason == "stop"
        with torch.no_grad():
            lp = torch.log_softmax(hf(ref).logits[0].float(), -1)
        want = lp[n - 1 : -1].gather(-1, ref[0, n:, None])[:, 0].cpu()
        assert torch.allclose(torch.tensor(c.logprobs), want, atol=1e-4)
    assert stopped >= 2  # some answers end with <|im_end|> inside 28 tokens
