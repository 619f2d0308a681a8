import json

import pytest

from selftrain.loop.stages import DONE, run_stage, stage_done
from selftrain.report import RunLogger, write_json_atomic


def test_stage_runs_once_and_publishes_atomically(tmp_path):
    calls = []

    def compute(folder):
        calls.append(folder)
        (folder / "out.json").write_text("{}")

    final = run_stage(tmp_path, "sample", compute)
    assert (final / "out.json").is_file() and (final / DONE).is_file()
    assert stage_done(tmp_path, "sample")
    run_stage(tmp_path, "sample", compute)
    assert len(calls) == 1


def test_crashed_stage_is_not_done_and_reruns(tmp_path):
    def crash(folder):
        (folder / "half.json").write_text("{")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        run_stage(tmp_path, "train", crash)
    assert not stage_done(tmp_path, "train") and not (tmp_path / "train").exists()
    final = run_stage(tmp_path, "train", lambda f: (f / "ok").write_text("1"))
    assert (final / "ok").is_file() and not (final / "half.json").exists()


def test_logger_writes_jsonl_and_offline_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    log = RunLogger(tmp_path, name="t", config={"a": 1})
    log.log({"loss": 1.5, "acc": float("nan")}, step=0)
    log.log({"loss": 0.5}, step=1)
    log.finish()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"loss": 1.5, "acc": None, "step": 0}, {"loss": 0.5, "step": 1}]
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_write_json_atomic_leaves_no_temp(tmp_path):
    write_json_atomic(tmp_path / "m.json", {"x": 1})
    assert json.loads((tmp_path / "m.json").read_text()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_disabled_logger_stays_disabled_under_env(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    log = RunLogger(tmp_path, mode="disabled")
    log.log({"loss": 1.0}, step=0)
    log.finish()
    assert (tmp_path / "metrics.jsonl").is_file() and not (tmp_path / "wandb").exists()
