"""Capacity search: sweep configurations, find each one's maximum sustainable rate under the SLOs.

A search spec is a base scenario plus a sweep: scenario field paths (`hardware.gpu`,
`serving.batching.max_num_seqs`, any field a scenario has) mapped to lists of values; every combination is a
configuration. For each configuration the arrival rate is binary-searched for the highest rate whose run,
long enough for a queue to build, is stable (simulator/stability.py) with at least `slo_attainment` of
the requests meeting every SLO; the bracket (the lowest rate that fails, and why) is kept. From those
rates follow the cheapest configurations for a target rate (copies = ceil(target / max rate)), the cost
frontier (no other configuration both costs less per hour and sustains more), and latency-vs-load curves.

Each configuration is one deterministic task (its seed is the base scenario's), so the local process
pool and a Ray cluster return the same numbers.
"""

from __future__ import annotations

import copy
import csv
import io
import itertools
import math
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.errors import ConfigError, one_line, read_yaml, short_repr
from core.limits import MAX_CONFIGURATIONS
from simulator.scenario import parse_scenario, renamed_path, upgraded
from simulator.simulation import simulate
from simulator.stability import MIN_SERVICE_TIMES
from simulator.trace import read_trace

if TYPE_CHECKING:
    from simulator.journal import Journal

Progress = Callable[[int, int], None]


# ---------------------------------------------------------------- scenario mappings
def get_field(data: dict, path: str, default=None):
    """`data['a']['b']` for path 'a.b' (default when any part is missing)."""
    node = data
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def set_field(data: dict, path: str, value) -> dict:
    """A deep copy of `data` with the field at dotted `path` set (sections created as needed)."""
    out = copy.deepcopy(data)
    node = out
    parts = path.split(".")
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = node[part] = {}
        node = nxt
    node[parts[-1]] = value
    return out


def _is_day(data: dict) -> bool:
    """A base whose load follows a rate schedule (the workload's or a class's): searched as a whole day."""
    classes = get_field(data, "workload.classes") or []
    return get_field(data, "workload.schedule") is not None or any(
        isinstance(c, dict) and c.get("schedule") is not None for c in classes
    )


def with_rate(data: dict, rate_per_s: float) -> dict:
    """The scenario with its mean arrival rate set (a trace's times are rescaled to it)."""
    return set_field(data, "workload.arrival.rate_per_s", float(rate_per_s))


# ---------------------------------------------------------------- the spec
class RateSearch(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    min_per_s: float = Field(0.01, gt=0, description="lowest rate tried; below it a configuration sustains 0")
    max_per_s: float = Field(1000.0, gt=0, description="highest rate tried")
    # below 0.1% the bisection runs into float resolution (sqrt(lo * hi) == lo) and never stops
    rel_tol: float = Field(
        0.05, ge=0.001, lt=1, description="stop when the bracket is this narrow (relative, 0.001 or more)"
    )


class SearchSpec(BaseModel):
    """What `python -m simulator search SPEC.yaml` reads."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: str = Field(
        "search", description="label for the output files (letters, digits, '.', '_', '-'; results/NAME)"
    )
    base: dict = Field(description="a scenario; the sweep overrides its fields and the search sets its rate")
    sweep: dict[str, list] = Field(
        default_factory=dict,
        description="scenario field path -> values to try; every combination is one configuration",
    )
    variants: dict[str, dict] = Field(
        default_factory=dict,
        description="named alternatives, each a set of field path -> value (e.g. colocated vs a disaggregated "
        "split), each combined with every sweep combination",
    )
    slo_attainment: float = Field(
        0.9, gt=0, le=1, description="fraction of requests that must meet every SLO to sustain a rate"
    )
    target_rate_per_s: float | None = Field(
        None, gt=0, description="rank configurations by the cost of serving this rate"
    )
    rate: RateSearch = Field(default_factory=RateSearch, description="bounds of the rate search")
    load_points: list[float] = Field(
        default_factory=lambda: [0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25],
        description="latency-vs-load curve of frontier configurations, as fractions of their max rate",
    )

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        # it names the folder results/<name>: one plain path component, never a way out of results/
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name) or ".." in name:
            raise ValueError(
                f"{short_repr(name)} is not a plain folder name (it names results/NAME); use up to 100 "
                "letters, digits, '.', '_' and '-', e.g. llama-chat-capacity"
            )
        return name

    @model_validator(mode="after")
    def _check(self) -> SearchSpec:
        for path, values in self.sweep.items():
            if not values:
                raise ValueError(f"sweep.{path}: give at least one value")
            if path == "variant":
                raise ValueError("sweep.variant: the name is taken by `variants`; use another field path")
            if path == "workload.arrival.rate_per_s":  # every value would give the same answer
                raise ValueError(
                    f"sweep.{path}: the search sets the rate itself; remove it (rate.min_per_s and "
                    "rate.max_per_s bound the rates tried)"
                )
        if self.rate.max_per_s <= self.rate.min_per_s:
            raise ValueError("rate.max_per_s must be above rate.min_per_s")
        return self


def parse_spec(data: object, source: str = "search spec") -> SearchSpec:
    """Validate a search spec; the base scenario is checked too, errors in one line."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a search spec must be a YAML mapping")
    data = _renamed_fields(data, source)
    try:
        spec = SearchSpec.model_validate(data)
    except ValidationError as e:
        raise one_line(e, source) from None
    sizes = [len(v) for v in spec.sweep.values()]
    MAX_CONFIGURATIONS.check(
        configuration_count(spec),
        f"{source}: sweep",
        " x ".join(map(str, sizes + ([len(spec.variants)] if spec.variants else []))),
    )
    sc = parse_scenario(spec.base, f"{source}: base")
    if not sc.slo.model_dump(exclude_none=True):
        raise ConfigError(f"{source}: base.slo sets no target; a capacity search needs at least one SLO")
    if _is_day(spec.base) and spec.target_rate_per_s is not None:
        raise ConfigError(
            f"{source}: target_rate_per_s: a base with a rate schedule is searched over its day and ranked by "
            "the day's cost; remove target_rate_per_s"
        )
    return spec


