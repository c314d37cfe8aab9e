"""benchmarks/mla_decode_tiles.py's CPU path: each shape timed per configuration, checked against the default."""

import json

import pytest


def test_cpu_tiny_run(tmp_path, run_benchmark):
    pytest.importorskip("triton")
    r = run_benchmark("mla_decode_tiles.py", "--out", tmp_path, "--cpu", "--tiny", "--units")
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads((tmp_path / "mla_decode_tiles.json").read_text())
    rows = rec["rows"]
    assert {(r["batch"], r["context"]) for r in rows} == {(2, 40), (3, 70)}
    assert all(r["us"] > 0 and r["rel_err"] < 2e-2 for r in rows), rows
    # --units: the engine's cut and a finer one (more, shorter units), each checked against the default
    by_cut = {(r["ctas_per_sm"], r["unit_min_keys"]): r["units"] for r in rows if r["batch"] == 3}
    assert len(by_cut) == 2 and by_cut[(8, 16)] > min(by_cut.values())
    assert (tmp_path / "mla_decode_tiles.md").read_text().count("| 2 x 40 |") == 1
