"""Verification prompts: one instruction per method, task-specific criteria, worked exemplars.

Written for this project after the criteria paper B lists for each method (its appendix G):
- every method judges the FINAL answer as the task's instructions ask for it to be written (a
  response without that answer line counts as wrong), and also checks the reasoning before it;
- CoT-Binary / CoT-Score / Tournament reason briefly (at most 50 words) and end with a fixed,
  machine-readable line: "Verdict: correct|incorrect", "Score: N" (1-10), "Preferred: A|B";
- MC answers with the single word Correct or Incorrect (its probabilities are read, nothing is
  generated);
- the tournament prefers a correct final answer, then a response that states its answer in the
  required form, then the sounder reasoning;
- the criteria are specific to GSM8K, MATH, Natural Questions (open), 4x4 Sudoku and the synthetic
  arithmetic task; other tasks (CommonsenseQA, MBPP, ...) get generic criteria.

k-shot prompts put k worked verifications first (at most 4 per family). Each exemplar question has
one right and one wrong response; MC / CoT exemplars alternate between them (right, wrong, right,
wrong) and tournament exemplars alternate which side holds the right one (A, B, A, B), so the
exemplars teach neither a verdict nor a position. With a chat template the exemplars become
user/assistant turns; without one the plain "Question: ... / Answer:" layout of the tasks is used
(selftrain.tasks.common.render_prompt, the one prompt renderer of the project).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from selftrain.tasks.common import render_prompt

METHOD_NAMES = ("mc", "cot_binary", "cot_score", "tournament")


@dataclass(frozen=True)
class Exemplar:
    """A question with a right and a wrong response and why each is right or wrong."""

    question: str
    good: str
    bad: str
    why_good: str
    why_bad: str


@dataclass(frozen=True)
class Family:
    """What a verifier of one kind of task is told to check."""

    name: str
    subject: str  # "math problem", "question", ... (used in the instructions)
    criteria: tuple[str, ...]
    exemplars: tuple[Exemplar, ...]


_MATH_FINAL = (
    'The final answer is the number written after "The answer is" on the last line. If that line '
    "is missing, the response is wrong whatever its working says."
)

GSM8K = Family(
    name="gsm8k",
    subject="math word problem",
    criteria=(
        _MATH_FINAL,
        "Recompute every step of the working yourself: quantities read from the problem, each "
        "arithmetic operation, and units (cents vs dollars, minutes vs hours).",
        "The judgement depends only on whether the final answer is right; still point out any flaw "
        "in the working.",
    ),
    exemplars=(
        Exemplar(
            "A shop sells pencils in boxes of 12. Lena buys 5 boxes and gives away 17 pencils. How many "
            "pencils does she keep?",
            "5 boxes hold 5 * 12 = 60 pencils.\nShe keeps 60 - 17 = 43 pencils.\nThe answer is 43.",
            "5 boxes hold 5 * 12 = 50 pencils.\nShe keeps 50 - 17 = 33 pencils.\nThe answer is 33.",
            "5 * 12 = 60 and 60 - 17 = 43; both steps and the stated answer are right.",
            "5 * 12 is 60, not 50, so the final answer 33 is wrong (it should be 43).",
        ),
        Exemplar(
            "A bus ride costs $3 and a train ride costs twice as much. Omar takes 4 bus rides and 2 "
            "train rides. How much does he spend?",
            "A train ride costs 2 * 3 = $6.\nBus: 4 * 3 = $12. Train: 2 * 6 = $12.\nTotal: 12 + 12 = $24.\n"
            "The answer is 24.",
            "A train ride costs 2 * 3 = $6.\nBus: 4 * 3 = $12. Train: 2 * 6 = $12.\n"
            "So he spends $24 in total.",
            "Train rides cost $6; 12 + 12 = 24, and the answer line states 24.",
            "The working reaches 24, but there is no \"The answer is\" line, so the response does not "
            "state a final answer and counts as wrong.",
        ),
        Exemplar(
            "A tank holds 200 liters. It is 30% full. How many liters are needed to fill it?",
            "It holds 0.30 * 200 = 60 liters now.\nIt needs 200 - 60 = 140 liters.\nThe answer is 140.",
            "It holds 0.30 * 200 = 60 liters now.\nThe answer is 60.",
            "30% of 200 is 60 and 200 - 60 = 140, which is what the question asks for.",
            "60 liters is what the tank already holds; the question asks for the missing 140 liters.",
        ),
        Exemplar(
            "Sam runs 3 km every weekday and 5 km on each weekend day. How far does he run in a week?",
            "Weekdays: 5 * 3 = 15 km. Weekend: 2 * 5 = 10 km.\nTotal: 15 + 10 = 25 km.\nThe answer is 25.",
            "Weekdays: 7 * 3 = 21 km. Weekend: 2 * 5 = 10 km.\nTotal: 21 + 10 = 31 km.\nThe answer is 31.",
            "There are 5 weekdays and 2 weekend days; 15 + 10 = 25 km is right.",
            "A week has 5 weekdays, not 7; the right total is 25 km, so 31 is wrong.",
        ),
    ),
)

MATH = Family(
    name="math",
    subject="math problem",
    criteria=(
        "The final answer is the expression inside the last \\boxed{...} (or after \"The answer "
        "is\"). If there is no final answer, the response is wrong.",
        "Equivalent forms are equally right (1/2 = 0.5 = \\frac{1}{2}; 2\\sqrt{2} = \\sqrt{8}), but "
        "the answer must be fully what is asked (all solutions, the requested units or form).",
        "Check the derivation step by step: algebra, case analysis, and that the answer answers the "
        "question asked (not an intermediate quantity).",
        "The judgement depends only on the final answer; mention any flaw in the derivation.",
    ),
    exemplars=(
        Exemplar(
            "What is the product of the roots of $x^2 + 3x - 10 = 0$?",
            "By Vieta's formulas the product of the roots is $c/a = -10$.\nThe answer is $\\boxed{-10}$.",
            "The equation factors as $(x+5)(x-2)=0$, so the roots are $-5$ and $2$, and their product "
            "is $-5 + 2 = -3$.\nThe answer is $\\boxed{-3}$.",
            "Vieta gives c/a = -10; the roots -5 and 2 confirm it.",
            "The roots -5 and 2 are right, but it added them; their product is -10.",
        ),
        Exemplar(
            "Simplify $\\sqrt{50}$.",
            "$\\sqrt{50} = \\sqrt{25 \\cdot 2} = 5\\sqrt{2}$.\nThe answer is $\\boxed{5\\sqrt{2}}$.",
            "$\\sqrt{50} = \\sqrt{10 \\cdot 5} = 2\\sqrt{5}$.\nThe answer is $\\boxed{2\\sqrt{5}}$.",
            "50 = 25 * 2, so the simplest form is 5 sqrt(2).",
            "sqrt(10 * 5) is not 2 sqrt(5) (that is sqrt(20)); the answer should be 5 sqrt(2).",
        ),
        Exemplar(
            "How many positive divisors does 36 have?",
            "$36 = 2^2 \\cdot 3^2$, so it has $(2+1)(2+1) = 9$ divisors.\nThe answer is $\\boxed{9}$.",
            "The divisors are 1, 2, 3, 4, 6, 9, 12, 18, 36.\nThere are 8 of them.\n"
            "The answer is $\\boxed{8}$.",
            "From the prime factorization, (2+1)(2+1) = 9.",
            "The list has nine numbers but it counted 8; the right count is 9.",
        ),
        Exemplar(
            "Solve for $x$: $2x - 7 = 11$.",
            "Add 7: $2x = 18$. Divide by 2: $x = 9$.\nThe answer is $\\boxed{9}$.",
            "Subtract 7: $2x = 4$, so $x = 2$.\nThe answer is $\\boxed{2}$.",
            "2 * 9 - 7 = 11, so x = 9 is right.",
            "Moving -7 across means adding 7 (2x = 18); x = 2 gives 2 * 2 - 7 = -3, not 11.",
        ),
    ),
)

ARITH = Family(
    name="arith",
    subject="arithmetic word problem",
    criteria=(
        _MATH_FINAL,
        "Redo each calculation of the story yourself, in the order the story tells it, and check that "
        "each line uses the right numbers and operation (a third of, twice as many, shared equally).",
        "The judgement depends only on whether the final number is right.",
    ),
    exemplars=(
        Exemplar(
            "Tom has 17 marbles. He finds another 26 marbles. How many marbles does Tom have now?",
            "Tom starts with 17. He finds 26: 17 + 26 = 43.\nThe answer is 43.",
            "Tom starts with 17. He finds 26: 17 + 26 = 33.\nThe answer is 33.",
            "17 + 26 = 43, stated on the answer line.", "17 + 26 is 43, not 33 (the carry was dropped).",
        ),
        Exemplar(
            "Mia has 8 boxes with 7 stickers in each box. She gives away 5 stickers. How many stickers "
            "does Mia have now?",
            "8 boxes of 7: 8 * 7 = 56.\nShe gives away 5: 56 - 5 = 51.\nThe answer is 51.",
            "8 boxes of 7: 8 + 7 = 15.\nShe gives away 5: 15 - 5 = 10.\nThe answer is 10.",
            "8 * 7 = 56 and 56 - 5 = 51.",
            "8 boxes of 7 stickers is 8 * 7 = 56, not 8 + 7; the answer is 51.",
        ),
        Exemplar(
            "Ben has $30. He spends a third of it on a book. How many dollars does Ben have now?",
            "A third of 30 is 30 / 3 = 10.\nHe has 30 - 10 = 20 left.\nThe answer is 20.",
            "A third of 30 is 30 / 3 = 10.\nThe answer is 10.",
            "He spends 10 of his 30 dollars and keeps 20.", "10 is what he spends; he has 30 - 10 = 20 left.",
        ),
        Exemplar(
            "There are 45 apples in Zoe's kitchen. She packs them equally into 9 bags and keeps one bag. "
            "How many apples does Zoe keep?",
            "45 / 9 = 5 apples per bag.\nShe keeps one bag: 5 apples.\nThe answer is 5.",
            "45 / 9 = 5 apples per bag, so she keeps 5 apples.",
            "Each bag holds 45 / 9 = 5, and the answer line states 5.",
            "The value 5 is right but no \"The answer is\" line states it, so it counts as wrong.",
        ),
    ),
)

NQ = Family(
    name="nq",
    subject="factual question",
    criteria=(
        'The final answer is the short phrase after "The answer is". If that line is missing, the '
        "response is wrong.",
        "It is right only if it names the correct entity, date, number or phrase for the question as "
        "asked (the right person, the right year, the right place), as a knowledgeable reference would.",
        "Several different candidate answers, or a hedge that never commits, count as wrong. A fluent "
        "explanation does not make a wrong fact right.",
    ),
    exemplars=(
        Exemplar(
            "who wrote the novel pride and prejudice",
            "The answer is Jane Austen.", "The answer is Charlotte Bronte.",
            "Pride and Prejudice (1813) is by Jane Austen.",
            "Charlotte Bronte wrote Jane Eyre; Pride and Prejudice is by Jane Austen.",
        ),
        Exemplar(
            "what is the capital city of australia",
            "The answer is Canberra.", "Australia's largest city is Sydney.\nThe answer is Sydney.",
            "Canberra is the capital.", "Sydney is the largest city, but the capital is Canberra.",
        ),
        Exemplar(
            "in which year did the first human land on the moon",
            "Apollo 11 landed in July 1969.\nThe answer is 1969.", "The answer is 1967 or 1969.",
            "Apollo 11 landed on 20 July 1969.", "It gives two years instead of committing to 1969.",
        ),
        Exemplar(
            "how many bones are in the adult human body",
            "The answer is 206.", "The answer is 212.",
            "An adult skeleton has 206 bones.", "The adult count is 206, not 212.",
        ),
    ),
)

def _sudoku_answer(grid: str) -> str:
    """A response in the sudoku4 task's format: the solved grid, then "The answer is R1 R2 R3 R4."."""
    rows = grid.split("\n")
    return "Solved grid:\n" + grid + "\nThe answer is " + " ".join(r.replace(" ", "") for r in rows) + "."


