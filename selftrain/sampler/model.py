"""The decoder forward pass for the Llama family (Llama, Mistral, Qwen2), reading HF weights.

Reads top to bottom: config -> RoPE tables -> one decoder layer -> the stack -> logits.
HF's own forward has no paged KV cache, so the sampler runs this one. Weights are taken from
the HF model once: q/k/v and gate/up projections are concatenated so each layer does 4 matmuls.
Numerics follow HF's fp32 path (RMSNorm in fp32, RoPE on rotate-half layout, GQA head order).
The o/gate-up/down projections and the LM head run as `W @ x.T` on rows padded to a multiple of 8
(fastest for BLAS on CPU); in fp32 on the CPU, RMSNorm, RoPE, silu(gate) * up and the head's
transpose go through C kernels (cpu_layer_ops, cpu_logits) whose references are the torch
functions here. docs/sampler.md has the measurements behind each choice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from selftrain.sampler import cpu_layer_ops, cpu_logits

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


@dataclass
class ModelArgs:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    sliding_window: int | None

    @classmethod
    def from_hf_config(cls, cfg: Any, arch: str | None = None) -> "ModelArgs":
        model_type = getattr(cfg, "model_type", None)
        arch = arch or (getattr(cfg, "architectures", None) or [model_type])[0]
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"the sampler has no forward pass for architecture {arch!r} (model_type {model_type!r}); "
                f"supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        act = getattr(cfg, "hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"architecture {arch!r}: hidden_act {act!r} is not supported (only silu)")
        # transformers 5 keeps theta and scaling in `rope_parameters`; 4.x in rope_theta / rope_scaling
        rope = dict(getattr(cfg, "rope_parameters", None) or {})
        legacy = getattr(cfg, "rope_scaling", None)
        if legacy:
            rope = {**dict(legacy), **rope}
        theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        heads = cfg.num_attention_heads
        window = None
        if model_type == "mistral" or getattr(cfg, "use_sliding_window", False):
            window = getattr(cfg, "sliding_window", None)
        return cls(
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_layers=cfg.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
            head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
            rms_norm_eps=float(cfg.rms_norm_eps),
            rope_theta=float(theta),
            rope_scaling=None if rope_type == "default" else {**rope, "rope_type": rope_type},
            max_position_embeddings=int(cfg.max_position_embeddings),
            tie_word_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
            sliding_window=int(window) if window else None,
        )


def rope_inv_freq(args: ModelArgs) -> torch.Tensor:
    """Inverse frequencies, with Llama-3 ("llama3") or linear scaling when the config asks."""
    dim = args.head_dim
    inv_freq = 1.0 / (args.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = args.rope_scaling
    if scaling is None:
        return inv_freq
    kind = scaling["rope_type"]
    if kind == "linear":
        return inv_freq / float(scaling["factor"])
    if kind == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_len = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        # long wavelengths are slowed by `factor`, short ones kept, the band between interpolated
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        in_band = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
        return torch.where(in_band, blended, scaled)
    raise ValueError(f"rope_type {kind!r} is not supported by the sampler (default, linear, llama3)")


def rope_tables(args: ModelArgs, max_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin for positions 0..max_len-1, shape [max_len, head_dim], fp32."""
    inv_freq = rope_inv_freq(args)
    positions = torch.arange(max_len, dtype=torch.float32)
    freqs = positions[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(device), emb.sin().to(device)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, head_dim]; cos/sin [T, 1, head_dim]; rotate-half layout as in HF Llama."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def padded_rows(rows: int) -> int:
    """`rows` rounded up to a multiple of 8, the row counts the matmuls below run fastest at; 1 and
    2 rows stay as they are (measured: one row padded to 8 took 2.2x as long as one row alone, a
    matrix-vector product bound by reading the weights)."""
    return rows if rows <= 2 else -(-rows // 8) * 8


def feature_major_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
                         ) -> torch.Tensor:
    """`F.linear(x, weight, bias)` transposed: x [T, in] -> [out, T].

    Measured with MKL on the 2-core AVX2 machine (docs/sampler.md): `weight @ x.T` takes 0.7-0.75x
    the time of `x @ weight.T` for the 16-128 rows of a decode step, but only when T is a multiple
    of 8 (at 63 rows it is slower than at 64), so the forward pass pads its rows to one. The
    feature-major result is what the MLP's down projection reads fastest, and it reaches the
    token-major residual stream through a transposed view.
    """
    out = torch.mm(weight, x.t())
    return out if bias is None else out + bias[:, None]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # computed in fp32 and scaled after casting back, exactly as HF's LlamaRMSNorm
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


