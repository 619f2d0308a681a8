"""Generated multi-step arithmetic word problems: the embedded default task (works offline).

A problem tells a short story (a person with marbles, apples, money or farm animals) in which a
quantity changes `level` times by +, -, x or exact division; level = number of operations (1-5).
Everything is an integer and never negative. Generation is deterministic given the options.

Splits: `test` and `train` hold levels 1-3 in equal shares (option `levels`: the levels they cycle
through, e.g. [1] for the one-operation problems a 135M model solves often enough to learn from by
online RL); `ood` holds levels 1-5,
`ood_size_per_level` of each. The three splits share no question: `test` is generated first, then
`ood` skipping test questions, then `train` skipping both. Levels 1-2 keep every operand in 1-20 so
a small instruct model solves some of them; later levels allow larger numbers.
Grading is GSM8K's numeric grading (`common.extract_number_answer` / `numbers_equal`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from selftrain.tasks.base import Example, Task
from selftrain.tasks.common import check_shots, extract_number_answer, numbers_equal

INSTRUCTION = (
    "Solve this math word problem. Show the calculation for each step, then write the final answer "
    'on the last line as "The answer is N."'
)

NAMES = (
    ("Tom", "he"), ("Mia", "she"), ("Ben", "he"), ("Lily", "she"), ("Sam", "he"), ("Emma", "she"),
    ("Leo", "he"), ("Zoe", "she"), ("Omar", "he"), ("Nina", "she"), ("Ravi", "he"), ("Ana", "she"),
    ("Jack", "he"), ("Grace", "she"), ("Luis", "he"), ("Maya", "she"), ("Ken", "he"), ("Ivy", "she"),
    ("Noah", "he"), ("Sara", "she"), ("Eli", "he"), ("Rosa", "she"), ("Max", "he"), ("Yuki", "she"),
)

ADD, SUB, MUL, DIV = "+", "-", "*", "/"


@dataclass(frozen=True)
class Scenario:
    """A story frame. Templates are str.format patterns; each op template is (question sentence,
    solution clause). `{amt_k}` renders an amount with its unit ("5 apples" or "$5")."""

    objects: tuple[tuple[str, str], ...]  # (singular, plural); money uses ("dollar", "dollars")
    money: bool
    start: tuple[str, ...]
    groups: tuple[tuple[str, str], ...]  # a first multiplication: a groups of b
    ops: dict
    question: tuple[str, ...]


_COLLECT = Scenario(
    objects=(("marble", "marbles"), ("sticker", "stickers"), ("shell", "shells"), ("card", "cards"),
             ("stamp", "stamps"), ("button", "buttons")),
    money=False,
    start=("{Name} has {amt_a}.", "{Name} collects {plural} and has {amt_a}."),
    groups=(("{Name} has {a} boxes with {amt_b} in each box.", "{Name} has {a} boxes of {b}"),
            ("{Name} has {a} albums, and each album holds {amt_b}.", "{Name} has {a} albums of {b}")),
    ops={
        ADD: (("{Pron} finds another {amt_k}.", "{Pron} finds {k} more"),
              ("{Other} gives {obj} {amt_k}.", "{Other} gives {obj} {k} more"),
              ("{Pron} buys another {amt_k} at the shop.", "{Pron} buys {k} more")),
        SUB: (("{Pron} gives {amt_k} to {Other}.", "{Pron} gives away {k}"),
              ("{Pron} loses {amt_k}.", "{Pron} loses {k}"),
              ("{Pron} trades away {amt_k}.", "{Pron} trades away {k}")),
        MUL: (("Over the summer {pron} ends up with {k} times as many {plural} as {pron} had.",
               "{Pron} ends up with {k} times as many"),
              ("{Pos} collection then grows to {k} times its size.", "The collection grows {k} times")),
        DIV: (("{Pron} sorts the {plural} into {k} equal piles and gives away all the piles but one.",
               "{Pron} keeps one of {k} equal piles"),
              ("{Pron} shares the {plural} equally among {k} children, {self} included, and keeps "
               "{pos} share.", "{Pron} keeps one of {k} equal shares")),
    },
    question=("How many {plural} does {Name} have now?", "How many {plural} does {Name} have in the end?"),
)

_FOOD = Scenario(
    objects=(("apple", "apples"), ("cookie", "cookies"), ("muffin", "muffins"), ("orange", "oranges"),
             ("carrot", "carrots"), ("lemon", "lemons")),
    money=False,
    start=("{Name} has {amt_a} in a basket.", "There are {amt_a} in {Name}'s kitchen."),
    groups=(("{Name} has {a} bags with {amt_b} in each bag.", "{Name} has {a} bags of {b}"),
            ("{Name} buys {a} packs of {plural}, with {b} in each pack.", "{Name} buys {a} packs of {b}")),
    ops={
        ADD: (("{Pron} buys another {amt_k} at the market.", "{Pron} buys {k} more"),
              ("{Other} brings {obj} another {amt_k}.", "{Other} brings {k} more")),
        SUB: (("{Pron} eats {amt_k}.", "{Pron} eats {k}"),
              ("{Pron} gives {amt_k} to {Other}.", "{Pron} gives away {k}"),
              ("{Pron} uses {amt_k} to make a pie.", "{Pron} uses {k}")),
        MUL: (("After a trip to the farm {pron} has {k} times as many {plural} as before.",
               "{Pron} has {k} times as many"),),
        DIV: (("{Pron} packs the {plural} equally into {k} lunch boxes and gives away every box "
               "but one.", "{Pron} keeps one of {k} equal boxes"),),
    },
    question=("How many {plural} does {Name} have now?", "How many {plural} are left for {Name}?"),
)

_MONEY = Scenario(
    objects=(("dollar", "dollars"),),
    money=True,
    start=("{Name} has {amt_a} in {pos} wallet.", "{Name} has saved {amt_a}."),
    groups=(("{Name} has {a} envelopes with {amt_b} in each.", "{Name} has {a} envelopes of ${b}"),
            ("{Name} works {a} hours and earns {amt_b} per hour.", "{Name} works {a} hours at ${b}")),
    ops={
        ADD: (("{Pron} earns {amt_k} walking dogs.", "{Pron} earns ${k}"),
              ("{Other} pays {obj} {amt_k} for help in the garden.", "{Other} pays {obj} ${k}"),
              ("{Pron} finds {amt_k} in a coat pocket.", "{Pron} finds ${k}")),
        SUB: (("{Pron} spends {amt_k} on a book.", "{Pron} spends ${k}"),
              ("{Pron} pays {amt_k} for lunch.", "{Pron} pays ${k}"),
              ("{Pron} lends {amt_k} to {Other}.", "{Pron} lends ${k}")),
        MUL: (("By the end of the year {pos} money has grown to {k} times as much.",
               "The money grows to {k} times as much"),),
        DIV: (("{Pron} splits the money equally among {k} people, {self} included, and keeps {pos} "
               "share.", "{Pron} keeps one of {k} equal shares"),
              ("{Pron} puts the money into {k} jars with the same amount in each and takes one jar "
               "to the fair.", "{Pron} takes one of {k} equal jars")),
    },
    question=("How many dollars does {Name} have now?", "How much money, in dollars, does {Name} have now?"),
)

_FARM = Scenario(
    objects=(("chicken", "chickens"), ("goat", "goats"), ("duck", "ducks"), ("cow", "cows"),
             ("rabbit", "rabbits")),
    money=False,
    start=("A farmer named {Name} has {amt_a}.", "{Name} keeps {amt_a} on a farm."),
    groups=(("{Name} has {a} pens with {amt_b} in each pen.", "{Name} has {a} pens of {b}"),),
    ops={
        ADD: (("{Pron} buys another {amt_k} at the market.", "{Pron} buys {k} more"),
              ("{Other} sells {obj} another {amt_k}.", "{Other} sells {obj} {k} more")),
        SUB: (("{Pron} sells {amt_k} to {Other}.", "{Pron} sells {k}"),
              ("{Pron} gives {amt_k} to a neighbour.", "{Pron} gives away {k}")),
        MUL: (("A few years later {pron} has {k} times as many {plural}.", "{Pron} has {k} times as many"),),
        DIV: (("{Pron} divides the {plural} into {k} equal groups and sells every group but one.",
               "{Pron} keeps one of {k} equal groups"),),
    },
    question=("How many {plural} does {Name} have now?", "How many {plural} are on {Name}'s farm now?"),
)

SCENARIOS = (_COLLECT, _FOOD, _MONEY, _FARM)


@dataclass(frozen=True)
class Limits:
    start: int  # largest starting amount / add-subtract operand
    factor: int  # largest multiplier / divisor
    cap: int  # largest amount allowed at any step
    easy: bool = False  # favour + and - over x and /


# Levels 1-2: operands 1-20, so the embedded 135M model gets some right; more room later.
LEVEL_LIMITS = {1: Limits(20, 5, 100, True), 2: Limits(20, 5, 100, True), 3: Limits(30, 6, 200),
                4: Limits(50, 9, 500), 5: Limits(50, 9, 500)}


@dataclass(frozen=True)
class Problem:
    question: str
    answer: int
    level: int
    equations: tuple[str, ...]
    solution: str


def _noun(scenario: Scenario, obj: tuple[str, str], n: int) -> str:
    if scenario.money:
        return f"${n}"
    return f"{n} {obj[0] if n == 1 else obj[1]}"


def _pick_op(rng: random.Random, value: int, limits: Limits) -> tuple[str, int] | None:
    """An operation applicable to `value` that keeps it a positive integer within the cap."""
    choices: list[tuple[str, int]] = []
    if value + 1 <= limits.cap:
        choices.append((ADD, rng.randint(1, min(limits.start, limits.cap - value))))
    if value >= 2:
        choices.append((SUB, rng.randint(1, min(limits.start, value - 1))))
    factors = [k for k in range(2, limits.factor + 1) if value * k <= limits.cap]
    if factors:
        choices.append((MUL, rng.choice(factors)))
    divisors = [k for k in range(2, limits.factor + 1) if value % k == 0]
    if divisors:
        choices.append((DIV, rng.choice(divisors)))
    if not choices:
        return None
    # Easy levels lean on + and - (a 135M model rarely multiplies right); later levels are even.
    weights = [2 if op in (ADD, SUB) else 1 for op, _ in choices] if limits.easy else None
    return rng.choices(choices, weights=weights)[0]


def _apply(op: str, a: int, b: int) -> int:
    return {ADD: a + b, SUB: a - b, MUL: a * b, DIV: a // b}[op]


def generate_problem(rng: random.Random, level: int) -> Problem:
    """One problem with exactly `level` operations, drawn from `rng`."""
    if level not in LEVEL_LIMITS:
        raise ValueError(f"arith: level must be 1-5, got {level}")
    limits = LEVEL_LIMITS[level]
    scenario = rng.choice(SCENARIOS)
    name, pron = rng.choice(NAMES)
    other = rng.choice([n for n, _ in NAMES if n != name])
    obj = rng.choice(scenario.objects)
    words = {
        "Name": name, "Other": other, "pron": pron, "Pron": pron.capitalize(),
        "obj": "him" if pron == "he" else "her", "pos": "his" if pron == "he" else "her",
        "Pos": "His" if pron == "he" else "Her", "self": "himself" if pron == "he" else "herself",
        "plural": obj[1],
    }
    sentences: list[str] = []
    lines: list[str] = []
    equations: list[str] = []

    def record(op: str, a: int, b: int, result: int, clause: str, lead: str = "") -> None:
        equation = f"{a} {op} {b} = {result}"
        equations.append(equation)
        lines.append(f"{lead}{clause}: {equation}.")

    used: set[tuple[str, str]] = set()
    ops_left = level
    if rng.random() < 0.25:  # open with "a groups of b": the first multiplication
        a = rng.randint(2, limits.factor)
        b = rng.randint(1, max(1, min(limits.start, limits.cap // a)))
        sentence, clause = rng.choice(scenario.groups)
        fill = dict(words, a=a, b=b, amt_b=_noun(scenario, obj, b))
        sentences.append(sentence.format(**fill))
        value = a * b
        record(MUL, a, b, value, clause.format(**fill))
        ops_left -= 1
        lead = ""
    else:
        value = rng.randint(1, limits.start)
        sentences.append(rng.choice(scenario.start).format(**words, amt_a=_noun(scenario, obj, value)))
        lead = f"{name} starts with {_noun(scenario, obj, value)}. "
    while ops_left:
        picked = _pick_op(rng, value, limits)
        if picked is None:  # pragma: no cover - subtraction or addition always applies
            raise RuntimeError(f"arith: no operation applies to {value}")
        op, k = picked
        # prefer a template this problem has not used yet, so long problems read less repetitively
        fresh = [t for t in scenario.ops[op] if t not in used]
        sentence, clause = rng.choice(fresh or scenario.ops[op])
        used.add((sentence, clause))
        fill = dict(words, k=k, amt_k=_noun(scenario, obj, k))
        sentences.append(sentence.format(**fill))
        result = _apply(op, value, k)
        record(op, value, k, result, clause.format(**fill), lead)
        value, lead = result, ""
        ops_left -= 1
    sentences.append(rng.choice(scenario.question).format(**words))
    solution = "\n".join(lines + [f"The answer is {value}."])
    return Problem(" ".join(sentences), value, level, tuple(equations), solution)


def _generate(rng: random.Random, levels: list[int], taken: set[str]) -> list[Problem]:
    """Problems at `levels` (one each, in order) whose questions are not in `taken` (updated)."""
    out = []
    for level in levels:
        for _ in range(10_000):
            problem = generate_problem(rng, level)
            if problem.question not in taken:
                break
        else:  # pragma: no cover - the question space is far larger than any split
            raise RuntimeError(f"arith: could not find a new level-{level} question")
        taken.add(problem.question)
        out.append(problem)
    return out


@lru_cache(maxsize=8)
def generate_splits(
    seed: int, train_size: int, test_size: int, ood_per_level: int, levels: tuple[int, ...] = (1, 2, 3)
) -> dict[str, tuple[Problem, ...]]:
    """All three splits, disjoint by question text; each split has its own random stream. Train and
    test cycle through `levels` (question i has level levels[i % len(levels)])."""
    taken: set[str] = set()
    cycle = [levels[i % len(levels)] for i in range(max(train_size, test_size))]
    test = _generate(random.Random(f"arith-{seed}-test"), cycle[:test_size], taken)
    ood_levels = [level for level in range(1, 6) for _ in range(ood_per_level)]
    ood = _generate(random.Random(f"arith-{seed}-ood"), ood_levels, taken)
    train = _generate(random.Random(f"arith-{seed}-train"), cycle[:train_size], taken)
    return {"train": tuple(train), "test": tuple(test), "ood": tuple(ood)}


class Arith(Task):
    name = "arith"
    instruction = INSTRUCTION
    splits = ("train", "test", "ood")
    train_split = "train"
    eval_split = "test"

    def __init__(self, train_size: int = 2000, test_size: int = 300, ood_size_per_level: int = 60,
                 seed: int = 0, levels: list[int] | tuple[int, ...] = (1, 2, 3)) -> None:
        for option, value in (("train_size", train_size), ("test_size", test_size),
                              ("ood_size_per_level", ood_size_per_level), ("seed", seed)):
            if not isinstance(value, int) or isinstance(value, bool) or (option != "seed" and value < 0):
                raise ValueError(f"arith: {option} must be a non-negative integer, got {value!r}")
        if (not isinstance(levels, (list, tuple)) or not levels
                or any(isinstance(v, bool) or v not in LEVEL_LIMITS for v in levels)):
            raise ValueError(f"arith: levels must be a non-empty list of levels 1-5, got {levels!r}")
        self.levels = tuple(levels)
        self.train_size = train_size
        self.test_size = test_size
        self.ood_size_per_level = ood_size_per_level
        self.seed = seed

    def _load_split(self, split: str, path: str | Path | None) -> list[Example]:
        if path is not None:
            raise ValueError("arith is generated; it reads no file (path must be None)")
        problems = generate_splits(
            self.seed, self.train_size, self.test_size, self.ood_size_per_level, self.levels
        )[split]
        return [
            Example(
                id=f"arith-{split}-{i:05d}",
                question=p.question,
                answer=p.answer,
                meta={"level": p.level, "equations": list(p.equations), "solution": p.solution},
            )
            for i, p in enumerate(problems)
        ]

    def extract(self, response: str) -> str | None:
        return extract_number_answer(response)

    def reward(self, example: Example, response: str) -> float:
        return 1.0 if numbers_equal(self.extract(response), example.answer) else 0.0

    def gold_response(self, example: Example) -> str:
        return example.meta["solution"]

    def _exemplars(self, example: Example, shots: int) -> list[tuple[Example, str]]:
        """The first train problems (never `example` itself)."""
        check_shots(shots, max(self.train_size - 1, 0), self.name)
        pool = [ex for ex in self.load(self.train_split, limit=shots + 1) if ex.id != example.id][:shots]
        return [(ex, self.gold_response(ex)) for ex in pool]
