"""The multi-GPU script's CPU path end to end: 2 gloo processes calibrate the interconnect into a scratch
profile, serve a tiny TP=2 row and a 1 + 1 disaggregated row, and the table compares both with forecasts."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]


def test_cpu_run_writes_the_rows_and_the_measured_profile(tmp_path):
    r = subprocess.run(
        [sys.executable, "benchmarks/multi_gpu.py", "--device", "cpu", "--out", str(tmp_path), "--duration", "0.5",
         "--repeat", "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "profiles" / "cpu-serving-measured.yaml").exists()
    tp = json.loads((tmp_path / "tp2-tiny_config" / "row.json").read_text())
    pd = json.loads((tmp_path / "pd-tiny_config" / "row.json").read_text())
    for rec in (tp, pd):
        assert rec["engine"]["finished"] == rec["simulator"]["finished"] == rec["requests"] > 0
    lines = (tmp_path / "pd-tiny_config" / "transfers.csv").read_text().splitlines()
    assert len(lines) == pd["requests"] + 1 and lines[0].startswith("rid,bytes,sent_s")
    table = (tmp_path / "multi_gpu.md").read_text()
    assert "| all_reduce |" in table and "| tp2-tiny_config | ttft_p50 |" in table and "KV transfers" in table
