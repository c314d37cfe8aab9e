"""benchmarks/gemm_shape_holdout.py: the committed table is rebuilt from the stored run, and each left-out model
is a check only (its points held out of both fits)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import gemm_shape_holdout as gsh  # noqa: E402


def test_the_committed_table_is_rebuilt_from_the_stored_run():
    run = json.loads(gsh.RUN.read_text())
    assert gsh.report(gsh.holdout_errors(run), run) == gsh.OUT.read_text()


def test_records_leave_out_one_row_points_and_retimings():
    run = {"models": {"m": [
        {"k": 8, "n": 16, "m": 1, "seconds": 1e-6, "tuned": False},
        {"k": 8, "n": 16, "m": 4, "seconds": 2e-6, "tuned": False},
        {"k": 8, "n": 16, "m": 4, "seconds": 3e-6, "tuned": True},
    ]}}  # fmt: skip
    (r,) = gsh.records(run, ["m"], holdout=True)
    assert r.params == {"m": 4, "k": 8, "n": 16, "dtype": "bf16"} and r.seconds == 2e-6 and r.holdout
