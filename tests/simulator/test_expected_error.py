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


def test_an_engine_profile_carries_its_held_out_end_to_end_rows(tmp_path, monkeypatch):
    import json

    import simulator.expected_error as ee

    tf = load_engine_profile("transformers")
    row = {"kind": "served", "profile": "transformers", "fitted": False}
    rows = [
        row | {"measured": {"ttft_p50_s": 1.0, "ttft_p90_s": 2.0, "tpot_p50_s": 0.1, "output_tokens_per_s": 100.0},
               "simulated": {"ttft_p50_s": 1.1, "ttft_p90_s": 1.5, "tpot_p50_s": 0.09, "output_tokens_per_s": 103.0}},
        row | {"fitted": True, "measured": {"ttft_p50_s": 1.0}, "simulated": {"ttft_p50_s": 9.0}},  # not a check
        row | {"profile": "transformers-generate", "measured": {"ttft_s": 1.0}, "simulated": {"ttft_s": 3.0}},
    ]  # fmt: skip
    (tmp_path / f"fidelity_transformers_{tf.gpu}.json").write_text(json.dumps({"rows": rows}))
    monkeypatch.setattr(ee, "FIDELITY_DIR", tmp_path)
    e = expected_error(tf, True, load_profile(tf.gpu))
    # TTFT: the wider of p50 (10%) and p90 (25%); TPOT 10%; throughput 3%; the fitted and other-profile rows left out
    assert e["ttft_pct"] == pytest.approx(25.0) and e["tpot_pct"] == pytest.approx(10.0)
    assert e["throughput_pct"] == pytest.approx(3.0)
    assert f"fidelity_transformers_{tf.gpu}.json" in e["line"] and "TTFT ±25%" in e["line"]
    # the shipped table: the band is at least the held-out served rows' medians (issue 11's figures)
    monkeypatch.setattr(ee, "FIDELITY_DIR", FIDELITY_DIR)
    shipped = json.loads((FIDELITY_DIR / f"fidelity_transformers_{tf.gpu}.json").read_text())
    med = shipped["bar"]["held_out_median_abs_error"]
    e = expected_error(tf, True, load_profile(tf.gpu))
    assert e["tpot_pct"] >= 100 * med["tpot_p50_s"] - 1e-9 and e["ttft_pct"] >= 100 * med["ttft_p90_s"] - 1e-9
