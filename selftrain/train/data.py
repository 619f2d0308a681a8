"""Training data: reading and checking records, tokenizing them, and planning length-grouped batches.

Records: SFT `{"prompt": str | chat messages, "response": str}`; DPO/RPO `{"prompt", "chosen",
"rejected"}`. A string prompt is used verbatim (callers pass prompts already rendered with a chat
template); a list of chat messages goes through the tokenizer's chat template with the generation
prompt added. Prompt and response are tokenized separately without special tokens, concatenated,
and the EOS id is appended after the response so the model learns to stop. Only response tokens
(and the EOS) are trained on.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

IGNORE = -100
FIELDS = {"sft": ("prompt", "response"), "dpo": ("prompt", "chosen", "rejected")}


class DataError(ValueError):
    """A data file or record that cannot be trained on; the message names file, line and field."""


def _check_messages(value: list[Any], where: str) -> None:
    if not value:
        raise DataError(f"{where}: field 'prompt' is an empty list of chat messages")
    for i, m in enumerate(value):
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            raise DataError(
                f"{where}: field 'prompt' message {i} must be {{'role': str, 'content': str}}, got {m!r:.80}"
            )


def check_record(rec: Any, kind: str, where: str) -> dict[str, Any]:
    """The record if it fits `kind` ("sft" or "dpo"), else a DataError naming `where` and the field."""
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    for name in FIELDS[kind]:
        if name not in rec:
            raise DataError(
                f"{where}: missing field {name!r} (a {kind} record needs {', '.join(FIELDS[kind])})"
            )
        value = rec[name]
        if name == "prompt" and isinstance(value, list):
            _check_messages(value, where)
        elif not isinstance(value, str):
            allowed = "a string or a list of chat messages" if name == "prompt" else "a string"
            raise DataError(f"{where}: field {name!r} must be {allowed}, got {type(value).__name__}")
        elif name != "prompt" and not value:
            raise DataError(f"{where}: field {name!r} is empty")
    return rec


def load_records(data: str | Path | Sequence[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """Records from a JSONL file (blank lines skipped) or an in-memory list, all checked."""
    if kind not in FIELDS:
        raise ValueError(f"unknown record kind {kind!r}; expected one of {', '.join(FIELDS)}")
    if isinstance(data, (str, Path)):
        path = Path(data)
        if not path.is_file():
            raise DataError(f"data file {path} does not exist")
        out = []
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(
                        f"{path} line {lineno}: not valid JSON ({e.msg} at column {e.colno})"
                    ) from None
                out.append(check_record(rec, kind, f"{path} line {lineno}"))
        if not out:
            raise DataError(f"data file {path} holds no records")
        return out
    records = list(data)
    if not records:
        raise DataError("the in-memory data list is empty")
    return [check_record(r, kind, f"data record {i}") for i, r in enumerate(records)]


def records_digest(records: Sequence[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(list(records), sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@dataclass
class Example:
    """One tokenized training item: a single sequence (SFT) or a chosen/rejected pair (DPO)."""

    index: int  # position in the record list, the key of cached reference log-probs
    sequences: list[list[int]]  # 1 (SFT) or 2 (chosen, rejected) token id lists
    prompt_lens: list[int]  # response tokens start here in each sequence

    @property
    def length(self) -> int:
        return max(len(s) for s in self.sequences)

    @property
    def n_tokens(self) -> int:
        return sum(len(s) for s in self.sequences)

    @property
    def trained_tokens(self) -> int:
        """Positions with a loss target (the same count `collate` marks)."""
        return sum(len(s) - max(p, 1) for s, p in zip(self.sequences, self.prompt_lens))


@dataclass
class TokenizeStats:
    records: int = 0
    skipped_long_prompt: int = 0
    truncated_responses: int = 0
    skipped_indices: list[int] = field(default_factory=list)


def _prompt_ids(tokenizer: Any, prompt: str | list[dict[str, str]]) -> list[int]:
    if isinstance(prompt, list):
        text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    else:
        text = prompt
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_records(
    records: Sequence[dict[str, Any]], tokenizer: Any, kind: str, max_length: int
) -> tuple[list[Example], TokenizeStats]:
    """Token ids of every record, responses cut from the right to fit `max_length`.

    A record whose prompt alone leaves no room for a response token is skipped; both cases are
    counted in the returned stats (the trainer logs them)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no EOS token; cannot mark where responses end")
    stats = TokenizeStats(records=len(records))
    examples = []
    for i, rec in enumerate(records):
        prompt = _prompt_ids(tokenizer, rec["prompt"])
        if len(prompt) >= max_length:
            stats.skipped_long_prompt += 1
            stats.skipped_indices.append(i)
            continue
        seqs = []
        for name in FIELDS[kind][1:]:
            resp = list(tokenizer(rec[name], add_special_tokens=False)["input_ids"]) + [eos]
            room = max_length - len(prompt)
            if len(resp) > room:
                stats.truncated_responses += 1
                resp = resp[:room]
            seqs.append(prompt + resp)
        examples.append(Example(index=i, sequences=seqs, prompt_lens=[len(prompt)] * len(seqs)))
    if not examples:
        raise DataError(
            f"all {len(records)} records have prompts of max_length={max_length} tokens or more; "
            "nothing to train"
        )
    return examples, stats


