"""Run a scenario: build the model, profile, memory plan and workload, then the SimPy cluster."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import simpy

from core.cost_model import CostModel
from core.hardware import HardwareProfile
from core.kv_cache import BlockPool
from core.model_spec import ModelSpec, load_model
from core.parallelism import virtual_engines
from core.records import RequestTable, StepStats
from core.requests import Requests, prefix_keys
from core.scheduler import Scheduler, SchedulerConfig, SpecDecode
from simulator.cluster import (
    Group,
    SchedTotals,
    cannot_serve,
    first_reasons,
    fleet,
    kv_summary,
    look_ahead,
    merge_stats,
    plan_groups,
    replica_summary,
)
from simulator.disaggregation import Disaggregated
from simulator.memory import MemoryPlan
from simulator.metrics import summarize
from simulator.replica import Replica
from simulator.response_cache import draw_hits, front
from simulator.router import Router, prefix_ids
from simulator.scenario import Scenario, Serving
from simulator.source import Source
from simulator.speculative import DraftCost, with_draft_memory
from simulator.stability import CHECKS, Backlog, Stopped, assess
from simulator.workload import generate


@dataclass
class Forecast:
    """Everything a run produced: inputs resolved, per-request records, step statistics, summary."""

    scenario: Scenario
    model: ModelSpec
    profile: HardwareProfile
    memory: MemoryPlan
    requests: Requests | None
    table: RequestTable | None
    stats: StepStats | None
    summary: dict
    wall_s: float
    engines: list[Replica] | None = None  # the SimPy replicas (engines), for inspection

    @property
    def fits(self) -> bool:
        return self.memory.fits


def _conversation(env, reqs: Requests, table: RequestTable, source: Source, keys, lookup_s: float = 0.0):
    """When a turn finishes, its conversation's next turn arrives after the user's think time."""
    next_turn, think, arrival = reqs.next_turn, reqs.think_s, table.arrival_s

    def on_finish(rid: int, finish_s: float) -> None:
        nxt = int(next_turn[rid])
        if nxt >= 0:
            delay = max(0.0, finish_s + float(think[rid]) - env.now)
            arrival[nxt] = env.now + delay
            source.follow_up(nxt, delay + lookup_s)  # it reaches the router after the cache lookup

    return on_finish


def _admission(sv: Serving, scenario: Scenario, reqs: Requests, table: RequestTable) -> dict:
    """Priority and arrival time per request, for the scheduler's admission control."""
    out: dict = {"arrival_s": table.arrival_s}
    if sv.scheduling_policy == "priority":
        prio = np.zeros(len(reqs), dtype=np.int64)
        for ci, c in enumerate(scenario.workload.classes or []):
            if reqs.class_id is not None:
                prio[reqs.class_id == ci] = c.priority
        out["priority_of"] = prio.tolist()
    return out


def _spec_settings(sv: Serving, scenario: Scenario, reqs: Requests, engine: int = 0):
    """Speculative decoding's settings for the scheduler, or None."""
    spec = sv.speculative
    if spec is None:
        return None
    alpha = np.full(len(reqs), spec.acceptance_rate)
    classes = scenario.workload.classes or []
    for ci, c in enumerate(classes):
        if c.acceptance_rate is not None and reqs.class_id is not None:
            alpha[reqs.class_id == ci] = c.acceptance_rate
    stream = np.random.SeedSequence(scenario.seed).spawn(5)[4]
    rng = np.random.default_rng(stream if engine == 0 else stream.spawn(engine)[-1])
    return SpecDecode(spec.num_speculative_tokens, spec.max_batch_size, alpha.tolist(), rng)


def _with_draft(group: Group) -> ModelSpec | None:
    """The draft model of a group that speculates with one, its weights and KV taken from the pool."""
    sv = group.serving
    spec = sv.speculative
    if spec is None or spec.method != "draft":
        return None
    draft = load_model(spec.draft_model)
    group.mem = with_draft_memory(group.mem, draft, sv, group.par.tp)
    pp = group.par.pp
    group.engines = (
        virtual_engines(pp, sv.max_num_seqs, group.mem.num_blocks)
        if pp > 1
        else [(sv.max_num_seqs, group.mem.num_blocks)]
    )
    return draft


