"""A planner's first hour (issue 15): an uploaded scenario is taken whole, SLOs are in ms and can be removed,
form fields keep the schema's bounds and read as words, uploads are named as the user named them."""

from __future__ import annotations

import json
import os

import pytest
import yaml

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from app_pages import common  # noqa: E402
from simulator import api  # noqa: E402
from tests.app.test_app import app, no_failure  # noqa: E402

UPLOADED = {
    "name": "uploaded-plan",
    "model": "qwen2.5-0.5b",
    "hardware": {"gpu": "a100-80gb-sxm"},
    "serving": {"batching": {"max_num_seqs": 64}},
    "workload": {"arrival": {"process": "poisson", "rate_per_s": 2.0}, "num_requests": 60},
    "slo": {"ttft_s": 0.3},
}


def _upload_scenario(at: AppTest, data: dict) -> AppTest:
    raw = yaml.safe_dump(data).encode()
    return at.sidebar.file_uploader(key="plan.start").set_value(("s.yaml", raw, "application/yaml")).run()


def test_plan_starts_from_every_field_of_an_uploaded_scenario():
    at = app()
    at.selectbox(key="plan.gpu").set_value("l4")  # earlier choices must not outlive the upload
    at.number_input(key="plan.n").set_value(50).run()
    _upload_scenario(at, UPLOADED)
    no_failure(at)
    assert at.text_input(key="plan.name").value == "uploaded-plan"
    assert at.selectbox(key="plan.model").value == "qwen2.5-0.5b"
    assert at.selectbox(key="plan.gpu").value == "a100-80gb-sxm"
    assert at.number_input(key="plan.serving.batching.max_num_seqs").value == 64
    assert at.number_input(key="plan.slo.ttft_s").value == 300
    assert at.number_input(key="plan.slo.tpot_s").value is None  # the file sets no TPOT SLO
    assert at.subheader[0].value == "Forecast: uploaded-plan"
    assert "A100" in at.caption[1].value
    table = at.dataframe[0].value
    assert table.loc["TTFT", "SLO (ms)"] == "300" and table.loc["TPOT", "SLO (ms)"] == ""


@pytest.mark.parametrize("page", ["plan", "compare", "capacity"])
def test_an_slo_is_typed_in_ms_and_can_be_removed_on_every_page(page):
    at = app(None if page == "plan" else page)
    key = {"plan": "plan", "compare": "cmp", "capacity": "cap"}[page]
    box = at.number_input(key=f"{key}.slo.tpot_s")
    assert box.value == 50 and "ms" in box.label
    common._FORECASTS.clear()
    box.set_value(None).run()
    no_failure(at)
    assert not at.error
    assert at.number_input(key=f"{key}.slo.tpot_s").value is None
    if page == "capacity":  # the search spec the page would run
        return
    sent = [json.loads(k)["slo"] for k in common._FORECASTS]
    assert sent and all(s.get("tpot_s") is None and s["ttft_s"] == 0.5 for s in sent)


def test_an_upload_in_the_flat_layout_fills_the_form_and_notes_each_renamed_field():
    at = app()
    _upload_scenario(at, UPLOADED | {"serving": {"max_num_seqs": 48, "kv_dtype": "fp8"}})
    no_failure(at)
    assert at.number_input(key="plan.serving.batching.max_num_seqs").value == 48
    assert at.selectbox(key="plan.serving.precision.kv_dtype").value == "fp8"
    notes = [m.value for m in at.info if m.value.startswith("renamed: ")]
    assert sorted(n.split(" (")[0] for n in notes) == [
        "renamed: s.yaml: serving.kv_dtype → serving.precision.kv_dtype",
        "renamed: s.yaml: serving.max_num_seqs → serving.batching.max_num_seqs",
    ]


def test_form_fields_keep_the_schemas_bounds_and_read_as_words():
    at = app()
    util = at.number_input(key="plan.serving.memory.gpu_memory_utilization")
    assert util.max == 1.0 and util.label == "GPU memory utilization"
    assert at.number_input(key="plan.serving.batching.max_num_seqs").min == 1
    assert at.number_input(key="plan.hw.price_per_gpu_hour_usd").label == "Price (USD per GPU-hour)"
    assert common.field_label("ttft_s") == "TTFT (s)"


def test_a_bad_setting_names_the_field_and_keeps_the_last_forecast():
    at = app()
    at.number_input(key="plan.n").set_value(60).run()
    shown = {m.label: m.value for m in at.metric}
    at.number_input(key="plan.hw.pipeline_parallel").set_value(3).run()
    no_failure(at)
    assert any("pipeline_parallel" in e.value for e in at.error)
    assert {m.label: m.value for m in at.metric} == shown


def test_an_uploaded_trace_is_named_by_its_file_name(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "UPLOADS", tmp_path / "uploads")
    at = app()
    at.radio(key="plan.mode").set_value("uploaded trace").run()
    at.file_uploader(key="plan.trace").set_value(("mine.json", b'{"a": 1}', "application/json")).run()
    no_failure(at)
    (msg,) = [e.value for e in at.error]
    assert "mine.json" in msg and str(tmp_path) not in msg and ".jsonl" in msg
    rows = [{"timestamp": 500 * i, "input_length": 200 + i, "output_length": 50} for i in range(40)]
    at.file_uploader(key="plan.trace").set_value(("mine.json", json.dumps(rows).encode(), "application/json"))
    at.run()
    no_failure(at)
    assert not at.error and at.metric
    f = next(f for k, f in common._FORECASTS.items() if "mine.json" in k)
    assert str(tmp_path) in f.scenario.workload.trace
    files = common.local_files(api.result_files(f))
    assert all(str(tmp_path) not in v.decode() for v in files.values())
    assert yaml.safe_load(files["scenario.yaml"])["workload"]["trace"] == "mine.json"


