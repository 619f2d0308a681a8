"""docs/extending.md's four plugins, run exactly as the page shows them: their own tests, then the
paradigm through the engine (fake sampler and trainer from test_loop_engine)."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest
import test_loop_engine as engine_fakes  # tests/ is on sys.path under pytest

import selftrain.tasks
from selftrain.loop import paradigms as paradigms_mod
from selftrain.loop import steps as steps_mod
from selftrain.train import rewards as rewards_mod

# The fake sampler / trainer fixtures of the engine tests.
fakes = engine_fakes.fakes
no_plots = engine_fakes.no_plots

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
BLOCK = re.compile(r"```python\n# file: (?P<path>\S+)\n(?P<body>.*?)```", re.S)


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """Write the page's files under tmp_path, import from there, undo every registration after."""
    blocks = {m["path"]: m["body"] for m in BLOCK.finditer(DOC.read_text())}
    assert len(blocks) == 8, sorted(blocks)
    for rel, body in blocks.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(paradigms_mod, "_PARADIGMS", dict(paradigms_mod._PARADIGMS))
    monkeypatch.setattr(steps_mod, "_STEP_KINDS", dict(steps_mod._STEP_KINDS))
    monkeypatch.setattr(selftrain.tasks, "_REGISTRY", dict(selftrain.tasks._REGISTRY))
    monkeypatch.setattr(rewards_mod, "_REWARDS", dict(rewards_mod._REWARDS))
    yield blocks
    for name in [m for m in sys.modules if m == "my_plugins" or m.startswith("my_plugins.")]:
        del sys.modules[name]


def test_each_plugin_passes_its_own_test(plugins):
    for rel in plugins:
        if Path(rel).name.startswith("test_"):
            module = importlib.import_module(rel[:-3].replace("/", "."))
            tests = [getattr(module, n) for n in dir(module) if n.startswith("test_")]
            assert tests, rel
            for test in tests:
                test()


@pytest.mark.usefixtures("fakes", "no_plots")
def test_new_paradigm_and_step_run_in_the_engine(plugins, tmp_path):
    from selftrain.loop.engine import run_loop

    out = tmp_path / "run"
    cfg = engine_fakes.make_cfg(
        out, paradigm="dpo_then_sft", iterations=2, plugins=["my_plugins.dpo_then_sft"]
    )
    run_loop(cfg, show_progress=False)
    assert [r["step_kind"] for r in engine_fakes.rows_of(out)] == ["base", "gold_sft", "hard_cdpo"]
    m1 = str(out / "iter_1" / "trainer" / "model")
    rows = engine_fakes.rows_of(out)
    if rows[2]["data/empty"]:  # every question easy for the fake model: nothing to train on
        assert len(engine_fakes.TRAIN_CALLS) == 1
    else:
        call = engine_fakes.TRAIN_CALLS[1]
        assert (call["loss"], call["ref_model"], call["label_smoothing"]) == ("dpo", m1, 0.1)


def test_plugin_task_is_usable_by_name(plugins):
    from selftrain.config import parse_cli
    from selftrain.loop import LoopConfig

    cfg = parse_cli(LoopConfig, ["plugins=[my_plugins.reverse_task]", "task=reverse_words"])
    task = selftrain.tasks.get_task(cfg.task, size=6)
    assert len(task.load("train")) == 6
    with pytest.raises(ValueError, match="plugins: cannot import 'my_plugins.nope'"):
        parse_cli(LoopConfig, ["plugins=[my_plugins.nope]"])