def _renamed_fields(data: dict, source: str) -> dict:
    """The spec with the previous release's `serving` keys spelled as now (base, sweep and variant paths)."""
    out = dict(data)
    if isinstance(data.get("base"), dict):
        out["base"] = upgraded(data["base"], f"{source}: base")
    if isinstance(data.get("sweep"), dict):
        out["sweep"] = {renamed_path(k, f"{source}: sweep") if isinstance(k, str) else k: v
                        for k, v in data["sweep"].items()}  # fmt: skip
    if isinstance(data.get("variants"), dict):
        out["variants"] = {
            name: _renamed_variant(fields, f"{source}: variants.{name}")
            if isinstance(fields, dict)
            else fields
            for name, fields in data["variants"].items()
        }
    return out


def _renamed_variant(fields: dict, where: str) -> dict:
    """A variant's {field path: value} as now: renamed paths, and whole sections (a `disaggregation` with its
    pools' `serving`) in the sub-block layout."""
    out: dict = {}
    for path, value in fields.items():
        if not isinstance(path, str):
            out[path] = value
            continue
        path = renamed_path(path, where)
        if isinstance(value, dict):
            now = upgraded(set_field({}, path, value), where)
            value = get_field(now, path, value)
            if get_field(now, "workload.moe_routing_skew") is not None:  # moved out of a pool's `serving`
                out["workload.moe_routing_skew"] = now["workload"]["moe_routing_skew"]
        out[path] = value
    return out


def load_spec(path: str | Path) -> SearchSpec:
    p = Path(path)
    data = read_yaml(p, "search spec", mapping=False)
    return parse_spec(data, str(p))


def configuration_count(spec: SearchSpec) -> int:
    """How many configurations `configurations` will list, counted without listing them."""
    return math.prod(len(v) for v in spec.sweep.values()) * max(1, len(spec.variants))


def configurations(spec: SearchSpec) -> list[dict[str, object]]:
    """Every combination of the variants and the sweep's values, as {field path: value}, in a stable order.

    With variants, the key `variant` names the variant; `fields_of` expands it to the fields it sets.
    """
    paths = list(spec.sweep)
    combos = [dict(zip(paths, combo)) for combo in itertools.product(*(spec.sweep[p] for p in paths))]
    if not spec.variants:
        return combos
    return [{"variant": name} | c for name in spec.variants for c in combos]


def fields_of(spec: SearchSpec, overrides: dict[str, object]) -> dict[str, object]:
    """The field paths and values a configuration sets (a variant's fields first, then the sweep's)."""
    out = dict(spec.variants.get(overrides.get("variant"), {})) if "variant" in overrides else {}
    return out | {k: v for k, v in overrides.items() if k != "variant"}


# ---------------------------------------------------------------- one configuration
# A rate counts as sustainable only if a run long enough for a queue to build is stable
# (simulator/stability.py) and meets the SLO attainment. A probe's arrival window is at least
# PROBE_SERVICE_TIMES service times at full batches (the longest a request's service gets; 20% above
# what the verdict needs) and at least the base scenario's length, capped at MAX_PROBE_REQUESTS requests.
PROBE_SERVICE_TIMES = 1.2 * MIN_SERVICE_TIMES
MAX_PROBE_REQUESTS = 20_000
# the SLO attainment of fewer requests is noise: 400 put a 90% attainment within about ±3% (two binomial
# standard errors); a 1-request base had probes of 170 lognormal requests pass at 1.48 req/s on an L4 where
# 3,400 meet the SLOs 66% of the time
MIN_PROBE_REQUESTS = 400
# Near saturation a queue drifts up too slowly for any run to show: a rate above (1 − HEADROOM) of the
# capacity measured by an overloaded run (its completions per second with a full queue) is not counted.
# 5%: at 2% (and a capacity read off a run twice overloaded) Llama-3.1-8B on an H100 was answered at
# 43.06 req/s, where 20x longer runs meet a TTFT SLO for 73% of requests (tests/simulator/test_stability.py).
HEADROOM = 0.05
# where no sized run was overloaded (the rates above the answer failed their SLOs while stable), one at
# this multiple of the lowest failing rate measures the capacity
CAPACITY_PROBE = 1.1


