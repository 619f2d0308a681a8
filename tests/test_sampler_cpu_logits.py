"""csrc/cpu_logits.c: the LM head's vocab-major product turned into rows, and the C token
selection checked against the plain-torch reference in sampling.py (the shared selection tests,
chi-square included, run on both in test_sampler_sampling.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tolerances import assert_logprobs_close, assert_matmul_close, assert_same_draws, possible_draws

from selftrain.sampler import cpu_logits
from selftrain.sampler import sampling as sampling_mod
from selftrain.sampler.sampling import counter_uniform, sample_tokens, select_tokens, token_logprobs


def _uniforms(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.tensor([counter_uniform(seed, i, 0, 0) for i in range(rows)], dtype=torch.float64)


class _threads:
    """torch.set_num_threads for a block (the kernels split work by torch's thread count)."""

    def __init__(self, n: int):
        self.n, self.before = n, torch.get_num_threads()

    def __enter__(self):
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.before)


@pytest.mark.parametrize("vocab,cols,rows", [(3072, 64, 64), (1000, 13, 13), (70, 24, 17), (5, 8, 0)])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_to_rows_is_the_transpose_of_the_first_columns(vocab, cols, rows, threads):
    src = torch.randn(vocab, cols)
    with _threads(threads):
        out = cpu_logits.to_rows(src, rows)
    assert out.shape == (rows, vocab) and out.is_contiguous()
    assert torch.equal(out, src[:, :rows].t())