SUDOKU = Family(
    name="sudoku",
    subject="4x4 Sudoku puzzle",
    criteria=(
        'The final answer is the grid given after "The answer is" (four groups of four digits, one '
        "per row, top to bottom). A response without a complete 4x4 grid of the digits 1-4 is wrong.",
        "Every given digit of the puzzle stays in its cell ('.' marks an empty cell).",
        "Each row, each column and each of the four 2x2 boxes contains 1, 2, 3 and 4 exactly once. "
        "Check them one by one.",
    ),
    exemplars=(
        Exemplar(
            "Puzzle:\n. . . .\n1 3 . 4\n. 2 4 .\n. 1 . .",
            _sudoku_answer("2 4 1 3\n1 3 2 4\n3 2 4 1\n4 1 3 2"),
            _sudoku_answer("2 4 1 3\n1 3 2 4\n3 2 4 1\n4 1 2 3"),
            "All givens are kept and every row, column and 2x2 box holds 1-4 once.",
            "Row 4 is 4 1 2 3, so column 3 holds 2 twice and column 4 holds 3 twice.",
        ),
        Exemplar(
            "Puzzle:\n1 3 . .\n. . 3 .\n. 4 . .\n3 . 4 .",
            _sudoku_answer("1 3 2 4\n4 2 3 1\n2 4 1 3\n3 1 4 2"),
            _sudoku_answer("1 3 2 4\n4 2 3 1\n2 4 1 3\n3 1 2 4"),
            "The givens are in place and no row, column or box repeats a digit.",
            "Row 4 replaces the given 4 in column 3 by 2, and column 3 then holds 2 twice.",
        ),
        Exemplar(
            "Puzzle:\n. . . .\n. . 2 .\n4 1 3 .\n. 3 4 .",
            _sudoku_answer("3 2 1 4\n1 4 2 3\n4 1 3 2\n2 3 4 1"),
            "Solved grid:\n3 2 1 4\n1 4 2 3\n4 1 3 2\n2 3 4 .\nThe answer is 3214 1423 4132 234.",
            "Givens kept; every row, column and box is a permutation of 1-4.",
            "Row 4 still has an empty cell, so the grid is not a complete solution.",
        ),
        Exemplar(
            "Puzzle:\n. . . 1\n2 . 4 .\n3 2 . .\n1 . . .",
            _sudoku_answer("4 3 2 1\n2 1 4 3\n3 2 1 4\n1 4 3 2"),
            _sudoku_answer("4 3 2 1\n2 1 4 3\n3 2 4 1\n1 4 3 2"),
            "All givens kept; rows, columns and boxes each hold 1-4 once.",
            "Row 3 ends 4 1, so column 3 holds 4 twice and column 4 holds 1 twice.",
        ),
    ),
)

