"""tools/gpu_check.py: its dry run (every section on tiny shapes on the CPU) writes the full JSON, a
section past its time box costs only itself, and the wheel list covers what the GPU image lacks."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import gpu_check  # noqa: E402

sys.path.pop(0)


def test_dry_run_writes_every_section(tmp_path):
    proc = subprocess.run([sys.executable, "tools/gpu_check.py", "--dry-run", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["mode"] == "dry-run" and report["schema"] == 1
    sections = report["sections"]
    assert list(sections) == list(gpu_check.SECTIONS)
    log = (tmp_path / "gpu_check.log").read_text()
    for name, s in sections.items():
        assert s["status"] == "ok", (name, s["error"], log[-3000:])
    assert all(step["rc"] == 0 for step in sections["install"]["result"]["steps"])
    assert sections["install"]["result"]["imports"]["selftrain.kernels"] == "ok"
    tests = sections["tests"]["result"]
    assert tests["counts"]["failed"] == tests["counts"]["error"] == 0
    assert any("test_sampler_cuda" in c["name"] and c["outcome"] == "skipped" for c in tests["cases"])
    cases = sections["sampler"]["result"]["cases"]
    assert [c["shape"] for c in cases] == ["tiny", "tiny-8b"]
    for c in cases:
        assert c["selftrain"]["tokens"] > 0 and c["hf"]["tok_s"] > 0 and c["ratio_vs_hf"] > 0
        assert c["roofline"]["decode_steps"] > 0 and 0 < c["roofline"]["roofline_fraction"]
    for mode in ("graphs", "eager"):
        step = sections["profile"]["result"][mode]
        assert step["rows"] == 4 and step["step_wall_ms"] > 0 and step["top"]
    kernels = sections["kernels"]["result"]["shapes"]["tiny"]
    assert {"naive", "fused"} <= set(kernels["variants"]) and "fused" in kernels["vs_naive"]
    assert all("error" not in v for v in kernels["variants"].values())
    variants = sections["trainer"]["result"]["variants"]
    for v in ("selftrain-sft", "selftrain-dpo", "selftrain-sft-lora", "selftrain-dpo-lora"):
        assert variants[v]["tokens_per_s"] > 0 and variants[v]["peak_gib"] > 0, variants[v]
    for v in ("trl-sft", "trl-dpo", "trl-sft-lora", "trl-dpo-lora"):
        assert "tokens_per_s" in variants[v] or "skipped" in variants[v]
    text = (tmp_path / "gpu_check.txt").read_text()
    assert "sampler" in text and "trainer" in text


def test_a_section_past_its_time_box_costs_only_itself():
    with open("/dev/null", "w") as sink:
        s = gpu_check._launch_section("trainer", True, timeout=0.5, log=sink)
    assert s["status"] == "timeout" and "time box" in s["error"] and s["seconds"] < 10


def _install_requires() -> list[str]:
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            return [ast.literal_eval(e) for e in node.value.elts]
    raise AssertionError("no install_requires in setup.py")


def test_wheel_list_covers_what_the_image_lacks():
    from packaging.requirements import Requirement

    image, pinned = gpu_check.image_packages(), gpu_check.pinned_wheels()
    assert all(v for v in pinned.values()), "every carried wheel is pinned (name==version)"
    assert not set(pinned) & image, "a wheel for a package the image has: two versions stop the install"
    lacking = {gpu_check._norm(Requirement(r).name) for r in _install_requires()} - image
    assert lacking - set(pinned) == set(gpu_check.NOT_CARRIED)
    assert {"trl", "liger-kernel"} <= set(pinned)
    assert sum(gpu_check.SECTIONS.values()) <= gpu_check.BUDGET_S


def test_prepared_travel_folder_is_complete_and_under_the_limit():
    if not gpu_check.WHEELS.is_dir():
        pytest.skip("no .gpu_travel here: tools/gpu_wheels.sh prepares it (needs pip's registry)")
    report = gpu_check.check_travel()
    assert report["missing"] == [] and report["total_bytes"] < report["limit_bytes"], report
    assert report["ok"], report