def test_to_rows_refuses_bad_input():
    with pytest.raises(TypeError, match="contiguous"):
        cpu_logits.to_rows(torch.randn(8, 100).t())
    with pytest.raises(TypeError, match="float32"):
        cpu_logits.to_rows(torch.randn(100, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="rows must be in"):
        cpu_logits.to_rows(torch.randn(100, 8), 9)
    with pytest.raises(ValueError, match=r"out must be \[5, 100\]"):
        cpu_logits.to_rows(torch.randn(100, 8), 5, out=torch.empty(8, 100))


def test_to_rows_writes_into_out_when_given():
    src, out = torch.randn(300, 16), torch.full((11, 300), float("nan"))
    got = cpu_logits.to_rows(src, 11, out=out)
    assert got.data_ptr() == out.data_ptr() and torch.equal(out, src[:, :11].t())


@pytest.mark.parametrize("temperature,top_p", [(0.75, 0.95), (1.0, 1.0), (0.7, 1.0), (1.3, 0.8), (0.0, 1.0)])
def test_selection_equals_the_torch_reference_on_peaked_rows(temperature, top_p):
    g = torch.Generator().manual_seed(7)
    # language-model-like rows: a vocabulary that is not a multiple of the vector width, a few
    # strong candidates over a long tail
    logits = torch.randn(96, 32005, generator=g) * 2.0
    logits[:, :40] += torch.rand(96, 40, generator=g) * 12.0
    u = _uniforms(96, seed=3)
    got, logps = cpu_logits.sample(logits, temperature, top_p, u, logprobs=True)
    want = sample_tokens(logits, temperature, top_p, u)
    assert_same_draws(got, want, logits, temperature, top_p, u)
    assert_logprobs_close(logps, token_logprobs(logits, got), logits, got)


def test_nucleus_past_the_candidate_thresholds_sorts_the_whole_row():
    # 100k tokens in two tiers: the top tier alone holds 73% of the mass at ~1.5e-5 per token, below
    # the kernel's 2e-5 bound for its cheap paths, so tau comes from sorting the whole row
    logits = torch.zeros(64, 100_000)
    logits[:, 1::2] = -1.0
    u = _uniforms(64, seed=9)
    got, _ = cpu_logits.sample(logits, 1.0, 0.5, u)
    assert (got % 2 == 0).all(), "a token outside the nucleus (the top tier) was drawn"
    assert_same_draws(got, sample_tokens(logits, 1.0, 0.5, u), logits, 1.0, 0.5, u)
    # the draw is the inverse CDF over the tier in id order: token 2k for u in [k, k+1) / 50000
    assert torch.equal(got, (u * 50_000).floor().long() * 2)


@pytest.mark.parametrize("spread", [0.3, 1.0, 3.0])
def test_flat_rows_select_what_torch_selects(spread):
    # random-normal logits at small spreads make nuclei of thousands of tokens (the whole-row path
    # and its radix sort, also its early switch when candidates exceed an eighth of the row); at
    # 3.0 the candidate sets are a few hundred tokens (the short-array sort)
    g = torch.Generator().manual_seed(int(spread * 10))
    logits = torch.randn(24, 49152, generator=g) * spread
    u = _uniforms(24, seed=3)
    for temperature, top_p in ((0.75, 0.95), (1.0, 0.5), (1.2, 0.999)):
        got, lp = cpu_logits.sample(logits, temperature, top_p, u, True)
        want = sample_tokens(logits, temperature, top_p, u)
        assert_same_draws(got, want, logits, temperature, top_p, u)
        assert_logprobs_close(lp, token_logprobs(logits, got), logits, got)


def test_a_draw_away_from_a_cdf_boundary_is_not_excused_as_a_tie():
    # the tolerance above must still catch real selection bugs. Flat rows (nuclei of ~40k tokens
    # of ~2e-5 each) are where rounding ties are likeliest: the possible draws there are the
    # reference's token and at most its id-order neighbours; a token drawn with another uniform
    # (a bug in the CDF walk) or two ids away is refused.
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(16, 49152, generator=g) * 0.3
    u = _uniforms(16, seed=4)
    want = sample_tokens(logits, 0.75, 0.95, u)
    other_u = sample_tokens(logits, 0.75, 0.95, 1 - u)
    for r in range(16):
        allowed = possible_draws(logits[r], 0.75, 0.95, float(u[r]))
        assert int(want[r]) in allowed and max(allowed) - min(allowed) <= 2, (r, allowed)
        for wrong in (want[r : r + 1] + 3, other_u[r : r + 1]):
            with pytest.raises(AssertionError, match="rounding tie"):
                assert_same_draws(wrong, want[r : r + 1], logits[r : r + 1], 0.75, 0.95, u[r : r + 1])


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_selection_is_the_same_for_any_thread_count_and_batch(threads):
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(37, 5003, generator=g) * 3.0
    u = _uniforms(37, seed=1)
    with _threads(1):
        alone = torch.cat([cpu_logits.sample(logits[i : i + 1].contiguous(), 0.9, 0.9, u[i : i + 1])[0]
                           for i in range(37)])
    with _threads(threads):
        together, _ = cpu_logits.sample(logits, 0.9, 0.9, u)
    assert torch.equal(together, alone)


def test_sample_refuses_bad_input():
    logits, u = torch.randn(4, 50), _uniforms(4)
    with pytest.raises(TypeError, match="float32"):
        cpu_logits.sample(logits.double(), 1.0, 0.9, u)
    with pytest.raises(TypeError, match="float64"):
        cpu_logits.sample(logits, 1.0, 0.9, u.float())
    with pytest.raises(ValueError, match="3 uniforms"):
        cpu_logits.sample(logits, 1.0, 0.9, u[:3])
    with pytest.raises(ValueError, match="top_p"):
        cpu_logits.sample(logits, 1.0, 0.0, u)


def test_select_tokens_takes_the_kernel_for_fp32_cpu_logits_only(monkeypatch):
    calls = []
    real = cpu_logits.sample

    def spy(*args, **kwargs):
        calls.append(args[0].dtype)
        return real(*args, **kwargs)

    monkeypatch.setattr(sampling_mod.cpu_logits, "sample", spy)
    logits, u = torch.randn(5, 300) * 3, _uniforms(5)
    tokens, logps = select_tokens(logits, 0.8, 0.9, u, logprobs=True)
    assert calls == [torch.float32]
    assert_same_draws(tokens, sample_tokens(logits, 0.8, 0.9, u), logits, 0.8, 0.9, u)
    ref_tokens, ref_logps = select_tokens(logits.double(), 0.8, 0.9, u, logprobs=True)
    assert calls == [torch.float32]  # float64 logits went through the torch code
    assert_same_draws(tokens, ref_tokens, logits, 0.8, 0.9, u)
    assert_logprobs_close(logps, ref_logps.float(), logits, tokens)


@pytest.mark.parametrize("rows", [1, 8, 13, 64])
def test_model_head_equals_f_linear_for_any_row_count(rows):
    from selftrain.sampler import Sampler

    model = Sampler("tiny-random", kv_cache_tokens=256).model
    assert model.vocab_major_head
    hidden = torch.randn(rows, model.args.hidden_size)
    got = model.logits(hidden)
    assert got.shape == (rows, model.args.vocab_size)
    assert_matmul_close(got, F.linear(hidden, model.lm_head), hidden, model.lm_head.t())


def test_model_head_reuses_its_buffers_across_steps_and_grows_them():
    from selftrain.sampler import Sampler

    model = Sampler("tiny-random", kv_cache_tokens=256).model
    ptrs = []
    for rows in (64, 13, 64, 100, 7):  # smaller sizes reuse the buffer; 100 rows grows it
        hidden = torch.randn(rows, model.args.hidden_size)
        got = model.logits(hidden)
        assert_matmul_close(got, F.linear(hidden, model.lm_head), hidden, model.lm_head.t()), rows
        ptrs.append(got.data_ptr())
    assert ptrs[0] == ptrs[1] == ptrs[2] and ptrs[3] == ptrs[4]
