"""Run folders that nothing can corrupt (selftrain/loop/stages.py, selftrain/loop/run_folder.py):
checksummed stage markers, damage found and recomputed, a full disk, one live run per folder,
and SIGINT / SIGTERM stopping a run cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from half_arith import REPO, recipe_command, subprocess_env

from selftrain.loop.run_folder import BUSY_EXIT, RunFolderBusy, claim_run_folder, release_run_folder
from selftrain.loop.stages import DONE, damaged_files, file_checksum, run_stage, stage_done


def _write(files: dict[str, bytes]):
    def compute(tmp: Path) -> None:
        for rel, data in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)

    return compute


def test_marker_records_size_and_checksum_of_every_file(tmp_path):
    run_stage(tmp_path, "s", _write({"a.jsonl": b"x" * 10, "sub/b.bin": b"\x00\x01"}))
    marker = json.loads((tmp_path / "s" / DONE).read_text())
    assert marker["files"] == {
        "a.jsonl": [10, file_checksum(tmp_path / "s" / "a.jsonl")],
        "sub/b.bin": [2, file_checksum(tmp_path / "s" / "sub" / "b.bin")],
    }
    import xxhash

    assert marker["files"]["a.jsonl"][1] == xxhash.xxh3_64(b"x" * 10).hexdigest()
    assert stage_done(tmp_path, "s") and damaged_files(tmp_path / "s") == []


@pytest.mark.parametrize("damage", ["truncate", "bitflip", "delete"])
def test_a_damaged_stage_is_named_and_recomputed(tmp_path, damage, capsys):
    data = bytes(range(256)) * 40
    run_stage(tmp_path, "s", _write({"samples.jsonl": data}))
    path = tmp_path / "s" / "samples.jsonl"
    if damage == "truncate":
        path.write_bytes(data[:-100])
    elif damage == "bitflip":
        flipped = bytearray(data)
        flipped[5000] ^= 0x10
        path.write_bytes(bytes(flipped))
    else:
        path.unlink()
    (problem,) = damaged_files(tmp_path / "s")
    assert str(path) in problem
    calls = []
    run_stage(tmp_path, "s", lambda tmp: (calls.append(1), _write({"samples.jsonl": data})(tmp)))
    assert calls == [1] and path.read_bytes() == data
    assert f"stage {tmp_path / 's'} is damaged" in capsys.readouterr().err


def test_outputs_beside_the_stage_are_guarded_and_removed_with_it(tmp_path):
    def train(tmp: Path) -> None:
        model = tmp_path / "trainer" / "model"
        model.mkdir(parents=True, exist_ok=True)
        (model / "model.safetensors").write_bytes(b"w" * 64)
        (tmp / "result.json").write_text("{}")

    run_stage(tmp_path, "train", train, outputs=("trainer",))
    shard = tmp_path / "trainer" / "model" / "model.safetensors"
    assert json.loads((tmp_path / "train" / DONE).read_text())["outputs"] == {
        "trainer/model/model.safetensors": [64, file_checksum(shard)]}
    shard.write_bytes(b"w" * 63 + b"x")  # same size, other bytes
    changed = f"{shard}: contents changed since the stage finished (checksum)"
    assert damaged_files(tmp_path / "train") == [changed]
    seen = []

    def retrain(tmp: Path) -> None:
        seen.append(shard.exists())  # the damaged checkpoint was removed before the stage reran
        train(tmp)

    run_stage(tmp_path, "train", retrain, outputs=("trainer",))
    assert seen == [False] and damaged_files(tmp_path / "train") == []


def test_a_marker_from_before_checksums_is_taken_as_finished(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "x.json").write_text("{}")
    (tmp_path / "s" / DONE).write_text("ok\n")
    assert damaged_files(tmp_path / "s") == [] and stage_done(tmp_path, "s")


def test_a_failing_stage_leaves_no_partial_folder_and_no_marker(tmp_path):
    def boom(tmp: Path) -> None:
        (tmp / "half.jsonl").write_text("{")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_stage(tmp_path, "s", boom)
    assert not (tmp_path / ".s.partial").exists() and not (tmp_path / "s").exists()


_DISK_FULL_SCRIPT = """
import resource, signal, sys
from pathlib import Path
from selftrain.loop.stages import run_stage, StageDiskFull
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, not a signal
if sys.argv[2] == "limited":
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
def compute(tmp):
    with open(tmp / "samples.jsonl", "wb") as f:
        for _ in range(4):
            f.write(b"y" * (1 << 19))
