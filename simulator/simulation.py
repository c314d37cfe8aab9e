"""Run a scenario: build the model, profile, memory plan and workload, then the SimPy cluster."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import simpy

from core.cost_model import CostModel
from core.hardware import HardwareProfile
from core.kv_cache import BlockPool
from core.model_spec import ModelSpec, load_model
from core.parallelism import virtual_engines
from core.records import RequestTable, StepStats
from core.requests import Requests, prefix_keys
from core.scheduler import Scheduler, SchedulerConfig, SpecDecode, sliding_terms
from simulator.autoscaling import Autoscaler
from simulator.cluster import (
    Group,
    cannot_serve,
    first_reasons,
    fleet,
    kv_summary,
    look_ahead,
    merge_stats,
    plan_groups,
    replica_summary,
)
from simulator.concurrency import ClientGate, client_gate, client_wait
from simulator.day import DayRecord, build_autoscaler, day_summary
from simulator.disaggregation import Disaggregated
from simulator.host_phases import HostPhaseClock
from simulator.memory import MemoryPlan
from simulator.metrics import Fleet, RunRecord, SchedulerCounts, Setup, summarize
from simulator.rate_schedule import offered
from simulator.replica import RUN_CAP, Replica, ReplicaHooks
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
    day: DayRecord | None = None  # the offered rate and the fleet over time (a schedule or autoscaling)

    @property
    def fits(self) -> bool:
        return self.memory.fits


def _conversation(env, reqs: Requests, table: RequestTable, source: Source, lookup_s: float = 0.0):
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
    if sv.admission.scheduling_policy == "priority":
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
        virtual_engines(pp, sv.batching.max_num_seqs, group.mem.num_blocks)
        if pp > 1
        else [(sv.batching.max_num_seqs, group.mem.num_blocks)]
    )
    return draft


def _engine(b: _Build, index: int, gi: int, g: Group, max_seqs: int, blocks: int) -> Replica:
    """One engine (a replica, or a virtual engine of a pipeline-parallel replica) of group g (number gi)."""
    model, scenario, reqs, table = b.model, b.scenario, b.reqs, b.table
    sv = g.serving
    cost = g.cost_model(model, scenario.workload.moe_routing_skew)
    pool = BlockPool(blocks, sv.memory.block_size, prefix_caching=sv.caching.prefix_caching)
    keys = None
    if sv.caching.prefix_caching and reqs.segments is not None:
        keys = b.keys.get(sv.memory.block_size)
        if keys is None:
            keys = b.keys[sv.memory.block_size] = prefix_keys(reqs, sv.memory.block_size)
    window, ratio = sliding_terms(model)
    config = SchedulerConfig(
        max_seqs,
        sv.batching.max_num_batched_tokens,
        sv.batching.chunked_prefill,
        sliding_window=window,
        sliding_ratio=ratio,
        max_waiting=sv.admission.max_queue_len,
        timeout_s=sv.admission.queue_timeout_s,
        fresh=cost.fresh,
        spec=_spec_settings(sv, scenario, reqs, index),
    )
    sched = Scheduler(pool, config, block_keys=keys, **_admission(sv, scenario, reqs, table))
    spec, draft, draft_time = sv.speculative, b.drafts[g.name], None
    if spec is not None:
        draft_cost = None
        if draft is not None:
            draft_cost = CostModel(g.profile, draft, sv.precision.weight_dtype, sv.precision.kv_dtype, g.par.tp,
                                   engine=g.engine, graph_padding=g.graphs)  # fmt: skip
        in_graph = None  # graphed rounds: the draft's steps without host terms (DraftCost)
        if draft is not None and spec.graphed_rounds:
            in_graph = CostModel(g.profile, draft, sv.precision.weight_dtype, sv.precision.kv_dtype, g.par.tp,
                                 engine=g.engine, serving_host=False, graph_padding=g.graphs)  # fmt: skip
        draft_time = DraftCost(spec, cost, draft_cost, in_graph)
    static = sv.batching.mode == "static"
    phases = g.engine.host.phases if g.engine is not None else None
    clock = HostPhaseClock(phases, scenario.seed, index) if phases is not None else None
    return Replica(b.env, index, sched, cost, table, StepStats(b.interval_s), static, g.role, group=g,
                   group_index=gi, draft_time=draft_time, run_cap=1 if b.step_by_step or clock else RUN_CAP,
                   host_phases=clock)  # fmt: skip


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


@dataclass(slots=True)
class _Build:
    """What building each replica reads: the scenario resolved, its requests and the run's record."""

    env: simpy.Environment
    scenario: Scenario
    model: ModelSpec
    reqs: Requests
    table: RequestTable
    interval_s: float
    step_by_step: bool
    drafts: dict[str, ModelSpec | None]
    keys: dict[int, list] = field(default_factory=dict)  # prefix keys of the requests, per block size


