"""Data parallel sampling: 2 gloo processes shard the prompts and both get every result, in
order, equal to a single-process run (the seeds use global prompt indices)."""

from __future__ import annotations

import json
import os
import socket

import torch.multiprocessing as mp

PROMPTS = [f"prompt {k}: " + "word " * k for k in range(7)]
# T = 0.3 as in test_sampler's exact-equality tests (SHARP_T there): at T ~ 1 tiny-random's nucleus
# spans ~15k tokens and the ranks' smaller batches change logits at the rounding level
KW = dict(n=2, temperature=0.3, top_p=0.9, max_new_tokens=8, seed=4)


def _run(sampler):
    outs = sampler.generate(PROMPTS, **KW)
    probs = sampler.next_token_probs(PROMPTS, [" the", " a"])
    return {"tokens": [[c.token_ids for c in o] for o in outs], "probs": probs,
            "prefill": sampler.stats.prefill_tokens}


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    import torch

    torch.set_num_threads(1)
    from selftrain import dist
    from selftrain.sampler import Sampler

    assert dist.init_distributed()
    result = _run(Sampler("tiny-random", kv_cache_tokens=2048))
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
        json.dump(result, fh)
    import torch.distributed

    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_match_single_process(tmp_path):
    from selftrain.sampler import Sampler

    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    single = _run(Sampler("tiny-random", kv_cache_tokens=2048))
    for r in ranks:
        assert r["tokens"] == single["tokens"]
        for a, b in zip(r["probs"], single["probs"]):
            assert all(abs(x - y) <= 1e-6 + 1e-4 * abs(y) for x, y in zip(a, b))
        assert r["prefill"] < single["prefill"]  # each rank ran only its shard


def test_selftrain_device_overrides_the_default_device(monkeypatch):
    import pytest
    import torch

    from selftrain import dist

    monkeypatch.setenv("SELFTRAIN_DEVICE", "cpu")
    assert dist.default_device() == torch.device("cpu")
    monkeypatch.setenv("SELFTRAIN_DEVICE", "tpu")
    with pytest.raises(ValueError, match="SELFTRAIN_DEVICE must be 'cpu' or 'cuda', got 'tpu'"):
        dist.default_device()
    monkeypatch.setenv("SELFTRAIN_DEVICE", "cuda")
    if torch.cuda.is_available():
        assert dist.default_device().type == "cuda"
    else:
        with pytest.raises(ValueError, match="no CUDA device"):
            dist.default_device()
    monkeypatch.delenv("SELFTRAIN_DEVICE")
    assert dist.default_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
