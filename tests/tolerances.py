"""Bounds for comparing two floating-point computations of the same quantity, derived from the
arithmetic rather than tuned on one machine.

torch's CPU kernels round differently on AVX2 and AVX-512 hosts (different vector widths change
the order of every sum), so a test that compares two fp32 paths must allow what rounding can do
and nothing more. The model used throughout (unit roundoff u = eps / 2 of the format):

- one rounded operation on a value of magnitude |x| is off by at most u |x|;
- a sum of n terms accumulated in SIMD lanes is off by at most ~lambda sqrt(n) u sum|terms| with
  overwhelming probability (the probabilistic rounding-error bound of Higham & Mary, SIAM J. Sci.
  Comput. 2019; the worst case, n u, is never approached by independent rounding errors);
- a comparison of two implementations allows the sum of both implementations' bounds.

Each helper documents its constants; all of them scale with the magnitudes of the data, so the
same bound holds for logits of size 1 and of size 30.
"""

from __future__ import annotations

import math

import torch

EPS32 = torch.finfo(torch.float32).eps  # 2**-23: one ulp at 1.0
LAMBDA = 4.0  # the sqrt(n) bound's multiplier: exceeded with probability ~2 exp(-lambda^2 / 2) < 1e-3


def sum_bound(n_terms: int, eps: float = EPS32, lanes: int = 8) -> float:
    """Relative error bound of a sum of `n_terms` positive terms (probabilistic, see module doc).
    Vectorised sums (ours in csrc/, torch's on AVX2 and AVX-512) accumulate in at least 8 lanes,
    so each lane's sequential sum holds at most n / 8 terms; adding the lanes up only averages."""
    return LAMBDA * math.sqrt(max(math.ceil(n_terms / lanes), 1)) * eps / 2


def log_softmax_bound(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """[R] bound on |a - b| for two fp32 computations a, b of log_softmax(logits / T)[row, token].

    log p = (z_tok - m) - log(sum_j exp(z_j - m)), z = logits / T, m = max z. Per implementation:
    the subtractions and the scaling round values of size |z_tok|, |m| and |lse| (a few ops each:
    2 u per value), each exp is good to ~2 ulps (a relative error on every term, so on the sum),
    and the V-term sum adds `sum_bound(V)`; log turns the sum's relative error into an absolute
    one. Two implementations: twice that.
    """
    z = logits.double() / temperature
    m = z.amax(-1)
    lse = torch.logsumexp(z, -1)
    z_tok = z.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)
    per_impl = EPS32 * (z_tok.abs() + m.abs() + lse.abs() + 2.0) + sum_bound(z.shape[-1])
    return 2 * per_impl


def assert_logprobs_close(got: torch.Tensor, want: torch.Tensor, logits: torch.Tensor,
                          tokens: torch.Tensor, temperature: float = 1.0) -> None:
    """got and want (fp32 log-probs of `tokens` under `logits`) agree within `log_softmax_bound`."""
    bound = log_softmax_bound(logits, tokens, temperature)
    err = (got.double() - want.double()).abs()
    bad = (err > bound).nonzero().flatten().tolist()
    assert not bad, f"rows {bad[:5]}: |diff| {err[bad[:5]].tolist()} > bound {bound[bad[:5]].tolist()}"


def _nuclei(p: torch.Tensor, top_p: float, window: float, kappa: float) -> list[torch.Tensor]:
    """Every nucleus (bool mask over the row) that fp32 rounding can give: the cut's cumulative
    mass is compared with top_p within `window` and each probability with the threshold within a
    relative `kappa`, so the threshold can fall anywhere among the tokens of that band; the
    nuclei are nested, one per place the threshold can take."""
    if top_p >= 1.0:
        return [p > 0]
    sorted_p = torch.sort(p, descending=True).values
    before = sorted_p.cumsum(0) - sorted_p
    kept_lo = int((before < top_p - window).sum().clamp(min=1))
    kept_hi = int((before < top_p + window).sum().clamp(min=1))
    tau_hi = float(sorted_p[kept_lo - 1]) * (1 + kappa)
    tau_lo = float(sorted_p[kept_hi - 1]) * (1 - kappa)
    band = sorted_p[(sorted_p >= tau_lo) & (sorted_p < tau_hi)].tolist()  # descending
    taus = [tau_hi, *band] if band else [tau_lo]
    return [p >= t for t in taus]


