"""Compare: two to four configurations on the same workload, the differences, and cost against a hosted API."""

import json

import pandas as pd
import streamlit as st
import yaml

from app_pages.common import merged, model_picker, run_forecast, show_fit, slo_picker, workload_picker
from core.errors import ConfigError, parse_yaml
from simulator import api

DEFAULTS = [("t4", 1, "int4"), ("a100-80gb-sxm", 1, "bf16"), ("h100-sxm", 1, "bf16"), ("h100-sxm", 1, "fp8")]
DTYPES = ["bf16", "fp16", "fp8", "int8", "int4"]

st.title("Compare")
st.caption("The same model and workload on two to four configurations, side by side.")

with st.sidebar:
    st.header("Shared")
    model = model_picker("cmp")
    workload = workload_picker("cmp", presets_only=True)
    slo = slo_picker("cmp")
    st.markdown("**Hosted API price** (USD per 1M tokens)")
    api_name = st.text_input("API name", value="hosted API", key="cmp.api.name")
    api_in = st.number_input("input", min_value=0.0, value=0.20, format="%g", key="cmp.api.in")
    api_out = st.number_input("output", min_value=0.0, value=0.60, format="%g", key="cmp.api.out")

n = st.number_input("configurations", min_value=2, max_value=4, value=3, step=1, key="cmp.count")
configs: dict[str, dict] = {}
for i, col in enumerate(st.columns(int(n))):
    gpu0, count0, dtype0 = DEFAULTS[i]
    with col:
        names = api.profile_names()
        gpu = st.selectbox("GPU", names, index=names.index(gpu0), key=f"cmp.{i}.gpu")
        count = st.number_input(
            "GPUs per replica", min_value=1, max_value=64, value=count0, key=f"cmp.{i}.gpus"
        )
        dtype = st.selectbox("weights", DTYPES, index=DTYPES.index(dtype0), key=f"cmp.{i}.dtype")
        seqs = st.number_input("max_num_seqs", min_value=1, value=256, key=f"cmp.{i}.seqs")
        extra = st.text_area(
            "other fields (YAML, e.g. serving: {precision: {kv_dtype: fp8}})",
            value="",
            key=f"cmp.{i}.extra",
            height=68,
        )
    label = f"{chr(65 + i)}: {count}× {gpu} {dtype}"
    data = {
        "name": label,
        "model": model,
        "hardware": {"gpu": gpu, "gpus_per_replica": int(count)},
        "serving": {"precision": {"weight_dtype": dtype}, "batching": {"max_num_seqs": int(seqs)}},
        "workload": workload,
        "slo": slo,
        "hosted_api": {"name": api_name, "usd_per_1m_input": api_in, "usd_per_1m_output": api_out},
    }
    try:  # the checked loader: aliases, duplicate keys and tags as in a scenario file
        more = parse_yaml(extra, f"{label}: other fields") if extra.strip() else {}
        if not isinstance(more, dict):
            raise ConfigError(
                f"{label}: other fields: write a mapping, e.g. serving: {{precision: {{kv_dtype: fp8}}}}"
            )
    except ConfigError as e:
        st.error(str(e))
        continue
    for path, value in more.items():
        data = merged(data, {path: value}) if isinstance(value, dict) else api.set_field(data, path, value)
    configs[label] = data

if model is None or workload is None:
    st.stop()

forecasts = {}
progress = st.progress(0.0, text="simulating …")
for j, (label, data) in enumerate(configs.items()):
    f = run_forecast(data, label)
    if f is not None:
        forecasts[label] = f
    progress.progress((j + 1) / len(configs), text=f"simulated {j + 1} of {len(configs)}")
progress.empty()
if len(forecasts) < 1:
    st.stop()

st.subheader("Side by side")
for label, f in forecasts.items():
    if not f.fits:
        show_fit(f, label)
table = pd.DataFrame.from_dict(api.table(forecasts), orient="index")
# an overloaded configuration's latencies and cost only measure how long its run was: say so, rank it not
overloaded = {
    label: f.summary["stability"]
    for label, f in forecasts.items()
    if f.fits and f.summary.get("stability", {}).get("verdict") == "overloaded"
}
table.loc["stability"] = [
    forecasts[c].summary.get("stability", {}).get("verdict", "—") if forecasts[c].fits else "—"
    for c in table.columns
]


def _show(metric: str, v) -> str:
    if isinstance(v, float):
        if v != v:
            return "—"
        if metric == "SLO attainment":
            return f"{v:.1%}"
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    return f"{v:,}" if isinstance(v, int) else str(v)


shown = pd.DataFrame(
    {c: [_show(m, v) for m, v in table[c].items()] for c in table.columns}, index=table.index
)
st.dataframe(shown, key="cmp.table", height=35 * (len(shown) + 1) + 3)
st.subheader("Differences")
for label, stb in overloaded.items():
    st.markdown(
        f"- {label} is OVERLOADED at this workload ({stb['reason']}): not ranked, its latencies and cost "
        "per token grow with the run's length"
    )
for note in api.differences({k: f for k, f in forecasts.items() if k not in overloaded}):
    st.markdown(f"- {note}")

st.subheader(f"Cost against {api_name}")
rows = []
for label, f in forecasts.items():
    be = api.break_even(f, api_in, api_out)
    if be is None:
        continue
    rows.append(
        {
            "configuration": label,
            "self-hosted $ per 1M tokens": f.summary["cost"]["usd_per_1m_tokens"],
            f"{api_name} $ per 1M tokens": be.api_usd_per_1m_tokens,
            "one copy $/month": be.self_hosted_usd_per_month,
            "break-even tokens/month": be.tokens_per_month,
            "break-even req/s": be.requests_per_s,
            "served at this load, tokens/month": be.served_tokens_per_month,
            "pays off at this load": "yes" if be.pays_off_at_simulated_load else "no",
        }
    )
if rows:
    st.dataframe(pd.DataFrame(rows).set_index("configuration"))
    st.caption(
        "Break-even: the monthly token volume at which one copy running around the clock costs what "
        "the API would charge for the same tokens (this workload's input/output mix)."
    )

st.download_button(
    "scenarios.yaml",
    yaml.safe_dump_all(
        [f.scenario.model_dump(mode="json", exclude_none=True) for f in forecasts.values()], sort_keys=False
    ),
    file_name="scenarios.yaml",
    mime="application/yaml",
    key="cmp.dl.yaml",
)
st.download_button(
    "comparison.csv", table.to_csv(), file_name="comparison.csv", mime="text/csv", key="cmp.dl.csv"
)
st.download_button(
    "summaries.json",
    json.dumps({k: f.summary for k, f in forecasts.items()}, indent=2, default=str),
    file_name="summaries.json",
    mime="application/json",
    key="cmp.dl.json",
)
