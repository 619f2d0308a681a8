"""Token selection: top-p nucleus, empirical frequencies (chi-square), counter-based draws.

Every selection test runs on both implementations: the plain-torch reference (`sample_tokens`,
the path off the CPU) and the C kernel (`cpu_logits.sample`, the fp32 CPU path).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selftrain.sampler import cpu_logits
from selftrain.sampler.sampling import counter_uniform, counter_uniforms, sample_tokens


def _c_sample(logits: torch.Tensor, temperature: float, top_p: float, u: torch.Tensor, top_k: int = 0
              ) -> torch.Tensor:
    return cpu_logits.sample(logits.contiguous(), temperature, top_p, u.to(torch.float64), top_k=top_k)[0]


IMPLEMENTATIONS = pytest.mark.parametrize("select", [sample_tokens, _c_sample], ids=["torch", "c"])


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Reference nucleus: smallest top-probability set whose mass reaches top_p."""
    order = torch.argsort(probs, descending=True)
    mass = torch.cumsum(probs[order], 0)
    size = int((mass - probs[order] < top_p).sum())
    keep = torch.zeros_like(probs, dtype=torch.bool)
    keep[order[:size]] = True
    return keep


def _draw(select, logits: torch.Tensor, temperature: float, top_p: float, draws: int, seed: int,
          top_k: int = 0) -> torch.Tensor:
    u = torch.tensor([counter_uniform(seed, 0, j % 97, j // 97) for j in range(draws)], dtype=torch.float64)
    return select(logits.expand(draws, -1), temperature, top_p, u, top_k=top_k)


@IMPLEMENTATIONS
@pytest.mark.parametrize("vocab,temperature,top_p", [(30, 0.8, 0.7), (1000, 1.0, 0.5), (1000, 3.0, 0.98)])
def test_top_p_frequencies_match_renormalised_nucleus(select, vocab, temperature, top_p):
    from scipy.stats import chisquare

    g = torch.Generator().manual_seed(vocab)
    logits = torch.randn(vocab, generator=g) * 1.5
    probs = torch.softmax(logits / temperature, -1)
    keep = _nucleus(probs, top_p)
    assert keep.sum() >= 5  # a nucleus worth testing
    draws = 20000
    tokens = _draw(select, logits[None], temperature, top_p, draws, seed=vocab)
    counts = torch.bincount(tokens, minlength=vocab)
    assert counts[~keep].sum() == 0, "a token outside the nucleus was drawn"
    expected = probs[keep].double() / probs[keep].double().sum() * draws
    observed = counts[keep].double()
    if expected.numel() > 50:  # pool rare tokens so every cell expects >= 5
        order = torch.argsort(expected)
        expected, observed = expected[order], observed[order]
        cut = int((torch.cumsum(expected, 0) < 50).sum())
        expected = torch.cat([expected[:cut].sum(0, keepdim=True), expected[cut:]])
        observed = torch.cat([observed[:cut].sum(0, keepdim=True), observed[cut:]])
    expected = expected * observed.sum() / expected.sum()
    stat = chisquare(observed.numpy(), expected.numpy())
    assert stat.pvalue > 1e-3, stat


@IMPLEMENTATIONS
def test_greedy_takes_first_maximum(select):
    logits = torch.tensor([[0.0, 2.0, 2.0, 1.0], [5.0, -1.0, 5.0, 0.0]])
    assert select(logits, 0.0, 1.0, torch.zeros(2, dtype=torch.float64)).tolist() == [1, 0]
    # past the vector width too: the first of equal maxima in different lanes and the tail
    wide = torch.zeros(3, 21)
    wide[0, [13, 5]] = 1.0
    wide[1, [20, 19]] = 1.0
    wide[2, [8, 16, 0]] = 1.0
    assert select(wide, 0.0, 1.0, torch.zeros(3, dtype=torch.float64)).tolist() == [5, 19, 0]


@IMPLEMENTATIONS
def test_top_p_tiny_keeps_only_the_top_token(select):
    logits = torch.randn(64, 500)
    u = torch.rand(64, dtype=torch.float64)
    assert torch.equal(select(logits, 1.0, 1e-6, u), logits.argmax(-1))


@IMPLEMENTATIONS
def test_rows_are_independent_of_the_batch(select):
    logits = torch.randn(40, 3000) * 0.01  # nearly flat: the hardest case for stability
    u = torch.tensor([counter_uniform(1, i, 0, 0) for i in range(40)], dtype=torch.float64)
    together = select(logits, 1.0, 0.9, u)
    alone = torch.cat([select(logits[i : i + 1], 1.0, 0.9, u[i : i + 1]) for i in range(40)])
    assert torch.equal(together, alone)


def test_counter_uniform_is_a_pure_function():
    a = counter_uniform(0, 3, 1, 7)
    assert a == counter_uniform(0, 3, 1, 7)
    assert 0.0 <= a < 1.0
    others = {counter_uniform(s, i, j, t) for s in (0, 1) for i in range(4) for j in range(4)
              for t in range(4)}
    assert len(others) == 128  # every counter tuple gets its own number
    mean = sum(counter_uniform(9, 0, 0, t) for t in range(20000)) / 20000
    assert abs(mean - 0.5) < 0.01


def test_counter_uniforms_vectorised_values_are_pinned():
    # the numbers a seed gives are part of the reproducibility promise: pinned (splitmix64 rounds,
    # values from the first, scalar implementation) so a change to the stream cannot go unnoticed
    assert counter_uniform(0, 0, 0, 0) == 0.1296456182997474
    assert counter_uniform(7, 3, 1, 255) == 0.47447446292908513
    assert counter_uniform(-5, 1000, 7, 10**6) == 0.4516804858429764
    triples = [(i, j, t) for i in (0, 5, 999) for j in (0, 3) for t in (0, 1, 4096)]
    vec = counter_uniforms(11, *zip(*triples))
    assert vec.dtype == np.float64 and vec.tolist() == [counter_uniform(11, *x) for x in triples]


@IMPLEMENTATIONS
def test_top_k_fast_path_agrees_with_full_vocabulary_reference(select):
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(300, 5000, generator=g) * 4.0  # peaked rows: nuclei inside the top 256
    u = torch.tensor([counter_uniform(2, i, 0, 0) for i in range(300)], dtype=torch.float64)
    got = select(logits, 0.8, 0.9, u)
    probs = torch.softmax(logits / 0.8, -1)
    want = []
    for row, ur in zip(probs, u):
        kept = row * _nucleus(row, 0.9)
        cdf = kept.double().cumsum(0)
        want.append(int(torch.searchsorted(cdf, ur * cdf[-1], right=True)))
    assert (got != torch.tensor(want)).sum() <= 1


def _top_k_then_nucleus64(logits: torch.Tensor, temperature: float, top_p: float, top_k: int) -> torch.Tensor:
    """float64 reference of the whole rule: the kept tokens' renormalised probabilities (0 elsewhere)."""
    z = logits.double()
    if 0 < top_k < z.numel():
        z = z.masked_fill(z < z.topk(top_k).values[-1], float("-inf"))
    probs = torch.softmax(z / temperature, -1)
    kept = probs * _nucleus(probs, top_p)
    return kept / kept.sum()


@IMPLEMENTATIONS
@pytest.mark.parametrize("vocab,temperature,top_p,top_k", [(30, 0.8, 1.0, 7), (1000, 0.75, 0.95, 50),
                                                           (1000, 1.0, 0.6, 300)])
def test_top_k_frequencies_match_the_float64_reference(select, vocab, temperature, top_p, top_k):
    from scipy.stats import chisquare

    g = torch.Generator().manual_seed(vocab + top_k)
    logits = torch.randn(vocab, generator=g) * 1.5
    want = _top_k_then_nucleus64(logits, temperature, top_p, top_k)
    keep = want > 0
    assert 5 <= keep.sum() <= top_k  # top-k and (for top_p < 1) the nucleus both cut
    draws = 20000
    tokens = _draw(select, logits[None], temperature, top_p, draws, seed=top_k, top_k=top_k)
    counts = torch.bincount(tokens, minlength=vocab)
    assert counts[~keep].sum() == 0, "a token outside top-k / the nucleus was drawn"
    expected, observed = want[keep] * draws, counts[keep].double()
    order = torch.argsort(expected)  # pool rare tokens so every cell expects >= 5
    expected, observed = expected[order], observed[order]
    cut = max(int((torch.cumsum(expected, 0) < 50).sum()), 1)
    expected = torch.cat([expected[:cut].sum(0, keepdim=True), expected[cut:]])
    observed = torch.cat([observed[:cut].sum(0, keepdim=True), observed[cut:]])
    stat = chisquare(observed.numpy(), (expected * observed.sum() / expected.sum()).numpy())
    assert stat.pvalue > 1e-3, stat


@IMPLEMENTATIONS
def test_top_k_keeps_ties_at_the_kth_logit_and_one_is_greedy(select):
    logits = torch.tensor([[0.0, 3.0, 1.0, 1.0, 1.0, -2.0, 1.0]])
    u = torch.tensor([counter_uniform(4, 0, j, 0) for j in range(4000)], dtype=torch.float64)
    tokens = select(logits.expand(4000, -1), 1.0, 1.0, u, top_k=2)
    # the 2nd largest logit is 1.0, held by four tokens: all four stay, 0.0 and -2.0 go
    assert set(tokens.tolist()) == {1, 2, 3, 4, 6}
    rows = torch.randn(50, 700) * 0.2
    u50 = u[:50]
    assert torch.equal(select(rows, 1.3, 1.0, u50, top_k=1), rows.argmax(-1))
    # top_k >= V is off
    assert torch.equal(select(rows, 1.3, 0.9, u50, top_k=700), select(rows, 1.3, 0.9, u50))


@IMPLEMENTATIONS
def test_top_k_rows_are_independent_of_the_batch(select):
    logits = torch.randn(40, 3000) * 0.01
    logits[::3] *= 300  # peaked and flat rows in one batch
    u = torch.tensor([counter_uniform(1, i, 0, 0) for i in range(40)], dtype=torch.float64)
    together = select(logits, 0.75, 0.95, u, top_k=50)
    alone = torch.cat([select(logits[i : i + 1], 0.75, 0.95, u[i : i + 1], top_k=50) for i in range(40)])
    assert torch.equal(together, alone)


@pytest.mark.parametrize("top_k,top_p,scale", [(50, 0.95, 2.0), (50, 1.0, 0.3), (2000, 0.9, 0.3),
                                               (300, 0.5, 4.0)])
def test_c_top_k_draws_match_torch_within_the_float64_reference(top_k, top_p, scale):
    from tolerances import assert_same_draws

    g = torch.Generator().manual_seed(top_k)
    logits = torch.randn(64, 32005, generator=g) * scale
    logits[:, :30] += torch.rand(64, 30, generator=g) * 6.0
    u = torch.tensor([counter_uniform(3, i, 0, 0) for i in range(64)], dtype=torch.float64)
    got = _c_sample(logits, 0.75, top_p, u, top_k)
    want = sample_tokens(logits, 0.75, top_p, u, top_k)
    assert_same_draws(got, want, logits, 0.75, top_p, u, top_k)
    # and top-k really cut: every draw is among the row's top_k logits
    kth = logits.topk(top_k, -1).values[:, -1]
    assert (logits.gather(-1, got[:, None]).squeeze(-1) >= kth).all()


def test_top_k_refused_when_negative():
    with pytest.raises(ValueError, match="top_k"):
        cpu_logits.sample(torch.randn(2, 10), 1.0, 0.9, torch.zeros(2, dtype=torch.float64), top_k=-1)
