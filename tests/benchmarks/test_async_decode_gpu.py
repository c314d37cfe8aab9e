"""benchmarks/async_decode_gpu.py's CPU path: large-batch decode with the loop waiting and with async scheduling,
each batch in both modes with its roofline and cost-model columns, resumable."""

import json


def test_async_decode_cpu_path(tmp_path, run_benchmark):
    r = run_benchmark("async_decode_gpu.py", "--out", tmp_path, "--cpu", "--tiny")
    assert r.returncode == 0, r.stderr[-2000:]
    raw = json.loads((tmp_path / "async_decode.json").read_text())
    rows = raw["rows"]
    assert sorted((x["batch"], x["async_scheduling"]) for x in rows) == [
        (1, False),
        (1, True),
        (8, False),
        (8, True),
    ]
    for x in rows:
        assert x["step_ms"] > 0 and x["cadence_ms"] > 0 and x["roofline_ratio"] > 0 and x["model_ratio"] > 0
        if x["async_scheduling"]:
            assert x["step_ms"] == x["cadence_ms"]  # an async step is measured by its cadence
    md = (tmp_path / "async_decode.md").read_text()
    assert md.count("| async |") == 2 and md.count("| waits |") == 2
    r2 = run_benchmark("async_decode_gpu.py", "--out", tmp_path, "--cpu", "--tiny")
    assert r2.returncode == 0
    assert json.loads((tmp_path / "async_decode.json").read_text())["rows"] == rows  # kept, not run again
