"""benchmarks/moe_layer_gap.py's CPU path: one MoE layer timed as a calibration point, inside a step and alone, with
its routing, on a toy Mixtral."""

import json

import pytest


def test_cpu_tiny_run(tmp_path, run_benchmark):
    pytest.importorskip("triton")
    r = run_benchmark("moe_layer_gap.py", "--out", tmp_path, "--cpu", "--tiny")
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads((tmp_path / "moe_layer_gap.json").read_text())
    assert [row["tokens"] for row in rec["rows"]] == [8, 32] and rec["layers"] == 2
    for row in rec["rows"]:
        assert all(row[k] > 0 for k in ("point", "triton", "in_step", "alone", "alone_random", "step_s"))
        rows = row["routing_step_input"]  # 4 experts, top-2: each token's 2 picks spread over them
        assert rows["mean"] == row["tokens"] * 2 / 4 and rows["mean"] <= rows["max"] <= row["tokens"]
    assert "| 32 |" in (tmp_path / "moe_layer_gap.md").read_text()


def test_bad_model_is_one_line(tmp_path, run_benchmark):
    r = run_benchmark("moe_layer_gap.py", "--out", tmp_path, "--model", "llama-3.1-8b")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--model" in r.stderr
