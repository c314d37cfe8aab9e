"""The cheapest fleet for a day: a search whose base scenario has a rate schedule (simulator/search.py).

A day has no single rate to search for, so each configuration — a GPU, a replicas range, an autoscaling
policy, any field the sweep sets — is simulated over the whole day once and kept if at least the spec's
`slo_attainment` of the day's requests met every SLO; the search ranks those by their cost per million
tokens over the day (the same requests in every configuration, so by the day's cost). In the search's
table, `max req/s` is then the busiest hour's offered rate (which the configuration served) and `$/h` the
day's cost over its hours.
"""

from __future__ import annotations

import math

from core.errors import ConfigError
from simulator.scenario import parse_scenario
from simulator.search import ConfigResult, configured
from simulator.simulation import simulate


def evaluate_day(
    base: dict, overrides: dict, index: int, slo_attainment: float, fields: dict
) -> ConfigResult:
    """One configuration over the day; never raises for a bad combination (it is reported)."""
    res = ConfigResult(index, overrides, "ok", fields=fields)
    try:
        sc = parse_scenario(configured(base, fields), "configuration")
        f = simulate(sc)
    except ConfigError as e:
        res.status, res.message = "invalid", str(e)
        return res
    s = f.summary
    if not s["fits"]:
        res.status, res.message = "does not fit", s["memory"]["explain"]
        return res
    day, lat = s["day"], s["latency_s"]
    res.simulations, res.probe_requests = 1, s["requests"]["total"]
    res.usd_per_hour = day["total_usd"] / (day["duration_s"] / 3600)
    res.usd_per_1m_tokens = day["usd_per_1m_tokens"]
    res.ttft_p90_s, res.tpot_p90_s, res.e2e_p90_s = (lat[k]["p90"] for k in ("ttft", "tpot", "e2e"))
    res.output_tokens_per_s = s["throughput"]["output_tokens_per_s"]
    if day["slo_attainment"] >= slo_attainment:
        res.max_rate_per_s = day["peak_offered_per_s"]
        return res
    worst = min(
        (h for h in day["hours"] if math.isfinite(h["slo_attainment"])), key=lambda h: h["slo_attainment"]
    )
    res.status = "misses SLOs"
    res.message = (
        f"{day['slo_attainment']:.1%} of the day's requests met the SLOs (needs {slo_attainment:.0%}); worst hour "
        f"{worst['hour']}: {worst['slo_attainment']:.1%} at {worst['offered_per_s']:.3g} req/s"
    )
    return res
