"""Online RL blocks (selftrain.train.grpo) on tiny-random: the update's loss and gradients through
the fused kernel equal the float64 formula on HF's full logits, and a policy learns a toy reward."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from test_rl_loss import reference_loss
from tolerances import assert_as_accurate

from selftrain.config import ConfigError, from_dict
from selftrain.models import load_model, load_tokenizer
from selftrain.train.config import TrainConfig
from selftrain.train.data import Example
from selftrain.train.fsdp import wrap_for_training
from selftrain.train.grpo import RLConfig, _Rollouts, _step_prompts, _update, read_curve, rl_block
from selftrain.train.rl import group_advantages

CPU = torch.device("cpu")
TINY = "tiny-random"


def _hf_token_logps(
    model: torch.nn.Module, seq: list[int], prompt_len: int, temperature: float
) -> torch.Tensor:
    ids = torch.tensor([seq])
    logits = model(input_ids=ids).logits[0]
    logp = F.log_softmax(logits[:-1] / temperature, dim=-1)
    return logp.gather(-1, ids[0, 1:, None])[:, 0][prompt_len - 1 :]


@pytest.mark.parametrize(
    "advantage,aggregation,beta",
    [("grpo", "sequence", 0.0), ("rloo", "token", 0.05), ("dr_grpo", "constant", 0.05)],
)
def test_update_matches_float64_formula_on_full_logits(advantage, aggregation, beta):
    tok = load_tokenizer(TINY)
    base = load_model(TINY)
    gen = torch.Generator().manual_seed(0)
    cfg = RLConfig(
        advantage=advantage,
        aggregation=aggregation,
        beta=beta,
        clip_high=0.28,
        max_new_tokens=7,
        temperature=0.7,
        optim=TrainConfig(micro_batch_size=2),
    )
    prompts = [tok("Question: 3+4=?\nAnswer:")["input_ids"], tok("Hello there")["input_ids"]]
    g = 3
    responses = [
        torch.randint(0, 49152, (int(n),), generator=gen).tolist()
        for n in torch.randint(1, 8, (2 * g,), generator=gen)
    ]
    rewards = [[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]
    seqs = [Example(k, [prompts[k // g] + r], [len(prompts[k // g])]) for k, r in enumerate(responses)]
    lengths = torch.tensor([len(r) for r in responses])
    adv, _ = group_advantages(torch.tensor(rewards), advantage, cfg.std_eps)
    # a sampling policy and a reference that differ from the policy, so ratios and KL are not trivial
    old = [(-torch.rand(len(r), generator=gen) * 8).tolist() for r in responses]
    ref = [(-torch.rand(len(r), generator=gen) * 8).tolist() for r in responses]
    micro = [[0, 1], [2, 3], [4, 5]]
    rollouts = _Rollouts(
        seqs,
        lengths,
        adv.flatten(),
        old_logp=[torch.tensor([x for j in m for x in old[j]]) for m in micro],
        ref_logp=[torch.tensor([x for j in m for x in ref[j]]) for m in micro] if beta else [],
    )
    scorer = wrap_for_training(copy.deepcopy(base), torch.float32, CPU, False)
    totals = _update(scorer, rollouts, cfg, tok.pad_token_id or 0, CPU)
    got = {n: p.grad for n, p in scorer.model.named_parameters()}

    # The same formula on HF's full logits twice: in float64 (the truth) and in fp32 (torch's own fp32
    # path of the same math); ours must be as accurate as the latter (tolerances.assert_as_accurate:
    # the allowance moves with how the host rounds, AVX2 or AVX-512).
    losses = {}
    models = {"64": copy.deepcopy(base).double(), "32": copy.deepcopy(base)}
    for key, m in models.items():
        logps = [_hf_token_logps(m, s.sequences[0], s.prompt_lens[0], cfg.temperature) for s in seqs]
        losses[key] = reference_loss(logps, old, ref, rewards, cfg, cfg.max_new_tokens)
        losses[key].backward()
    want = float(losses["64"].detach())
    assert_as_accurate(torch.tensor([totals["loss"]]), losses["32"].detach().reshape(1), torch.tensor([want]),
                       scale=abs(want))
    grads32 = dict(models["32"].named_parameters())
    for n, p in models["64"].named_parameters():
        if p.grad is None:
            continue
        assert_as_accurate(got[n], grads32[n].grad, p.grad, scale=float(p.grad.abs().max()))


def test_step_prompts_cover_every_prompt_per_epoch():
    seen = [i for s in range(4) for i in _step_prompts(10, 5, seed=3, step=s)]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    assert _step_prompts(10, 5, 3, 1) == _step_prompts(10, 5, 3, 1)


def test_config_checks():
    with pytest.raises(ValueError, match="group_size"):
        RLConfig(group_size=1)
    with pytest.raises(ValueError, match="epochs"):
        RLConfig(optim=TrainConfig(epochs=2))
    with pytest.raises(ConfigError, match="grup"):
        from_dict(RLConfig, {"optim": {"lr": 1e-3}, "grup": 4}, "grpo")
    with pytest.raises(ConfigError, match="grpo.optim: unknown key.s. lrr"):
        from_dict(RLConfig, {"optim": {"lrr": 1e-3}}, "grpo")
    assert from_dict(RLConfig, {"optim": {"lr": 1e-3}, "clip_high": 0.28}, "grpo").optim.lr == 1e-3


def _first_token_even(example, completion) -> float:
    return float(completion.token_ids[0] % 2 == 0)


# The toy: reward 1 when the first sampled token has an even id. At temperature 0.1 the tiny random
# policy spreads its first token over a few top tokens, about half of them even (measured start:
# ~0.45), so the reward is learnable by moving mass between them.
@pytest.mark.parametrize(
    "advantage,aggregation,beta,updates",
    [("grpo", "sequence", 0.0, 1), ("rloo", "token", 0.0, 1), ("dr_grpo", "constant", 0.0, 2)],
)
def test_tiny_policy_learns_a_toy_reward(tmp_path, advantage, aggregation, beta, updates):
    prompts = [f"Question: {i}+{i + 1}=?\nAnswer:" for i in range(16)]
    cfg = RLConfig(
        steps=20,
        prompts_per_step=4,
        group_size=8,
        max_new_tokens=2,
        temperature=0.1,
        advantage=advantage,
        aggregation=aggregation,
        beta=beta,
        updates_per_batch=updates,
        optim=TrainConfig(lr=5e-4, warmup_ratio=0.0, micro_batch_size=32, wandb_mode="disabled"),
    )
    result = rl_block(
        cfg, TINY, list(range(16)), prompts, _first_token_even, tmp_path, ref_model=TINY if beta else None
    )
    curve = read_curve(tmp_path, "reward/mean")
    assert len(curve) == 20
    start, end = sum(curve[:4]) / 4, sum(curve[-5:]) / 5
    assert start < 0.65 and end > 0.85, curve
    row = result.metrics
    for key in (
        "reward/std",
        "zero_adv_fraction",
        "clip_fraction",
        "entropy_mc",
        "response_length",
        "sampling_tokens_per_s",
        "training_tokens_per_s",
        "sync_s",
    ):
        assert key in row
    assert ("kl" in row) == bool(beta) and row.get("kl", 0.0) >= 0.0
    clip = read_curve(tmp_path, "clip_fraction")
    # one update per batch: ratio exactly 1, nothing clipped; two: the second update's ratios move
    assert (max(clip) > 0) == (updates > 1)
    assert (tmp_path / "model" / "config.json").is_file()
    # a second call finds the finished block and returns at once
    assert rl_block(
        cfg, TINY, list(range(16)), prompts, _first_token_even, tmp_path, ref_model=TINY if beta else None
    ).skipped


def test_kl_to_the_reference_is_logged(tmp_path):
    """Step 1's policy is the reference (KL exactly 0 through the same kernel); after an update it is not."""
    prompts = [f"Question: {i}+{i + 1}=?\nAnswer:" for i in range(4)]
    cfg = RLConfig(
        steps=2,
        prompts_per_step=2,
        group_size=4,
        max_new_tokens=3,
        beta=0.04,
        optim=TrainConfig(lr=1e-3, warmup_ratio=0.0, wandb_mode="disabled"),
    )
    rl_block(cfg, TINY, list(range(4)), prompts, _first_token_even, tmp_path, ref_model=TINY)
    kl = read_curve(tmp_path, "kl")
    assert kl[0] == 0.0 and kl[1] > 0.0
    with pytest.raises(ValueError, match="reference"):
        rl_block(cfg, TINY, list(range(4)), prompts, _first_token_even, tmp_path / "x")
