"""The FSDP2 pattern of docs/kernels.md: fused_logprobs inside the root FSDP module's forward.

Runs in a subprocess (this file as a script) because it initialises a one-rank gloo process group,
which must not leak into the other tests of the pytest process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_fsdp2_root_forward_pattern():
    pytest.importorskip("transformers")
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch built without torch.distributed")
    env = {**os.environ, "SELFTRAIN_KERNELS": "torch"}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve())], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "FSDP PATTERN OK" in proc.stdout


def _main() -> None:
    import torch
    import torch.distributed as dist
    import transformers
    from selftrain.kernels import fused_logprobs, lm_head_weight
    from selftrain.kernels.reference import logprobs_reference
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        config = transformers.LlamaConfig(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            tie_word_embeddings=True,
        )
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(config)
        plain = transformers.LlamaForCausalLM(config)
        plain.load_state_dict(model.state_dict())

        class Scorer(torch.nn.Module):
            """Root FSDP unit: its pre-forward hook unshards the head (tied to the embedding)."""

            def __init__(self, lm: torch.nn.Module) -> None:
                super().__init__()
                self.lm = lm

            def forward(self, ids: torch.Tensor, fn) -> torch.Tensor:
                hidden = self.lm.model(ids).last_hidden_state[:, :-1].flatten(0, 1)
                return fn(hidden.contiguous(), lm_head_weight(self.lm), ids[:, 1:].flatten())

        scorer = Scorer(model)
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(scorer)
        try:  # outside the forward the head is a sharded DTensor: a clear error, not silent garbage
            lm_head_weight(model)
            raise AssertionError("lm_head_weight accepted a sharded DTensor")
        except RuntimeError as err:
            assert "DTensor" in str(err)
        ids = torch.randint(0, 64, (2, 9))
        upstream = torch.randn(16)
        logp = scorer(ids, fused_logprobs)
        (logp * upstream).sum().backward()
        want = Scorer(plain)(ids, logprobs_reference)
        (want * upstream).sum().backward()
        torch.testing.assert_close(logp, want, rtol=1e-5, atol=1e-5)
        grad = model.lm_head.weight.grad
        grad = grad.full_tensor() if hasattr(grad, "full_tensor") else grad
        torch.testing.assert_close(grad, plain.lm_head.weight.grad, rtol=1e-5, atol=1e-5)
        print("FSDP PATTERN OK", flush=True)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    _main()
