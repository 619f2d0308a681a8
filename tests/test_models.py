import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from selftrain import hf_folder, models
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
        with pytest.raises(ModelLoadError, match=rf"{out} is damaged: model\.safetensors is missing"):
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


def _torchrun(script: Path, nproc: int, *args: str, env: dict) -> subprocess.CompletedProcess:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           "--master_addr=127.0.0.1", f"--master_port={port}", str(script), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("nproc, name", [(2, models.SMOLLM2), (8, models.TINY_RANDOM)])
def test_a_nonzero_rank_builds_a_complete_cache_once(tmp_path, nproc, name):
    """The failure this guards: transformers >= 5.24 writes nothing from save_pretrained on a
    rank != 0, and the cache was published with a tokenizer and no config or weights."""
    cache, out = tmp_path / "cache", tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, SELFTRAIN_CACHE=str(cache), OMP_NUM_THREADS="1")
    proc = _torchrun(Path(__file__).with_name("cache_builders.py"), nproc, str(out), name, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    builds = (out / "builds.txt").read_text().split()
    ranks, built = builds[0::2], builds[1::2]
    # each model once per machine (tiny-random borrows smollm2's tokenizer, so it builds both)
    expected = [models.SMOLLM2] if name == models.SMOLLM2 else [models.SMOLLM2, models.TINY_RANDOM]
    assert sorted(built) == sorted(expected), builds
    assert "0" not in ranks, f"rank 0 built {builds}: the test did not force a non-zero rank"
    assert sorted(p.name for p in out.glob("ok-*")) == sorted(f"ok-{r}" for r in range(nproc))
    for model in expected:
        assert hf_folder.published_problems(cache / model) == []
        assert (cache / model / "config.json").is_file() and (cache / model / "model.safetensors").is_file()


def _tiny_cache(tmp_path: Path) -> Path:
    """An empty cache whose smollm2 (tiny-random's tokenizer source) is the session's own."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / models.SMOLLM2).symlink_to(models.builtin_path(models.SMOLLM2))
    return cache


def test_poisoned_cache_folder_is_named_and_rebuilt(monkeypatch, tmp_path, caplog):
    cache = _tiny_cache(tmp_path)
    monkeypatch.setenv("SELFTRAIN_CACHE", str(cache))
    poisoned = cache / models.TINY_RANDOM  # what rank 1 published under transformers 5.24
    poisoned.mkdir()
    load_tokenizer("smollm2-135m").save_pretrained(str(poisoned))
    (poisoned / hf_folder.DONE).write_text("ok\n")
    with caplog.at_level("WARNING", logger="selftrain.models"):
        model = load_model(models.TINY_RANDOM)
    assert "config.json is missing" in caplog.text and str(poisoned) in caplog.text
    assert hf_folder.published_problems(poisoned) == []
    assert model.config.hidden_size == 64


def test_cached_folder_with_a_truncated_weight_file_is_rebuilt(monkeypatch, tmp_path):
    cache = _tiny_cache(tmp_path)
    monkeypatch.setenv("SELFTRAIN_CACHE", str(cache))
    folder = models.builtin_path(models.TINY_RANDOM)
    weights = folder / "model.safetensors"
    reference = weights.read_bytes()
    weights.write_bytes(reference[: len(reference) // 2])
    assert "model.safetensors" in " ".join(hf_folder.published_problems(folder))
    models.builtin_path(models.TINY_RANDOM)
    assert weights.read_bytes() == reference


def test_damaged_sharded_checkpoint_names_the_missing_shard(tmp_path):
    out = save_checkpoint(load_model("tiny-random"), load_tokenizer("tiny-random"), tmp_path / "ckpt",
                          max_shard_size="4MB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2
    assert AutoModelForCausalLM.from_pretrained(str(out)) is not None  # plain transformers reads it
    (out / shards[-1]).unlink()
    assert not models.is_complete_checkpoint(out)
    with pytest.raises(ModelLoadError, match=rf"{out} is damaged: {shards[-1]} is missing"):
        load_model(str(out))


def test_a_folder_that_fails_verification_is_not_published(tmp_path):
    def write(dest: Path) -> None:
        load_tokenizer("tiny-random").save_pretrained(str(dest))  # no config, no weights

    with pytest.raises(hf_folder.IncompleteFolder, match="config.json is missing"):
        models.publish_folder(write, tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


def test_writes_do_not_ask_the_library_for_the_rank(monkeypatch, tmp_path):
    """A process that transformers would take for a non-zero rank still writes everything."""
    import transformers.distributed.mixin as mixin

    monkeypatch.setattr(mixin.DistributedMixin, "should_save_on_this_rank", lambda self, main: False)
    out = save_checkpoint(load_model("tiny-random"), load_tokenizer("tiny-random"), tmp_path / "ckpt")
    assert hf_folder.published_problems(out) == []
