"""The error band of a forecast (simulator/expected_error.py): validated, transferred or unvalidated."""

from __future__ import annotations

import pytest

from core.engine_profile import LoadCheck, load_engine_profile
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


def _with_loads(name: str) -> object:
    """A published profile whose checks ran at two loads: 500 sequences a step (full load) and 8."""
    p = load_engine_profile(name)
    loads = [
        LoadCheck(run="full.json", batch=500.0, table="full.md",
                  errors_pct={"mean_ttft_ms": -5.0, "mean_tpot_ms": 1.0, "output_throughput": 2.0}),
        LoadCheck(run="low.json", batch=8.0, table="low.md", note="another vLLM",
                  errors_pct={"mean_e2el_ms": 90.0, "output_throughput": -47.0, "request_throughput": -47.5}),
    ]  # fmt: skip
    return p.model_copy(update={"validation": p.validation.model_copy(update={"loads": loads})})


def test_a_forecast_takes_its_band_from_the_checks_at_its_load():
    p = _with_loads("vllm-h100-sxm")
    gpu = load_profile(p.gpu)
    low = expected_error(p, True, gpu, batch=6.0)  # within 2x of the batch-8 check
    assert low["status"] == "validated" and low["throughput_pct"] == pytest.approx(47.5)
    assert low["ttft_pct"] is None and low["load"]["near"] == ["low.json"]
    assert "low.json at 8" in low["line"] and "another vLLM" in low["line"]
    assert "no TTFT or TPOT checked at this load" in low["line"]
    full = expected_error(p, True, gpu, batch=400.0)
    assert full["throughput_pct"] == pytest.approx(2.0) and full["ttft_pct"] == pytest.approx(5.0)
    # between them, near neither: every held-out row's band, said to be outside the checked load
    mid = expected_error(p, True, gpu, batch=60.0)
    plain = expected_error(p, True, gpu)
    assert mid["ttft_pct"] == plain["ttft_pct"] and mid["load"]["near"] == []
    assert "outside the checked load" in mid["line"] and "8-500" in mid["line"]
    assert "load" not in plain and "outside" not in plain["line"]
    # off its GPU the nearest check's band is still said to be transferred
    off = expected_error(p, True, load_profile("a100-80gb-sxm"), batch=8.0)
    assert off["status"] == "transferred" and "not on a100-80gb-sxm" in off["line"]


def test_a_forecast_of_a_published_profile_names_its_load():
    """End to end: a light load on the published vLLM H100 profile is set beside the loads it was checked at."""
    sc = {"name": "light", "model": "llama-3.1-8b", "hardware": {"gpu": "h100-sxm"}, "engine": "vllm-h100-sxm",
          "workload": {"arrival": {"process": "closed_loop", "concurrency": 2}, "num_requests": 12,
                       "prompt_tokens": {"dist": "fixed", "value": 256},
                       "output_tokens": {"dist": "fixed", "value": 32}}}  # fmt: skip
    e = simulate(parse_scenario(sc)).summary["expected_error"]
    loads = load_engine_profile("vllm-h100-sxm").validation.loads
    assert loads and 0 < e["load"]["forecast_batch"] <= 2.0
    assert e["load"]["checked_batch"] == [min(c.batch for c in loads), max(c.batch for c in loads)]


def test_our_engine_takes_its_band_from_the_fidelity_rows_at_the_forecasts_load():
    import json

    import numpy as np

    rows = [
        json.loads(p.read_text()) for p in sorted((FIDELITY_DIR / "fidelity" / "h100-sxm").glob("*/row.json"))
    ]
    near = [r for r in rows if 4.0 <= r["engine_run"]["mean_batch_seqs"] <= 16.0]  # within 2x of 8
    assert 2 <= len(near) < len(rows)
    want = np.median([abs(r["simulator"]["tpot_p50"] / r["engine"]["tpot_p50"] - 1) * 100 for r in near])
    ours, gpu = load_engine_profile("ours"), load_profile("h100-sxm")
    e = expected_error(ours, False, gpu, batch=8.0)
    assert e["status"] == "validated" and e["tpot_pct"] == pytest.approx(want)
    assert sorted(e["load"]["near"]) == sorted(r["row"] for r in near)
    far = expected_error(ours, False, gpu, batch=200.0)  # every row ran at 43 sequences a step or fewer
    assert far["load"]["near"] == [] and "outside the checked load" in far["line"]
    assert far["tpot_pct"] == expected_error(ours, False, gpu)["tpot_pct"]