def possible_draws(logits: torch.Tensor, temperature: float, top_p: float, u: float, top_k: int = 0
                   ) -> set[int]:
    """Every token an fp32 implementation of sampling.py's selection rule can draw for one row.

    Top-k (0 = off) is applied first and exactly: a comparison of the given logits with the k-th
    largest involves no rounding, so every implementation keeps the same set.

    The rule (inverse CDF in token-id order over the top-p nucleus, target u * nucleus mass) is
    evaluated in float64, then widened by what fp32 rounding can move:
    - each probability, by a relative kappa = eps (2 max(max|z|, |lse|) + 6): its exponent's
      argument rounds at the size of z and lse, exp and the division add a few ulps;
    - the normalising sum, by `sum_bound(V)`: it shifts every cumulative mass compared with top_p
      (but cancels between the CDF and u * mass, which it scales alike);
    - a prefix of the CDF, by the sum of its terms' independent errors (LAMBDA kappa
      sqrt(sum p^2)) plus the 2 ulps of the fp32 target and CDF values.
    A token is possible when the target lies within that distance of its CDF interval, in any
    nucleus rounding can give. Greedy (T = 0) has no tolerance: the first
    index of the largest logit is exact in any implementation.
    """
    if temperature == 0:
        return {int(logits.argmax())}
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    z = logits.double() / temperature
    lse = float(torch.logsumexp(z, -1))
    p = torch.softmax(z, -1)
    z = z[torch.isfinite(z)]  # the dropped tokens round nothing
    kappa = EPS32 * (2 * max(float(z.abs().max()), abs(lse)) + 6)
    spread = LAMBDA * kappa * float(p.square().sum().sqrt())
    window = sum_bound(z.numel()) + spread + 2 * EPS32
    out: set[int] = set()
    for nucleus in _nuclei(p, top_p, window, kappa):
        kept = p * nucleus
        cdf = kept.cumsum(0)
        total = float(cdf[-1])
        delta = spread + 2 * EPS32 * total
        target = u * total
        before = cdf - kept
        ok = nucleus & (before - delta <= target) & (cdf + delta > target)
        out.update(ok.nonzero().flatten().tolist())
    return out


def assert_same_draws(got: torch.Tensor, want: torch.Tensor, logits: torch.Tensor, temperature: float,
                      top_p: float, uniforms: torch.Tensor, top_k: int = 0) -> None:
    """Token draws of two fp32 implementations agree, except on rows where the float64 reference
    proves the difference is a rounding tie: both tokens are possible draws (`possible_draws`)
    and the possible set is a boundary, not a stretch of the vocabulary (at most 3 tokens)."""
    for r in (got != want).nonzero().flatten().tolist():
        allowed = possible_draws(logits[r], temperature, top_p, float(uniforms[r]), top_k)
        g, w = int(got[r]), int(want[r])
        assert g in allowed and w in allowed and len(allowed) <= 3, (
            f"row {r}: drew {g}, reference {w}; a rounding tie allows only {sorted(allowed)}")


def matmul_bound(a: torch.Tensor, b: torch.Tensor, eps: float = EPS32) -> torch.Tensor:
    """Elementwise bound on |x - y| for two computations x, y of a @ b in a format with machine
    epsilon `eps` (any blocking or summation order): each entry is a K-term dot product, off by
    `sum_bound(K)` times sum_k |a_ik b_kj| per implementation (plus one rounding of the result)."""
    k = a.shape[-1]
    scale = a.double().abs() @ b.double().abs()
    return 2 * (sum_bound(k, eps) + eps) * scale


def assert_matmul_close(got: torch.Tensor, want: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                        eps: float = EPS32) -> None:
    """got and want, two computations of a @ b, agree within `matmul_bound`."""
    bound = matmul_bound(a, b, eps)
    err = (got.double() - want.double()).abs()
    worst = float((err - bound).max())
    assert worst <= 0, f"|diff| exceeds the rounding bound by {worst:.3g} (max |diff| {float(err.max()):.3g})"


