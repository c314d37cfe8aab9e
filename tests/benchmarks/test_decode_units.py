"""benchmarks/decode_units.py's CPU path: every unit plan of each toy shape through the decode kernel (Triton
interpreted), checked against the reference attention and timed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_cpu_tiny_run(tmp_path):
    pytest.importorskip("triton")
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "decode_units.py"),
        "--out",
        str(tmp_path),
        "--cpu",
        "--tiny",
    ]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads((tmp_path / "decode_units.json").read_text())["rows"]
    assert [r["batch"] for r in rows] == [4, 8]
    ragged, equal = rows
    # whole plans only from WHOLE_MIN_BATCH sequences; every plan matches the reference
    assert "whole" not in ragged["plans"] and "whole" in equal["plans"]
    assert all(p["rel_err"] < 1e-4 and p["seconds"] > 0 for r in rows for p in r["plans"].values())
    # the 4,000-key context is cut into more units as the waves grow
    units = [ragged["plans"][f"split{w}"]["units"] for w in (1, 8)]
    assert units[1] > units[0]
    assert (tmp_path / "decode_units.md").read_text().count("| 4/2/64 |") == 2
