"""A day of traffic: rate schedules, autoscaling, and the day's cost (simulator/rate_schedule.py,
simulator/autoscaling.py, simulator/day.py)."""

import copy
import math

import numpy as np
import pytest

from core.errors import ConfigError
from core.kv_cache import BlockPool
from core.model_spec import load_model
from simulator.autoscaling import startup_s
from simulator.cluster import plan_groups
from simulator.rate_schedule import clock_times, cumulative, hourly_rates, offered, rate_at
from simulator.scenario import Startup, parse_scenario
from simulator.simulation import build, run, simulate
from simulator.workload import generate

BASE = {
    "model": "llama-3.1-8b",
    "hardware": {"gpu": "h100-sxm"},
    "workload": {
        "arrival": {"process": "poisson"},
        "prompt_tokens": {"dist": "fixed", "value": 256},
        "output_tokens": {"dist": "fixed", "value": 32},
    },
    "slo": {"ttft_s": 0.5, "tpot_s": 0.05},
}


def scenario(**over):
    data = copy.deepcopy(BASE)
    for path, v in over.items():
        node = data
        *head, last = path.split("__")
        for k in head:
            node = node.setdefault(k, {})
        node[last] = v
    return parse_scenario(data)


def steps(*pairs):
    return {"kind": "steps", "steps": [{"start_s": a, "rate_per_s": r} for a, r in pairs]}


# ---------------------------------------------------------------- schedules
def test_one_step_schedule_is_exactly_the_constant_rate():
    """A constant schedule with autoscaling off gives today's results, request for request."""
    for extra in ({}, {"cluster": {"replicas": 3}}):
        plain = scenario(workload__arrival__rate_per_s=3.0, workload__num_requests=600, **extra)
        sched = scenario(workload__schedule=steps((0, 3.0)), workload__num_requests=600, **extra)
        a, b = simulate(plain), simulate(sched)
        for col in ("arrival_s", "first_token_s", "finish_s", "replica"):
            np.testing.assert_array_equal(getattr(a.table, col), getattr(b.table, col))
        assert a.summary["latency_s"] == b.summary["latency_s"] and a.summary["cost"] == b.summary["cost"]