@dataclass(slots=True)
class Deployment:
    """A scenario built and ready to run: its replica groups and their replicas (engines: several per
    replica with pipeline parallelism), the router, the arrival source and the prefill → decode links."""

    env: simpy.Environment
    scenario: Scenario
    model: ModelSpec
    groups: list[Group]
    requests: Requests
    table: RequestTable
    engines: list[Replica]
    replica_of: list[int]  # replica number of each engine
    router: Router
    source: Source
    links: Disaggregated | None  # the KV transfers between the pools, with disaggregation
    hits: np.ndarray | None  # requests the response cache answers, with one
    lookup_s: float  # the response cache's lookup latency
    rejected_reasons: dict[str, int]
    horizon_s: float  # the last first arrival
    interval_s: float  # the timelines' sampling interval
    arrivals: int  # requests that arrive on their own (not later turns of a conversation)
    autoscaler: Autoscaler | None = None  # with cluster.autoscaling
    gate: ClientGate | None = None  # a rate with arrival.concurrency: the client's cap on requests in flight

    @property
    def headline(self) -> Group:
        """The group whose GPU and memory the summary shows: the decode pool's with disaggregation."""
        return self.groups[-1] if self.scenario.disaggregation is not None else self.groups[0]


@dataclass(slots=True)
class RunEnd:
    """How a run ended: where it stopped early as overloaded (None: it ran to the end), requests dropped by
    admission control per reason, and the sequences its engines hold at once."""

    stopped: Stopped | None
    dropped: dict[str, int]
    hold: int


def simulate(
    scenario: Scenario,
    requests: Requests | None = None,
    step_by_step: bool = False,
    pulled: bool = True,
    progress: Callable[[float], None] | None = None,
) -> Forecast:
    """Forecast one scenario: build, run, summarize. A model that does not fit is returned unsimulated.

    `step_by_step` turns off costing runs of decode steps together (same results, slower; for checks).
    `pulled=False` keeps one event per arrival where a lone replica could read its arrivals itself
    (same results, slower; for checks). `progress` is told the share of the arrival window simulated.
    """
    wall0 = time.perf_counter()
    model = load_model(scenario.model)
    groups = plan_groups(scenario, model)
    drafts = {g.name: _with_draft(g) for g in groups}
    short = next((g for g in groups if not g.mem.fits), None)
    if short is not None:
        summary = summarize(Setup(scenario, model, short.profile, short.mem))
        if len(groups) > 1:
            summary["memory"]["group"] = short.name
        wall_s = time.perf_counter() - wall0
        return Forecast(scenario, model, short.profile, short.mem, None, None, None, summary, wall_s)
    reqs = requests if requests is not None else generate(scenario.workload, scenario.seed)
    dep = build(scenario, model, groups, drafts, reqs, step_by_step, pulled)
    record, end = run(dep, progress, started_s=wall0)
    summary = summarize_run(dep, record, end)
    g0 = dep.headline
    day = _day(dep, record, summary)
    return Forecast(scenario, model, g0.profile, g0.mem, reqs, record.table, record.stats, summary, record.wall_s,
                    dep.engines, day)  # fmt: skip


