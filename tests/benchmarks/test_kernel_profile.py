"""benchmarks/kernel_profile.py's CPU path: each case profiled on the toy model, its top operators written."""

import json


def test_cpu_tiny_cases(tmp_path, run_benchmark):
    cases = "gemma3_12b_decode_b8,llama8b_int4_prefill_2048,deepseek_mixed_640_40"
    r = run_benchmark(
        "kernel_profile.py", "--out", tmp_path, "--cpu", "--tiny", "--repeat", "2", "--only", cases
    )
    assert r.returncode == 0, r.stderr[-2000:]
    for case in cases.split(","):
        assert (tmp_path / f"{case}.txt").read_text().strip()
    rec = json.loads((tmp_path / "kernel_profile.json").read_text())
    assert set(rec["cases"]) == set(cases.split(","))


def test_host_time_of_an_eager_step(tmp_path, run_benchmark):
    """--host: the seconds to issue a step, its operators by host time and cProfile's functions, the model's own
    forward among them."""
    r = run_benchmark(
        "kernel_profile.py", "--out", tmp_path, "--cpu", "--tiny", "--repeat", "2", "--only",
        "deepseek_mixed_640_40", "--host",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads((tmp_path / "kernel_profile.json").read_text())["cases"]["deepseek_mixed_640_40"]
    assert 0 < rec["issue_s"] < 60
    assert "forward" in (tmp_path / "deepseek_mixed_640_40_host.txt").read_text()
    assert "Self CPU" in (tmp_path / "deepseek_mixed_640_40_cpu.txt").read_text()