GENERIC = Family(
    name="generic",
    subject="problem",
    criteria=(
        "Find the response's final answer in the form the problem asks for (for example the line "
        "\"The answer is ...\", a choice letter, or a code block). A response that never gives it is "
        "wrong.",
        "Work out the right answer yourself and compare; for code, check that the function does what "
        "the task and its tests require.",
        "The judgement depends only on whether the final answer is right; mention flaws in the reasoning.",
    ),
    exemplars=(
        Exemplar(
            "Which object is most likely to be found in a kitchen? (A) lawnmower (B) frying pan "
            "(C) snowboard",
            "People cook in kitchens, and a frying pan is a cooking tool.\nThe answer is (B).",
            "A lawnmower is a common household tool.\nThe answer is (A).",
            "A frying pan belongs in a kitchen; (B) is right.",
            "Lawnmowers are kept in sheds or garages; the kitchen object is the frying pan (B).",
        ),
        Exemplar(
            "Write a Python function double(xs) that returns a list with every element of xs doubled.",
            "```python\ndef double(xs):\n    return [2 * x for x in xs]\n```",
            "```python\ndef double(xs):\n    return xs * 2\n```",
            "It multiplies each element by 2 and returns a new list.",
            "xs * 2 repeats the list ([1, 2] becomes [1, 2, 1, 2]) instead of doubling each element.",
        ),
        Exemplar(
            "What is 15% of 80?", "0.15 * 80 = 12.\nThe answer is 12.",
            "80 / 15 = 5.33.\nThe answer is 5.33.",
            "15% of 80 is 0.15 * 80 = 12.", "It divided by 15 instead of taking 15 percent; the value is 12.",
        ),
        Exemplar(
            "Which planet is closest to the sun?", "The answer is Mercury.", "The answer is Venus.",
            "Mercury has the smallest orbit.", "Venus is second; Mercury is closest.",
        ),
    ),
)