# ---------------------------------------------------------------- build
def build(
    scenario: Scenario,
    model: ModelSpec,
    groups: list[Group],
    drafts: dict[str, ModelSpec | None],
    reqs: Requests,
    step_by_step: bool = False,
    pulled: bool = True,
) -> Deployment:
    """The deployment of a scenario whose groups all fit, on a new SimPy environment, ready to run."""
    table = RequestTable(reqs.arrival_s.copy(), reqs.prompt_tokens, reqs.output_tokens)
    if reqs.class_id is not None:
        table.class_id = reqs.class_id
    horizon = float(np.nanmax(reqs.arrival_s)) if len(reqs) else 1.0
    interval = max(horizon / 2000.0, 1e-3)
    b = _Build(simpy.Environment(), scenario, model, reqs, table, interval, step_by_step, drafts)
    engines, replica_of, pools = _replicas(b, groups)
    ok, rejected, reasons = _eligibility(scenario, model, groups, reqs)
    table.rejected[:] = rejected
    hits = _cache_hits(scenario, reqs, rejected)
    lookup = scenario.response_cache.lookup_latency_s if scenario.response_cache is not None else 0.0
    router, source, links, gate = _connect(b, groups, engines, replica_of, pools, ok, hits, lookup, pulled)
    arrivals = int(np.isfinite(reqs.arrival_s).sum())
    auto = None
    if scenario.cluster.autoscaling is not None:
        auto = build_autoscaler(scenario, groups[0], engines, replica_of, router, source)
    return Deployment(b.env, scenario, model, groups, reqs, table, engines, replica_of, router, source, links,
                      hits, lookup, reasons, horizon, interval, arrivals, auto, gate)  # fmt: skip


def _replicas(b: _Build, groups: list[Group]) -> tuple[list[Replica], list[int], dict[str, list[Replica]]]:
    """Every engine of every group in order; the replica number of each; the engines of each role."""
    engines: list[Replica] = []
    replica_of: list[int] = []
    pools: dict[str, list[Replica]] = {}
    for gi, g in enumerate(groups):
        for _ in range(g.count):
            replica = len(set(replica_of))
            for max_seqs, blocks in g.engines:
                e = _engine(b, len(engines), gi, g, max_seqs, blocks)
                engines.append(e)
                replica_of.append(replica)
                pools.setdefault(g.role, []).append(e)
    return engines, replica_of, pools


def _cache_hits(scenario: Scenario, reqs: Requests, rejected: np.ndarray) -> np.ndarray | None:
    """The requests the response cache answers (None without one): drawn from the seed, per class's rate."""
    cache = scenario.response_cache
    if cache is None:
        return None
    rates = None
    classes = scenario.workload.classes or []
    if reqs.class_id is not None and any(c.response_cache_hit_rate is not None for c in classes):
        per_class = [
            cache.hit_rate if c.response_cache_hit_rate is None else c.response_cache_hit_rate
            for c in classes
        ]
        rates = np.asarray(per_class)[reqs.class_id]
    return draw_hits(cache, len(reqs), scenario.seed, rates) & ~rejected


