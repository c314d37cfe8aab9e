"""benchmarks/gemm_clocks.py on its CPU path (toy shapes): the same phases and files as on a GPU."""

import json


def test_cpu_run_writes_every_phase(run_benchmark, tmp_path):
    r = run_benchmark("gemm_clocks.py", "--out", tmp_path, "--cpu", "--tiny", timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "gemm_clocks.json").read_text())
    ramp = res["ramp"]
    assert ramp["calls"] and all(s > 0 for _, s in ramp["calls"])
    offsets = [at for at, _ in ramp["calls"]]
    assert offsets == sorted(offsets)  # each call's start, in order
    assert sum(w["calls"] for w in ramp["windows"]) == len(ramp["calls"])
    # every rows count at every duty cycle, each with its burst and steady time
    assert [(d["m"], d["duty"]) for d in res["duty"]] == [
        (m, u) for m in (8, 32) for u in (1.0, 0.75, 0.5, 0.25, 0.1)
    ]
    for d in res["duty"]:
        assert d["burst_s"] > 0 and d["steady_s"] > 0 and d["calls"] >= 1
        assert (d["copy_bytes"] == 0) == (d["duty"] == 1.0)
    md = (tmp_path / "gemm_clocks.md").read_text()
    assert "## Ramp" in md and "## Duty cycle" in md


def test_unknown_profile_is_one_line(run_benchmark, tmp_path):
    r = run_benchmark("gemm_clocks.py", "--out", tmp_path, "--cpu", "--tiny", "--profile", "nope")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "--profile" in r.stderr
    assert not (tmp_path / "gemm_clocks.json").exists()


def test_cpu_without_tiny_is_refused(run_benchmark, tmp_path):
    r = run_benchmark("gemm_clocks.py", "--out", tmp_path, "--cpu")
    assert r.returncode == 2 and "--tiny" in r.stderr
