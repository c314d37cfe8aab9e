"""benchmarks/step_duty_gpu.py's CPU path: every case under every pattern, timed, in the JSON and the table."""

import json


def test_step_duty_cpu_path(tmp_path, run_benchmark):
    r = run_benchmark("step_duty_gpu.py", "--out", tmp_path, "--cpu", "--tiny", "--seconds", "0.1")
    assert r.returncode == 0, r.stderr[-2000:]
    raw = json.loads((tmp_path / "step_duty.json").read_text())
    assert [c["name"] for c in raw["cases"]] == ["mixed 64 + 4", "prompt 128"]
    for case in raw["cases"]:
        assert list(case["patterns"]) == ["back to back", "1:4", "1:8", "after a pause"]
        assert all(p["steps"] >= 1 and p["gpu_ms"] > 0 for p in case["patterns"].values())
    md = (tmp_path / "step_duty.md").read_text()
    assert md.count("| back to back |") == 2 and "| 1.000 |" in md
