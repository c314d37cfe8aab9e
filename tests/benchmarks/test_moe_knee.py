"""benchmarks/moe_knee.py's CPU path: the toy MoE layer timed at each token count beside the profile's curve."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_cpu_toy_shape(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "moe_knee.py"), "--out", str(tmp_path), "--cpu",
           "--tokens", "4,64"]  # fmt: skip
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads((tmp_path / "moe_knee.json").read_text())["rows"]
    assert [row["tokens"] for row in rows] == [4, 64]
    for row in rows:
        assert row["measured_us"] > 0 and row["priced_us"] > 0
        assert abs(row["error_pct"] - (row["priced_us"] / row["measured_us"] - 1) * 100) < 1e-6
    assert rows[1]["rows_per_expert"] == 64 * 2 / 4
