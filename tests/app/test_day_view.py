"""The Plan page's Day section (issue 21): a scenario with a rate schedule and autoscaling shows the day's
cost, the fixed fleets beside it and each hour, the simulator's numbers."""

from __future__ import annotations

import pytest

pytest.importorskip("streamlit")

from simulator import api  # noqa: E402
from tests.app.test_app import app, no_failure  # noqa: E402
from tests.app.test_planner import _upload_scenario  # noqa: E402

DAY = {
    "name": "day-plan",
    "model": "qwen2.5-0.5b",
    "hardware": {"gpu": "a100-80gb-sxm"},
    "workload": {
        "arrival": {"process": "poisson"},
        "schedule": {"kind": "steps", "steps": [{"start_s": 0, "rate_per_s": 1.0}, {"start_s": 300, "rate_per_s": 6.0}]},
        "duration_s": 600,
    },
    "slo": {"ttft_s": 0.3},
    "cluster": {
        "autoscaling": {"min_replicas": 1, "max_replicas": 4, "replica_capacity_per_s": 2.0, "window_s": 30,
                        "interval_s": 10}
    },
}  # fmt: skip


def test_plan_shows_the_day_of_an_uploaded_autoscaled_scenario():
    at = app()
    _upload_scenario(at, DAY)
    no_failure(at)
    assert "Day" in [s.value for s in at.subheader]
    expect = api.forecast(DAY).summary["day"]
    shown = {m.label: m.value for m in at.metric}
    assert shown["GPU-hours"] == f"{expect['gpu_hours']:.1f}"
    assert shown["cost of the run ($)"] == f"{expect['total_usd']:,.2f}"
    costs = [df.value for df in at.dataframe if "per 1M tokens" in df.value.columns][0]
    assert costs.iloc[1, 0].startswith("fixed: 3 replicas")  # ceil(6 / 2)
