"""selftrain.kernels: the chunked torch path (CPU), dispatch, DPO/RPO, per-sequence sums, bad input.

The Triton kernels are checked through Triton's interpreter in test_kernels_triton.py (a
subprocess, because TRITON_INTERPRET must be set before triton is imported).
"""

from __future__ import annotations

import pytest
import selftrain.kernels.logprob as logprob_mod
import torch
from selftrain.kernels import dpo_loss, fused_logprobs, lm_head_weight, sequence_logprob_sums
from selftrain.kernels.reference import dpo_loss_reference, logprobs_reference
from torch.utils._python_dispatch import TorchDispatchMode

# (N, H, V, temperature, ignore pattern, logit scale): V not a multiple of any block, H not a
# power of two, a single token, every row ignored, logits around +-1e4, temperature != 1.
LOGPROB_CASES = [
    (1, 16, 16, 1.0, "none", 1.0),
    (40, 24, 37, 0.7, "every3", 1.0),
    (23, 20, 53, 1.0, "all", 1.0),
    (12, 16, 50, 1.0, "none", 1e4),
    (70, 48, 100, 2.0, "every3", 1.0),
    (33, 7, 1000, 1.3, "first", 3.0),
]


def make_case(n, h, v, scale, pattern, dtype=torch.float32, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen)
    weight = torch.randn(v, h, generator=gen)
    if scale != 1.0:  # rescale so that max |logit| is about `scale`
        hidden = hidden * (scale / (hidden @ weight.t()).abs().max())
    targets = torch.randint(0, v, (n,), generator=gen)
    if pattern == "every3":
        targets[::3] = -100
    elif pattern == "all":
        targets[:] = -100
    elif pattern == "first":
        targets[0] = -100
    upstream = torch.randn(n, generator=gen)
    return (
        hidden.to(device=device, dtype=dtype),
        weight.to(device=device, dtype=dtype),
        targets.to(device),
        upstream.to(device),
    )


def run_logprobs(fn, hidden, weight, targets, upstream, temperature):
    h = hidden.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    logp = fn(h, w, targets, temperature=temperature)
    (logp * upstream).sum().backward()
    return logp.detach(), h.grad, w.grad


def assert_matches_reference(case, dtype=torch.float32, device="cpu", rtol=1e-5):
    n, h, v, temp, pattern, scale = case
    hidden, weight, targets, upstream = make_case(n, h, v, scale, pattern, dtype, device)
    got = run_logprobs(fused_logprobs, hidden, weight, targets, upstream, temp)
    want = run_logprobs(logprobs_reference, hidden, weight, targets, upstream, temp)
    assert got[0].dtype == torch.float32 and got[0].shape == (n,)
    assert got[1].dtype == dtype and got[2].dtype == dtype
    # fp32 logits carry an absolute rounding error proportional to their size (~1e-7 |z| per
    # product, summed in a different order by each matmul), which the softmax turns into an
    # error of the probabilities; so log-probs get atol rtol*|z| and grads rtol or 3e-8 |z|,
    # relative to the largest gradient entry.
    logit_scale = max(1.0, scale / temp)
    for name, a, b in zip(("logp", "grad_hidden", "grad_weight"), got, want):
        grad_rtol = max(rtol, 3e-8 * logit_scale)
        atol = rtol * logit_scale if name == "logp" else grad_rtol * max(1.0, float(b.float().abs().max()))
        torch.testing.assert_close(
            a.float(), b.float(), rtol=rtol, atol=atol, msg=lambda m, k=name: f"{k}: {m}"
        )
    if pattern == "all":
        assert not got[0].any() and not got[1].any() and not got[2].any()


@pytest.fixture
def torch_path(monkeypatch):
    monkeypatch.setenv("SELFTRAIN_KERNELS", "torch")
    # tiny chunks (7 rows at V=37...) so that every case spans several chunks with a remainder
    monkeypatch.setattr(logprob_mod, "TORCH_CHUNK_BYTES", 4 * 7 * 100)


@pytest.mark.parametrize(
    "case", LOGPROB_CASES, ids=lambda c: f"N{c[0]}H{c[1]}V{c[2]}T{c[3]}-{c[4]}-s{c[5]:g}"
)
def test_torch_path_matches_reference(torch_path, case):
    assert_matches_reference(case)


def test_torch_path_default_chunking_matches_reference(monkeypatch):
    monkeypatch.setenv("SELFTRAIN_KERNELS", "auto")  # auto on CPU -> torch
    assert logprob_mod.torch_chunk_rows(49152, 10_000) == 256  # 48 MiB of fp32 logits
    assert_matches_reference((300, 40, 3000, 0.9, "every3", 5.0))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_torch_path_low_precision(torch_path, dtype):
    # Same inputs upcast -> same fp32 math; only the returned grads are rounded to bf16/fp16.
    assert_matches_reference((40, 24, 37, 0.7, "every3", 8.0), dtype=dtype, rtol=1e-2)


