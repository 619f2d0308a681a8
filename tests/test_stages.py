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


class _FakeRun:
    """Records what RunLogger asks of a W&B run."""

    def __init__(self) -> None:
        self.defined: dict[str, str | None] = {}
        self.rows: list[tuple[dict, dict]] = []

    def define_metric(self, name: str, step_metric: str | None = None) -> None:
        self.defined[name] = step_metric

    def log(self, values: dict, **kwargs) -> None:
        self.rows.append((values, kwargs))

    def finish(self) -> None:
        pass


def test_series_get_their_own_wandb_axis_and_never_move_wandbs_step(tmp_path):
    log = RunLogger(tmp_path, mode="disabled")
    log._wandb = run = _FakeRun()
    log.log({"pass@1": 0.1}, step=0)
    log.log_series("rl", {"reward/mean": 0.2, "note": "x"}, 1)
    log.log_series("rl", {"reward/mean": 0.3}, 2)
    log.log({"pass@1": 0.4}, step=1)  # after 2 series rows: W&B would drop an explicit step=1 here
    assert all(kwargs == {} for _, kwargs in run.rows)  # W&B's own step is never passed
    assert [values for values, _ in run.rows] == [
        {"pass@1": 0.1, "step": 0},
        {"rl/reward/mean": 0.2, "rl/step": 1},
        {"rl/reward/mean": 0.3, "rl/step": 2},
        {"pass@1": 0.4, "step": 1},
    ]
    assert run.defined == {"step": None, "pass@1": "step", "rl/step": None, "rl/reward/mean": "rl/step"}
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"pass@1": 0.1, "step": 0}, {"pass@1": 0.4, "step": 1}]  # series rows: W&B only


def test_series_reach_an_offline_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    log = RunLogger(tmp_path, name="t")
    log.log({"loss": 1.0}, step=0)
    log.log_series("rl", {"reward/mean": 0.25}, 1)
    log.finish()
    (record,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    data = record.read_bytes()
    assert b"rl/reward/mean" in data and b"rl/step" in data


def test_rewind_drops_rows_after_the_step(tmp_path):
    from selftrain.loop.artifacts import JsonlTrainLogger

    log = RunLogger(tmp_path, mode="disabled")
    train_log = JsonlTrainLogger(tmp_path / "train_log.jsonl", show_progress=False)
    for step in (1, 2, 3):
        log.log({"x": step}, step=step)
        train_log.log({"x": step}, step=step)
    log.rewind(1)
    train_log.rewind(2)
    assert [json.loads(s)["step"] for s in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1]
    assert [json.loads(s)["step"] for s in (tmp_path / "train_log.jsonl").read_text().splitlines()] == [1, 2]


def test_train_log_series_go_to_the_run_loggers_axis_with_an_offset(tmp_path):
    from selftrain.loop.artifacts import JsonlTrainLogger

    log = RunLogger(tmp_path, mode="disabled")
    log._wandb = run = _FakeRun()
    train_log = JsonlTrainLogger(tmp_path / "train_log.jsonl", show_progress=False, series=(log, "rl", 10))
    train_log.log({"reward/mean": 0.5}, step=1)
    train_log.log({"reward/mean": 0.75}, step=2)
    assert [values for values, _ in run.rows] == [
        {"rl/reward/mean": 0.5, "rl/step": 11},
        {"rl/reward/mean": 0.75, "rl/step": 12},
    ]
