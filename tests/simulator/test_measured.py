"""Measured runs (simulator/measured.py): each format read from its content, as a workload and as metrics;
bad inputs give one line. Fixtures follow the published schemas (tests/simulator/measured_files.py cites them)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.errors import ConfigError
from simulator.measured import FORMATS, one_run, read_measured
from simulator.trace import read_trace
from tests.simulator.measured_files import aiperf_records, aiperf_summary, guidellm_report, small_vllm


def _write(tmp_path, name: str, data) -> str:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(p)


def test_vllm_detailed_metrics_and_workload(tmp_path):
    path = _write(tmp_path, "result", small_vllm(max_concurrency=2))  # no suffix: recognised by content
    run = one_run(path)
    assert run.per_request and run.concurrency == 2 and run.rate_per_s is None
    assert run.prompt_tokens.tolist() == [100, 200, 300, 400]
    m = run.metrics
    assert m["mean_ttft_ms"] == pytest.approx(250.0)
    assert m["median_tpot_ms"] == pytest.approx(10.0)
    assert m["p99_e2el_ms"] == pytest.approx(np.percentile([140, 240, 380, 480], 99))
    assert m["request_throughput"] == pytest.approx(2.0)
    t = read_trace(path)  # workload.trace: the run's lengths
    assert t.prompt_tokens.tolist() == [100, 200, 300, 400] and t.arrival_s is None


def test_vllm_summary_only_gives_means_and_refuses_as_trace(tmp_path):
    data = small_vllm(detailed=False, rate=4.0, burstiness=0.5)
    path = _write(tmp_path, "r.json", data)
    run = one_run(path)
    assert not run.per_request and run.rate_per_s == 4.0 and run.burstiness == 0.5
    assert run.mean_prompt_tokens == 250 and run.metrics["p99_ttft_ms"] == data["p99_ttft_ms"]
    with pytest.raises(ConfigError, match="--save-detailed"):
        read_trace(path)


def test_guidellm_and_aiperf(tmp_path):
    g = one_run(_write(tmp_path, "g.json", guidellm_report(streams=3)))
    assert g.concurrency == 3 and g.model.endswith("Llama-3.1-8B-Instruct")
    assert g.metrics["mean_ttft_ms"] == pytest.approx(250.0) and g.metrics["mean_tpot_ms"] == pytest.approx(
        10.0
    )
    assert g.start_s.tolist() == pytest.approx([0, 0.5, 1.0, 1.5])
    a = one_run(_write(tmp_path, "profile_export.jsonl", aiperf_records()))
    assert a.completed == 4  # the warm-up request is left out
    assert a.metrics["mean_ttft_ms"] == pytest.approx(250.0) and a.metrics["mean_tpot_ms"] == pytest.approx(
        10.0
    )
    assert read_trace(a.source).arrival_s.tolist() == pytest.approx([0, 0.5, 1.0, 1.5])
    s = one_run(_write(tmp_path, "profile_export_aiperf.json", aiperf_summary()))
    assert (
        s.concurrency == 8 and s.metrics["median_ttft_ms"] == 38.0 and s.metrics["request_throughput"] == 12.5
    )
    assert s.model == "Qwen/Qwen2.5-7B-Instruct" and s.mean_output_tokens == 128


def test_guidellm_report_of_several_needs_one_named(tmp_path):
    rep = guidellm_report()
    rep["benchmarks"].append(json.loads(json.dumps(rep["benchmarks"][0])))
    rep["benchmarks"][1]["args"]["strategy"] = {"type_": "poisson", "rate": 2.0}
    path = _write(tmp_path, "g.json", rep)
    assert len(read_measured(path)) == 2
    with pytest.raises(ConfigError, match="holds 2 benchmarks.*FILE#K"):
        one_run(path)
    assert one_run(path + "#1").rate_per_s == 2.0
    assert read_trace(path + "#1").prompt_tokens.tolist() == [100, 200, 300, 400]


def _one_line(fn, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as e:
        fn()
    assert "\n" not in str(e.value) and len(str(e.value)) < 400


def test_bad_inputs_are_one_line(tmp_path):
    full = json.dumps(small_vllm())
    cut = _write(tmp_path, "cut.json", full[: len(full) // 2])
    _one_line(lambda: read_measured(cut), "cut short")
    _one_line(lambda: read_trace(cut), "cut short")
    d = small_vllm()
    del d["ttfts"]
    _one_line(lambda: read_measured(_write(tmp_path, "m.json", d)), "ttfts: missing")
    d = small_vllm()
    d["output_lens"] = d["output_lens"][:2]
    _one_line(
        lambda: read_measured(_write(tmp_path, "n.json", d)), "output_lens: 2 values where input_lens has 4"
    )
    g = guidellm_report()
    del g["benchmarks"][0]["requests"]["successful"][1]["first_token_time"]
    _one_line(
        lambda: read_measured(_write(tmp_path, "g.json", g)), r"successful\[1\]: first_token_time: missing"
    )
    other = _write(tmp_path, "other.json", {"hello": 1})
    _one_line(lambda: read_measured(other), "not a measured run.*vLLM.*GuideLLM.*AIPerf")
    assert FORMATS in str(pytest.raises(ConfigError, read_measured, other).value)
    big = _write(tmp_path, "big.json", {"hello": "x" * 300_000})
    _one_line(lambda: read_trace(big), "not an array of requests")  # the file is never quoted whole


def test_a_real_vllm_result_file_reads_and_validates():
    """vLLM v0.6.0's own file (tests/simulator/data/README.md): old schema, requests with no tokens."""
    from pathlib import Path

    from simulator.validation import validate

    path = Path(__file__).parent / "data" / "lambda_vllm_0.6_h100_llama31_8b_fp8_10prompts.json"
    run = one_run(path)
    assert run.completed == 7  # the three requests with no tokens are left out
    assert run.prompt_tokens.tolist() == [13, 25, 27, 10, 29, 4, 205]
    assert run.output_tokens.tolist() == [120, 1, 1, 194, 40, 6, 80]
    assert run.metrics["mean_ttft_ms"] == 44.16175780061167  # vLLM's own figure, as the file has it
    assert any("3 of 10 requests returned an error or no tokens" in n for n in run.notes)
    data = {"name": "h100-fp8", "model": "llama-3.1-8b", "hardware": {"gpu": "h100-sxm"},
            "serving": {"precision": {"weight_dtype": "fp8"}},
            "workload": {"arrival": {"process": "poisson", "rate_per_s": 1}, "num_requests": 1}}  # fmt: skip
    v = validate(run, data, "test")
    rows = {r.metric: r for r in v.rows}
    assert rows["p99_ttft_ms"].measured == 64.57043718444766 and rows["p99_ttft_ms"].forecast > 0