def test_daily_cosine_hourly_counts_follow_the_curve():
    sc = scenario(
        workload__schedule={
            "kind": "daily",
            "peak_rate_per_s": 2.0,
            "trough_rate_per_s": 0.5,
            "peak_hour": 14,
        },
        workload__duration_s=86400,
    )
    arrival = generate(sc.workload, 0).arrival_s
    counts = np.bincount((arrival // 3600).astype(int), minlength=24)
    expected = hourly_rates(sc.workload.schedule, 86400) * 3600
    assert np.argmax(expected) in (13, 14) and np.argmin(expected) in (1, 2)  # the peak hour straddles 14:00
    assert rate_at(sc.workload.schedule, [14 * 3600, 2 * 3600]).tolist() == pytest.approx([2.0, 0.5])
    assert 3.85 < expected.max() / expected.min() < 4.0  # hourly means of a 4:1 cosine
    # Poisson counts: within 4 standard deviations every hour
    assert np.all(np.abs(counts - expected) < 4 * np.sqrt(expected))
    # Λ⁻¹(Λ(t)) = t for the cosine (Newton-refined inverse)
    t = np.linspace(0, 3 * 86400, 1001)
    np.testing.assert_allclose(
        clock_times(sc.workload.schedule, cumulative(sc.workload.schedule, t)), t, atol=1e-6
    )


def test_gamma_bursts_and_class_shares_hold_under_a_schedule():
    classes = [{"name": "a", "share": 3}, {"name": "b", "share": 1}]
    sc = scenario(
        workload__arrival={"process": "gamma", "cv": 3.0},
        workload__schedule=steps((0, 2.0), (5000, 8.0)),
        workload__duration_s=10000,
        workload__classes=classes,
    )
    r = generate(sc.workload, 1)
    first, late = r.arrival_s < 5000, r.arrival_s >= 5000
    assert late.sum() / first.sum() == pytest.approx(4.0, rel=0.25)  # gamma at cv 3: noisier than Poisson
    for part in (first, late):
        assert (r.class_id[part] == 0).mean() == pytest.approx(0.75, abs=0.04)
    # burstiness: gaps in operational time (rescaled by the rate) keep cv ~3
    t = r.arrival_s[late]
    gaps = np.diff(t) * 8.0
    assert gaps.std() / gaps.mean() == pytest.approx(3.0, rel=0.3)
    # the same seed draws the same day
    np.testing.assert_array_equal(generate(sc.workload, 1).arrival_s, r.arrival_s)


def test_hourly_counts_schedule():
    sc = scenario(
        workload__schedule={"kind": "hourly", "requests_per_hour": [360, 1080]}, workload__duration_s=7200
    )
    a = generate(sc.workload, 0).arrival_s
    assert abs((a < 3600).sum() - 360) < 4 * 19 and abs((a >= 3600).sum() - 1080) < 4 * 33


def test_hourly_counts_from_a_trace(tmp_path):
    """A trace's own arrivals per hour, counted from its first arrival, become the schedule's counts."""
    arrivals = [100.0] * 3 + [3700.0] * 5 + [7300.0, 7400.0]  # hours 0, 1, 2 of the trace: 3, 5, 2
    rows = "\n".join(f"{a + i},{100 + i},{10 + i}" for i, a in enumerate(arrivals))
    trace = tmp_path / "t.csv"
    trace.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n" + rows + "\n")
    sc = scenario(
        workload__schedule={"kind": "hourly", "from_trace": str(trace), "scale": 100},
        workload__duration_s=3 * 3600,
    )
    assert sc.workload.schedule.requests_per_hour == [300.0, 500.0, 200.0]
    a = generate(sc.workload, 0).arrival_s
    assert abs((a < 3600).sum() - 300) < 4 * 18 and abs(((a >= 3600) & (a < 7200)).sum() - 500) < 4 * 23


@pytest.mark.parametrize(
    ("schedule", "says"),
    [
        ({"kind": "hourly"}, "give requests_per_hour or from_trace"),
        ({"kind": "hourly", "requests_per_hour": [1], "from_trace": "conversation"}, "one of them"),
        ({"kind": "hourly", "requests_per_hour": [1], "scale": 2}, "scale is for from_trace"),
        ({"kind": "hourly", "from_trace": "/nonexistent.csv"}, "not found"),
    ],
)
def test_hourly_from_trace_bad_input_is_one_line(schedule, says):
    with pytest.raises(ConfigError) as e:
        scenario(workload__schedule=schedule, workload__duration_s=3600)
    assert says in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------- autoscaling
def _run(sc):
    model = load_model(sc.model)
    groups = plan_groups(sc, model)
    dep = build(sc, model, groups, {g.name: None for g in groups}, generate(sc.workload, sc.seed))
    run(dep)
    return dep


def test_step_change_scales_up_after_the_configured_delay():
    """Worked by hand: constant arrivals at 2/s, then 6/s from t=100. Replica capacity 2.5 req/s at target 1.0;
    window 10 s, decisions every 5 s, scale-up delay 10 s, start-up 20 s + weights at 1000 GB/s.
    Offered rate over (t−10, t]: 2 until 100; 4 at 105 (10 + 30 arrivals); 6 from 110. Recommendations
    ceil(rate/2.5): 1 … 1 (t=100), 2 (105), 3 (110), 3 (115)… The fleet grows to the least recommendation
    of the last 10 s: min(1,2,3) = 1 at 110, min(2,3,3) = 2 at 115, 3 at 120. So two scale-ups, decided at 115
    and 120, ready 20.016 s later; nothing before them."""
    startup = {"load_gb_per_s": 1000, "engine_start_s": 20, "cuda_graph_capture_s": 0}
    sc = scenario(
        workload__arrival={"process": "constant"},
        workload__schedule=steps((0, 2.0), (100, 6.0)),
        workload__duration_s=200,
        cluster={"router": "round_robin", "autoscaling": {
            "min_replicas": 1, "max_replicas": 4, "policy": "utilisation", "replica_capacity_per_s": 2.5,
            "target_utilisation": 1.0, "window_s": 10, "interval_s": 5, "scale_up_delay_s": 10,
            "scale_down_delay_s": 1000, "startup": startup,
        }},
    )  # fmt: skip
    dep = _run(sc)
    a = dep.autoscaler
    assert a.scale_ups == pytest.approx([115.0, 120.0])
    s = startup_s(Startup(**startup), dep.groups[0].mem.weight_bytes)
    assert s == pytest.approx(20 + dep.groups[0].mem.weight_bytes / 1e12)
    fleet = [(c.t, c.ready, c.starting) for c in a.changes]
    assert fleet[:5] == [(0.0, 1, 0), (115.0, 1, 1), (120.0, 1, 2), (pytest.approx(115 + s), 2, 1),
                         (pytest.approx(120 + s), 3, 0)]  # fmt: skip
    # the router sent nothing to a replica before it was ready
    t = dep.table
    for k, when in ((1, 115 + s), (2, 120 + s)):
        got = t.replica == dep.engines[k].index
        assert got.any() and t.arrival_s[got].min() >= when - 1e-9
    assert (t.replica == dep.engines[3].index).sum() == 0


def test_scale_down_drains_and_forgets_the_prefix_cache():
    sc = scenario(
        workload__schedule=steps((0, 8.0), (300, 0.5)),
        workload__duration_s=900,
        serving={"caching": {"prefix_caching": True}},
        workload__classes=[{"name": "chat", "share": 1, "shared_prefix_tokens": 128}],
        cluster={"autoscaling": {
            "min_replicas": 1, "max_replicas": 3, "initial_replicas": 3, "policy": "utilisation",
            "replica_capacity_per_s": 4.0, "window_s": 30, "interval_s": 10, "scale_down_delay_s": 60,
        }},
    )  # fmt: skip
    dep = _run(sc)
    a = dep.autoscaler
    assert a.changes[-1].ready == 1 and a.changes[-1].draining == 0
    assert any(c.draining for c in a.changes)
    np.testing.assert_array_equal(
        np.isfinite(dep.table.finish_s), ~dep.table.rejected
    )  # drained, not dropped
    stopped = [engines[0] for engines, st in zip(a.replicas, a.state, strict=True) if st.value == "off"]
    assert stopped and all(not e.pool.cached for e in stopped)


def test_drop_cache_refuses_a_pool_in_use():
    pool = BlockPool(10, 16, prefix_caching=True)
    pool.allocate(2)
    with pytest.raises(RuntimeError):
        pool.drop_cache()


@pytest.mark.parametrize("policy", ["queue", "slo"])
def test_queue_and_slo_policies_follow_a_burst_up_and_back(policy):
    sc = scenario(
        # one replica meets the SLOs at 80 req/s (TTFT p90 41 ms) but not at 120 (646 ms)
        workload__schedule=steps((0, 2.0), (200, 120.0), (400, 2.0)),
        workload__duration_s=900,
        cluster={"autoscaling": {
            "min_replicas": 1, "max_replicas": 6, "policy": policy, "target_ongoing_per_replica": 8,
            "window_s": 30, "interval_s": 10, "scale_down_delay_s": 60,
            "startup": {"engine_start_s": 5, "cuda_graph_capture_s": 0, "load_gb_per_s": 1000},
        }},
    )  # fmt: skip
    dep = _run(sc)
    a = dep.autoscaler
    peak = max(c.ready for c in a.changes)
    assert peak >= 2 and 200 <= a.scale_ups[0] < 400
    assert a.changes[-1].ready < peak


def test_zero_startup_day_costs_about_the_hourly_right_sized_fleets():
    """Zero start-up and a utilisation policy that tracks the load: the day costs about what a fixed fleet
    sized for each hour's rate costs, summed over the hours. Hourly rates 0.5, 1.5, 2.5, 0.7 req/s against
    1 req/s per replica: 1, 2, 3, 1 replicas (7 replica-hours). The autoscaler lags each change by up to its
    window + interval (+ the scale-down delay and the drain going down); the tolerance is that lag times the
    replicas changed (1 + 1 + 2), over the 7 replica-hours: (300 + 10 + 30 + 30 s drain) × 4 / 25,200 s = 5.9%."""
    auto = {
        "min_replicas": 1, "max_replicas": 5, "policy": "utilisation", "replica_capacity_per_s": 1.0,
        "target_utilisation": 1.0, "window_s": 300, "interval_s": 10, "scale_down_delay_s": 30,
        "startup": {"engine_start_s": 0, "cuda_graph_capture_s": 0, "load_gb_per_s": 1000},
    }  # fmt: skip
    sc = scenario(
        workload__schedule={"kind": "hourly", "requests_per_hour": [1800, 5400, 9000, 2520]},
        workload__duration_s=4 * 3600,
        cluster={"autoscaling": auto},
    )
    f = simulate(sc)
    day = f.summary["day"]
    a = day["autoscaling"]
    assert a["right_sized_hourly"]["replicas"] == [1, 2, 3, 1]
    price = f.summary["hardware"]["price_per_gpu_hour_usd"]
    assert a["right_sized_hourly"]["total_usd"] == pytest.approx(7 * price, rel=1e-3)
    assert day["total_usd"] == pytest.approx(a["right_sized_hourly"]["total_usd"], rel=370 * 4 / 25200)
    assert a["fixed_fleet"]["replicas"] == 3 and a["fixed_fleet"]["total_usd"] > day["total_usd"]
    assert f.summary["cost"]["total_usd"] == day["total_usd"]  # the summary's cost is the fleet held
    assert len(day["hours"]) == 4 and [round(h["replicas_mean"]) for h in day["hours"]] == [1, 2, 3, 1]


def test_startup_time_is_weights_over_bandwidth_plus_engine_and_graphs():
    w = 16e9
    assert startup_s(Startup(), w) == pytest.approx(w / 1.8e9 + 41 + 17)
    assert startup_s(Startup(storage="network_volume"), w) == pytest.approx(w / 1.0e9 + 58)
    assert startup_s(Startup(load_gb_per_s=10, engine_start_s=0, cuda_graph_capture_s=0), w) == pytest.approx(
        1.6
    )


# ---------------------------------------------------------------- bad input: one line naming the field
AUTO = {"min_replicas": 1, "max_replicas": 4}
BAD = [
    ({"workload": {"schedule": {"kind": "weekly"}}}, "workload.schedule"),
    ({"workload": {"schedule": steps((5, 1.0))}}, "workload.schedule.steps"),
    ({"workload": {"schedule": steps((0, 1.0), (0, 2.0))}}, "workload.schedule.steps"),
    ({"workload": {"schedule": steps((0, 0.0))}}, "workload.schedule.steps"),
    ({"workload": {"schedule": steps((0, -1.0))}}, "rate_per_s"),
    ({"workload": {"schedule": {"kind": "steps", "steps": []}}}, "workload.schedule.steps.steps"),
    (
        {"workload": {"schedule": {"kind": "daily", "peak_rate_per_s": 1, "trough_rate_per_s": 2}}},
        "trough_rate_per_s",
    ),
    (
        {"workload": {"schedule": {"kind": "daily", "peak_rate_per_s": 0, "trough_rate_per_s": 0}}},
        "peak_rate_per_s",
    ),
    (
        {
            "workload": {
                "schedule": {"kind": "daily", "peak_rate_per_s": 2, "trough_rate_per_s": 1, "peak_hour": 24}
            }
        },
        "peak_hour",
    ),
    (
        {
            "workload": {
                "schedule": {"kind": "daily", "peak_rate_per_s": 2, "trough_rate_per_s": 1, "shape": "square"}
            }
        },
        "shape",
    ),
    ({"workload": {"schedule": {"kind": "hourly", "requests_per_hour": [1, -1]}}}, "requests_per_hour"),
    ({"workload": {"schedule": {"kind": "hourly", "requests_per_hour": [0, 0]}}}, "requests_per_hour"),
    (
        {"workload": {"arrival": {"process": "poisson", "rate_per_s": 2}, "schedule": steps((0, 1.0))}},
        "rate_per_s",
    ),
    (
        {"workload": {"trace": "conversation", "arrival": {"process": "trace"}, "schedule": steps((0, 1.0))}},
        "schedule",
    ),
    ({"cluster": {"autoscaling": {"min_replicas": 3, "max_replicas": 2}}}, "max_replicas"),
    ({"cluster": {"autoscaling": {"min_replicas": 0, "max_replicas": 2}}}, "min_replicas"),
    ({"cluster": {"autoscaling": {"min_replicas": 1}}}, "max_replicas"),
    ({"cluster": {"autoscaling": AUTO | {"initial_replicas": 5}}}, "initial_replicas"),
    ({"cluster": {"autoscaling": AUTO | {"policy": "cpu"}}}, "policy"),
    ({"cluster": {"autoscaling": AUTO | {"target_utilisation": 0}}}, "target_utilisation"),
    ({"cluster": {"autoscaling": AUTO | {"target_utilisation": 1.5}}}, "target_utilisation"),
    ({"cluster": {"autoscaling": AUTO | {"replica_capacity_per_s": -1}}}, "replica_capacity_per_s"),
    ({"cluster": {"autoscaling": AUTO | {"target_ongoing_per_replica": 0}}}, "target_ongoing_per_replica"),
    ({"cluster": {"autoscaling": AUTO | {"slo_percentile": 100}}}, "slo_percentile"),
    ({"cluster": {"autoscaling": AUTO | {"scale_up_at": 1.5}}}, "scale_up_at"),
    ({"cluster": {"autoscaling": AUTO | {"scale_down_at": 0.9, "scale_up_at": 0.8}}}, "scale_down_at"),
    ({"cluster": {"autoscaling": AUTO | {"window_s": 0}}}, "window_s"),
    ({"cluster": {"autoscaling": AUTO | {"interval_s": 0}}}, "interval_s"),
    ({"cluster": {"autoscaling": AUTO | {"scale_up_delay_s": -1}}}, "scale_up_delay_s"),
    ({"cluster": {"autoscaling": AUTO | {"scale_down_delay_s": True}}}, "scale_down_delay_s"),
    ({"cluster": {"autoscaling": AUTO | {"startup": {"storage": "tape"}}}}, "storage"),
    ({"cluster": {"autoscaling": AUTO | {"startup": {"load_gb_per_s": 0}}}}, "load_gb_per_s"),
    ({"cluster": {"autoscaling": AUTO | {"startup": {"engine_start_s": -1}}}}, "engine_start_s"),
    (
        {"cluster": {"autoscaling": AUTO | {"startup": {"cuda_graph_capture_s": float("nan")}}}},
        "cuda_graph_capture_s",
    ),
    ({"cluster": {"replicas": 2, "autoscaling": AUTO}}, "autoscaling"),
    ({"cluster": {"groups": [{"count": 1}], "autoscaling": AUTO}}, "autoscaling"),
    ({"cluster": {"max_ongoing_requests": 4, "autoscaling": AUTO}}, "max_ongoing_requests"),
]


@pytest.mark.parametrize(("over", "field"), BAD)
def test_bad_day_fields_are_one_line_naming_the_field(over, field):
    data = copy.deepcopy(BASE) | {"slo": {"ttft_s": 0.5}}
    for k, v in over.items():
        data[k] = {**data.get(k, {}), **v}
    if "schedule" in data["workload"] and "rate_per_s" not in str(over):
        data["workload"]["arrival"] = {"process": data["workload"]["arrival"]["process"]}
    elif "cluster" in over:
        data["workload"]["arrival"]["rate_per_s"] = 1.0
    with pytest.raises(ConfigError) as e:
        parse_scenario(data)
    msg = str(e.value)
    assert "\n" not in msg and field in msg, msg


def test_autoscaling_with_disaggregation_is_refused_in_one_line():
    data = copy.deepcopy(BASE)
    data["workload"]["arrival"]["rate_per_s"] = 1.0
    data["cluster"] = {"autoscaling": AUTO}
    data["disaggregation"] = {"prefill": {"count": 1}, "decode": {"count": 1}, "link": {"latency_s": 0.001}}
    with pytest.raises(ConfigError, match="autoscaling"):
        simulate(parse_scenario(data))


def test_capacity_search_sizes_the_fixed_fleet_when_no_capacity_is_given():
    """Without replica_capacity_per_s the planner's capacity search measures one replica, and the fixed
    fleet for the peak is ceil(peak / that rate)."""
    from simulator.day import replica_capacity

    sc = scenario(
        workload__schedule=steps((0, 1.0), (60, 3.0)),
        workload__duration_s=120,
        cluster={"autoscaling": AUTO | {"policy": "queue"}},
    )
    cap = replica_capacity(sc)
    assert cap.per_s > 3.0 and "search" in cap.source
    a = simulate(sc).summary["day"]["autoscaling"]
    assert a["replica_capacity_per_s"] == cap.per_s
    assert a["fixed_fleet"]["replicas"] == max(1, math.ceil(3.0 / cap.per_s))


def test_report_and_cli_show_the_day_beside_the_fixed_fleet(tmp_path):
    pytest.importorskip("matplotlib")
    from simulator.report import build_report
    from simulator.results import format_summary, write_results

    sc = scenario(
        workload__schedule=steps((0, 1.0), (300, 6.0)),
        workload__duration_s=600,
        cluster={"autoscaling": {"min_replicas": 1, "max_replicas": 4, "replica_capacity_per_s": 2.0}},
    )
    f = simulate(sc)
    d = f.summary["day"]
    text = format_summary(f)
    assert f"${d['total_usd']:,.2f}" in text and "fixed, 3 replicas for 6 req/s peak" in text
    rep = build_report(f)
    assert "## The day" in rep.markdown and "| fixed: 3 replicas for the 6 req/s peak |" in rep.markdown
    assert "day_fleet.png" in rep.images and "## Hour by hour" in rep.markdown
    out = write_results(f, tmp_path / "r")
    rows = (out / "day_timeline.csv").read_text().splitlines()
    assert rows[0] == "time_s,offered_per_s,arrived_per_s,ready,starting,draining"
    assert rows[1].startswith("0.000000,1.000000,") and rows[6].startswith("300.000000,6.000000,")


def test_a_search_over_a_day_keeps_the_configurations_meeting_the_slos_and_ranks_them_by_cost():
    from simulator.search import configured, parse_spec, run_search

    base = copy.deepcopy(BASE)
    base["workload"] |= {"schedule": steps((0, 4.0), (300, 30.0), (600, 4.0)), "duration_s": 900}
    base["cluster"] = {"autoscaling": {"min_replicas": 1, "max_replicas": 4, "replica_capacity_per_s": 20.0,
                                       "window_s": 30, "interval_s": 10, "scale_down_delay_s": 60}}  # fmt: skip
    spec = parse_spec({"name": "day", "base": base, "slo_attainment": 0.95,
                       "sweep": {"cluster.autoscaling.min_replicas": [1, 2], "hardware.gpu": ["h100-sxm", "l4"]}})  # fmt: skip
    result = run_search(spec, backend="serial")
    assert len(result.results) == 4
    for r in result.results:
        day = simulate(parse_scenario(configured(base, r.fields))).summary["day"]
        assert (r.status == "ok") == (day["slo_attainment"] >= 0.95), (
            r.label,
            day["slo_attainment"],
            r.message,
        )
        assert r.usd_per_1m_tokens == pytest.approx(day["usd_per_1m_tokens"])
    ok = result.cheapest(n=10)
    assert ok and [r.usd_per_1m_tokens for r in ok] == sorted(r.usd_per_1m_tokens for r in ok)
    with pytest.raises(ConfigError, match="target_rate_per_s"):
        parse_spec({"name": "day", "base": base, "target_rate_per_s": 5.0})


def test_a_replica_over_several_gpus_reads_all_its_weights_at_the_storage_rate():
    """The storage tier's rate is shared by a replica's GPUs (vLLM: a 13B over TP=2 loaded at the TP=1 rate)."""
    sc = scenario(
        hardware={"gpu": "h100-sxm", "gpus_per_replica": 2},
        workload__schedule=steps((0, 1.0)),
        workload__duration_s=20,
        cluster={"autoscaling": AUTO | {"replica_capacity_per_s": 5.0}},
    )
    dep = _run(sc)
    g = dep.groups[0]
    assert g.par.gpus == 2
    assert dep.autoscaler.startup_s == pytest.approx(g.mem.weight_bytes * 2 / 1.8e9 + 41 + 17)


def test_the_search_command_over_a_day_writes_its_table(tmp_path, capsys):
    import yaml

    from simulator.cli import main

    base = copy.deepcopy(BASE)
    base["workload"] |= {"schedule": steps((0, 2.0), (120, 6.0)), "duration_s": 240}
    base["cluster"] = {"autoscaling": AUTO | {"replica_capacity_per_s": 5.0}}
    spec = tmp_path / "day.yaml"
    spec.write_text(
        yaml.safe_dump({"name": "day", "base": base, "sweep": {"cluster.autoscaling.min_replicas": [1]}})
    )
    assert main(["search", str(spec), "--workers", "1", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "a day: each configuration simulated over the whole day once" in out and "1 ok" in out
    assert (tmp_path / "out" / "search.csv").read_text().count("\n") == 2


# ---------------------------------------------------------------- classes with schedules of their own
def test_a_class_with_its_own_schedule_follows_it_while_the_others_share_the_workload_rate():
    """chat takes the workload's constant 2/s; batch runs only 0-1 h then 6/s from 1 h on (its own steps)."""
    classes = [
        {"name": "chat", "share": 1},
        {"name": "batch", "share": 5, "schedule": steps((0, 0.0), (3600, 6.0))},  # share unused
    ]
    sc = scenario(workload__arrival__rate_per_s=2.0, workload__duration_s=7200, workload__classes=classes)
    r = generate(sc.workload, 3)
    chat, batch = r.class_id == 0, r.class_id == 1
    first = r.arrival_s < 3600
    assert (batch & first).sum() == 0  # batch has rate 0 in the first hour
    assert (batch & ~first).sum() == pytest.approx(6 * 3600, rel=0.05)
    for part in (first, ~first):
        assert (chat & part).sum() == pytest.approx(2 * 3600, rel=0.05)
    assert np.all(np.diff(r.arrival_s) >= 0)  # merged in time order
    np.testing.assert_array_equal(generate(sc.workload, 3).arrival_s, r.arrival_s)  # same seed, same day
    # the day's offered load adds the parts: 2/s, then 8/s
    day = simulate(sc).summary["day"]
    assert [h["offered_per_s"] for h in day["hours"][:2]] == pytest.approx([2.0, 8.0], rel=0.05)
    assert offered(sc.workload).hourly_rates(7200) == pytest.approx([2.0, 8.0], rel=1e-12)
    assert offered(sc.workload).peak_rate_per_s(7200) == 8.0


def test_a_class_schedule_leaves_the_other_classes_draws_alone():
    """Adding a scheduled class does not reshuffle the arrivals and lengths of the classes sharing the rate."""
    base = [{"name": "chat", "share": 1}]
    extra = base + [{"name": "batch", "share": 1, "schedule": steps((0, 1.0))}]
    kw = {"workload__arrival__rate_per_s": 2.0, "workload__duration_s": 600}
    a = generate(scenario(workload__classes=base, **kw).workload, 5)
    b = generate(scenario(workload__classes=extra, **kw).workload, 5)
    np.testing.assert_array_equal(a.arrival_s, b.arrival_s[b.class_id == 0])


def classes_of(sc):
    return [c.schedule for c in sc.workload.classes]


def test_every_class_scheduled_needs_no_workload_rate_and_sums_the_peaks():
    classes = [
        {
            "name": "day",
            "share": 1,
            "schedule": {"kind": "daily", "peak_rate_per_s": 4, "trough_rate_per_s": 1},
        },
        {"name": "night", "share": 1, "schedule": {"kind": "hourly", "requests_per_hour": [7200, 3600]}},
    ]
    sc = scenario(workload__duration_s=7200, workload__classes=classes)
    r = generate(sc.workload, 0)
    assert (r.class_id == 1).sum() == pytest.approx(10800, rel=0.05)
    assert (r.class_id == 0).sum() == pytest.approx(float(cumulative(classes_of(sc)[0], 7200)), rel=0.05)
    assert offered(sc.workload).peak_rate_per_s(7200) == pytest.approx(4 + 2, rel=1e-3)  # daily peak + hour 0


@pytest.mark.parametrize(
    ("over", "says"),
    [
        ({"workload__arrival__rate_per_s": 1.0, "workload__num_requests": 100}, "duration_s"),
        (
            {"workload__arrival": {"process": "closed_loop", "concurrency": 4}, "workload__duration_s": 60},
            "process",
        ),
        ({"workload__arrival__rate_per_s": 1.0, "workload__duration_s": 60, "all": True}, "rate_per_s"),
    ],
)
def test_bad_class_schedules_are_one_line(over, says):
    over = dict(over)
    classes = [{"name": "a", "share": 1, "schedule": steps((0, 1.0))}]
    if not over.pop("all", False):
        classes.append({"name": "b", "share": 1})
    with pytest.raises(ConfigError) as e:
        scenario(workload__classes=classes, **over)
    msg = str(e.value)
    assert "\n" not in msg and says in msg and "schedule" in msg, msg