def test_torch_path_never_builds_full_logits(monkeypatch):
    monkeypatch.setenv("SELFTRAIN_KERNELS", "torch")
    n, h, v = 256, 32, 4000
    monkeypatch.setattr(logprob_mod, "TORCH_CHUNK_BYTES", 4 * v * 40)  # 32-row chunks (rounded to 16s)
    hidden, weight, targets, upstream = make_case(n, h, v, 1.0, "first")

    class Largest(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    Largest.largest = max(Largest.largest, t.numel())
            return out

    with Largest():
        run_logprobs(fused_logprobs, hidden, weight, targets, upstream, 1.0)
    # the biggest tensor is grad_weight/weight [V, H] or a [32, V] chunk, never [N, V]
    assert Largest.largest <= max(v * h, 32 * v) < n * v


def test_forward_only_needs_no_grad(torch_path):
    hidden, weight, targets, _ = make_case(9, 16, 30, 1.0, "none")
    with torch.no_grad():
        got = fused_logprobs(hidden, weight, targets)
    torch.testing.assert_close(got, logprobs_reference(hidden, weight, targets), rtol=1e-5, atol=1e-5)
    # grad only w.r.t. hidden (frozen head)
    h = hidden.clone().requires_grad_()
    fused_logprobs(h, weight, targets).sum().backward()
    h_ref = hidden.clone().requires_grad_()
    logprobs_reference(h_ref, weight, targets).sum().backward()
    torch.testing.assert_close(h.grad, h_ref.grad, rtol=1e-5, atol=1e-5)


def test_under_cpu_autocast_stays_fp32(torch_path):
    # the trainer calls the kernel inside torch.autocast(bf16): the math must stay fp32
    hidden, weight, targets, upstream = make_case(30, 24, 37, 4.0, "every3")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = run_logprobs(fused_logprobs, hidden, weight, targets, upstream, 1.0)
    want = run_logprobs(logprobs_reference, hidden, weight, targets, upstream, 1.0)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * max(1.0, float(b.abs().max())))


def test_custom_ignore_index(torch_path):
    hidden, weight, targets, upstream = make_case(10, 16, 30, 1.0, "none")
    targets[3] = 7
    got = fused_logprobs(hidden, weight, targets, ignore_index=7)
    want = logprobs_reference(hidden, weight, targets, ignore_index=7)
    assert got[3] == 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_uniform_grad_mode_matches_reference(torch_path, dtype):
    # token-mean SFT loss: the same upstream gradient for every kept token
    hidden, weight, targets, _ = make_case(40, 24, 37, 5.0, "every3", dtype=dtype)
    n_kept = int((targets != -100).sum())
    results = []
    for fn, kwargs in ((fused_logprobs, {"uniform_grad": True}), (logprobs_reference, {})):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        logp = fn(h, w, targets, temperature=0.8, **kwargs)
        (-logp.sum() / n_kept).backward()
        results.append((logp.detach(), h.grad, w.grad))
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for a, b in zip(*results):
        torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol * float(b.float().abs().max()))


def test_uniform_grad_mode_rejects_a_per_token_gradient(torch_path):
    hidden, weight, targets, upstream = make_case(20, 16, 30, 1.0, "none")
    h = hidden.clone().requires_grad_()
    logp = fused_logprobs(h, weight, targets, uniform_grad=True)
    with pytest.raises(RuntimeError, match="differs between tokens"):
        (logp * upstream).sum().backward()
    logp = fused_logprobs(h, weight, targets, uniform_grad=True)
    logp.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="single backward"):
        logp.sum().backward()
    with torch.no_grad():  # no grads wanted: the flag changes nothing
        torch.testing.assert_close(
            fused_logprobs(hidden, weight, targets, uniform_grad=True),
            logprobs_reference(hidden, weight, targets),
            rtol=1e-5,
            atol=1e-5,
        )


# ------------------------------------------------------------------------------------ dispatch


