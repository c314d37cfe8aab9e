"""Sharded runs: one forecast of many replicas, its replicas split into shards that run as separate tasks.

When the router decides every request's replica without looking at load (round robin, prefix affinity
with every request carrying a prefix), replicas never affect one another: each shard of replicas is a
simulation of its own, fed exactly the requests the router sends it. The shards run on a process pool
or on Ray and their records merge into the forecast one process gives, byte for byte
(tests/simulator/test_shard.py):

- the router's choices are made once, up front, by the same `Router.static_targets` as one process uses;
- each request reaches its shard at the very simulated time (to the last bit) it reaches its replica in
  one process: `arrival_events` replays the float arithmetic of the one-process arrival chain
  (simulator/source.py) and a shard schedules each arrival at that absolute time;
- the early stop of an overloaded run (simulator/stability.py) sums the shards' backlogs at the same
  checks; a run it stops is run again by every shard up to that check;
- per-engine statistics come back unsummed and merge in engine order, as one process sums them.

What stays in one process (the summary says why under "sharding"): routers that read load
(least_outstanding, prefix affinity for requests without a prefix, a router queue), disaggregated pools,
conversations (a later turn arrives when the earlier one finishes), a response cache, autoscaling, and a run
with fewer than two engines.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import simpy

from core.model_spec import ModelSpec, load_model
from core.records import RequestTable, StepStats
from core.requests import Requests
from simulator.cluster import OwnArrivals, merge_stats, plan_groups
from simulator.metrics import RunRecord, SchedulerCounts
from simulator.replica import Replica, ReplicaHooks
from simulator.router import Router, prefix_ids
from simulator.scenario import Scenario
from simulator.stability import CHECKS, Backlog, Stopped
from simulator.workload import generate

_LIVE = RequestTable._LIVE  # the per-request fields a run fills in


# ---------------------------------------------------------------- the arrival chain
def arrival_events(times: np.ndarray, before: float | None = None) -> np.ndarray:
    """The simulated time at which each arrival (in arrival order) is submitted by one process's Source.

    Source chains timeouts: at an event at `now` it submits every arrival due by `now`, then waits
    `times[i] − now` for the next one, landing at `now + (times[i] − now)`, which floating point may put an
    ulp away from `times[i]`. This replays that recurrence with numpy, to a fixed point (the plain loop,
    `_arrival_events_loop`, is its twin in tests/simulator/test_shard.py). `before`: the event of the
    arrival just before `times[0]` (a chunk of a longer run; None: the run's first arrival)."""
    n = len(times)
    if n == 0:
        return np.empty(0)
    events = times.astype(float).copy()
    events[0] = _first_event(float(times[0]), before)
    for _ in range(64):
        prev = np.concatenate((events[:1], events[:-1]))  # (the first has no previous event)
        joins = times <= prev  # due by the previous event: submitted with it
        joins[0] = False
        new = np.where(joins, prev, prev + (times - prev))
        new[0] = events[0]
        if np.array_equal(new, events):
            return events
        events = new
    return _arrival_events_loop(times, before)  # long runs of equal times converge slowly: the loop is exact


def _first_event(t: float, before: float | None) -> float:
    if before is None:
        return max(t, 0.0)
    return before if t <= before else before + (t - before)


def _arrival_events_loop(times: np.ndarray, before: float | None = None) -> np.ndarray:
    """`arrival_events` as Source computes it, one arrival at a time."""
    out = np.empty(len(times))
    ts = times.tolist()
    now = _first_event(ts[0], before)
    i, n = 0, len(ts)
    while i < n:
        out[i] = now
        i += 1
        while i < n and ts[i] <= now:
            out[i] = now
            i += 1
        if i < n:
            now = now + (ts[i] - now)
    return out


def at_time(env: simpy.Environment, t: float) -> simpy.Timeout:
    """A timeout that fires at exactly simulated time `t` (>= now): the delay is nudged by an ulp where
    `now + (t − now)` rounds away from t."""
    now = env.now
    delay = t - now
    for _ in range(8):
        land = now + delay
        if land == t:
            break
        delay = float(np.nextafter(delay, np.inf if land < t else -np.inf))
    return env.timeout(max(delay, 0.0))


class ShardSource:
    """A shard's arrivals: each submitted at the simulated time one process's Source submits it.
    Offers what replicas look ahead with (`times`, `next`, `pending`, as `Source`)."""

    def __init__(self, env: simpy.Environment, times: np.ndarray, events: np.ndarray, submit) -> None:
        self.env, self.submit = env, submit
        self.times = times.tolist() + [float("inf")]  # nominal arrival times, in the shard's order
        self.events = events.tolist()
        self.count = len(times)
        self.next = 0
        self.pending: list = []  # (no conversations in a sharded run)
        if self.count:
            at_time(env, self.events[0]).callbacks.append(self._arrive)

    def _arrive(self, _event) -> None:
        events, i, now = self.events, self.next, self.env.now
        while i < self.count and events[i] <= now:  # (== now: `at_time` lands on the very time)
            i += 1
            self.next = i
            self.submit(i - 1)
        if i < self.count:
            at_time(self.env, events[i]).callbacks.append(self._arrive)


# ---------------------------------------------------------------- what stays in one process
def unshardable(scenario: Scenario, reqs: Requests, engines: int) -> str | None:
    """Why a scenario runs in one process (None: it can be sharded)."""
    cl = scenario.cluster
    if getattr(cl, "autoscaling", None) is not None:
        return "autoscaling decides on load"
    if scenario.disaggregation is not None:
        return "disaggregated pools pass requests between them"
    if engines < 2:
        return "one engine"
    if cl.router == "least_outstanding":
        return "the least_outstanding router decides on load"
    if cl.max_ongoing_requests is not None:
        return "the router queue (max_ongoing_requests) decides on load"
    if scenario.response_cache is not None:
        return "the response cache"
    if reqs.next_turn is not None and bool((reqs.next_turn >= 0).any()):
        return "conversations: a later turn arrives when the earlier one finishes"
    return None


@dataclass(slots=True)
class _Seat:
    """An engine as the router sees it when only its up-front choices are wanted."""

    index: int

    def connect(self, hooks: ReplicaHooks) -> None:
        pass

    def __hash__(self) -> int:
        return self.index


# ---------------------------------------------------------------- one shard
@dataclass(slots=True)
class ShardTask:
    """One shard's work: its engines (global numbers), its requests (global ids, in arrival order, with
    their nominal and submit times) and the run's checks."""

    scenario: Scenario
    engines: list[int]
    requests: Requests  # this shard's requests, in global id order
    rids: np.ndarray  # their global ids
    order: np.ndarray  # local positions in arrival order
    events: np.ndarray  # submit time of each, in arrival order
    targets: np.ndarray  # local engine position of each request (by local id)
    interval_s: float
    horizon_s: float
    total: int  # arrivals of the whole run (the early-stop check runs only with some)
    stop_at: int | None = None  # stop after this check (an overloaded run)


@dataclass(slots=True)
class EngineCounts:
    """What the summary reads of one engine after a run (a stand-in for its Replica and Scheduler)."""

    index: int
    group_index: int
    stats: StepStats
    max_seqs: int
    num_blocks: int
    used: int
    peak_used: int
    evictions: int
    cached_tokens: int
    spec_rounds: int
    spec_yield: int
    group: object = None

    # kv_summary and replica_summary read e.pool.*, SchedulerCounts s.pool.*: the counts are all here
    @property
    def pool(self) -> EngineCounts:
        return self

    @property
    def scheduler(self) -> EngineCounts:
        return self


@dataclass(slots=True)
class ShardOutcome:
    """What a shard sends back: its requests' records (global ids), drops, engines and backlog at each check."""

    rids: np.ndarray
    fields: dict[str, np.ndarray]
    dropped: list[tuple[int, str]]  # (global id, reason)
    engines: list[EngineCounts]
    waiting: list[int] = field(default_factory=list)  # backlog at each check
    completed: list[int] = field(default_factory=list)
    cpu_s: float = 0.0  # CPU seconds the shard took
    peak_rss_mib: float = 0.0  # the peak resident memory of the process that ran it


def run_shard(task: ShardTask) -> ShardOutcome:
    """Build this shard's engines on an environment of its own and run them (simulation.build's engines)."""
    from simulator.simulation import _Build, _engine, _with_draft

    cpu0 = time.process_time()
    sc = task.scenario
    model = load_model(sc.model)
    groups = plan_groups(sc, model)
    drafts = {g.name: _with_draft(g) for g in groups}
    reqs = task.requests
    table = RequestTable(reqs.arrival_s.copy(), reqs.prompt_tokens, reqs.output_tokens)
    if reqs.class_id is not None:
        table.class_id = reqs.class_id
    env = simpy.Environment()
    b = _Build(env, sc, model, reqs, table, task.interval_s, False, drafts)
    wanted = set(task.engines)
    engines: list[Replica] = []
    index = 0
    for gi, g in enumerate(groups):
        for _ in range(g.count):
            for max_seqs, blocks in g.engines:
                if index in wanted:
                    engines.append(_engine(b, index, gi, g, max_seqs, blocks))
                index += 1
    track = sc.cluster.router == "prefix_affinity"  # (as Router.__init__ sets it: no effect on results)
    targets, arrival_rids = task.targets.tolist(), task.order.tolist()

    def submit(k: int) -> None:  # the k-th arrival of the shard
        rid = arrival_rids[k]
        engines[targets[rid]].submit(rid)

    source = ShardSource(env, reqs.arrival_s[task.order], task.events, submit)
    t = task.targets[task.order]
    for i, e in enumerate(engines):
        own = OwnArrivals(source, np.flatnonzero(t == i).tolist())
        e.connect(ReplicaHooks(track_future=track, next_arrival=own))
    out = ShardOutcome(task.rids, {}, [], [])
    stopped = False
    if task.horizon_s > 0 and task.total:
        for k in range(1, CHECKS + 1):
            env.run(until=task.horizon_s * k / CHECKS)
            out.waiting.append(sum(len(e.scheduler.waiting) for e in engines))
            out.completed.append(sum(e.completed for e in engines))
            if k == task.stop_at:
                stopped = True
                break
    if not stopped:
        env.run()
    table.freeze()
    out.fields = {name: getattr(table, name) for name in _LIVE}
    for e in engines:
        out.dropped += [(int(task.rids[rid]), why) for rid, why in e.scheduler.dropped]
        s, p = e.scheduler, e.pool
        e.stats.itl_hist = e.stats.itl_hist  # bins what is pending: the merge only reads it (Ray: read-only)
        if e.stats.timeline:
            e.stats.timeline = np.array(e.stats.timeline)  # compact to send back; merge_stats reads rows
        out.engines.append(
            EngineCounts(
                e.index,
                e.group_index,
                e.stats,
                s.max_seqs,
                p.num_blocks,
                p.used,
                p.peak_used,
                p.evictions,
                s.cached_tokens,
                s.spec_rounds,
                s.spec_yield,
            )  # fmt: skip
        )
    out.cpu_s = time.process_time() - cpu0
    out.peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # (Linux: KiB)
    return out


# ---------------------------------------------------------------- the whole run
def simulate_sharded(
    scenario: Scenario,
    shards: int | None,
    backend: str = "processes",
    workers: int | None = None,
    ray_address: str | None = None,
    requests: Requests | None = None,
):
    """Forecast `scenario` with its engines split into `shards` run on `backend` ('serial': one after the
    other in this process, 'processes', 'ray'; None: one per CPU of the machine or the Ray cluster); the
    same forecast as `simulate`. A scenario that cannot be sharded runs in one process, the reason under
    summary["sharding"]."""
    from simulator.simulation import Forecast, simulate

    wall0 = time.perf_counter()
    if shards is None:
        shards = _cpus(backend, ray_address)
    model = load_model(scenario.model)
    groups = plan_groups(scenario, model)
    if any(not g.mem.fits for g in groups):
        return simulate(scenario, requests)
    reqs = requests if requests is not None else generate(scenario.workload, scenario.seed)
    n_engines = sum(g.count * len(g.engines) for g in groups)
    why = unshardable(scenario, reqs, n_engines) if shards > 1 else "one shard asked for"
    plan = None if why else _plan(scenario, model, groups, reqs, min(shards, n_engines))
    if isinstance(plan, str):
        why, plan = plan, None
    if plan is None:
        f = simulate(scenario, reqs)
        if shards > 1:
            f.summary["sharding"] = {"shards": 1, "why_one_process": why}
        return f
    tasks, base = plan
    table = _table(reqs)
    outcomes = _collect(_run(tasks, backend, workers, ray_address), table)
    stop_at = _early_stop(outcomes, base)
    if stop_at is not None:  # overloaded: every shard runs again up to the check that stopped it
        for t in tasks:
            t.stop_at = stop_at
        outcomes = _collect(_run(tasks, backend, workers, ray_address), table)  # (every record rewritten)
    record, end, dep = _merge(outcomes, base, table, stop_at, wall0)
    from simulator.simulation import summarize_run

    summary = summarize_run(dep, record, end)
    # how it ran, as wall_s (not part of the forecast): the shards, and each one's CPU seconds (the
    # slowest is the run's critical path on idle cores)
    summary["simulation"]["shards"] = len(tasks)
    summary["simulation"]["shard_cpu_s"] = [o.cpu_s for o in outcomes]
    summary["simulation"]["shard_peak_rss_mib"] = max(o.peak_rss_mib for o in outcomes)
    g0 = dep.headline
    return Forecast(scenario, model, g0.profile, g0.mem, reqs, record.table, record.stats, summary,
                    record.wall_s)  # fmt: skip


@dataclass(slots=True)
class _Base:
    """What the merge needs besides the shards' outcomes."""

    scenario: Scenario
    model: ModelSpec
    groups: list
    reqs: Requests
    router: Router
    replica_of: list[int]
    rejected: np.ndarray
    reasons: dict[str, int]
    events: np.ndarray  # submit time of every first arrival, in arrival order
    horizon_s: float
    interval_s: float
    arrivals: int


def _plan(scenario: Scenario, model: ModelSpec, groups: list, reqs: Requests, shards: int):
    """The shards' tasks and what the merge needs; or why the run stays in one process."""
    from simulator.simulation import _eligibility

    seats, replica_of, group_of = [], [], []
    for gi, g in enumerate(groups):
        for _ in range(g.count):
            replica = len(set(replica_of))
            for _ in g.engines:
                seats.append(_Seat(len(seats)))
                replica_of.append(replica)
                group_of.append(gi)
    ok, rejected, reasons = _eligibility(scenario, model, groups, reqs)
    elig = [None if ok[gi].all() else ok[gi] for gi in group_of]  # (as simulation._connect)
    cl = scenario.cluster
    prefix = prefix_ids(reqs.segments, len(reqs)) if cl.router == "prefix_affinity" else None
    router = Router(cl.router, seats, elig, prefix, cl.max_ongoing_requests)
    first = np.flatnonzero(np.isfinite(reqs.arrival_s))
    order = first[np.argsort(reqs.arrival_s[first], kind="stable")]
    served = ~rejected
    routed = order[served[order]]
    static = router.static_targets(routed)
    if static is None or (static < 0).any():
        return "the router decides some requests on load (prefix affinity: requests without a prefix)"
    targets = np.full(len(reqs), -1, dtype=np.int64)
    targets[routed] = static
    horizon = float(np.nanmax(reqs.arrival_s)) if len(reqs) else 1.0
    interval = max(horizon / 2000.0, 1e-3)  # (as simulation.build)
    events = arrival_events(reqs.arrival_s[order])
    event_of = np.empty(len(reqs))
    event_of[order] = events
    base = _Base(scenario, model, groups, reqs, router, replica_of, rejected, reasons, events, horizon,
                 interval, int(np.isfinite(reqs.arrival_s).sum()))  # fmt: skip
    tasks = []
    for part in np.array_split(np.arange(len(seats)), shards):
        lo, hi = int(part[0]), int(part[-1]) + 1
        rids = np.flatnonzero((targets >= lo) & (targets < hi))
        sub = _subset(reqs, rids)
        local_order = np.argsort(reqs.arrival_s[rids], kind="stable")  # (ids ascending: ties keep id order)
        tasks.append(ShardTask(scenario, part.tolist(), sub, rids, local_order, event_of[rids][local_order],
                               targets[rids] - lo, interval, horizon, base.arrivals))  # fmt: skip
    return tasks, base


def _subset(reqs: Requests, rids: np.ndarray) -> Requests:
    """The requests `rids` as a workload of their own (ids renumbered 0.. in the same order)."""
    seg = reqs.segments
    return Requests(
        reqs.arrival_s[rids],
        reqs.prompt_tokens[rids],
        reqs.output_tokens[rids],
        None if reqs.class_id is None else reqs.class_id[rids],
        reqs.class_names,
        None if seg is None else [seg[i] for i in rids.tolist()],
        None,
        None,
        None if reqs.shareable is None else reqs.shareable[rids],
    )


def _cpus(backend: str, ray_address: str | None) -> int:
    if backend == "ray":
        from simulator.search import connect_ray

        return max(int(connect_ray(ray_address).cluster_resources().get("CPU", 1)), 1)
    return os.cpu_count() or 1


def _run(tasks: list[ShardTask], backend: str, workers: int | None, ray_address: str | None):
    """The shards' outcomes, in task order, each as it is taken (so that the caller can merge and drop it)."""
    if backend == "serial":
        for t in tasks:
            yield run_shard(t)
    elif backend == "processes":
        # workers start from a fresh server process, not a fork of this one: they hold their shard only
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["simulator.shard"])
        with ProcessPoolExecutor(max_workers=workers or len(tasks), mp_context=ctx) as pool:
            yield from pool.map(run_shard, tasks)
    elif backend == "ray":
        from simulator.search import connect_ray

        ray = connect_ray(ray_address)
        remote = ray.remote(run_shard)
        refs = [remote.remote(t) for t in tasks]
        for i in range(len(refs)):
            outcome, refs[i] = ray.get(refs[i]), None
            yield outcome
    else:
        raise ValueError(f"backend {backend!r}: serial, processes or ray")


