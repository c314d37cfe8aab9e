"""Which CUDA graphs a measurement store's whole steps ran through (calibrate.measurements.step_graphs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from calibrate.accounting import STEP_KINDS
from calibrate.measurements import Store, step_graphs
from calibrate.plan import point_key
from core.errors import ConfigError
from core.graphs import SERVING_GRAPHS, STEP_RUNNER_GRAPHS

ROOT = Path(__file__).resolve().parents[2]


def test_a_store_says_how_its_steps_ran():
    assert step_graphs({}) is STEP_RUNNER_GRAPHS  # written before stores said: engine/steps.py's own graphs
    assert step_graphs({"step_graphs": "serving"}) is SERVING_GRAPHS
    assert step_graphs({"device": "cpu", "step_graphs": "serving"}) is None  # no graphs on the CPU
    with pytest.raises(ConfigError, match="step_graphs 'vllm'"):
        step_graphs({"step_graphs": "vllm"})


@pytest.mark.parametrize(
    "run, graphs",
    [("h100-sxm", STEP_RUNNER_GRAPHS), ("h200", STEP_RUNNER_GRAPHS), ("h200_session8", SERVING_GRAPHS),
     ("h200_session9", SERVING_GRAPHS)],
)  # fmt: skip
def test_the_stored_runs(run, graphs):
    """The 2026-11-23 sweeps timed steps on the StepRunner's graphs; sessions 8 and 9 (2026-12-02) through the
    serving loop's Executor."""
    line = (ROOT / "calibration_runs" / run / "measurements.jsonl").open().readline()
    assert step_graphs(json.loads(line)) is graphs


def test_steps_of_other_graphs_are_measured_again(tmp_path):
    path = tmp_path / "measurements.jsonl"
    meta = {"kind": "meta", "gpu": "NVIDIA H100 80GB HBM3", "model": "llama-3.1-8b", "device": "cuda"}
    recs = [
        {"key": point_key(kind, params), "kind": kind, "params": params, "seconds": t, "status": "ok",
         "holdout": False}
        for kind, params, t in (("gemm", {"m": 1, "k": 64, "n": 64, "dtype": "bf16"}, 1e-5),
                                ("step_decode", {"context_lens": [9, 9]}, 1e-3))
    ]  # fmt: skip
    path.write_text("\n".join(json.dumps(d) for d in [meta, *recs]) + "\n")
    store = Store.open(path)
    assert store.steps_through("serving", set(STEP_KINDS)) == 1
    assert [r.kind for r in store.records.values()] == ["gemm"]
    again = Store.open(path)
    assert step_graphs(again.meta) is SERVING_GRAPHS and [r.kind for r in again.records.values()] == ["gemm"]
    assert again.steps_through("serving", set(STEP_KINDS)) == 0
