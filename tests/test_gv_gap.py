"""recipes/gv_gap.py (selftrain.verify.gv_gap) end to end: in-process with scripted samplers, and
under 2 gloo processes."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_verify import ScriptedSampler, last_solution

from selftrain.config import ConfigError, parse_cli
from selftrain.metrics import generation_verification_gap
from selftrain.verify import gv_gap, keep_masks, parse_filter

REPO = Path(__file__).resolve().parents[1]


class GeneratorAndJudge(ScriptedSampler):
    """A model that answers arithmetic questions (right on even samples when `skill`) and judges.

    As a verifier it says "correct" iff the judged response holds the marker RIGHT (strong) or
    always (weak), and it ranks tournament pairs the same way.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(reply=self._reply, probs=self._probs)
        self.counter = 0

    def generate(self, prompts, n=1, **kwargs):
        if "Question: " in prompts[0] and "Problem:" not in prompts[0]:  # generation
            out = []
            for p in prompts:
                answer = _ANSWERS[p.rsplit("Question: ", 1)[1].split("\nAnswer:", 1)[0].strip()]
                row = []
                for j in range(n):
                    right = j % 2 == 0 if self.name != "bad" else j == 0
                    text = f"RIGHT The answer is {answer}." if right else "WRONG The answer is -7."
                    row.append(type("C", (), {"text": text, "finish_reason": "stop", "token_ids": []})())
                out.append(row)
            return out
        return super().generate(prompts, n=n, **kwargs)

    def _reply(self, prompt: str) -> str:
        if "Solution A:" in prompt:
            a = prompt.rsplit("Solution A:\n", 1)[1].split("\n\nSolution B:", 1)[0]
            return f"Preferred: {'B' if 'WRONG' in a and self.name != 'weak' else 'A'}"
        good = "RIGHT" in last_solution(prompt) or self.name == "weak"
        return f"Verdict: {'correct' if good else 'incorrect'}\nScore: {9 if good else 2}"

    def _probs(self, prompt: str) -> dict[str, float]:
        good = "RIGHT" in last_solution(prompt) or self.name == "weak"
        return {"Correct": 0.8, "In": 0.2} if good else {"Correct": 0.1, "In": 0.9}


_ANSWERS: dict[str, str] = {}