def _connect(
    b: _Build,
    groups: list[Group],
    engines: list[Replica],
    replica_of: list[int],
    pools: dict[str, list[Replica]],
    ok: list[np.ndarray],
    hits: np.ndarray | None,
    lookup: float,
    pulled: bool,
) -> tuple[Router, Source, Disaggregated | None, ClientGate | None]:
    """Routers, the arrival source, the response cache in front and the prefill → decode links."""
    env, reqs, table, cl, dg = b.env, b.reqs, b.table, b.scenario.cluster, b.scenario.disaggregation
    prefix = prefix_ids(reqs.segments, len(reqs)) if cl.router == "prefix_affinity" else None

    def router_for(pool: list[Replica], max_ongoing=None) -> Router:
        elig = [None if ok[e.group_index].all() else ok[e.group_index] for e in pool]
        return Router(cl.router, pool, elig, prefix, max_ongoing)

    first = np.flatnonzero(np.isfinite(reqs.arrival_s))
    order = first[np.argsort(reqs.arrival_s[first], kind="stable")]
    follow_ups = reqs.next_turn is not None and bool((reqs.next_turn >= 0).any())
    front_pool = engines if dg is None else pools["prefill"]
    router = router_for(front_pool, cl.max_ongoing_requests)
    if dg is None:
        route = engines[0].submit if len(engines) == 1 else router.route
    else:
        decode_router = router_for(pools["decode"])
        route = None  # set below, once the source exists

    targets = None
    scaled = cl.autoscaling is not None  # (which replicas are ready changes: routes are decided on arrival)
    if dg is None and len(front_pool) > 1 and not (follow_ups and cl.router == "round_robin") and not scaled:
        served = ~table.rejected if hits is None else ~table.rejected & ~hits
        targets = _static_routes(router, reqs, served, order, follow_ups and prefix is not None)
        if targets is not None:
            route = _by_target(targets, front_pool, router)

    refused = table.rejected.tolist()

    def submit(rid: int) -> None:
        if not refused[rid]:
            entry(rid)

    arrival = reqs.arrival_s + lookup if lookup else reqs.arrival_s
    gate = client_gate(
        b.scenario.workload, [g.serving for g in groups], env, table.arrival_s, refused, lookup
    )
    # one continuous-batching replica taking every arrival as it comes reads them itself
    pulled = pulled and dg is None and len(engines) == 1 and hits is None and not follow_ups and not scaled
    pulled = pulled and router.max_ongoing is None and engines[0].group.serving.batching.mode != "static"
    pulled = pulled and gate is None
    source = Source(env, arrival, submit if gate is None else gate.arrive, order=order, pulled=pulled)
    if gate is not None:
        gate.connect(source, submit)
    if pulled:
        engines[0].connect(ReplicaHooks(arrivals=source, track_future=False))  # no router looks at its load
    links = None
    if dg is not None:
        links = Disaggregated(env, dg, b.model, groups[0].serving.precision.kv_dtype, table, source, pools["prefill"],
                              pools["decode"], [replica_of[e.index] for e in pools["prefill"]], router,
                              decode_router)  # fmt: skip
        route = links.route
    on_finish = _conversation(env, reqs, table, source, lookup) if follow_ups else None
    if gate is not None:
        on_finish = gate.on_finish if on_finish is None else _both(on_finish, gate.on_finish)
    entry = front(env, hits, table, route, on_finish) if hits is not None else route
    look_ahead(front_pool, source, targets, order)
    if router.max_ongoing is not None:
        for e in front_pool:
            e.connect(ReplicaHooks(before_step=_puller(router, e), hold=router.queue.__len__))
    if on_finish is not None:  # (the scheduler drops a finished request's prefix keys itself)
        for e in engines:
            e.connect(ReplicaHooks(on_finish=on_finish))
    return router, source, links, gate


def _both(first, second):
    """Two finish callbacks in turn (a conversation's next turn, then the client's freed slot)."""

    def on_finish(rid: int, finish_s: float) -> None:
        first(rid, finish_s)
        second(rid, finish_s)

    return on_finish


def _static_routes(
    router: Router, reqs: Requests, served: np.ndarray, order: np.ndarray, later_turns: bool
) -> np.ndarray | None:
    """Each request's engine where the router places them all before the run (−2: never routed), or None
    where it decides on arrival. `later_turns`: conversations' later turns keep their first turn's engine."""
    static = router.static_targets(order[served[order]])
    if static is None:
        return None
    targets = np.full(len(reqs), -2, dtype=np.int64)
    targets[order[served[order]]] = static
    if later_turns:
        later = np.flatnonzero(~np.isfinite(reqs.arrival_s) & served)
        targets[later] = router.static_targets(later)
    return targets


# ---------------------------------------------------------------- run
def run(
    dep: Deployment, progress: Callable[[float], None] | None = None, started_s: float | None = None
) -> tuple[RunRecord, RunEnd]:
    """Run a deployment to the end (or to an early stop as overloaded), settle the requests never served
    (those admission control dropped, the later turns of a conversation that ended) and record the run.
    `started_s`: `time.perf_counter()` when the forecast began, so that its wall time counts the build."""
    started_s = time.perf_counter() if started_s is None else started_s
    engines, table, next_turn = dep.engines, dep.table, dep.requests.next_turn
    hold = sum(e.scheduler.max_seqs for e in engines)  # sequences the engines run at once
    stopped = _run_in_chunks(
        dep.env, engines, dep.source, dep.router, dep.horizon_s, dep.arrivals, hold, progress
    )
    table.freeze()
    dropped = {"queue_full": 0, "timed_out": 0}
    for e in engines:
        for rid, why in e.scheduler.dropped:
            table.rejected[rid] = True
            dropped[why] += 1
    if next_turn is not None:  # turns after a rejected one never come: the conversation ended
        for rid in np.flatnonzero(table.rejected):
            nxt = int(next_turn[rid])
            while nxt >= 0 and not np.isfinite(table.arrival_s[nxt]):
                table.rejected[nxt] = True
                nxt = int(next_turn[nxt])
    wall_s = time.perf_counter() - started_s
    stats = merge_stats([e.stats for e in engines], dep.interval_s)
    record = RunRecord(table, stats, SchedulerCounts.of([e.scheduler for e in engines]), wall_s)
    return record, RunEnd(stopped, dropped, hold)


