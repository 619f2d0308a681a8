"""tools/bench_sampler.py's question loader: a given file is read or refused by name and line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import bench_sampler  # noqa: E402


def test_questions_file_is_read_or_refused_by_name_and_line(tmp_path):
    good = tmp_path / "q.jsonl"
    good.write_text('{"question": "What is 2+2?"}\n{"q": 1}\n')
    assert bench_sampler.load_questions(1, good) == (["What is 2+2?"], str(good))
    with pytest.raises(SystemExit, match=r"q\.jsonl:2: not a JSON object with a 'question' field"):
        bench_sampler.load_questions(2, good)
    with pytest.raises(SystemExit, match="--questions: no such file"):
        bench_sampler.load_questions(2, tmp_path / "missing.jsonl")