def _engine(env, index: int, g: Group, max_seqs: int, blocks: int, ctx: dict) -> Replica:
    """One engine (a replica, or a virtual engine of a pipeline-parallel replica) of group g."""
    model, scenario, reqs, table = ctx["model"], ctx["scenario"], ctx["reqs"], ctx["table"]
    sv = g.serving
    cost = g.cost_model(model)
    pool = BlockPool(blocks, sv.block_size, prefix_caching=sv.prefix_caching)
    keys = None
    if sv.prefix_caching and reqs.segments is not None:
        keys = ctx["keys"].get(sv.block_size)
        if keys is None:
            keys = ctx["keys"][sv.block_size] = prefix_keys(reqs, sv.block_size)
    config = SchedulerConfig(
        max_seqs,
        sv.max_num_batched_tokens,
        sv.chunked_prefill,
        sliding_window=model.sliding_window,
        sliding_ratio=model.sliding_kv_bytes_per_token("bf16") / model.kv_bytes_per_token("bf16")
        if model.sliding_layers
        else 0.0,
        max_waiting=sv.max_queue_len,
        timeout_s=sv.queue_timeout_s,
        fresh=cost.fresh,
        spec=_spec_settings(sv, scenario, reqs, index),
    )
    sched = Scheduler(pool, config, block_keys=keys, **_admission(sv, scenario, reqs, table))
    e = Replica(env, index, sched, cost, table, StepStats(ctx["interval"]), sv.batching == "static", g.role)
    e.group = g
    spec, draft = sv.speculative, ctx["drafts"][g.name]
    if spec is not None:
        draft_cost = (
            CostModel(g.profile, draft, sv.weight_dtype, sv.kv_dtype, g.par.tp) if draft is not None else None
        )
        e.draft_time = DraftCost(spec, cost, draft_cost)
    if ctx["step_by_step"]:
        e.run_cap = 1
    return e


def _eligibility(scenario: Scenario, model: ModelSpec, groups: list[Group], reqs: Requests):
    """(eligible mask per group, rejected mask, rejection reasons). With disaggregation a request needs
    the prefill pool (unless it stays local) and the decode pool."""
    p, o = reqs.prompt_tokens, reqs.output_tokens
    masks = [cannot_serve(g, model, p, o) for g in groups]
    ok = [~np.logical_or.reduce(list(m.values())) for m in masks]
    dg = scenario.disaggregation
    if dg is None:
        rejected = ~np.logical_or.reduce(ok)
        reasons = first_reasons(masks[0], rejected)
    else:
        local = p <= dg.local_prefill_max_tokens
        prefill_ok = ok[0] | local
        rejected = ~(prefill_ok & ok[1])
        both = {k: (masks[0][k] & ~local) | masks[1][k] for k in masks[0]}
        reasons = first_reasons(both, rejected)
    return ok, rejected, reasons