@dataclass
class Probe:
    """One simulation at one offered rate."""

    rate_per_s: float
    attainment: float  # fraction of all requests that finished and met every SLO
    ok: bool  # stable and meets the SLO attainment
    ttft_p90_s: float
    tpot_p90_s: float
    e2e_p90_s: float
    usd_per_1m_tokens: float
    verdict: str = "stable"  # simulator/stability.py: stable | overloaded | inconclusive
    requests: int = 0  # requests simulated
    failed_because: str = ""  # why it is not sustainable: overloaded, TTFT p90, TPOT p90, rejected…
    sustained_per_s: float = float("nan")  # completions per second over the arrival window


@dataclass
class ConfigResult:
    """A configuration's maximum sustainable rate and what it costs there."""

    index: int
    overrides: dict[str, object]  # as the sweep names them (with `variant` when the spec has variants)
    # ok | does not fit | invalid | below min rate | error (it raised; a resumed search retries it)
    status: str
    message: str = ""
    max_rate_per_s: float = 0.0
    usd_per_hour: float = float("nan")
    usd_per_1m_tokens: float = float("nan")  # at the max sustainable rate
    ttft_p90_s: float = float("nan")
    tpot_p90_s: float = float("nan")
    e2e_p90_s: float = float("nan")
    output_tokens_per_s: float = float("nan")
    simulations: int = 0
    # the bracket: the lowest rate tried above the max that failed, and why
    failed_rate_per_s: float = float("nan")
    failed_because: str = ""
    probe_requests: int = 0  # requests simulated at the max rate
    probes: list[Probe] = field(default_factory=list)
    fields: dict[str, object] = field(default_factory=dict)  # every field path it sets on the base scenario

    @property
    def label(self) -> str:
        return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in self.overrides.items()) or "base"

    def copies_for(self, rate_per_s: float) -> int | None:
        """Copies of this configuration needed for `rate_per_s` (None: it sustains nothing)."""
        if self.max_rate_per_s <= 0:
            return None
        return max(1, math.ceil(rate_per_s / self.max_rate_per_s - 1e-9))


def usd_per_hour(summary: dict) -> float:
    """What the whole configuration costs per hour: every GPU it holds (all replicas and pools) at its price."""
    hw = summary["hardware"]
    return hw["price_per_gpu_hour_usd"] * hw["gpus"]


def _attainment(summary: dict) -> float:
    r = summary["requests"]
    met = summary["goodput"]["fraction"] * r["finished"]
    return met / max(r["total"], 1)


def with_requests(data: dict, requests: int, rate_per_s: float) -> dict:
    """The scenario with about `requests` arrivals at `rate_per_s` (its duration set where it has one)."""
    if get_field(data, "workload.duration_s") is not None:
        return set_field(data, "workload.duration_s", requests / rate_per_s)
    return set_field(data, "workload.num_requests", int(requests))


def probe_requests(rate_per_s: float, service_s: float, base_requests: int, burstiness: float = 1.0) -> int:
    """Requests in a probe at this rate: an arrival window of PROBE_SERVICE_TIMES service times (times the
    arrivals' `burstiness`), at least the base scenario's requests and MIN_PROBE_REQUESTS, at most
    MAX_PROBE_REQUESTS."""
    floor = max(base_requests, MIN_PROBE_REQUESTS)
    if not math.isfinite(service_s) or service_s <= 0:
        return floor
    want = math.ceil(rate_per_s * PROBE_SERVICE_TIMES * service_s * burstiness)
    return max(floor, min(want, MAX_PROBE_REQUESTS))


def _failed_because(s: dict, slo: dict, attainment: float, slo_attainment: float) -> str:
    """Why a run does not sustain its rate, in a word or two ('' when it does)."""
    st = s["stability"]
    if st["verdict"] != "stable":
        return st["verdict"]
    if attainment >= slo_attainment:
        return ""
    lat = s["latency_s"]
    missed = [f"{k[:-2].upper()} p90" for k, v in slo.items() if not lat[k[:-2]]["p90"] <= v]
    r = s["requests"]
    if r["rejected"] > (1 - slo_attainment) * r["total"]:
        missed.append("rejected")
    return ", ".join(missed) or "attainment"


def probe(
    data: dict, rate_per_s: float, slo_attainment: float, requests: int | None = None
) -> tuple[Probe, dict]:
    """Simulate the scenario at one rate (with `requests` arrivals, else the scenario's); whether it
    sustains that rate: stable, and meeting the SLOs."""
    scaled = with_rate(data, rate_per_s)
    if requests is not None:
        scaled = with_requests(scaled, requests, rate_per_s)
    sc = parse_scenario(scaled)
    f = simulate(sc)
    s = f.summary
    if not s["fits"]:
        raise _DoesNotFit(s["memory"]["explain"])
    lat = s["latency_s"]
    att = _attainment(s)
    why = _failed_because(s, sc.slo.model_dump(exclude_none=True), att, slo_attainment)
    p = Probe(
        rate_per_s,
        att,
        not why,
        lat["ttft"]["p90"],
        lat["tpot"]["p90"],
        lat["e2e"]["p90"],
        s["cost"]["usd_per_1m_tokens"],
        s["stability"]["verdict"],
        s["requests"]["total"],
        why,
        s["stability"]["sustained_per_s"],
    )
    return p, s


