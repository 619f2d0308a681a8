"""LoRA through PEFT on one process (tiny-random): the config section, SFT memorisation, DPO against
the adapter-disabled reference, kill and resume, and the saved adapter seen by PEFT, transformers
and selftrain's sampler."""

from __future__ import annotations

import copy
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from killers import kill_after_save
from safetensors.torch import load_file
from tolerances import assert_as_accurate, assert_greedy_matches_hf

from selftrain.config import ConfigError, parse_cli
from selftrain.models import load_model, load_tokenizer, peft_wraps_quietly, resolve_model_path
from selftrain.train import TrainConfig, reference, train
from selftrain.train.lora import DEFAULT_TARGETS, LoraConfig

ROOT = Path(__file__).resolve().parents[1]
MODEL = "tiny-random"
RECS = [
    {"prompt": f"Q{i}: add {i} and {i + 3}.", "response": f"{i} plus {i + 3} is {2 * i + 3}."}
    for i in range(4)
]
PAIRS = [
    {
        "prompt": f"Question {i}: what is {i}+{i}?",
        "chosen": f"The answer is {2 * i}.",
        "rejected": f"I think it is {2 * i + 1}, maybe.",
    }
    for i in range(4)
]
# fp32 unit roundoff: the bound of each tolerance below is a small multiple of it times the size
# of the values compared
EPS32 = torch.finfo(torch.float32).eps / 2


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _base():
    return load_model(MODEL, torch.float32, "cpu")


# ------------------------------------------------------------------------------------ config


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"lora\.r=0"):
        LoraConfig(r=0)
    with pytest.raises(ValueError, match=r"lora\.dropout"):
        LoraConfig(dropout=1.0)
    with pytest.raises(ValueError, match=r"lora\.target_modules"):
        LoraConfig(target_modules=[])
    with pytest.raises(ValueError, match=r"lora: unknown key\(s\) rank"):
        TrainConfig(lora={"rank": 8})
    if not torch.cuda.is_available():  # the suite pins the CPU (conftest)
        with pytest.raises(ValueError, match=r"lora\.qlora=True: needs a CUDA GPU"):
            LoraConfig(qlora=True)
    # the recipes' command line: the key path is named, and lora.r=8 alone switches LoRA on
    sys.path.insert(0, str(ROOT / "recipes"))
    try:
        from sft import SFTRecipe
    finally:
        sys.path.pop(0)
    cfg = parse_cli(SFTRecipe, ["lora.r=8"])
    assert cfg.lora.r == 8 and cfg.lora.target_modules == list(DEFAULT_TARGETS) and cfg.lora.scale_alpha == 16
    with pytest.raises(ConfigError, match=r"config\.lora: unknown key\(s\) rnak"):
        parse_cli(SFTRecipe, ["lora.rnak=8"])
    from selftrain.loop.config import LoopConfig

    assert parse_cli(LoopConfig, ["lora.r=8"]).lora.r == 8
    with pytest.raises(ValueError, match=r"sft\.lora: set LoRA once"):
        parse_cli(LoopConfig, ["sft.lora.r=8"])


def test_targeting_the_lm_head_is_refused_with_the_reason():
    from selftrain.train.lora import attach_adapter

    with pytest.raises(
        ValueError, match=r"lora\.target_modules=\['lm_head'\]: lm_head is outside the decoder"
    ):
        attach_adapter(_base(), LoraConfig(target_modules=["lm_head"]), MODEL)
    with pytest.raises(ValueError, match=r"lora\.target_modules=\['no_such_proj'\]"):
        attach_adapter(_base(), LoraConfig(target_modules=["no_such_proj"]), MODEL)


# ------------------------------------------------------------------------------------ SFT


SFT_CFG = dict(
    lr=2e-2,
    epochs=40,
    global_batch_size=4,
    micro_batch_size=4,
    warmup_ratio=0.0,
    min_lr_ratio=0.5,
    wandb_mode="disabled",
)


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lora") / "sft"
    cfg = TrainConfig(**SFT_CFG, lora=LoraConfig(r=16, merged=True))
    res = train(cfg, MODEL, RECS, out)
    assert res.steps == 40 and res.checkpoint == out / "model"
    return out


