"""iter_verify's round logic with scripted fakes (no model runs): selection from the verifier only,
D_t construction, the update-error arithmetic, empty kept sets, resume after a crash, config errors.

The fakes: a task whose gold reward is 1 iff the response contains "RIGHT", a verifier whose û is 1
iff it contains "KEEP" (so kept and correct are independent by construction), a sampler whose
answers depend on which model it was built for (the base, or a trained checkpoint), and a trainer
that writes an empty checkpoint folder.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import selftrain.models as models_module
import selftrain.sampler as sampler_module
import selftrain.tasks as tasks_module
import selftrain.train as train_module
from selftrain.config import parse_cli
from selftrain.loop.steps import SampledQuestion
from selftrain.loop.verify_loop import (
    IterVerifyConfig,
    build_update_set,
    decomposition,
    round_metrics,
    run_iter_verify,
    select_kept,
)
from selftrain.tasks.arith import Arith
from selftrain.verify import base as verify_base

REPO = Path(__file__).resolve().parents[1]

# The base model's 4 answers per prompt, and a trained model's (all kept by the verifier).
BASE_ANSWERS = ["RIGHT KEEP a", "KEEP b", "RIGHT c", "d"]
TRAINED_ANSWERS = ["RIGHT KEEP e", "RIGHT KEEP f", "KEEP g", "h"]


class MarkerTask(Arith):
    name = "marker_arith"

    def reward(self, example: Any, response: str) -> float:
        return 1.0 if "RIGHT" in response else 0.0


class KeepMarkerVerifier(verify_base.Verifier):
    """û = 1 for responses containing "KEEP" (or a fixed score from `score_all`)."""

    name = "scripted"
    score_all: float | None = None
    seen_models: list[str] = []

    def score(self, task: Any, examples: Any, responses_per_example: Any) -> verify_base.VerificationResult:
        KeepMarkerVerifier.seen_models.append(self.sampler.model_name)
        if self.score_all is not None:
            scores = [[self.score_all] * len(r) for r in responses_per_example]
        else:
            scores = [[1.0 if "KEEP" in r else 0.0 for r in row] for row in responses_per_example]
        failed = [[r == "d" for r in row] for row in responses_per_example]  # one "unreadable" verdict
        n = sum(len(r) for r in scores)
        return verify_base.VerificationResult(
            method=self.name, scores=scores, failed=failed, raw=[[""] * len(r) for r in scores],
            n_judgements=n, n_failed=sum(map(sum, failed)),
        )


@dataclass
class FakeCompletion:
    text: str
    finish_reason: str = "stop"


class FakeSampler:
    built: list[str] = []
    generate_calls = 0

    def __init__(self, model: Any, tokenizer: Any = None, **kwargs: Any) -> None:
        self.model_name = str(model)
        self.tokenizer = tokenizer
        FakeSampler.built.append(self.model_name)

    def generate(self, prompts: list[str], n: int = 1, **kwargs: Any) -> list[list[FakeCompletion]]:
        FakeSampler.generate_calls += 1
        answers = TRAINED_ANSWERS if "trainer" in self.model_name else BASE_ANSWERS
        return [[FakeCompletion(answers[j % len(answers)]) for j in range(n)] for _ in prompts]


@dataclass
class FakeResult:
    checkpoint: str
    steps: int
    metrics: dict[str, Any]
    skipped: bool = False


class FakeTrainer:
    calls: list[dict[str, Any]] = []
    crash_at_call: int | None = None

    def __call__(self, cfg: Any, model: str, data: str, out_dir: str, loss: str = "sft",
                 ref_model: Any = None, logger: Any = None) -> FakeResult:
        records = [json.loads(line) for line in Path(data).read_text().splitlines() if line.strip()]
        FakeTrainer.calls.append({"model": model, "loss": loss, "ref": ref_model, "records": records,
                                  "beta": cfg.beta, "rpo_alpha": cfg.rpo_alpha})
        if FakeTrainer.crash_at_call == len(FakeTrainer.calls):
            raise KeyboardInterrupt("simulated crash during training")
        (Path(out_dir) / "model").mkdir(parents=True, exist_ok=True)
        return FakeResult(str(Path(out_dir) / "model"), steps=len(records), metrics={"loss": 0.5})


class PlainTokenizer:
    """No chat template: prompts use the plain layout (and transformers is never imported)."""

    chat_template = None


@pytest.fixture
def fakes(monkeypatch):
    monkeypatch.setattr(models_module, "load_tokenizer", lambda name: PlainTokenizer())
    monkeypatch.setitem(tasks_module._REGISTRY, "marker_arith", MarkerTask)
    monkeypatch.setitem(verify_base._REGISTRY, "scripted", KeepMarkerVerifier)
    monkeypatch.setattr(sampler_module, "Sampler", FakeSampler)
    monkeypatch.setattr(train_module, "train", FakeTrainer())
    monkeypatch.setattr(KeepMarkerVerifier, "score_all", None)
    FakeSampler.built, FakeSampler.generate_calls = [], 0
    FakeTrainer.calls, FakeTrainer.crash_at_call = [], None
    KeepMarkerVerifier.seen_models = []
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("SELFTRAIN_PROGRESS", "0")


def make_cfg(out: Path, *extra: str) -> IterVerifyConfig:
    return parse_cli(IterVerifyConfig, [
        "model=tiny-random", "task=marker_arith", "iterations=2", "n_samples=4", "filter=scripted:tau=0.5",
        "data.task_options={train_size: 3, test_size: 1, ood_size_per_level: 1}", f"out_dir={out}",
        *extra,
    ])


def rows_of(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------- pure functions
def test_select_kept_reads_scores_only_and_supports_ensembles():
    scores = {"mc": [[0.9, 0.2, 0.6]], "cot_binary": [[1.0, 1.0, 0.0]]}
    assert select_kept("mc:tau=0.5", scores) == [[True, False, True]]
    assert select_kept("cot_binary", scores) == [[True, True, False]]
    assert select_kept("mc:tau=0.5&cot_binary", scores) == [[True, False, False]]
    with pytest.raises(ValueError, match="cot_score"):
        select_kept("cot_score:tau=8", scores)


def test_update_set_follows_the_masks_not_the_gold_rewards():
    # Gold says the first answer is right; the verifier kept the second and third.
    q = SampledQuestion("q1", "P", ["right", "wrong", "wrong", "other"], [1.0, 0.0, 0.0, 0.0])
    masks = [[False, True, True, False]]
    sft = build_update_set([q], masks, "sft", None, seed=1)
    assert sft == [{"prompt": "P", "response": "wrong"}]  # duplicates of a prompt collapse
    rpo = build_update_set([q], masks, "rpo", None, seed=1)
    assert sorted((r["chosen"], r["rejected"]) for r in rpo) == [("wrong", "other"), ("wrong", "right")]
    capped = build_update_set([q], masks, "rpo", 1, seed=1)
    assert len(capped) == 1
    assert build_update_set([q], [[False] * 4], "sft", None, seed=1) == []
    assert build_update_set([q], [[True] * 4], "rpo", None, seed=1) == []  # nothing rejected
    with pytest.raises(ValueError, match="mask of 3"):
        build_update_set([q], [[True] * 3], "sft", None, seed=1)


def test_round_metrics_by_hand():
    rewards = [[1, 0, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]]
    masks = [[True, True, False, False], [True, False, False, False], [False] * 4]
    texts = [["a", "b", "c", "d"]] * 3
    m = round_metrics(rewards, masks, texts)
    assert m["accuracy"] == pytest.approx((0.5 + 1 + 0) / 3)
    # q1 kept acc 0.5, q2 1.0, q3 nothing kept -> counts as its own accuracy 0.
    assert m["filtered_accuracy"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert m["gap"] == pytest.approx(0.0)
    assert m["kept_fraction"] == pytest.approx(3 / 12)
    assert m["n_empty"] == 1 and m["n_saturated"] == 1
    assert m["questions_with_kept"] == 2
    assert m["kept_correct_fraction"] == pytest.approx(2 / 3)
    assert m["pass@k/1"] == pytest.approx(m["accuracy"])
    assert m["pass@k/4"] == pytest.approx(2 / 3)
    # every per-prompt gap is 0, so the spread over prompts is 0: a degenerate interval at 0
    assert (m["gap/ci_low"], m["gap/ci_high"]) == (0.0, 0.0)
    assert (m["relative_gap/ci_low"], m["relative_gap/ci_high"]) == (0.0, 0.0)


def test_decomposition_arithmetic():
    parts = decomposition({"accuracy": 0.30, "filtered_accuracy": 0.45}, {"accuracy": 0.40})
    assert parts["decomp/improvement"] == pytest.approx(0.10)
    assert parts["decomp/prev_gap"] == pytest.approx(0.15)
    assert parts["decomp/update_error"] == pytest.approx(-0.05)
    total = parts["decomp/prev_gap"] + parts["decomp/update_error"]
    assert total == pytest.approx(parts["decomp/improvement"])


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="update="):
        IterVerifyConfig(update="ppo")
    with pytest.raises(ValueError, match="filter=gold"):
        IterVerifyConfig(verifier="gold", filter="mc:top=0.5")
    assert IterVerifyConfig(verifier="gold").filter == "gold"
    assert IterVerifyConfig().filter == "cot_binary"
    with pytest.raises(ValueError, match="fixed_verifier"):
        IterVerifyConfig(verifier="some/model", fixed_verifier=True)
    with pytest.raises(ValueError, match="filter"):
        IterVerifyConfig(filter="nonsense:tau=1")
    cfg = IterVerifyConfig(filter="mc:top=0.7&tournament:rounds=2")
    assert cfg.methods == ["mc", "tournament"] and cfg.tournament_rounds == 2
    # Paper B's defaults survive a config file that sets only some keys of a section.
    part = parse_cli(IterVerifyConfig, ["sampling.max_new_tokens=64", "dpo.lr=1e-5"])
    assert (part.sampling.temperature, part.sampling.top_p) == (0.7, 0.9)
    assert (part.dpo.beta, part.dpo.rpo_alpha) == (0.05, 1.0)


# ------------------------------------------------------------------------------------ the engine
def test_rounds_select_by_verifier_and_log_every_key(fakes, tmp_path):
    out = tmp_path / "run"
    final = run_iter_verify(make_cfg(out))
    rows = rows_of(out)
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    r0, r1, r2 = rows
    # f_0: answers RIGHT KEEP / KEEP / RIGHT / d -> J = 0.5, kept = the two KEEP ones -> J[w] = 0.5.
    assert r0["accuracy"] == pytest.approx(0.5)
    assert r0["filtered_accuracy"] == pytest.approx(0.5)
    assert r0["kept_fraction"] == pytest.approx(0.5)
    assert r0["unparseable"] == pytest.approx(0.25) and r0["unparseable/scripted"] == pytest.approx(0.25)
    # D_0 holds exactly the verifier's picks, one of them wrong: gold played no part.
    first = FakeTrainer.calls[0]
    assert first["model"] == "tiny-random" and first["loss"] == "sft"
    assert sorted({r["response"] for r in first["records"]}) == ["KEEP b", "RIGHT KEEP a"]
    # f_1 is the trained checkpoint: RIGHT KEEP, RIGHT KEEP, KEEP, h -> J = 0.5, J[w] = 2/3.
    assert r1["model_source"] == 1
    assert r1["accuracy"] == pytest.approx(0.5)
    assert r1["filtered_accuracy"] == pytest.approx(2 / 3)
    assert r1["gap"] == pytest.approx(2 / 3 - 0.5)
    assert r1["relative_gap"] == pytest.approx((2 / 3 - 0.5) / 0.5)
    assert r1["decomp/update_error"] == pytest.approx(0.5 - 0.5)
    assert r1["decomp/prev_gap"] == pytest.approx(0.0)
    assert r2["decomp/update_error"] == pytest.approx(0.5 - 2 / 3)
    assert r2["decomp/improvement"] == pytest.approx(r2["decomp/prev_gap"] + r2["decomp/update_error"])
    assert "train/skipped" not in r2 and r0["train/skipped"] == 0
    assert r0["train/steps"] == 6  # the fake trainer counts records: 3 prompts x 2 kept
    # The verifier judging round t is f_t (self-verification).
    assert KeepMarkerVerifier.seen_models == ["tiny-random", str(out / "round_0/trainer/model"),
                                              str(out / "round_1/trainer/model")]
    for r in rows:
        for key in ("accuracy", "filtered_accuracy", "kept_fraction", "unparseable", "pass@k/1", "pass@k/2",
                    "pass@k/4", "kept_correct_fraction", "sample/truncated_fraction"):
            assert 0.0 <= r[key] <= 1.0, (key, r[key])
        assert -1.0 <= r["gap"] <= 1.0
    assert final["iteration"] == 2 and final["accuracy"] == r2["accuracy"]
    report = (out / "report.md").read_text()
    assert "| 2 | 50.00 | 66.67 |" in report and "pass@k per round" in report
    assert (out / "plots" / "iter_verify.png").stat().st_size > 0


def test_empty_kept_set_keeps_the_model(fakes, tmp_path, monkeypatch):
    monkeypatch.setattr(KeepMarkerVerifier, "score_all", 0.0)  # nothing passes tau=0.5
    out = tmp_path / "run"
    run_iter_verify(make_cfg(out))
    rows = rows_of(out)
    assert [r["data/empty"] for r in rows] == [1, 1, 1]
    assert [r["model_source"] for r in rows] == [0, 0, 0]
    assert [r.get("train/skipped") for r in rows] == [1, 1, None]
    assert FakeTrainer.calls == []
    assert set(FakeSampler.built) == {"tiny-random"}  # every round sampled f_0
    assert all(r["gap"] == 0.0 for r in rows)
    assert all(r["decomp/prev_gap"] == 0.0 and r["decomp/update_error"] == r["decomp/improvement"]
               for r in rows[1:])
    assert "skipped: empty D_t" in (out / "report.md").read_text()


def test_rpo_update_pairs_kept_with_not_kept_and_uses_the_reference(fakes, tmp_path):
    run_iter_verify(make_cfg(tmp_path / "run", "iterations=1", "update=rpo"))
    call = FakeTrainer.calls[0]
    assert call["loss"] == "rpo" and call["ref"] == "tiny-random"
    assert (call["beta"], call["rpo_alpha"]) == (0.05, 1.0)
    chosen = {r["chosen"] for r in call["records"]}
    rejected = {r["rejected"] for r in call["records"]}
    assert chosen == {"RIGHT KEEP a", "KEEP b"} and rejected == {"RIGHT c", "d"}


def test_fixed_verifiers_f0_another_model_and_gold(fakes, tmp_path):
    run_iter_verify(make_cfg(tmp_path / "f0", "iterations=1", "fixed_verifier=true"))
    assert KeepMarkerVerifier.seen_models == ["tiny-random", "tiny-random"]
    KeepMarkerVerifier.seen_models = []
    run_iter_verify(make_cfg(tmp_path / "other", "iterations=1", "verifier=judge-model"))
    assert KeepMarkerVerifier.seen_models == ["judge-model", "judge-model"]
    # The gold ablation: selection by the task's grader keeps exactly the RIGHT answers.
    FakeTrainer.calls = []
    run_iter_verify(make_cfg(tmp_path / "gold", "iterations=1", "verifier=gold", "filter="))
    assert sorted({r["response"] for r in FakeTrainer.calls[0]["records"]}) == ["RIGHT KEEP a", "RIGHT c"]
    row = rows_of(tmp_path / "gold")[0]
    assert row["filtered_accuracy"] == 1.0 and row["gap"] == pytest.approx(0.5)


def test_resume_after_crash_skips_finished_stages_and_matches(fakes, tmp_path):
    reference = tmp_path / "reference"
    run_iter_verify(make_cfg(reference))
    expected = rows_of(reference)

    out = tmp_path / "crashed"
    FakeTrainer.calls, FakeTrainer.crash_at_call = [], 2  # dies while training f_2
    with pytest.raises(KeyboardInterrupt):
        run_iter_verify(make_cfg(out))
    # an interrupt (like SIGINT / SIGTERM) removes the unfinished stage's partial folder
    assert not (out / "round_1" / ".train.partial").exists() and not (out / "round_1" / "train").exists()
    assert [r["iteration"] for r in rows_of(out)] == [0]
    with open(out / "metrics.jsonl", "a") as fh:  # and a torn line, as a kill mid-append leaves
        fh.write('{"iteration": 1, "accur')
    done_before = {p: p.stat().st_mtime_ns for p in out.glob("round_*/*/.done")}
    calls_before = FakeSampler.generate_calls

    FakeTrainer.crash_at_call = None
    run_iter_verify(make_cfg(out))
    for marker, mtime in done_before.items():  # finished stages were not redone
        assert marker.stat().st_mtime_ns == mtime, marker
    assert FakeSampler.generate_calls == calls_before + 1  # only round 2's sampling ran again
    got = rows_of(out)
    assert [r["iteration"] for r in got] == [0, 1, 2]
    for a, b in zip(expected, got):
        for key, value in a.items():
            if isinstance(value, float):
                assert math.isclose(value, b[key], abs_tol=1e-12), key
            else:
                assert value == b[key], key


def test_changed_settings_on_resume_are_refused(fakes, tmp_path):
    from selftrain.loop.engine import ConfigMismatchError

    out = tmp_path / "run"
    run_iter_verify(make_cfg(out, "iterations=1"))
    with pytest.raises(ConfigMismatchError, match="filter"):
        run_iter_verify(make_cfg(out, "iterations=1", "filter=scripted:tau=0.9"))
    run_iter_verify(make_cfg(out, "iterations=2"))  # more rounds extend the run
    rows = rows_of(out)
    assert [r["iteration"] for r in rows] == [0, 1, 1, 2]  # f_1's row again, now with its update
    assert "train/skipped" not in rows[1] and rows[2]["train/skipped"] == 0
    # gap and relative gap with their t interval over prompts (every prompt alike here: degenerate)
    row = ("| 1 | 50.00 | 66.67 | +16.67 [+16.7, +16.7] | +33.33 [+33.3, +33.3] | 75.00 | 66.67 | 0.00 | 9 | "
           "sft, 9 steps |")
    assert row in (
        out / "report.md").read_text()


def test_yaml_configs_parse():
    for path in sorted((REPO / "recipes" / "configs").glob("iter_verify_*.yaml")):
        cfg = parse_cli(IterVerifyConfig, [f"config={path}"])
        assert cfg.methods, path
        if "_paper_" in path.name:  # paper B: plain 4-shot prompts for base models
            assert (cfg.data.shots, cfg.data.prompt_format) == (4, "fewshot"), path


def test_optional_heldout_evaluation_of_every_model(fakes, tmp_path):
    out = tmp_path / "run"
    run_iter_verify(make_cfg(out, "iterations=1", "heldout.enabled=true", "heldout.n_samples=4"))
    rows = rows_of(out)
    # Greedy = the fake's first answer ("RIGHT KEEP ..."): correct; 2 of the base's 4 samples are.
    assert [r["heldout/pass@1"] for r in rows] == [1.0, 1.0]
    assert rows[0]["heldout/coverage"] == pytest.approx(0.5)
    assert (out / "round_1" / "heldout" / ".done").is_file()
    assert "Held-out test split" in (out / "report.md").read_text()
