"""`Sampler`: the project's one generation path (evaluation, answer sampling, verification)."""

from __future__ import annotations

import os
import sys
from typing import Any
from typing import Sequence as Seq

import torch

from selftrain import dist
from selftrain.sampler.attention import make_backend
from selftrain.sampler.config import EngineConfig, SamplingParams
from selftrain.sampler.engine import Completion, Engine
from selftrain.sampler.model import Transformer
from selftrain.sampler.runner import ModelRunner
from selftrain.sampler.scheduler import EngineStats

Prompt = str | Seq[int]


def _default_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # CPU: fp32. bf16 matmuls only pay off with avx512_bf16/AMX, which these cores lack
    # (measured: bf16 4x slower than fp32 for the lm_head matmul); see docs/sampler.md
    return torch.float32


def _progress_default() -> bool:
    env = os.environ.get("SELFTRAIN_PROGRESS")
    if env is not None:
        return env not in ("0", "false", "no", "")
    return sys.stderr.isatty()


class Sampler:
    """Batched generation with a paged KV cache, prefix sharing and continuous batching.

    model_or_name: a loaded HF causal LM (Llama / Mistral / Qwen2 family), an HF folder, a hub
        id, a built-in name of `selftrain.models` ("smollm2-135m", "tiny-random"), or a PEFT
        adapter folder (its base with the adapter merged into the weights at load).
    dtype: compute dtype; default fp32 on CPU, bf16 (fp16 without bf16) on CUDA.
    device: default `selftrain.dist.default_device()`.
    max_num_seqs: most sequences decoded together; kv_cache_tokens: KV pool size in tokens.
    max_num_batched_tokens: token budget per step (prefill is chunked to fit it).
    block_size: KV block size (default 16; 256 with flash-attn, which needs multiples of 256).
    attention_backend: "flash" | "triton" | "xformers" | "cpu" | "sdpa" | None (best available for
        the device and dtype: flash, then triton, then xformers on CUDA; cpu for fp32 on CPU; sdpa
        anywhere).
    max_model_len: context limit (default: the model's max_position_embeddings).
    data_parallel: under torchrun, shard prompts across ranks (results gathered on every rank).
    cuda_graphs: capture decode steps in CUDA graphs (CUDA with the flash or triton backend).
    """

    def __init__(
        self,
        model_or_name: Any,
        tokenizer: Any = None,
        dtype: torch.dtype | str | None = None,
        device: str | torch.device | None = None,
        max_num_seqs: int = 128,
        kv_cache_tokens: int = 32768,
        max_num_batched_tokens: int = 1024,
        block_size: int | None = None,
        attention_backend: str | None = None,
        max_model_len: int | None = None,
        data_parallel: bool = True,
        cuda_graphs: bool = True,
    ):
        from selftrain.models import load_model, load_tokenizer

        self.device = torch.device(device) if device is not None else dist.default_device()
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        self.dtype = dtype or _default_dtype(self.device)
        if isinstance(model_or_name, (str, os.PathLike)):
            hf_model = load_model(model_or_name, dtype=torch.float32, device="cpu")
            tokenizer = tokenizer or load_tokenizer(model_or_name)
        else:
            hf_model = model_or_name
            if tokenizer is None:
                source = getattr(getattr(hf_model, "config", None), "_name_or_path", "")
                if not source:
                    raise ValueError("tokenizer= is required when model_or_name is a model without a path")
                tokenizer = load_tokenizer(source)
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = load_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        backend = make_backend(attention_backend, self.device, self.dtype)
        context = int(getattr(hf_model.config, "max_position_embeddings", 4096))
        self.max_model_len = min(context, max_model_len) if max_model_len else context
        self.config = EngineConfig(
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            kv_cache_tokens=kv_cache_tokens,
            block_size=block_size or (256 if backend.name == "flash" else 16),
            max_model_len=self.max_model_len,
        )
        if backend.name == "flash" and self.config.block_size % 256:
            raise ValueError(
                f"block_size must be a multiple of 256 with flash-attn, got {self.config.block_size}"
            )
        self.model = Transformer(hf_model, self.dtype, self.device, self.max_model_len)
        self.eos_ids = self._eos_ids(hf_model, tokenizer)
        del hf_model  # our weights are copies or views; drop the HF module wrapper
        runner = ModelRunner(self.model, self.config, backend, use_cuda_graphs=cuda_graphs)
        self.engine = Engine(runner, self.config, tokenizer, self.eos_ids)
        self.backend_name = backend.name
        self.data_parallel = data_parallel

    @staticmethod
    def _eos_ids(hf_model: Any, tokenizer: Any) -> set[int]:
        ids: set[int] = set()
        gen_cfg = getattr(hf_model, "generation_config", None)
        for source in (getattr(gen_cfg, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
            if source is None:
                continue
            ids.update([source] if isinstance(source, int) else list(source))
        return ids

    def load_weights(self, source: Any) -> float:
        """Replace the weights with those of `source` (an HF causal LM of the same architecture,
        e.g. the trainer's current policy, or its state dict) in place: no checkpoint is written
        or read, and the KV pool, block tables and CUDA graphs stay as they are (the sampler keeps
        no KV cache between `generate` calls, so nothing computed with the old weights survives).
        A sampler built from an HF model object that already had the sampler's dtype and device
        shares some of its tensors; the first refresh gives it private copies, so that model is
        never written to.
        Returns the seconds the copy took (the weight-sync cost)."""
        import time

        t0 = time.perf_counter()
        state = source.state_dict() if hasattr(source, "state_dict") else source
        if self.model.load_state_dict(state) and self.engine.runner.graphs is not None:
            from selftrain.sampler.cuda_graphs import DecodeGraphs

            runner = self.engine.runner  # the weights moved to private copies: capture again
            runner.graphs = DecodeGraphs(runner, max_batch=self.config.max_num_seqs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - t0

    @property
    def stats(self) -> EngineStats:
        return self.engine.stats

    def reset_stats(self) -> None:
        """Zero the counters (a benchmark measures each case from a clean slate)."""
        self.engine.stats = EngineStats()

    # ---- input checks -------------------------------------------------------------------------

    def _encode(self, prompts: Seq[Prompt], indices: Seq[int], max_new_tokens: int,
                truncate: bool) -> list[list[int]]:
        vocab = self.model.args.vocab_size
        out = []
        for i, p in zip(indices, prompts):
            if isinstance(p, str):
                ids = list(self.tokenizer(p)["input_ids"])
            elif isinstance(p, (list, tuple)) and all(type(t) is int for t in p):
                ids = list(p)
                bad = [t for t in ids if not 0 <= t < vocab]
                if bad:
                    raise ValueError(f"prompt {i}: token id {bad[0]} outside the vocabulary [0, {vocab})")
            else:
                raise TypeError(f"prompt {i}: expected str or list[int], got {type(p).__name__}")
            if not ids:
                raise ValueError(f"prompt {i} is empty (no tokens)")
            if len(ids) >= self.max_model_len:
                if not truncate:
                    raise ValueError(
                        f"prompt {i} has {len(ids)} tokens, longer than the model's context of "
                        f"{self.max_model_len} minus one generated token (pass truncate_prompts=True "
                        f"to keep its last tokens)"
                    )
            if truncate:
                keep = max(1, self.max_model_len - max_new_tokens)
                ids = ids[-keep:]
            pool = self.config.num_blocks * self.config.block_size
            need = min(len(ids) + max_new_tokens, self.max_model_len)
            if self.engine.blocks.blocks_for(need) > self.config.num_blocks:
                raise ValueError(
                    f"prompt {i}: {len(ids)} prompt + {max_new_tokens} new tokens do not fit the KV pool "
                    f"of {pool} tokens; raise kv_cache_tokens to at least {need}"
                )
            out.append(ids)
        return out

    def _sharded(self, prompts: Seq[Any], local_fn: Any) -> list[Any]:
        """local_fn(prompts, global_indices) on this rank's shard; results in the original order."""
        if self.data_parallel and dist.world_size() > 1:
            pairs = list(enumerate(prompts))
            return dist.map_sharded(
                pairs, lambda shard: local_fn([p for _, p in shard], [i for i, _ in shard])
            )
        return local_fn(list(prompts), list(range(len(prompts))))

    def _progress_bar(self, total: int, progress: bool | None, desc: str) -> Any:
        show = _progress_default() if progress is None else progress
        if not show or not dist.is_main():
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="seq", dynamic_ncols=True)

    # ---- public API -----------------------------------------------------------------------------

    def generate(
        self,
        prompts: Seq[Prompt],
        n: int = 1,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_new_tokens: int = 512,
        top_k: int = 0,
        stop: str | Seq[str] | None = None,
        seed: int = 0,
        logprobs: bool = False,
        progress: bool | None = None,
        truncate_prompts: bool = False,
    ) -> list[list[Completion]]:
        """n completions per prompt, as a list (per prompt, in order) of lists (n) of Completion.

        Sample j of prompt i at step s draws its random number from (seed, i, j, s) only, where
        i is the prompt's index in `prompts` (the global index under data parallelism).
        """
        stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
        params = SamplingParams(n=n, temperature=temperature, top_p=top_p, top_k=top_k,
                                max_new_tokens=max_new_tokens,
                                stop=stops, seed=seed, logprobs=logprobs)
        if isinstance(prompts, (str, bytes)):
            raise TypeError("prompts must be a list of prompts, not a single string")
        if len(prompts) == 0:
            return []

        def local(shard: list[Prompt], indices: list[int]) -> list[list[Completion]]:
            encoded = self._encode(shard, indices, max_new_tokens, truncate_prompts)
            leaders = [
                self.engine.new_sequence(i, ids, min(max_new_tokens, self.max_model_len - len(ids)), n=n)
                for i, ids in zip(indices, encoded)
            ]
            bar = self._progress_bar(len(leaders) * n, progress, "sampling")
            try:
                seqs = self.engine.run(leaders, params, bar)
            finally:
                if bar is not None:
                    bar.close()
            by_prompt: dict[int, list[Any]] = {i: [None] * n for i in indices}
            for s in seqs:
                by_prompt[s.prompt_index][s.sample_index] = self.engine.completion(s, params)
            return [by_prompt[i] for i in indices]

        return self._sharded(prompts, local)

    def next_token_probs(
        self,
        prompts: Seq[Prompt],
        candidates: Seq[str | int] | Seq[Seq[str | int]],
        progress: bool | None = None,
    ) -> list[list[float]]:
        """P(next token = candidate) after each prompt, from the model's softmax at temperature 1.

        candidates: one list shared by all prompts, or one list per prompt. A string candidate is
        encoded as given (no special tokens; include a leading space if the word follows one)
        and, when it spans several tokens, its FIRST token is scored; an int is a token id.
        Returns one list of floats per prompt, aligned with its candidates.
        """
        if isinstance(prompts, (str, bytes)):
            raise TypeError("prompts must be a list of prompts, not a single string")
        if len(prompts) == 0:
            return []
        per_prompt = len(candidates) > 0 and all(isinstance(c, (list, tuple)) for c in candidates)
        if per_prompt and len(candidates) != len(prompts):
            raise ValueError(f"got {len(candidates)} candidate lists for {len(prompts)} prompts")
        cand_lists = list(candidates) if per_prompt else [list(candidates)] * len(prompts)
        ids_lists = [[self._candidate_id(c, i) for c in cl] for i, cl in enumerate(cand_lists)]
        if any(not cl for cl in ids_lists):
            raise ValueError("candidates must not be empty")
        params = SamplingParams(max_new_tokens=1)

        def local(shard: list[tuple[Prompt, list[int]]], indices: list[int]) -> list[list[float]]:
            encoded = self._encode([p for p, _ in shard], indices, 1, False)
            seqs = [self.engine.new_sequence(i, ids, 1, probe_ids=cids)
                    for i, ids, (_, cids) in zip(indices, encoded, shard)]
            bar = self._progress_bar(len(seqs), progress, "scoring")
            try:
                self.engine.run(seqs, params, bar)
            finally:
                if bar is not None:
                    bar.close()
            return [list(s.probe_probs) for s in seqs]

        return self._sharded(list(zip(prompts, ids_lists)), local)

    def _candidate_id(self, cand: str | int, prompt_index: int) -> int:
        if isinstance(cand, int) and not isinstance(cand, bool):
            if not 0 <= cand < self.model.args.vocab_size:
                raise ValueError(f"candidate id {cand} (prompt {prompt_index}) is outside the vocabulary")
            return cand
        if not isinstance(cand, str) or not cand:
            raise ValueError(f"candidate {cand!r} (prompt {prompt_index}) must be a non-empty str or an id")
        ids = self.tokenizer.encode(cand, add_special_tokens=False)
        if not ids:
            raise ValueError(f"candidate {cand!r} encodes to no tokens")
        return ids[0]
