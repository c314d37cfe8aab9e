"""A day of traffic: the autoscaled fleet built for a run, and what the day cost against a fixed fleet.

`summary["day"]` (with a rate schedule or autoscaling): per hour, the requests that arrived, their SLO
attainment and TTFT/TPOT percentiles, and the replicas held; for the whole run, GPU-hours and cost. With
autoscaling also the fixed fleet sized for the schedule's peak — copies = ceil(peak rate ÷ one replica's
sustainable rate), the rule `search` ranks configurations by — and the fleet right-sized hour by hour.
One replica's sustainable rate is `autoscaling.replica_capacity_per_s` when given, else the planner's own
capacity search (simulator/search.py `max_sustainable_rate`) on one replica at a constant rate.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass

import numpy as np

from simulator.autoscaling import (
    Autoscaler,
    FleetChange,
    Watch,
    replica_seconds,
    replicas_over_time,
    startup_s,
)
from simulator.cluster import Group
from simulator.metrics import _cost, _request_latencies, _slo_met
from simulator.rate_schedule import HOUR_S, class_mix, offered
from simulator.replica import Replica
from simulator.router import Router
from simulator.scenario import Scenario, parse_scenario
from simulator.source import Source

CAPACITY_BASE_REQUESTS = 2000  # the base run of the capacity search (it sizes its later runs itself)
TIMELINE_STEP_S = 60.0  # rows of day_timeline.csv
HOUR_QUANTILES = (50, 90, 99)


@dataclass(slots=True)
class Capacity:
    """Requests/s one replica sustains under the SLOs, and where the figure came from."""

    per_s: float
    source: str


@functools.lru_cache(maxsize=16)
def _searched(scenario_json: str) -> float:
    from simulator.search import max_sustainable_rate  # (search runs simulations: imported when needed)

    rate, _, _ = max_sustainable_rate(json.loads(scenario_json))
    return rate


def replica_capacity(scenario: Scenario) -> Capacity:
    """One replica's sustainable rate: given in autoscaling.replica_capacity_per_s, else searched."""
    auto = scenario.cluster.autoscaling
    if auto is not None and auto.replica_capacity_per_s is not None:
        return Capacity(auto.replica_capacity_per_s, "autoscaling.replica_capacity_per_s")
    data = scenario.model_dump(mode="json", exclude_none=True)
    data["cluster"].pop("autoscaling", None)
    w = data["workload"]
    if any(c.schedule is not None for c in scenario.workload.classes or []):  # the day's mix, by share
        for c, n in zip(w["classes"], class_mix(scenario.workload)):
            c.pop("schedule", None)
            c["share"] = max(n, 1e-9)
    w.pop("schedule", None)
    w.pop("duration_s", None)
    w["num_requests"] = CAPACITY_BASE_REQUESTS
    w["arrival"]["rate_per_s"] = 1.0  # (the search sets it)
    data["output"] = {"dir": "results/capacity", "per_request_csv": False}
    parse_scenario(data, "capacity search")
    rate = _searched(json.dumps(data, sort_keys=True))
    return Capacity(
        rate, "capacity search (simulator/search.py) of one replica at a constant rate, 90% within SLO"
    )


def build_autoscaler(
    scenario: Scenario,
    group: Group,
    engines: list[Replica],
    replica_of: list[int],
    router: Router,
    source: Source,
) -> Autoscaler:
    """The autoscaler of a deployment whose one group holds max_replicas replicas (all off but the first ones)."""
    spec = scenario.cluster.autoscaling
    replicas: list[list[Replica]] = [[] for _ in range(max(replica_of) + 1)]
    for e, r in zip(engines, replica_of, strict=True):
        replicas[r].append(e)
    cap = replica_capacity(scenario).per_s if spec.policy == "utilisation" else None
    table = engines[0].table
    order = np.asarray(source.ids, dtype=np.int64)
    watch = Watch(source, table, order, scenario.slo, cap)
    return Autoscaler(
        source.env,
        spec,
        replicas,
        router,
        watch,
        startup_s(spec.startup, group.mem.weight_bytes * group.par.gpus),
    )