class _DoesNotFit(Exception):
    pass


def arrival_burstiness(data: dict) -> float:
    """How many times longer than Poisson arrivals a run must be to average out the bursts: cv^2 of the gaps
    (a renewal process's counts vary that many times more), at least 1.

    Gamma arrivals at cv 3 probed as long as Poisson ones answered 20.7 req/s on an H100, where 45,500
    requests meet the SLOs 86% of the time; the code trace's (cv^2 173) 1.19 req/s, where 8,000 meet them 88%.
    """
    process = get_field(data, "workload.arrival.process", "poisson")
    if process == "gamma":
        return max(1.0, get_field(data, "workload.arrival.cv", 1.0) ** 2)
    times = read_trace(get_field(data, "workload.trace")).arrival_s if process == "trace" else None
    if times is not None:
        gaps = np.diff(times)
        if len(gaps) > 1 and gaps.mean() > 0:
            return max(1.0, float((gaps.std() / gaps.mean()) ** 2))
    return 1.0


@dataclass(slots=True)
class _RateProbing:
    """One `max_sustainable_rate` call's state: the runs so far, those that passed, and the capacity."""

    data: dict
    slo_attainment: float
    rate: RateSearch
    base_requests: int
    duration_s: float | None
    service_s: float
    burstiness: float
    probes: list[Probe]
    passed: list[tuple[Probe, dict]] = field(default_factory=list)
    capacity: float = math.inf  # completions per second of the sized runs that were overloaded (full queues)

    def size(self, r: float) -> int:
        """Requests of a run at r: at least the base scenario's own length (its requests, or its duration at r)."""
        base = self.base_requests if self.duration_s is None else math.ceil(r * self.duration_s)
        return probe_requests(r, self.service_s, base, self.burstiness)

    def run(self, r: float) -> bool:
        """A sized run at r; whether it passed (stable, SLOs met, and HEADROOM below the capacity)."""
        n = self.size(r)
        p, s = probe(self.data, r, self.slo_attainment, n)
        if p.verdict == "inconclusive" and s["stability"]["service_s"] > self.service_s:
            # service here is slower than in the saturated run (a base too short to fill the batches):
            # size from it from now on, and run again
            self.service_s = s["stability"]["service_s"]
            if self.size(r) > n:
                p, s = probe(self.data, r, self.slo_attainment, self.size(r))
        self.probes.append(p)
        if p.verdict == "overloaded":
            self.capacity = min(self.capacity, s["stability"]["sustained_per_s"])
        if p.ok and r > self.limit_per_s:  # a slow drift a run cannot show is still overload
            p.ok, p.failed_because = False, "at capacity"
        if p.ok:
            self.passed.append((p, s))
        return p.ok

    @property
    def limit_per_s(self) -> float:
        """The highest rate that can count as sustained: HEADROOM below the capacity measured so far."""
        return (1 - HEADROOM) * self.capacity

    def best(self) -> tuple[float, dict | None]:
        """The highest rate that passed and is within the capacity's limit (as the limit is now)."""
        for p, _ in self.passed:
            if p.rate_per_s > self.limit_per_s:
                p.ok, p.failed_because = False, "at capacity"
        return max(
            ((p.rate_per_s, s) for p, s in self.passed if p.ok), key=lambda x: x[0], default=(0.0, None)
        )

    def bracket(self, lo: float) -> float | None:
        """From `lo` (just above the saturated throughput) the lowest rate seen to fail, with one that
        passed below it: double while the SLOs hold, else halve until they do; None if none does."""
        hi = self.rate.max_per_s  # fails
        if self.run(lo):  # the SLOs hold even near saturation: double until they do not
            while lo * 2 < hi:
                if not self.run(lo * 2):
                    return lo * 2
                lo *= 2
            return hi
        hi, lo = lo, lo / 2  # halve until the SLOs hold
        while lo >= self.rate.min_per_s and not self.run(lo):
            hi, lo = lo, lo / 2
        return None if lo < self.rate.min_per_s else hi

    def bisect(self, hi: float) -> bool:
        """Bisect between the best rate that passed and the lowest that failed, or the capacity's limit
        (which an overloaded run may lower below rates that passed before it); False if nothing passes."""
        measured = False
        for _ in range(64):
            lo, top = self.best()[0], min(hi, self.limit_per_s)
            if lo <= 0:  # nothing that passed is below the limit: try the limit, then halve
                r = top if top < hi else top / 2
                if r < self.rate.min_per_s:
                    return False
            elif top / lo - 1 > self.rate.rel_tol:
                r = math.sqrt(lo * top)
            elif math.isinf(self.capacity) and hi < self.rate.max_per_s and not measured:
                # the rates above failed their SLOs while stable: measure the capacity just above them, so
                # that the answer keeps HEADROOM below it
                measured, r = True, min(CAPACITY_PROBE * hi, self.rate.max_per_s)
            else:
                break
            if not self.run(r):
                hi = min(hi, r)
        return True


