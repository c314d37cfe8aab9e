"""The CPU paths of session 24's GPU scripts: gemm_shapes_gpu.py (the catalogue's GEMM shapes against the curve, its
repeatability table), loop_profile_gpu.py (the serving loop's decode step, kernels differenced between two runs)
and decode_kernels_gpu.py (the rope + KV-write kernel and decode attention's tiles)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import gemm_shapes_gpu  # noqa: E402


def test_gemm_shapes_cpu_path_prices_each_shape(tmp_path, run_benchmark):
    r = run_benchmark("gemm_shapes_gpu.py", "--out", tmp_path, "--cpu", "--tiny")
    assert r.returncode == 0, r.stderr[-2000:]
    raw = json.loads((tmp_path / "gemm_shapes.json").read_text())
    recs = raw["models"]["tiny"]
    # the toy model's three dense shapes and its LM head, at each of the toy row counts, timed
    assert {(x["k"], x["n"]) for x in recs} == {(64, 128), (64, 64), (64, 192), (96, 64), (64, 128)}
    assert sorted({x["m"] for x in recs}) == [1, 4, 16] and all(x["seconds"] > 0 for x in recs)
    md = (tmp_path / "gemm_shapes.md").read_text()
    assert md.count("| tiny |") == len(recs) + 1  # a line per point, then the summary's


def test_repeat_report_spreads_and_ratios():
    """The repeatability table: spread over rounds, heated over plain and cuBLASLt over default, per point."""
    recs = [
        {"model": "m", "name": "qkv", "k": 8, "n": 16, "m": 4, "round": r, "heat_s": h, "blas": "default",
         "seconds": s}
        for r, h, s in ((0, 0.0, 1e-5), (1, 0.0, 1.2e-5), (0, 0.2, 2e-5), (1, 0.2, 2e-5))
    ] + [{"model": "m", "name": "qkv", "k": 8, "n": 16, "m": 4, "round": 0, "heat_s": 0.2, "blas": "cublaslt",
          "seconds": 1e-5}]  # fmt: skip
    line = next(x for x in gemm_shapes_gpu.repeat_report(recs).splitlines() if x.startswith("| m |"))
    cells = [c.strip() for c in line.split("|")[1:-1]]
    assert cells[3:] == ["10.0-12.0", "20.0%", "20.0-20.0", "0.0%", "1.818", "0.500"]


def test_loop_profile_cpu_path_differences_two_runs(tmp_path, run_benchmark):
    r = run_benchmark("loop_profile_gpu.py", "--out", tmp_path, "--cpu", "--tiny", "--loops", "waits")
    assert r.returncode == 0, r.stderr[-2000:]
    raw = json.loads((tmp_path / "loop_profile.json").read_text())
    (key, case), *_ = raw["cases"].items()
    assert key.endswith("b4 waits") and raw["long"] > raw["short"]
    # on the CPU the rows are torch ops; per decode step each is positive and the matmuls are there
    assert case["top"] and all(x["us_per_step"] > 0 for x in case["top"])
    assert any("mm" in x["kernel"] or "linear" in x["kernel"] for x in case["top"])
    assert "## " + key in (tmp_path / "loop_profile.md").read_text()


def test_decode_kernels_cpu_path(tmp_path, run_benchmark):
    r = run_benchmark("decode_kernels_gpu.py", "--out", tmp_path, "--cpu", "--tiny", "--label", "now")
    assert r.returncode == 0, r.stderr[-2000:]
    raw = json.loads((tmp_path / "decode_kernels.json").read_text())
    assert [x["tokens"] for x in raw["rope"]] == [1, 8] and all(x["error"] == 0 for x in raw["rope"])
    assert [x["tile"] for x in raw["attention"]] == [[64, 4, 2], [64, 4, 3]]
    assert all(x["label"] == "now" and x["seconds"] > 0 for x in raw["rope"] + raw["attention"])
    r2 = run_benchmark(
        "decode_kernels_gpu.py", "--out", tmp_path, "--cpu"
    )  # --cpu alone: one line, no traceback
    assert r2.returncode == 2 and "--cpu and --tiny go together" in r2.stderr and "Traceback" not in r2.stderr
