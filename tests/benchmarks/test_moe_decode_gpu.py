"""benchmarks/moe_decode_gpu.py's CPU path: every variant's decode steps with their floors, the large-batch
records, the tables, and a second call resuming what the first wrote."""

import json


def test_cpu_tiny_run_and_resume(tmp_path, run_benchmark):
    r = run_benchmark("moe_decode_gpu.py", "--out", tmp_path, "--cpu", "--tiny")
    assert r.returncode == 0, r.stderr[-2000:]
    raw = json.loads((tmp_path / "moe_decode.json").read_text())
    assert all(c["ok"] for c in raw["checks"])
    assert sorted(raw["moe"]) == ["deepseek-v2-lite", "mixtral-8x7b"]
    for rec in raw["moe"].values():
        assert sorted(rec["variants"]) == ["after", "before", "tiles"]
        for b, (floor, touched) in rec["floors"].items():
            assert floor > 0 and 1 <= touched <= int(b) * 2 + 1
            assert all(v["steps"][b] > 0 for v in rec["variants"].values())
    assert [r["batch"] for r in raw["large"]] == [1, 8]
    assert all(r["per_phase_ratio"] >= r["roofline_ratio"] * 0.999 for r in raw["large"])
    md = (tmp_path / "moe_decode.md").read_text()
    assert "before ms (× floor)" in md and "× per-phase roofline" in md
    # a second call keeps the sections measured (the MoE steps are not taken again)
    r2 = run_benchmark("moe_decode_gpu.py", "--out", tmp_path, "--cpu", "--tiny")
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert "built in" not in r2.stdout
    assert json.loads((tmp_path / "moe_decode.json").read_text())["moe"] == raw["moe"]