def max_sustainable_rate(
    data: dict, slo_attainment: float = 0.9, rate: RateSearch | None = None
) -> tuple[float, list[Probe], dict | None]:
    """Binary search for the highest sustainable rate: (rate, probes in order, summary at that rate).

    A first run far above capacity (the base scenario's length) measures the saturated throughput,
    an upper bound that brackets the search, and the service time at full batches, which sizes every
    later run (`probe_requests`) so that a queue has time to build; halving from there finds a rate
    that is stable and meets the SLOs, and bisection narrows to `rel_tol`.
    """
    rate = rate or RateSearch()
    p, s = probe(data, rate.max_per_s, slo_attainment)
    search = _RateProbing(
        data,
        slo_attainment,
        rate,
        base_requests=s["requests"]["total"],
        duration_s=get_field(data, "workload.duration_s"),
        service_s=s["stability"]["service_s"],
        burstiness=arrival_burstiness(data),
        probes=[p],
    )
    if p.ok and search.run(rate.max_per_s):  # sustained even at the top of the range, in a sized run too
        return rate.max_per_s, search.probes, search.best()[1]
    lo = min(max(s["throughput"]["requests_per_s"] * 1.05, rate.min_per_s), rate.max_per_s)
    hi = search.bracket(lo)
    if hi is None or not search.bisect(hi):
        return 0.0, search.probes, None
    r, s = search.best()
    return r, search.probes, s


def bracket(probes: list[Probe]) -> tuple[float, float, str]:
    """(highest rate that passed, the lowest rate above it that fails, why): a probe that failed, or the
    capacity's limit (`HEADROOM` below what the sized overloaded runs completed per second) when lower."""
    passed = max((p.rate_per_s for p in probes if p.ok), default=0.0)
    above = [p for p in probes if not p.ok and p.rate_per_s > passed]
    failed = min(above, key=lambda p: p.rate_per_s, default=None)
    rate, why = (math.nan, "") if failed is None else (failed.rate_per_s, failed.failed_because)
    capacity = min((p.sustained_per_s for p in probes[1:] if p.verdict == "overloaded"), default=math.inf)
    if (1 - HEADROOM) * capacity < rate:
        rate, why = (1 - HEADROOM) * capacity, f"at capacity ({capacity:.3g} req/s)"
    return passed, rate, why


def evaluate(
    base: dict,
    overrides: dict,
    index: int,
    slo_attainment: float,
    rate: RateSearch,
    fields: dict | None = None,
) -> ConfigResult:
    """One configuration end to end; never raises for a bad combination (it is reported)."""
    fields = overrides if fields is None else fields
    if _is_day(base):  # a day: simulated whole, ranked by its cost
        from simulator.day_search import evaluate_day

        return evaluate_day(base, overrides, index, slo_attainment, fields)
    data = configured(base, fields)
    res = ConfigResult(index, overrides, "ok", fields=fields)
    try:
        parse_scenario(data, "configuration")
        r, probes, s = max_sustainable_rate(data, slo_attainment, rate)
    except _DoesNotFit as e:
        res.status, res.message = "does not fit", str(e)
        return res
    except ConfigError as e:
        res.status, res.message = "invalid", str(e)
        return res
    res.probes, res.simulations = probes, len(probes)
    res.max_rate_per_s = r
    _, res.failed_rate_per_s, res.failed_because = bracket(probes)
    if s is None:
        res.status = "below min rate"
        res.message = (
            f"misses the SLOs even at {probes[-1].rate_per_s:.3g} req/s ({_misses(probes[-1], data)})"
        )
        return res
    res.probe_requests = s["requests"]["total"]
    res.usd_per_hour = usd_per_hour(s)
    res.usd_per_1m_tokens = s["cost"]["usd_per_1m_tokens"]
    lat = s["latency_s"]
    res.ttft_p90_s, res.tpot_p90_s, res.e2e_p90_s = (lat[k]["p90"] for k in ("ttft", "tpot", "e2e"))
    res.output_tokens_per_s = s["throughput"]["output_tokens_per_s"]
    return res


def configured(base: dict, fields: dict) -> dict:
    """The base scenario with a configuration's fields set."""
    data = base
    for path, value in fields.items():
        data = set_field(data, path, value)
    return data


def _misses(p: Probe, data: dict) -> str:
    if p.verdict != "stable":
        return f"the run is {p.verdict}"
    slo = parse_scenario(data).slo.model_dump(exclude_none=True)
    out = [
        f"{k[:-2].upper()} p90 {_ms(getattr(p, k[:-2] + '_p90_s'))} ms > {v * 1e3:g} ms"
        for k, v in slo.items()
        if not getattr(p, k[:-2] + "_p90_s") <= v
    ]
    return "; ".join(out) or f"only {p.attainment:.0%} of requests meet the SLOs"


def _evaluate_task(args: tuple) -> ConfigResult:
    try:
        return evaluate(*args)
    except Exception as e:  # a bug or a numeric failure in one configuration must not end the search
        return failed(args, e)