def _row(model: str, batch: float, ttft90: float, overlap: bool = False) -> dict:
    """A fidelity row.json of `model` at `batch` sequences a step, its TTFT p90 off by `ttft90` (TTFT p50 +2%)."""
    engine = {"ttft_p50": 1.0, "ttft_p90": 1.0, "tpot_p50": 1.0, "tpot_p90": 1.0, "output_tokens_per_s": 1.0}
    sim = dict(engine, ttft_p50=1.02, ttft_p90=1.0 + ttft90)
    return {"row": f"{model}-row", "row_model": model, "engine_run": {"mean_batch_seqs": batch},
            "engine": engine, "simulator": sim, "async_scheduling": overlap}  # fmt: skip


def _write_rows(root, rows: dict) -> None:
    """`rows` {name: row.json} under root/fidelity/h200/."""
    import json

    for name, r in rows.items():
        (root / "fidelity" / "h200" / name).mkdir(parents=True)
        (root / "fidelity" / "h200" / name / "row.json").write_text(json.dumps(r))


def _fidelity_tables(tmp_path, monkeypatch):
    import simulator.expected_error as ee

    (tmp_path / "fidelity_h200.md").write_text(
        "| row | TTFT p50 | TTFT p90 | TPOT p50 | TPOT p90 | out tok/s |\n"
        "| **median \\|error\\|** | 2.0% | 3.0% | 1.0% | 1.0% | 0.1% |\n"
    )
    _write_rows(
        tmp_path, {m: _row(m, 16.0, t90) for m, t90 in (("deepseek-v2-lite", 0.40), ("llama-3.1-8b", 0.03))}
    )
    monkeypatch.setattr(ee, "FIDELITY_DIR", tmp_path)


def test_a_model_with_its_own_fidelity_rows_takes_their_band_p90s_included(tmp_path, monkeypatch):
    _fidelity_tables(tmp_path, monkeypatch)
    gpu, ours = load_profile("h200"), load_engine_profile("ours")
    ds = expected_error(ours, False, gpu, 16.0, model="deepseek-v2-lite")
    assert ds["ttft_pct"] == pytest.approx(40.0) and "deepseek-v2-lite's own rows" in ds["line"]  # its tail
    far = expected_error(ours, False, gpu, 200.0, model="deepseek-v2-lite")  # its rows, the load said
    assert far["ttft_pct"] == pytest.approx(40.0) and "outside the checked load" in far["line"]
    other = expected_error(ours, False, gpu, 16.0, model="qwen2.5-7b")  # no rows of its own: every model's
    assert other["ttft_pct"] == pytest.approx(21.5) and "own rows" not in other["line"]
    assert "no row of qwen2.5-7b: the band is other models' rows" in other["line"]
    assert "no row of" not in ds["line"] and "no row of" not in far["line"]


def test_the_waiting_band_pools_the_async_tables_waiting_rows(tmp_path, monkeypatch):
    """The same waiting row run again for the async table (another machine) joins the model's band; that table's
    async rows do not."""
    _fidelity_tables(tmp_path, monkeypatch)
    _write_rows(tmp_path / "fidelity_async", {
        "ds": _row("deepseek-v2-lite", 16.0, -0.10), "ds-async": _row("deepseek-v2-lite", 16.0, 0.90, overlap=True)
    })  # fmt: skip
    gpu, ours = load_profile("h200"), load_engine_profile("ours")
    ds = expected_error(ours, False, gpu, 16.0, model="deepseek-v2-lite")
    assert ds["ttft_pct"] == pytest.approx(25.0)  # median of |+40%| and |-10%|
    assert "waiting-loop rows of benchmarks/results/fidelity_async/fidelity_h200.md" in ds["basis"]
    on = expected_error(ours, False, gpu, 16.0, model="deepseek-v2-lite", overlap=True)
    assert on["ttft_pct"] == pytest.approx(90.0) and "waiting-loop rows" not in on["basis"]