def _table(reqs: Requests) -> RequestTable:
    """The run's per-request table, its per-request fields as arrays for the shards' records."""
    table = RequestTable(reqs.arrival_s.copy(), reqs.prompt_tokens, reqs.output_tokens)
    if reqs.class_id is not None:
        table.class_id = reqs.class_id
    table.freeze()
    return table


def _collect(outcomes, table: RequestTable) -> list[ShardOutcome]:
    """Write each shard's per-request records into the table as it comes and drop them from the outcome:
    one shard's records at a time besides the table."""
    out = []
    for o in outcomes:
        for name, values in o.fields.items():
            getattr(table, name)[o.rids] = values
        o.fields = {}
        out.append(o)
    return out


def _early_stop(outcomes: list[ShardOutcome], base: _Base) -> int | None:
    """The check at which one process would have stopped the run as overloaded (None: it runs to the end).
    Arrivals by a check are those submitted before it (run(until=t) stops ahead of events at t)."""
    if not outcomes[0].waiting:
        return None
    hold = sum(e.max_seqs for o in outcomes for e in o.engines)
    check = Backlog(hold, base.arrivals)
    for k in range(len(outcomes[0].waiting)):
        arrived = int(np.searchsorted(base.events, _check_time(base.horizon_s, k + 1), side="left"))
        waiting = sum(o.waiting[k] for o in outcomes)
        if check.overloaded(waiting, arrived, sum(o.completed[k] for o in outcomes)):
            return k + 1
    return None


