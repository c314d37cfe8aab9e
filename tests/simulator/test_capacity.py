"""Capacity on every forecast (issue 15): the highest rate within the SLOs, the offered load against it and
whether the run is stable, in summary.json, the terminal summary and the report."""

import json

import pytest

from simulator import api
from simulator.cli import main
from simulator.metrics import capacity, capacity_line
from simulator.results import format_summary
from simulator.scenario import parse_scenario
from simulator.simulation import simulate

SMALL = {
    "name": "cap-test",
    "model": "qwen2.5-0.5b",
    "hardware": {"gpu": "l4"},
    "workload": {
        "arrival": {"process": "poisson", "rate_per_s": 2.0},
        "prompt_tokens": {"dist": "fixed", "value": 300},
        "output_tokens": {"dist": "fixed", "value": 60},
        "num_requests": 80,
    },
    "slo": {"ttft_s": 0.3, "tpot_s": 0.03},
}


@pytest.fixture(scope="module")
def small():
    sc = parse_scenario(SMALL)
    f = simulate(sc)
    return sc, f, capacity(sc, f.summary)


def test_capacity_is_the_stability_aware_search_for_this_configuration(small):
    sc, f, cap = small
    rate, probes, _ = api.max_sustainable_rate(sc.model_dump(mode="json"))
    assert cap["max_rate_per_s"] == rate > 0 and cap["simulations"] == len(probes)
    assert cap["offered_per_s"] == f.summary["stability"]["offered_per_s"]
    assert cap["offered_load_fraction"] == pytest.approx(cap["offered_per_s"] / rate)
    assert cap["stable"] is (f.summary["stability"]["verdict"] == "stable")
    b = cap["bracket"]
    assert b["passed_per_s"] == rate and (b["failed_per_s"] is None or b["failed_per_s"] > rate)
    line = capacity_line(cap)
    assert f"{rate:.3g} req/s" in line and "headroom" in line


def test_the_terminal_summary_states_capacity_and_the_report_too(small):
    from simulator.report import headline

    _, f, cap = small
    f.summary["capacity"] = cap
    assert capacity_line(cap) in format_summary(f)
    assert ("capacity", capacity_line(cap).removeprefix("capacity: ")) in headline(f)


def test_no_slo_or_a_trace_that_cannot_be_rescaled_is_skipped_with_a_note(tmp_path):
    sc = parse_scenario(SMALL | {"slo": {}})
    cap = capacity(sc, simulate(sc).summary)
    assert set(cap) == {"skipped"} and "sets no SLO" in cap["skipped"]
    t = tmp_path / "t.csv"
    t.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0,100,10\n0,100,10\n")
    w = {"trace": str(t), "arrival": {"process": "trace"}, "prompt_tokens": {"dist": "trace"},
         "output_tokens": {"dist": "trace"}}  # fmt: skip
    sc = parse_scenario(SMALL | {"workload": w})
    cap = capacity(sc, simulate(sc).summary)
    assert set(cap) == {"skipped"} and "cannot be changed" in cap["skipped"]
    assert capacity_line(cap).startswith("capacity not computed: ")


def test_run_writes_capacity_to_summary_json_unless_told_not_to(tmp_path, capsys):
    s = tmp_path / "s.yaml"
    s.write_text(json.dumps(SMALL))
    assert main(["run", str(s), "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    cap = json.loads((tmp_path / "a" / "summary.json").read_text())["capacity"]
    assert {"max_rate_per_s", "offered_load_fraction", "stable", "bracket"} <= set(cap)
    assert capacity_line(cap) in out
    assert main(["run", str(s), "--out", str(tmp_path / "b"), "--no-capacity"]) == 0
    assert "capacity" not in json.loads((tmp_path / "b" / "summary.json").read_text())
