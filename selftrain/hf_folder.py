"""Hugging Face folders (models, PEFT adapters, tokenizers): written, verified, then published.

Why selftrain writes the files itself: since transformers 5.24, `PreTrainedModel.save_pretrained`
silently writes nothing on a process whose torch.distributed rank is not 0. selftrain chooses its
writer itself (rank 0 of a job, or whichever process holds a cache's file lock, which can be any
rank), so a write must not depend on what a library thinks of the rank. Weights go to disk with
`safetensors` directly (sharded with the hub's own splitter, an index when sharded), the config and
generation config with their `to_json_file`, an adapter's tensors and config through PEFT's pure
functions, a tokenizer through its `save_pretrained` (which has no rank logic; the verification
below would catch one that skipped).

Every folder is verified before it gets its done marker (`problems`): the config parses with a
`model_type`, every weight file the index names exists and its header loads with the tensors the
index promises, an adapter has its config and weights, a saved tokenizer has its config. The marker
is JSON listing every file with its size, so a later use (`published_problems`) finds a file that
went missing or changed size since, names it, and the caller rebuilds (derived data: the built-in
cache) or refuses (a user's checkpoint).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import torch

DONE = ".selftrain-complete"
MARKER_VERSION = 2
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TOKENIZER_CONFIG = "tokenizer_config.json"


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------


def _without_tied_aliases(state: dict[str, torch.Tensor], model: Any) -> dict[str, torch.Tensor]:
    """One name per storage (safetensors refuses aliases); of tied names, the one the model
    expects when it reloads (transformers' own choice where it offers one)."""
    try:
        from transformers.modeling_utils import remove_tied_weights_from_state_dict

        return remove_tied_weights_from_state_dict(state, model)
    except ImportError:  # older transformers: keep the first name of each storage
        seen: dict[tuple, str] = {}
        kept = {}
        for name, t in state.items():
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
            if key not in seen:
                seen[key] = name
                kept[name] = t
        return kept


def _original_names(model: Any, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Undo the renames some architectures apply at load (transformers 5), so the files read like
    the model's published ones; a no-op for Llama-family models and older transformers."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:
        return state
    return revert_weight_conversion(model, state)


def write_model(model: Any, dest: Path, max_shard_size: str | int = "2GB") -> None:
    """The model's config, generation config and weights into the folder `dest` (exists, empty)."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    dest = Path(dest)
    state = _original_names(model, _without_tied_aliases(dict(model.state_dict()), model))
    split = split_torch_state_dict_into_shards(
        state, filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_size
    )
    for filename, names in split.filename_to_tensors.items():
        shard = {n: state[n].detach().to("cpu").contiguous() for n in names}
        save_file(shard, str(dest / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": {**split.metadata}, "weight_map": split.tensor_to_filename}
        (dest / WEIGHTS_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    config = model.config
    config.architectures = [type(model).__name__]
    config.dtype = str(next(iter(state.values())).dtype).removeprefix("torch.") if state else "float32"
    config.to_json_file(str(dest / "config.json"), use_diff=True)
    generation = getattr(model, "generation_config", None)
    can_generate = getattr(model, "can_generate", lambda: False)()
    if generation is not None and can_generate:
        generation.to_json_file(str(dest / "generation_config.json"), use_diff=True)


def write_adapter(peft_model: Any, state: dict[str, torch.Tensor], dest: Path) -> None:
    """A PEFT adapter folder (adapter_config.json + adapter_model.safetensors, the format
    `PeftModel.from_pretrained` reads) from the full trainable `state` (PeftModel key names)."""
    import copy

    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    dest = Path(dest)
    # save_embedding_layers=False: embeddings are never adapted here, and PEFT's "auto" would look
    # the base model up on the hub to compare vocabulary sizes
    weights = get_peft_model_state_dict(peft_model, state_dict=state, save_embedding_layers=False)
    if not weights:
        raise ValueError(f"{dest}: the adapter state holds no adapter tensors (keys: {list(state)[:3]} ...)")
    save_file(
        {k: v.detach().to("cpu").contiguous() for k, v in weights.items()},
        str(dest / ADAPTER_WEIGHTS),
        metadata={"format": "pt"},
    )
    config = copy.deepcopy(peft_model.peft_config[peft_model.active_adapter])
    config.inference_mode = True
    config.save_pretrained(str(dest))


def write_tokenizer(tokenizer: Any, dest: Path) -> None:
    """The tokenizer's files into `dest`; refused when its config did not appear (a library that
    decided not to write must not leave a model folder without a tokenizer)."""
    tokenizer.save_pretrained(str(dest))
    if not (Path(dest) / TOKENIZER_CONFIG).is_file():
        raise IncompleteFolder(f"{dest}: the tokenizer's save wrote no {TOKENIZER_CONFIG}")


# ---------------------------------------------------------------------------------------------
# verifying
# ---------------------------------------------------------------------------------------------


def _read_json(path: Path, what: str) -> tuple[dict | None, str | None]:
    if not path.is_file():
        return None, f"{path.name} is missing ({what})"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return None, f"{path.name} does not parse ({e})"
    if not isinstance(data, dict):
        return None, f"{path.name} is not a JSON object"
    return data, None


def _safetensors_keys(path: Path) -> tuple[set[str] | None, str | None]:
    """The tensor names of a safetensors file (header only; a short or garbled file fails)."""
    from safetensors import safe_open

    if not path.is_file():
        return None, f"{path.name} is missing"
    try:
        with safe_open(str(path), framework="pt") as fh:
            return set(fh.keys()), None
    except Exception as e:  # noqa: BLE001 - any failure to open is damage, named
        return None, f"{path.name} does not load ({type(e).__name__}: {e})"


def _model_problems(folder: Path) -> list[str]:
    out = []
    config, err = _read_json(folder / "config.json", "the model's config")
    if err:
        out.append(err)
    elif not config.get("model_type"):
        out.append("config.json has no model_type")
    index_path = folder / WEIGHTS_INDEX
    if index_path.is_file():
        index, err = _read_json(index_path, "the weight index")
        weight_map = (index or {}).get("weight_map")
        if err or not isinstance(weight_map, dict) or not weight_map:
            return out + [err or f"{WEIGHTS_INDEX} has no weight_map"]
        by_file: dict[str, set[str]] = defaultdict(set)
        for tensor, filename in weight_map.items():
            by_file[str(filename)].add(str(tensor))
        for filename, tensors in sorted(by_file.items()):
            keys, err = _safetensors_keys(folder / filename)
            if err:
                out.append(f"{err} (named by {WEIGHTS_INDEX})")
            elif not tensors <= keys:
                out.append(f"{filename} lacks {len(tensors - keys)} tensor(s) {WEIGHTS_INDEX} puts there")
    elif (folder / WEIGHTS).exists():
        _, err = _safetensors_keys(folder / WEIGHTS)
        if err:
            out.append(err)
    elif not any(folder.glob("*.bin")):  # a folder from elsewhere may hold pytorch_model.bin
        out.append(f"no weights: neither {WEIGHTS} nor {WEIGHTS_INDEX}")
    return out


def _adapter_problems(folder: Path) -> list[str]:
    config, err = _read_json(folder / ADAPTER_CONFIG, "the adapter's config")
    out = [err] if err else ([] if config.get("peft_type") else [f"{ADAPTER_CONFIG} has no peft_type"])
    _, err = _safetensors_keys(folder / ADAPTER_WEIGHTS)
    return out + ([err] if err else [])


def problems(folder: str | os.PathLike) -> list[str]:
    """What is wrong with a model or adapter folder (empty when it is complete and loads)."""
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder} is not a folder"]
    if (folder / ADAPTER_CONFIG).is_file() and not (folder / "config.json").is_file():
        out = _adapter_problems(folder)
    else:
        out = _model_problems(folder)
    if (folder / TOKENIZER_CONFIG).exists():
        _, err = _read_json(folder / TOKENIZER_CONFIG, "the tokenizer's config")
        out += [err] if err else []
    return out


def _manifest(folder: Path) -> dict[str, int]:
    return {
        str(p.relative_to(folder)): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != DONE
    }


def published_problems(folder: str | os.PathLike) -> list[str] | None:
    """None when `folder` was never published (no done marker); else what is wrong with it now:
    files its marker lists that are missing or changed size, then `problems` (empty = intact)."""
    folder = Path(folder)
    marker = folder / DONE
    if not marker.is_file():
        return None
    out = []
    try:
        recorded = json.loads(marker.read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        recorded = None  # the version-1 marker ("ok"): no manifest; the content checks decide
    if isinstance(recorded, dict):
        for name, size in sorted(recorded.items()):
            path = folder / name
            if not path.is_file():
                out.append(f"{name} is missing (listed by {DONE})")
            elif path.stat().st_size != size:
                out.append(f"{name} has {path.stat().st_size} bytes, {size} when published")
    named = {line.split(" ", 1)[0] for line in out}  # a file already named is not named twice
    return out + [p for p in problems(folder) if p.split(" ", 1)[0] not in named]


# ---------------------------------------------------------------------------------------------
# publishing
# ---------------------------------------------------------------------------------------------


class IncompleteFolder(RuntimeError):
    """A folder that failed verification before it could be published; the message says why."""


def _publish_dir(tmp: Path, final: Path) -> None:
    """Verify the finished folder `tmp`, mark it with its manifest, and rename it to `final`
    (an older copy at `final` is replaced, then removed)."""
    found = problems(tmp)
    if found:
        raise IncompleteFolder(f"{final}: written incomplete, not published: " + "; ".join(found))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a shared cache should be readable
    marker = {"version": MARKER_VERSION, "files": _manifest(tmp)}
    (tmp / DONE).write_text(json.dumps(marker, sort_keys=True) + "\n")
    old = None
    if final.exists():
        old = final.with_name(f"{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def publish(write: Callable[[Path], None], path: str | os.PathLike) -> Path:
    """Run `write(tmp)` on a temp folder beside `path`, verify what it wrote, then rename it into
    place with the done marker: a crash or a failed check never leaves a folder at `path` that
    looks complete. Call on the one process that writes."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        write(tmp)
        _publish_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
