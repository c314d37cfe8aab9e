"""Plan: one configuration on one workload; the forecast against the SLOs."""

import hashlib

import streamlit as st

from app_pages.common import (
    HANDLED,
    extra_sections,
    gpu_picker,
    hosted_api_picker,
    model_form,
    model_picker,
    read_yaml_upload,
    run_forecast,
    scenario_of_now,
    show_forecast,
    show_what_fits,
    slo_picker,
    upload_name,
    with_capacity,
    workload_picker,
)
from app_pages.day_view import show_day
from core.engine_profile import engine_names
from simulator.engines import serving_values
from simulator.scenario import Hardware, Scenario, Serving

KEEP = ("plan.start", "plan.start.seen", "plan.last", "plan.capacity")

st.title("Plan")
st.caption("Pick a model, GPUs, serving settings and a workload; the forecast updates as you change them.")

base: dict = {}
with st.sidebar:
    st.header("Scenario")
    start = st.file_uploader("start from a scenario YAML (optional)", type=["yaml", "yml"], key="plan.start")
    if start is not None:  # read as a scenario file is: size, encoding, aliases, duplicate keys checked
        base = scenario_of_now(read_yaml_upload(start) or {}, upload_name(start.name, ".yaml"))
        digest = hashlib.sha256(start.getvalue()).hexdigest()
        if base and st.session_state.get("plan.start.seen") != digest:
            # a new file: every box starts from it (a widget keeps its own value over a new default)
            st.session_state["plan.start.seen"] = digest
            for k in [k for k in st.session_state if str(k).startswith("plan.") and k not in KEEP]:
                del st.session_state[k]
    name = st.text_input("name", value=base.get("name", "my-plan"), key="plan.name")
    with st.expander("Model", expanded=True):
        model = model_picker("plan", base.get("model", "llama-3.1-8b"))
    with st.expander("Hardware", expanded=True):
        hb = base.get("hardware", {})
        hardware = gpu_picker("plan", hb.get("gpu", "h100-sxm"), hb.get("gpus_per_replica", 1))
        hardware |= model_form(Hardware, hb, "plan.hw", skip=("gpu", "gpus_per_replica"))
    with st.expander("Serving"):
        engines = list(dict.fromkeys([*engine_names(), base.get("engine", "ours")]))
        engine = st.selectbox(
            "engine",
            engines,
            index=engines.index(base.get("engine", "ours")),
            key="plan.engine",
            help=Scenario.model_fields["engine"].description,
        )
        # the engine's scheduling settings are the form's defaults (its own widgets, so switching shows them)
        given = serving_values(engine, base.get("serving")) if engine != "ours" else base.get("serving")
        serving = model_form(Serving, given, "plan.serving" if engine == "ours" else f"plan.serving.{engine}")
    with st.expander("Workload", expanded=True):
        workload = base.get("workload") if base.get("workload") else workload_picker("plan")
    with st.expander("SLOs and price", expanded=True):
        slo = slo_picker("plan", (base.get("slo") or {}) if base else None)
        hosted = hosted_api_picker("plan", base.get("hosted_api"))
    extras = {}
    if any(n not in HANDLED for n in Scenario.model_fields):
        with st.expander("More settings"):
            extras = extra_sections(base, "plan.extra")
    seed = st.number_input("seed", value=int(base.get("seed", 0)), step=1, key="plan.seed")
    capacity_on = st.toggle(
        "capacity and headroom",
        value=True,
        key="plan.capacity",
        help="search for the highest rate this configuration sustains within its SLOs (a few more runs)",
    )

if model is None or workload is None:
    st.stop()
data = {
    "name": name,
    "seed": int(seed),
    "model": model,
    "hardware": hardware,
    "serving": serving,
    "workload": workload,
    "slo": slo,
} | extras
if engine != "ours":
    data["engine"] = engine
if hosted:
    data["hosted_api"] = hosted
forecast = run_forecast(data)
if forecast is not None and capacity_on:
    forecast = with_capacity(forecast)
if forecast is None and "plan.last" in st.session_state:  # a bad setting keeps the last good forecast in view
    forecast = st.session_state["plan.last"]
    st.caption("Below: the last forecast that ran; fix the setting named above to update it.")
elif forecast is not None:
    st.session_state["plan.last"] = forecast
if forecast is not None:
    stability = forecast.summary.get("stability")
    if stability is not None and stability["verdict"] == "overloaded":
        st.error(
            f"OVERLOADED: {stability['reason']}. The queue grows without bound at this rate: the latency "
            "percentiles below only measure how long the run was. Lower the rate or add capacity."
        )
    elif stability is not None and stability["verdict"] == "inconclusive":
        st.warning(f"Stability inconclusive: {stability['reason']}")
    show_forecast(forecast)
    show_day(forecast)
show_what_fits(model, "plan")
