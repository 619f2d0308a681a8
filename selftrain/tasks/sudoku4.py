"""4x4 Sudoku: all 288 valid grids, one puzzle each with a unique solution (generated, no files).

Grids use digits 1-4; every row, column and 2x2 box holds each digit once. For each grid a puzzle
is made deterministically: the cells are visited in a seeded random order and a cell is emptied
when the puzzle still has exactly one solution (checked by a small exhaustive solver), so every
puzzle is minimal and uniquely solvable. Splits: "test" = all 288 puzzles (as in paper B) and
"train" = the same 288 puzzles: 288 is the whole space of grids, so there is nothing held out;
self-improvement on this task trains on the prompts it is measured on, as the paper does.
"""

from __future__ import annotations

import random
import re
from functools import lru_cache
from pathlib import Path

from selftrain.tasks.base import Example, Task
from selftrain.tasks.common import check_shots

SIZE = 4
CELLS = SIZE * SIZE
N_GRIDS = 288

INSTRUCTION = (
    "Solve this 4x4 Sudoku. Replace every '.' with a digit from 1 to 4 so that each row, each column "
    "and each of the four 2x2 boxes contains 1, 2, 3 and 4 exactly once; keep the given digits. "
    "Write the solved grid as four rows, then end with the line \"The answer is R1 R2 R3 R4.\" where "
    "R1..R4 are the four digits of each row, top to bottom."
)


def _units() -> list[list[int]]:
    """The 12 groups of cells that must each hold 1-4: rows, columns, 2x2 boxes."""
    rows = [[r * SIZE + c for c in range(SIZE)] for r in range(SIZE)]
    cols = [[r * SIZE + c for r in range(SIZE)] for c in range(SIZE)]
    boxes = [
        [(br + dr) * SIZE + (bc + dc) for dr in range(2) for dc in range(2)]
        for br in (0, 2)
        for bc in (0, 2)
    ]
    return rows + cols + boxes


UNITS = _units()
PEERS = [sorted({p for unit in UNITS if cell in unit for p in unit} - {cell}) for cell in range(CELLS)]


def candidates(cells: list[int], cell: int) -> list[int]:
    """Digits that can go in `cell` given the filled peers (0 = empty)."""
    used = {cells[p] for p in PEERS[cell]}
    return [d for d in range(1, SIZE + 1) if d not in used]


def count_solutions(puzzle: list[int], limit: int = 2) -> int:
    """Number of completions of `puzzle` (0 = empty), counting no further than `limit`."""
    cells = list(puzzle)
    found = 0

    def search() -> None:
        nonlocal found
        empty = [i for i, v in enumerate(cells) if v == 0]
        if not empty:
            found += 1
            return
        # the most constrained cell first keeps the search tiny
        cell = min(empty, key=lambda i: len(candidates(cells, i)))
        for digit in candidates(cells, cell):
            cells[cell] = digit
            search()
            cells[cell] = 0
            if found >= limit:
                return

    search()
    return found


def is_valid_solution(grid: list[int]) -> bool:
    """Every row, column and box holds 1-4 exactly once."""
    if len(grid) != CELLS:
        return False
    return all(sorted(grid[i] for i in unit) == [1, 2, 3, 4] for unit in UNITS)


@lru_cache(maxsize=1)
def all_grids() -> tuple[str, ...]:
    """All valid 4x4 grids as 16-digit strings, in increasing order (288 of them)."""
    grids: list[str] = []
    cells = [0] * CELLS

    def fill(pos: int) -> None:
        if pos == CELLS:
            grids.append("".join(map(str, cells)))
            return
        for digit in candidates(cells, pos):
            cells[pos] = digit
            fill(pos + 1)
        cells[pos] = 0

    fill(0)
    return tuple(grids)


def make_puzzle(grid: str, rng: random.Random) -> str:
    """Empty cells of `grid` in a random order while the solution stays unique ('0' = empty)."""
    cells = [int(ch) for ch in grid]
    order = list(range(CELLS))
    rng.shuffle(order)
    for cell in order:
        kept = cells[cell]
        cells[cell] = 0
        if count_solutions(cells) != 1:
            cells[cell] = kept
    return "".join(map(str, cells))


@lru_cache(maxsize=8)
def puzzles(seed: int) -> tuple[tuple[str, str], ...]:
    """(puzzle, solution) for every grid; puzzle i depends only on the seed and i."""
    return tuple(
        (make_puzzle(grid, random.Random(f"sudoku4-{seed}-{i}")), grid) for i, grid in enumerate(all_grids())
    )


def show_grid(cells: str, blank: str = ".") -> str:
    return "\n".join(
        " ".join(blank if ch == "0" else ch for ch in cells[r * SIZE : (r + 1) * SIZE]) for r in range(SIZE)
    )


