"""benchmarks/mla_decode_tiles.py's CPU path: each shape timed per configuration, checked against the default."""

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
        str(ROOT / "benchmarks" / "mla_decode_tiles.py"),
        "--out",
        str(tmp_path),
        "--cpu",
        "--tiny",
        "--units",
    ]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads((tmp_path / "mla_decode_tiles.json").read_text())
    rows = rec["rows"]
    assert {(r["batch"], r["context"]) for r in rows} == {(2, 40), (3, 70)}
    assert all(r["us"] > 0 and r["rel_err"] < 2e-2 for r in rows), rows
    # --units: the engine's cut and a finer one (more, shorter units), each checked against the default
    by_cut = {(r["ctas_per_sm"], r["unit_min_keys"]): r["units"] for r in rows if r["batch"] == 3}
    assert len(by_cut) == 2 and by_cut[(8, 16)] > min(by_cut.values())
    assert (tmp_path / "mla_decode_tiles.md").read_text().count("| 2 x 40 |") == 1