def failed(task: tuple, e: BaseException) -> ConfigResult:
    """The result of a configuration that raised: status `error`, the exception in one line."""
    _, overrides, index, *_, fields = task
    text = str(e).strip().splitlines()
    message = f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__
    return ConfigResult(index, overrides, "error", message, fields=fields)


def _ignore_sigint() -> None:
    """Pool workers leave Ctrl-C to the parent, which stops them (else each starts its next task)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# ---------------------------------------------------------------- running a sweep
@dataclass
class SearchResult:
    spec: SearchSpec
    results: list[ConfigResult]
    wall_s: float
    backend: str
    # configurations in the spec: more than `results` when the search was interrupted
    total: int | None = None

    @property
    def partial(self) -> bool:
        return self.total is not None and len(self.results) < self.total

    @property
    def feasible(self) -> list[ConfigResult]:
        return [r for r in self.results if r.status == "ok" and r.max_rate_per_s > 0]

    def cheapest(self, rate_per_s: float | None = None, n: int = 5) -> list[ConfigResult]:
        """Cheapest configurations meeting the SLOs: by $/hour for `rate_per_s`, else by $ per 1M tokens."""
        rate_per_s = rate_per_s or self.spec.target_rate_per_s
        if rate_per_s:
            key = lambda r: (r.copies_for(rate_per_s) * r.usd_per_hour, -r.max_rate_per_s)  # noqa: E731
        else:
            key = lambda r: (r.usd_per_1m_tokens, -r.max_rate_per_s)  # noqa: E731
        return sorted(self.feasible, key=key)[:n]

    def frontier(self) -> list[ConfigResult]:
        """Configurations no other beats on both price per hour and max sustainable rate, cheapest first."""
        out: list[ConfigResult] = []
        for r in sorted(self.feasible, key=lambda r: (r.usd_per_hour, -r.max_rate_per_s)):
            if not out or r.max_rate_per_s > out[-1].max_rate_per_s:
                out.append(r)
        return out


def run_search(
    spec: SearchSpec,
    backend: str = "processes",
    workers: int | None = None,
    ray_address: str | None = None,
    progress: Progress | None = None,
    journal: Journal | None = None,
) -> SearchResult:
    """Evaluate every configuration on `backend`: 'serial', 'processes' (default) or 'ray'.

    With a journal, the configurations it already holds are not run again and each one that finishes
    is appended as it completes; on Ctrl-C the pending ones are cancelled, the workers stopped, and the
    KeyboardInterrupt goes on to the caller with the journal holding everything finished.
    """
    if backend not in ("serial", "processes", "ray"):
        raise ConfigError(f"backend {backend!r} is unknown; use serial, processes or ray")
    t0 = time.perf_counter()
    done = dict(journal.done) if journal else {}
    tasks = [
        (spec.base, ov, i, spec.slo_attainment, spec.rate, fields_of(spec, ov))
        for i, ov in enumerate(configurations(spec))
        if i not in done
    ]
    total = len(done) + len(tasks)
    results = list(done.values())

    def finished(r: ConfigResult) -> None:
        results.append(r)
        if journal:
            journal.append(r)
        if progress:
            progress(len(results), total)

    if progress and done:
        progress(len(done), total)
    if backend == "serial":
        for t in tasks:
            finished(_evaluate_task(t))
    elif backend == "processes":
        _run_pool(tasks, workers, finished)
    else:
        _run_ray(tasks, ray_address, finished)
    results.sort(key=lambda r: r.index)
    return SearchResult(spec, results, time.perf_counter() - t0, backend, total)


def _run_pool(tasks: list, workers: int | None, finished: Callable[[ConfigResult], None]) -> None:
    pool = ProcessPoolExecutor(max_workers=workers, initializer=_ignore_sigint)
    try:
        futures = {pool.submit(_evaluate_task, t): t for t in tasks}
        for fut in as_completed(futures):
            try:
                r = fut.result()
            except Exception as e:  # the worker died (killed, out of memory): that configuration failed
                r = failed(futures[fut], e)
            finished(r)
    except BaseException:
        # Ctrl-C: a running configuration can take minutes, and shutdown would wait for every one
        workers_running = list((pool._processes or {}).values())  # shutdown forgets them
        manager = pool._executor_manager_thread
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in workers_running:
            proc.terminate()
        # the pool's manager thread sees its workers gone and closes its wake-up pipe; joining it here
        # keeps the interpreter's exit hook from writing to that pipe as it closes (a traceback at exit)
        if manager is not None:
            manager.join(timeout=10)
        raise
    pool.shutdown()


def connect_ray(address: str | None):
    """The `ray` module, connected to the cluster at `address` ('auto', ray://HOST:10001, local or None:
    a local one); a clear ConfigError where Ray is missing or the address cannot be reached."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray: pip install 'inferplan[ray]'") from None
    if not ray.is_initialized():
        term = signal.getsignal(signal.SIGTERM)
        try:
            ray.init(address=None if address in (None, "local") else address, log_to_driver=False)
        except (ValueError, ConnectionError, RuntimeError, TimeoutError) as e:  # a bad or unreachable address
            # a failed init leaves Ray's SIGTERM handler, and process-pool workers forked later inherit it
            # and outlive their pool's terminate() (tests/simulator/test_output.py, after the --ray row)
            if term is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, term)
            why = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConfigError(
                f"--ray {short_repr(address)}: cannot start or reach Ray ({why}); give 'auto' (a running "
                "cluster), ray://HOST:10001 (with ray[client]) or local"
            ) from None
    return ray