def test_env_selects_backend(monkeypatch):
    from selftrain.kernels import choose_backend

    cpu = torch.device("cpu")
    monkeypatch.setenv("SELFTRAIN_KERNELS", "auto")
    assert choose_backend(cpu) == "torch"
    monkeypatch.setenv("SELFTRAIN_KERNELS", "torch")
    assert choose_backend(cpu) == "torch"
    monkeypatch.setenv("SELFTRAIN_KERNELS", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        choose_backend(cpu)
    monkeypatch.setenv("SELFTRAIN_KERNELS", "cuda")
    with pytest.raises(ValueError, match="SELFTRAIN_KERNELS"):
        choose_backend(cpu)


# ------------------------------------------------------------------------------------ bad input


def test_logprob_bad_inputs_name_the_argument():
    hidden, weight, targets, _ = make_case(6, 16, 30, 1.0, "none")
    cases = [
        ((hidden[None], weight, targets), {}, "hidden"),
        ((hidden, weight[:, :8], targets), {}, "weight"),
        ((hidden, weight, targets[:5]), {}, "targets"),
        ((hidden, weight.double(), targets), {}, "weight dtype"),
        ((hidden, weight, targets.float()), {}, "targets must be int64"),
        ((hidden.t().contiguous().t(), weight, targets), {}, "hidden must be contiguous"),
        ((hidden, weight.t().contiguous().t(), targets), {}, "weight must be contiguous"),
        ((hidden, weight, torch.tensor([0, 1, 2, 30, 4, 5])), {}, r"targets\[3\] = 30"),
        ((hidden, weight, torch.tensor([0, 1, -1, 3, 4, 5])), {}, r"targets\[2\] = -1"),
        ((hidden, weight, targets), {"temperature": 0.0}, "temperature"),
        ((hidden.long(), weight, targets), {}, "hidden dtype"),
    ]
    for args, kwargs, pattern in cases:
        with pytest.raises((ValueError, TypeError), match=pattern):
            fused_logprobs(*args, **kwargs)


def test_dpo_bad_inputs_name_the_argument():
    x = torch.randn(4)
    with pytest.raises(ValueError, match="ref_rejected"):
        dpo_loss(x, x, x, torch.randn(5), beta=0.1)
    with pytest.raises(ValueError, match="policy_chosen must be 1-D"):
        dpo_loss(x[None], x, x, x, beta=0.1)
    with pytest.raises(ValueError, match="chosen_nll"):
        dpo_loss(x, x, x, x, beta=0.1, rpo_alpha=1.0)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(x, x, x, x, beta=0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(x, x, x, x, beta=0.1, label_smoothing=0.7)
    with pytest.raises(ValueError, match="chosen_nll has shape"):
        dpo_loss(x, x, x, x, beta=0.1, rpo_alpha=1.0, chosen_nll=torch.randn(3))


# ------------------------------------------------------------------------------------ DPO


DPO_CASES = [(1, 0.1, 0.0, 0.0), (37, 0.3, 0.1, 0.5), (200, 2.0, 0.25, 1.0), (16, 50.0, 0.0, 0.0)]


def dpo_inputs(batch, seed=0, dtype=torch.float32, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    vals = [torch.randn(batch, generator=gen) * 5 - 20 for _ in range(4)] + [
        torch.rand(batch, generator=gen) * 3
    ]
    return [v.to(device=device, dtype=dtype).requires_grad_() for v in vals]


def check_dpo_against_reference(batch, beta, smoothing, alpha, dtype=torch.float32, device="cpu", rtol=1e-5):
    got_in, want_in = (
        dpo_inputs(batch, dtype=dtype, device=device),
        dpo_inputs(batch, dtype=dtype, device=device),
    )
    kwargs = dict(beta=beta, rpo_alpha=alpha, chosen_nll=None, label_smoothing=smoothing)
    loss, metrics = dpo_loss(*got_in[:4], **{**kwargs, "chosen_nll": got_in[4]})
    ref_loss, ref_metrics = dpo_loss_reference(*want_in[:4], **{**kwargs, "chosen_nll": want_in[4]})
    loss.backward()
    ref_loss.backward()
    assert loss.dtype == torch.float32 and loss.dim() == 0
    torch.testing.assert_close(loss, ref_loss, rtol=rtol, atol=rtol)
    assert set(metrics) == {"rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy"}
    for key in metrics:
        assert not metrics[key].requires_grad
        torch.testing.assert_close(metrics[key], ref_metrics[key], rtol=rtol, atol=rtol)
    for i, (a, b) in enumerate(zip(got_in, want_in)):
        if b.grad is None:
            assert a.grad is None or not a.grad.any(), i
        else:
            torch.testing.assert_close(a.grad, b.grad, rtol=rtol, atol=rtol * 1e-2)


@pytest.mark.parametrize("case", DPO_CASES)
def test_dpo_torch_path(monkeypatch, case):
    monkeypatch.setenv("SELFTRAIN_KERNELS", "torch")
    check_dpo_against_reference(*case)


def test_dpo_known_value():
    # margin 0 -> loss log 2 whatever the smoothing; accuracy counts margin > 0 only
    z = torch.zeros(3)
    loss, metrics = dpo_loss(z, z, z, z, beta=0.5, label_smoothing=0.2)
    assert abs(loss.item() - 0.693147) < 1e-5 and metrics["rewards/accuracy"].item() == 0.0
    loss, _ = dpo_loss(z, z, z, z, beta=0.5, rpo_alpha=2.0, chosen_nll=torch.tensor([1.0, 2.0, 3.0]))
    assert abs(loss.item() - (0.693147 + 4.0)) < 1e-5


# ------------------------------------------------------------------------------------ sequence sums


def test_sequence_sums_padded_and_packed_agree():
    gen = torch.Generator().manual_seed(1)
    logp = -torch.rand(3, 5, generator=gen)
    mask = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    logp[~mask] = float("-inf")  # masked positions must not leak, even non-finite ones
    leaf = logp.clone().requires_grad_()
    sums, counts = sequence_logprob_sums(leaf, mask, return_counts=True)
    expect = torch.stack([logp[i][mask[i]].sum() for i in range(3)])
    torch.testing.assert_close(sums.detach(), expect)
    assert counts.tolist() == [3, 5, 0]
    sums.sum().backward()
    assert torch.equal(leaf.grad, mask.float())
    means = sequence_logprob_sums(logp, mask, mean=True)
    torch.testing.assert_close(means, expect / torch.tensor([3.0, 5.0, 1.0]))
    # packed: the same tokens flattened, with sequence ids, plus an empty 4th sequence
    ids = torch.arange(3).repeat_interleave(5)
    packed, pcounts = sequence_logprob_sums(
        logp.reshape(-1), mask.reshape(-1), ids, num_seqs=4, return_counts=True
    )
    torch.testing.assert_close(packed, torch.cat([expect, torch.zeros(1)]))
    assert pcounts.tolist() == [3, 5, 0, 0]
    assert sequence_logprob_sums(logp.reshape(-1), mask.reshape(-1).float(), ids).shape == (3,)


def test_sequence_sums_bad_inputs():
    with pytest.raises(ValueError, match="mask"):
        sequence_logprob_sums(torch.zeros(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="seq_ids"):
        sequence_logprob_sums(torch.zeros(4), torch.ones(4), torch.tensor([0, 1, 5, 0]), num_seqs=2)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        sequence_logprob_sums(torch.zeros(4), torch.ones(4))


def test_end_to_end_logprob_sums_feed_dpo(torch_path):
    # fused log-probs -> per-sequence sums -> DPO: gradients equal the all-reference pipeline
    hidden, weight, targets, _ = make_case(24, 16, 40, 1.0, "every3")
    seq_ids = torch.arange(4).repeat_interleave(6)

    def pipeline(fn):
        h = hidden.clone().requires_grad_()
        logp = fn(h, weight, targets)
        sums = sequence_logprob_sums(logp, targets != -100, seq_ids, num_seqs=4)
        nll = -sequence_logprob_sums(logp, targets != -100, seq_ids, num_seqs=4, mean=True)
        loss, _ = dpo_loss(
            sums[:2],
            sums[2:],
            sums[:2].detach() + 0.3,
            sums[2:].detach(),
            beta=0.2,
            rpo_alpha=0.5,
            chosen_nll=nll[:2],
        )
        loss.backward()
        return loss.detach(), h.grad

    got, want = pipeline(fused_logprobs), pipeline(logprobs_reference)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------ lm head


def test_lm_head_weight_tied_and_untied():
    transformers = pytest.importorskip("transformers")
    for tied in (True, False):
        config = transformers.LlamaConfig(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            tie_word_embeddings=tied,
        )
        model = transformers.LlamaForCausalLM(config)
        weight = lm_head_weight(model)
        assert weight.shape == (64, 16)
        assert (weight is model.get_input_embeddings().weight) == tied
        # the fused path reproduces the model's own log-probs
        ids = torch.randint(0, 64, (1, 6))
        with torch.no_grad():
            out = model(ids, output_hidden_states=True)
            want = torch.log_softmax(out.logits[0, :-1].float(), -1).gather(1, ids[0, 1:, None]).squeeze(1)
            got = fused_logprobs(out.hidden_states[-1][0, :-1].contiguous(), weight, ids[0, 1:])
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        lm_head_weight(model)
    with pytest.raises(ValueError, match="lm_head"):
        lm_head_weight(torch.nn.Linear(3, 4))


# ------------------------------------------------------------------------------------ CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (Triton kernels on device)")
@pytest.mark.parametrize("case", LOGPROB_CASES[:5], ids=lambda c: f"N{c[0]}V{c[2]}-{c[4]}")
def test_cuda_triton_bf16(monkeypatch, case):
    monkeypatch.setenv("SELFTRAIN_KERNELS", "auto")
    pytest.importorskip("triton")
    assert_matches_reference(case, dtype=torch.bfloat16, device="cuda", rtol=2e-2)
    assert_matches_reference(case, dtype=torch.float32, device="cuda", rtol=1e-4)
    check_dpo_against_reference(37, 0.3, 0.1, 0.5, dtype=torch.bfloat16, device="cuda", rtol=1e-2)
