"""In-process weight refresh (`Sampler.load_weights`): the sampler after a refresh generates what a
sampler loaded from the saved checkpoint of the same weights generates, and the model it was built
from is never written to."""

from __future__ import annotations

import copy

import torch

from selftrain.models import load_model, load_tokenizer, save_checkpoint
from selftrain.sampler import Sampler

TINY = "tiny-random"
PROMPTS = ["The capital of France is", "1 + 2 =", "def f(x):\n    return", "Once upon a time"]


def _perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    new = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * p.float().std().clamp(min=1e-3) * 0.5)
    return new


def _greedy(sampler: Sampler) -> list[list[int]]:
    outs = sampler.generate(PROMPTS, max_new_tokens=12, temperature=0.0)
    return [c[0].token_ids for c in outs]


def test_refresh_equals_sampler_from_saved_checkpoint(tmp_path):
    tok = load_tokenizer(TINY)
    base = load_model(TINY)
    kept = {k: v.clone() for k, v in base.state_dict().items()}
    sampler = Sampler(base, tokenizer=tok, kv_cache_tokens=2048)  # shares base's fp32 tensors
    before = _greedy(sampler)
    new = _perturbed(base, 1)
    save_checkpoint(new, tok, tmp_path / "ckpt")
    seconds = sampler.load_weights(new)
    assert seconds >= 0
    fresh = Sampler(str(tmp_path / "ckpt"), kv_cache_tokens=2048)
    after = _greedy(sampler)
    assert after == _greedy(fresh)
    assert after != before  # the refresh changed what it generates
    # the model the sampler was built from is untouched
    for k, v in base.state_dict().items():
        assert torch.equal(v, kept[k]), k
    # a second refresh (now into private copies) with a state dict, back to the first weights
    sampler.load_weights(kept)
    assert _greedy(sampler) == before


def test_refresh_rejects_another_architecture():
    import pytest

    sampler = Sampler(TINY, kv_cache_tokens=1024)
    sd = dict(load_model(TINY).state_dict())
    sd["model.norm.weight"] = torch.ones(3)
    with pytest.raises(ValueError, match="model.norm.weight"):
        sampler.load_weights(sd)
    del sd["model.embed_tokens.weight"]
    with pytest.raises(ValueError, match="embed_tokens"):
        sampler.load_weights(sd)