@dataclass(slots=True)
class DayRecord:
    """What day_timeline.csv shows: the offered rate and the fleet, every TIMELINE_STEP_S."""

    time_s: np.ndarray
    offered_per_s: np.ndarray  # the schedule's rate (the run's arrival rate without one)
    arrived_per_s: np.ndarray  # arrivals in the step, per second
    fleet: np.ndarray  # rows of (ready, starting, draining)


def _fixed_changes(replicas: int) -> list[FleetChange]:
    return [FleetChange(0.0, replicas, 0, 0)]


def day_summary(scenario: Scenario, group: Group, table, stats, autoscaler: Autoscaler | None, replicas: int):
    """(summary["day"], summary["cost"] of the day with the fleet actually held or None, DayRecord)."""
    w = scenario.workload
    arrival = table.arrival_s
    done = np.isfinite(table.finish_s)
    last = float(np.nanmax(table.finish_s)) if done.any() else 0.0
    window = w.duration_s or (float(np.nanmax(arrival)) if len(arrival) else 0.0)
    end = max(window, last)
    changes = autoscaler.changes if autoscaler is not None else _fixed_changes(replicas)
    usd_per_replica_hour = group.usd_per_gpu_hour * group.par.gpus
    ttft, tpot, e2e, _ = _request_latencies(table)
    ok = done & _slo_met(scenario.slo, w.classes or [], table.class_id, ttft, tpot, e2e)
    edges = np.append(np.arange(0.0, end, HOUR_S), end)
    hours = []
    for h, (a, b) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        m = (arrival >= a) & (arrival < b)
        held = replica_seconds(changes, a, b)
        row = {
            "hour": h,
            "arrivals": int(m.sum()),
            "offered_per_s": float(m.sum() / (b - a)),
            "slo_attainment": float(ok[m].sum() / m.sum()) if m.any() else math.nan,
            "replicas_mean": held / (b - a),
            "usd": held / 3600 * usd_per_replica_hour,
        }
        for name, x in (("ttft", ttft), ("tpot", tpot)):
            v = x[m & done]
            v = v[np.isfinite(v)]
            vals = np.percentile(v, HOUR_QUANTILES) if len(v) else [math.nan] * len(HOUR_QUANTILES)
            row |= {f"{name}_p{q}_s": float(p) for q, p in zip(HOUR_QUANTILES, vals, strict=True)}
        hours.append(row)
    held_s = replica_seconds(changes, 0.0, end)
    total_usd = held_s / 3600 * usd_per_replica_hour
    tokens = int(table.prompt_tokens[done].sum() + table.output_tokens[done].sum())
    day = {
        "duration_s": end,
        "gpu_hours": held_s / 3600 * group.par.gpus,
        "total_usd": total_usd,
        "usd_per_1m_tokens": total_usd / tokens * 1e6 if tokens else math.nan,
        "slo_attainment": float(ok.sum() / max(len(table), 1)),
        "peak_offered_per_s": max((r["offered_per_s"] for r in hours), default=0.0),
        "hours": hours,
    }
    cost = None
    if autoscaler is not None:
        day["autoscaling"] = _autoscaled(scenario, autoscaler, end, usd_per_replica_hour, tokens, total_usd)
        busy = stats.busy_s
        share_in = stats.prefill_s / busy if busy else 0.0
        in_tok = int(table.prompt_tokens[done].sum())
        cost = _cost(total_usd, share_in, in_tok, tokens - in_tok)
    record = _timeline(scenario, arrival, changes, end)
    return day, cost, record