FAMILIES = {f.name: f for f in (GSM8K, MATH, ARITH, NQ, SUDOKU, GENERIC)}
# Task name -> criteria family; any other task uses "generic".
TASK_FAMILY = {"gsm8k": "gsm8k", "math": "math", "arith": "arith", "nq_open": "nq", "sudoku4": "sudoku"}
MAX_SHOTS = 4


def family_for(task_name: str, override: str | None = None) -> Family:
    """The criteria family of a task (or the one named by `override`)."""
    name = override or TASK_FAMILY.get(task_name, "generic")
    if name not in FAMILIES:
        raise ValueError(f"unknown verification prompt family {name!r}; choose from {', '.join(FAMILIES)}")
    return FAMILIES[name]


def _criteria_block(family: Family) -> str:
    return "\n".join(f"- {c}" for c in family.criteria)


def instruction(method: str, family: Family) -> str:
    """What the verifier is asked to do, with the family's criteria (shown once per prompt)."""
    criteria = _criteria_block(family)
    if method == "mc":
        return (
            f"Judge whether the attempted solution of the {family.subject} is right.\n"
            f"Criteria:\n{criteria}\nReply with one word, Correct or Incorrect."
        )
    if method == "cot_binary":
        return (
            f"Review the {family.subject} and the attempted solution, and decide whether the solution is "
            f"correct.\nCriteria:\n{criteria}\nJustify your judgement in at most 50 words, then end with "
            'the line "Verdict: correct" or the line "Verdict: incorrect". Be a strict checker.'
        )
    if method == "cot_score":
        return (
            f"Review the {family.subject} and the attempted solution, and rate the solution from 1 to 10.\n"
            f"Criteria:\n{criteria}\n"
            "- Give 1 when the final answer is wrong or missing, and 10 when the final answer and all of "
            "the reasoning are right; use the scores in between for a right answer with flawed reasoning.\n"
            'Justify your score in at most 50 words, then end with the line "Score: N" where N is a whole '
            "number from 1 to 10. Be a strict checker."
        )
    if method == "tournament":
        return (
            f"Compare two attempted solutions, A and B, of the {family.subject} and pick the better one.\n"
            f"Criteria:\n{criteria}\n"
            "- Always prefer a solution whose final answer is right over one whose final answer is wrong.\n"
            "- Prefer a solution that states its final answer in the required form over one that does not.\n"
            "- If both are right or both are wrong, prefer the one with the sounder reasoning.\n"
            'Justify your choice in at most 50 words, then end with the line "Preferred: A" or the line '
            '"Preferred: B". Be a strict checker.'
        )
    raise ValueError(f"unknown verification method {method!r}; choose from {', '.join(METHOD_NAMES)}")


