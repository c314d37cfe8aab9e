"""Capacity: the cheapest configuration meeting the SLOs at a target rate, and latency against load."""

import json
import os
import time

import pandas as pd
import streamlit as st
import yaml

from app_pages.common import cached_curve, key_of, local_names, model_picker, slo_picker, workload_picker
from core.errors import ConfigError
from simulator import api, plots
from simulator.search import to_csv

NUMBER_FORMATS = {
    "$/h at target": st.column_config.NumberColumn(format="dollar"),
    "copies for target": st.column_config.NumberColumn(format="%d"),
    "max req/s": st.column_config.NumberColumn(format="%.2f"),
    "$/h": st.column_config.NumberColumn(format="dollar"),
    "$ per 1M tokens": st.column_config.NumberColumn(format="$%.3f"),
    "TTFT p90 (ms)": st.column_config.NumberColumn(format="%.0f"),
    "TPOT p90 (ms)": st.column_config.NumberColumn(format="%.1f"),
    "E2E p90 (ms)": st.column_config.NumberColumn(format="%.0f"),
}


def ranked(result: api.SearchResult, target: float | None) -> tuple[pd.DataFrame, str]:
    """The candidates best first, the deciding column first (what one target rate costs, or $ per 1M
    tokens with no target); candidates that meet the SLOs at no rate last, with why."""
    out = []
    for r in result.results:
        copies = r.copies_for(target) if target and r.status == "ok" else None
        out.append(
            {
                "$/h at target": copies * r.usd_per_hour if copies else None,
                "copies for target": copies,
                "max req/s": r.max_rate_per_s if r.status == "ok" else None,
                "configuration": r.label,
                "$/h": r.usd_per_hour,
                "$ per 1M tokens": r.usd_per_1m_tokens if r.status == "ok" else None,
                "TTFT p90 (ms)": r.ttft_p90_s * 1e3 if r.status == "ok" else None,
                "TPOT p90 (ms)": r.tpot_p90_s * 1e3 if r.status == "ok" else None,
                "E2E p90 (ms)": r.e2e_p90_s * 1e3 if r.status == "ok" else None,
                "status": r.status if r.status != "ok" else "meets the SLOs",
                "why not": "" if r.status == "ok" else (r.message or r.failed_because),
            }
        )
    deciding = "$/h at target" if target else "$ per 1M tokens"
    table = pd.DataFrame(out)
    if not target:
        table = table.drop(columns=["$/h at target", "copies for target"])
        table = table[[deciding, *(c for c in table.columns if c != deciding)]]
    table = table.sort_values([deciding, "max req/s"], ascending=[True, False], na_position="last")
    return table.set_index(pd.RangeIndex(1, len(table) + 1, name="rank")), deciding


st.title("Capacity")
st.caption(
    "Each candidate's highest request rate that is stable (no growing queue over a run sized from its "
    "service time) and within the SLOs (binary search), the cheapest way to serve a target rate, and "
    "where each SLO breaks as load grows."
)

with st.sidebar:
    st.header("Target")
    model = model_picker("cap")
    workload = workload_picker("cap")
    slo = slo_picker("cap")
    attainment = st.slider("share of requests that must meet the SLOs", 0.5, 1.0, 0.9, 0.01, key="cap.att")
    target = st.number_input("target rate (req/s)", min_value=0.01, value=10.0, format="%g", key="cap.target")

st.markdown("**Candidates** (every combination is tried)")
c1, c2, c3, c4 = st.columns(4)
gpus = c1.multiselect(
    "GPUs", api.profile_names(), default=["l4", "a100-80gb-sxm", "h100-sxm"], key="cap.gpus"
)
counts = c2.multiselect("GPUs per replica", [1, 2, 4, 8], default=[1], key="cap.counts")
dtypes = c3.multiselect(
    "weights", ["bf16", "fp16", "fp8", "int8", "int4"], default=["bf16", "fp8"], key="cap.dtypes"
)
seqs = c4.multiselect("max_num_seqs", [16, 32, 64, 128, 256, 512], default=[256], key="cap.seqs")

if model is None or workload is None:
    st.stop()
spec_data = {
    "name": "capacity",
    "base": {"name": "capacity", "model": model, "workload": workload, "slo": slo},
    "sweep": {
        "hardware.gpu": gpus,
        "hardware.gpus_per_replica": counts,
        "serving.precision.weight_dtype": dtypes,
        "serving.batching.max_num_seqs": seqs,
    },
    "slo_attainment": attainment,
    "target_rate_per_s": target,
}
try:
    spec = api.parse_spec(spec_data, "capacity search")
except ConfigError as e:
    st.error(local_names(str(e)))
    st.stop()
