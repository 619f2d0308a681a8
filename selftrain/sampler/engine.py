"""The generation loop: schedule a step, run it, pick tokens, retire finished sequences."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from selftrain.sampler.block_manager import BlockManager
from selftrain.sampler.config import EngineConfig, SamplingParams
from selftrain.sampler.runner import ModelRunner
from selftrain.sampler.sampling import counter_uniforms, select_tokens
from selftrain.sampler.scheduler import EngineStats, Scheduler
from selftrain.sampler.sequence import Sequence


@dataclass
class Completion:
    """One sample. `text` is cut before a matched stop string and excludes EOS; `token_ids`
    holds every generated token, including the EOS or the token that completed a stop string."""

    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (EOS or stop string) | "length" (max_new_tokens or context end)
    logprobs: list[float] | None = None
    prompt_index: int = field(default=-1, repr=False)


class Engine:
    def __init__(self, runner: ModelRunner, config: EngineConfig, tokenizer: Any, eos_ids: set[int]):
        self.runner = runner
        self.config = config
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.blocks = BlockManager(config.num_blocks, config.block_size)
        self.stats = EngineStats()
        self._next_id = 0

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def new_sequence(self, prompt_index: int, token_ids: list[int], max_tokens: int, n: int = 1,
                     probe_ids: list[int] | None = None) -> Sequence:
        return Sequence(
            seq_id=self._new_id(), prompt_index=prompt_index, sample_index=0, token_ids=list(token_ids),
            num_prompt_tokens=len(token_ids), max_tokens=max_tokens, pending_samples=n - 1,
            probe_ids=probe_ids,
        )

    def run(self, leaders: list[Sequence], params: SamplingParams, progress: Any = None) -> list[Sequence]:
        """Generate until every sequence finished; returns all sequences (forked samples too)."""
        scheduler = Scheduler(self.config, self.blocks, self.stats)
        for seq in leaders:
            scheduler.add(seq)
        everyone = list(leaders)
        generated_before = self.stats.generated_tokens
        started = last_report = time.perf_counter()
        while scheduler.has_work():
            batch = scheduler.schedule()
            self.stats.steps += 1
            self.stats.cow_copies += len(batch.copies)
            for s, n in batch.items:
                if n == 1 and s.num_generated > 0 and s.num_computed == len(s.token_ids) - 1:
                    self.stats.decode_tokens += 1
                else:
                    self.stats.prefill_tokens += n
            decode_only = all(n == 1 for _, n in batch.items)
            context = sum(s.num_computed + 1 for s, _ in batch.items) if decode_only else 0
            t0 = time.perf_counter()
            logits, ready = self.runner.run(batch)
            finished = self._advance(scheduler, logits, ready, params, everyone) if ready else 0
            if decode_only:
                self.stats.decode_steps += 1
                self.stats.decode_step_tokens += len(batch.items)
                self.stats.decode_step_context += context
                self.stats.decode_step_seconds += time.perf_counter() - t0
            if progress is not None:
                progress.update(finished)
                now = time.perf_counter()
                if now - last_report > 1.0:
                    last_report = now
                    rate = (self.stats.generated_tokens - generated_before) / (now - started)
                    progress.set_postfix_str(f"{rate:.0f} tok/s", refresh=False)
        return everyone

    def _advance(self, scheduler: Scheduler, logits: torch.Tensor, ready: list[Sequence],
                 params: SamplingParams, everyone: list[Sequence]) -> int:
        """Sample the next token of every ready sequence; fork group leaders; retire the done."""
        rows: list[int] = []
        owners: list[Sequence] = []
        finished = 0
        for r, seq in enumerate(ready):
            if seq.probe_ids is not None:
                probs = torch.softmax(logits[r], dim=-1)
                seq.probe_probs = probs[seq.probe_ids].tolist()
                seq.finish_reason = "stop"
                scheduler.finish(seq)
                finished += 1
                continue
            group = [seq]
            if seq.pending_samples:
                # prefix sharing: siblings start from the leader's prompt blocks, refcounted
                for j in range(1, seq.pending_samples + 1):
                    sib = seq.forked(self._new_id(), j)
                    self.blocks.share(sib.block_table)
                    group.append(sib)
                seq.pending_samples = 0
                scheduler.join(group[1:])
                everyone.extend(group[1:])
            rows += [r] * len(group)
            owners += group
        if not owners:
            return finished
        if rows == list(range(logits.shape[0])):
            row_logits = logits
        else:  # probes dropped out, or a leader's row serves all n samples of its prompt
            row_logits = logits.index_select(0, torch.tensor(rows, device=logits.device))
        uniforms = torch.from_numpy(counter_uniforms(
            params.seed, [s.prompt_index for s in owners], [s.sample_index for s in owners],
            [s.num_generated for s in owners],
        )).to(logits.device)
        tokens, token_logps = select_tokens(row_logits, params.temperature, params.top_p, uniforms,
                                            params.logprobs, params.top_k)
        logps = token_logps.tolist() if token_logps is not None else None
        for k, (seq, tok) in enumerate(zip(owners, tokens.tolist())):
            seq.token_ids.append(tok)
            if logps is not None:
                seq.logprobs.append(logps[k])
            self.stats.generated_tokens += 1
            reason = self._finish_reason(seq, tok, params)
            if reason is not None:
                seq.finish_reason = reason
                scheduler.finish(seq)
                finished += 1
        return finished

    def _finish_reason(self, seq: Sequence, tok: int, params: SamplingParams) -> str | None:
        if tok in self.eos_ids:
            return "stop"
        if params.stop:
            # a stop string may span several tokens: look at the decoded tail only
            tail_tokens = max(len(s) for s in params.stop) + 4
            tail = self.tokenizer.decode(seq.generated_ids[-tail_tokens:], skip_special_tokens=True)
            if any(s in tail for s in params.stop):
                return "stop"
        if seq.num_generated >= seq.max_tokens:
            return "length"
        return None

    def completion(self, seq: Sequence, params: SamplingParams) -> Completion:
        ids = seq.generated_ids
        text_ids = ids[:-1] if ids and ids[-1] in self.eos_ids else ids
        text = self.tokenizer.decode(text_ids, skip_special_tokens=True)
        if params.stop:
            cuts = [text.find(s) for s in params.stop if s in text]
            if cuts:
                text = text[: min(cuts)]
        return Completion(
            text=text, token_ids=list(ids), finish_reason=seq.finish_reason or "length",
            logprobs=list(seq.logprobs) if params.logprobs else None, prompt_index=seq.prompt_index,
        )
