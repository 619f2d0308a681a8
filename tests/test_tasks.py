"""Tasks: registry, extraction edge cases, malformed input, hub layouts, generators, prompts.

Fast unit tests on small temp files; the whole-file gold checks are in test_tasks_data.py.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from selftrain.tasks import TASKS, Example, Task, TaskDataError, get_task
from selftrain.tasks import common as task_common
from selftrain.tasks.arith import LEVEL_LIMITS, generate_splits
from selftrain.tasks.common import extract_number_answer, is_hub_id, last_boxed, numbers_equal
from selftrain.tasks.hendrycks_math import math_equivalent, parse_level, run_in_worker
from selftrain.tasks.sudoku4 import all_grids, count_solutions, is_valid_solution, puzzles


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# --------------------------------------------------------------------------------------------
# Registry


def test_registry_lists_all_tasks_and_rejects_unknown_names_and_options():
    assert set(TASKS) == {"gsm8k", "math", "csqa", "mbpp", "nq_open", "sudoku4", "arith"}
    for name in TASKS:
        task = get_task(name)
        assert isinstance(task, Task) and task.name == name
        assert task.train_split in task.splits and task.eval_split in task.splits
    with pytest.raises(ValueError, match="available tasks: .*gsm8k"):
        get_task("gsm9k")
    with pytest.raises(ValueError, match="no option 'subsett'.*subset"):
        get_task("math", subsett="algebra")
    with pytest.raises(ValueError, match="options: none"):
        get_task("gsm8k", seed=1)
    with pytest.raises(ValueError, match="unknown subset 'algebro'"):
        get_task("math", subset="algebro")


def test_unknown_split_lists_the_task_splits():
    with pytest.raises(ValueError, match="no split 'dev'.*train, test, ood"):
        get_task("arith").load("dev")
    with pytest.raises(ValueError, match="train, validation"):
        get_task("csqa").load("test", path="/nowhere")


def test_file_task_without_path_or_with_missing_path_explains(tmp_path):
    with pytest.raises(ValueError, match="needs path=.*openai/gsm8k"):
        get_task("gsm8k").load("test")
    with pytest.raises(TaskDataError, match="no such file or folder"):
        get_task("gsm8k").load("test", path=tmp_path / "missing.jsonl")
    with pytest.raises(TaskDataError, match="no file for split 'test'"):
        get_task("gsm8k").load("test", path=tmp_path)


# --------------------------------------------------------------------------------------------
# Numbers (gsm8k / arith)


@pytest.mark.parametrize(
    "response, expected",
    [
        ("I could not work it out.", None),
        ("", None),
        ("The answer is 5. On second thought, the answer is 7.", "7"),
        ("#### 1,234", "1234"),
        ("The total is 1,234,567 dollars.", "1234567"),
        ("The answer is -3.", "-3"),
        ("The answer is $18.00.", "18.00"),
        ("so she has 42 apples left", "42"),
        ("#### 3\nThe answer is: 3", "3"),
        ("The answer is 12. Check: 12 - 5 = 7", "12"),
        ("The final answer is **40**.", "40"),
        ("It drops to \u22124 degrees.", "-4"),
        ("The answer is 0.5", "0.5"),
    ],
)
def test_number_extraction(response, expected):
    assert extract_number_answer(response) == expected


def test_number_comparison():
    assert numbers_equal("18.00", "18")
    assert numbers_equal("$1,080", 1080)
    assert numbers_equal("7.", "7")
    assert not numbers_equal("18.5", "18")
    assert not numbers_equal(None, "1")
    assert not numbers_equal("-3", "3")


def test_gsm8k_reward_strict_then_flexible():
    task = get_task("gsm8k")
    ex = Example("x", "q", "18", {"solution": "9 * 2 = <<9*2=18>>18\n#### 18"})
    assert task.reward(ex, "She makes $18.00 a day. The answer is $18.00.") == 1.0
    assert task.reward(ex, "9 * 2 = 18") == 1.0  # flexible: last number
    assert task.reward(ex, "The answer is 18. Then 18 + 1 = 19") == 1.0  # strict wins
    assert task.reward(ex, "The answer is 19.") == 0.0
    assert task.reward(ex, "no idea") == 0.0
    gold = task.gold_response(ex)
    assert "<<" not in gold and gold.endswith("The answer is 18.")


# --------------------------------------------------------------------------------------------
# MATH


def test_boxed_extraction():
    assert last_boxed(r"so $\boxed{\frac{\sqrt{3}}{2}}$.") == r"\frac{\sqrt{3}}{2}"
    assert last_boxed(r"\boxed{1} then \boxed{2}") == "2"
    assert last_boxed(r"\fbox{5}") == "5"
    assert last_boxed(r"\boxed{3} then \fbox{4}") == "4"
    assert last_boxed(r"$\boxed 7$") == "7"
    assert last_boxed(r"\boxed{2} and a cut-off \boxed{\frac{1") == "2"
    assert last_boxed("no box") is None


def test_math_extract_and_reward():
    task = get_task("math")
    assert task.extract("The answer is $7$.") == "7"
    assert task.extract(r"First \boxed{1}, finally \boxed{\{1,2\}}") == r"\{1,2\}"
    assert task.extract("nothing here") is None
    half = Example("h", "q", r"\frac{1}{2}", {"level": 2, "subject": "Algebra"})
    assert task.reward(half, r"The answer is $\boxed{\frac12}$.") == 1.0
    assert task.reward(half, r"The answer is $\boxed{0.5}$.") == 1.0
    assert task.reward(half, r"The answer is $\boxed{\frac{1}{3}}$.") == 0.0
    assert task.reward(half, "I give up") == 0.0
    point = Example("p", "q", "0.5", {})
    assert task.reward(point, r"\boxed{\frac12}") == 1.0


def test_math_equivalence_off_the_main_thread_and_worker_deadline():
    results = []
    thread = threading.Thread(
        target=lambda: results.append((math_equivalent(r"\frac12", "0.5"), math_equivalent("2", "3")))
    )
    thread.start()
    thread.join(60)
    assert results == [(True, False)]
    start = time.monotonic()
    assert run_in_worker(time.sleep, (60,), 1.0, "stopped") == "stopped"  # a stuck grader is killed
    assert time.monotonic() - start < 20


def test_math_levels():
    assert parse_level("Level 3", "f") == 3
    assert parse_level("Level ?", "f") is None
    assert parse_level(5, "f") == 5
    with pytest.raises(TaskDataError, match="field 'level'"):
        parse_level("Level 9", "f line 1")


def test_math_hub_layout_subset_and_published_tree(tmp_path):
    rows = [
        {"problem": "1+1?", "level": "Level 1", "type": "Algebra", "solution": r"It is $\boxed{2}$."},
        {"problem": "p?", "level": "Level ?", "type": "Counting & Probability",
         "solution": r"$\fbox{\frac{1}{2}}$"},
        {"problem": "g?", "level": "Level 5", "type": "Geometry", "solution": r"$\boxed{\pi}$"},
    ]
    path = write_jsonl(tmp_path / "test.jsonl", rows)
    task = get_task("math")
    examples = task.load("test", path=tmp_path)
    assert [e.answer for e in examples] == ["2", r"\frac{1}{2}", r"\pi"]
    assert [e.meta["level"] for e in examples] == [1, None, 5]
    assert examples[1].meta["subject"] == "Counting & Probability"
    for ex in examples:
        assert task.reward(ex, task.gold_response(ex)) == 1.0
    algebra = get_task("math", subset="algebra").load("test", path=path)
    assert [e.question for e in algebra] == ["1+1?"]
    counting = get_task("math", subset="counting_and_probability").load("test", path=path)
    assert len(counting) == 1
    # the published tree: <folder>/<split>/<subject>/<n>.json, in numeric order
    for n in (10, 2, 1):
        sub = tmp_path / "tree" / "train" / "algebra"
        sub.mkdir(parents=True, exist_ok=True)
        record = {"problem": f"problem {n}", "level": "Level 2", "type": "Algebra",
                  "solution": f"$\\boxed{{{n}}}$"}
        (sub / f"{n}.json").write_text(json.dumps(record))
    tree = task.load("train", path=tmp_path / "tree")
    assert [e.answer for e in tree] == ["1", "2", "10"]
    assert tree[0].id == "train/algebra/1.json"


def test_math_skips_empty_gold_answers_with_a_warning(tmp_path):
    rows = [{"problem": "a", "level": "Level 1", "type": "Algebra", "solution": r"$\boxed{}$"},
            {"problem": "b", "level": "Level 1", "type": "Algebra", "solution": r"$\boxed{3}$"}]
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    with pytest.warns(UserWarning, match="empty gold answer"):
        examples = get_task("math").load("train", path=path)
    assert [e.answer for e in examples] == ["3"]


# --------------------------------------------------------------------------------------------
# CommonsenseQA


@pytest.mark.parametrize(
    "response, expected",
    [
        ("The answer is (B).", "B"),
        ("B. populated areas", "B"),
        ("(C)", "C"),
        ("D", "D"),
        ("answer: b", "B"),
        ("the answer is (e)", "E"),
        ("I first thought (C), but the answer is D.", "D"),
        ("Options (A) and (C) are close; (C) fits.", "C"),
        ("A person would go to a park.", None),
        ("The answer is a park.", None),
        ("Answer: **A**", "A"),
        ("", None),
    ],
)
def test_csqa_extraction(response, expected):
    assert get_task("csqa").extract(response) == expected


def test_csqa_published_and_hub_layouts(tmp_path):
    published = {"answerKey": "B", "id": "q1", "question": {"question_concept": "milk", "stem": "Keep milk?",
                 "choices": [{"label": lab, "text": t} for lab, t in zip("ABCDE", "vwxyz")]}}
    hub = {"id": "q2", "question": "Keep milk?", "question_concept": "milk",
           "choices": {"label": list("ABCDE"), "text": list("vwxyz")}, "answerKey": "E"}
    task = get_task("csqa")
    examples = task.load("validation", path=write_jsonl(tmp_path / "dev_rand_split.jsonl", [published, hub]))
    assert [(e.id, e.answer) for e in examples] == [("q1", "B"), ("q2", "E")]
    assert examples[0].meta["choices"] == examples[1].meta["choices"]
    text = task.format_question(examples[0])
    assert "(A) v" in text and "(E) z" in text
    for ex in examples:
        assert task.reward(ex, task.gold_response(ex)) == 1.0
    assert task.reward(examples[0], "The answer is (C).") == 0.0
    assert task.load("validation", path=tmp_path)[0].id == "q1"  # folder -> dev_rand_split.jsonl


# --------------------------------------------------------------------------------------------
# MBPP


@pytest.fixture
def sandbox_ready():
    """MBPP grading runs programs in selftrain.sandbox; skip where confinement is unavailable."""
    from selftrain import sandbox

    try:
        sandbox.run_python("print(1)", timeout_s=10)
    except sandbox.SandboxUnavailable as e:
        pytest.skip(f"sandbox unavailable here: {e}")


MBPP_ROW = {
    "task_id": 602, "text": "Write a function to add two numbers.",
    "code": "def add(a, b):\r\n    return a + b", "test_setup_code": "",
    "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(-1, 1) == 0"],
    "challenge_test_list": [],
}


def test_mbpp_extract_splits_and_layouts(tmp_path):
    task = get_task("mbpp")
    assert task.extract("```python\nx = 1\n```\ntext\n```py\ny = 2\n```") == "y = 2"
    assert task.extract("Here:\n```python\ndef f():\n    return 1") == "def f():\n    return 1"
    assert task.extract("def f():\n    return 1") == "def f():\n    return 1"
    assert task.extract("   ") is None
    rows = [dict(MBPP_ROW, task_id=i) for i in (3, 12, 550, 700)]
    sanitized = {"source_file": "x.py", "task_id": 800, "prompt": "Add numbers.",
                 "code": "import math\ndef add(a, b):\n    return a + b",
                 "test_imports": ["import math"], "test_list": ["assert add(2, 2) == math.floor(4.2)"]}
    path = write_jsonl(tmp_path / "mbpp.jsonl", rows + [sanitized])
    assert [e.meta["task_id"] for e in task.load("prompt", path=path)] == [3]
    assert [e.meta["task_id"] for e in task.load("test", path=path)] == [12]
    assert [e.meta["task_id"] for e in task.load("validation", path=tmp_path)] == [550]
    train = task.load("train", path=path)
    assert [e.meta["task_id"] for e in train] == [700, 800]
    assert train[1].question == "Add numbers." and "import math" in train[1].meta["test_setup_code"]
    prompt = task.prompt(train[0])
    assert "assert add(1, 2) == 3" in prompt and "```python" in prompt


def test_mbpp_reward_runs_the_tests(sandbox_ready):
    task = get_task("mbpp")
    ex = task.parse_record(task_common.Record("f", 1, MBPP_ROW), "train")
    assert task.reward(ex, task.gold_response(ex)) == 1.0
    assert task.reward(ex, "```python\ndef add(a, b):\n    return a - b\n```") == 0.0
    assert task.reward(ex, "no code") == 0.0
    # exiting with status 0 before the asserts must not pass
    assert task.reward(ex, "```python\nimport sys\nsys.exit(0)\n```") == 0.0
    assert task.reward(ex, "```python\nimport os\nos._exit(0)\n```") == 0.0


# --------------------------------------------------------------------------------------------
# NQ-open


def test_nq_extraction_and_normalisation(tmp_path):
    task = get_task("nq_open")
    ex = task.load("validation", path=write_jsonl(tmp_path / "NQ-open.dev.jsonl", [
        {"question": "who sang i ran all the way home", "answer": ["The Impalas"]},
        {"question": "who wrote it", "answer": ["Bobby Scott", "Bob Russell"]},
        {"question": "odd", "answer": ["---"]},
    ]))
    assert task.reward(ex[0], "The answer is the Impalas.") == 1.0
    assert task.reward(ex[0], "Impalas") == 1.0
    assert task.reward(ex[0], "**The Impalas**\nThey recorded it in 1959.") == 1.0
    assert task.reward(ex[0], "The answer is The Beatles.") == 0.0
    assert task.reward(ex[1], "I think it was written by someone.\nThe answer is Bob Russell") == 1.0
    assert task.reward(ex[1], "") == 0.0
    assert task.extract("\n\n  Paris  \nmore") == "Paris"
    assert task.extract("The answer is:\nParis.") == "Paris"
    # a reference that normalises to nothing needs its exact text
    assert task.reward(ex[2], task.gold_response(ex[2])) == 1.0
    assert task.reward(ex[2], "The answer is ???") == 0.0


# --------------------------------------------------------------------------------------------
# Malformed input and hub layouts


@pytest.mark.parametrize(
    "task_name, good, field",
    [
        ("gsm8k", {"question": "q", "answer": "1 + 1 = 2\n#### 2"}, "answer"),
        ("math", {"problem": "p", "level": "Level 1", "type": "Algebra", "solution": r"\boxed{1}"},
         "solution"),
        ("csqa", {"id": "a", "question": "q", "choices": {"label": ["A", "B"], "text": ["x", "y"]},
                  "answerKey": "A"}, "answerKey"),
        ("mbpp", dict(MBPP_ROW), "test_list"),
        ("nq_open", {"question": "q", "answer": ["a"]}, "answer"),
    ],
)
def test_malformed_input_names_file_line_and_field(tmp_path, task_name, good, field):
    task = get_task(task_name)
    split = task.train_split
    ok = task.load(split, path=write_jsonl(tmp_path / "ok.jsonl", [good]))
    assert len(ok) == 1
    bad_json = write_jsonl(tmp_path / "bad.jsonl", [good, '{"question": "broken",'])
    with pytest.raises(ValueError, match=r"bad\.jsonl line 2: invalid JSON"):
        task.load(split, path=bad_json)
    missing = {k: v for k, v in good.items() if k != field}
    no_field = write_jsonl(tmp_path / "missing.jsonl", [good, good, missing])
    with pytest.raises(ValueError, match=rf"missing\.jsonl line 3: missing field '{field}'"):
        task.load(split, path=no_field)
    not_object = write_jsonl(tmp_path / "list.jsonl", ["[1, 2]"])
    with pytest.raises(ValueError, match=r"list\.jsonl line 1: expected a JSON object"):
        task.load(split, path=not_object)


def test_wrong_field_type_and_json_array_files(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"question": 3, "answer": "#### 1"}])
    with pytest.raises(TaskDataError, match=r"t\.jsonl line 1: field 'question' should be str"):
        get_task("gsm8k").load("test", path=path)
    no_final = write_jsonl(tmp_path / "n.jsonl", [{"question": "q", "answer": "no final"}])
    with pytest.raises(TaskDataError, match=r"n\.jsonl line 1: field 'answer' has no '#### N'"):
        get_task("gsm8k").load("test", path=no_final)
    array = tmp_path / "test.json"
    rows = [{"question": "a", "answer": "#### 1"}, {"question": "b", "answer": "#### 2"}]
    array.write_text(json.dumps(rows))
    assert [e.answer for e in get_task("gsm8k").load("test", path=array)] == ["1", "2"]
    array.write_text(json.dumps([{"question": "a", "answer": "#### 1"}, 5]))
    with pytest.raises(TaskDataError, match=r"test\.json record 2"):
        get_task("gsm8k").load("test", path=array)


def test_limit_takes_the_first_examples(tmp_path):
    rows = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(5)]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    task = get_task("gsm8k")
    assert [e.answer for e in task.load("train", path=path, limit=3)] == ["0", "1", "2"]
    assert task.load("train", path=path, limit=0) == []
    with pytest.raises(ValueError, match="limit"):
        task.load("train", path=path, limit=-1)


def test_hub_ids_load_through_datasets(monkeypatch):
    assert is_hub_id("openai/gsm8k") and not is_hub_id("data/test.jsonl") and not is_hub_id("gsm8k")
    calls = []

    def load_dataset(hub_id, config, split):
        calls.append((hub_id, config, split))
        if hub_id == "openai/gsm8k":
            return [{"question": "q", "answer": "#### 4"}]
        return [{"problem": "p", "level": "Level 2", "type": "Algebra", "solution": r"\boxed{1}"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    examples = get_task("gsm8k").load("test", path="openai/gsm8k")
    assert examples[0].answer == "4" and calls == [("openai/gsm8k", "main", "test")]
    calls.clear()
    get_task("math").load("test", path="EleutherAI/hendrycks_math")
    assert [c[1] for c in calls] == ["algebra", "counting_and_probability", "geometry",
                                    "intermediate_algebra", "number_theory", "prealgebra", "precalculus"]
    calls.clear()
    get_task("math", subset="algebra").load("test", path="EleutherAI/hendrycks_math")
    assert [c[1] for c in calls] == ["algebra"]


def test_hub_errors_are_clear(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(TaskDataError, match="needs the `datasets` package"):
        get_task("nq_open").load("validation", path="google-research-datasets/nq_open")

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(TaskDataError, match="could not load hub dataset 'tau/commonsense_qa'.*network"):
        get_task("csqa").load("validation", path="tau/commonsense_qa")


# --------------------------------------------------------------------------------------------
# sudoku4


def test_sudoku_grids_and_puzzles():
    grids = all_grids()
    assert len(grids) == 288 and len(set(grids)) == 288
    assert all(is_valid_solution([int(c) for c in g]) for g in grids)
    pairs = puzzles(0)
    for puzzle, solution in pairs:
        cells = [int(c) for c in puzzle]
        assert count_solutions(cells) == 1
        assert all(p == "0" or p == s for p, s in zip(puzzle, solution))
    assert puzzles.__wrapped__(0) == pairs  # regenerated from scratch: identical
    assert puzzles.__wrapped__(1) != pairs  # another seed keeps other cells
    task = get_task("sudoku4")
    test, train = task.load("test"), task.load("train")
    assert len(test) == 288 and [e.id for e in test] == [e.id for e in train]
    with pytest.raises(ValueError, match="reads no file"):
        task.load("test", path="x.jsonl")


SOLVED = "1234341221434321"


@pytest.mark.parametrize(
    "response",
    [
        "The answer is 1234 3412 2143 4321.",
        "The answer is 1234341221434321",
        "1 2 3 4\n3 4 1 2\n2 1 4 3\n4 3 2 1",
        "Solved:\n1 2 | 3 4\n3 4 | 1 2\n----+----\n2 1 | 4 3\n4 3 | 2 1\nDone.",
        "The answer is:\nRow 1: 1 2 3 4\nRow 2: 3 4 1 2\nRow 3: 2 1 4 3\nRow 4: 4 3 2 1",
        "[[1,2,3,4],[3,4,1,2],[2,1,4,3],[4,3,2,1]]",
        "A first try 1111 2222 3333 4444. The answer is 1234 3412 2143 4321. It uses 4 digits.",
        "The answer is 1234,3412,2143,4321 and that is 1 grid",
    ],
)
def test_sudoku_extraction_layouts(response):
    assert get_task("sudoku4").extract(response) == SOLVED


def test_sudoku_reward_checks_rules_and_givens():
    task = get_task("sudoku4")
    assert task.extract("no digits") is None
    assert task.extract("The answer is 12 34") is None
    ex = task.load("test")[0]
    assert task.reward(ex, task.gold_response(ex)) == 1.0
    solution = ex.answer
    # the reward checks the rules itself, not the stored solution
    stored = Example(ex.id, ex.question, "garbage", ex.meta)
    assert task.reward(stored, f"The answer is {solution}") == 1.0
    # another valid grid breaks a given (the solution is unique)
    other = next(g for g in all_grids() if g != solution)
    assert task.reward(ex, f"The answer is {other}") == 0.0
    # keeps the givens but breaks a rule: change one empty cell
    blank = ex.meta["puzzle"].index("0")
    broken = solution[:blank] + str(int(solution[blank]) % 4 + 1) + solution[blank + 1:]
    assert task.reward(ex, f"The answer is {broken}") == 0.0
    assert task.reward(ex, "The answer is " + solution[:blank] + "0" + solution[blank + 1:]) == 0.0


# --------------------------------------------------------------------------------------------
# arith


def _check_equation(equation: str) -> tuple[int, str, int, int]:
    m = re.fullmatch(r"(\d+) ([-+*/]) (\d+) = (\d+)", equation)
    assert m, equation
    a, op, b, r = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
    assert {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b and a % b == 0 else -1}[op] == r, equation
    return a, op, b, r


def test_arith_generation_is_deterministic_levelled_and_disjoint():
    task = get_task("arith", train_size=300, test_size=90, ood_size_per_level=20, seed=3)
    train, test, ood = task.load("train"), task.load("test"), task.load("ood")
    assert (len(train), len(test), len(ood)) == (300, 90, 100)
    again = generate_splits.__wrapped__(3, 300, 90, 20)  # from scratch, not the cache
    assert [p.question for p in again["train"]] == [e.question for e in train]
    other = get_task("arith", train_size=300, test_size=90, ood_size_per_level=20, seed=4).load("test")
    assert [e.question for e in other] != [e.question for e in test]
    questions = [{e.question for e in split} for split in (train, test, ood)]
    assert sum(map(len, questions)) == len(set().union(*questions)) == 490  # all distinct
    assert {e.meta["level"] for e in train} == {e.meta["level"] for e in test} == {1, 2, 3}
    assert [sum(e.meta["level"] == lv for e in ood) for lv in range(1, 6)] == [20] * 5
    for ex in train + test + ood:
        level, equations = ex.meta["level"], ex.meta["equations"]
        assert len(equations) == level
        chain = [_check_equation(eq) for eq in equations]
        assert chain[-1][3] == ex.answer >= 0 and isinstance(ex.answer, int)
        for (_, _, _, r), (a, _, _, _) in zip(chain, chain[1:]):
            assert r == a  # each step starts from the previous result
        if level <= 2:
            first_a, first_op, first_b, _ = chain[0]
            assert all(b <= 20 for _, _, b, _ in chain) and (first_op == "*" or first_a <= 20)
            assert first_b <= LEVEL_LIMITS[level].start
        gold = task.gold_response(ex)
        assert gold.count("\n") == level and gold.endswith(f"The answer is {ex.answer}.")
        assert task.reward(ex, gold) == 1.0
        assert task.reward(ex, f"The answer is {ex.answer + 1}.") == 0.0
    assert task.load("test", limit=5) == test[:5]


def test_arith_levels_option_picks_the_train_and_test_levels():
    default = get_task("arith", train_size=12, test_size=6, ood_size_per_level=2)
    explicit = get_task("arith", train_size=12, test_size=6, ood_size_per_level=2, levels=[1, 2, 3])
    assert default.load("train") == explicit.load("train") and default.load("test") == explicit.load("test")
    easy = get_task("arith", train_size=12, test_size=6, ood_size_per_level=2, levels=[1, 3])
    assert [e.meta["level"] for e in easy.load("train")] == [1, 3] * 6
    assert [e.meta["level"] for e in easy.load("test")] == [1, 3] * 3
    assert [e.meta["level"] for e in easy.load("ood")] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]  # OOD unchanged
    questions = [{e.question for e in easy.load(s)} for s in ("train", "test", "ood")]
    assert sum(map(len, questions)) == len(set().union(*questions))  # still disjoint


def test_arith_options_are_checked():
    with pytest.raises(ValueError, match="train_size"):
        get_task("arith", train_size=-1)
    for bad in ([], [0], [6], "1", [True]):
        with pytest.raises(ValueError, match="levels must be a non-empty list of levels 1-5"):
            get_task("arith", levels=bad)
    assert len(get_task("arith", train_size=0).load("train")) == 0


# --------------------------------------------------------------------------------------------
# Prompts


def test_plain_prompts_and_shots(tmp_path):
    task = get_task("arith", train_size=30, test_size=9, ood_size_per_level=2)
    ex = task.load("test")[0]
    zero = task.prompt(ex)
    assert zero.startswith(task.instruction) and ex.question in zero and zero.endswith("Answer:\n")
    assert zero.count("Question:") == 1
    three = task.prompt(ex, shots=3)
    assert three.count("Question:") == 4 and three.count("The answer is") == 3 + 1  # +1: instruction
    assert three.endswith(zero[len(task.instruction) + 2:])
    with pytest.raises(ValueError, match="shots"):
        task.prompt(ex, shots=-1)
    sudoku = get_task("sudoku4")
    first = sudoku.load("test")[0]
    for puzzle in sudoku.load("test")[:5]:  # never its own puzzle as a worked example
        text = sudoku.prompt(puzzle, shots=4)
        assert text.count(puzzle.question) == 1 and text.count("Question:") == 5
    assert sudoku.prompt(first, shots=2).count("Question:") == 3
    for name in ("gsm8k", "math", "csqa", "mbpp", "nq_open"):
        file_task = get_task(name)
        worked = file_task.EXEMPLARS
        assert len(worked) == 4
        for exemplar, response in worked:  # the written exemplars end the way the prompt asks
            extracted = file_task.extract(response)
            assert extracted is not None, (name, response)
            gold = [extracted] if name == "nq_open" else extracted
            graded = Example("e", exemplar.question, gold, exemplar.meta)
            if name != "mbpp":
                assert file_task.reward(graded, response) == 1.0, (name, response)
        with pytest.raises(ValueError, match="asks for more"):
            file_task.prompt(Example("x", "q", "1", {"choices": [], "tests": ["assert True"]}), shots=5)


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from selftrain.models import load_tokenizer

    try:
        return load_tokenizer("smollm2-135m")
    except Exception as e:  # noqa: BLE001 - the embedded model package may be absent
        pytest.skip(f"smollm2 tokenizer unavailable: {e}")


def test_chat_template_prompts(smollm2_tokenizer, tmp_path):
    task = get_task("arith", train_size=30, test_size=9, ood_size_per_level=2)
    ex = task.load("test")[0]
    chat = task.prompt(ex, tokenizer=smollm2_tokenizer)
    assert chat.count("<|im_start|>user") == 1 and chat.endswith("<|im_start|>assistant\n")
    assert ex.question in chat and task.instruction in chat
    two = task.prompt(ex, tokenizer=smollm2_tokenizer, shots=2)
    assert two.count("<|im_start|>user") == 3 and two.count("<|im_start|>assistant") == 3
    assert task.gold_response(task.load("train")[0]) in two
    csqa = get_task("csqa")
    ex = Example("c", "Where?", "A", {"choices": [{"label": lab, "text": lab.lower()} for lab in "ABCDE"]})
    assert "(E) e" in csqa.prompt(ex, tokenizer=smollm2_tokenizer, shots=1)


def _any_example(name: str):
    options = {"train_size": 30, "test_size": 9, "ood_size_per_level": 2} if name == "arith" else {}
    task = get_task(name, **options)
    if name in ("arith", "sudoku4"):
        return task, task.load("test")[0]
    return task, Example("x", "What is asked?", "1", {"choices": [], "tests": ["assert True"]})


@pytest.mark.parametrize("name", TASKS)
def test_prompt_format_fewshot_is_plain_text_whatever_the_tokenizer(smollm2_tokenizer, name):
    task, ex = _any_example(name)
    shots = 4
    plain = task.prompt(ex, tokenizer=None, shots=shots)
    fewshot = task.prompt(ex, tokenizer=smollm2_tokenizer, shots=shots, prompt_format="fewshot")
    chat = task.prompt(ex, tokenizer=smollm2_tokenizer, shots=shots, prompt_format="chat")
    assert fewshot == plain and fewshot.count("Question:") == shots + 1 and fewshot.endswith("Answer:\n")
    assert "<|im_start|>" not in fewshot
    assert chat.count("<|im_start|>user") == shots + 1  # the default keeps the chat template
    assert task.prompt(ex, tokenizer=smollm2_tokenizer, shots=shots) == chat
    with pytest.raises(ValueError, match="prompt_format"):
        task.prompt(ex, tokenizer=smollm2_tokenizer, prompt_format="lm-eval")


def test_prompt_format_decides_the_stop_strings_and_is_a_checked_config_key(smollm2_tokenizer):
    from selftrain.loop.config import DataSection
    from selftrain.loop.engine import stop_strings_for

    task = get_task("gsm8k")
    assert stop_strings_for(task, smollm2_tokenizer) is None  # chat prompts end at EOS
    assert stop_strings_for(task, smollm2_tokenizer, "fewshot") == list(task.stop)
    assert stop_strings_for(task, None) == list(task.stop)
    assert DataSection(prompt_format="fewshot").prompt_format == "fewshot"
    with pytest.raises(ValueError, match="data.prompt_format"):
        DataSection(prompt_format="plain")