class LayerWeights:
    """One decoder layer's weights, fused for fewer matmuls."""

    # each fused weight: the HF tensors (under "model.layers.<i>.") concatenated along dim 0
    PARTS = {
        "input_norm": ("input_layernorm.weight",),
        "post_norm": ("post_attention_layernorm.weight",),
        "qkv": tuple(f"self_attn.{p}_proj.weight" for p in "qkv"),
        "qkv_bias": tuple(f"self_attn.{p}_proj.bias" for p in "qkv"),
        "o": ("self_attn.o_proj.weight",),
        "o_bias": ("self_attn.o_proj.bias",),
        "gate_up": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
        "down": ("mlp.down_proj.weight",),
    }
    NAMES = tuple(PARTS)

    def __init__(self, sd: dict[str, torch.Tensor], prefix: str, dtype: torch.dtype, device: torch.device):
        def get(name: str) -> torch.Tensor | None:
            t = sd.get(prefix + name)
            return None if t is None else t.detach().to(device=device, dtype=dtype)

        for name, parts in self.PARTS.items():
            tensors = [get(p) for p in parts]
            if tensors[0] is None:
                setattr(self, name, None)
            else:  # one part: the (possibly shared) tensor itself; several: a new fused copy
                setattr(self, name, tensors[0].contiguous() if len(tensors) == 1 else torch.cat(tensors, 0))
        if get("mlp.gate_proj.bias") is not None:
            raise ValueError(f"{prefix}mlp has biases (mlp_bias=True), which the sampler does not support")

    @torch.no_grad()
    def load(self, sd: dict[str, torch.Tensor], prefix: str) -> None:
        """Copy this layer's HF tensors from `sd` into the fused weights in place (no temporaries)."""
        for name, parts in self.PARTS.items():
            dst = getattr(self, name)
            srcs = [sd.get(prefix + p) for p in parts]
            if dst is None or any(t is None for t in srcs):
                if dst is None and all(t is None for t in srcs):
                    continue
                missing = [prefix + p for p, t in zip(parts, srcs) if t is None]
                what = f"lacks {', '.join(missing)}" if missing else f"has an extra {prefix}{parts[0]}"
                raise ValueError(f"state dict {what}")
            rows = sum(t.shape[0] for t in srcs)
            if rows != dst.shape[0] or any(t.shape[1:] != dst.shape[1:] for t in srcs):
                shapes = [tuple(t.shape) for t in srcs]
                raise ValueError(
                    f"{prefix}{name}: shapes {shapes} in the state dict do not fit {tuple(dst.shape)}"
                )
            start = 0
            for t in srcs:
                dst.narrow(0, start, t.shape[0]).copy_(t)
                start += t.shape[0]


