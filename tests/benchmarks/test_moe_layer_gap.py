"""benchmarks/moe_layer_gap.py's CPU path: one MoE layer timed as a calibration point, inside a step and alone, with
its routing, on a toy Mixtral."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_cpu_tiny_run(tmp_path):
    pytest.importorskip("triton")
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "moe_layer_gap.py"), "--out", str(tmp_path), "--cpu", "--tiny"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads((tmp_path / "moe_layer_gap.json").read_text())
    assert [row["tokens"] for row in rec["rows"]] == [8, 32] and rec["layers"] == 2
    for row in rec["rows"]:
        assert all(row[k] > 0 for k in ("point", "triton", "in_step", "alone", "alone_random", "step_s"))
        rows = row["routing_step_input"]  # 4 experts, top-2: each token's 2 picks spread over them
        assert rows["mean"] == row["tokens"] * 2 / 4 and rows["mean"] <= rows["max"] <= row["tokens"]
    assert "| 32 |" in (tmp_path / "moe_layer_gap.md").read_text()


def test_bad_model_is_one_line(tmp_path):
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "moe_layer_gap.py"), "--out", str(tmp_path), "--model",
         "llama-3.1-8b"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--model" in r.stderr
