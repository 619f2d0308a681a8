"""Verifiers of paper B with a scripted fake sampler: parsing, MC normalisation, tournaments, filters."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest

from selftrain.metrics import generation_verification_gap
from selftrain.tasks import Example, get_task
from selftrain.verify import (
    FAMILIES,
    bracket_rounds,
    build_prompt,
    candidate_groups,
    first_round,
    get_verifier,
    keep_masks,
    parse_binary_verdict,
    parse_filter,
    parse_preference,
    parse_score,
    verifier_names,
)
from selftrain.verify.analysis import cot_score_histogram, gap_results, method_correlations

# --- a scripted sampler ---------------------------------------------------------------------------


class WordTokenizer:
    """Splits on words; "Incorrect" / " Incorrect" start with the piece "In" (a multi-token word)."""

    chat_template = None

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def _id(self, piece: str) -> int:
        return self.vocab.setdefault(piece, len(self.vocab))

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text)}

    def decode(self, ids: list[int]) -> str:
        inverse = {v: k for k, v in self.vocab.items()}
        return "".join(inverse[i] for i in ids)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        pieces = []
        for m in re.finditer(r"\s*\S+|\s+$", text):  # lossless: decode(encode(t)) == t
            word = m.group(0)
            if word.strip().lower() == "incorrect":  # split like a BPE would: "In" + "correct"
                head = word[: len(word) - len("correct")]
                pieces += [head, word[len(head):]]
            else:
                pieces.append(word)
        return [self._id(p) for p in pieces]


@dataclass
class FakeCompletion:
    text: str
    token_ids: list[int]
    finish_reason: str = "stop"
    logprobs: Any = None


class ScriptedSampler:
    """Answers from rules: `reply(prompt) -> text` for generate, `probs(prompt) -> {piece: p}` for MC."""

    def __init__(self, reply: Any = None, probs: Any = None) -> None:
        self.tokenizer = WordTokenizer()
        self.reply = reply or (lambda prompt: "")
        self.probs = probs or (lambda prompt: {})
        self.generate_calls: list[list[str]] = []

    def generate(self, prompts, n=1, temperature=0.0, top_p=1.0, max_new_tokens=512, stop=None, seed=0,
                 logprobs=False, truncate_prompts=False):
        self.generate_calls.append(list(prompts))
        return [[FakeCompletion(self.reply(p), []) for _ in range(n)] for p in prompts]

    def next_token_probs(self, prompts, candidates):
        out = []
        inverse = {v: k for k, v in self.tokenizer.vocab.items()}
        per_prompt = bool(candidates) and all(isinstance(c, list) for c in candidates)
        for k, p in enumerate(prompts):
            table = self.probs(p if isinstance(p, str) else self.tokenizer.decode(p))
            row = []
            for c in (candidates[k] if per_prompt else candidates):
                piece = inverse[c] if isinstance(c, int) else inverse[self.tokenizer.encode(c)[0]]
                row.append(table.get(piece, 0.0))
            out.append(row)
        return out


def last_solution(prompt: str) -> str:
    """The response being judged (after the last 'Attempted solution:')."""
    return prompt.rsplit("Attempted solution:\n", 1)[1].split("\nAnswer:", 1)[0]


def arith_examples(k: int = 3) -> tuple[Any, list[Example]]:
    task = get_task("arith")
    return task, task.load("test", limit=k)


# --- parsing -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("The steps are fine.\nCorrectness: <correct>", True),
    ("Correctness: <incorrect>", False),
    ('End with "Verdict: correct" or "Verdict: incorrect".\nStep 2 is wrong.\nVerdict: incorrect', False),
    ("**Correct**", True),
    ("Verdict: not correct", False),
    ("The final answer isn't correct.", False),
    ("Row 1 - Correct\nRow 2 - Correct\nTherefore, the response is: Incorrect", False),
    ("Verdict:\n\ncorrect", True),
    ("It looks correct... no wait, it is wrong.", False),
    ("incorrect", False),  # "correct" inside "incorrect" is not a second verdict
    ("Correctness is what we check here.", None),
    ("Correct or Incorrect?", None),
    ("", None),
])
def test_binary_verdict_parsing(text: str, expected: bool | None) -> None:
    assert parse_binary_verdict(text) is expected


@pytest.mark.parametrize("text, expected", [
    ("Score: 7/10", 7.0),
    ("**8**", 8.0),
    ("I'd give it an 8 out of 10.", 8.0),
    ("**Score:** 9", 9.0),
    ("Score: 3\nOn reflection the last step is fine. Score: 6", 6.0),  # the last score wins
    ("Rating - 10", 10.0),
    ("The total is 48 apples, 12 per box.", None),  # numbers of the reasoning are not scores
    ("Score: <score>", None),  # an echoed template
    ("Score: 85", None),  # out of range
    ("Score: 0", None),
])
def test_score_parsing(text: str, expected: float | None) -> None:
    assert parse_score(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Preferred: A", "A"),
    ("Preferred solution: <B>", "B"),
    ('End with the line "Preferred: A" or the line "Preferred: B".\nB is tidier. Preferred: B', "B"),
    ("I prefer a shorter proof, so Solution A is better.", "A"),  # the article "a" is not a verdict
    ("The winner is B.", "B"),
    ("Solution A computes 5 and Solution B computes 6.", None),
])
def test_preference_parsing(text: str, expected: str | None) -> None:
    assert parse_preference(text) == expected


# --- prompts -----------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["mc", "cot_binary", "cot_score", "tournament"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_prompts_zero_and_four_shot(method: str, family: str) -> None:
    fam = FAMILIES[family]
    responses = ["R1", "R2"] if method == "tournament" else ["R1"]
    zero = build_prompt(method, fam, "PROBLEM", responses, None, 0)
    four = build_prompt(method, fam, "PROBLEM", responses, None, 4)
    assert zero.endswith("Answer:\n") and "PROBLEM" in zero and fam.criteria[0] in zero
    assert four.endswith(zero[zero.index("Question: "):])  # same question after the exemplars
    assert four.count("Question: ") == 5
    with pytest.raises(ValueError, match="verify shots"):
        build_prompt(method, fam, "P", responses, None, 5)


def test_exemplars_balance_verdicts_and_positions() -> None:
    four = build_prompt("cot_binary", FAMILIES["gsm8k"], "P", ["R"], None, 4)
    assert four.count("\nVerdict: correct\n\n") == 2 and four.count("\nVerdict: incorrect\n\n") == 2
    four = build_prompt("tournament", FAMILIES["gsm8k"], "P", ["R", "S"], None, 4)
    assert four.count("\nPreferred: A\n\n") == 2 and four.count("\nPreferred: B\n\n") == 2


def _sudoku_ok(puzzle: str, answer: str) -> bool:
    givens = [c for c in puzzle.split(":", 1)[1].split()]
    grid = re.search(r"The answer is ([\d ]+)\.", answer)
    if grid is None:
        return False
    rows = [[int(c) for c in r] for r in grid.group(1).split()]
    if [len(r) for r in rows] != [4, 4, 4, 4]:
        return False
    flat = [c for r in rows for c in r]
    if any(g != "." and int(g) != v for g, v in zip(givens, flat)):
        return False
    units = rows + [list(c) for c in zip(*rows)]
    units += [[rows[r + a][c + b] for a in (0, 1) for b in (0, 1)] for r in (0, 2) for c in (0, 2)]
    return all(sorted(u) == [1, 2, 3, 4] for u in units)


def test_sudoku_exemplars_are_right_and_wrong_as_labelled() -> None:
    for ex in FAMILIES["sudoku"].exemplars:
        assert _sudoku_ok(ex.question, ex.good), ex.question
        assert not _sudoku_ok(ex.question, ex.bad), ex.question


def test_prompt_uses_chat_template_when_present() -> None:
    class ChatTok:
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
            return "|".join(f"{m['role']}:{m['content'][:5]}" for m in messages) + "|assistant:"

    text = build_prompt("mc", FAMILIES["arith"], "P", ["R"], ChatTok(), 2)
    assert text.count("user:") == 3 and text.count("assistant:") == 3


# --- MC ----------------------------------------------------------------------------------------

def test_mc_candidate_groups_dedupe_and_keep_sides_apart() -> None:
    tok = WordTokenizer()
    groups = candidate_groups(tok)
    first = [s for side in ("positive", "negative") for s in groups[side].values()]
    assert all(len(s) == 1 for s in first) and len(set(first)) == len(first)  # each token counted once
    assert "Incorrect" in groups["multi_token"] and groups["ambiguous"] == []
    full = candidate_groups(tok, "full")
    incorrect = full["negative"]["Incorrect"]
    assert incorrect == tuple(tok.encode("Incorrect")) and len(incorrect) == 2


def test_mc_full_word_probabilities_chain_the_tokens() -> None:
    task, examples = arith_examples(1)

    def probs(text: str) -> dict[str, float]:
        if text.endswith("In"):  # after "In": "correct" completes the word half of the time
            return {"correct": 0.5}
        return {"Correct": 0.3, "In": 0.4}

    sampler = ScriptedSampler(probs=probs)
    first = get_verifier("mc", sampler).score(task, examples, [["x"]])
    full = get_verifier("mc", sampler, word_probs="full").score(task, examples, [["x"]])
    assert first.scores[0][0] == pytest.approx(0.3 / 0.7)
    assert full.scores[0][0] == pytest.approx(0.3 / (0.3 + 0.4 * 0.5))
    with pytest.raises(ValueError, match="word_probs"):
        get_verifier("mc", sampler, word_probs="max")


def test_mc_probabilities_are_normalised_over_the_two_answers() -> None:
    task, examples = arith_examples(2)
    table = {"Correct": 0.30, " Correct": 0.10, "correct": 0.05, "In": 0.20, " in": 0.05, "the": 0.3}
    sampler = ScriptedSampler(probs=lambda prompt: table)
    result = get_verifier("mc", sampler).score(task, examples, [["a", "b"], ["c"]])
    expected = (0.30 + 0.10 + 0.05) / (0.30 + 0.10 + 0.05 + 0.20 + 0.05)
    assert result.scores == [[pytest.approx(expected)] * 2, [pytest.approx(expected)]]
    p_c = float(result.raw[0][0].split()[0].split("=")[1])
    p_i = float(result.raw[0][0].split()[1].split("=")[1])
    assert result.scores[0][0] + p_i / (p_c + p_i) == pytest.approx(1.0)
    assert result.failure_rate == 0.0


def test_mc_reads_each_response_and_flags_undefined_mass() -> None:
    task, examples = arith_examples(1)
    sampler = ScriptedSampler(probs=lambda p: {"Correct": 0.9, "In": 0.1} if "GOOD" in last_solution(p)
                              else ({} if "EMPTY" in last_solution(p) else {"Correct": 0.2, "In": 0.6}))
    result = get_verifier("mc", sampler).score(task, examples, [["GOOD", "BAD", "EMPTY"]])
    assert result.scores[0][:2] == [pytest.approx(0.9), pytest.approx(0.25)]
    assert result.scores[0][2] == 0.5 and result.failed[0] == [False, False, True]
    assert result.n_failed == 1 and result.failure_rate == pytest.approx(1 / 3)


# --- CoT ---------------------------------------------------------------------------------------

def test_cot_binary_and_score_parse_and_default_on_failure() -> None:
    task, examples = arith_examples(2)
    replies = {"R0": "Fine.\nVerdict: correct\nScore: 9", "R1": "Verdict: incorrect\nScore: 2/10",
               "R2": "hmm"}
    sampler = ScriptedSampler(reply=lambda p: replies[last_solution(p).strip()])
    responses = [["R0", "R1"], ["R2"]]
    binary = get_verifier("cot_binary", sampler, shots=2).score(task, examples, responses)
    assert binary.scores == [[1.0, 0.0], [0.0]] and binary.failed == [[False, False], [True]]
    assert binary.failure_rate == pytest.approx(1 / 3) and binary.raw[1][0] == "hmm"
    score = get_verifier("cot_score", sampler).score(task, examples, responses)
    assert score.scores == [[9.0, 2.0], [1.0]] and score.n_failed == 1 and score.default == 1.0
    # one sampled verification per response, in one batch
    assert [len(c) for c in sampler.generate_calls] == [3, 3]


def test_gold_verifier_is_the_task_grader() -> None:
    task, examples = arith_examples(1)
    right = f"The answer is {examples[0].answer}."
    result = get_verifier("gold").score(task, examples, [[right, "The answer is -1."]])
    assert result.scores == [[1.0, 0.0]]


def test_registry() -> None:
    assert verifier_names() == ["cot_binary", "cot_score", "gold", "mc", "tournament"]
    with pytest.raises(ValueError, match="unknown verification method"):
        get_verifier("vote", ScriptedSampler())
    with pytest.raises(ValueError, match="needs a sampler"):
        get_verifier("mc")


# --- tournament --------------------------------------------------------------------------------

def _strength_judge(first_bias: bool = False):
    """Prefers the response with the larger number 'Rk'; with first_bias always says A."""
    def reply(prompt: str) -> str:
        body = prompt.rsplit("Solution A:\n", 1)[1]
        a = int(body.split("\n", 1)[0][1:])
        b = int(body.split("Solution B:\n", 1)[1].split("\n", 1)[0][1:])
        if first_bias:
            return "Preferred: A"
        return f"Preferred: {'A' if a > b else 'B'}"
    return reply


def test_bracket_shapes() -> None:
    assert [bracket_rounds(n) for n in (1, 2, 3, 4, 5, 8, 9, 128)] == [0, 1, 2, 2, 3, 3, 4, 7]
    byes, matches = first_round([4, 0, 5, 1, 3, 2])  # 6 entries in a bracket of 8: 2 byes, 2 matches
    assert byes == [4, 0] and matches == [(5, 1), (3, 2)]


def test_tournament_power_of_two_keeps_the_best_per_round() -> None:
    task, examples = arith_examples(2)
    responses = [[f"R{k}" for k in range(8)], [f"R{k}" for k in (3, 1, 7, 5)]]
    sampler = ScriptedSampler(reply=_strength_judge())
    result = get_verifier("tournament", sampler, seed=3).score(task, examples, responses)
    # the strongest wins every round; after r rounds 2^(R-r) remain
    assert result.scores[0][7] == 3.0 and sorted(result.scores[0]) == [0, 0, 0, 0, 1, 1, 2, 3]
    assert result.scores[1][2] == 2.0 and sorted(result.scores[1]) == [0, 0, 1, 2]
    assert result.info["n_comparisons"] == 7 + 3 and result.n_judgements == 10
    masks = keep_masks(parse_filter("tournament:rounds=1"), {"tournament": result.scores})
    assert [sum(m) for m in masks] == [4, 2]
    # every round-1 winner beat the response it met, so it is the larger of its pair
    for c in result.info["comparisons"]:
        assert c["winner"] == max(c["a"], c["b"], key=lambda i: int(responses[c["question"]][i][1:]))
    # asking for more rounds than were played keeps the champion
    masks = keep_masks(parse_filter("tournament:rounds=5"), {"tournament": result.scores})
    assert masks[0] == [k == 7 for k in range(8)]


def test_tournament_non_power_of_two_uses_byes_and_caps_rounds() -> None:
    task, examples = arith_examples(1)
    responses = [[f"R{k}" for k in range(6)]]
    sampler = ScriptedSampler(reply=_strength_judge())
    result = get_verifier("tournament", sampler, seed=0).score(task, examples, responses)
    scores = result.scores[0]
    # bracket of 8: round 1 has 2 byes and 2 matches -> 4 left, then 2, then the champion
    assert result.info["rounds_played"] == [3] and result.info["n_comparisons"] == 5
    assert [sum(s >= r for s in scores) for r in (1, 2, 3)] == [4, 2, 1]
    assert scores[5] == 3.0
    capped = get_verifier("tournament", sampler, seed=0, rounds=1).score(task, examples, responses)
    assert capped.info["n_comparisons"] == 2 and sum(s >= 1 for s in capped.scores[0]) == 4
    single = get_verifier("tournament", sampler).score(task, examples, [["R0"]])
    assert single.scores == [[0.0]] and single.n_judgements == 0


def test_tournament_position_bias_and_seeded_pairing() -> None:
    task, examples = arith_examples(1)
    responses = [[f"R{k}" for k in range(8)]]
    biased = get_verifier("tournament", ScriptedSampler(reply=_strength_judge(first_bias=True)))
    assert biased.score(task, examples, responses).info["first_wins_rate"] == 1.0
    fair = get_verifier("tournament", ScriptedSampler(reply=_strength_judge()), seed=1).score(
        task, examples, responses)
    wins_a = sum(c["winner"] == c["a"] for c in fair.info["comparisons"])
    assert fair.info["first_wins_rate"] == pytest.approx(wins_a / 7)
    again = get_verifier("tournament", ScriptedSampler(reply=_strength_judge()), seed=1).score(
        task, examples, responses)
    assert again.info["comparisons"] == fair.info["comparisons"]
    other = get_verifier("tournament", ScriptedSampler(reply=_strength_judge()), seed=2).score(
        task, examples, responses)
    assert other.info["comparisons"] != fair.info["comparisons"]


def test_tournament_unreadable_comparisons_are_counted_not_raised() -> None:
    task, examples = arith_examples(1)
    result = get_verifier("tournament", ScriptedSampler(reply=lambda p: "no idea"), seed=0).score(
        task, examples, [[f"R{k}" for k in range(4)]])
    assert result.n_failed == 3 and result.failure_rate == 1.0
    assert result.info["first_wins_rate"] is None
    assert sorted(result.scores[0]) == [0, 0, 1, 2]  # coin flips still produce a bracket


# --- filters and the gap -----------------------------------------------------------------------

def test_filter_specs() -> None:
    spec = parse_filter("mc:top=0.8&cot_binary")
    assert spec.methods == ["mc", "cot_binary"] and spec.label() == "MC top 0.8 + CoT-B"
    assert parse_filter("cot_score:tau=8").label() == "CoT-S τ=8"
    assert parse_filter("tournament:rounds=5").label() == "To round 5"
    cases = (("mc", "needs a threshold"), ("mc:top=1.5", "quantile"), ("mc:rounds=2", "tournament"),
             ("tournament:tau=1", "rounds"), ("mc:tau=", "cannot read"))
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            parse_filter(bad)
    with pytest.raises(ValueError, match="not among the methods"):
        parse_filter("cot_score:tau=8", ["mc"])


def test_gap_wiring_by_hand() -> None:
    rewards = [[1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1]]
    scores = {
        "mc": [[0.9, 0.2, 0.4, 0.8], [0.1, 0.3, 0.2, 0.6], [0.5, 0.5, 0.9, 0.1]],
        "cot_binary": [[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]],
    }
    specs = [parse_filter(t) for t in ("mc:tau=0.8", "mc:top=0.5", "cot_binary", "mc:tau=0.8&cot_binary")]
    results = gap_results(rewards, scores, specs)
    # mc:tau=0.8 keeps [0, 3] -> acc 1 (q0, +0.5), nothing in q1 (gap 0), [2] -> acc 1 (q2, saturated)
    assert results["mc:tau=0.8"]["gap"] == pytest.approx(0.5 / 3)
    assert results["mc:tau=0.8"]["n_empty"] == 1 and results["mc:tau=0.8"]["n_saturated"] == 1
    assert results["mc:tau=0.8"]["relative_gap"] == pytest.approx((0.5 / 0.5 + 0.0) / 2)
    # CoT-B keeps [0, 1] in q0 (acc 0.5 = base), nothing in q1, all in q2
    assert results["cot_binary"]["gap"] == pytest.approx(0.0)
    # the AND ensemble keeps only response 0 of q0
    assert results["mc:tau=0.8&cot_binary"]["per_question_gap"] == [pytest.approx(0.5), 0.0, 0.0]
    direct = generation_verification_gap(rewards, keep_masks(specs[1], scores))
    assert results["mc:top=0.5"]["gap"] == direct["gap"]
    corr = method_correlations(scores)
    assert set(corr) == {"cot_binary~mc"} and corr["cot_binary~mc"] is not None


def test_cot_score_histogram_mode_skips_unparsed() -> None:
    hist = cot_score_histogram([[10, 10, 1], [8, 1]], [[False, False, True], [False, True]])
    assert hist["counts"] == [0, 0, 0, 0, 0, 0, 0, 1, 0, 2] and hist["mode"] == 10 and hist["n_unparsed"] == 2


# --- the real sampler --------------------------------------------------------------------------

def test_mc_with_the_real_sampler_both_word_modes() -> None:
    """tiny-random through selftrain.sampler: token-id prompts and per-prompt candidates work, and
    the first-token score equals p(Correct) / (p(Correct) + p(Incorrect)) recomputed by hand."""
    from selftrain.sampler import Sampler

    sampler = Sampler("tiny-random", kv_cache_tokens=4096, max_num_seqs=8)
    task, examples = arith_examples(1)
    responses = [["The answer is 3.", "The answer is 4."]]
    first = get_verifier("mc", sampler).score(task, examples, responses)
    full = get_verifier("mc", sampler, word_probs="full").score(task, examples, responses)
    groups = candidate_groups(sampler.tokenizer)
    pos = [s[0] for s in groups["positive"].values()]
    neg = [s[0] for s in groups["negative"].values()]
    prompt = build_prompt("mc", FAMILIES["arith"], task.user_message(examples[0]), [responses[0][0]],
                          sampler.tokenizer, 0)
    row = sampler.next_token_probs([prompt], pos + neg)[0]
    by_hand = sum(row[:len(pos)]) / sum(row)
    assert first.scores[0][0] == pytest.approx(by_hand, rel=1e-5)
    for result in (first, full):
        assert all(0.0 < s < 1.0 for s in result.scores[0]) and result.n_failed == 0
    assert full.scores[0][0] != pytest.approx(first.scores[0][0], rel=1e-6)  # the chained words differ