def examples_digest(examples: Sequence[Example]) -> str:
    """A hash of the token ids and prompt boundaries: equal digests mean identical training inputs."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.index, ex.sequences, ex.prompt_lens]).encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Batch planning. The plan depends only on the data, the seed and the global batch size, never on
# the world size: every rank computes the same plan and takes its share of each global batch.


def epoch_batches(
    lengths: Sequence[int], global_batch: int, seed: int, epoch: int, group_by_length: bool, window: int
) -> list[list[int]]:
    """Global batches (lists of example positions) of one epoch, in a seeded order.

    With length grouping, a seeded permutation is cut into windows of `window` global batches;
    each window is sorted by length and cut into batches, and the batches are then shuffled, so
    each batch holds similar lengths while the order of the data stays random."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(len(lengths), generator=gen).tolist()
    if not group_by_length:
        return [perm[i : i + global_batch] for i in range(0, len(perm), global_batch)]
    batches = []
    span = global_batch * window
    for start in range(0, len(perm), span):
        chunk = sorted(perm[start : start + span], key=lambda j: -lengths[j])
        batches.extend(chunk[i : i + global_batch] for i in range(0, len(chunk), global_batch))
    order = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[i] for i in order]


def steps_per_epoch(n_examples: int, global_batch: int) -> int:
    return math.ceil(n_examples / global_batch)


def split_micro_batches(
    batch: Sequence[int], lengths: Sequence[int], micro: int, world: int
) -> list[list[list[int]]]:
    """For each rank, its micro-batches of one global batch; every rank gets the same number
    (an empty list is a placeholder micro-batch that contributes nothing but keeps FSDP's
    collectives in step)."""
    ordered = sorted(batch, key=lambda j: -lengths[j])
    micros = [ordered[i : i + micro] for i in range(0, len(ordered), micro)]
    per_rank = max(1, math.ceil(len(micros) / world))
    out = []
    for r in range(world):
        mine = micros[r::world]
        out.append(mine + [[] for _ in range(per_rank - len(mine))])
    return out


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    targets: torch.Tensor  # [B, T]: next token where it is a response token, else IGNORE
    n_examples: int  # real examples (0 for a placeholder)
    real_tokens: int  # non-padding tokens
    slots: int  # B * T


def collate(examples: Sequence[Example], pad_id: int) -> MicroBatch:
    """Right-padded tensors; for pairs the chosen sequences come first, then the rejected ones."""
    if not examples:
        # a placeholder: one two-token sequence whose loss the trainer multiplies by zero
        ids = torch.full((1, 2), pad_id, dtype=torch.long)
        targets = torch.tensor([[pad_id, IGNORE]], dtype=torch.long)
        return MicroBatch(ids, torch.ones_like(ids), targets, 0, 0, 0)
    n_seq = len(examples[0].sequences)
    seqs = [ex.sequences[k] for k in range(n_seq) for ex in examples]
    starts = [ex.prompt_lens[k] for k in range(n_seq) for ex in examples]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    targets = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    for b, (s, p) in enumerate(zip(seqs, starts)):
        t = torch.tensor(s, dtype=torch.long)
        ids[b, : len(s)] = t
        mask[b, : len(s)] = 1
        # position j predicts token j + 1; train on predictions of response tokens only (an empty
        # prompt leaves nothing to predict the first token from)
        first = max(p, 1)
        targets[b, first - 1 : len(s) - 1] = t[first:]
    real = sum(len(s) for s in seqs)
    return MicroBatch(ids, mask, targets, len(examples), real, len(seqs) * width)