def simulate(
    scenario: Scenario,
    requests: Requests | None = None,
    step_by_step: bool = False,
    pulled: bool = True,
    progress: Callable[[float], None] | None = None,
) -> Forecast:
    """Forecast one scenario. A model that does not fit is returned unsimulated, with the numbers.

    `step_by_step` turns off costing runs of decode steps together (same results, slower; for checks).
    `pulled=False` keeps one event per arrival where a lone replica could read its arrivals itself
    (same results, slower; for checks). `progress` is told the share of the arrival window simulated.
    """
    wall0 = time.perf_counter()
    model = load_model(scenario.model)
    groups = plan_groups(scenario, model)
    drafts = {g.name: _with_draft(g) for g in groups}
    g0 = next((g for g in groups if not g.mem.fits), groups[0])
    if not g0.mem.fits:
        summary = summarize(scenario, model, g0.profile, g0.mem, None, None, None, 0.0)
        if len(groups) > 1:
            summary["memory"]["group"] = g0.name
        return Forecast(
            scenario, model, g0.profile, g0.mem, None, None, None, summary, time.perf_counter() - wall0
        )

    reqs = requests if requests is not None else generate(scenario.workload, scenario.seed)
    table = RequestTable(reqs.arrival_s.copy(), reqs.prompt_tokens, reqs.output_tokens)
    if reqs.class_id is not None:
        table.class_id = reqs.class_id
    horizon = float(np.nanmax(reqs.arrival_s)) if len(reqs) else 1.0
    interval = max(horizon / 2000.0, 1e-3)
    env = simpy.Environment()
    ctx = {"model": model, "scenario": scenario, "reqs": reqs, "table": table, "keys": {}, "drafts": drafts,
           "interval": interval, "step_by_step": step_by_step}  # fmt: skip
    engines: list[Replica] = []
    engine_replica: list[int] = []  # replica number of each engine (pipeline-parallel: several engines)
    pools: dict[str, list[Replica]] = {}
    for gi, g in enumerate(groups):
        for _ in range(g.count):
            replica = len(set(engine_replica))
            for max_seqs, blocks in g.engines:
                e = _engine(env, len(engines), g, max_seqs, blocks, ctx)
                engines.append(e)
                engine_replica.append(replica)
                pools.setdefault(g.role, []).append(e)
                e.group_index = gi

    ok, rejected, reasons = _eligibility(scenario, model, groups, reqs)
    table.rejected[:] = rejected
    cache = scenario.response_cache
    hits = None
    if cache is not None:
        rates = None
        classes = scenario.workload.classes or []
        if reqs.class_id is not None and any(c.response_cache_hit_rate is not None for c in classes):
            per_class = [
                cache.hit_rate if c.response_cache_hit_rate is None else c.response_cache_hit_rate
                for c in classes
            ]
            rates = np.asarray(per_class)[reqs.class_id]
        hits = draw_hits(cache, len(reqs), scenario.seed, rates) & ~rejected
    lookup = cache.lookup_latency_s if cache is not None else 0.0

    # routing
    cl, dg = scenario.cluster, scenario.disaggregation
    prefix = prefix_ids(reqs.segments, len(reqs)) if cl.router == "prefix_affinity" else None

    def router_for(pool: list[Replica], max_ongoing=None) -> Router:
        elig = [None if ok[e.group_index].all() else ok[e.group_index] for e in pool]
        return Router(cl.router, pool, elig, prefix, max_ongoing)

    first = np.flatnonzero(np.isfinite(reqs.arrival_s))
    order = first[np.argsort(reqs.arrival_s[first], kind="stable")]
    follow_ups = reqs.next_turn is not None and bool((reqs.next_turn >= 0).any())
    disagg = None
    if dg is None:
        front_pool = engines
        router = router_for(engines, cl.max_ongoing_requests)
        route = engines[0].submit if len(engines) == 1 else router.route
    else:
        front_pool = pools["prefill"]
        router = router_for(front_pool, cl.max_ongoing_requests)
        decode_router = router_for(pools["decode"])
        route = None  # set below, once the source exists

    targets = None
    if len(front_pool) > 1 and not (follow_ups and cl.router == "round_robin"):
        served = ~rejected if hits is None else ~rejected & ~hits
        static = router.static_targets(order[served[order]]) if dg is None else None
        if static is not None:
            targets = np.full(len(reqs), -2, dtype=np.int64)
            targets[order[served[order]]] = static
            if follow_ups and prefix is not None:  # later turns keep their conversation's replica
                later = np.flatnonzero(~np.isfinite(reqs.arrival_s) & served)
                targets[later] = router.static_targets(later)
            route = _by_target(targets, front_pool, router)

    on_finish = None

    refused = rejected.tolist()

    def submit(rid: int) -> None:
        if not refused[rid]:
            entry(rid)

    arrival = reqs.arrival_s + lookup if lookup else reqs.arrival_s
    # one continuous-batching replica taking every arrival as it comes reads them itself
    pulled = pulled and dg is None and len(engines) == 1 and hits is None and not follow_ups
    pulled = pulled and router.max_ongoing is None and engines[0].group.serving.batching != "static"
    source = Source(env, arrival, submit, order=order, pulled=pulled)
    if pulled:
        engines[0].arrivals = source
        engines[0].track_future = False  # no router looks at its load
    if dg is not None:
        disagg = Disaggregated(env, dg, model, groups[0].serving.kv_dtype, table, source, pools["prefill"],
                               pools["decode"], [engine_replica[e.index] for e in pools["prefill"]], router,
                               decode_router)  # fmt: skip
        route = disagg.route
    if follow_ups:
        on_finish = _conversation(env, reqs, table, source, None, lookup)
    entry = front(env, hits, table, route, on_finish) if hits is not None else route
    look_ahead(front_pool, source, targets, order)
    if router.max_ongoing is not None:
        for e in front_pool:
            e.before_step = _puller(router, e)
            e.hold = router.queue.__len__
    for e in engines:
        keys = ctx["keys"].get(e.group.serving.block_size) if e.group.serving.prefix_caching else None
        if follow_ups:  # (the scheduler drops a finished request's prefix keys itself)
            e.on_finish = _conversation(env, reqs, table, source, keys, lookup)
    hold = sum(e.scheduler.max_seqs for e in engines)  # sequences the engines run at once
    stopped = _run(env, engines, source, router, horizon, len(first), hold, progress)
    table.freeze()
    dropped = {"queue_full": 0, "timed_out": 0}
    for e in engines:
        for rid, why in e.scheduler.dropped:
            table.rejected[rid] = True
            dropped[why] += 1
    if reqs.next_turn is not None:  # turns after a rejected one never come: the conversation ended
        for rid in np.flatnonzero(table.rejected):
            nxt = int(reqs.next_turn[rid])
            while nxt >= 0 and not np.isfinite(table.arrival_s[nxt]):
                table.rejected[nxt] = True
                nxt = int(reqs.next_turn[nxt])
    wall = time.perf_counter() - wall0
    g0 = groups[-1] if dg is not None else groups[0]  # the decode pool's GPU is the headline
    single = len(engines) == 1
    stats = merge_stats([e.stats for e in engines], interval)
    sched = engines[0].scheduler if single else SchedTotals([e.scheduler for e in engines])
    summary = summarize(scenario, model, g0.profile, g0.mem, table, stats, sched, wall,
                        None if single else fleet(groups))  # fmt: skip
    summary["rejected_reasons"] = reasons | dropped
    summary["stability"] = assess(
        table.arrival_s, table.scheduled_s, table.finish_s, table.rejected, sum(dropped.values()), hold, stopped,
    ).as_dict()  # fmt: skip
    if not single:
        makespan = summary["throughput"]["duration_s"]
        summary["kv_cache"] |= kv_summary(engines)
        summary["cluster"] = {
            "router": cl.router,
            "replicas": len(set(engine_replica)),
            "gpus": fleet(groups)[0],
            "usd_per_hour": fleet(groups)[1],
            "groups": [
                {
                    "name": g.name,
                    "role": g.role,
                    "gpu": g.profile.name,
                    "gpus_per_replica": g.par.gpus,
                    "count": g.count,
                    "kv_blocks_per_replica": g.mem.num_blocks,
                }
                for g in groups
            ],  # fmt: skip
            "held_at_router": router.held,
        }
        summary["replicas"] = replica_summary(groups, engines, engine_replica, table, makespan)
        if disagg is not None:
            summary["disaggregation"] = disagg.summary(makespan)
    if hits is not None:
        summary["response_cache"] = {
            "kind": cache.kind,
            "hits": int(hits.sum()),
            "hit_fraction": float(hits.sum() / max(len(reqs), 1)),
            "lookup_latency_s": lookup,
            "tokens_served_from_cache": int(reqs.output_tokens[hits].sum()),
        }
    return Forecast(scenario, model, g0.profile, g0.mem, reqs, table, stats, summary, wall, engines)


