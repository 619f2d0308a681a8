"""The trainer's SFT / DPO / RPO losses and gradients equal plain-torch formulas written here.

The trainer runs one global batch in several micro-batches (gradient accumulation, a partial
micro-batch included) through the kernels; the reference runs the whole batch at once through
HF's full logits and log_softmax.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from selftrain.models import load_model, load_tokenizer
from selftrain.train import TrainConfig
from selftrain.train.data import tokenize_records
from selftrain.train.fsdp import wrap_for_training
from selftrain.train.trainer import _Step

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny-random")


@pytest.fixture(scope="module")
def base_model():
    return load_model("tiny-random")


def _response_logps(model, seq: list[int], prompt_len: int) -> torch.Tensor:
    """Per-token log p of the response tokens, from the full logits."""
    ids = torch.tensor([seq])
    logits = model(input_ids=ids).logits[0].float()
    logp = F.log_softmax(logits[:-1], dim=-1)
    targets = ids[0, 1:]
    picked = logp.gather(-1, targets[:, None])[:, 0]
    return picked[prompt_len - 1 :]


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _trainer_grads(base_model, cfg, loss, examples, ref, pad_id, dtype=torch.float32):
    scorer = wrap_for_training(copy.deepcopy(base_model), dtype, CPU, cfg.activation_checkpointing)
    values = _Step(scorer, cfg, loss, examples, ref, pad_id, CPU).run(list(range(len(examples))))
    return values, _grads(scorer.model)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_sft_loss_and_grads_match_token_mean_nll(tok, base_model, checkpointing):
    recs = [
        {"prompt": "What is two plus two?", "response": "Four, because 2 + 2 = 4."},
        {"prompt": "Name a colour.", "response": "Blue"},
        {"prompt": "Count to three.", "response": "One, two, three."},
    ]
    examples, _ = tokenize_records(recs, tok, "sft", 64)
    cfg = TrainConfig(micro_batch_size=2, wandb_mode="disabled", activation_checkpointing=checkpointing)
    values, got = _trainer_grads(base_model, cfg, "sft", examples, None, tok.pad_token_id)
    if checkpointing:  # the low-precision path (autocast on CPU) computes nearly the same loss
        bf16, _ = _trainer_grads(base_model, cfg, "sft", examples, None, tok.pad_token_id, torch.bfloat16)
        assert bf16["loss"] == pytest.approx(values["loss"], rel=2e-2)

    ref_model = copy.deepcopy(base_model).train()
    token_logps = [_response_logps(ref_model, ex.sequences[0], ex.prompt_lens[0]) for ex in examples]
    loss = -torch.cat(token_logps).mean()  # mean over every response token of the batch
    loss.backward()
    want = _grads(ref_model)
    assert values["loss"] == pytest.approx(loss.item(), abs=1e-5)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize(
    "loss_name, beta, alpha, smoothing",
    [("dpo", 0.1, 0.0, 0.0), ("dpo", 0.3, 0.0, 0.2), ("rpo", 0.05, 1.0, 0.0)],
)
def test_preference_loss_and_grads_match_formula(tok, base_model, loss_name, beta, alpha, smoothing):
    recs = [
        {"prompt": "2+3=", "chosen": "5, since two plus three is five.", "rejected": "6"},
        {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Lyon, I believe, or maybe Nice."},
        {"prompt": "Opposite of hot?", "chosen": "Cold.", "rejected": "Warm."},
    ]
    examples, _ = tokenize_records(recs, tok, "dpo", 64)
    gen = torch.Generator().manual_seed(0)
    ref = -20 - 10 * torch.rand(len(examples), 2, generator=gen)  # any fixed reference log-probs
    cfg = TrainConfig(
        micro_batch_size=2,
        beta=beta,
        rpo_alpha=alpha or 1.0,
        label_smoothing=smoothing,
        wandb_mode="disabled",
    )
    values, got = _trainer_grads(base_model, cfg, loss_name, examples, ref, tok.pad_token_id)

    model = copy.deepcopy(base_model).train()
    chosen = [_response_logps(model, ex.sequences[0], ex.prompt_lens[0]) for ex in examples]
    rejected = [_response_logps(model, ex.sequences[1], ex.prompt_lens[1]) for ex in examples]
    pc = torch.stack([c.sum() for c in chosen])
    pr = torch.stack([r.sum() for r in rejected])
    margin = beta * ((pc - ref[:, 0]) - (pr - ref[:, 1]))
    per_pair = -(1 - smoothing) * F.logsigmoid(margin) - smoothing * F.logsigmoid(-margin)
    chosen_nll = torch.stack([-c.mean() for c in chosen])  # length-normalised NLL of each chosen answer
    loss = per_pair.mean() + (alpha * chosen_nll.mean() if loss_name == "rpo" else 0.0)
    loss.backward()
    want = _grads(model)
    assert values["loss"] == pytest.approx(loss.item(), abs=1e-5)
    assert values["rewards/margin"] == pytest.approx(margin.mean().item(), abs=1e-5)
    assert values["rewards/accuracy"] == pytest.approx((margin > 0).float().mean().item())
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-4, msg=name)
