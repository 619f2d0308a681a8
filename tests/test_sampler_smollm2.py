"""The embedded SmolLM2-135M: greedy outputs equal HF generate token for token, and per-token
logprobs equal a plain HF forward, for 8 chat prompts of different lengths run as one batch; on
the CPU and, where there is one, on a CUDA GPU (both in fp32, HF on the same device)."""

from __future__ import annotations

import copy

import pytest
import torch
from tolerances import assert_as_accurate, assert_greedy_matches_hf, padded_logits

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
    hf64 = copy.deepcopy(hf).double()  # the float64 'truth' both fp32 paths are measured against
    stopped = 0
    fulls, rows, chosen = [], [], []
    for prompt, (c,) in zip(prompts, outs):
        ids = tok(prompt)["input_ids"]
        assert_greedy_matches_hf(hf, hf64, ids, c.token_ids, 28, tok.pad_token_id)
        stopped += c.finish_reason == "stop"
        fulls.append(ids + c.token_ids)
        rows.append(slice(len(ids) - 1, len(fulls[-1]) - 1))
        chosen.append(torch.tensor(c.token_ids)[:, None])
    # one right-padded batch per model (causal: padding after a sequence changes none of its logits)
    logits32, logits64 = padded_logits(hf, fulls), padded_logits(hf64, fulls)
    for i, (_, (c,)) in enumerate(zip(prompts, outs)):
        want = torch.log_softmax(logits32[i, rows[i]].float(), -1).gather(-1, chosen[i])[:, 0]
        l64 = logits64[i, rows[i]]
        truth = torch.log_softmax(l64, -1).gather(-1, chosen[i])[:, 0]
        scale = float(l64.abs().max() + torch.logsumexp(l64, -1).abs().max())
        assert_as_accurate(torch.tensor(c.logprobs), want, truth, scale=scale)
    assert stopped >= 2  # some answers end with <|im_end|> inside 28 tokens
