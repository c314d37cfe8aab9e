"""The Streamlit app driven by AppTest: every page runs, and the numbers it shows are the simulator's."""

import json
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

import core  # noqa: E402
from simulator import api  # noqa: E402

APP = str(Path(__file__).resolve().parents[2] / "app.py")
CHAT = "chat (Poisson, lognormal lengths)"


def app(page: str | None = None, capacity: bool = False) -> AppTest:
    """The app, on `page`; Plan's capacity search only when a test looks at it (it costs a few runs)."""
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["plan.capacity"] = capacity
    at.run()
    if page:
        at.switch_page(f"app_pages/{page}.py").run()
    return at


def no_failure(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def chat(n: int) -> dict:
    return json.loads(json.dumps(api.WORKLOADS[CHAT])) | {"num_requests": n}


# ---------------------------------------------------------------- Plan
def test_plan_shows_the_forecast_of_the_chosen_scenario():
    at = app()
    at.number_input(key="plan.n").set_value(150).run()
    no_failure(at)
    assert not at.error
    expect = api.forecast(
        {
            "name": "my-plan",
            "model": "llama-3.1-8b",
            "hardware": {"gpu": "h100-sxm"},
            "workload": chat(150),
            "slo": {"ttft_s": 0.5, "tpot_s": 0.05},
        }
    ).summary
    assert at.subheader[0].value == "Forecast: my-plan"
    shown = {m.label: m.value for m in at.metric}
    assert shown["throughput (req/s)"] == f"{expect['throughput']['requests_per_s']:.2f}"
    assert shown["output tokens/s"] == f"{expect['throughput']['output_tokens_per_s']:,.0f}"
    assert shown["goodput (req/s)"] == f"{expect['goodput']['requests_per_s']:.2f}"
    assert shown["$ per 1M tokens"] == f"{expect['cost']['usd_per_1m_tokens']:.3f}"
    assert shown["KV peak occupancy"] == f"{expect['kv_cache']['peak_occupancy']:.1%}"
    table = at.dataframe[0].value
    assert table.loc["TTFT", "p90"] == f"{expect['latency_s']['ttft']['p90'] * 1e3:,.1f}"
    assert table.loc["TPOT", "p99"] == f"{expect['latency_s']['tpot']['p99'] * 1e3:,.1f}"
    assert table.loc["TTFT", "SLO (ms)"] == "500"
    assert "Fits: weights" in at.success[0].value
    assert {b.label for b in at.get("download_button")} >= {
        "scenario.yaml",
        "summary.json",
        "requests.csv",
        "timeline.csv",
    }


def test_plan_changing_gpu_changes_the_numbers():
    at = app()
    at.number_input(key="plan.n").set_value(100).run()
    before = at.dataframe[0].value.loc["TPOT", "p50"]
    at.selectbox(key="plan.gpu").set_value("a100-80gb-sxm").run()
    no_failure(at)
    expect = api.forecast(
        {
            "name": "my-plan",
            "model": "llama-3.1-8b",
            "hardware": {"gpu": "a100-80gb-sxm"},
            "workload": chat(100),
            "slo": {"ttft_s": 0.5, "tpot_s": 0.05},
        }
    ).summary
    assert (
        at.dataframe[0].value.loc["TPOT", "p50"]
        == f"{expect['latency_s']['tpot']['p50'] * 1e3:,.1f}"
        != before
    )


def test_plan_model_that_does_not_fit_says_so_with_numbers():
    at = app()
    at.selectbox(key="plan.model").set_value("llama-3.1-70b")
    at.selectbox(key="plan.gpu").set_value("t4").run()
    no_failure(at)
    assert any(e.value.startswith("Does not fit: weights") for e in at.error)


def test_plan_impossible_setting_is_a_message_not_a_traceback():
    at = app()
    at.number_input(key="plan.hw.pipeline_parallel").set_value(3).run()  # 1 GPU cannot hold 3 stages
    no_failure(at)
    assert any("pipeline_parallel" in e.value for e in at.error)
    assert any("last forecast that ran" in c.value for c in at.caption)  # kept in view, said to be old


def test_plan_uploads_bad_and_good_config_json():
    at = app()
    at.radio(key="plan.src").set_value("upload config.json").run()
    at.file_uploader(key="plan.upload").set_value(("config.json", b"{not json", "application/json")).run()
    no_failure(at)
    assert any("not valid JSON" in e.value for e in at.error)
    at.file_uploader(key="plan.upload").set_value(
        ("config.json", b'{"hidden_size": 64}', "application/json")
    ).run()
    no_failure(at)
    assert at.error and not at.metric
    good = (Path(core.__file__).parent / "catalogue" / "qwen2.5-0.5b.json").read_bytes()
    at.file_uploader(key="plan.upload").set_value(("config.json", good, "application/json"))
    at.number_input(key="plan.n").set_value(80).run()
    no_failure(at)
    assert not at.error and at.metric


def test_plan_uploaded_trace_bad_and_good():
    at = app()
    at.radio(key="plan.mode").set_value("uploaded trace").run()
    at.file_uploader(key="plan.trace").set_value(("t.csv", b"a,b\n1,2\n", "text/csv")).run()
    no_failure(at)
    assert any("prompt-length column" in e.value for e in at.error)
    rows = "arrived_at,num_prefill_tokens,num_decode_tokens\n" + "".join(
        f"{i * 0.5},{200 + 10 * i},{50 + i}\n" for i in range(60)
    )
    at.file_uploader(key="plan.trace").set_value(("t.csv", rows.encode(), "text/csv")).run()
    no_failure(at)
    assert not at.error
    assert at.caption[1].value.startswith("llama-3.1-8b on 1×")
    assert any(c.value.startswith("60 requests: 60 finished") for c in at.caption)


# ---------------------------------------------------------------- Compare
def test_compare_three_configurations():
    at = app("compare")
    at.number_input(key="cmp.n").set_value(60).run()
    no_failure(at)
    table = at.dataframe[0].value
    assert list(table.columns) == ["A: 1× t4 int4", "B: 1× a100-80gb-sxm bf16", "C: 1× h100-sxm bf16"]
    expect = api.forecast(
        {
            "name": "C",
            "model": "llama-3.1-8b",
            "hardware": {"gpu": "h100-sxm"},
            "serving": {"precision": {"weight_dtype": "bf16"}, "batching": {"max_num_seqs": 256}},
            "workload": chat(60),
            "slo": {"ttft_s": 0.5, "tpot_s": 0.05},
        }
    ).summary
    ttft = expect["latency_s"]["ttft"]["p99"] * 1e3
    assert table.loc["TTFT p99 (ms)", "C: 1× h100-sxm bf16"] == (
        f"{ttft:,.0f}" if ttft >= 1000 else f"{ttft:.4g}"
    )
    notes = [m.value for m in at.markdown if m.value.startswith("- best")]
    assert any(n.startswith("- best TTFT p99 (ms): C: 1× h100-sxm bf16") for n in notes)
    be = at.dataframe[1].value
    assert be.loc["C: 1× h100-sxm bf16", "one copy $/month"] == pytest.approx(
        expect["cost"]["total_usd"] / expect["throughput"]["duration_s"] * 3600 * 730
    )


def test_compare_bad_override_and_misfit_are_messages():
    at = app("compare")
    at.number_input(key="cmp.n").set_value(40)
    at.text_area(key="cmp.0.extra").set_value("serving: {kv_dtype: fp4}")
    at.selectbox(key="cmp.1.dtype").set_value("bf16")
    at.selectbox(key="cmp.1.gpu").set_value("t4").run()
    no_failure(at)
    errors = " ".join(e.value for e in at.error)
    assert "serving.precision.kv_dtype" in errors and "does not fit" in errors.lower()


# ---------------------------------------------------------------- Capacity
def test_capacity_search_and_load_curve():
    at = app("capacity")
    at.number_input(key="cap.n").set_value(80)
    at.multiselect(key="cap.gpus").set_value(["l4", "h100-sxm"])
    at.multiselect(key="cap.dtypes").set_value(["fp8"]).run()
    at.button(key="cap.run").click().run()
    no_failure(at)
    spec = api.parse_spec(
        {
            "name": "capacity",
            "base": {
                "name": "capacity",
                "model": "llama-3.1-8b",
                "workload": chat(80),
                "slo": {"ttft_s": 0.5, "tpot_s": 0.05},
            },
            "sweep": {
                "hardware.gpu": ["l4", "h100-sxm"],
                "hardware.gpus_per_replica": [1],
                "serving.precision.weight_dtype": ["fp8"],
                "serving.batching.max_num_seqs": [256],
            },
            "slo_attainment": 0.9,
            "target_rate_per_s": 10.0,
        }
    )
    best = api.run_search(spec, "serial").cheapest(10.0, n=1)[0]
    msg = at.success[0].value
    assert msg.startswith(f"Cheapest for 10 req/s: {best.copies_for(10.0)}× ({best.label})")
    assert f"sustains {best.max_rate_per_s:.2f} req/s" in msg
    rows = at.dataframe[0].value
    assert rows["max req/s"].max() == pytest.approx(best.max_rate_per_s)
    assert any("breaks its" in m.value for m in at.markdown)
    curve = at.dataframe[-1].value  # (after the ranked table and the frontier)
    assert len(curve) == len(spec.load_points)
    # the search is stability-aware: the bracket is stated, and the curve's points carry their verdict
    assert any(c.value.startswith(f"Bracket: {best.max_rate_per_s:.2f} req/s passed") for c in at.caption)
    assert set(curve["stability"]) <= {"stable", "overloaded", "inconclusive"}
    assert curve["stability"].iloc[0] == "stable"


def test_plan_says_overloaded_with_offered_and_sustained_rates():
    at = app()
    at.number_input(key="plan.rate").set_value(60.0)
    at.number_input(key="plan.n").set_value(3000).run()
    no_failure(at)
    err = " ".join(e.value for e in at.error)
    assert err.startswith("OVERLOADED: ") and "offered" in err and "sustained" in err


def test_compare_does_not_rank_an_overloaded_configuration():
    at = app("compare")
    at.number_input(key="cmp.n").set_value(1500).run()  # 4 req/s: more than the T4 can serve
    no_failure(at)
    a = "A: 1× t4 int4"
    assert at.dataframe[0].value.loc["stability", a] == "overloaded"
    notes = [m.value for m in at.markdown if m.value.startswith("- ")]
    assert any(n.startswith(f"- {a} is OVERLOADED at this workload (") for n in notes)
    best = [n for n in notes if n.startswith("- best $ per 1M tokens")]
    assert best and a not in best[0]


# ---------------------------------------------------------------- Calibration
def test_calibration_lists_profiles_and_fit_errors():
    at = app("calibration")
    no_failure(at)
    table = at.dataframe[0].value
    assert sorted(table.index) == api.profile_names()
    profiles = {n: api.load_profile(n) for n in api.profile_names()}
    for n, p in profiles.items():
        expect = "calibrated" if p.is_calibrated else (p.calibration.status if p.calibration else "datasheet")
        assert table.loc[n, "status"] == expect
    name = at.selectbox(key="cal.profile").value
    if profiles[name].calibration is not None:
        errs = profiles[name].calibration.model_dump().get("fit_errors_pct") or {}
        if errs:
            shown = at.dataframe[1].value
            assert set(shown.index) == set(errs)
            g = next(iter(errs))
            assert shown.loc[g, "fit median %"] == pytest.approx(errs[g]["train"]["median_pct"])
    plain = [n for n, p in profiles.items() if p.calibration is None]
    if plain:
        at.selectbox(key="cal.profile").set_value(plain[0]).run()
        no_failure(at)
        assert any("datasheet profile" in i.value for i in at.info)


def test_plan_builds_the_html_report_for_download():
    at = app()
    at.number_input(key="plan.n").set_value(80).run()
    at.button(key="report.build").click().run()
    no_failure(at)
    assert "report.html" in {b.label for b in at.get("download_button")}