def _run_ray(tasks: list, address: str | None, finished: Callable[[ConfigResult], None]) -> None:
    ray = connect_ray(address)
    remote = ray.remote(_evaluate_task)
    task_of = {remote.remote(t): t for t in tasks}
    pending = list(task_of)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                r = ray.get(done[0])
            except Exception as e:  # the task's worker died
                r = failed(task_of[done[0]], e)
            finished(r)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise


# ---------------------------------------------------------------- latency vs load
@dataclass
class LoadCurve:
    """Latency percentiles of one configuration at several offered rates, and where each SLO breaks."""

    probes: list[Probe]
    breaks_at: dict[str, float | None]  # SLO name -> lowest rate tried whose p90 misses it (None: never)
    slo: dict[str, float]
    unstable_at: float | None = (
        None  # lowest rate tried whose run is overloaded (its latencies grow with the run)
    )


def latency_vs_load(
    data: dict, rates: Iterable[float], slo_attainment: float = 0.9, window_s: float | None = None
) -> LoadCurve:
    """Simulate the scenario at each rate; the first rate at which each SLO's p90 is missed, and the first
    whose run is not stable. `window_s`: arrivals over this many seconds at every rate (capped at
    MAX_PROBE_REQUESTS), else the scenario's own length."""
    sc = parse_scenario(data)
    if window_s is not None and not (math.isfinite(window_s) and window_s >= 0):
        raise ConfigError(
            f"window_s: {window_s!r} is not a time; give the seconds of arrivals per load point"
        )
    slo = sc.slo.model_dump(exclude_none=True)
    probes = []
    for r in sorted(rates):
        n = None if window_s is None else min(max(math.ceil(r * window_s), 2), MAX_PROBE_REQUESTS)
        probes.append(probe(data, r, slo_attainment, n)[0])
    breaks: dict[str, float | None] = {}
    for name, target in slo.items():
        key = name.replace("_s", "_p90_s")
        missed = [p.rate_per_s for p in probes if not getattr(p, key) <= target]
        breaks[name] = missed[0] if missed else None
    # (an inconclusive run, too short to tell, is not called overloaded)
    unstable = [p.rate_per_s for p in probes if p.verdict == "overloaded"]
    return LoadCurve(probes, breaks, slo, unstable[0] if unstable else None)


def frontier_curves(result: SearchResult) -> dict[int, LoadCurve]:
    """Latency-vs-load curves of the frontier configurations at the spec's load points, each run as long
    (in time) as the probe that found the configuration's max rate. None for a day (its rate is the schedule's)."""
    out = {}
    if _is_day(result.spec.base):
        return out
    for r in result.frontier():
        data = configured(result.spec.base, r.fields)
        rates = [r.max_rate_per_s * x for x in result.spec.load_points]
        window = r.probe_requests / r.max_rate_per_s if r.probe_requests else None
        out[r.index] = latency_vs_load(data, rates, result.spec.slo_attainment, window)
    return out


# ---------------------------------------------------------------- output
COLUMNS = (
    "index",
    "configuration",
    "status",
    "max_rate_per_s",
    "usd_per_hour",
    "usd_per_1m_tokens",
    "ttft_p90_s",
    "tpot_p90_s",
    "e2e_p90_s",
    "output_tokens_per_s",
    "copies_for_target",
    "usd_per_hour_for_target",
    "simulations",
    "probe_requests",
    "failed_rate_per_s",
    "failed_because",
    "message",
)


def swept(spec: SearchSpec) -> dict[str, list]:
    """The columns a configuration is told apart by: `variant` (when there are variants), then the sweep's."""
    return ({"variant": list(spec.variants)} if spec.variants else {}) | spec.sweep


def rows(result: SearchResult) -> list[dict]:
    """One flat row per configuration (sweep fields as their own columns), for CSV and tables."""
    target = result.spec.target_rate_per_s
    out = []
    for r in result.results:
        row = {"index": r.index, "configuration": r.label}
        row |= {k: v for k, v in r.overrides.items()}
        d = asdict(r)
        for k in COLUMNS[2:]:
            if k in d:
                row[k] = d[k]
        copies = r.copies_for(target) if target and r.status == "ok" else None
        row["copies_for_target"] = copies
        row["usd_per_hour_for_target"] = copies * r.usd_per_hour if copies else None
        out.append(row)
    return out


def to_csv(result: SearchResult) -> str:
    """search.csv: one row per configuration; an interrupted search lists the ones not run as `not run`."""
    table = rows(result)
    if result.partial:
        ran = {r.index for r in result.results}
        table += [
            {
                "index": i,
                **ov,
                "status": "not run",
                "message": "the search stopped before it; rerun to resume",
            }
            for i, ov in enumerate(configurations(result.spec))
            if i not in ran
        ]
        table.sort(key=lambda row: row["index"])
    names = ["index", *swept(result.spec), *COLUMNS[2:]]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=names, extrasaction="ignore")
    w.writeheader()
    for row in table:
        w.writerow({k: _cell(row.get(k)) for k in names})
    return buf.getvalue()