n_configs = len(gpus) * len(counts) * len(dtypes) * len(seqs)
spec_key = key_of(spec.model_dump(mode="json"))
if st.button(f"Search {n_configs} configurations", type="primary", key="cap.run"):
    bar = st.progress(0.0, text="searching …")
    t0 = time.perf_counter()

    def progress(done: int, total: int) -> None:
        el = time.perf_counter() - t0
        left = f", about {el / done * (total - done):.0f} s left" if done else ""
        bar.progress(done / total, text=f"{done} of {total} configurations{left}")

    try:
        # the candidates in parallel, one process per core (the CLI's pool); one candidate in-process
        workers = min(n_configs, os.cpu_count() or 1)
        result = api.run_search(
            spec, backend="processes" if workers > 1 else "serial", workers=workers, progress=progress
        )
        st.session_state["cap.result"] = (spec_key, result)
    except Exception as e:  # noqa: BLE001 - a message in the page, never a traceback
        st.error(f"the search failed: {type(e).__name__}: {local_names(str(e))}")
    bar.empty()
got = st.session_state.get("cap.result")
if not got or got[0] != spec_key:
    st.info("Choose the candidates and press Search.")
    st.stop()
result = got[1]

best = result.cheapest(target, n=1)
if best:
    b = best[0]
    copies = b.copies_for(target)
    st.success(
        f"Cheapest for {target:g} req/s: {copies}× ({b.label}) at ${copies * b.usd_per_hour:,.2f}/hour — "
        f"each copy sustains {b.max_rate_per_s:.2f} req/s within the SLOs (${b.usd_per_1m_tokens:.3f} per 1M tokens there)."
    )
    st.caption(
        f"Bracket: {b.max_rate_per_s:.2f} req/s passed (a stable run of {b.probe_requests:,} requests meeting the "
        + (
            f"SLOs); {b.failed_rate_per_s:.2f} req/s fails ({b.failed_because})."
            if b.failed_rate_per_s == b.failed_rate_per_s
            else "SLOs)."
        )
    )
else:
    st.error(
        "No candidate meets the SLOs at any rate; relax the SLOs or add bigger GPUs, more GPUs per replica or lower precision."
    )
table, deciding = ranked(result, target)
st.markdown(f"**Candidates**, ranked by {deciding} (those that meet the SLOs at no rate last)")
st.dataframe(table, key="cap.table", column_config=NUMBER_FORMATS)
fr = result.frontier()
if fr:
    st.markdown("**Frontier**: no other candidate is cheaper per hour and sustains more")
    frontier = pd.DataFrame(
        [
            {
                "configuration": r.label,
                "max req/s": r.max_rate_per_s,
                "$/h": r.usd_per_hour,
                "$ per 1M tokens": r.usd_per_1m_tokens,
            }
            for r in fr
        ]
    ).set_index("configuration")
    st.dataframe(frontier, key="cap.frontier", column_config=NUMBER_FORMATS)
d1, d2 = st.columns(2)
d1.download_button(
    "search.csv", local_names(to_csv(result)), file_name="search.csv", mime="text/csv", key="cap.dl.csv"
)
d2.download_button(
    "search spec YAML",
    local_names(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)),
    file_name="search.yaml",
    mime="application/yaml",
    key="cap.dl.yaml",
)

st.subheader("Latency vs load")
feasible = {r.label: r for r in result.feasible}
if not feasible:
    st.stop()
choice = st.selectbox(
    "configuration",
    list(feasible),
    index=list(feasible).index(best[0].label) if best else 0,
    key="cap.curve.cfg",
)
r = feasible[choice]
data = api.configured(spec.base, r.fields)
rates = tuple(r.max_rate_per_s * x for x in spec.load_points)
# every point as long (in time) as the probe that found the max rate, so that queues can build
window = r.probe_requests / r.max_rate_per_s if r.probe_requests else None
with st.spinner("simulating the load curve …"):
    curve = cached_curve(json.dumps(data, sort_keys=True), rates, spec.slo_attainment, window)
for name, rate in curve.breaks_at.items():
    msg = f"{name[:-2].upper()} p90 breaks its {curve.slo[name] * 1e3:g} ms SLO at "
    st.markdown(
        "- "
        + msg
        + (
            f"**{rate:.3g} req/s**"
            if rate is not None
            else f"none of the rates tried (up to {rates[-1]:.3g} req/s)"
        )
    )
if curve.unstable_at is not None:
    st.markdown(
        f"- the queue grows without bound from **{curve.unstable_at:.3g} req/s** (overloaded): latencies there "
        "only measure how long the run was"
    )
curve_df = pd.DataFrame(
    [
        {
            "rate (req/s)": p.rate_per_s,
            "TTFT p90 (ms)": p.ttft_p90_s * 1e3,
            "TPOT p90 (ms)": p.tpot_p90_s * 1e3,
            "E2E p90 (ms)": p.e2e_p90_s * 1e3,
            "SLO attainment": p.attainment,
            "stability": p.verdict,
        }
        for p in curve.probes
    ]
)
st.pyplot(plots.latency_vs_load(curve, title=choice))
st.dataframe(curve_df, key="cap.curve.table")
