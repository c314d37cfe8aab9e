"""benchmarks/decode_balance.py on the committed H200 store: every large decode step priced, equal and ragged
points told apart, the table written; a folder without a store refused in one line."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "decode_balance.py"


def test_committed_store(tmp_path):
    out = tmp_path / "t.md"
    r = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--min-batch", "64"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    text = out.read_text()
    body = [ln for ln in text.splitlines() if ln.startswith("| ") and not ln.startswith("| batch")]
    assert body and all(int(ln.split("|")[1]) >= 64 for ln in body)
    assert {ln.split("|")[3].strip() for ln in body} == {"equal", "ragged"}
    assert "equal contexts:" in text and "ragged contexts:" in text


def test_missing_store_is_refused(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), "--run", str(tmp_path), "--out", str(tmp_path / "t.md")],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 2 and "no measurements.jsonl" in r.stdout and "Traceback" not in r.stderr


def test_large_batch_checks_priced_again(tmp_path):
    """--large: the serving loop's committed large-batch decode checks priced with the profile, one row each."""
    import json

    large = ROOT / "benchmarks" / "results" / "engine_kernels_h200" / "large_decode_session15.json"
    out = tmp_path / "t.md"
    r = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--large", str(large)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    section = out.read_text().split("large-batch decode checks")[1]
    rows = [
        ln.split("|") for ln in section.splitlines() if ln.startswith("| ") and not ln.startswith("| model")
    ]
    recs = json.loads(large.read_text())
    assert [(c[1].strip(), int(c[2])) for c in rows] == [(x["model"], x["batch"]) for x in recs]
    for c, x in zip(
        rows, recs, strict=True
    ):  # the measured step is the record's; the error is priced / measured
        measured, priced, err = float(c[4]), float(c[5]), float(c[6].strip().rstrip("%"))
        assert measured == round(x["step_ms"], 2) and abs((priced / measured - 1) * 100 - err) < 0.2
    bad = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--large", str(tmp_path / "none.json")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert bad.returncode == 2 and "no such file" in bad.stdout and "Traceback" not in bad.stderr


def test_the_committed_table_is_current(tmp_path, run_benchmark):
    """decode_balance_h200.md is what the script writes today: priced by the committed profile and cost model (it
    went stale once, its priced column two profile refits old; a profile or cost-model change fails this until the
    table is regenerated with `python benchmarks/decode_balance.py --large LARGE`, LARGE session 22's checks)."""
    out = tmp_path / "t.md"
    large = ROOT / "benchmarks" / "results" / "engine_kernels_h200" / "large_decode_session22.json"
    r = run_benchmark("decode_balance.py", "--out", out, "--large", large)
    assert r.returncode == 0, r.stderr[-2000:]
    assert out.read_text() == (ROOT / "benchmarks" / "results" / "decode_balance_h200.md").read_text()
