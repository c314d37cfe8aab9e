"""Calibration: the GPU profiles, calibrated or datasheet, with fit errors and measured-vs-fitted plots."""

from pathlib import Path

import pandas as pd
import streamlit as st

from core.errors import ConfigError
from core.hardware import PROFILE_DIR
from simulator import api

st.title("Calibration")
st.caption(
    "A calibrated profile carries efficiencies fitted to kernels timed on the GPU (`python -m calibrate`); "
    "a datasheet profile uses the vendor's peak figures with default efficiencies."
)

profiles, problems = {}, []
for name in api.profile_names():
    try:
        profiles[name] = api.load_profile(name)
    except ConfigError as e:
        problems.append(str(e))
for p in problems:
    st.error(p)


def _step_error(p) -> float | None:
    errs = (p.calibration.model_dump().get("fit_errors_pct") or {}) if p.calibration else {}
    return (errs.get("step", {}).get("holdout") or {}).get("median_pct")


rows = []
for name, p in profiles.items():
    cal = p.calibration
    rows.append(
        {
            "profile": name,
            "GPU": p.display_name,
            "memory (GiB)": p.memory_gib,
            "bandwidth (GB/s)": p.memory_bandwidth_gbps,
            "bf16 TFLOP/s": p.peak_tflops.bf16 or p.peak_tflops.fp16,
            "$/hour": p.price.usd_per_hour,
            "status": ("calibrated" if p.is_calibrated else cal.status) if cal else "datasheet",
            "calibrated on": cal.date if cal else "",
            "step error, held out (median %)": _step_error(p),
        }
    )
st.dataframe(pd.DataFrame(rows).set_index("profile"), key="cal.table")

name = st.selectbox(
    "profile",
    list(profiles),
    index=next((i for i, p in enumerate(profiles.values()) if p.is_calibrated), 0),
    key="cal.profile",
)
p = profiles[name]
if p.calibration is None:
    st.info(
        f"{p.display_name}: datasheet profile (no calibration block). Run `python -m calibrate` on this GPU "
        "to measure it; until then the efficiencies are defaults."
    )
    st.stop()
cal = p.calibration.model_dump()
st.markdown(
    f"**{p.display_name}** — {cal.get('status')} on {cal.get('gpu') or '?'} ({cal.get('date') or 'no date'})"
    + (f", `{cal['command']}`" if cal.get("command") else "")
)
errs = cal.get("fit_errors_pct") or {}
if errs:
    fit_rows = []
    for group, e in errs.items():
        tr, ho = e.get("train") or {}, e.get("holdout") or {}
        fit_rows.append(
            {
                "group": group,
                "fit median %": tr.get("median_pct"),
                "fit p90 %": tr.get("p90_pct"),
                "fit n": tr.get("n"),
                "held-out median %": ho.get("median_pct"),
                "held-out p90 %": ho.get("p90_pct"),
                "held-out n": ho.get("n"),
            }
        )
    st.markdown("**Fit errors** (|fitted − measured| / measured)")
    st.dataframe(pd.DataFrame(fit_rows).set_index("group"), key="cal.errors")
if cal.get("ceilings"):
    st.markdown("**Measured ceilings**")
    st.dataframe(
        pd.DataFrame([cal["ceilings"]]).T.rename(columns={0: "value"}).astype(str), key="cal.ceilings"
    )

run_file = (cal.get("measurements") or {}).get("file")
folders = []
if run_file:
    for root in (Path.cwd(), PROFILE_DIR.parent):
        folders.append((root / run_file).parent)
folders += [Path.cwd() / "calibration_runs" / name, PROFILE_DIR.parent / "calibration_runs" / name]
folder = next((f for f in folders if f.is_dir()), None)
pngs = sorted(folder.glob("fit_*.png")) if folder else []
if pngs:
    st.markdown(f"**Measured vs fitted** (from `{folder.name}/`; crosses are held-out shapes)")
    for png in pngs:
        st.image(str(png), caption=png.stem.removeprefix("fit_"))
else:
    st.info(
        "No measured-vs-fitted plots found (calibration_runs/<profile>/fit_*.png); "
        "`python -m calibrate fit calibration_runs/<profile>` draws them from the stored measurements."
    )
