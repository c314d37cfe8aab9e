"""benchmarks/spec_round_steps.py on the committed H200 run: every speculative round of the traced rows priced as the
simulator prices it, by sequences and context (no device)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(ROOT / "benchmarks" / "spec_round_steps.py")
RAW = ROOT / "benchmarks" / "results" / "spec_int4" / "spec_int4_h200_session21.json"
STEPS = ROOT / "benchmarks" / "results" / "spec_int4" / "session21_steps"


def test_committed_run_by_context(tmp_path):
    out = tmp_path / "rounds.md"
    r = subprocess.run([sys.executable, SCRIPT, str(RAW), "--steps", str(STEPS), "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [ln.split("|") for ln in out.read_text().splitlines() if ln.startswith("| spec-")]
    traced = {p.stem.removeprefix("steps_") for p in STEPS.glob("steps_*.csv")}
    assert {c[1].strip() for c in rows} == traced and len(traced) == 8  # every speculation row
    for c in rows:
        steps, eng, price = int(c[4]), float(c[5]), float(c[6])
        assert (
            steps >= 3 and 5.0 < eng < 40.0 and 5.0 < price < 40.0
        )  # a round of Llama-3.1-8B + its draft, ms


def test_no_traces_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, SCRIPT, str(RAW), "--steps", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--steps" in r.stderr


def test_the_committed_table_is_current(tmp_path, run_benchmark):
    """spec_rounds_h200.md is what its own command line writes today (priced by the committed profile; it went
    stale once, a profile refit behind)."""
    committed = ROOT / "benchmarks" / "results" / "spec_rounds_h200.md"
    command = (
        committed.read_text().split("`")[1].split()
    )  # python benchmarks/spec_round_steps.py RAW --steps DIR
    out = tmp_path / "rounds.md"
    r = run_benchmark("spec_round_steps.py", *command[2:], "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert out.read_text() == committed.read_text()
