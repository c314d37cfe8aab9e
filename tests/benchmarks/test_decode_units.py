"""benchmarks/decode_units.py's CPU path: every unit plan of each toy shape through the decode kernel (Triton
interpreted), checked against the reference attention and timed."""

import json

import pytest


def test_cpu_tiny_run(tmp_path, run_benchmark):
    pytest.importorskip("triton")
    r = run_benchmark("decode_units.py", "--out", tmp_path, "--cpu", "--tiny")
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


def test_compare_summarises_two_runs(tmp_path, run_benchmark):
    """--compare (no device): the rule's time per matched shape, after against before, by kind of batch."""

    def run(rule_s: float, best_s: float) -> dict:
        heads = {"num_heads": 32, "num_kv_heads": 8, "head_dim": 128}
        rows = [{**heads, "batch": b, "mean_context": 1000.0, "max_context": m, "plans": {
            "rule": {"seconds": rule_s, "rel_err": 1e-3}, "split8": {"seconds": best_s, "rel_err": 2e-3}}}
            for b, m in ((128, 4000), (128, 1000), (8, 1000))]  # fmt: skip
        return {"device": "x", "rows": rows}

    before, after = tmp_path / "b.json", tmp_path / "a.json"
    before.write_text(json.dumps(run(2.0, 2.0)))
    after.write_text(json.dumps(run(1.5, 1.0)))
    out = tmp_path / "c.md"
    r = run_benchmark("decode_units.py", "--compare", before, after, "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    text = out.read_text()
    for kind in ("ragged, 64-256", "equal or near, 64-256", "1-32 sequences"):
        assert f"| {kind}" in text and "| 1 | -25.0% |" in text.split(f"| {kind}")[1].splitlines()[0]
    assert "within 5% of the best plan timed on 0 of 3 shapes" in text and "2.0e-03" in text
    bad = run_benchmark("decode_units.py", "--compare", tmp_path / "none.json", after, "--out", out)
    assert bad.returncode == 2 and "no such file" in bad.stderr and "Traceback" not in bad.stderr