def body(method: str, problem: str, responses: tuple[str, ...] | list[str]) -> str:
    """The item to judge: the problem and the response (two for the tournament)."""
    if method == "tournament":
        if len(responses) != 2:
            raise ValueError(f"a tournament prompt compares 2 responses, got {len(responses)}")
        return f"Problem:\n{problem}\n\nSolution A:\n{responses[0]}\n\nSolution B:\n{responses[1]}"
    if len(responses) != 1:
        raise ValueError(f"a {method} prompt judges 1 response, got {len(responses)}")
    return f"Problem:\n{problem}\n\nAttempted solution:\n{responses[0]}"


def _exemplar_turns(family: Family, method: str, shots: int) -> list[tuple[str, str]]:
    if not isinstance(shots, int) or isinstance(shots, bool) or not 0 <= shots <= len(family.exemplars):
        raise ValueError(
            f"verify shots must be an integer from 0 to {len(family.exemplars)} "
            f"(the {family.name!r} family has {len(family.exemplars)} exemplars), got {shots!r}"
        )
    turns = []
    for i, ex in enumerate(family.exemplars[:shots]):
        right = i % 2 == 0
        response, why = (ex.good, ex.why_good) if right else (ex.bad, ex.why_bad)
        if method == "mc":
            turns.append((body(method, ex.question, [response]), "Correct" if right else "Incorrect"))
        elif method == "cot_binary":
            verdict = "correct" if right else "incorrect"
            turns.append((body(method, ex.question, [response]), f"{why}\nVerdict: {verdict}"))
        elif method == "cot_score":
            turns.append((body(method, ex.question, [response]), f"{why}\nScore: {10 if right else 1}"))
        elif method == "tournament":
            a, b = (ex.good, ex.bad) if right else (ex.bad, ex.good)
            winner, other = ("A", "B") if right else ("B", "A")
            reason = f"Solution {winner}: {ex.why_good} Solution {other}: {ex.why_bad}"
            turns.append((body(method, ex.question, [a, b]), f"{reason}\nPreferred: {winner}"))
        else:
            raise ValueError(f"unknown verification method {method!r}; choose from {', '.join(METHOD_NAMES)}")
    return turns


def build_prompt(
    method: str,
    family: Family,
    problem: str,
    responses: tuple[str, ...] | list[str],
    tokenizer: Any = None,
    shots: int = 0,
) -> str:
    """The full verifier prompt for `method` (one response, or two for the tournament).

    Chat template when `tokenizer` has one, else the plain layout; ends where the verifier's answer
    starts (MC reads the next token there).
    """
    return render_prompt(instruction(method, family), _exemplar_turns(family, method, shots),
                         body(method, problem, responses), tokenizer)