def _autoscaled(
    scenario: Scenario, a: Autoscaler, end: float, usd_per_replica_hour: float, tokens: int, usd: float
):
    """summary["day"]["autoscaling"]: the fleet's moves, and the fixed fleets it is compared with."""
    spec, w = scenario.cluster.autoscaling, scenario.workload
    cap = replica_capacity(scenario)
    load = offered(w)
    if load is not None:
        peak = load.peak_rate_per_s(end)
        rates = load.hourly_rates(end)
    else:  # no schedule: the run's own busiest hour
        arrival = a.watch.table.arrival_s
        counts = np.bincount((arrival[np.isfinite(arrival)] // HOUR_S).astype(np.int64))
        rates = counts / HOUR_S
        peak = float(rates.max()) if len(rates) else 0.0
    fixed = max(1, math.ceil(peak / cap.per_s - 1e-9)) if cap.per_s > 0 else None
    hour_len = np.diff(np.append(np.arange(0.0, end, HOUR_S), end))[: len(rates)]
    per_hour = [max(1, math.ceil(r / cap.per_s - 1e-9)) for r in rates] if cap.per_s > 0 else []
    fixed_usd = fixed * end / 3600 * usd_per_replica_hour if fixed else math.nan
    right_usd = float(np.dot(per_hour, hour_len)) / 3600 * usd_per_replica_hour if per_hour else math.nan
    per_m = 1e6 / tokens if tokens else math.nan
    return {
        "policy": spec.policy,
        "min_replicas": spec.min_replicas,
        "max_replicas": spec.max_replicas,
        "startup_s": a.startup_s,
        "scale_ups": len(a.scale_ups),
        "scale_downs": sum(1 for x, y in zip(a.changes, a.changes[1:]) if y.draining > x.draining),
        "peak_replicas": max(c.ready + c.starting + c.draining for c in a.changes),
        "replica_capacity_per_s": cap.per_s,
        "capacity_from": cap.source,
        "fixed_fleet": {
            "replicas": fixed,
            "sized_for_per_s": peak,
            "total_usd": fixed_usd,
            "usd_per_1m_tokens": fixed_usd * per_m,
        },
        "right_sized_hourly": {
            "replicas": per_hour,
            "total_usd": right_usd,
            "usd_per_1m_tokens": right_usd * per_m,
        },
        "saving_vs_fixed": 1 - usd / fixed_usd if fixed_usd else math.nan,
    }


def _timeline(scenario: Scenario, arrival: np.ndarray, changes: list[FleetChange], end: float) -> DayRecord:
    t = np.arange(0.0, max(end, TIMELINE_STEP_S), TIMELINE_STEP_S)
    first = arrival[np.isfinite(arrival)]
    counts = np.diff(np.searchsorted(np.sort(first), np.append(t, t[-1] + TIMELINE_STEP_S), side="left"))
    load = offered(scenario.workload)
    if load is not None:  # the mean rate over each step
        rate = np.diff(load.cumulative(np.append(t, t[-1] + TIMELINE_STEP_S))) / TIMELINE_STEP_S
    else:
        rate = np.full(len(t), scenario.workload.arrival.rate_per_s or len(first) / max(end, 1e-9))
    return DayRecord(t, rate, counts / TIMELINE_STEP_S, replicas_over_time(changes, t))


def day_lines(s: dict) -> list[str]:
    """The CLI's lines for summary["day"]: the day's cost, the fixed fleet beside it, and a row per hour."""
    d = s.get("day")
    if d is None:
        return []
    lines = [
        "",
        f"the day ({d['duration_s'] / 3600:.1f} h): {d['gpu_hours']:.1f} GPU-hours, ${d['total_usd']:,.2f}, "
        f"${d['usd_per_1m_tokens']:.3f} per 1M tokens; {d['slo_attainment']:.1%} of requests met the SLOs",
    ]
    a = d.get("autoscaling")
    if a is not None:
        fx, rs = a["fixed_fleet"], a["right_sized_hourly"]
        lines += [
            f"autoscaling ({a['policy']}, {a['min_replicas']}-{a['max_replicas']} replicas, start-up "
            f"{a['startup_s']:.0f} s): {a['scale_ups']} scale-ups, {a['scale_downs']} scale-downs, "
            f"peak {a['peak_replicas']} replicas",
            f"  one replica sustains {a['replica_capacity_per_s']:.3g} req/s ({a['capacity_from']})",
            f"  {'fleet':<34}{'cost':>12}{'per 1M tokens':>16}",
            f"  {'autoscaled':<34}{'$' + format(d['total_usd'], ',.2f'):>12}{'$' + format(d['usd_per_1m_tokens'], '.3f'):>16}",
            f"  {'fixed, ' + str(fx['replicas']) + ' replicas for ' + format(fx['sized_for_per_s'], '.3g') + ' req/s peak':<34}"
            f"{'$' + format(fx['total_usd'], ',.2f'):>12}{'$' + format(fx['usd_per_1m_tokens'], '.3f'):>16}",
            f"  {'right-sized hour by hour':<34}{'$' + format(rs['total_usd'], ',.2f'):>12}"
            f"{'$' + format(rs['usd_per_1m_tokens'], '.3f'):>16}",
            f"  autoscaling saves {a['saving_vs_fixed']:.1%} against the fixed fleet",
        ]
    lines.append(
        f"  {'hour':>4} {'req/s':>7} {'replicas':>8} {'in SLO':>7} {'TTFT p50/p99 ms':>16} {'TPOT p50/p99 ms':>16} {'cost':>9}"
    )
    for h in d["hours"]:
        lines.append(
            f"  {h['hour']:>4} {h['offered_per_s']:>7.2f} {h['replicas_mean']:>8.2f} {_pct(h['slo_attainment']):>7} "
            f"{_ms(h['ttft_p50_s']) + '/' + _ms(h['ttft_p99_s']):>16} {_ms(h['tpot_p50_s']) + '/' + _ms(h['tpot_p99_s']):>16} "
            f"{'$' + format(h['usd'], ',.2f'):>9}"
        )
    return lines


def _pct(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x:.1%}"


def _ms(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x * 1e3:.0f}"


DAY_COST_HEAD = ("fleet", "GPU cost", "per 1M tokens")
DAY_HOUR_HEAD = (
    "hour",
    "req/s",
    "replicas",
    "in SLO",
    "TTFT p50 ms",
    "TTFT p99 ms",
    "TPOT p50 ms",
    "TPOT p99 ms",
    "cost",
)


def day_cost_rows(d: dict) -> list[list[str]]:
    """The day's cost beside the fixed fleet for the peak and the hour-by-hour fleets (report and app)."""
    rows = [["this run", f"${d['total_usd']:,.2f}", f"${d['usd_per_1m_tokens']:.3f}"]]
    a = d.get("autoscaling")
    if a is not None:
        fx, rs = a["fixed_fleet"], a["right_sized_hourly"]
        rows[0][0] = f"autoscaled ({a['min_replicas']}-{a['max_replicas']} replicas, {a['policy']})"
        rows += [
            [f"fixed: {fx['replicas']} replicas for the {fx['sized_for_per_s']:.3g} req/s peak",
             f"${fx['total_usd']:,.2f}", f"${fx['usd_per_1m_tokens']:.3f}"],
            ["right-sized hour by hour", f"${rs['total_usd']:,.2f}", f"${rs['usd_per_1m_tokens']:.3f}"],
        ]  # fmt: skip
    return rows


def day_hour_rows(d: dict) -> list[list[str]]:
    """One row per hour: offered rate, mean replicas held, SLO attainment, latency percentiles, cost."""
    return [
        [str(h["hour"]), f"{h['offered_per_s']:.2f}", f"{h['replicas_mean']:.2f}", _pct(h["slo_attainment"]),
         _ms(h["ttft_p50_s"]), _ms(h["ttft_p99_s"]), _ms(h["tpot_p50_s"]), _ms(h["tpot_p99_s"]), f"${h['usd']:,.2f}"]
        for h in d["hours"]
    ]  # fmt: skip
