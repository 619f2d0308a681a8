"""A study: a grid of loop runs ("cells"), each its own resumable run folder, and one study report.

    python recipes/study.py config=recipes/configs/default.yaml \
        grid.paradigm=[iter_sft,iter_dpo,iter_sft_dpo] grid.seed=[0,1] out_dir=runs/study [key=value ...]

Words of the command line:
- `grid.<key>=[v1, v2, ...]`: one axis of the grid, any loop config key (dotted for sections); the
  cells are the Cartesian product of the axes, in the order the axes are given;
- `out_dir=DIR` (default runs/study): the study folder; cell c runs in DIR/cells/<c's name>;
- `cell=I`: run only cell I (0-based, in grid order) — one cell per node or GPU group, each launched
  with the same words plus its own `cell=`; a last call with `report_only=true` (or any call that
  finds every cell finished) writes the study report;
- `report_only=true`: write the study report from the finished cells, run nothing;
- every other word (`config=FILE`, `key=value`) is the loop config shared by every cell; a grid
  value replaces it in its cell. Every cell's config is checked before anything runs (an unknown
  key is an error naming it).

Resuming: the same command again skips finished stages of every cell (each cell is a loop run
folder with the loop's own resume guards). Report: DIR/study.md (paper A's Figure 2: M1's coverage
against each cell's best iteration, with intervals and paired tests) and DIR/comparison/ (every
cell's curves overlaid per metric, paired tests of every cell against the first on the same
questions; `selftrain.report.summary.report_runs`).
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from .. import dist
from ..config import ConfigError, parse_cli
from .config import LoopConfig

STUDY_KEYS = ("out_dir", "cell", "report_only")


@dataclass
class StudyPlan:
    """The parsed command line of a study."""

    out_dir: Path
    shared: list[str]  # the loop words every cell gets
    axes: dict[str, list[Any]]  # grid key -> values
    cell: int | None = None
    report_only: bool = False

    def cells(self) -> list[tuple[str, list[str]]]:
        """(name, loop words) of every cell, in grid order; a cell's words end with its out_dir."""
        out = []
        for values in itertools.product(*self.axes.values()):
            pairs = list(zip(self.axes, values))
            name = ",".join(f"{k}={_word(v)}" for k, v in pairs) or "single"
            name = re.sub(r"[^A-Za-z0-9_.,=+-]", "_", name)
            words = [*self.shared, *(f"{k}={_word(v)}" for k, v in pairs)]
            folder = self.out_dir / "cells" / name
            out.append((name, [*words, f"name={name}", f"out_dir={folder}"]))
        return out


def _word(value: Any) -> str:
    """A grid value as a command-line value (YAML flow style for lists and mappings)."""
    if isinstance(value, (list, dict)):
        return yaml.safe_dump(value, default_flow_style=True).strip()
    return str(value)


def parse_study(argv: Sequence[str]) -> StudyPlan:
    out_dir, cell, report_only = Path("runs/study"), None, False
    shared: list[str] = []
    axes: dict[str, list[Any]] = {}
    for i, word in enumerate(argv):
        if "=" not in word:
            raise ConfigError(f"argument {i + 1} {word!r}: expected key=value")
        key, raw = word.split("=", 1)
        if key.startswith("grid."):
            values = yaml.safe_load(raw) if raw else None
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{key}: a grid axis needs a non-empty list of values, e.g. {key}=[a,b]")
            axes[key[len("grid."):]] = values
        elif key == "out_dir":
            out_dir = Path(raw)
        elif key == "cell":
            cell = int(raw)
        elif key == "report_only":
            report_only = bool(yaml.safe_load(raw))
        elif key in ("name",):
            raise ConfigError("name: each cell is named after its grid values")
        else:
            shared.append(word)
    plan = StudyPlan(out_dir, shared, axes, cell, report_only)
    n = len(plan.cells())
    if cell is not None and not 0 <= cell < n:
        raise ConfigError(f"cell={cell}: the grid has {n} cells (0..{n - 1})")
    return plan


def cell_configs(plan: StudyPlan) -> list[tuple[str, LoopConfig]]:
    """Every cell's checked loop config (a ConfigError names the cell)."""
    out = []
    for name, words in plan.cells():
        try:
            out.append((name, parse_cli(LoopConfig, words)))
        except (ConfigError, ValueError) as e:
            raise ConfigError(f"cell {name}: {e}") from None
    return out