@pytest.fixture
def scripted(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")  # the environment wins over wandb_mode
    from selftrain.tasks import get_task

    task = get_task("arith")
    for ex in task.load("test", limit=5):
        _ANSWERS[task.format_question(ex)] = ex.answer
    made: list[str] = []

    def factory(name: str):
        made.append(name)
        return GeneratorAndJudge(name)

    return factory, made


def _cfg(tmp_path: Path, *extra: str):
    words = [f"out_dir={tmp_path / 'run'}", "limit=4", "n=4", "wandb_mode=disabled", *extra]
    return parse_cli(gv_gap.GVGapConfig, words)


def test_gv_gap_in_process_tables_and_recomputable_rows(tmp_path: Path, scripted) -> None:
    factory, made = scripted
    cfg = _cfg(tmp_path, "model=strong", "filters=[mc:top=0.5,mc:tau=0.5,cot_binary,cot_score:tau=8,"
                         "tournament:rounds=1,tournament:rounds=2,mc:tau=0.5&cot_binary]")
    report = gv_gap.run(cfg, factory)
    out = Path(cfg.out_dir)
    row = report["rows"][0]
    assert row["accuracy"] == pytest.approx(0.5)
    # (round 1 can pair two right answers, so a wrong one may survive it; the champion is always right)
    perfect = ("cot_binary", "cot_score:tau=8", "mc:tau=0.5", "tournament:rounds=2", "mc:tau=0.5&cot_binary")
    for spec in perfect:
        assert row["results"][spec]["gap"] == pytest.approx(0.5), spec  # a perfect verifier
        assert row["results"][spec]["relative_gap"] == pytest.approx(1.0), spec
    assert row["unparseable_rate"] == {"mc": 0.0, "cot_binary": 0.0, "cot_score": 0.0, "tournament": 0.0}
    assert row["cot_score_histogram"]["mode"] in (2, 9)
    assert row["tournament"]["n_comparisons"] == 4 * 3
    md = (out / "results.md").read_text()
    assert "| strong | strong | 50.00 |" in md and "CoT-S τ=8" in md and "To round 2" in md
    # every number can be recomputed from responses.jsonl
    rows = [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]
    assert len(rows) == 4 * 4
    assert {"question_id", "response_index", "reward", "mc", "tournament"} <= set(rows[0])
    by_q: dict[str, list[dict]] = {}
    for r in rows:
        by_q.setdefault(r["question_id"], []).append(r)
    rewards = [[r["reward"] for r in qs] for qs in by_q.values()]
    scores = {m: [[r[m] for r in qs] for qs in by_q.values()] for m in cfg.methods}
    for text in cfg.filters:
        again = generation_verification_gap(rewards, keep_masks(parse_filter(text), scores))
        assert again["gap"] == pytest.approx(row["results"][text]["gap"])
    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"][0]["results"]["cot_binary"]["gap"] == pytest.approx(0.5)
    # paper B's per-model figures (Figs. 5, 6, 7, 19): data in results.json, one PNG each
    fig = saved["rows"][0]["figures"]
    assert [r["threshold"] for r in fig["threshold_sweep"]["cot_score:tau"]] == list(range(1, 11))
    sweep = {r["threshold"]: r["gap"] for r in fig["threshold_sweep"]["cot_score:tau"]}
    assert sweep[8] == pytest.approx(0.5) and sweep[1] == pytest.approx(0.0)  # tau 1 keeps everything
    assert [r["threshold"] for r in fig["threshold_sweep"]["mc:top"]][0] == 0.1
    by_round = fig["tournament_by_round"]
    assert [r["round"] for r in by_round] == [0, 1, 2] and by_round[0]["filtered_accuracy"] == 0.5
    assert by_round[2]["filtered_accuracy"] == pytest.approx(1.0)  # the champion is always right
    steps = by_round[1]["gap_vs_previous"] + by_round[2]["gap_vs_previous"]
    assert by_round[2]["gap"] == pytest.approx(steps)
    assert fig["gap_distribution"]["cot_binary"]["mean"] == pytest.approx(0.5)
    assert fig["gap_accuracy"]["cot_binary"]["n"] == 4
    for png in ("threshold_sweep", "tournament_rounds", "gap_histogram", "gap_vs_accuracy"):
        assert (out / f"{png}_strong.png").stat().st_size > 1000, png
    assert made == ["strong"]  # one model load for generation and all four methods
    # resumable: a second run loads no model and gives the same numbers
    made.clear()
    again_report = gv_gap.run(cfg, factory)
    assert made == [] and again_report["rows"][0]["results"] == report["rows"][0]["results"]
    # a finished stage is never reused under other settings
    changed = parse_cli(gv_gap.GVGapConfig, [f"{k}={v}" for k, v in (("out_dir", cfg.out_dir), ("limit", 4),
                                             ("n", 4), ("model", "strong"), ("verify_shots", 1))])
    with pytest.raises(ConfigError, match="other settings.*shots"):
        gv_gap.run(changed, factory)


def test_gv_gap_cross_verification_matrix_and_flops_plot(tmp_path: Path, scripted) -> None:
    factory, made = scripted
    cfg = _cfg(tmp_path, "generators=[strong,bad]", "verifiers=[strong,bad,weak]", "methods=[mc,cot_score]",
               "flops={strong: 1.0e21, bad: 1.0e20}")
    report = gv_gap.run(cfg, factory)
    out = Path(cfg.out_dir)
    cross = report["cross"]["mc:top=0.8"]
    assert cross["generators"] == ["strong", "bad"] and cross["verifiers"] == ["strong", "bad", "weak"]
    strong_row, weak_col = cross["gap"][0], [r[2] for r in cross["gap"]]
    assert strong_row[0] == pytest.approx(0.5) and weak_col == [pytest.approx(0.0)] * 2
    assert (out / "cross_mc--top--0.8.png").stat().st_size > 1000
    assert (out / "rel_gap_vs_flops.png").stat().st_size > 1000
    assert "Cross-verification gap" in (out / "results.md").read_text()
    assert set(report["flops"]) == {"mc:top=0.8", "cot_score:tau=8"}  # from the self-verification rows
    assert sorted(f for f, _ in report["flops"]["mc:top=0.8"]) == [1e20, 1e21]
    # each model is loaded once per role (generation, then verification with the verifier outer)
    assert made == ["strong", "bad", "strong", "bad", "weak"]


def test_gv_gap_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown"):
        _cfg(tmp_path, "methods=[vote]")
    with pytest.raises(ConfigError, match="flops.m: expected a number"):
        _cfg(tmp_path, "flops={m: lots}")
    with pytest.raises(ConfigError, match="not among the methods"):
        _cfg(tmp_path, "methods=[mc]", "filters=[cot_binary]")
    cfg = _cfg(tmp_path, "methods=[mc]")  # the default filters shrink to the methods run
    assert cfg.filters == ["mc:top=0.7", "mc:top=0.8", "mc:tau=0.7", "mc:tau=0.8"]
    assert gv_gap.main([f"out_dir={tmp_path}", "n=0"]) == 2
    with pytest.raises(ConfigError, match="prompt_format"):
        _cfg(tmp_path, "prompt_format=plain")
    papers = sorted((REPO / "recipes" / "configs").glob("gv_gap_paper_*.yaml"))
    assert len(papers) == 4, papers
    for path in papers:
        paper = parse_cli(gv_gap.GVGapConfig, [f"config={path}"])
        assert (paper.shots, paper.prompt_format) == (4, "fewshot"), path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gv_gap_tiny_random_under_two_gloo_processes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = dict(os.environ, WANDB_MODE="disabled", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               SELFTRAIN_PROGRESS="0")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(REPO / "recipes" / "gv_gap.py"), "model=tiny-random",
           f"out_dir={out}", "limit=3", "n=2", "max_new_tokens=8", "verify_max_new_tokens=8",
           "kv_cache_tokens=8192", "filters=[mc:top=0.5,cot_binary,cot_score:tau=8,tournament:rounds=1]"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "### Gap (%)" in proc.stdout and "| tiny-random | tiny-random |" in proc.stdout
    rows = [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * 2
    report = json.loads((out / "results.json").read_text())
    assert set(report["rows"][0]["unparseable_rate"]) == {"mc", "cot_binary", "cot_score", "tournament"}


def test_gv_gap_flops_from_the_built_in_table_with_a_fitted_slope(tmp_path: Path, scripted) -> None:
    from scipy.stats import linregress

    from selftrain.verify.flops import pretraining_flops

    factory, _ = scripted
    models = ["smollm2-135m", "meta-llama/Llama-2-7b-hf", "weak"]  # weak: a verifier that keeps all
    cfg = _cfg(tmp_path, f"generators=[{','.join(models)}]", "methods=[mc]", "flops={weak: 1.0e19}")
    report = gv_gap.run(cfg, factory)
    assert report["flops_source"] == {"smollm2-135m": "built-in", "meta-llama/Llama-2-7b-hf": "built-in",
                                      "weak": "config"}
    points = report["flops"]["mc:top=0.8"]
    assert sorted(f for f, _ in points) == sorted(pretraining_flops(models, {"weak": 1e19}).values())
    assert len({v for _, v in points}) > 1  # the line is fitted to values that differ
    fit = report["flops_fit"]["mc:top=0.8"]
    want = linregress([math.log10(f) for f, _ in points], [v for _, v in points])
    assert fit["slope"] == pytest.approx(want.slope) and fit["n"] == 3
    assert fit["slope_ci"][0] <= fit["slope"] <= fit["slope_ci"][1]
    out = Path(cfg.out_dir)
    assert (out / "rel_gap_vs_flops.png").stat().st_size > 1000
    assert "points per decade" in (out / "results.md").read_text()
    assert json.loads((out / "results.json").read_text())["flops_fit"]["mc:top=0.8"]["n"] == 3
