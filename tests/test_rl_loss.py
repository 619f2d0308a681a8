"""The online-RL loss (selftrain.train.rl) against formulas written out here in float64.

Advantages are checked on hand-made groups (values worked out by hand in the comments); the
loss and its gradient w.r.t. the per-token log-probs against a plain per-response / per-token
loop for every advantage x aggregation x clip x KL variant.
"""

from __future__ import annotations

import itertools
import math
import zlib

import pytest
import torch

from selftrain.config import ConfigError, from_dict
from selftrain.train.rl import (
    ADVANTAGES,
    AGGREGATIONS,
    RLLossConfig,
    clipped_token_loss,
    group_advantages,
    token_weights,
)


def test_advantages_on_hand_made_groups():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0], [0.3] * 4])
    # group 0: mean 1/2, sample std sqrt(4 * 1/4 / 3) = sqrt(1/3)
    s0 = math.sqrt(1 / 3) + 1e-4
    # group 2: mean 1/4, sample std sqrt((3 * 1/16 + 9/16) / 3) = 1/2
    s2 = 0.5 + 1e-4
    adv, flat = group_advantages(rewards, "grpo", 1e-4)
    want = [[0.5 / s0, -0.5 / s0, -0.5 / s0, 0.5 / s0], [0] * 4, [-0.25 / s2] * 3 + [0.75 / s2], [0] * 4]
    assert flat == 2  # all ones, and 0.3 (whose float mean need not equal 0.3 exactly)
    torch.testing.assert_close(adv, torch.tensor(want), rtol=1e-6, atol=0)
    assert bool((adv[1] == 0).all()) and bool((adv[3] == 0).all())  # exactly 0, not a residue

    adv, flat = group_advantages(rewards, "dr_grpo")
    want = [[0.5, -0.5, -0.5, 0.5], [0] * 4, [-0.25, -0.25, -0.25, 0.75], [0] * 4]
    torch.testing.assert_close(adv, torch.tensor(want), rtol=1e-6, atol=0)
    assert flat == 2

    # rloo: r_i minus the mean of the other three
    adv, flat = group_advantages(rewards, "rloo")
    want = [[1 - 1 / 3, 0 - 2 / 3, 0 - 2 / 3, 1 - 1 / 3], [0] * 4, [0 - 1 / 3] * 3 + [1.0], [0] * 4]
    torch.testing.assert_close(adv, torch.tensor(want), rtol=1e-6, atol=0)
    assert flat == 2


def test_advantages_reject_bad_shapes_and_methods():
    with pytest.raises(ValueError, match="G >= 2"):
        group_advantages(torch.ones(3, 1), "grpo")
    with pytest.raises(ValueError, match="advantage="):
        group_advantages(torch.ones(3, 2), "ppo")


def test_config_is_checked_and_unknown_keys_fail():
    with pytest.raises(ValueError, match="advantage"):
        RLLossConfig(advantage="ppo")
    with pytest.raises(ValueError, match="aggregation"):
        RLLossConfig(aggregation="mean")
    with pytest.raises(ValueError, match="clip_low"):
        RLLossConfig(clip_low=1.0)
    with pytest.raises(ValueError, match="beta"):
        RLLossConfig(beta=-0.1)
    with pytest.raises(ConfigError, match="clip_hi"):
        from_dict(RLLossConfig, {"clip_hi": 0.3}, "grpo")
    cfg = from_dict(RLLossConfig, {"clip_high": 0.28, "aggregation": "token"}, "grpo")
    assert cfg.clip_high == 0.28 and cfg.aggregation == "token"


def reference_loss(
    logp_t: list[torch.Tensor],
    old: list[list[float]],
    ref: list[list[float]],
    rewards: list[list[float]],
    cfg: RLLossConfig,
    max_new_tokens: int,
) -> torch.Tensor:
    """The loss of a batch of groups, straight from the papers' formulas, in float64. logp_t: per
    response (groups flattened, G consecutive responses per group) its tokens' log-probs [n_i]."""
    g = len(rewards[0])
    advs: list[float] = []
    for grp in rewards:
        mean = sum(grp) / g
        if all(r == grp[0] for r in grp):
            advs += [0.0] * g
        elif cfg.advantage == "grpo":
            std = math.sqrt(sum((r - mean) ** 2 for r in grp) / (g - 1))
            advs += [(r - mean) / (std + cfg.std_eps) for r in grp]
        elif cfg.advantage == "dr_grpo":
            advs += [r - mean for r in grp]
        else:
            advs += [r - (sum(grp) - r) / (g - 1) for r in grp]
    n_resp = len(logp_t)
    n_tok = sum(len(x) for x in logp_t)
    total = torch.zeros((), dtype=torch.float64)
    for i, lp in enumerate(logp_t):
        seq_total = torch.zeros((), dtype=torch.float64)
        for t in range(len(lp)):
            rho = torch.exp(lp[t] - old[i][t])
            a = advs[i]
            term = -torch.min(rho * a, torch.clamp(rho, 1 - cfg.clip_low, 1 + cfg.clip_high) * a)
            if cfg.beta:
                d = ref[i][t] - lp[t]
                term = term + cfg.beta * (torch.exp(d) - d - 1)
            seq_total = seq_total + term
        if cfg.aggregation == "sequence":
            total = total + seq_total / len(lp) / n_resp
        elif cfg.aggregation == "token":
            total = total + seq_total / n_tok
        else:
            total = total + seq_total / (n_resp * max_new_tokens)
    return total