def _check_time(horizon_s: float, k: int) -> float:
    """The simulated time at which the k-th check stops the clock: `env.run(until=t)` lands at
    `now + (t − now)`, now being where the previous check stopped it."""
    now = 0.0
    for j in range(1, k + 1):
        now = now + (horizon_s * j / CHECKS - now)
    return now


def _merge(outcomes: list[ShardOutcome], base: _Base, table: RequestTable, stop_at: int | None, wall0: float):
    """One run's record, end and deployment from the shards' outcomes (their records already in `table`)."""
    from simulator.simulation import Deployment, RunEnd

    reqs = base.reqs
    table.rejected[:] = base.rejected
    dropped = {"queue_full": 0, "timed_out": 0}
    engines: list[EngineCounts] = []
    for o in outcomes:
        for rid, why in o.dropped:
            table.rejected[rid] = True
            dropped[why] += 1
        engines += o.engines
    for e in engines:
        e.group = base.groups[e.group_index]  # (its timeline stays an array: merge_stats reads either)
    hold = sum(e.max_seqs for e in engines)
    stopped = None
    if stop_at is not None:
        t = _check_time(base.horizon_s, stop_at)
        arrived = int(np.searchsorted(base.events, t, side="left"))
        stopped = Stopped(t, arrived, sum(o.waiting[stop_at - 1] for o in outcomes))
    stats = merge_stats([e.stats for e in engines], base.interval_s)
    wall_s = time.perf_counter() - wall0
    record = RunRecord(table, stats, SchedulerCounts.of(engines), wall_s)
    dep = Deployment(None, base.scenario, base.model, base.groups, reqs, table, engines, base.replica_of,
                     base.router, None, None, None, 0.0, base.reasons, base.horizon_s, base.interval_s,
                     base.arrivals)  # fmt: skip
    return record, RunEnd(stopped, dropped, hold), dep