def _run(
    env,
    engines: list[Replica],
    source: Source,
    router: Router,
    horizon: float,
    total: int,
    hold: int,
    progress: Callable[[float], None] | None = None,
):
    """Run to the end, in chunks over the arrival window; between chunks, stop once overload is certain
    (simulator/stability.py). Chunks do not change the order of events: a run that is not stopped is
    the same as one `env.run()` (tests/simulator/test_stability.py). Returns where it stopped, or None."""
    pulled = engines[0] if engines[0].arrivals is not None else None
    if horizon > 0 and total:
        check = Backlog(hold, total)
        for k in range(1, CHECKS + 1):
            t = horizon * k / CHECKS
            if pulled is not None:
                pulled.sync_at = t
            env.run(until=t)
            if progress is not None:
                progress(k / CHECKS)
            waiting = sum(len(e.scheduler.waiting) for e in engines) + len(router.queue)
            if check.overloaded(waiting, source.next, sum(e.completed for e in engines)):
                return Stopped(env.now, source.next, waiting)
    if pulled is not None:
        pulled.sync_at = math.inf
    env.run()
    return None


def _by_target(targets: np.ndarray, pool: list[Replica], router: Router):
    def route(rid: int) -> None:
        t = targets[rid]
        if t >= 0:
            pool[t].submit(rid)
        else:
            router.route(rid)

    return route


def _puller(router: Router, e: Replica):
    return lambda: router.pull(e) if router.queue else None