def _cell(v):
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.6g}"
    return "" if v is None else v


def _ms(x: float) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x * 1e3:,.0f}"


def _value(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def format_table(result: SearchResult, limit: int = 20) -> str:
    """Terminal summary: cheapest configurations, the frontier, and the ones that cannot meet the SLOs."""
    spec = result.spec
    target = spec.target_rate_per_s
    slo = parse_scenario(spec.base).slo.model_dump(exclude_none=True)
    lines = [
        f"{spec.name}: {len(result.results)} configurations, {len(result.feasible)} meet the SLOs "
        f"({', '.join(f'{k} {v:g} s' for k, v in slo.items())} for {spec.slo_attainment:.0%} of requests)"
        f" — {result.wall_s:.1f} s on {result.backend}",
    ]
    by_status: dict[str, int] = {}
    for r in result.results:
        by_status[r.status] = by_status.get(r.status, 0) + 1
    lines.append("  " + ", ".join(f"{n} {s}" for s, n in by_status.items()))
    lines.append(
        f"  max req/s: the highest rate whose run was stable (no growing queue over at least "
        f"{PROBE_SERVICE_TIMES:g} service times at full batches, up to {MAX_PROBE_REQUESTS:,} requests) and met the SLOs; "
        "fails at: the lowest rate tried above it, and why it failed"
    )
    if _is_day(spec.base):  # (simulator/day_search.py)
        lines[-1] = (
            "  a day: each configuration simulated over the whole day once; max req/s: its busiest hour's offered "
            "rate, served within the SLOs; $/h: the day's cost over its hours"
        )
    columns = swept(spec)
    names = {p: p.split(".")[-1] for p in columns}
    widths = {
        p: min(max(len(names[p]), *(len(_value(v)) for v in vals)), 40) + 2 for p, vals in columns.items()
    }
    head = f"{'#':>4}  " + "".join(f"{names[p]:<{widths[p]}}" for p in columns)
    head += f"{'max req/s':>10}{'fails at':>10}  {'because':<12}{'$/h':>8}{'$/1M tok':>10}{'TTFT p90':>10}{'TPOT p90':>10}"
    if target:
        head += f"{'copies':>8}{'$/h @ target':>14}"

    def cells(r: ConfigResult) -> str:
        return f"{r.index:>4}  " + "".join(
            f"{_value(r.overrides[p])[: widths[p] - 2]:<{widths[p]}}" for p in columns
        )

    def line(r: ConfigResult) -> str:
        fails = f"{r.failed_rate_per_s:.2f}" if math.isfinite(r.failed_rate_per_s) else "—"
        why = r.failed_because.split(" (")[0][:11]
        s = (
            cells(r) + f"{r.max_rate_per_s:>10.2f}{fails:>10}  {why:<12}{r.usd_per_hour:>8.2f}"
            f"{r.usd_per_1m_tokens:>10.3f}{_ms(r.ttft_p90_s):>10}{_ms(r.tpot_p90_s):>10}"
        )
        if target:
            c = r.copies_for(target)
            s += f"{c:>8}{c * r.usd_per_hour:>14.2f}"
        return s

    title = f"cheapest for {target:g} req/s" if target else "cheapest per 1M tokens"
    lines += ["", f"{title} (latencies in ms at each configuration's max rate):", head]
    lines += [line(r) for r in result.cheapest(n=limit)]
    lines += ["", "frontier (no other configuration is cheaper per hour and sustains more):", head]
    lines += [line(r) for r in result.frontier()]
    if result.partial:
        lines.insert(
            1, f"  partial: {len(result.results)} of {result.total} configurations (the search stopped)"
        )
    errors = [r for r in result.results if r.status == "error"]
    if errors:
        lines += ["", "failed (raised an error; a rerun of the same search tries them again):"]
        lines += [f"{cells(r)}{r.message[:140]}" for r in errors[:limit]]
    bad = [r for r in result.results if r.status not in ("ok", "error")]
    if bad:
        lines += ["", "cannot meet the SLOs:"]
        lines += [f"{cells(r)}{r.status}: {r.message[:140]}" for r in bad[:limit]]
        if len(bad) > limit:
            lines.append(f"      … and {len(bad) - limit} more (see the CSV)")
    return "\n".join(lines)


def progress_bar(stream=None, width: int = 30) -> Progress:
    """A one-line text progress bar on stderr: done/total, elapsed and remaining time."""
    t0 = time.perf_counter()
    stream = stream or sys.stderr

    def show(done: int, total: int) -> None:
        el = time.perf_counter() - t0
        fill = int(width * done / max(total, 1))
        eta = el / done * (total - done) if done else 0.0
        stream.write(
            f"\r[{'#' * fill}{'.' * (width - fill)}] {done}/{total} configurations {el:5.1f} s, ~{eta:4.0f} s left"
        )
        if done == total:
            stream.write("\n")
        stream.flush()

    return show
