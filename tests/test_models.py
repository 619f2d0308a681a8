import pytest
import torch

from selftrain import models
from selftrain.models import ModelLoadError, load_model, load_tokenizer, save_checkpoint


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


def test_cached_smollm2_matches_fresh_dequantization():
    tok = load_tokenizer("smollm2-135m")
    ids = tok("The capital of France is", add_special_tokens=False)["input_ids"]
    cached = load_model("smollm2-135m")
    fresh, fresh_tok = models.dequantize_smollm2()
    assert fresh_tok("The capital of France is", add_special_tokens=False)["input_ids"] == ids
    assert torch.equal(_logits(cached, ids), _logits(fresh.eval(), ids))
    cfg = cached.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (30, 576, 49152)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id == tok.eos_token_id


def test_save_load_round_trip_gives_identical_logits(tmp_path):
    from transformers import AutoModelForCausalLM

    model = load_model("tiny-random")
    tok = load_tokenizer("tiny-random")
    out = save_checkpoint(model, tok, tmp_path / "ckpt")
    assert models.is_complete_checkpoint(out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind
    again = AutoModelForCausalLM.from_pretrained(str(out)).eval()  # plain transformers loads it as-is
    ids = [1, 5, 9, 200, 3000]
    assert torch.equal(_logits(model, ids), _logits(again, ids))
    assert load_tokenizer(str(out))("hi")["input_ids"] == tok("hi")["input_ids"]


def test_tiny_random_is_seeded_and_small():
    a, b = load_model("tiny-random"), load_model("tiny-random")
    assert a.config.hidden_size == 64 and a.config.num_hidden_layers == 2
    for (na, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), na


def test_missing_path_names_the_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError, match="no-such-model"):
        load_model(str(missing))


def test_folder_without_config_names_the_path(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=str(tmp_path)):
        load_model(str(tmp_path))


def test_folder_without_weights_names_the_path(tmp_path):
    from selftrain.sampler import Sampler

    out = save_checkpoint(load_model("tiny-random"), load_tokenizer("tiny-random"), tmp_path / "ckpt")
    (out / "model.safetensors").unlink()  # config and tokenizer, no weights
    for load in (load_model, Sampler):
        with pytest.raises(ModelLoadError, match=rf"{out}.*no file named model\.safetensors"):
            load(str(out))


def test_corrupt_weights_name_the_path(tmp_path):
    model = load_model("tiny-random")
    out = save_checkpoint(model, load_tokenizer("tiny-random"), tmp_path / "ckpt")
    (out / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="ckpt"):
        load_model(str(out))


def test_unknown_builtin_lists_builtins(monkeypatch, tmp_path):
    with pytest.raises(ModelLoadError, match="tiny-random"):
        models.builtin_path("nope")


def test_interrupted_cache_build_leaves_no_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SELFTRAIN_CACHE", str(tmp_path))

    def crash(dest):
        (dest / "config.json").write_text("{}")  # half-written
        raise KeyboardInterrupt

    monkeypatch.setitem(models._BUILDERS, models.TINY_RANDOM, crash)
    with pytest.raises(KeyboardInterrupt):
        models.builtin_path(models.TINY_RANDOM)
    assert not (tmp_path / models.TINY_RANDOM).exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
