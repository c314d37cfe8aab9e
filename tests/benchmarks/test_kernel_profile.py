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