def finished(cfg: LoopConfig) -> bool:
    """Whether the cell's run reached its last iteration's metrics row."""
    path = cfg.run_dir / "metrics.jsonl"
    if not path.is_file():
        return False
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return any(r.get("iteration") == cfg.iterations for r in rows)


def run_study(argv: Sequence[str], show_progress: bool = True) -> Path | None:
    """Run (or resume) the study's cells, then write the report when every cell is finished;
    returns study.md's path, or None when cells are still missing."""
    from .engine import run_loop

    plan = parse_study(argv)
    cells = cell_configs(plan)
    if dist.is_main():
        plan.out_dir.mkdir(parents=True, exist_ok=True)
        layout = {"axes": plan.axes, "shared": plan.shared, "cells": [n for n, _ in cells]}
        (plan.out_dir / "study.json").write_text(json.dumps(layout, indent=2) + "\n")
    if not plan.report_only:
        for i, (_, cfg) in enumerate(cells):
            if plan.cell is None or plan.cell == i:
                run_loop(cfg, show_progress=show_progress)
    missing = [name for name, cfg in cells if not finished(cfg)]
    if missing:
        if dist.is_main():
            print(f"study: {len(missing)} of {len(cells)} cells not finished yet: {', '.join(missing)}")
        return None
    if not dist.is_main():
        return None
    return write_study_report(plan.out_dir, cells)


def figure_2_rows(cells: Sequence[tuple[str, LoopConfig]], alpha: float) -> tuple[list[dict[str, Any]], int]:
    """Paper A's Figure 2 per cell: M1's coverage (interval), the best iteration M*_t by greedy
    pass@1 (the earliest on ties; t >= 1), and the paired test of M*_t against M1 on pass@1 and
    coverage. Every iteration t >= 2 of every cell is tested against its M1 (exact McNemar for
    pass@1, paired t over questions for coverage) and all those tests share alpha by Bonferroni, so
    picking M*_t after looking at the data is covered. Returns the rows and the number of tests."""
    from ..report.runs import load_run
    from ..report.verdicts import apply_error_control, compare_models, load_model_data

    rows, comparisons, best_of = [], [], {}
    for name, cfg in cells:
        run = load_run(cfg.run_dir)
        m1 = run.row(1) or {}
        by_t = {t: (run.row(t) or {}).get("pass@1") for t in run.iterations if t >= 1}
        best = max((t for t in by_t if by_t[t] is not None), key=lambda t: (by_t[t], -t), default=None)
        rows.append({
            "cell": name,
            "paradigm": cfg.paradigm,
            "m1_coverage": m1.get("coverage"),
            "m1_coverage_ci": [m1.get("coverage/ci_low"), m1.get("coverage/ci_high")],
            "m1_pass@1": m1.get("pass@1"),
            "best_iteration": best,
            "best_pass@1": by_t.get(best) if best is not None else None,
            "best_pass@1_ci": [(run.row(best) or {}).get("pass@1/ci_low"),
                               (run.row(best) or {}).get("pass@1/ci_high")] if best is not None else None,
            "tests": [],
        })
        equations = cfg.eval.equations
        candidates = [t for t in by_t if t >= 2]
        if not candidates:
            continue
        base = load_model_data(cfg.run_dir / "iter_1" / "eval", "M1", equations)
        for t in candidates:
            model = load_model_data(cfg.run_dir / f"iter_{t}" / "eval", f"M{t}", equations)
            comparison = compare_models(base, model, ["pass@1", "coverage"])
            comparisons.append(comparison)
            if t == best:
                best_of[len(rows) - 1] = comparison
    control = apply_error_control(comparisons, [], (), alpha)
    for i, comparison in best_of.items():
        rows[i]["tests"] = comparison.rows
    return rows, control.n_secondary


def overlay_curves(cells: Sequence[tuple[str, LoopConfig]], folder: Path) -> dict[str, Path]:
    """{metric: PNG} of every metric with a verdict direction that some cell logged (pass@1 and its
    levels, coverage, pass@k, maj@k, diversity, OOD...), one line per cell with its interval band."""
    from ..report.plots import plot_overlay
    from ..report.runs import load_run
    from ..report.summary import direction

    runs = [load_run(cfg.run_dir) for _, cfg in cells]
    keys = sorted({k for r in runs for k in r.metric_keys() if direction(k) != 0})
    out = {}
    for key in keys:
        path = plot_overlay(runs, key, folder / (re.sub(r"[^A-Za-z0-9_.@-]", "_", key) + ".png"))
        if path is not None:
            out[key] = path
    return out


