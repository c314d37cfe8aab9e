"""From per-request records and step statistics to the numbers a planner reads.

Latency percentiles (TTFT, TPOT, ITL, end-to-end, queueing), throughput, goodput under the SLOs,
utilisation, KV occupancy, and cost per million tokens (GPU time split between prompt and output
work by the cost model's breakdown; idle time shared in the same proportion).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from core.hardware import HardwareProfile, kv_format, weight_format
from core.model_spec import ModelSpec
from core.records import ITL_BINS_PER_DECADE, ITL_LO, RequestTable, StepStats, itl_percentiles
from core.scheduler import Scheduler
from simulator.engines import engine_profile, engine_summary, named
from simulator.expected_error import expected_error, forecast_settings
from simulator.memory import MemoryPlan
from simulator.scenario import HostedApi, Scenario

QUANTILES = (50, 90, 95, 99)
# the latency metrics of a summary, with their display names
LATENCIES = (
    ("ttft", "TTFT"),
    ("tpot", "TPOT"),
    ("itl", "ITL"),
    ("e2e", "end-to-end"),
    ("queueing", "queueing"),
)


def percentiles(x: np.ndarray) -> dict[str, float]:
    x = x[np.isfinite(x)]
    if not len(x):
        return {f"p{q}": float("nan") for q in QUANTILES} | {"mean": float("nan")}
    vals = np.percentile(x, QUANTILES)
    return {f"p{q}": float(v) for q, v in zip(QUANTILES, vals, strict=True)} | {"mean": float(x.mean())}


def _meets(slo, ttft: np.ndarray, tpot: np.ndarray, e2e: np.ndarray) -> np.ndarray:
    ok = np.ones(len(ttft), dtype=bool)
    if slo.ttft_s is not None:
        ok &= ttft <= slo.ttft_s
    if slo.tpot_s is not None:
        ok &= ~(tpot > slo.tpot_s)  # NaN (single-token outputs) passes
    if slo.e2e_s is not None:
        ok &= e2e <= slo.e2e_s
    return ok


@dataclass(slots=True)
class Fleet:
    """A deployment of several replicas (simulator/cluster.py `fleet`): its GPUs, price and engines."""

    gpus: int
    usd_per_hour: float
    engines: int


@dataclass(slots=True)
class Setup:
    """What a run served: the scenario, the model, the headline GPU and its memory plan, and the fleet of a
    deployment of several replicas (None: one replica)."""

    scenario: Scenario
    model: ModelSpec
    profile: HardwareProfile
    memory: MemoryPlan
    fleet: Fleet | None = None


@dataclass(slots=True)
class SchedulerCounts:
    """What the summary reads from a run's schedulers: counts summed over them, the fullest pool's peak."""

    peak_blocks_used: int
    blocks_in_use: int
    cached_tokens: int
    evicted_blocks: int
    spec_rounds: int
    spec_tokens: int

    @classmethod
    def of(cls, schedulers: list[Scheduler]) -> SchedulerCounts:
        return cls(
            peak_blocks_used=max(s.pool.peak_used for s in schedulers),
            blocks_in_use=sum(s.pool.used for s in schedulers),
            cached_tokens=sum(s.cached_tokens for s in schedulers),
            evicted_blocks=sum(s.pool.evictions for s in schedulers),
            spec_rounds=sum(s.spec_rounds for s in schedulers),
            spec_tokens=sum(s.spec_yield for s in schedulers),
        )


@dataclass(slots=True)
class RunRecord:
    """What a run produced: its per-request table, step statistics (summed over engines), scheduler
    counters and wall time."""

    table: RequestTable
    stats: StepStats
    counts: SchedulerCounts
    wall_s: float


def summarize(setup: Setup, run: RunRecord | None = None) -> dict:
    """The summary dictionary written to summary.json and printed by the CLI; without a run (a model that
    does not fit), the model, hardware and memory sections only."""
    out, price, gpus, engines = _deployment(setup)
    if run is None:
        return out
    scenario, mem, table, stats, counts, wall_s = (
        setup.scenario, setup.memory, run.table, run.stats, run.counts, run.wall_s
    )  # fmt: skip

    n = len(table)
    done = np.isfinite(table.finish_s)
    arrival = table.arrival_s
    ttft, tpot, e2e, queue = _request_latencies(table)
    first = float(arrival.min()) if n else 0.0
    last = float(np.nanmax(table.finish_s)) if done.any() else first
    makespan = max(last - first, 1e-12)
    in_tok = int(table.prompt_tokens[done].sum())
    out_tok = int(table.output_tokens[done].sum())

    slo = scenario.slo
    classes = scenario.workload.classes or []
    ok = done & _slo_met(slo, classes, table.class_id, ttft, tpot, e2e)

    busy = stats.busy_s
    cost_usd = price * gpus * makespan / 3600.0
    share_in = stats.prefill_s / busy if busy else 0.0
    out |= {
        "requests": _request_counts(table, done),
        "latency_s": {
            "ttft": percentiles(ttft),
            "tpot": percentiles(tpot),
            "itl": itl_percentiles(stats.itl_hist, QUANTILES),
            "e2e": percentiles(e2e),
            "queueing": percentiles(queue),
        },
        "throughput": {
            "duration_s": makespan,
            "requests_per_s": int(done.sum()) / makespan,
            "input_tokens_per_s": in_tok / makespan,
            "output_tokens_per_s": out_tok / makespan,
            "output_tokens_per_s_per_gpu": out_tok / makespan / gpus,
            "per_user_output_tokens_per_s": _per_user(tpot[done]),
        },
        "goodput": {
            "slo": slo.model_dump(exclude_none=True),
            "requests_per_s": int(ok.sum()) / makespan,
            "fraction": float(ok.sum() / max(done.sum(), 1)),
        },
        "utilisation": {
            "busy_fraction": min(busy / makespan / engines, 1.0),
            "steps": stats.steps,
            "mean_batch_seqs": stats.batch_seq_steps / max(stats.steps, 1),
            "recomputed_prefill_tokens": int(max(stats.prefill_tokens - table.prompt_tokens[done].sum(), 0)),
        },
        "kv_cache": {
            "blocks": mem.num_blocks,
            "block_size": mem.block_size,
            "mean_occupancy": stats.kv_block_seconds / max(busy, 1e-12) / max(mem.num_blocks, 1),
            "peak_occupancy": counts.peak_blocks_used / max(mem.num_blocks, 1),
            "blocks_in_use_at_end": counts.blocks_in_use,
        },
        "cost": _cost(cost_usd, share_in, in_tok, out_tok),
        "simulation": {
            "wall_s": wall_s,
            "requests_per_wall_s": n / wall_s if wall_s else float("nan"),
            "steps_per_wall_s": stats.steps / wall_s if wall_s else float("nan"),
        },
    }
    out |= _cache_and_speculation(scenario, table, counts)
    out |= vllm_keys(table, stats.itl_hist, makespan, ok if slo.model_dump(exclude_none=True) else None)
    batch = out["utilisation"]["mean_batch_seqs"]
    out["expected_error"] = expected_error(engine_profile(scenario), named(scenario), setup.profile, batch,
                                           model=scenario.model, overlap=scenario.serving.async_scheduling,
                                           settings=forecast_settings(scenario))  # fmt: skip
    if classes:
        out["classes"] = _class_summaries(classes, slo, table, done, ok, (ttft, tpot, e2e), makespan)
    if scenario.hosted_api is not None:
        out["cost"]["hosted_api"] = _hosted_api(scenario.hosted_api, cost_usd, in_tok, out_tok)
    return out


# vLLM bench serve's --metric-percentiles default ("99"); `run --percentiles` picks others
VLLM_PERCENTILES: tuple[float, ...] = (99,)


def vllm_keys(
    table: RequestTable,
    itl_hist: np.ndarray,
    makespan: float,
    goodput_ok: np.ndarray | None,
    percentiles: tuple[float, ...] = VLLM_PERCENTILES,
) -> dict:
    """The run's numbers under vLLM bench serve's result keys (benchmarks/benchmark_serving.py: ms, over the
    finished requests), so a forecast and a measured run diff line by line: `mean_ttft_ms`, `median_ttft_ms`,
    `std_ttft_ms`, `p99_ttft_ms`, ... for ttft, tpot, itl and e2el, and the throughputs. ITL is every token's
    gap, read from the run's ITL histogram (bins 0.46% wide); `request_goodput` is null without an SLO, as
    vLLM writes it without --goodput."""
    from simulator.measured import latency_metrics, throughput_metrics

    done = np.isfinite(table.finish_s)
    ttft, tpot, e2e, _ = _request_latencies(table)
    out = latency_metrics(ttft[done], tpot[done], np.zeros(0), e2e[done], percentiles)
    out |= _itl_keys(itl_hist, percentiles)
    n = int(done.sum())
    rates = throughput_metrics(
        n, int(table.prompt_tokens[done].sum()), int(table.output_tokens[done].sum()), makespan
    )
    goodput = int(goodput_ok.sum()) / makespan if goodput_ok is not None else None
    return rates | {"request_goodput": goodput} | dict(sorted(out.items(), key=lambda kv: _vllm_order(kv[0])))


def _itl_keys(itl_hist: np.ndarray, percentiles: tuple[float, ...]) -> dict[str, float]:
    """vLLM's ITL keys (ms) from the run's ITL histogram; none without a token gap."""
    from simulator.measured import p_word

    total = itl_hist.sum()
    if not total:
        return {}
    centres = (
        ITL_LO * 10 ** ((np.arange(len(itl_hist)) + 0.5) / ITL_BINS_PER_DECADE) * 1000.0
    )  # (as itl_percentiles)
    with np.errstate(over="ignore", invalid="ignore"):  # (ITLs near the histogram's top: std is inf)
        mean = float((itl_hist * centres).sum() / total)
        std = float(np.sqrt((itl_hist * (centres - mean) ** 2).sum() / total))
    itl = itl_percentiles(itl_hist, (50, *percentiles))
    out = {"mean_itl_ms": mean, "median_itl_ms": itl["p50"] * 1000.0, "std_itl_ms": std}
    return out | {f"p{p_word(q)}_itl_ms": itl[f"p{q:g}"] * 1000.0 for q in percentiles}


def with_percentiles(
    summary: dict, table: RequestTable, itl_hist: np.ndarray, percentiles: tuple[float, ...]
) -> None:
    """Replace the summary's vLLM latency keys (`mean_ttft_ms`...) by those with `percentiles` (`run
    --percentiles`, vLLM's --metric-percentiles); the other keys stay as they are."""
    if "mean_ttft_ms" not in summary:
        return  # (a model that does not fit has no latencies)
    for k in [k for k in summary if k.endswith("_ms") and k.split("_")[1] in ("ttft", "tpot", "itl", "e2el")]:
        del summary[k]
    keys = vllm_keys(table, itl_hist, summary["throughput"]["duration_s"], None, percentiles)
    summary |= {k: v for k, v in keys.items() if k.endswith("_ms")}


def _vllm_order(key: str) -> tuple[int, int]:
    """benchmark_serving.py's order: ttft, tpot, itl, e2el; mean, median, std, then the percentiles."""
    stat, name, _ = key.split("_")
    metric = ("ttft", "tpot", "itl", "e2el").index(name)
    return metric, {"mean": -3, "median": -2, "std": -1}.get(stat, 0)


def _per_user(tpot: np.ndarray) -> float:
    """The output tokens per second one user sees while its answer streams: the mean over requests of
    1 / TPOT (AIPerf's and genai-perf's output token throughput per user)."""
    tpot = tpot[np.isfinite(tpot) & (tpot > 0)]
    return float(np.mean(1.0 / tpot)) if len(tpot) else float("nan")


def _hosted_api(api: HostedApi, cost_usd: float, in_tok: int, out_tok: int) -> dict:
    """summary["cost"]["hosted_api"]: the same tokens at a hosted API's prices, and self-hosting against it."""
    api_cost = (in_tok * api.usd_per_1m_input + out_tok * api.usd_per_1m_output) / 1e6
    return {
        "name": api.name,
        "same_tokens_usd": api_cost,
        "self_hosted_over_api": cost_usd / api_cost if api_cost else float("nan"),
    }


def _request_counts(table, done: np.ndarray) -> dict:
    n, rejected = len(table), int(table.rejected.sum())
    return {
        "total": n,
        "finished": int(done.sum()),
        "rejected": rejected,
        "unfinished": int(n - done.sum() - rejected),
        "preemptions": int(table.preemptions.sum()),
    }


def _cost(cost_usd: float, share_in: float, in_tok: int, out_tok: int) -> dict:
    """GPU cost per million tokens: input and output tokens take the GPU time their work took."""
    nan = float("nan")
    return {
        "total_usd": cost_usd,
        "usd_per_1m_input_tokens": cost_usd * share_in / in_tok * 1e6 if in_tok else nan,
        "usd_per_1m_output_tokens": cost_usd * (1 - share_in) / out_tok * 1e6 if out_tok else nan,
        "usd_per_1m_tokens": cost_usd / (in_tok + out_tok) * 1e6 if in_tok + out_tok else nan,
    }


def _request_latencies(table) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per request: TTFT, TPOT (NaN for one-token outputs), end-to-end and queueing time."""
    arrival = table.arrival_s
    outs = table.output_tokens.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(outs > 1, (table.finish_s - table.first_token_s) / (outs - 1), np.nan)
    return table.first_token_s - arrival, tpot, table.finish_s - arrival, table.scheduled_s - arrival


def _slo_met(slo, classes, class_id, ttft, tpot, e2e) -> np.ndarray:
    """Whether each request met its SLO: its class's where classes set one, else the scenario's."""
    if not classes:
        return _meets(slo, ttft, tpot, e2e)
    ok = np.ones(len(ttft), dtype=bool)
    for ci, c in enumerate(classes):
        m = class_id == ci
        ok[m] &= _meets(c.slo or slo, ttft[m], tpot[m], e2e[m])
    return ok


def _deployment(setup: Setup) -> tuple[dict, float, int, int]:
    """The summary's model, hardware and memory sections, with the price per GPU-hour, GPUs and engines."""
    scenario, model, profile, fleet = setup.scenario, setup.model, setup.profile, setup.fleet
    mem = setup.memory
    hw = scenario.hardware
    price = hw.price_per_gpu_hour_usd if hw.price_per_gpu_hour_usd is not None else profile.price.usd_per_hour
    gpus, engines = hw.gpus_per_replica, 1
    if fleet is not None:
        gpus, engines = fleet.gpus, fleet.engines
        price = fleet.usd_per_hour / gpus  # blended over the GPUs
    out: dict = {
        "scenario": scenario.name,
        "model": {
            "name": model.name,
            "params": model.param_count,
            "active_params": model.active_param_count,
            "weight_dtype": scenario.serving.precision.weight_dtype,
            "kv_dtype": scenario.serving.precision.kv_dtype,
            "kv_bytes_per_token": model.kv_bytes_per_token(scenario.serving.precision.kv_dtype),
        },
        "hardware": {
            "gpu": profile.name,
            "display_name": profile.display_name,
            "gpus": gpus,
            "calibrated": profile.is_calibrated,
            "price_per_gpu_hour_usd": price,
        },
        "memory": mem.as_dict() | {"fits": mem.fits, "explain": mem.explain()},
        "fits": mem.fits,
    }
    if not profile.is_calibrated:  # where its efficiencies come from (simulator gpus has the detail)
        out["hardware"]["profile_status"] = profile.status
    note = weight_format(profile, scenario.serving.precision.weight_dtype)
    if note:  # the weight format runs through an engine's fallback on this GPU: priced that way, and said so
        out["hardware"]["format_note"] = note
    kv_note = kv_format(profile, scenario.serving.precision.kv_dtype)
    if kv_note:  # likewise a KV-cache format stored through a fallback (say fp8 on Ampere)
        out["hardware"]["kv_format_note"] = kv_note
    if named(scenario):  # a scenario that names no engine keeps the summary of before (ours)
        out["engine"] = engine_summary(engine_profile(scenario), profile.name)
    return out, price, gpus, engines


def _cache_and_speculation(scenario: Scenario, table: RequestTable, counts: SchedulerCounts) -> dict:
    """summary["prefix_cache"], and summary["speculative"] when the scenario speculates."""
    prompt_done = int(table.prompt_tokens[np.isfinite(table.scheduled_s)].sum())
    cached = int(table.cached_tokens.sum())
    out: dict = {
        "prefix_cache": {
            "enabled": scenario.serving.caching.prefix_caching,
            "hit_rate": cached / prompt_done if prompt_done else 0.0,
            "prefill_tokens_saved": cached,
            "prefill_tokens_saved_incl_recompute": int(counts.cached_tokens),
            "evicted_blocks": int(counts.evicted_blocks),
        }
    }
    if scenario.serving.speculative is not None:
        rounds, tokens = counts.spec_rounds, counts.spec_tokens
        out["speculative"] = {
            "rounds": int(rounds),
            "tokens": int(tokens),
            "tokens_per_round": tokens / rounds if rounds else float("nan"),
        }
    return out


def _class_summaries(classes, slo, table, done, ok, latencies, makespan: float) -> dict:
    """summary["classes"]: each traffic class's latencies and goodput against its own SLO."""
    ttft, tpot, e2e = latencies
    out = {}
    for ci, c in enumerate(classes):
        m = table.class_id == ci
        dm = done & m
        out[c.name] = {
            "requests": int(m.sum()),
            "finished": int(dm.sum()),
            "ttft": percentiles(ttft[m]),
            "tpot": percentiles(tpot[m]),
            "e2e": percentiles(e2e[m]),
            "goodput_requests_per_s": int((ok & m).sum()) / makespan,
            "goodput_fraction": float((ok & m).sum() / max(dm.sum(), 1)),
            "prefix_hit_rate": float(table.cached_tokens[m].sum() / max(table.prompt_tokens[dm].sum(), 1)),
            "slo": (c.slo or slo).model_dump(exclude_none=True),
        }
    return out


# ---------------------------------------------------------------- capacity of one forecast
CAPACITY_ATTAINMENT = 0.9  # share of requests that must meet the SLOs: the search's default (SearchSpec)


def capacity(scenario, summary: dict, slo_attainment: float = CAPACITY_ATTAINMENT) -> dict:
    """summary["capacity"]: the highest rate this configuration sustains within its SLOs (the stability-aware
    search of simulator/search.py for this one configuration), the offered load against it, and whether
    the run was stable; `{"skipped": why}` where it cannot be found (no SLO, does not fit, a workload whose
    rate cannot be set)."""
    from core.errors import ConfigError
    from simulator.search import MAX_PROBE_REQUESTS, bracket, max_sustainable_rate

    if not summary["fits"]:
        return {"skipped": "the model does not fit: no rate can be served"}
    classes = scenario.workload.classes or []
    if scenario.workload.arrival.process == "closed_loop":
        return {"skipped": "a closed loop has users, not a rate; rerun with more or fewer "
                "arrival.concurrency users to see the latency each load gives"}  # fmt: skip
    if not scenario.slo.model_dump(exclude_none=True) and not any(c.slo for c in classes):
        return {"skipped": "the scenario sets no SLO; set slo.ttft_s, slo.tpot_s or slo.e2e_s to find the "
                "highest rate within them"}  # fmt: skip
    t0 = time.perf_counter()
    data = scenario.model_dump(mode="json")
    # the search sizes its runs from the service time (at most MAX_PROBE_REQUESTS) but never below the
    # base's own length: a long run's capacity is found with runs no longer than the search's own
    n = data["workload"].get("num_requests")
    if n is not None and n > MAX_PROBE_REQUESTS:
        data["workload"]["num_requests"] = MAX_PROBE_REQUESTS
    try:
        rate, probes, at_max = max_sustainable_rate(data, slo_attainment)
    except ConfigError as e:  # e.g. a trace whose arrivals are all at one instant: no rate to rescale
        return {"skipped": f"this workload's rate cannot be changed ({e})"}
    st = summary.get("stability") or {}
    offered = st.get("offered_per_s")
    offered = offered if offered is not None and math.isfinite(offered) else None
    passed, failed, why = bracket(probes)
    return {
        "max_rate_per_s": rate,
        "offered_per_s": offered,
        "offered_load_fraction": offered / rate if offered is not None and rate > 0 else None,
        "stable": st.get("verdict") == "stable",
        "verdict": st.get("verdict"),
        "slo_attainment": slo_attainment,
        "bracket": {
            "passed_per_s": passed,
            "failed_per_s": failed if math.isfinite(failed) else None,
            "failed_because": why,
        },
        "probe_requests": at_max["requests"]["total"] if at_max else 0,
        "simulations": len(probes),
        "wall_s": time.perf_counter() - t0,
    }


def capacity_line(cap: dict) -> str:
    """One sentence for a terminal, a page or a report."""
    if "skipped" in cap:
        return f"capacity not computed: {cap['skipped']}"
    rate, load, b = cap["max_rate_per_s"], cap["offered_load_fraction"], cap["bracket"]
    if rate <= 0:
        return (
            f"capacity: no rate meets the SLOs for {cap['slo_attainment']:.0%} of requests "
            f"({b['failed_because'] or 'even the lowest rate tried fails'})"
        )
    text = f"capacity: {rate:.3g} req/s within the SLOs for {cap['slo_attainment']:.0%} of requests"
    if load is not None:
        text += f"; offered {cap['offered_per_s']:.3g} req/s is {load:.0%} of it" + (
            f" ({1 - load:.0%} headroom)" if load < 1 else " (over capacity)"
        )
    if b["failed_per_s"] is not None:
        text += f"; fails at {b['failed_per_s']:.3g} req/s ({b['failed_because']})"
    return text