def test_lora_sft_memorises_and_trains_only_the_adapter(sft_run):
    losses = [r["loss"] for r in _rows(sft_run)]
    # tiny-random's LM head is a frozen random matrix (tied to the embedding) read through a frozen
    # final norm: adapters in the blocks make every response token the top one, but cannot give
    # the EOS row a large enough logit to drive its loss to 0, so the mean stays ~1.8 nats
    # (full fine-tuning, which trains the head, reaches < 0.05 in test_train.py)
    assert losses[0] > 10 and losses[-1] < 2.5, losses
    adapter = sft_run / "model"
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == MODEL and cfg["r"] == 16 and cfg["lora_alpha"] == 32
    assert set(cfg["target_modules"]) == set(DEFAULT_TARGETS)
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    # 2 layers x 7 projections x (A, B), and nothing else: the base weights are not in the adapter
    assert len(tensors) == 28 and all(".lora_A." in k or ".lora_B." in k for k in tensors)
    assert (adapter / "adapter_model.safetensors").stat().st_size < 1_000_000

    # the saved adapter through PEFT's own loader reproduces every memorised response (greedy)
    from peft import PeftModel

    with peft_wraps_quietly():
        peft_model = PeftModel.from_pretrained(_base(), str(adapter)).eval()
    tok = load_tokenizer(adapter)
    for r in RECS:
        ids = torch.tensor([tok(r["prompt"], add_special_tokens=False)["input_ids"]])
        gen = peft_model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=24,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
        assert tok.decode(gen[0, ids.shape[1] :]).startswith(r["response"])
    # the merged folder is a plain transformers model with the adapted weights
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(str(sft_run / "merged")).eval()
    probe = torch.tensor([[1, 2, 3, 400, 500, 600, 7]])
    with torch.no_grad():
        want = peft_model(input_ids=probe).logits
        got = merged(input_ids=probe).logits
    # merged W + s*B@A against PEFT's unmerged x@W + s*(x@A)@B: each product rounds differently, by
    # ~EPS32 * sqrt(K) ~ 7e-7 relative per dot product (K <= 128 here), compounded over the 2
    # layers' ~8 products and the head: 1e-5 of the logits' scale (measured: 1.2e-6)
    scale = want.abs().max().item()
    torch.testing.assert_close(got, want, atol=1e-5 * scale, rtol=0)


def test_sampler_on_the_adapter_equals_peft(sft_run):
    """The sampler loads the adapter folder (merged into its own weights) and gives PEFT's
    next-token distribution, and PEFT's greedy continuations."""
    from peft import PeftModel

    from selftrain.sampler import Sampler

    adapter = sft_run / "model"
    with peft_wraps_quietly():
        peft_model = PeftModel.from_pretrained(_base(), str(adapter)).eval()
    sampler = Sampler(str(adapter), max_num_seqs=8, kv_cache_tokens=2048)
    tok = sampler.tokenizer
    prompts = [r["prompt"] for r in RECS] + ["Q7: add 7 and"]
    vocab = list(range(peft_model.config.vocab_size))
    probs = sampler.next_token_probs(prompts, vocab)
    # the float64 truth both fp32 forwards are measured against (tests/tolerances.py): the sampler
    # on its merged weights (one more fp32 rounding per weight, and its own summation orders) must
    # be as accurate as PEFT's unmerged fp32 forward of the same model
    peft64 = copy.deepcopy(peft_model).double()
    for p, row in zip(prompts, probs):
        ids = torch.tensor([tok(p)["input_ids"]])
        with torch.no_grad():
            want = torch.softmax(peft_model(input_ids=ids).logits[0, -1].float(), -1)
            truth = torch.softmax(peft64(input_ids=ids).logits[0, -1], -1)
        got = torch.tensor(row, dtype=torch.float64)
        # probabilities: relative errors, each on the scale of its own size
        assert_as_accurate(got / truth, want / truth, torch.ones_like(truth), scale=1.0)
    outs = sampler.generate(prompts, max_new_tokens=20, temperature=0.0)
    for p, out in zip(prompts, outs):
        ids = tok(p)["input_ids"]
        assert_greedy_matches_hf(peft_model, peft64, ids, out[0].token_ids, 20, tok.pad_token_id)


# ------------------------------------------------------------------------------------ DPO


