"""Replicas added and removed with the load: an autoscaler as a SimPy process.

Every `interval_s` the autoscaler reads one metric over the last `window_s` and recommends a replica count:
  utilisation  offered req/s ÷ (replica_capacity_per_s × target_utilisation), rounded up (a request-rate
               target, as Knative's rps target or Dynamo's planner with a profiled per-replica rate);
  queue        mean ongoing (queued + running) requests ÷ target_ongoing_per_replica, rounded up (Ray Serve's
               target_ongoing_requests, Knative's concurrency target);
  slo          one more than now when the window's TTFT or TPOT percentile passes scale_up_at × its SLO, one
               fewer when both are below scale_down_at × their SLO (a request still waiting counts with the
               TTFT it has so far, as a monitor sees it).
Recommendations are stabilised as Kubernetes' HPA does: the fleet grows to the smallest recommendation of the
last `scale_up_delay_s` and shrinks to the largest of the last `scale_down_delay_s`, within min/max.

A new replica holds its GPUs from the decision and serves after its start-up time (weights ÷ load bandwidth
+ engine start + CUDA-graph capture). The router sends only to ready replicas. A replica scaled down stops
taking requests, finishes those it holds (draining), then releases its GPUs — noticed at the next
evaluation, so a drain is billed up to `interval_s` too long — and loses its prefix cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import simpy

from core.records import RequestTable
from simulator.replica import Replica, ReplicaHooks
from simulator.router import Router
from simulator.scenario import LOAD_GB_PER_S, Autoscaling, Slo, Startup
from simulator.source import Source


class State(Enum):
    OFF = "off"
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"


def startup_s(st: Startup, weight_bytes: float) -> float:
    """Seconds from a replica's start to its first request: all its GPUs' weights read at the storage tier's
    rate (shared by the replica's GPUs: vLLM read a 13B over TP=2 from NVMe at the TP=1 rate, and a 70B over
    TP=8 from page cache at 7 GB/s in all; see scenario.Startup), engine start, CUDA-graph capture."""
    gbps = st.load_gb_per_s if st.load_gb_per_s is not None else LOAD_GB_PER_S[st.storage]
    return weight_bytes / (gbps * 1e9) + st.engine_start_s + st.cuda_graph_capture_s


@dataclass(slots=True)
class FleetChange:
    """The fleet from time `t` on: replicas ready, starting and draining."""

    t: float
    ready: int
    starting: int
    draining: int


@dataclass(slots=True)
class Watch:
    """What the autoscaler reads of the run: arrivals (for the offered rate), the request table (for the
    SLO policy) and the SLOs."""

    source: Source
    table: RequestTable
    order: np.ndarray  # request ids of first arrivals in arrival order
    slo: Slo
    capacity_per_s: float | None  # the utilisation policy's per-replica rate


@dataclass
class Autoscaler:
    """The fleet of an autoscaled cluster: which replicas are off, starting, ready or draining."""

    env: simpy.Environment
    spec: Autoscaling
    replicas: list[list[Replica]]  # each replica's engines (several with pipeline parallelism)
    router: Router
    watch: Watch
    startup_s: float
    state: list[State] = field(default_factory=list)
    changes: list[FleetChange] = field(default_factory=list)
    decisions: list[tuple[float, int]] = field(default_factory=list)  # (time, recommended replicas)
    scale_ups: list[float] = field(default_factory=list)  # when each start was decided
    _samples: list[tuple[float, int]] = field(default_factory=list)  # (t, ongoing requests on ready replicas)
    _arrival_times: np.ndarray | None = None
    _starts: list[int] = field(default_factory=list)  # per replica, how many starts so far (a cancelled one's
    # timer must not make a later start ready early)

    def __post_init__(self) -> None:
        n = self.spec.initial_replicas or self.spec.min_replicas
        self.state = [State.READY if i < n else State.OFF for i in range(len(self.replicas))]
        self._starts = [0] * len(self.replicas)
        for engines in self.replicas:
            for e in engines:  # the autoscaler and the router read loads as of now
                e.connect(ReplicaHooks(track_future=True))
        self._arrival_times = self.watch.table.arrival_s[self.watch.order]
        self._publish()
        self.env.process(self._loop())

    # ------------------------------------------------------------------ the fleet as others see it
    def ready(self) -> list[Replica]:
        """The engines the router may send to."""
        return [e for engines, s in zip(self.replicas, self.state) if s is State.READY for e in engines]

    def count(self, s: State) -> int:
        return sum(x is s for x in self.state)

    def _publish(self) -> None:
        self.router.set_ready(self.ready())
        c = FleetChange(
            self.env.now, self.count(State.READY), self.count(State.STARTING), self.count(State.DRAINING)
        )
        if self.changes and self.changes[-1].t == c.t:
            self.changes[-1] = c
        else:
            self.changes.append(c)

    # ------------------------------------------------------------------ the control loop
    def _loop(self):
        sp, env, src = self.spec, self.env, self.watch.source
        while True:
            yield env.timeout(sp.interval_s)
            self._drained()
            self._samples.append((env.now, sum(e.load()[1] for e in self.ready())))
            want = self._recommend()
            self.decisions.append((env.now, want))
            self._scale(self._stabilised(want))
            if src.next >= src.count and not src.pending and self._idle():
                return  # every request served: nothing more to decide

    def _idle(self) -> bool:
        return all(e.load()[1] == 0 for engines in self.replicas for e in engines)

    def _recommend(self) -> int:
        sp, now = self.spec, self.env.now
        if sp.policy == "slo":
            return self.count(State.READY) + self.count(State.STARTING) + self._slo_step()
        if sp.policy == "utilisation":  # arrivals in (now − window, now], over the window (shorter at 0)
            t0 = max(now - sp.window_s, 0.0)
            rate = (self._arrived_by(now) - self._arrived_by(t0)) / max(now - t0, 1e-9)
            return math.ceil(rate / (self.watch.capacity_per_s * sp.target_utilisation) - 1e-9)
        while self._samples[0][0] <= now - sp.window_s:
            self._samples.pop(0)
        ongoing = np.mean([x[1] for x in self._samples])
        return math.ceil(ongoing / sp.target_ongoing_per_replica - 1e-9)

    def _arrived_by(self, t: float) -> int:
        return int(np.searchsorted(self._arrival_times, t, side="right"))

    def _slo_step(self) -> int:
        """+1, 0 or −1 from the window's TTFT and TPOT percentiles against the SLOs."""
        sp, slo, tab, now = self.spec, self.watch.slo, self.watch.table, self.env.now
        lo, hi = np.searchsorted(self._arrival_times, [now - sp.window_s, now], side="right")
        rids = self.watch.order[lo:hi]
        if not len(rids):
            return 0
        # (the table's columns are lists while the run goes on)
        first_s = np.array([tab.first_token_s[i] for i in rids.tolist()])
        ratios = []
        if slo.ttft_s is not None:
            first = np.fmin(first_s, now)  # still waiting: the TTFT so far
            ratios.append(np.percentile(first - tab.arrival_s[rids], sp.slo_percentile) / slo.ttft_s)
        if slo.tpot_s is not None:
            fin, out = np.array([tab.finish_s[i] for i in rids.tolist()]), tab.output_tokens[rids]
            done = (fin <= now) & (out > 1)
            if done.any():
                tpot = (fin[done] - first_s[done]) / (out[done] - 1)
                ratios.append(np.percentile(tpot, sp.slo_percentile) / slo.tpot_s)
        if not ratios:
            return 0
        if max(ratios) > sp.scale_up_at:
            return 1
        return -1 if max(ratios) < sp.scale_down_at else 0

    def _stabilised(self, want: int) -> int:
        """HPA's stabilisation: grow to the least recommended over the up-delay, shrink to the most
        recommended over the down-delay."""
        sp, now = self.spec, self.env.now
        current = self.count(State.READY) + self.count(State.STARTING)
        up = min(w for t, w in self.decisions if t >= now - sp.scale_up_delay_s - 1e-9)
        down = max(w for t, w in self.decisions if t >= now - sp.scale_down_delay_s - 1e-9)
        target = up if up > current else down if down < current else current
        return min(max(target, sp.min_replicas), sp.max_replicas)

    # ------------------------------------------------------------------ changing the fleet
    def _scale(self, target: int) -> None:
        current = self.count(State.READY) + self.count(State.STARTING)
        changed = False
        for _ in range(target - current):
            i = next((i for i, s in enumerate(self.state) if s is State.OFF), None)
            if i is None:  # every other replica still drains: start once one has released its GPUs
                break
            self.state[i] = State.STARTING
            self._starts[i] += 1
            self.scale_ups.append(self.env.now)
            self.env.process(self._start(i, self._starts[i]))
            changed = True
        for _ in range(current - target):
            # cancel a start first (it serves nothing yet), else drain the ready replica holding least
            i = next((i for i, s in enumerate(self.state) if s is State.STARTING), None)
            if i is not None:
                self.state[i] = State.OFF
            else:
                ready = [i for i, s in enumerate(self.state) if s is State.READY]
                i = min(ready, key=lambda k: (sum(e.load()[1] for e in self.replicas[k]), -k))
                self.state[i] = State.DRAINING
            changed = True
        if changed:
            self._publish()

    def _start(self, i: int, start: int):
        yield self.env.timeout(self.startup_s)
        if self.state[i] is State.STARTING and self._starts[i] == start:  # (not cancelled meanwhile)
            self.state[i] = State.READY
            self._publish()

    def _drained(self) -> None:
        """Replicas that finished draining release their GPUs; their KV cache (and prefix cache) is gone."""
        done = [
            i
            for i, s in enumerate(self.state)
            if s is State.DRAINING and all(e.load()[1] == 0 for e in self.replicas[i])
        ]
        for i in done:
            self.state[i] = State.OFF
            for e in self.replicas[i]:
                e.pool.drop_cache()
        if done:
            self._publish()


def replicas_over_time(changes: list[FleetChange], times: np.ndarray) -> np.ndarray:
    """(ready, starting, draining) at each of `times` (rows)."""
    t = np.array([c.t for c in changes])
    vals = np.array([(c.ready, c.starting, c.draining) for c in changes])
    return vals[np.maximum(np.searchsorted(t, times, side="right") - 1, 0)]


def replica_seconds(changes: list[FleetChange], start: float, end: float) -> float:
    """Replica-seconds held (ready, starting or draining) from `start` to `end`."""
    t = np.array([c.t for c in changes] + [math.inf])
    held = np.array([c.ready + c.starting + c.draining for c in changes], dtype=float)
    lo, hi = np.clip(t[:-1], start, end), np.clip(t[1:], start, end)
    return float(((hi - lo) * held).sum())
