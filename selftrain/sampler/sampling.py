"""Token selection: greedy, or temperature + top-k + top-p with counter-based randomness.

The random number behind the token drawn for sample j of prompt i at generation step s is
`counter_uniform(seed, i, j, s)`: a pure function of those four integers (splitmix64 rounds),
never a stateful generator. A request therefore draws the same numbers whether it runs alone
or among hundreds of others, before or after a preemption, on any rank of a data-parallel run.

Top-k (0 = off) comes first and acts on the logits: every token whose logit is below the k-th
largest logit of its row is dropped (ties at the k-th value are all kept), exactly as a -inf
logit; temperature and top-p then act on what is left, renormalised (the order of HF's and vLLM's
warpers: top-k, then top-p over the top-k probabilities). Comparing raw logits makes the top-k set
exact in any implementation (no rounding is involved).

Selection is inverse-CDF sampling in token-id order: the nucleus is every token whose
probability is at least that of the last token of the smallest top-probability set reaching
top_p (ties at that threshold are all kept); their probabilities are accumulated in token-id
order and the first token whose cumulative mass exceeds u * nucleus_mass is taken. Working in
id order (not sorted order) keeps the draw stable under tiny floating-point changes of the
logits: a token can only change when u falls within rounding error of a CDF boundary.
Each row is processed on its own, so no row depends on the others in the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from selftrain.sampler import cpu_logits

_MASK64 = (1 << 64) - 1
# the nucleus threshold is looked for among the top _TOPK first; rows needing more sort fully
_TOPK = 256


def _splitmix64(x: np.ndarray) -> np.ndarray:
    # uint64 arrays: additions and products wrap mod 2**64 and shifts are logical, as splitmix64 needs
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def counter_uniforms(seed: int, prompt_indices: Sequence[int], sample_indices: Sequence[int],
                     steps: Sequence[int]) -> np.ndarray:
    """float64 uniforms in [0, 1), one per (prompt, sample, step) triple, each determined by
    `seed` and its triple only (53 random bits); vectorised: one call serves a whole step."""
    h = _splitmix64(np.full(len(steps), seed & _MASK64, dtype=np.uint64))
    for values in (prompt_indices, sample_indices, steps):
        h = _splitmix64(h ^ np.asarray(values, dtype=np.int64).astype(np.uint64))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def counter_uniform(seed: int, prompt_index: int, sample_index: int, step: int) -> float:
    """The uniform of one (seed, prompt, sample, step): `counter_uniforms` for a single triple."""
    return float(counter_uniforms(seed, [prompt_index], [sample_index], [step])[0])


def _threshold(sorted_probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """[R, 1] probability of the last nucleus token, from probabilities sorted descending."""
    before = sorted_probs.cumsum(-1) - sorted_probs  # mass ranked above each token
    kept = (before < top_p).sum(-1, keepdim=True)  # >= 1: the top token is always kept
    return sorted_probs.gather(-1, kept - 1)


def nucleus_threshold(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """[R, 1] smallest probability a token needs to be in the top-p nucleus of its row."""
    vocab = probs.shape[-1]
    if vocab <= _TOPK:
        return _threshold(torch.sort(probs, dim=-1, descending=True).values, top_p)
    # most nuclei are small: a top-k is much cheaper than sorting the whole vocabulary
    vals = probs.topk(_TOPK, dim=-1, sorted=True).values
    thresh = _threshold(vals, top_p)
    # rows whose nucleus may extend past the top-k (mass above the k-th value < top_p)
    spill = ((vals.sum(-1) - vals[:, -1]) < top_p).nonzero().squeeze(-1)
    if spill.numel():
        thresh[spill] = _threshold(torch.sort(probs[spill], dim=-1, descending=True).values, top_p)
    return thresh


def apply_top_k(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """logits [R, V] with every entry below its row's k-th largest value set to -inf (ties at the
    k-th value kept); unchanged when top_k is 0 (off) or reaches the vocabulary."""
    if top_k <= 0 or top_k >= logits.shape[-1]:
        return logits
    kth = logits.topk(top_k, dim=-1, sorted=True).values[:, -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def sample_tokens(
    logits: torch.Tensor, temperature: float, top_p: float, uniforms: torch.Tensor, top_k: int = 0
) -> torch.Tensor:
    """Token ids [R] for fp32 logits [R, V] and uniforms [R]; greedy (first max) at temperature 0
    (top-k never drops the largest logit, so greedy ignores it)."""
    if temperature == 0:
        return logits.argmax(-1)
    scaled = apply_top_k(logits, top_k) / temperature
    if logits.device.type != "cpu":
        # on a GPU sorting the whole vocabulary is cheap and keeps every shape fixed; the CPU fast
        # path below picks rows with nonzero(), and each of those waits for the GPU (measured: the
        # sampler's steps on an H100 are bound by such host work)
        return _draw_full_vocabulary(scaled, top_p, uniforms, sort_whole=True)
    out = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)
    rest = torch.arange(logits.shape[0], device=logits.device)
    if top_p < 1.0 and logits.shape[-1] > _TOPK:
        # fast path: most nuclei lie inside the top-k, so only k probabilities are needed
        vals, ids = scaled.topk(_TOPK, dim=-1, sorted=True)
        probs = (vals - torch.logsumexp(scaled, -1, keepdim=True)).exp()
        thresh = _threshold(probs, top_p)
        inside = probs[:, -1:] < thresh  # every token outside the top-k is below the threshold
        rows = inside.squeeze(-1).nonzero().squeeze(-1)
        if rows.numel():
            ids_by_id, order = ids[rows].sort(dim=-1)  # the same id order as the full-vocab path
            kept = probs[rows] * (probs[rows] >= thresh[rows])
            pos = _draw(kept.gather(-1, order), uniforms[rows])
            out[rows] = ids_by_id.gather(-1, pos.unsqueeze(-1)).squeeze(-1)
        rest = (~inside).squeeze(-1).nonzero().squeeze(-1)
    if rest.numel():
        out[rest] = _draw_full_vocabulary(scaled[rest], top_p, uniforms[rest], sort_whole=False)
    return out


def _draw_full_vocabulary(scaled: torch.Tensor, top_p: float, uniforms: torch.Tensor,
                          sort_whole: bool) -> torch.Tensor:
    """Token ids [R] from temperature-scaled logits over the whole vocabulary; the nucleus
    threshold from a full sort (`sort_whole`, fixed shapes) or from `nucleus_threshold`."""
    probs = torch.softmax(scaled, dim=-1)
    if top_p < 1.0:
        if sort_whole:
            thresh = _threshold(torch.sort(probs, dim=-1, descending=True).values, top_p)
        else:
            thresh = nucleus_threshold(probs, top_p)
        probs = probs * (probs >= thresh)
    return _draw(probs, uniforms)


def _draw(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF positions [R] for unnormalised probabilities [R, K] in token-id order."""
    cdf = probs.cumsum(-1)
    target = uniforms.to(cdf.dtype).unsqueeze(-1) * cdf[:, -1:]
    # right=True skips zero-probability tokens (flat stretches of the CDF)
    pick = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    # u * mass can round up to the full mass: fall back to the row's last token with mass
    pos = torch.arange(cdf.shape[-1], device=cdf.device)
    last = torch.where(probs > 0, pos, 0).amax(-1)
    return torch.minimum(pick, last)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The model's own log-probabilities (temperature 1, no top-p) of the chosen tokens."""
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def select_tokens(logits: torch.Tensor, temperature: float, top_p: float, uniforms: torch.Tensor,
                  logprobs: bool = False, top_k: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The engine's token choice: tokens [R] (and their temperature-1 log-probabilities when
    `logprobs`). fp32 logits on the CPU go through csrc/cpu_logits.c (5-8x faster than the torch
    code above at 64-400 rows); everything else through `sample_tokens` / `token_logprobs`."""
    if logits.device.type == "cpu" and logits.dtype == torch.float32 and cpu_logits.available():
        uniforms = uniforms.to(torch.float64)
        return cpu_logits.sample(logits.contiguous(), temperature, top_p, uniforms, logprobs, top_k)
    tokens = sample_tokens(logits, temperature, top_p, uniforms, top_k)
    return tokens, token_logprobs(logits, tokens) if logprobs else None
