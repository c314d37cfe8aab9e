"""The Day section of the Plan page: a run with a rate schedule or autoscaling, hour by hour (a view only)."""

import pandas as pd
import streamlit as st

from simulator.day import DAY_COST_HEAD, DAY_HOUR_HEAD, day_cost_rows, day_hour_rows
from simulator.simulation import Forecast


def show_day(forecast: Forecast) -> None:
    """Offered load beside the replicas over time, the day's cost beside the fixed fleets, and each hour."""
    d = forecast.summary.get("day")
    if d is None or forecast.day is None:
        return
    st.subheader("Day")
    c = st.columns(3)
    c[0].metric("GPU-hours", f"{d['gpu_hours']:.1f}")
    c[1].metric("cost of the run ($)", f"{d['total_usd']:,.2f}")
    c[2].metric("requests within SLO", f"{d['slo_attainment']:.1%}")
    rec = forecast.day
    chart = pd.DataFrame(
        {
            "offered req/s": rec.offered_per_s,
            "replicas ready": rec.fleet[:, 0],
            "replicas starting": rec.fleet[:, 1],
        },
        index=pd.Index(rec.time_s / 3600, name="hour"),
    )
    st.line_chart(chart)
    st.dataframe(pd.DataFrame(day_cost_rows(d), columns=list(DAY_COST_HEAD)), hide_index=True)
    a = d.get("autoscaling")
    if a is not None:
        st.caption(
            f"One replica sustains {a['replica_capacity_per_s']:.3g} req/s ({a['capacity_from']}); start-up "
            f"{a['startup_s']:.0f} s; {a['scale_ups']} scale-ups, {a['scale_downs']} scale-downs."
        )
    st.dataframe(pd.DataFrame(day_hour_rows(d), columns=list(DAY_HOUR_HEAD)), hide_index=True)