def test_lora_dpo_raises_margin_against_the_adapter_disabled_reference(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    cfg = TrainConfig(
        lr=5e-3,
        epochs=6,
        global_batch_size=4,
        micro_batch_size=2,
        beta=0.1,
        warmup_ratio=0.0,
        wandb_mode="disabled",
        lora=LoraConfig(r=8),
    )
    before = reference.COMPUTE_COUNT
    train(cfg, MODEL, str(data), tmp_path / "a", loss="dpo")
    rows = _rows(tmp_path / "a")
    assert reference.COMPUTE_COUNT == before + 1 and rows[0]["ref/cache_hit"] == 0
    # the fresh adapter has B = 0: the policy is the reference at step 1, up to the rounding of
    # other batch shapes (training micro-batches are not the reference pass's): each of the 4 sums
    # of ~32 token log-probs carries at most ~32 roundings of its size, times beta
    first = rows[0]
    size = max(abs(first["logps/chosen"]), abs(first["logps/rejected"]))
    assert abs(first["rewards/margin"]) <= 0.1 * 4 * 32 * EPS32 * size
    assert rows[-1]["rewards/margin"] > rows[0]["rewards/margin"] + 1.0
    assert rows[-1]["rewards/accuracy"] == 1.0 and rows[-1]["loss"] < rows[0]["loss"]

    # the cached reference (adapter disabled, no second model) equals the base model's own scores
    (cache,) = tmp_path.glob("pairs.jsonl.ref-logps-*.pt")
    cached = torch.load(cache, weights_only=True)["logps"]
    base_scores = _base_model_scores(data)
    # the same kernels on the same micro-batches: disabling the adapter calls the base layer
    # alone, so the arithmetic is the plain model's, operation for operation
    torch.testing.assert_close(cached, base_scores, atol=0, rtol=0)

    # RPO on the same data and base reuses the cache; a different ref_model is refused
    before = reference.COMPUTE_COUNT
    train(TrainConfig(**{**cfg.__dict__, "epochs": 1}), MODEL, str(data), tmp_path / "b", loss="rpo")
    assert reference.COMPUTE_COUNT == before and _rows(tmp_path / "b")[0]["ref/cache_hit"] == 1
    with pytest.raises(ValueError, match=r"ref_model=.*adapter disabled"):
        train(cfg, MODEL, str(data), tmp_path / "c", loss="dpo", ref_model=str(tmp_path / "a" / "model"))


def _base_model_scores(data: Path) -> torch.Tensor:
    """The plain (non-LoRA) reference pass: the base model loaded on its own."""
    from selftrain.train.data import load_records, tokenize_records

    tok = load_tokenizer(MODEL)
    examples, _ = tokenize_records(load_records(str(data), "dpo"), tok, "dpo", 512)
    return reference._compute(examples, MODEL, torch.float32, torch.device("cpu"), 2, tok.pad_token_id)


# ------------------------------------------------------------------------------------ resume


KILL_CFG = dict(
    lr=5e-3,
    epochs=3,
    global_batch_size=3,
    micro_batch_size=2,
    save_every=2,
    wandb_mode="disabled",
    lora={"r": 4, "alpha": 8.0},
)
KILL_RECS = [{"prompt": f"prompt {i}", "response": "response " * (i + 1)} for i in range(6)]
KILLER = kill_after_save("int(sys.argv[2])") + f"""
from selftrain.train import TrainConfig, train
train(TrainConfig(**{KILL_CFG!r}), "tiny-random", {KILL_RECS!r}, sys.argv[1])
"""


def test_kill_and_resume_equals_uninterrupted(tmp_path):
    import torch.distributed.checkpoint as dcp

    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    train(TrainConfig(**KILL_CFG), MODEL, KILL_RECS, tmp_path / "ref")
    killed = subprocess.run([sys.executable, str(script), str(tmp_path / "run"), "4"], cwd=ROOT, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    save = tmp_path / "run" / "state" / "step-00000004"
    # the save holds the adapters and their AdamW moments only: the optimizer never saw the base
    keys = list(dcp.FileSystemReader(str(save)).read_metadata().state_dict_metadata)
    model_keys = [k for k in keys if k.startswith("model.")]
    optim_keys = [k for k in keys if k.startswith("optim.state.")]
    assert len(model_keys) == 28 and optim_keys
    assert all(".lora_A." in k or ".lora_B." in k for k in model_keys + optim_keys), keys
    train(TrainConfig(**KILL_CFG), MODEL, KILL_RECS, tmp_path / "run")  # resumes from step 4
    ref = load_file(str(tmp_path / "ref" / "model" / "adapter_model.safetensors"))
    got = load_file(str(tmp_path / "run" / "model" / "adapter_model.safetensors"))
    assert ref.keys() == got.keys()
    for name in ref:  # one process, the same operations in the same order: identical
        torch.testing.assert_close(got[name], ref[name], atol=0, rtol=0, msg=name)
    rows = _rows(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and rows[4]["resumed_from"] == 4
    assert [r["loss"] for r in rows] == [r["loss"] for r in _rows(tmp_path / "ref")]


def test_an_adapter_folder_is_a_model_everywhere(sft_run, tmp_path):
    """load_model / load_tokenizer / the trainer take an adapter folder; a new adapter trained on
    it names it as its base, and loading that one rebuilds the chain base -> M1 -> M2."""
    from peft import PeftModel

    m1 = sft_run / "model"
    assert resolve_model_path(str(m1)) == str(m1)
    cfg = TrainConfig(lr=1e-2, epochs=2, global_batch_size=4, wandb_mode="disabled", lora=LoraConfig(r=4))
    train(cfg, str(m1), RECS, tmp_path / "m2")
    m2 = tmp_path / "m2" / "model"
    assert json.loads((m2 / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        m1.resolve()
    )
    with peft_wraps_quietly():
        chained = PeftModel.from_pretrained(
            PeftModel.from_pretrained(_base(), str(m1)).merge_and_unload(), str(m2)
        ).merge_and_unload()
    loaded = load_model(str(m2))
    want, got = chained.state_dict(), loaded.state_dict()
    for name in want:  # the same merges in the same order
        torch.testing.assert_close(got[name], want[name], atol=0, rtol=0, msg=name)


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="QLoRA needs CUDA (bitsandbytes' 4-bit NF4 kernels)"
)
def test_qlora_trains_a_4bit_base_on_cuda(tmp_path, monkeypatch):
    pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes (pip install -e '.[gpu]')")
    monkeypatch.setenv("SELFTRAIN_DEVICE", "cuda")
    cfg = TrainConfig(**{**SFT_CFG, "epochs": 6}, lora=LoraConfig(r=8, qlora=True))
    train(cfg, MODEL, RECS, tmp_path / "q")
    losses = [r["loss"] for r in _rows(tmp_path / "q")]
    assert losses[-1] < losses[0]
    assert (tmp_path / "q" / "model" / "adapter_model.safetensors").is_file()


# ------------------------------------------------------------------------------------ SmolLM2


def test_smollm2_lora_dpo_raises_margin_and_its_reference_is_the_base(tmp_path):
    """The real model (30 blocks, GQA, tied head): a short LoRA DPO run raises the margin, and the
    reference the policy scored with its adapter disabled is the base model's, exactly."""
    from selftrain.models import ModelLoadError

    smol = "smollm2-135m"
    try:
        tok = load_tokenizer(smol)
    except ModelLoadError as e:
        pytest.skip(f"embedded SmolLM2 unavailable: {e}")
    pairs = [
        {"prompt": f"What is {i} + {i}?", "chosen": f"{2 * i}.", "rejected": f"{2 * i + 3}, I guess."}
        for i in range(4)
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    cfg = TrainConfig(
        lr=2e-3,
        epochs=2,
        global_batch_size=4,
        micro_batch_size=4,
        beta=0.1,
        warmup_ratio=0.0,
        wandb_mode="disabled",
        lora=LoraConfig(r=8),
    )
    train(cfg, smol, str(data), tmp_path / "run", loss="dpo")
    rows = _rows(tmp_path / "run")
    assert rows[-1]["rewards/margin"] > rows[0]["rewards/margin"] + 0.1, rows
    (cache,) = tmp_path.glob("pairs.jsonl.ref-logps-*.pt")
    from selftrain.train.data import load_records, tokenize_records

    examples, _ = tokenize_records(load_records(str(data), "dpo"), tok, "dpo", 512)
    base = reference._compute(examples, smol, torch.float32, torch.device("cpu"), 4, tok.pad_token_id)
    # the same kernels on the same micro-batch: the adapter-disabled forward is the base's
    torch.testing.assert_close(torch.load(cache, weights_only=True)["logps"], base, atol=0, rtol=0)
