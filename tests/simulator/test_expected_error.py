"""The error band of a forecast (simulator/expected_error.py): validated, transferred or unvalidated."""

from __future__ import annotations

import pytest

from core.engine_profile import load_engine_profile
from core.hardware import load_profile
from simulator.expected_error import FIDELITY_DIR, expected_error, fidelity_table
from simulator.scenario import parse_scenario
from simulator.simulation import simulate


def test_our_engine_on_a_gpu_with_fidelity_rows_reads_their_median_row():
    figures, table = fidelity_table("h100-sxm")
    text = (FIDELITY_DIR / table.rsplit("/", 1)[1]).read_text()
    assert f"| {figures['ttft']:.1f}% |" in text.split("**median")[1].splitlines()[0]
    e = expected_error(load_engine_profile("ours"), False, load_profile("h100-sxm"))
    assert e["status"] == "validated" and e["ttft_pct"] == figures["ttft"] and "±" in e["line"]


def test_a_datasheet_gpu_is_unvalidated_plainly():
    e = expected_error(load_engine_profile("ours"), False, load_profile("a100-80gb-sxm"))
    assert e["status"] == "unvalidated" and e["ttft_pct"] is None
    assert e["line"].startswith("expected error: unvalidated")


def test_an_engine_profile_off_its_gpu_is_transferred_and_on_it_validated():
    tf = load_engine_profile("transformers")
    on = expected_error(tf, True, load_profile(tf.gpu))
    off = expected_error(tf, True, load_profile("h100-sxm"))
    assert on["status"] == "validated" and off["status"] == "transferred"
    assert on["step_time_pct"] == pytest.approx(max(m.median_abs_pct for m in tf.validation.metrics
                                                    if m.metric.startswith("step_s")))  # fmt: skip
    assert "not on h100-sxm" in off["line"]


def test_every_forecast_carries_it():
    s = simulate(parse_scenario({"name": "x", "model": "llama-3.1-8b", "hardware": {"gpu": "l4"},
                                 "workload": {"arrival": {"process": "poisson", "rate_per_s": 1},
                                              "num_requests": 20}})).summary  # fmt: skip
    assert s["expected_error"]["status"] == "unvalidated"
