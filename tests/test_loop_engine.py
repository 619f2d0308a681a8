"""The loop engine in one process with a fake sampler and a fake trainer (fast; the real modules
run in tests/test_loop_e2e.py): stage artifacts, resume after a crash, empty D_t, wiring of
losses, reference models and seeds, logging and the report."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest

import selftrain.models
import selftrain.sampler
import selftrain.train
from selftrain.loop.config import (
    DataSection,
    DPOSection,
    EvalSection,
    InterventionSection,
    LoopConfig,
    WandbSection,
)
from selftrain.loop.engine import ConfigMismatchError, run_loop
from selftrain.train import TrainConfig, TrainResult

# 12 test questions: a t-test verdict over questions needs at least 10 (stats.MIN_QUESTIONS)
ARITH = {"train_size": 12, "test_size": 12, "ood_size_per_level": 2}


def _unit(text: str) -> float:
    return zlib.crc32(text.encode()) / 2**32


class FakeSampler:
    """Answers arith questions; a model of version v is right with probability 0.2 + 0.25 v.

    Greedy answers are right when a fixed per-question draw is below that probability, so a later
    model solves a superset of what an earlier one solves (IS(t) is not empty)."""

    def __init__(self, model, tokenizer=None, **kwargs):
        self.version = _version(model)
        self.p = min(0.2 + 0.25 * self.version, 0.95)

    def generate(
        self,
        prompts,
        n=1,
        temperature=0.0,
        top_p=1.0,
        max_new_tokens=512,
        stop=None,
        seed=0,
        logprobs=False,
        **kwargs,
    ):
        out = []
        for i, prompt in enumerate(prompts):
            answer = _ANSWERS[prompt]
            row = []
            for j in range(n):
                draw = _unit(prompt) if temperature == 0 else _unit(f"{seed}|{i}|{j}|{self.version}|{prompt}")
                wrong = (j % 3) + 1
                value = answer if draw < self.p else answer + wrong
                text = f"We add {j % 4} + {wrong} = {j % 4 + wrong}.\nThe answer is {value}."
                row.append(SimpleNamespace(text=text, token_ids=[], finish_reason="stop", logprobs=None))
            out.append(row)
        return out


_ANSWERS: dict[str, int] = {}
TRAIN_CALLS: list[dict] = []


def _version(model: str) -> int:
    marker = Path(str(model)) / "version.txt"
    return int(marker.read_text()) if marker.is_file() else 0


def fake_train(cfg, model, data, out_dir, loss="sft", ref_model=None, logger=None):
    records = [json.loads(line) for line in Path(data).read_text().splitlines()]
    TRAIN_CALLS.append(
        {
            "model": model,
            "loss": loss,
            "ref_model": ref_model,
            "seed": cfg.seed,
            "lr": cfg.lr,
            "label_smoothing": cfg.label_smoothing,
            "records": len(records),
            "out_dir": str(out_dir),
        }
    )
    if FAIL.get("at") == len(TRAIN_CALLS):
        raise RuntimeError("simulated crash inside training")
    final = Path(out_dir) / "model"
    final.mkdir(parents=True, exist_ok=True)
    (final / "version.txt").write_text(str(_version(model) + 1))
    logger.log({"loss": 0.5}, step=1)
    return TrainResult(final, steps=len(records), metrics={"loss": 0.25 * len(records), "step_time_s": 3.0})


FAIL: dict[str, int] = {}


@pytest.fixture
def fakes(monkeypatch):
    from selftrain.tasks import get_task

    task = get_task("arith", **ARITH)
    _ANSWERS.clear()
    for split in ("train", "test", "ood"):
        for ex in task.load(split):
            _ANSWERS[task.prompt(ex, None)] = ex.answer
    TRAIN_CALLS.clear()
    FAIL.clear()
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setattr(selftrain.sampler, "Sampler", FakeSampler)
    monkeypatch.setattr(selftrain.train, "train", fake_train)
    monkeypatch.setattr(selftrain.models, "load_tokenizer", lambda name: SimpleNamespace(chat_template=None))
    return task


@pytest.fixture
def no_plots(monkeypatch):
    """Plots cost ~0.3 s each; only the full-run test draws them."""
    import selftrain.report.summary

    monkeypatch.setattr(selftrain.report.summary, "plot_run", lambda run, folder, *rest: [])


def make_cfg(out: Path, **kw) -> LoopConfig:
    base = dict(
        paradigm="iter_sft_dpo",
        model="fake-base",
        task="arith",
        iterations=3,
        n_samples=4,
        max_pairs_per_question=2,
        out_dir=str(out),
        data=DataSection(task_options=dict(ARITH)),
        eval=EvalSection(n_samples=4, is_ns=[2, 4, 8], semantic=False),
        sft=TrainConfig(lr=1e-5),
        dpo=TrainConfig(lr=2e-7, beta=0.3),
        wandb=WandbSection(mode="disabled"),
    )
    base.update(kw)
    return LoopConfig(**base)


def rows_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_full_run_artifacts_wiring_and_metrics(fakes, tmp_path):
    out = tmp_path / "run"
    final = run_loop(make_cfg(out), show_progress=False)
    rows = rows_of(out)
    assert [r["iteration"] for r in rows] == [0, 1, 2, 3]
    assert [r["step_kind"] for r in rows] == ["base", "gold_sft", "sft", "dpo"]
    assert final == json.loads((out / "iter_3" / "eval" / "metrics.json").read_text())
    for t in range(4):
        assert (out / f"iter_{t}" / "eval" / ".done").is_file()
    for t in (2, 3):
        assert (out / f"iter_{t}" / "sample" / "samples.jsonl").is_file()
    # Losses, bases and references: M1 = SFT(M0, gold); M2 = SFT(M1); M3 = DPO(M2, ref M2).
    m1 = str(out / "iter_1" / "trainer" / "model")
    m2 = str(out / "iter_2" / "trainer" / "model")
    assert [(c["model"], c["loss"], c["ref_model"]) for c in TRAIN_CALLS] == [
        ("fake-base", "sft", None),
        (m1, "sft", None),
        (m2, "dpo", m2),
    ]
    assert TRAIN_CALLS[0]["records"] == ARITH["train_size"]  # the gold set: one per question
    assert [c["lr"] for c in TRAIN_CALLS] == [1e-5, 1e-5, 2e-7]
    assert len({c["seed"] for c in TRAIN_CALLS}) == 3  # seeds derived per iteration
    # DPO pairs: at most max_pairs_per_question per question.
    pairs = [json.loads(x) for x in (out / "iter_3" / "build" / "train.jsonl").read_text().splitlines()]
    assert pairs and len(pairs) <= 2 * ARITH["train_size"]
    assert all(set(p) == {"prompt", "chosen", "rejected"} for p in pairs)
    # Metrics: every key, in range; the fake models improve, so IS(t) is not empty.
    for r in rows:
        assert 0 <= r["pass@1"] <= 1 and 0 <= r["coverage"] <= 1
        assert {"pass@k/1", "pass@k/2", "pass@k/4", "ood/accuracy", "ood/level_5", "pass@1/level_3"} <= set(r)
        assert r["pass@k/1"] <= r["pass@k/2"] <= r["pass@k/4"]
        assert {"maj@k/1", "maj@k/2", "maj@k/4"} <= set(r) and r["maj@k/1"] == pytest.approx(r["coverage"])
        assert "diversity/correct/distinct_n" in r and "diversity/incorrect/equations" in r
    assert rows[3]["pass@1"] > rows[1]["pass@1"]
    assert rows[3]["is/size"] > 0 and 0 <= rows[3]["is/m1_pass@2"] <= rows[3]["is/m1_pass@8"] <= 1
    assert "is/size" not in rows[1]
    assert rows[1]["train/loss"] == 0.25 * ARITH["train_size"] and "train/step_time_s" not in rows[1]
    # M1 was sampled max(is_ns) = 8 times per test question, the metrics used the first 4.
    details = json.loads((out / "iter_1" / "eval" / "details.json").read_text())
    assert details["extra_n"] == 8 and details["n_samples"] == 4
    assert (out / "iter_1" / "trainer" / "train_log.jsonl").is_file()
    report = (out / "report.md").read_text()
    assert "| `pass@1` |" in report and "since M1" in report and "coverage" in report
    assert "maj@k/4" in report
    # maj@k gets a paired verdict with an interval, from details.json's per-question votes
    maj = next(v for v in json.loads((out / "verdicts.json").read_text())
               if (v["metric"], v["baseline"], v["model"]) == ("maj@k/4", "M1", "M3"))
    assert maj["value"] == pytest.approx(rows[3]["maj@k/4"])
    assert maj["ci_low"] <= maj["delta"] <= maj["ci_high"]
    assert (out / "plots" / "pass_at_1.png").is_file() and (out / "plots" / "is_pass_at_n.png").is_file()


@pytest.mark.parametrize("reference", ["previous", "sft", "base"])
def test_dpo_reference_is_the_configured_model(fakes, no_plots, tmp_path, reference):
    out = tmp_path / "run"
    run_loop(make_cfg(out, paradigm="iter_dpo", dpo=DPOSection(lr=2e-7, beta=0.3, reference=reference)),
             show_progress=False)
    m1, m2 = (str(out / f"iter_{t}" / "trainer" / "model") for t in (1, 2))
    want = {"previous": [m1, m2], "sft": [m1, m1], "base": ["fake-base", "fake-base"]}[reference]
    assert [c["loss"] for c in TRAIN_CALLS] == ["sft", "dpo", "dpo"]
    assert [c["model"] for c in TRAIN_CALLS[1:]] == [m1, m2]  # each step still starts from M_{t-1}
    assert [c["ref_model"] for c in TRAIN_CALLS[1:]] == want


def test_dpo_reference_is_checked_and_must_be_previous_with_lora(tmp_path):
    with pytest.raises(ValueError, match="dpo.reference='m1'"):
        DPOSection(reference="m1")
    with pytest.raises(ValueError, match="with lora"):
        make_cfg(tmp_path, dpo=DPOSection(reference="sft"), lora={"r": 4})
    # a plain TrainConfig in code keeps the default reference
    assert make_cfg(tmp_path).dpo.reference == "previous"


def _records(out: Path, t: int) -> list[dict]:
    return [json.loads(x) for x in (out / f"iter_{t}" / "build" / "train.jsonl").read_text().splitlines()]


def test_interventions_are_off_by_default(fakes, no_plots, tmp_path):
    out = tmp_path / "run"
    run_loop(make_cfg(out, paradigm="iter_sft"), show_progress=False)
    m1, m2 = (str(out / f"iter_{t}" / "trainer" / "model") for t in (1, 2))
    assert [c["model"] for c in TRAIN_CALLS] == ["fake-base", m1, m2]  # M_t from M_{t-1}
    gold = {json.dumps(r) for r in _records(out, 1)}
    assert not gold & {json.dumps(r) for r in _records(out, 2)}  # D_2 alone, no gold records
    prompts = [r["prompt"] for r in _records(out, 2)]
    assert len(prompts) > len(set(prompts))  # several correct samples of one question are kept


def test_restart_from_base_trains_every_round_from_m0(fakes, no_plots, tmp_path):
    out = tmp_path / "run"
    restart = InterventionSection(restart_from_base=True)
    run_loop(make_cfg(out, paradigm="iter_dpo", interventions=restart), show_progress=False)
    m1, m2 = (str(out / f"iter_{t}" / "trainer" / "model") for t in (1, 2))
    assert [c["model"] for c in TRAIN_CALLS] == ["fake-base"] * 3
    assert [c["ref_model"] for c in TRAIN_CALLS[1:]] == [m1, m2]  # dpo.reference previous: M_{t-1}
    # the samples still come from M_{t-1}: M2 (version 1) samples differently from M0
    assert (out / "iter_3" / "sample" / "samples.jsonl").is_file()


def test_accumulate_data_trains_on_every_earlier_set_of_the_same_format(fakes, no_plots, tmp_path):
    out = tmp_path / "run"
    accumulate = InterventionSection(accumulate_data=True)
    cfg = make_cfg(out, iterations=4, paradigm="iter_sft_dpo", interventions=accumulate)
    run_loop(cfg, show_progress=False)
    key = lambda rows: {json.dumps(r, sort_keys=True) for r in rows}  # noqa: E731
    d1, d2, d3, d4 = (key(_records(out, t)) for t in (1, 2, 3, 4))
    # kinds: gold_sft, sft, dpo, sft -> D_2 ⊇ D_1, D_3 only pairs, D_4 ⊇ D_2 (so ⊇ D_1)
    assert d1 < d2 and d2 < d4
    assert all("chosen" in json.loads(r) for r in d3)
    assert len(_records(out, 4)) == len(d4)  # no record twice
    assert [c["records"] for c in TRAIN_CALLS] == [len(d1), len(d2), len(d3), len(d4)]


def test_max_samples_per_question_caps_each_question(fakes, no_plots, tmp_path):
    out = tmp_path / "run"
    cap = InterventionSection(max_samples_per_question=1)
    run_loop(make_cfg(out, paradigm="iter_sft", interventions=cap), show_progress=False)
    prompts = [r["prompt"] for r in _records(out, 2)]
    assert prompts and len(prompts) == len(set(prompts))  # at most one correct sample per question
    with pytest.raises(ValueError, match="max_samples_per_question"):
        InterventionSection(max_samples_per_question=0)
    with pytest.raises(ValueError, match="restart_from_base with lora"):
        make_cfg(tmp_path, interventions=InterventionSection(restart_from_base=True), lora={"r": 4})


def test_crash_then_rerun_ends_with_the_same_metrics(fakes, no_plots, tmp_path):
    reference = tmp_path / "ref"
    run_loop(make_cfg(reference), show_progress=False)
    expected = rows_of(reference)

    TRAIN_CALLS.clear()
    FAIL["at"] = 3  # the DPO training of iteration 3 crashes
    crashed = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_loop(make_cfg(crashed), show_progress=False)
    assert not (crashed / "iter_3" / "train").exists()
    assert [r["iteration"] for r in rows_of(crashed)] == [0, 1, 2]
    FAIL.clear()
    TRAIN_CALLS.clear()
    run_loop(make_cfg(crashed), show_progress=False)
    assert [c["loss"] for c in TRAIN_CALLS] == ["dpo"]  # only the unfinished stage ran again
    assert rows_of(crashed) == expected


def test_torn_metrics_line_is_repaired_and_not_duplicated(fakes, no_plots, tmp_path):
    out = tmp_path / "run"
    run_loop(make_cfg(out, iterations=1), show_progress=False)
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write('{"iteration": 2, "pass@')  # a kill in the middle of an append
    run_loop(make_cfg(out, iterations=2), show_progress=False)  # more iterations: allowed on resume
    assert [r["iteration"] for r in rows_of(out)] == [0, 1, 2]


def test_empty_dataset_keeps_the_previous_model(fakes, no_plots, tmp_path, monkeypatch):
    monkeypatch.setattr(FakeSampler, "generate", _always_wrong(FakeSampler.generate))
    out = tmp_path / "run"
    run_loop(make_cfg(out, paradigm="iter_dpo", iterations=2), show_progress=False)
    rows = rows_of(out)
    assert rows[2]["data/empty"] == 1 and rows[2]["train/skipped"] == 1 and rows[2]["data/records"] == 0
    assert len(TRAIN_CALLS) == 1  # only the gold SFT trained
    result = json.loads((out / "iter_2" / "train" / "result.json").read_text())
    assert result["source"] == 1  # M2 is M1's checkpoint
    assert rows[2]["coverage"] == 0.0 and rows[2]["is/size"] == 0 and rows[2]["is/m1_pass@2"] is None


def _always_wrong(generate):
    def wrapped(self, prompts, n=1, **kw):
        out = generate(self, prompts, n=n, **kw)
        for p, row in zip(prompts, out):
            for c in row:
                c.text = f"The answer is {_ANSWERS[p] + 1}."
        return out

    return wrapped


def test_rerun_with_other_settings_is_refused(fakes, no_plots, tmp_path):
    out = tmp_path / "run"
    run_loop(make_cfg(out, iterations=1), show_progress=False)
    with pytest.raises(ConfigMismatchError, match="seed"):
        run_loop(make_cfg(out, iterations=1, seed=5), show_progress=False)
    with pytest.raises(ConfigMismatchError, match="dpo.reference"):
        run_loop(make_cfg(out, iterations=1, dpo=DPOSection(reference="base")), show_progress=False)


def test_replicates_resume_and_pool(fakes, no_plots, tmp_path):
    """replicates=2: replicate 1 is the same loop with its own seed in replicate_1/; a crash inside it
    resumes there only; the report pools both replicates."""
    reference = tmp_path / "ref"
    run_loop(make_cfg(reference, replicates=2), show_progress=False)
    expected = rows_of(reference / "replicate_1")

    TRAIN_CALLS.clear()
    FAIL["at"] = 5  # replicate 0 trains 3 times; the 5th call is replicate 1's SFT step at t = 2
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_loop(make_cfg(out, replicates=2), show_progress=False)
    assert [r["iteration"] for r in rows_of(out)] == [0, 1, 2, 3]
    assert [r["iteration"] for r in rows_of(out / "replicate_1")] == [0, 1]
    FAIL.clear()
    TRAIN_CALLS.clear()
    run_loop(make_cfg(out, replicates=2), show_progress=False)
    assert [c["loss"] for c in TRAIN_CALLS] == ["sft", "dpo"]  # only replicate 1's unfinished stages
    assert all(c["out_dir"].startswith(str(out / "replicate_1")) for c in TRAIN_CALLS)
    assert rows_of(out / "replicate_1") == expected

    cfg0 = json.loads((out / "config.json").read_text())
    cfg1 = json.loads((out / "replicate_1" / "config.json").read_text())
    assert cfg0["replicates"] == 2 and cfg1["seed"] != cfg0["seed"]
    samples0 = (out / "iter_2" / "sample" / "samples.jsonl").read_text()
    assert samples0 != (out / "replicate_1" / "iter_2" / "sample" / "samples.jsonl").read_text()

    report = (out / "report.md").read_text()
    assert "pooled over 2 replicate runs" in report
    assert "## Replicates: mean ± standard deviation over 2 runs" in report
    head = next(
        v for v in json.loads((out / "verdicts.json").read_text())
        if (v["metric"], v["baseline"], v["model"]) == ("coverage", "M1", "M3")
    )
    c0, c1 = rows_of(out)[3]["coverage"], expected[3]["coverage"]
    assert head["value"] == pytest.approx((c0 + c1) / 2)
    assert head["ci_low"] <= head["delta"] <= head["ci_high"]
    assert head["test"] == "two-level t" and head["family"] == "primary"


def test_evaluate_recipe_reports_paired_verdicts_and_logs_intervals(fakes, no_plots, tmp_path):
    from selftrain.loop.recipe import EvaluateConfig, evaluate_checkpoints

    run = tmp_path / "run"
    run_loop(make_cfg(run, iterations=1), show_progress=False)
    out = tmp_path / "eval"
    cfg = EvaluateConfig(
        checkpoints=["fake-base", str(run / "iter_1" / "trainer" / "model")],
        is_reference=0,
        out_dir=str(out),
        data=DataSection(task_options=dict(ARITH)),
        eval=EvalSection(n_samples=4, is_ns=[2, 4], semantic=False),
        wandb=WandbSection(mode="disabled"),
    )
    evaluate_checkpoints(cfg, show_progress=False)
    rows = rows_of(out)
    assert rows[1]["pass@1/ci_low"] <= rows[1]["pass@1"] <= rows[1]["pass@1/ci_high"]
    assert rows[1]["maj@k/4/ci_low"] <= rows[1]["maj@k/4"] <= rows[1]["maj@k/4/ci_high"]
    assert "is/m1_pass@2/ci_low" in rows[1] or rows[1]["is/size"] == 0
    report = (out / "report.md").read_text()
    assert "M1 against M0 on the same 12 test questions" in report
    verdicts = json.loads((out / "verdicts.json").read_text())
    assert {(v["baseline"], v["model"]) for v in verdicts} == {("M0", "M1")}