def solving_steps(puzzle: str, solution: str) -> list[str]:
    """A human-style solving trace: single candidates, then digits with a single place in a unit."""
    cells = [int(ch) for ch in puzzle]
    unit_names = [f"row {i + 1}" for i in range(4)] + [f"column {i + 1}" for i in range(4)] + [
        f"the {name} box" for name in ("top-left", "top-right", "bottom-left", "bottom-right")
    ]
    steps = []
    while 0 in cells:
        step = None
        for cell in range(CELLS):
            if cells[cell] == 0 and len(options := candidates(cells, cell)) == 1:
                where = f"Row {cell // 4 + 1}, column {cell % 4 + 1}"
                step = (cell, options[0], f"{where} can only be {options[0]}.")
                break
        if step is None:
            for unit, name in zip(UNITS, unit_names):
                for digit in range(1, 5):
                    if any(cells[i] == digit for i in unit):
                        continue
                    places = [i for i in unit if cells[i] == 0 and digit in candidates(cells, i)]
                    if len(places) == 1:
                        cell = places[0]
                        step = (cell, digit, f"In {name}, {digit} fits only at row {cell // 4 + 1}, "
                                             f"column {cell % 4 + 1}.")
                        break
                if step:
                    break
        if step is None:  # no single left: take the solution's digit (trying the others fails)
            cell = cells.index(0)
            digit = int(solution[cell])
            where = f"row {cell // 4 + 1}, column {cell % 4 + 1}"
            step = (cell, digit, f"Trying the options, {where} must be {digit}.")
        cells[step[0]] = step[1]
        steps.append(step[2])
    return steps


_ROW_LABEL = re.compile(r"\brow\s*[1-4]\s*[:.)=-]?", re.IGNORECASE)
_MARKER = re.compile(r"the\s+(?:final\s+)?answer\s+is", re.IGNORECASE)
# A run of digits separated only by spaces, newlines or grid punctuation.
_BLOCK = re.compile(r"[0-9](?:[\s,|;/\[\]().+_=*-]*[0-9])*")


def _sixteen(block: str) -> str | None:
    digits = re.findall(r"[0-9]", block)
    return "".join(digits) if len(digits) == CELLS else None


class Sudoku4(Task):
    name = "sudoku4"
    instruction = INSTRUCTION
    splits = ("train", "test")
    train_split = "train"
    eval_split = "test"

    def __init__(self, seed: int = 0) -> None:
        """`seed`: which cells each puzzle keeps (the grids are always all 288)."""
        if not isinstance(seed, int):
            raise ValueError(f"sudoku4: seed must be an integer, got {seed!r}")
        self.seed = seed

    def _load_split(self, split: str, path: str | Path | None) -> list[Example]:
        if path is not None:
            raise ValueError("sudoku4 is generated; it reads no file (path must be None)")
        return [
            Example(
                id=f"sudoku4-{i:03d}",
                question=show_grid(puzzle),
                answer=solution,
                meta={"puzzle": puzzle, "givens": CELLS - puzzle.count("0")},
            )
            for i, (puzzle, solution) in enumerate(puzzles(self.seed))
        ]

    def format_question(self, example: Example) -> str:
        return f"Puzzle:\n{example.question}"

    def extract(self, response: str) -> str | None:
        """16 digits: a 16-digit block after the last "The answer is", else the last 16 digits 1-4
        after it, else the last 16-digit block anywhere (any row layout or separators)."""
        text = _ROW_LABEL.sub(" ", response)
        markers = list(_MARKER.finditer(text))
        if markers:
            tail = text[markers[-1].end():]
            for block in _BLOCK.findall(tail):
                if (digits := _sixteen(block)) is not None:
                    return digits
            digits = re.findall(r"[1-4]", tail)
            if len(digits) >= CELLS:
                return "".join(digits[-CELLS:])
        for block in reversed(_BLOCK.findall(text)):
            if (digits := _sixteen(block)) is not None:
                return digits
        return None

    def reward(self, example: Example, response: str) -> float:
        digits = self.extract(response)
        if digits is None:
            return 0.0
        grid = [int(ch) for ch in digits]
        puzzle = example.meta["puzzle"]
        keeps_givens = all(g == "0" or int(g) == v for g, v in zip(puzzle, grid))
        return 1.0 if keeps_givens and is_valid_solution(grid) else 0.0

    def gold_response(self, example: Example) -> str:
        steps = solving_steps(example.meta["puzzle"], example.answer)
        rows = " ".join(example.answer[r * SIZE : (r + 1) * SIZE] for r in range(SIZE))
        return "\n".join(steps) + f"\nSolved grid:\n{show_grid(example.answer)}\nThe answer is {rows}."

    def _exemplars(self, example: Example, shots: int) -> list[tuple[Example, str]]:
        """Worked puzzles from the train split in a fixed seeded order (spread over the grids), never
        the puzzle being asked (train and test hold the same puzzles)."""
        check_shots(shots, N_GRIDS - 1, self.name)
        train = self.load(self.train_split)
        order = list(range(len(train)))
        random.Random(f"sudoku4-shots-{self.seed}").shuffle(order)
        pool = [train[i] for i in order[: shots + 1] if train[i].id != example.id][:shots]
        return [(ex, self.gold_response(ex)) for ex in pool]