def test_capacity_runs_candidates_in_parallel_and_ranks_by_the_deciding_column(monkeypatch):
    calls = []
    search = api.run_search
    monkeypatch.setattr(api, "run_search", lambda spec, **kw: calls.append(kw) or search(spec, **kw))
    at = app("capacity")
    assert "uploaded trace" in at.radio(key="cap.mode").options
    at.number_input(key="cap.n").set_value(60)
    at.multiselect(key="cap.gpus").set_value(["t4", "l4", "h100-sxm"])
    at.multiselect(key="cap.dtypes").set_value(["fp8"]).run()
    at.button(key="cap.run").click().run()
    no_failure(at)
    assert calls[0]["workers"] == min(3, os.cpu_count() or 1)  # one process per candidate, up to the cores
    assert calls[0]["backend"] == ("processes" if calls[0]["workers"] > 1 else "serial")
    table = at.dataframe[0].value
    assert table.columns[0] == "$/h at target"
    cost = table["$/h at target"].dropna()
    assert list(cost) == sorted(cost) and len(cost) >= 1
    assert table["$/h at target"].isna().sum() == (table["status"] != "meets the SLOs").sum()
    assert list(table["$/h at target"].isna()) == sorted(table["$/h at target"].isna())  # unranked last
    frontier = at.dataframe[1].value
    assert list(frontier.columns) == ["max req/s", "$/h", "$ per 1M tokens"] and len(frontier) >= 1


def test_plan_shows_capacity_and_headroom_beside_the_forecast():
    from simulator.metrics import capacity

    at = app(capacity=True)
    at.number_input(key="plan.n").set_value(120).run()
    no_failure(at)
    sc = api.parse_scenario(
        {
            "name": "my-plan",
            "model": "llama-3.1-8b",
            "hardware": {"gpu": "h100-sxm"},
            "workload": json.loads(json.dumps(api.WORKLOADS["chat (Poisson, lognormal lengths)"]))
            | {"num_requests": 120},
            "slo": {"ttft_s": 0.5, "tpot_s": 0.05},
        }
    )
    cap = capacity(sc, api.simulate(sc).summary)
    shown = {m.label: m for m in at.metric}
    assert shown["capacity within SLOs (req/s)"].value == f"{cap['max_rate_per_s']:.2f}"
    assert shown["load / capacity"].value == f"{cap['offered_load_fraction']:.0%}"
    assert "headroom" in shown["offered load (req/s)"].proto.delta


def test_plan_shows_where_the_time_goes():
    from simulator.breakdown import breakdown_rows, step_breakdown

    at = app()
    at.number_input(key="plan.n").set_value(80).run()
    no_failure(at)
    f = list(common._FORECASTS.values())[-1]  # the one shown (the latest used)
    (shown,) = [d.value for d in at.dataframe if "operation group" in d.value.columns]
    assert shown.values.tolist() == breakdown_rows(step_breakdown(f))
    assert any(e.label == "Where the time goes" for e in at.expander)
    from simulator.deploy import vllm_serve

    assert [c.value for c in at.code] == [vllm_serve(f.scenario).line]  # the deployable answer


def test_plan_shows_what_fits_on_request():
    from simulator.fit import fit_cells, what_fits

    at = app()
    at.number_input(key="plan.n").set_value(60).run()
    at.toggle(key="plan.fit.on").set_value(True).run()
    at.multiselect(key="plan.fit.gpus").set_value(["t4"]).run()
    no_failure(at)
    (shown,) = [d.value for d in at.dataframe if "max batch" in d.value.columns]
    assert shown.values.tolist() == [fit_cells(r) for r in what_fits("llama-3.1-8b", ["t4"])]


def test_capacity_searches_an_uploaded_trace(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "UPLOADS", tmp_path / "uploads")
    at = app("capacity")
    at.radio(key="cap.mode").set_value("uploaded trace").run()
    rows = [{"timestamp": 250 * i, "input_length": 300 + i, "output_length": 40} for i in range(60)]
    at.file_uploader(key="cap.trace").set_value(("mine.json", json.dumps(rows).encode(), "application/json"))
    at.multiselect(key="cap.gpus").set_value(["h100-sxm"])
    at.multiselect(key="cap.dtypes").set_value(["fp8"]).run()
    at.button(key="cap.run").click().run()
    no_failure(at)
    assert not at.error
    table = at.dataframe[0].value
    assert len(table) == 1 and table["max req/s"].iloc[0] > 0


def test_an_uploaded_scenario_naming_files_elsewhere_says_so():
    at = app()
    _upload_scenario(
        at, UPLOADED | {"model": "/home/someone/my-model/config.json", "hardware": {"gpu": "mine.yaml"}}
    )
    no_failure(at)
    warned = " ".join(w.value for w in at.warning)
    assert "/home/someone/my-model/config.json" in warned and "mine.yaml" in warned
