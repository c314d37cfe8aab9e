"""benchmarks/mla_eager_depths.py's CPU path: the MLA eager measurement at each depth asked, with its table."""

import json

import pytest


def test_cpu_tiny_run(tmp_path, run_benchmark):
    pytest.importorskip("triton")
    r = run_benchmark("mla_eager_depths.py", "--out", tmp_path, "--cpu", "--tiny", "--depths", 1, 2, 3)
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads((tmp_path / "mla_eager_depths.json").read_text())
    assert sorted(rec["median_s"]) == ["1", "2", "3"] and all(v > 0 for v in rec["median_s"].values())
    assert rec["per_layer_s"] == 0.0 and rec["steps"] == 3 * 4  # the CPU: no launch floor, four steps a depth
    md = (tmp_path / "mla_eager_depths.md").read_text()
    assert "| 3 |" in md and "Slope between 1 and 3 layers" in md


def test_one_depth_is_one_line(tmp_path, run_benchmark):
    r = run_benchmark("mla_eager_depths.py", "--out", tmp_path, "--cpu", "--tiny", "--depths", 2)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--depths" in r.stderr