class Transformer:
    """The forward pass over a flat batch of tokens (no padding); attention goes through `backend`."""

    def __init__(self, hf_model: Any, dtype: torch.dtype, device: torch.device, max_len: int):
        self.args = args = ModelArgs.from_hf_config(hf_model.config, type(hf_model).__name__)
        self.dtype, self.device = dtype, device
        sd = dict(hf_model.state_dict())
        if not any(k.startswith("model.layers.") for k in sd):
            raise ValueError("HF model state dict has no model.layers.* weights; is it a *ForCausalLM model?")
        self.embed = sd["model.embed_tokens.weight"].detach().to(device=device, dtype=dtype)
        self.layers = [LayerWeights(sd, f"model.layers.{i}.", dtype, device) for i in range(args.num_layers)]
        self.final_norm = sd["model.norm.weight"].detach().to(device=device, dtype=dtype)
        head = sd.get("lm_head.weight")
        if head is None or args.tie_word_embeddings:
            self.lm_head = self.embed
        else:
            self.lm_head = head.detach().to(device=device, dtype=dtype)
        self.cos, self.sin = rope_tables(args, max_len, device)
        self.q_size = args.num_heads * args.head_dim
        self.kv_size = args.num_kv_heads * args.head_dim
        self.scale = args.head_dim ** -0.5
        cpu_fp32 = device.type == "cpu" and dtype == torch.float32
        # fp32 on CPU: the C kernels (the torch code stays the reference and the path elsewhere)
        self.vocab_major_head = cpu_fp32 and cpu_logits.available()
        self.fused_ops = cpu_fp32 and cpu_layer_ops.available()
        self._head_buffers: dict[str, torch.Tensor] = {}
        # `.to()` returns the HF tensor itself when device and dtype already match: then some
        # weights here are the source model's own tensors, which load_state_dict must not write
        source_ptrs = {t.data_ptr() for t in sd.values()}
        self.shares_source = any(t.data_ptr() in source_ptrs for t in self._tensors())

    def _tensors(self) -> list[torch.Tensor]:
        out = [self.embed, self.final_norm, self.lm_head]
        for layer in self.layers:
            out += [t for t in (getattr(layer, n) for n in LayerWeights.NAMES) if t is not None]
        return out

    def _unshare(self) -> None:
        """Give every weight a private copy (new addresses)."""
        tied = self.lm_head is self.embed
        self.embed = self.embed.clone()
        self.final_norm = self.final_norm.clone()
        self.lm_head = self.embed if tied else self.lm_head.clone()
        for layer in self.layers:
            for name in LayerWeights.NAMES:
                t = getattr(layer, name)
                if t is not None:
                    setattr(layer, name, t.clone())
        self.shares_source = False

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> bool:
        """Copy an HF state dict of the same architecture into the weights in place, each HF
        tensor straight into its slice of the fused weight (no temporaries). The addresses stay
        unchanged (captured CUDA graphs stay valid) except on the first
        call when the weights still share the construction model's tensors: they get private
        copies first, and the call returns True (the caller must re-capture graphs). A state dict
        that does not fit raises a ValueError naming the tensor, possibly after earlier tensors
        were copied: load a fitting one before sampling again."""
        sd = dict(state_dict)
        if "model.embed_tokens.weight" not in sd:
            raise ValueError("state dict has no model.embed_tokens.weight; is it a *ForCausalLM state dict?")
        moved = self.shares_source
        if moved:
            self._unshare()

        def put(dst: torch.Tensor | None, src: torch.Tensor | None, name: str) -> None:
            if (dst is None) != (src is None):
                raise ValueError(f"state dict {'lacks' if src is None else 'has an extra'} {name}")
            if dst is not None:
                if dst.shape != src.shape:
                    raise ValueError(
                        f"{name}: shape {tuple(src.shape)} in the state dict, {tuple(dst.shape)} here"
                    )
                dst.copy_(src)

        put(self.embed, sd["model.embed_tokens.weight"], "model.embed_tokens.weight")
        for i, layer in enumerate(self.layers):
            layer.load(sd, f"model.layers.{i}.")
        put(self.final_norm, sd["model.norm.weight"], "model.norm.weight")
        if self.lm_head is not self.embed:
            put(self.lm_head, sd.get("lm_head.weight"), "lm_head.weight")
        return moved

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_cache: torch.Tensor,
                meta: Any, backend: Any) -> torch.Tensor:
        """input_ids, positions [T] -> final hidden states [T, hidden]. New K/V go to the cache."""
        a = self.args
        T = input_ids.shape[0]
        P = padded_rows(T)
        x = self.embed[input_ids]
        if P != T:  # zero rows: they pass the projections and MLP, never attention or the output
            x = torch.cat([x, x.new_zeros(P - T, x.shape[1])])
        attn = x.new_zeros(P, self.q_size)
        if not self.fused_ops:  # the torch path gathers the RoPE rows once per step
            cos = self.cos[positions].unsqueeze(1).to(self.dtype)
            sin = self.sin[positions].unsqueeze(1).to(self.dtype)
        for i, w in enumerate(self.layers):
            h = self._rms_norm(x[:T], w.input_norm)
            qkv = F.linear(h, w.qkv, w.qkv_bias)
            v = qkv[:, self.q_size + self.kv_size :].view(T, a.num_kv_heads, a.head_dim)
            if self.fused_ops:
                q, k = cpu_layer_ops.rope_qk(qkv, self.cos, self.sin, positions, a.num_heads,
                                             a.num_kv_heads, a.head_dim)
            else:
                q = apply_rope(qkv[:, : self.q_size].view(T, a.num_heads, a.head_dim), cos, sin)
                k_in = qkv[:, self.q_size : self.q_size + self.kv_size]
                k = apply_rope(k_in.view(T, a.num_kv_heads, a.head_dim), cos, sin)
            attn[:T] = backend.attend(q, k, v, kv_cache[i], meta, self.scale).view(T, self.q_size)
            x = x + feature_major_linear(attn, w.o, w.o_bias).t()
            h = self._rms_norm(x, w.post_norm)
            gate_up = feature_major_linear(h, w.gate_up)
            if self.fused_ops:
                act = cpu_layer_ops.silu_mul(gate_up)
            else:
                gate, up = gate_up.chunk(2, dim=0)
                act = F.silu(gate) * up
            # act is [intermediate, P]: already the layout `down` reads fastest
            x = x + torch.mm(w.down, act).t()
        return self._rms_norm(x[:T], self.final_norm)

    def _rms_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.fused_ops:
            return cpu_layer_ops.rms_norm(x, weight, self.args.rms_norm_eps)
        return rms_norm(x, weight, self.args.rms_norm_eps)

    def _head_buffer(self, name: str, rows: int, cols: int) -> torch.Tensor:
        # A contiguous [rows, cols] view of a buffer kept between steps. Each step's head output is
        # 12-25 MB; allocated fresh it is faulted in page by page again every step (glibc hands
        # blocks that large back to the kernel on free): measured on the dev machine at 64 rows,
        # the product took 31 ms (median of 5) fresh against 27 into a kept buffer, the transpose
        # 5.2 against 1.8 ms. End to end (32 x 8 prompts) the difference was inside the run-to-run
        # noise of this VM (+-10%).
        buf = self._head_buffers.get(name)
        if buf is None or buf.numel() < rows * cols:
            buf = self._head_buffers[name] = torch.empty(rows * cols, dtype=torch.float32)
        return buf[: rows * cols].view(rows, cols)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits [R, V] in fp32 for the given rows of final hidden states. On the CPU
        fp32 path they live in a buffer that the next call overwrites: use them before then."""
        if self.vocab_major_head:
            # W @ h.T with rows in multiples of 8 (see feature_major_linear), then a tiled transpose
            R = hidden.shape[0]
            P = padded_rows(R)
            if P != R:
                hidden = torch.cat([hidden, hidden.new_zeros(P - R, hidden.shape[1])])
            V = self.lm_head.shape[0]
            vocab_major = self._head_buffer("vocab_major", V, P)
            torch.mm(self.lm_head, hidden.t(), out=vocab_major)
            return cpu_logits.to_rows(vocab_major, R, out=self._head_buffer("rows", R, V))
        return F.linear(hidden, self.lm_head).float()
