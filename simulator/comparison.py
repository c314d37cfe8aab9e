"""Several configurations on the same workload: side-by-side numbers, the differences worth saying, break-even.

Break-even against a hosted API: one copy of a configuration costs its GPUs' price around the clock;
the API costs its token prices times the volume. Self-hosting pays off above the monthly token volume
where the two are equal, and up to what the copy can serve within the SLOs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from simulator.search import usd_per_hour
from simulator.simulation import Forecast

HOURS_PER_MONTH = 730.0  # 8760 h / 12


@dataclass
class BreakEven:
    api_usd_per_1m_tokens: float  # blended over this workload's input/output mix
    self_hosted_usd_per_month: float  # one copy, around the clock
    tokens_per_month: float  # volume where both cost the same
    served_tokens_per_month: float  # what the copy served at the simulated load
    requests_per_s: float  # the break-even volume as a request rate

    @property
    def pays_off_at_simulated_load(self) -> bool:
        return self.served_tokens_per_month >= self.tokens_per_month


def break_even(f: Forecast, usd_per_1m_input: float, usd_per_1m_output: float) -> BreakEven | None:
    """Volume where one copy of this configuration costs what the API would (None: nothing simulated)."""
    s = f.summary
    if not s["fits"] or "throughput" not in s:
        return None
    t = s["throughput"]
    tin, tout = t["input_tokens_per_s"], t["output_tokens_per_s"]
    if tin + tout <= 0:
        return None
    api_per_token = (tin * usd_per_1m_input + tout * usd_per_1m_output) / (tin + tout) / 1e6
    monthly = usd_per_hour(s) * HOURS_PER_MONTH
    tokens = monthly / api_per_token if api_per_token > 0 else math.inf
    tokens_per_request = (tin + tout) / max(t["requests_per_s"], 1e-12)
    return BreakEven(
        api_per_token * 1e6,
        monthly,
        tokens,
        (tin + tout) * 3600 * HOURS_PER_MONTH,
        tokens / (3600 * HOURS_PER_MONTH) / tokens_per_request,
    )


def table(forecasts: dict[str, Forecast]) -> dict[str, dict[str, float | str | None]]:
    """Metric -> {configuration label: value}; the side-by-side numbers."""
    out: dict[str, dict] = {}

    def put(metric: str, label: str, value) -> None:
        out.setdefault(metric, {})[label] = value

    for label, f in forecasts.items():
        s = f.summary
        hw = s["hardware"]
        put("GPU", label, f"{hw['gpus']}× {hw['display_name']}")
        put("fits", label, "yes" if s["fits"] else "no")
        put("$/hour", label, usd_per_hour(s))
        put("KV cache tokens", label, s["memory"]["kv_tokens"] if s["fits"] else 0)
        if not s["fits"] or "latency_s" not in s:
            continue
        put("stability", label, s["stability"]["verdict"])
        for key, name in (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2e", "E2E")):
            for q in ("p50", "p99"):
                put(f"{name} {q} (ms)", label, s["latency_s"][key][q] * 1e3)
        put("throughput (req/s)", label, s["throughput"]["requests_per_s"])
        put("output tokens/s", label, s["throughput"]["output_tokens_per_s"])
        put("goodput (req/s)", label, s["goodput"]["requests_per_s"])
        put("SLO attainment", label, s["goodput"]["fraction"])
        put("$ per 1M tokens", label, s["cost"]["usd_per_1m_tokens"])
        put("$ per 1M output tokens", label, s["cost"]["usd_per_1m_output_tokens"])
    return out


# metric -> whether lower is better
RANKED = {
    "TTFT p99 (ms)": True,
    "TPOT p99 (ms)": True,
    "goodput (req/s)": False,
    "$ per 1M tokens": True,
}


def differences(forecasts: dict[str, Forecast]) -> list[str]:
    """Sentences naming the best configuration per headline metric and how far the others are from it."""
    t = table(forecasts)
    notes = [
        f"{label} does not fit: {f.summary['memory']['explain']}"
        for label, f in forecasts.items()
        if not f.fits
    ]
    # an overloaded configuration's latencies and cost only measure how long its run was: never ranked
    overloaded = [label for label, v in t.get("stability", {}).items() if v == "overloaded"]
    notes += [
        f"{label} is OVERLOADED at this workload ({forecasts[label].summary['stability']['reason']}): not "
        "ranked, its latencies and cost per token grow with the run's length"
        for label in overloaded
    ]
    for metric, lower in RANKED.items():
        vals = {
            k: v
            for k, v in t.get(metric, {}).items()
            if v is not None and math.isfinite(v) and k not in overloaded
        }
        if len(vals) < 2:
            continue
        best = (min if lower else max)(vals, key=vals.get)
        others = []
        for k, v in vals.items():
            if k == best:
                continue
            ratio = v / vals[best] if lower and vals[best] > 0 else (vals[best] / v if v > 0 else math.inf)
            if math.isfinite(ratio):
                others.append(f"{k} {ratio:.2f}× {'higher' if lower else 'lower'}")
            else:
                others.append(f"{k} {v:,.3g}")
        notes.append(f"best {metric}: {best} ({vals[best]:,.3g}); " + ", ".join(others))
    for label, att in t.get("SLO attainment", {}).items():
        if att is not None and att < 0.9:
            notes.append(
                f"{label} meets the SLOs for only {att:.0%} of finished requests: its cost per token is for "
                "latency the SLOs reject"
            )
    return notes
