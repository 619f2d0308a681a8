"""Multiple-choice verification: û = p(Correct) / (p(Correct) + p(Incorrect)) after the prompt.

Spellings. The verifier may answer "Correct", " Correct", "correct", " correct", "CORRECT" or
" CORRECT" (with or without a leading space depending on the prompt layout and chat template),
and the same for "Incorrect". p(Correct) is the SUM of the probabilities of the positive
spellings, p(Incorrect) of the negative ones: the verifier's belief is spread over spellings, and
a max would depend on which spelling the layout favours. Spellings that encode to the same tokens
are counted once.

Words of several tokens. Tokenizers split words differently (SmolLM2: "Incorrect" = "In" +
"correct", " Incorrect" = " Inc" + "orrect"). Two ways to score a word, `word_probs=`:
  - "first_token" (default; paper B's single-token definition and the contract of
    `Sampler.next_token_probs`): a word's probability is that of its FIRST token. Spellings are
    grouped by first token; a first token shared by a positive and a negative spelling cannot tell
    the answers apart and is dropped from both sides. A first token like "In" also starts other
    words ("In this solution ..."), so its mass is an over-estimate of the word's: the usual
    first-token approximation. One scoring pass per response.
  - "full": the exact word probability, the product of each token's probability given the ones
    before it (prompt token ids + the word's earlier tokens, so no re-tokenisation). Costs one
    extra scoring row per response for every distinct proper prefix of a multi-token spelling.
`result.info["candidates"]` lists the token sequences used, the spellings of several tokens and
any dropped ids. If both sums are 0 (or not finite) û is undefined: counted as a failure, û = 0.5.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from .base import VerificationResult, Verifier, check_responses, problem_text, register
from .prompts import build_prompt

POSITIVE_VARIANTS = ("Correct", " Correct", "correct", " correct", "CORRECT", " CORRECT")
NEGATIVE_VARIANTS = ("Incorrect", " Incorrect", "incorrect", " incorrect", "INCORRECT", " INCORRECT")
WORD_PROBS = ("first_token", "full")


def _encode(tokenizer: Any, text: str) -> tuple[int, ...]:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if not ids:
        raise ValueError(f"tokenizer encodes {text!r} to no tokens")
    return tuple(int(i) for i in ids)


def candidate_groups(tokenizer: Any, word_probs: str = "first_token") -> dict[str, Any]:
    """The token sequences that stand for each answer.

    Returns positive / negative: {spelling: token ids} (first token only in "first_token" mode,
    one spelling per distinct sequence), ambiguous: first ids shared by both sides (dropped, in
    "first_token" mode), multi_token: spellings longer than one token.
    """
    if word_probs not in WORD_PROBS:
        raise ValueError(f"word_probs must be one of {WORD_PROBS}, got {word_probs!r}")
    sides: list[dict[str, tuple[int, ...]]] = [{}, {}]
    multi = []
    for variants, side in ((POSITIVE_VARIANTS, sides[0]), (NEGATIVE_VARIANTS, sides[1])):
        seen: set[tuple[int, ...]] = set()
        for text in variants:
            ids = _encode(tokenizer, text)
            if len(ids) > 1:
                multi.append(text)
            if word_probs == "first_token":
                ids = ids[:1]
            if ids not in seen:
                seen.add(ids)
                side[text] = ids
    pos, neg = sides
    ambiguous: list[int] = []
    if word_probs == "first_token":
        ambiguous = sorted({s[0] for s in pos.values()} & {s[0] for s in neg.values()})
        pos = {t: s for t, s in pos.items() if s[0] not in ambiguous}
        neg = {t: s for t, s in neg.items() if s[0] not in ambiguous}
    if not pos or not neg:
        raise ValueError(
            "MC verification cannot separate Correct from Incorrect with this tokenizer: every spelling "
            f"shares its first token with the other answer (shared ids {ambiguous})"
        )
    return {"positive": pos, "negative": neg, "ambiguous": ambiguous, "multi_token": multi,
            "word_probs": word_probs}


def normalised_correct_probability(p_correct: float, p_incorrect: float) -> float | None:
    """p(Correct) / (p(Correct) + p(Incorrect)); None when undefined (both 0 or not finite)."""
    total = p_correct + p_incorrect
    if not math.isfinite(total) or total <= 0.0:
        return None
    return p_correct / total


@register
class MCVerifier(Verifier):
    name = "mc"
    default_score = 0.5

    def __init__(self, sampler: Any = None, *, word_probs: str = "first_token", **options: Any) -> None:
        super().__init__(sampler, **options)
        if word_probs not in WORD_PROBS:
            raise ValueError(f"word_probs must be one of {WORD_PROBS}, got {word_probs!r}")
        self.word_probs = word_probs

    def _sequence_probs(self, prompts: list[str], sequences: list[tuple[int, ...]]
                        ) -> tuple[list[list[float]], int]:
        """p(sequence | prompt) for every prompt and sequence (chain rule over the tokens), and how
        many prompts had to be cut to fit the verifier's context."""
        prefixes = sorted({seq[:j] for seq in sequences for j in range(len(seq))})
        next_ids = {p: sorted({seq[len(p)] for seq in sequences if seq[:len(p)] == p and len(seq) > len(p)})
                    for p in prefixes}
        tok = self.tokenizer
        encoded = [list(tok(p)["input_ids"]) for p in prompts]  # as the sampler encodes text prompts
        # A prompt longer than the context keeps its last tokens (the response and the question asked).
        limit = getattr(self.sampler, "max_model_len", None)
        n_cut = 0
        if isinstance(limit, int):
            room = limit - 1 - max(len(p) for p in prefixes)
            n_cut = sum(len(ids) > room for ids in encoded)
            encoded = [ids[-room:] if len(ids) > room else ids for ids in encoded]
        rows = [ids + list(prefix) for ids in encoded for prefix in prefixes]
        cands = [next_ids[prefix] for _ in encoded for prefix in prefixes]
        probs: list[Sequence[float]] = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start:start + self.batch_size]
            out = self.sampler.next_token_probs(chunk, cands[start:start + self.batch_size])
            if len(out) != len(chunk):
                raise RuntimeError(f"next_token_probs returned {len(out)} rows for {len(chunk)} prompts")
            probs.extend(out)
        result = []
        for k in range(len(prompts)):
            table = {}
            for j, prefix in enumerate(prefixes):
                table[prefix] = dict(zip(next_ids[prefix], (float(x) for x in probs[k * len(prefixes) + j])))
            result.append([math.prod(table[seq[:j]][seq[j]] for j in range(len(seq))) for seq in sequences])
        return result, n_cut

    def score(self, task: Any, examples: Sequence[Any], responses_per_example: Sequence[Sequence[str]]
              ) -> VerificationResult:
        check_responses(examples, responses_per_example)
        if self.tokenizer is None:
            raise ValueError("MC verification needs the verifier sampler's tokenizer (sampler.tokenizer)")
        groups = candidate_groups(self.tokenizer, self.word_probs)
        positive, negative = list(groups["positive"].values()), list(groups["negative"].values())
        family = self.family(task)
        prompts, where = [], []
        for q, (example, responses) in enumerate(zip(examples, responses_per_example)):
            problem = problem_text(task, example)
            for i, response in enumerate(responses):
                prompts.append(build_prompt("mc", family, problem, [response], self.tokenizer, self.shots))
                where.append((q, i))
        probs, n_cut = self._sequence_probs(prompts, positive + negative) if prompts else ([], 0)
        scores = [[0.0] * len(r) for r in responses_per_example]
        failed = [[False] * len(r) for r in responses_per_example]
        raw = [[""] * len(r) for r in responses_per_example]
        n_failed = 0
        for (q, i), row in zip(where, probs):
            p_pos = float(sum(row[:len(positive)]))
            p_neg = float(sum(row[len(positive):]))
            value = normalised_correct_probability(p_pos, p_neg)
            if value is None:
                n_failed += 1
                failed[q][i] = True
                value = self.default_score
            scores[q][i] = float(value)
            raw[q][i] = f"p(Correct)={p_pos:.6g} p(Incorrect)={p_neg:.6g}"
        candidates = {k: ({t: list(s) for t, s in v.items()} if isinstance(v, dict) else v)
                      for k, v in groups.items()}
        info = {"truncated_prompts": n_cut, "candidates": candidates}
        return VerificationResult(
            method=self.name, scores=scores, failed=failed, raw=raw, n_judgements=len(prompts),
            n_failed=n_failed, default=self.default_score, info=info,
        )