def _run_in_chunks(
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
                pulled.sync_by(t)
            env.run(until=t)
            if progress is not None:
                progress(k / CHECKS)
            waiting = sum(len(e.scheduler.waiting) for e in engines) + len(router.queue)
            if check.overloaded(waiting, source.next, sum(e.completed for e in engines)):
                return Stopped(env.now, source.next, waiting)
    if pulled is not None:
        pulled.sync_by(math.inf)
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


# ---------------------------------------------------------------- summarize
def _day(dep: Deployment, record: RunRecord, summary: dict) -> DayRecord | None:
    """summary["day"] (and the day's cost, with autoscaling) of a run with a schedule or autoscaling."""
    if dep.autoscaler is None and offered(dep.scenario.workload) is None:
        return None
    replicas = len(set(dep.replica_of))
    day, cost, rec = day_summary(
        dep.scenario, dep.headline, record.table, record.stats, dep.autoscaler, replicas
    )
    summary["day"] = day
    if cost is not None:  # the GPUs actually held, not max_replicas for the whole run
        summary["cost"] = cost | {k: v for k, v in summary["cost"].items() if k == "hosted_api"}
    return rec


def summarize_run(dep: Deployment, record: RunRecord, end: RunEnd) -> dict:
    """The summary of a run: the metrics of its records, why requests were rejected, its stability, and
    for a deployment of several replicas its cluster, replicas and links; the response cache's hits."""
    scenario, groups, engines, table = dep.scenario, dep.groups, dep.engines, dep.table
    single = len(engines) == 1
    g0 = dep.headline
    setup = Setup(scenario, dep.model, g0.profile, g0.mem, None if single else Fleet(*fleet(groups)))
    summary = summarize(setup, record)
    summary["rejected_reasons"] = dep.rejected_reasons | end.dropped
    # (with a client's cap, its own queue is part of the system: arrivals are those at the client)
    came = table.arrival_s if dep.gate is None else dep.gate.client_s
    summary["stability"] = assess(came, table.scheduled_s, table.finish_s, table.rejected, sum(end.dropped.values()),
                                  end.hold, end.stopped).as_dict()  # fmt: skip
    if dep.gate is not None:
        summary["client_wait"] = client_wait(dep.gate, ~table.rejected)
    if not single:
        makespan = summary["throughput"]["duration_s"]
        summary["kv_cache"] |= kv_summary(engines)
        summary["cluster"] = _cluster(dep)
        summary["replicas"] = replica_summary(groups, engines, dep.replica_of, table, makespan)
        if dep.links is not None:
            summary["disaggregation"] = dep.links.summary(makespan)
    hits, cache = dep.hits, scenario.response_cache
    if hits is not None and cache is not None:
        summary["response_cache"] = {
            "kind": cache.kind,
            "hits": int(hits.sum()),
            "hit_fraction": float(hits.sum() / max(len(dep.requests), 1)),
            "lookup_latency_s": dep.lookup_s,
            "tokens_served_from_cache": int(dep.requests.output_tokens[hits].sum()),
        }
    return summary


def _cluster(dep: Deployment) -> dict:
    """summary["cluster"]: the router, the replicas and GPUs with their price, and each group."""
    gpus, usd_per_hour, _ = fleet(dep.groups)
    return {
        "router": dep.scenario.cluster.router,
        "replicas": len(set(dep.replica_of)),
        "gpus": gpus,
        "usd_per_hour": usd_per_hour,
        "groups": [
            {
                "name": g.name,
                "role": g.role,
                "gpu": g.profile.name,
                "gpus_per_replica": g.par.gpus,
                "count": g.count,
                "kv_blocks_per_replica": g.mem.num_blocks,
            }
            for g in dep.groups
        ],
        "held_at_router": dep.router.held,
    }