try:
    run_stage(Path(sys.argv[1]), "sample", compute)
except StageDiskFull as e:
    print(e, file=sys.stderr)
    sys.exit(3)
"""


def test_a_full_disk_fails_the_stage_naming_the_file_and_the_rerun_completes(tmp_path):
    """A file-size limit (RLIMIT_FSIZE) stands in for a full disk: the write fails the same way
    (EFBIG instead of ENOSPC), and run_stage treats ENOSPC, EDQUOT and EFBIG alike."""
    script = tmp_path / "fill.py"
    script.write_text(_DISK_FULL_SCRIPT)
    run = tmp_path / "run"
    full = subprocess.run([sys.executable, str(script), str(run), "limited"], capture_output=True, text=True,
                          timeout=120)
    assert full.returncode == 3, full.stderr
    assert "stage" in full.stderr and str(run / ".sample.partial" / "samples.jsonl") in full.stderr
    assert not (run / "sample").exists() and not (run / ".sample.partial").exists()
    again = subprocess.run([sys.executable, str(script), str(run), "space"], capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0, again.stderr
    assert (run / "sample" / "samples.jsonl").stat().st_size == 4 << 19
    assert damaged_files(run / "sample") == []


_HOLDER = """
import sys, time
from selftrain.loop.run_folder import claim_run_folder
claim_run_folder(sys.argv[1])
print("held", flush=True)
time.sleep(300)
"""


def test_a_live_holder_refuses_a_second_claim_and_a_killed_one_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusy, match=rf"{tmp_path}.*pid {holder.pid}"):
            claim_run_folder(tmp_path)
    finally:
        holder.kill()  # SIGKILL: no clean-up code runs, the kernel drops the lock
        holder.wait()
        holder.stdout.close()
    claim_run_folder(tmp_path)
    assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    release_run_folder(tmp_path)


EVAL_ARGS = [
    "task=half_arith",
    "data.task_options={train_size: 2, test_size: 3, ood_size_per_level: 1}",
    "eval.n_samples=2",
    "eval.temperature=0.3",
    "eval.is_ns=[2]",
    "eval.max_new_tokens=8",
    "eval.semantic=false",
    "checkpoints=[tiny-random,tiny-random]",
]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_run_cleanly_and_the_rerun_resumes(tmp_path, signum):
    """evaluate.py on the same model twice, held inside model_1's stage: a second launch is
    refused at once naming the holder; the signal removes the partial folder and exits 128 +
    signal; the rerun keeps model_0's finished stage and completes model_1 with the same metrics."""
    out = tmp_path / "eval"
    args = [*EVAL_ARGS, f"out_dir={out}"]
    env = subprocess_env()
    held_env = {**env, "SELFTRAIN_HOLD_AT": "model_1/eval@after"}
    proc = subprocess.Popen(recipe_command("evaluate", args, 1), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=held_env)
    held = out / "model_1" / ".eval.partial" / ".held"
    deadline = time.monotonic() + 300
    while not held.exists():
        assert proc.poll() is None, f"exit {proc.returncode}: {proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    second = subprocess.run(recipe_command("evaluate", args, 1), cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)
    assert second.returncode == BUSY_EXIT, second.stderr[-2000:]
    assert f"run folder {out.resolve()} is in use by a live run (pid {proc.pid}" in second.stderr
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err[-3000:]
    assert f"interrupted by {signal.Signals(signum).name}" in err
    assert not (out / "model_1" / ".eval.partial").exists() and not (out / "model_1" / "eval").exists()
    finished = (out / "model_0" / "eval" / DONE).stat().st_mtime_ns
    again = subprocess.run(recipe_command("evaluate", args, 1), cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "model_0" / "eval" / DONE).stat().st_mtime_ns == finished
    m0, m1 = (json.loads((out / f"model_{i}" / "eval" / "metrics.json").read_text()) for i in (0, 1))
    assert m0 == m1  # the same model and seed: the resumed stage computed what model_0's did