def assert_as_accurate(got: torch.Tensor, reference: torch.Tensor, truth: torch.Tensor, scale: float,
                       factor: float = 4.0, ulps: float = 8.0) -> None:
    """`got` (our fp32 path) is as accurate as `reference` (torch's fp32 path of the same math),
    both measured against `truth` (the same reference computed in float64):
    max|got - truth| <= factor * max|reference - truth| + ulps * eps * scale.

    For computations too deep for a useful closed-form bound (a whole network, attention over a
    long context) this is the portable form: both fp32 paths round on the same host, so when a
    host's kernels round more (or less), the allowance moves with them. `scale` is the magnitude
    of the values compared; the ulps term covers results the reference happens to get exact.
    """
    err = float((got.double() - truth.double()).abs().max()) if got.numel() else 0.0
    ref_err = float((reference.double() - truth.double()).abs().max()) if got.numel() else 0.0
    allowed = factor * ref_err + ulps * EPS32 * scale
    assert err <= allowed, (
        f"max error {err:.3g} vs float64; torch's own fp32 error {ref_err:.3g}; allowed {allowed:.3g}")


def assert_greedy_equal(got: list[int], want: list[int], logits64: torch.Tensor, logit_error: float) -> int:
    """Greedy continuations of two fp32 implementations agree token by token up to the end, or up
    to a step where float64 logits (`logits64` [steps, V], along `want`) show the two chosen
    tokens within `logit_error` of each other: a rounding tie, after which the continuations may
    legitimately differ. Returns the number of tokens compared."""
    for i, (a, b) in enumerate(zip(got, want)):
        if a != b:
            gap = float((logits64[i, a] - logits64[i, b]).abs())
            assert gap <= logit_error, (
                f"step {i}: token {a} instead of {b}, logit gap {gap:.3g} > rounding bound {logit_error:.3g}")
            return i
    assert len(got) == len(want), f"lengths {len(got)} != {len(want)}"
    return len(got)


def logits_along(model, ids: torch.Tensor) -> torch.Tensor:
    """[len, V] logits of an HF causal LM over token ids [len] (one forward, no grad)."""
    with torch.no_grad():
        return model(ids.unsqueeze(0).to(model.device)).logits[0].cpu()


def assert_greedy_matches_hf(model, model64, prompt_ids: list[int], got: list[int], max_new: int,
                             pad_token_id: int | None) -> None:
    """Our greedy continuation `got` equals HF `generate`'s on `model` (fp32), up to a rounding tie:
    the logit error allowed at a differing step is what separates HF's own fp32 logits from a
    float64 copy of the model (`model64`) along HF's continuation, times 4 plus 8 ulps."""
    enc = torch.tensor([prompt_ids], device=model.device)
    with torch.no_grad():
        ref = model.generate(input_ids=enc, attention_mask=torch.ones_like(enc), max_new_tokens=max_new,
                             do_sample=False, pad_token_id=pad_token_id)[0].cpu()
    want = ref[len(prompt_ids):].tolist()
    if got == want:
        return
    steps = slice(len(prompt_ids) - 1, len(ref) - 1)
    l32, l64 = logits_along(model, ref)[steps].double(), logits_along(model64, ref)[steps]
    logit_error = 4 * float((l32 - l64).abs().max()) + 8 * EPS32 * float(l64.abs().max())
    assert_greedy_equal(got, want, l64, logit_error)


def padded_logits(model, sequences: list[list[int]]) -> torch.Tensor:
    """[B, max_len, V] logits of an HF causal LM over right-padded token sequences (one forward)."""
    width = max(len(s) for s in sequences)
    ids = torch.zeros(len(sequences), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(sequences):
        ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
    with torch.no_grad():
        return model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits.cpu()


def assert_completion_logprobs_accurate(hf, hf64, prompt_ids: list[int], token_ids: list[int],
                                        logprobs: list[float]) -> None:
    """A sampled completion's log-probs (temperature 1) are as accurate as HF's own fp32 forward
    over prompt + completion, both against the float64 model `hf64` (assert_as_accurate)."""
    full = torch.tensor([prompt_ids + token_ids])
    rows, chosen = slice(len(prompt_ids) - 1, -1), torch.tensor(token_ids)[:, None]
    with torch.no_grad():
        ref = torch.log_softmax(hf(full).logits[0].float(), -1)[rows].gather(-1, chosen)[:, 0]
        logits64 = hf64(full).logits[0][rows]
    truth = torch.log_softmax(logits64, -1).gather(-1, chosen)[:, 0]
    assert len(logprobs) == len(token_ids)
    scale = float(logits64.abs().max() + torch.logsumexp(logits64, -1).abs().max())
    assert_as_accurate(torch.tensor(logprobs), ref, truth, scale=scale)