VARIANTS = [
    RLLossConfig(advantage=a, aggregation=g, clip_low=cl, clip_high=ch, beta=b)
    for a, g, (cl, ch), b in itertools.product(
        ADVANTAGES, AGGREGATIONS, [(0.2, 0.2), (0.2, 0.28)], [0.0, 0.04]
    )
]


@pytest.mark.parametrize(
    "cfg", VARIANTS, ids=lambda c: f"{c.advantage}-{c.aggregation}-{c.clip_high}-{c.beta}"
)
def test_loss_and_grad_match_float64_formula(cfg):
    gen = torch.Generator().manual_seed(zlib.crc32(repr(cfg).encode()))
    n_groups, g, max_new = 3, 4, 9
    rewards = [[float(x) for x in torch.randint(0, 2, (g,), generator=gen)] for _ in range(n_groups)]
    rewards[1] = [1.0] * g  # one all-equal group
    lengths = [int(x) for x in torch.randint(1, max_new + 1, (n_groups * g,), generator=gen)]
    # ratios spread over [0.6, 1.6] so that both clip bounds are crossed
    logp = [(-torch.rand(n, generator=gen, dtype=torch.float64) * 3).tolist() for n in lengths]
    old = [[x - float(torch.empty(()).uniform_(-0.5, 0.5, generator=gen)) for x in lp] for lp in logp]
    ref = [[x + float(torch.randn((), generator=gen)) * 0.3 for x in lp] for lp in logp]
    leaves = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in logp]
    want = reference_loss(leaves, old, ref, rewards, cfg, max_new)
    want.backward()
    want, want_grad = want.detach(), torch.cat([x.grad for x in leaves])

    adv, _ = group_advantages(torch.tensor(rewards), cfg.advantage, cfg.std_eps)
    seq_of_token = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])
    lp = torch.tensor([x for s in logp for x in s], dtype=torch.float32, requires_grad=True)
    w = token_weights(
        seq_of_token, torch.tensor(lengths), cfg.aggregation, sum(lengths), len(lengths), max_new
    )
    loss, stats = clipped_token_loss(
        lp,
        torch.tensor([x for s in old for x in s], dtype=torch.float32),
        adv.flatten()[seq_of_token],
        w,
        cfg,
        torch.tensor([x for s in ref for x in s], dtype=torch.float32),
    )
    loss.backward()
    # fp32 inputs against fp64: a few ulps of each term's size (|terms| <= ~5), summed over ~60 tokens
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lp.grad.double(), want_grad, rtol=1e-4, atol=1e-6)
    assert 0 <= float(stats["clipped"]) <= sum(lengths)


def test_split_batches_add_up_to_the_whole():
    """Micro-batches weighted with the global counts give the whole batch's loss."""
    cfg = RLLossConfig(aggregation="sequence", beta=0.1)
    gen = torch.Generator().manual_seed(0)
    lengths = torch.tensor([3, 5, 2, 7])
    n = int(lengths.sum())
    seq_of_token = torch.repeat_interleave(torch.arange(4), lengths)
    lp, old, ref = (-torch.rand(n, generator=gen) for _ in range(3))
    adv = torch.randn(4, generator=gen)[seq_of_token]
    w = token_weights(seq_of_token, lengths, cfg.aggregation, n, 4, 8)
    whole, _ = clipped_token_loss(lp, old, adv, w, cfg, ref)
    cut = int(lengths[:2].sum())
    parts = sum(
        clipped_token_loss(lp[s], old[s], adv[s], w[s], cfg, ref[s])[0]
        for s in (slice(0, cut), slice(cut, n))
    )
    torch.testing.assert_close(parts, whole)


def test_kl_needs_a_reference():
    with pytest.raises(ValueError, match="ref_logp"):
        clipped_token_loss(
            torch.zeros(2), torch.zeros(2), torch.ones(2), torch.ones(2), RLLossConfig(beta=0.1)
        )


def test_clip_fraction_counts_the_clipped_branch():
    cfg = RLLossConfig(clip_low=0.2, clip_high=0.28)
    old = torch.zeros(4)
    # ratios 1.5 (A>0: clipped), 1.5 (A<0: not clipped), 0.5 (A<0: clipped), 1.1 (A>0: inside)
    lp = torch.log(torch.tensor([1.5, 1.5, 0.5, 1.1]))
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0])
    _, stats = clipped_token_loss(lp, old, adv, torch.full((4,), 0.25), cfg)
    assert float(stats["clipped"]) == 2