def test_async_scheduling_takes_the_async_rows_where_the_gpu_has_them():
    ours = load_engine_profile("ours")
    h200, h100 = load_profile("h200"), load_profile("h100-sxm")
    on = expected_error(ours, False, h200, None, model="llama-3.1-8b", overlap=True)
    off = expected_error(ours, False, h200, None, model="llama-3.1-8b")
    assert "fidelity_async" in on["basis"] and "rows with async scheduling on" in on["basis"]
    assert "async scheduling on" not in off["basis"] and on["ttft_pct"] != off["ttft_pct"]
    assert "waiting-loop rows of benchmarks/results/fidelity_async" in off["basis"]
    none = expected_error(ours, False, h100, None, model="llama-3.1-8b", overlap=True)
    assert "no async rows on h100-sxm: the band is the waiting loop's" in none["basis"]
    assert none["ttft_pct"] == expected_error(ours, False, h100, None, model="llama-3.1-8b")["ttft_pct"]


def test_settings_no_row_ran_are_named_beside_the_band(tmp_path, monkeypatch):
    """A forecast with settings none of our engine's rows on its GPU ran (tensor parallel, fp8 weights) says so; a row
    that ran one (an fp8 row, a prefix-caching row) takes it off the list; a table apart is pointed to."""
    import simulator.expected_error as ee
    from simulator.expected_error import forecast_settings

    _fidelity_tables(tmp_path, monkeypatch)
    sc = parse_scenario({"name": "tp", "model": "llama-3.1-8b", "hardware": {"gpu": "h200", "gpus_per_replica": 2},
                         "serving": {"precision": {"weight_dtype": "fp8"}, "caching": {"prefix_caching": True},
                                     "speculative": {"method": "self", "num_speculative_tokens": 2}},
                         "workload": {"num_requests": 4, "arrival": {"rate_per_s": 1.0}}})  # fmt: skip
    settings = forecast_settings(sc)
    assert set(settings) == {"weights:fp8", "kv:bf16", "tensor_parallel", "prefix_caching", "speculative"}
    gpu, ours = load_profile("h200"), load_engine_profile("ours")
    e = expected_error(ours, False, gpu, 16.0, model="llama-3.1-8b", settings=settings)
    assert e["unexercised"] == [
        "fp8 weights",
        "2-way tensor parallel",
        "speculative decoding",
        "prefix caching",
    ]
    assert (
        "not run by any row on h200: fp8 weights, 2-way tensor parallel, speculative decoding, prefix"
        in e["line"]
    )
    _write_rows(
        tmp_path, {"fp8": _row("llama-3.1-8b", 16.0, 0.0) | {"weight_dtype": "fp8", "trace": "prefix"}}
    )
    (tmp_path / "fidelity_spec_int4_h200.md").write_text("a table apart\n")
    e = expected_error(ours, False, gpu, 16.0, model="llama-3.1-8b", settings=settings)
    assert e["unexercised"] == [
        "2-way tensor parallel",
        "speculative decoding (checked apart: benchmarks/results/fidelity_spec_int4_h200.md)",
    ]
    plain = forecast_settings(
        parse_scenario(
            {
                "name": "p",
                "model": "llama-3.1-8b",
                "workload": {"num_requests": 4, "arrival": {"rate_per_s": 1.0}},
            }
        )
    )
    assert "unexercised" not in expected_error(ours, False, gpu, 16.0, settings=plain)
    monkeypatch.setattr(
        ee, "FIDELITY_DIR", tmp_path / "none"
    )  # no fidelity rows: no list (nothing was checked)
    assert "unexercised" not in expected_error(ours, False, gpu, 16.0, settings=settings)


def test_a_tensor_parallel_forecast_on_the_h200_names_what_its_band_did_not_check():
    sc = {"name": "tp2", "model": "llama-3.1-8b", "hardware": {"gpu": "h200", "gpus_per_replica": 2},
          "workload": {"num_requests": 20, "arrival": {"process": "poisson", "rate_per_s": 5.0},
                       "prompt_tokens": {"dist": "fixed", "value": 256},
                       "output_tokens": {"dist": "fixed", "value": 32}}}  # fmt: skip
    e = simulate(parse_scenario(sc)).summary["expected_error"]
    assert e["status"] == "validated" and e["unexercised"] == ["2-way tensor parallel"]
    assert "not run by any row on h200: 2-way tensor parallel" in e["line"]
