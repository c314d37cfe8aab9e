"""benchmarks/mla_eager_shapes.py's CPU path: every case timed on a new and a repeated shape, a host profile."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_cpu_tiny_run(tmp_path):
    pytest.importorskip("triton")
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "mla_eager_shapes.py"), "--out", str(tmp_path), "--cpu", "--tiny"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads((tmp_path / "eager_shapes.json").read_text())
    assert len(rec["cases"]) == 2 * 8 and {c["cudnn_sdp"] for c in rec["cases"]} == {True, False}
    assert all(c["first_gpu_s"] > 0 and c["again_gpu_s"] > 0 for c in rec["cases"])
    assert rec["plain_check"]["vs_alone"] < 1e-4  # the batched plain form: each chunk's rows as alone (fp32)
    assert rec["profile_new_shape"] and all(e["calls"] >= 1 for e in rec["profile_new_shape"])
