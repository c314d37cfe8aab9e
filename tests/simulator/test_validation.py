"""`validate`: a measured run's workload simulated on a scenario, compared metric by metric."""

from __future__ import annotations

import json

import pytest
import yaml

from core.errors import ConfigError
from simulator.cli import main
from simulator.measured import one_run
from simulator.scenario import parse_scenario
from simulator.simulation import simulate
from simulator.validation import validate, vllm_result


def _scenario(arrival: dict) -> dict:
    return {
        "name": "round-trip",
        "model": "llama-3.1-8b",
        "hardware": {"gpu": "h100-sxm"},
        "workload": {
            "arrival": arrival,
            "prompt_tokens": {"dist": "uniform", "min": 100, "max": 2000},
            "output_tokens": {"dist": "uniform", "min": 10, "max": 300},
            "num_requests": 80,
        },
    }


@pytest.mark.parametrize(
    "arrival",
    [
        {"process": "poisson", "rate_per_s": 4.0},
        {"process": "gamma", "rate_per_s": 3.0, "cv": 2.0},
        {"process": "closed_loop", "concurrency": 6},
        {"process": "poisson", "rate_per_s": 30.0, "concurrency": 3},  # the cap binds: most requests wait
    ],  # fmt: skip
)
def test_round_trip_simulate_write_vllm_result_validate_is_zero_error(tmp_path, arrival):
    data = _scenario(arrival)
    result = tmp_path / "vllm.json"
    result.write_text(json.dumps(vllm_result(simulate(parse_scenario(data)))))
    v = validate(one_run(result), data, "test")
    errors = [r.error_pct for r in v.rows]
    assert len(errors) == 18 and all(e is not None for e in errors)
    assert max(abs(e) for e in errors) < 1e-9


def test_validate_verb_prints_and_writes_validation_json(tmp_path, capsys):
    data = _scenario({"process": "closed_loop", "concurrency": 4})
    sc = tmp_path / "s.yaml"
    sc.write_text(yaml.safe_dump(data))
    measured = vllm_result(simulate(parse_scenario(data)))
    for k in [k for k in measured if k.endswith("_ms")]:
        measured[k] *= 2  # a slower engine: the forecast is half of each latency, -50%
    path = tmp_path / "m.json"
    path.write_text(json.dumps(measured))
    assert main(["validate", str(path), "--scenario", str(sc), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "TTFT p90 (ms)" in out and "-50.0%" in out
    v = json.loads((tmp_path / "out" / "validation.json").read_text())
    assert v["measured"]["load"] == "4 concurrent users"
    rows = {r["metric"]: r for r in v["rows"]}
    assert rows["p99_ttft_ms"]["error_pct"] == pytest.approx(-50.0)
    assert rows["request_throughput"]["error_pct"] == pytest.approx(0.0, abs=1e-9)
    # the scenario may leave its workload out: the measured run's is the one simulated, so the same table
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump({k: v for k, v in data.items() if k != "workload"}))
    assert main(["validate", str(path), "--scenario", str(bare), "--out", str(tmp_path / "out2")]) == 0
    assert json.loads((tmp_path / "out2" / "validation.json").read_text())["rows"] == v["rows"]


def test_a_run_of_another_model_is_one_line_or_said_above_the_table(tmp_path):
    data = _scenario({"process": "poisson", "rate_per_s": 2.0})
    measured = vllm_result(simulate(parse_scenario(data)))
    measured["model_id"] = "meta-llama/Llama-3.1-70B-Instruct"
    path = tmp_path / "m.json"
    path.write_text(json.dumps(measured))
    with pytest.raises(
        ConfigError, match="70B-Instruct, the scenario models llama-3.1-8b .model size 70B vs 8B."
    ) as e:
        validate(one_run(path), data, "test")
    assert "\n" not in str(e.value)
    v = validate(one_run(path), data, "test", force=True)
    assert any("compared anyway" in n for n in v.notes)
    measured["model_id"] = "meta-llama/Llama-3.1-8B-Instruct"  # the same model, named the Hugging Face way
    path.write_text(json.dumps(measured | {"max_concurrency": 512, "request_rate": "inf"}))
    v = validate(one_run(path), data, "test")
    assert any("max concurrency: the run kept 512" in n for n in v.notes)


def test_a_rate_with_max_concurrency_is_simulated_with_its_cap(tmp_path):
    data = _scenario({"process": "poisson", "rate_per_s": 30.0, "concurrency": 3})
    f = simulate(parse_scenario(data))
    assert f.summary["client_wait"]["waited"] > len(f.table) // 2  # 30 req/s is far past 3 users' pace
    path = tmp_path / "m.json"
    path.write_text(json.dumps(vllm_result(f)))
    run = one_run(path)
    assert run.load() == "30 req/s (Poisson), at most 3 in flight"
    v = validate(run, data, "test")
    assert not any("cap" in n for n in v.notes)  # nothing left out: the cap is simulated
    assert v.forecast.scenario.workload.arrival.concurrency == 3
    uncapped = _scenario({"process": "poisson", "rate_per_s": 30.0})
    rows = {r.metric: r for r in validate(run, uncapped, "test").rows}
    # the measured side held 3 in flight; the scenario's own workload is replaced by the run's, cap included
    assert rows["request_throughput"].error_pct == pytest.approx(0.0, abs=1e-9)
