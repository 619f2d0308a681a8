"""Pre-training FLOPs of known base models, for paper B's Fig. 1 (relative gap against log FLOPs).

FLOPs = 6 N D (Kaplan et al. 2020): N the parameter count as the model's name states it (7B =
7e9), D the pre-training tokens its model card or technical report gives. Instruct / chat versions
share their base's pre-training FLOPs (post-training adds comparatively little). Paper B's main
families are Qwen-1.5 (whose token counts were not published per size) and others; any model not
here needs `flops:` in the gv_gap config, which also overrides the table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import PurePath

# repo name (lower case, no organisation, no -hf / -instruct / -chat suffix) -> (params, tokens)
_TOKENS_LLAMA2 = 2e12  # Llama 2 model card: pretrained on 2 trillion tokens
_TOKENS_LLAMA3 = 15e12  # Llama 3 model card: over 15 trillion tokens
_TOKENS_QWEN2 = 7e12  # Qwen2 technical report: 7 trillion tokens (12 trillion for 0.5B)
_TOKENS_QWEN25 = 18e12  # Qwen2.5 technical report: 18 trillion tokens
MODEL_SIZES: dict[str, tuple[float, float]] = {
    "smollm2-135m": (135e6, 2e12),  # SmolLM2 model card: 2 trillion tokens (the embedded default)
    "llama-2-7b": (7e9, _TOKENS_LLAMA2),
    "llama-2-13b": (13e9, _TOKENS_LLAMA2),
    "llama-2-70b": (70e9, _TOKENS_LLAMA2),
    "meta-llama-3-8b": (8e9, _TOKENS_LLAMA3),
    "meta-llama-3-70b": (70e9, _TOKENS_LLAMA3),
    "qwen2-0.5b": (0.5e9, 12e12),
    "qwen2-1.5b": (1.5e9, _TOKENS_QWEN2),
    "qwen2-7b": (7e9, _TOKENS_QWEN2),
    "qwen2-72b": (72e9, _TOKENS_QWEN2),
    **{
        f"qwen2.5-{size}b": (float(size) * 1e9, _TOKENS_QWEN25)
        for size in ("0.5", "1.5", "3", "7", "14", "32", "72")
    },
}
_SUFFIXES = ("-hf", "-instruct", "-chat")


def model_key(model: str) -> str:
    """The table's key for a model given as a hub id, a local folder or a built-in name."""
    name = PurePath(str(model).rstrip("/")).name.lower()
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def pretraining_flops(
    models: Iterable[str], overrides: Mapping[str, float] | None = None
) -> dict[str, float]:
    """{model: FLOPs} for the given models that `overrides` (the config's `flops:`, by the model
    exactly as written) or the built-in table knows; the others are left out."""
    overrides = dict(overrides or {})
    out = {}
    for model in models:
        if model in overrides:
            out[model] = float(overrides[model])
        elif model_key(model) in MODEL_SIZES:
            params, tokens = MODEL_SIZES[model_key(model)]
            out[model] = 6.0 * params * tokens
    return out