def _num(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}"


def _ci(pair: Sequence[Any] | None) -> str:
    if not pair or pair[0] is None or pair[1] is None:
        return ""
    return f" [{pair[0]:.3f}, {pair[1]:.3f}]"


def write_study_report(out_dir: Path, cells: Sequence[tuple[str, LoopConfig]]) -> Path:
    """study.md + study_results.json (Figure 2) and comparison/ (overlaid curves, paired tests)."""
    from ..report.logger import write_json_atomic, write_text_atomic
    from ..report.summary import report_runs, suggestion

    alpha = cells[0][1].stats.alpha
    rows, n_tests = figure_2_rows(cells, alpha)
    comparison = report_runs([str(cfg.run_dir) for _, cfg in cells], out_dir / "comparison")
    curves = overlay_curves(cells, out_dir / "curves")
    level = f"{alpha / n_tests:.3g}" if n_tests else "–"
    lines = [
        "# Study", "",
        f"{len(cells)} cells, each a loop run under `cells/`; curves of every cell overlaid and paired "
        f"tests of every cell against `{cells[0][0]}`: [comparison]({comparison.relative_to(out_dir)}).", "",
        "## M1's coverage against the best iteration (paper A, Figure 2)", "",
        f"M*_t = the iteration with the highest greedy pass@1; its change from M1 is tested on the same test "
        f"questions (exact McNemar for pass@1, paired t over questions for coverage). Error control: every "
        f"iteration t >= 2 of every cell is tested against its M1 on both metrics ({n_tests} tests), and "
        f"they share alpha = {alpha:g} by Bonferroni, each at level {level}: on data where nothing changed, "
        f"the chance that any verdict in this table reads progressed or regressed is at most {alpha:g}, "
        "choosing M*_t after looking included. Δ's interval is at that level (it excludes 0 exactly when "
        "the verdict is a change); the M1 and M*_t intervals beside the values are unadjusted 95% ones "
        "(Wilson). The comparison folder has its own report, with its own error control.", "",
        "| cell | M1 coverage | M1 pass@1 | best t | M*_t pass@1 | Δ pass@1 [CI] | p_adj | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        test = next((x for x in r["tests"] if x["metric"] == "pass@1"), None)
        delta = (f"{test['delta']:+.3f}{_ci([test['ci_low'], test['ci_high']])}"
                 if test and test["delta"] is not None else "–")
        p_adj = f"{test['p_adjusted']:.3g}" if test and test["p_adjusted"] is not None else "–"
        verdict = test["verdict"] if test else ("M1 is the best" if r["best_iteration"] == 1 else "–")
        lines.append(
            f"| {r['cell']} | {_num(r['m1_coverage'])}{_ci(r['m1_coverage_ci'])} | {_num(r['m1_pass@1'])} | "
            f"{r['best_iteration'] if r['best_iteration'] is not None else '–'} | "
            f"{_num(r['best_pass@1'])}{_ci(r['best_pass@1_ci'])} | {delta} | {p_adj} | {verdict} |"
        )
    lines += ["", "Paper A's reading of M1's coverage (coverage > 0.5: iterative DPO / SFT-DPO did best; "
              "otherwise iterative SFT), per cell:", ""]
    lines += [f"- {r['cell']}: {suggestion(r['m1_coverage'])}" for r in rows]
    lines += ["", "## Every cell's curves, one plot per metric (shaded: each cell's interval)", ""]
    lines += [f"![{key}]({path.relative_to(out_dir)})" for key, path in curves.items()]
    write_json_atomic(out_dir / "study_results.json", {"figure_2": rows})
    return write_text_atomic(out_dir / "study.md", "\n".join(lines) + "\n")


def run_study_recipe(argv: Sequence[str]) -> Path | None:
    """The recipe's entry: config errors exit with status 2, a kill leaves every cell resumable."""
    import sys

    from .run_folder import exit_cleanly

    try:
        cell_configs(parse_study(argv))  # every cell checked before anything runs
    except (ConfigError, ValueError) as e:
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    report = exit_cleanly(lambda: run_study(argv))
    if report is not None:
        print(f"study report: {report}")
    return report
