"""Streamed fleet runs: a sharded forecast whose coordinator's memory does not grow with the run.

A sharded run (simulator/shard.py) generates the whole workload in the coordinator and gathers every
request's record there: about 450 bytes a request, 30 GB for a 72-million-request hour of a fleet. A
streamed run keeps the coordinator flat:

- the workload is drawn in chunks (`workload_chunks`: the very numbers `generate` draws, chunk after
  chunk, from the same seeded streams), by each shard for itself: a shard keeps only its own requests,
  routed as one process's round robin routes them;
- each shard writes its requests' records to `records_dir` in columnar numpy chunks
  (`shard-SSSS-CCCC.npz`, CHUNK_ROWS rows each; `read_records` reads them back) and sends back only what
  the summary adds up: counts, sums, per-engine statistics, mergeable latency sketches (`LogSketch`), the
  counts over time the stability verdict reads, and an order-free digest of its records;
- the coordinator passes over the workload once more, chunk by chunk, while the shards run (the requests no
  replica can serve, the arrivals by each early-stop check), merges, and writes the summary.

Memory: the coordinator holds one chunk of the workload and the shards' partials (about 1 MB each, most
of it the sketches); a shard holds its own requests while it runs (about 0.6-0.9 KB each) and one chunk.

Exact in the summary: every count, total, rate, cost, the stability verdict, means (up to the order of
floating-point additions), ITL percentiles (the same histogram as one process). Sketched: the TTFT,
TPOT, end-to-end and queueing percentiles (and vLLM's median/pNN keys for them), each within
SKETCH_RELATIVE_ERROR (0.115%) of the exact percentile for values from 1 ns to 10^7 s (zeros exact),
as summary["percentiles"] says. Standard deviations merge per shard (Chan et al.), exact up to rounding.

What streams: one group of replicas behind round robin, a workload of num_requests drawn from a
distribution (Poisson, gamma or constant arrivals; fixed, uniform, lognormal or exponential lengths),
no traffic classes, conversations, schedule, response cache or autoscaling. Shards that finished stay on
disk: a run started again with `resume=True` runs only those missing (`deadline_s` stops a run in time to
be resumed).
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import pickle
import resource
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from core.errors import ConfigError
from core.model_spec import load_model
from core.records import StepStats
from core.requests import Requests
from simulator.cluster import (
    MAX_TIMELINE_ROWS,
    cannot_serve,
    first_reasons,
    fleet,
    kv_summary,
    plan_groups,
    replica_summary,
)
from simulator.metrics import QUANTILES, Fleet, SchedulerCounts, Setup, summarize
from simulator.scenario import Exponential, Fixed, Lognormal, Scenario, Uniform
from simulator.shard import ShardTask, arrival_events, run_shard, unshardable
from simulator.stability import CHECKS, SAMPLES, WARMUP_FRACTION, Backlog, Counts, Stopped, judge
from simulator.workload import _gaps, _lengths

CHUNK_ROWS = 1_000_000  # requests drawn, and records written, at a time
# sharded runs of more requests than this stream (fewer: the coordinator holds every record, and the
# percentiles are exact, byte for byte one process's)
STREAM_ABOVE_REQUESTS = 4_000_000

# ---------------------------------------------------------------- the latency sketch
SKETCH_LO, SKETCH_BINS_PER_DECADE, SKETCH_DECADES = 1e-9, 1000, 16
SKETCH_RELATIVE_ERROR = 10 ** (0.5 / SKETCH_BINS_PER_DECADE) - 1  # a bin's half width, in ratio: 0.115%
_NBINS = SKETCH_BINS_PER_DECADE * SKETCH_DECADES


class LogSketch:
    """A mergeable percentile sketch: counts of values in log-spaced bins (1,000 a decade from 1 ns to
    10^7 s), zeros counted exactly. A value is read back as its bin's geometric centre, within
    SKETCH_RELATIVE_ERROR of it; a percentile interpolates two such order statistics as np.percentile
    interpolates the exact ones, so it is within the same relative error of np.percentile's value
    (values below 1 ns read as 1 ns; above 10^7 s as 10^7 s). Fixed memory: 128 KB."""

    __slots__ = ("counts", "zeros")

    def __init__(self) -> None:
        self.counts = np.zeros(_NBINS, dtype=np.int64)
        self.zeros = 0

    def add(self, x: np.ndarray) -> None:
        """Add the finite values of x (non-negative: latencies)."""
        x = x[np.isfinite(x)]
        pos = x[x > 0]
        self.zeros += len(x) - len(pos)
        idx = np.floor(np.log10(pos / SKETCH_LO) * SKETCH_BINS_PER_DECADE)
        idx = np.clip(idx, 0, _NBINS - 1).astype(np.int64)
        self.counts += np.bincount(idx, minlength=_NBINS)

    def merge(self, other: LogSketch) -> None:
        self.counts += other.counts
        self.zeros += other.zeros

    def __len__(self) -> int:
        return int(self.counts.sum()) + self.zeros

    def percentile(self, q: float) -> float:
        """np.percentile's linear interpolation between the order statistics around rank (n − 1)·q/100."""
        n = len(self)
        if not n:
            return math.nan
        h = (n - 1) * q / 100.0
        lo, hi = math.floor(h), math.ceil(h)
        a, b = self._value(lo), self._value(hi)
        return a + (b - a) * (h - lo)

    def _value(self, rank: int) -> float:
        """The order statistic of 0-based `rank`, as its bin's centre (0 for zeros)."""
        if rank < self.zeros:
            return 0.0
        i = int(np.searchsorted(np.cumsum(self.counts), rank - self.zeros, side="right"))
        return SKETCH_LO * 10 ** ((min(i, _NBINS - 1) + 0.5) / SKETCH_BINS_PER_DECADE)


@dataclass(slots=True)
class Moments:
    """Count, mean and sum of squared deviations of the finite values seen, merged exactly (Chan et al.)."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    @classmethod
    def of(cls, x: np.ndarray) -> Moments:
        x = x[np.isfinite(x)]
        if not len(x):
            return cls()
        mean = float(x.mean())
        return cls(len(x), mean, float(((x - mean) ** 2).sum()))

    def merge(self, o: Moments) -> None:
        if not o.n:
            return
        n = self.n + o.n
        d = o.mean - self.mean
        self.mean += d * o.n / n
        self.m2 += o.m2 + d * d * self.n * o.n / n
        self.n = n

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.n) if self.n else math.nan


@dataclass(slots=True)
class Latency:
    """One latency's sketch and moments."""

    sketch: LogSketch = field(default_factory=LogSketch)
    moments: Moments = field(default_factory=Moments)

    def add(self, x: np.ndarray) -> None:
        self.sketch.add(x)
        self.moments.merge(Moments.of(x))

    def merge(self, o: Latency) -> None:
        self.sketch.merge(o.sketch)
        self.moments.merge(o.moments)

    def summary(self) -> dict[str, float]:
        """As metrics.percentiles: p50, p90, p95, p99 and the mean."""
        if not self.moments.n:
            return {f"p{q}": math.nan for q in QUANTILES} | {"mean": math.nan}
        return {f"p{q}": self.sketch.percentile(q) for q in QUANTILES} | {"mean": self.moments.mean}


# ---------------------------------------------------------------- what streams
def unstreamable(scenario: Scenario) -> str | None:
    """Why a scenario cannot run streamed (None: it can)."""
    w, cl = scenario.workload, scenario.cluster
    if w.classes:
        return "workload.classes"
    if w.schedule is not None:
        return "workload.schedule"
    if w.arrival.process not in ("poisson", "gamma", "constant"):
        return f"arrival.process {w.arrival.process} (poisson, gamma or constant stream)"
    if w.duration_s or not w.num_requests:
        return "workload.duration_s: set workload.num_requests"
    for name in ("prompt_tokens", "output_tokens"):
        if not isinstance(getattr(w, name), (Fixed, Uniform, Lognormal, Exponential)):
            return f"workload.{name} from a trace"
    if cl.groups:
        return "cluster.groups (one group of replicas streams)"
    if cl.router != "round_robin":
        return f"cluster.router {cl.router} (round_robin streams)"
    none = Requests(np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    return unshardable(scenario, none, 2)


def workload_chunks(scenario: Scenario, rows: int = CHUNK_ROWS, lengths: bool = True):
    """The workload `generate` draws, `rows` requests at a time: (first id, arrival_s, prompt, output),
    equal to the same slices of `generate`'s (tests/simulator/test_fleet_stream.py). `lengths=False`:
    arrivals only (prompt and output None)."""
    w = scenario.workload
    arr_rng, p_rng, o_rng, _ = (
        np.random.default_rng(s) for s in np.random.SeedSequence(scenario.seed).spawn(4)
    )
    n, start, carry = int(w.num_requests), 0, 0.0
    while start < n:
        k = min(rows, n - start)
        gaps = _gaps(w, k, arr_rng)
        if start == 0:
            gaps[0] = 0.0 if w.arrival.process == "constant" else gaps[0]
            arrival = np.cumsum(gaps)
        else:  # (cumsum adds one after another: the carry first gives the whole run's sums)
            arrival = np.cumsum(np.concatenate(([carry], gaps)))[1:]
        carry = float(arrival[-1])
        prompt = output = None
        if lengths:
            prompt = _lengths(w.prompt_tokens, k, p_rng, None).astype(np.int64)
            output = _lengths(w.output_tokens, k, o_rng, None).astype(np.int64)
        yield start, arrival, prompt, output
        start += k


# ---------------------------------------------------------------- one shard
@dataclass(slots=True)
class StreamTask:
    """One shard of a streamed run: its engines [lo, hi) of n_engines, and where its records go."""

    scenario: Scenario
    index: int
    lo: int
    hi: int
    n_engines: int
    records_dir: str
    chunk_rows: int
    stop_at: int | None = None


@dataclass(slots=True)
class Partial:
    """What a shard sends back: sums, sketches and per-engine counts; no per-request record."""

    index: int
    requests: int = 0
    finished: int = 0
    dropped: dict = field(default_factory=lambda: {"queue_full": 0, "timed_out": 0})
    preemptions: int = 0
    in_tokens: int = 0  # prompt tokens of finished requests
    out_tokens: int = 0
    scheduled_prompt: int = 0  # prompt tokens of requests that were scheduled
    cached: int = 0
    goodput_ok: int = 0
    per_user_sum: float = 0.0  # Σ 1/TPOT over finished requests with a TPOT
    per_user_n: int = 0
    service_sum: float = 0.0  # Σ (finish − scheduled) over finished requests
    last_finish_s: float = -math.inf
    latency: dict = field(default_factory=dict)  # name -> Latency, over finite values (summary latency_s)
    done_latency: dict = field(default_factory=dict)  # ttft, tpot, e2e over finished requests (vLLM keys)
    stats: StepStats | None = None  # summed over the shard's engines, timeline on the run's grid
    engines: list = field(default_factory=list)  # EngineCounts, their ITL histograms and timelines dropped
    served: dict = field(default_factory=dict)  # engine index -> requests finished
    waiting: list[int] = field(default_factory=list)
    completed: list[int] = field(default_factory=list)
    points: np.ndarray | None = None  # the times the stability verdict reads (`_points`)
    counts_at: tuple = ()  # arrivals (by the stop), served arrivals and finishes by each of them
    files: list[str] = field(default_factory=list)
    digest: tuple[int, int] = (0, 0)  # of its records (records_digest)
    cpu_s: float = 0.0
    peak_rss_mib: float = 0.0


def _shard_requests(task: StreamTask, model, group):
    """The shard's requests, drawn chunk by chunk: global ids, arrival, prompt, output, submit times and
    engines (local), as one process's round robin routes them (rejected requests are never routed); and
    the run's first and last arrivals."""
    keep: dict[str, list] = {k: [] for k in ("rid", "arrival", "prompt", "output", "event", "target")}
    routed, before, first = 0, None, math.nan
    for start, arrival, prompt, output in workload_chunks(task.scenario, task.chunk_rows):
        first = float(arrival[0]) if start == 0 else first
        events = arrival_events(arrival, before)
        before = float(events[-1])
        masks = cannot_serve(group, model, prompt, output)
        served = np.flatnonzero(~np.logical_or.reduce(list(masks.values())))
        target = (routed + np.arange(len(served))) % task.n_engines  # (Router.static_targets)
        routed += len(served)
        mine = (target >= task.lo) & (target < task.hi)
        pos = served[mine]
        for k, v in (
            ("rid", pos + start),
            ("arrival", arrival[pos]),
            ("prompt", prompt[pos]),
            ("output", output[pos]),
            ("event", events[pos]),
            ("target", target[mine] - task.lo),
        ):
            keep[k].append(v)  # fmt: skip
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in keep.items()}, first, float(arrival[-1])


def run_stream_shard(task: StreamTask) -> Partial:
    """Draw this shard's requests, simulate its engines (shard.run_shard), write its records in chunks
    and return their sums and sketches."""
    cpu0 = time.process_time()
    sc = task.scenario
    model = load_model(sc.model)
    group = plan_groups(sc, model)[0]
    r, first, horizon = _shard_requests(task, model, group)
    interval = max(horizon / 2000.0, 1e-3)  # (as simulation.build)
    rids = r["rid"].astype(np.int64)
    reqs = Requests(r["arrival"].astype(float), r["prompt"].astype(np.int64), r["output"].astype(np.int64))
    del r["arrival"], r["prompt"], r["output"]
    st = ShardTask(sc, list(range(task.lo, task.hi)), reqs, rids, np.arange(len(rids)), r["event"],
                   r["target"].astype(np.int64), interval, horizon, int(sc.workload.num_requests),
                   task.stop_at)  # fmt: skip
    del r
    out = run_shard(st)
    p = Partial(task.index, requests=len(rids), waiting=out.waiting, completed=out.completed)
    f = out.fields
    rejected = np.zeros(len(rids), dtype=bool)
    for rid, why in out.dropped:
        rejected[np.searchsorted(rids, rid)] = True
        p.dropped[why] += 1
    _sums(p, sc, reqs, f, rejected)
    p.points, cut = _points(first, horizon, task.stop_at)
    a, fin = reqs.arrival_s, f["finish_s"]
    p.counts_at = _count(p.points, (a[a <= cut], a[~rejected], fin[np.isfinite(fin)]))
    _engines(p, out.engines, interval)
    p.files, p.digest = _write_records(task, rids, reqs, f, rejected)
    p.cpu_s = time.process_time() - cpu0
    p.peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return p


def _sums(p: Partial, sc: Scenario, reqs: Requests, f: dict, rejected: np.ndarray) -> None:
    """The shard's counts, token totals, SLO attainment and latency sketches."""
    from simulator.metrics import _meets

    arrival, prompt, output = reqs.arrival_s, reqs.prompt_tokens, reqs.output_tokens
    finish, first, sched = f["finish_s"], f["first_token_s"], f["scheduled_s"]
    done = np.isfinite(finish)
    p.finished = int(done.sum())
    p.preemptions = int(f["preemptions"].sum())
    p.in_tokens, p.out_tokens = int(prompt[done].sum()), int(output[done].sum())
    p.scheduled_prompt = int(prompt[np.isfinite(sched)].sum())
    p.cached = int(f["cached_tokens"].sum())
    outs = output.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(outs > 1, (finish - first) / (outs - 1), np.nan)
    ttft, e2e, queue = first - arrival, finish - arrival, sched - arrival
    p.goodput_ok = int((done & _meets(sc.slo, ttft, tpot, e2e)).sum())
    t = tpot[done]
    t = t[np.isfinite(t) & (t > 0)]
    p.per_user_sum, p.per_user_n = float((1.0 / t).sum()), len(t)
    p.service_sum = float((finish[done] - sched[done]).sum())
    p.last_finish_s = float(finish[done].max()) if done.any() else -math.inf
    for name, x in (("ttft", ttft), ("tpot", tpot), ("e2e", e2e), ("queueing", queue)):
        p.latency[name] = Latency()
        p.latency[name].add(x)
    for name, x in (("ttft", ttft), ("tpot", tpot), ("e2e", e2e)):
        p.done_latency[name] = Latency()
        p.done_latency[name].add(x[done])
    served = np.bincount(f["replica"][done].astype(np.int64)) if done.any() else np.zeros(0, dtype=np.int64)
    p.served = {int(i): int(c) for i, c in enumerate(served) if c}


def _engines(p: Partial, engines: list, interval: float) -> None:
    """Sum the shard's engines' statistics (ITL histogram, timeline on the run's grid) and keep their
    per-engine counts without them."""
    stats = StepStats(interval)
    rows = None
    for e in engines:
        s = e.stats
        stats.add(s)
        if len(s.timeline):
            vals = _on_grid(np.asarray(s.timeline, dtype=float), interval)
            if rows is None or len(vals) > len(rows):
                vals, rows = (rows, vals) if rows is not None else (None, vals)
            if vals is not None:
                rows += _pad(vals, len(rows))
        s.itl_hist = np.zeros(0, dtype=np.int64)
        s.timeline = []
    stats.timeline = rows if rows is not None else []
    p.stats = stats
    p.engines = engines


def _on_grid(arr: np.ndarray, interval: float) -> np.ndarray:
    """A timeline's values (waiting, running, kv used, batch) at 0, interval, 2·interval... to its end
    (each a step function, as cluster.merge_stats reads it; at most MAX_TIMELINE_ROWS rows: a run that
    drains 50 times longer than its arrivals loses its timeline's tail)."""
    rows = min(int(arr[-1, 0] / interval) + 2, MAX_TIMELINE_ROWS)
    grid = np.arange(rows) * interval
    i = np.searchsorted(arr[:, 0], grid, side="right") - 1
    return np.where(i[:, None] >= 0, arr[np.maximum(i, 0), 1:], 0.0)


def _pad(vals: np.ndarray, rows: int) -> np.ndarray:
    """A step function's values held at its last row out to `rows` rows."""
    if len(vals) >= rows:
        return vals[:rows]
    return np.concatenate([vals, np.repeat(vals[-1:], rows - len(vals), axis=0)])


RECORD_COLUMNS = ("request_id", "replica", "arrival_s", "prompt_tokens", "output_tokens", "scheduled_s",
                  "first_token_s", "finish_s", "preemptions", "cached_tokens", "rejected")  # fmt: skip


def _write_records(task: StreamTask, rids, reqs: Requests, f: dict, rejected: np.ndarray):
    """The shard's per-request records as numpy chunks (one .npz of RECORD_COLUMNS per CHUNK_ROWS): the
    files and the records' digest."""
    d = Path(task.records_dir)
    cols = {
        "request_id": rids,
        "replica": f["replica"].astype(np.int32),
        "arrival_s": reqs.arrival_s,
        "prompt_tokens": reqs.prompt_tokens.astype(np.int32),
        "output_tokens": reqs.output_tokens.astype(np.int32),
        "scheduled_s": f["scheduled_s"],
        "first_token_s": f["first_token_s"],
        "finish_s": f["finish_s"],
        "preemptions": f["preemptions"].astype(np.int32),
        "cached_tokens": f["cached_tokens"].astype(np.int32),
        "rejected": rejected,
    }
    return _write_chunks(d, f"shard-{task.index:04d}", cols, task.chunk_rows), _digest_part(cols)


def _write_chunks(d: Path, stem: str, cols: dict, rows: int) -> list[str]:
    names = []
    n = len(next(iter(cols.values())))
    for c, lo in enumerate(range(0, max(n, 1), rows)):
        name = f"{stem}-{c:04d}.npz"
        tmp = d / (name + ".tmp.npz")
        np.savez(tmp, **{k: v[lo : lo + rows] for k, v in cols.items()})
        tmp.rename(d / name)
        names.append(name)
    return names


def read_records(records_dir: str | Path):
    """Every record chunk of a streamed run, one dict of columns at a time."""
    plan = json.loads((Path(records_dir) / "plan.json").read_text())
    for name in plan["files"]:
        with np.load(Path(records_dir) / name) as z:
            yield {k: z[k] for k in z.files}


def records_digest(chunks) -> str:
    """A digest of per-request records that does not depend on their order (so a streamed run's chunks,
    shard after shard, and one process's table digest alike): the wrapping sum and the xor of a 64-bit
    mix of each request's id, replica, scheduled, first-token and finish times, preemptions and rejection."""
    return _digest_text([_digest_part(c) for c in chunks])


def _digest_part(c: dict) -> tuple[int, int]:
    """One chunk's (wrapping sum, xor) of its records' mixes."""
    with np.errstate(over="ignore"):
        h = c["request_id"].astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        for name in ("replica", "scheduled_s", "first_token_s", "finish_s", "preemptions", "rejected"):
            v = np.asarray(c[name])
            bits = (
                v.astype(np.float64).view(np.uint64)
                if v.dtype.kind == "f"
                else v.astype(np.int64).view(np.uint64)
            )
            h = _mix(h ^ bits)
        return int(h.sum(dtype=np.uint64)), int(np.bitwise_xor.reduce(h)) if len(h) else 0


def _digest_text(parts: list[tuple[int, int]]) -> str:
    total, xor = 0, 0
    for s, x in parts:
        total, xor = (total + s) % 2**64, xor ^ x
    return f"{total:016x}{xor:016x}"


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def table_chunks(table, rows: int = CHUNK_ROWS):
    """One process's RequestTable as record chunks (for `records_digest`)."""
    for lo in range(0, len(table), rows):
        sl = slice(lo, lo + rows)
        yield {
            "request_id": np.arange(lo, min(lo + rows, len(table)), dtype=np.int64),
            "replica": np.asarray(table.replica[sl]).astype(np.int32),
            "scheduled_s": table.scheduled_s[sl],
            "first_token_s": table.first_token_s[sl],
            "finish_s": table.finish_s[sl],
            "preemptions": np.asarray(table.preemptions[sl]).astype(np.int32),
            "rejected": table.rejected[sl],
        }


# ---------------------------------------------------------------- the coordinator
@dataclass(slots=True)
class Plan:
    """What the coordinator learns of the workload in its passes over it, chunk by chunk."""

    n: int
    arrivals: int
    first_s: float
    horizon_s: float
    interval_s: float
    reasons: dict
    rejected: int  # never routed (no replica could run them)
    arrived_by_check: list[int]


def _workload_plan(sc: Scenario, model, group, records_dir: Path, rows: int) -> tuple[Plan, list[str]]:
    """Two passes over the workload: its last arrival (the horizon), then the rejected requests (their
    records written here), their reasons and the arrivals before each early-stop check."""
    first, horizon, n = math.nan, 0.0, 0
    for start, arrival, _, _ in workload_chunks(sc, rows, lengths=False):
        first = float(arrival[0]) if start == 0 else first
        horizon, n = float(arrival[-1]), start + len(arrival)
    interval = max(horizon / 2000.0, 1e-3)  # (as simulation.build)
    from simulator.shard import _check_time

    checks = np.array([_check_time(horizon, k) for k in range(1, CHECKS + 1)])
    arrived = np.zeros(CHECKS, dtype=np.int64)
    reasons: dict[str, int] = {}
    rej: dict[str, list] = {k: [] for k in ("request_id", "arrival_s", "prompt_tokens", "output_tokens")}
    before = None
    for start, arrival, prompt, output in workload_chunks(sc, rows):
        events = arrival_events(arrival, before)
        before = float(events[-1])
        arrived += np.searchsorted(events, checks, side="left")
        masks = cannot_serve(group, model, prompt, output)
        rejected = np.logical_or.reduce(list(masks.values()))
        for k, v in first_reasons(masks, rejected).items():
            reasons[k] = reasons.get(k, 0) + v
        pos = np.flatnonzero(rejected)
        for k, v in (
            ("request_id", pos + start),
            ("arrival_s", arrival[pos]),
            ("prompt_tokens", prompt[pos]),
            ("output_tokens", output[pos]),
        ):
            rej[k].append(v)  # fmt: skip
    cols = {k: np.concatenate(v) for k, v in rej.items()}
    m = len(cols["request_id"])
    nan = np.full(m, np.nan)
    cols |= {"replica": np.full(m, -1, dtype=np.int32), "scheduled_s": nan, "first_token_s": nan,
             "finish_s": nan, "preemptions": np.zeros(m, dtype=np.int32),
             "cached_tokens": np.zeros(m, dtype=np.int32), "rejected": np.ones(m, dtype=bool)}  # fmt: skip
    files = _write_chunks(records_dir, "rejected", cols, rows) if m else []
    plan = Plan(n, n, first, horizon, interval, reasons, m, arrived.tolist())
    return plan, files


def _fingerprint(sc: Scenario, shards: int, rows: int, stop_at: int | None) -> str:
    text = json.dumps([sc.model_dump(mode="json"), shards, rows, stop_at], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Incomplete(Exception):
    """A streamed run stopped at its deadline with shards left: run it again with resume to finish."""


def simulate_streamed(
    scenario: Scenario,
    records_dir: str | Path,
    workers: int | None = None,
    shards: int | None = None,
    backend: str = "processes",
    ray_address: str | None = None,
    resume: bool = False,
    deadline_s: float | None = None,
    chunk_rows: int = CHUNK_ROWS,
    log=None,
    vllm_percentiles: tuple[float, ...] | None = None,
):
    """Forecast a fleet scenario streamed (see the module's docstring): its records go to `records_dir`
    (plan.json lists the chunk files), the Forecast holds the summary and merged statistics only. Raises
    ConfigError for a scenario that cannot stream, Incomplete where `deadline_s` (seconds from the start)
    came before every shard was done. `vllm_percentiles`: those of the vLLM-named keys (`run --percentiles`)."""
    from simulator.simulation import Forecast

    wall0 = time.perf_counter()
    why = unstreamable(scenario)
    if why:
        raise ConfigError(f"a streamed fleet run needs a round-robin fleet of a drawn workload; not: {why}")
    import os

    workers = workers or os.cpu_count() or 1
    model = load_model(scenario.model)
    groups = plan_groups(scenario, model)
    g = groups[0]
    if not g.mem.fits:
        raise ConfigError(f"the model does not fit: {g.mem.explain()}")
    n_engines = g.count * len(g.engines)
    shards = min(shards or 2 * workers, n_engines)
    d = Path(records_dir)
    d.mkdir(parents=True, exist_ok=True)
    say = log or (lambda s: None)
    plan_path = d / "plan.json"
    state = json.loads(plan_path.read_text()) if resume and plan_path.exists() else None
    stop_at = state["stop_at"] if state else None
    fp = _fingerprint(scenario, shards, chunk_rows, stop_at)
    if state is None or state["fingerprint"] != fp:
        for old in [*d.glob("*.npz"), *d.glob("shard-*.pkl")]:
            old.unlink()
        state = {"fingerprint": fp, "stop_at": None, "plan": None, "rejected_files": [], "files": []}
        plan_path.write_text(json.dumps(state))
    say(
        f"{scenario.workload.num_requests:,} requests, {n_engines} engines in {shards} shards on {workers} workers"
    )
    planning = None
    if state["plan"] is None:  # the coordinator's passes over the workload, while the shards run
        planning = ThreadPoolExecutor(1).submit(_workload_plan, scenario, model, g, d, chunk_rows)
    bounds = np.array_split(np.arange(n_engines), shards)
    while True:
        tasks = [StreamTask(scenario, k, int(b[0]), int(b[-1]) + 1, n_engines, str(d), chunk_rows,
                            state["stop_at"]) for k, b in enumerate(bounds)]  # fmt: skip
        try:
            partials = _run_shards(tasks, d, backend, workers, ray_address, deadline_s, wall0, say)
        finally:
            if planning is not None:
                plan, state["rejected_files"] = planning.result()
                state["plan"], planning = asdict(plan), None
                plan_path.write_text(json.dumps(state))
        plan = Plan(**state["plan"])
        stop_at = _early_stop(partials, plan, n_engines, g)
        if stop_at is None or state["stop_at"] is not None:
            break
        say(f"overloaded: every shard runs again up to check {stop_at}")
        state["stop_at"] = stop_at  # every shard runs again up to the check that stopped one process
        state["fingerprint"] = _fingerprint(scenario, shards, chunk_rows, stop_at)
        for old in d.glob("shard-*"):
            old.unlink()
        say(f"the workload's plan: {plan.n:,} requests, {plan.rejected:,} no replica can serve")
        plan_path.write_text(json.dumps(state))
    state["files"] = state["rejected_files"] + [f for p in partials for f in p.files]
    plan_path.write_text(json.dumps(state))
    summary, stats = _summarize(scenario, model, groups, plan, partials, d, state["stop_at"], wall0,
                                vllm_percentiles)  # fmt: skip
    return Forecast(
        scenario, model, g.profile, g.mem, None, None, stats, summary, time.perf_counter() - wall0
    )


def _run_shards(tasks, d: Path, backend, workers, ray_address, deadline_s, wall0, say) -> list[Partial]:
    """Every shard's partial: those on disk from an earlier call, the others run now (each saved as it
    comes). Raises Incomplete at the deadline."""
    done: dict[int, Partial] = {}
    for t in tasks:
        path = d / f"shard-{t.index:04d}.pkl"
        if path.exists():
            done[t.index] = pickle.loads(path.read_bytes())
    todo = [t for t in tasks if t.index not in done]
    if done:
        say(f"resuming: {len(done)} of {len(tasks)} shards on disk, {len(todo)} to run")

    def keep(p: Partial) -> None:
        tmp = d / f"shard-{p.index:04d}.pkl.tmp"
        tmp.write_bytes(pickle.dumps(p))
        tmp.rename(d / f"shard-{p.index:04d}.pkl")
        done[p.index] = p
        say(f"shard {p.index} done ({len(done)}/{len(tasks)}): {p.requests:,} requests, {p.cpu_s:.1f} CPU-s, "
            f"{time.perf_counter() - wall0:.0f} s in")  # fmt: skip

    if backend == "serial":
        for t in todo:
            keep(run_stream_shard(t))
    elif backend == "processes":
        _pool(todo, workers, deadline_s, wall0, keep, len(tasks))
    elif backend == "ray":
        from simulator.search import connect_ray

        ray = connect_ray(ray_address)
        remote = ray.remote(run_stream_shard)
        pending = [remote.remote(t) for t in todo]
        while pending:
            left = None if deadline_s is None else max(deadline_s - (time.perf_counter() - wall0), 0.0)
            ready, pending = ray.wait(pending, num_returns=1, timeout=left)
            if not ready:
                for ref in pending:
                    ray.cancel(ref, force=True)
                raise Incomplete(f"{len(done)} of {len(tasks)} shards done at the deadline")
            keep(ray.get(ready[0]))
    else:
        raise ValueError(f"backend {backend!r}: serial, processes or ray")
    return [done[t.index] for t in tasks]


def _pool(todo, workers, deadline_s, wall0, keep, total) -> None:
    """Run shards on `workers` processes, a new one as each finishes; near the deadline none starts that
    would not finish in time (taking as long as the longest so far), and at it the workers stop."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["simulator.fleet_stream"])
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    queue, running, longest, finished = list(todo), {}, 0.0, 0
    try:
        while queue or running:
            now = time.perf_counter() - wall0
            while queue and len(running) < workers and (deadline_s is None or now + longest < deadline_s):
                running[pool.submit(run_stream_shard, queue.pop(0))] = time.perf_counter()
            if not running:
                break
            left = None if deadline_s is None else max(deadline_s - now, 0.0)
            ready, _ = wait(running, timeout=left, return_when=FIRST_COMPLETED)
            if not ready:
                break
            for fut in ready:
                longest = max(longest, time.perf_counter() - running.pop(fut))
                keep(fut.result())
                finished += 1
    except BaseException:
        _stop(pool)
        raise
    if running or queue:
        _stop(pool)
        raise Incomplete(f"{total - len(queue) - len(running)} of {total} shards done ({finished} in this call) "
                         "at the deadline; run again with resume to finish")  # fmt: skip
    pool.shutdown()


def _stop(pool: ProcessPoolExecutor) -> None:
    """Stop the pool's workers now (ours: the shards they ran start again on resume)."""
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        proc.terminate()
    pool.shutdown(wait=False, cancel_futures=True)


def _early_stop(partials: list[Partial], plan: Plan, n_engines: int, group) -> int | None:
    """The check at which one process would have stopped the run as overloaded (shard._early_stop)."""
    if not partials[0].waiting:
        return None
    hold = sum(e.max_seqs for p in partials for e in p.engines)
    check = Backlog(hold, plan.arrivals)
    for k in range(len(partials[0].waiting)):
        waiting = sum(p.waiting[k] for p in partials)
        if check.overloaded(waiting, plan.arrived_by_check[k], sum(p.completed[k] for p in partials)):
            return k + 1
    return None


def _merge_stats(partials: list[Partial], interval: float) -> StepStats:
    m = StepStats(interval)
    rows = max((len(p.stats.timeline) for p in partials), default=0)
    total = np.zeros((rows, 4))
    for p in partials:
        s = p.stats
        m.add(s)
        if len(s.timeline):
            total += _pad(np.asarray(s.timeline), rows)
    grid = np.arange(rows) * interval
    m.timeline = [(float(t), *map(int, row)) for t, row in zip(grid, total, strict=True)]
    return m


def _points(first_s: float, horizon_s: float, stop_at: int | None) -> tuple[np.ndarray, float]:
    """The times stability.judge reads counts at (by its own arithmetic), sorted, and the stop (inf: none)."""
    from simulator.shard import _check_time

    cut = math.inf if stop_at is None else _check_time(horizon_s, stop_at)
    t0, t1 = first_s, horizon_s if stop_at is None else cut
    warm = t0 + WARMUP_FRACTION * (t1 - t0)
    return np.unique(np.concatenate([[warm, t1, math.inf], np.linspace(warm, t1, SAMPLES)])), cut


def _count(points: np.ndarray, values: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """For each array of values, how many are at or before each of the sorted points."""
    # v <= points[j] from the first j at or above v on
    return tuple(np.cumsum(np.bincount(np.searchsorted(points, v, "left"), minlength=len(points) + 1))[:-1]
                 for v in values)  # fmt: skip


def _stability(plan: Plan, d: Path, files: list[str], partials, stop_at, dropped: int, hold: int):
    """The verdict of stability.assess from counts over time the shards took of their records (and those
    of the requests no replica could serve, read here); from the record chunks, one at a time, should it
    ask for others."""
    done = sum(p.finished for p in partials)
    service = sum(p.service_sum for p in partials) / done if done else math.nan
    last_finish = max((p.last_finish_s for p in partials), default=-math.inf)
    points, cut = _points(plan.first_s, plan.horizon_s, stop_at)
    rejected = [f for f in files if f.startswith("rejected")]
    table = _counts_at(points, d, rejected, cut)
    for p in partials:
        if not np.array_equal(p.points, points):
            table = _counts_at(points, d, files, cut)
            break
        table = tuple(x + y for x, y in zip(table, p.counts_at, strict=True))
    arrived = int(table[0][-1])  # (at inf: every arrival by the stop)

    def upto(t: np.ndarray):
        i = np.minimum(np.searchsorted(points, t), len(points) - 1)
        if not np.array_equal(points[i], t):
            return _counts_at(np.asarray(t, dtype=float), d, files, cut)  # (not asked for above)
        return tuple(x[i] for x in table)

    c = Counts(plan.arrivals, arrived, plan.first_s, plan.horizon_s, service, done,
               last_finish if done else math.nan, upto)  # fmt: skip
    stopped = None
    if stop_at is not None:  # (as one process: submitted by the check, and waiting at it)
        stopped = Stopped(
            cut, plan.arrived_by_check[stop_at - 1], sum(p.waiting[stop_at - 1] for p in partials)
        )
    return judge(c, dropped, hold, stopped)


def _counts_at(points: np.ndarray, d: Path, files: list[str], cut: float):
    """(arrivals by the cut, served arrivals, finishes) at or before each of the sorted `points`, read from
    the record chunks `files`."""
    out = tuple(np.zeros(len(points), dtype=np.int64) for _ in range(3))
    for c in _chunks(d, files):
        a, fin = c["arrival_s"], c["finish_s"]
        got = _count(points, (a[a <= cut], a[~c["rejected"]], fin[np.isfinite(fin)]))
        out = tuple(x + y for x, y in zip(out, got, strict=True))
    return out


def _rejected_digest(d: Path, files: list[str]) -> tuple[int, int]:
    """The digest part of the records of requests no replica could serve (the coordinator wrote them)."""
    total, xor = 0, 0
    for name in files:
        if name.startswith("rejected"):
            with np.load(d / name) as z:
                s_, x = _digest_part({k: z[k] for k in z.files})
            total, xor = (total + s_) % 2**64, xor ^ x
    return total, xor


def _chunks(d: Path, files: list[str]):
    for name in files:
        with np.load(d / name) as z:
            yield {k: z[k] for k in ("arrival_s", "finish_s", "rejected")}


def _summarize(sc: Scenario, model, groups, plan: Plan, partials: list[Partial], d: Path, stop_at, wall0,
               qs: tuple[float, ...] | None = None):  # fmt: skip
    """summary.json's sections from the shards' partials, as metrics.summarize and
    simulation.summarize_run write them (percentiles sketched: summary["percentiles"])."""
    from simulator.engines import engine_profile, named
    from simulator.expected_error import expected_error, forecast_settings
    from simulator.metrics import _cost
    from simulator.simulation import _cluster

    g = groups[0]
    gpus, usd_per_hour, n_engines = fleet(groups)
    setup = Setup(sc, model, g.profile, g.mem, Fleet(gpus, usd_per_hour, n_engines))
    out = summarize(setup)
    stats = _merge_stats(partials, plan.interval_s)
    engines = [e for p in partials for e in p.engines]
    for e in engines:
        e.group = g
    counts = SchedulerCounts.of(engines)
    lat, dlat, tot = _merged(partials)
    n, done = plan.n, tot.finished
    dropped = sum(tot.dropped.values())
    rejected = plan.rejected + dropped
    last_finish = max((p.last_finish_s for p in partials), default=-math.inf)
    first = plan.first_s
    makespan = max((last_finish if done else first) - first, 1e-12)
    price = usd_per_hour / gpus
    cost_usd = price * gpus * makespan / 3600.0
    busy = stats.busy_s
    share_in = stats.prefill_s / busy if busy else 0.0
    slo = sc.slo
    out |= _traffic_sections(n, rejected, makespan, gpus, lat, stats, tot, slo)
    out |= {
        "utilisation": {
            "busy_fraction": min(busy / makespan / n_engines, 1.0),
            "steps": stats.steps,
            "mean_batch_seqs": stats.batch_seq_steps / max(stats.steps, 1),
            "recomputed_prefill_tokens": int(max(stats.prefill_tokens - tot.in_tokens, 0)),
        },
        "kv_cache": {
            "blocks": g.mem.num_blocks,
            "block_size": g.mem.block_size,
            "mean_occupancy": stats.kv_block_seconds / max(busy, 1e-12) / max(g.mem.num_blocks, 1),
            "peak_occupancy": counts.peak_blocks_used / max(g.mem.num_blocks, 1),
            "blocks_in_use_at_end": counts.blocks_in_use,
        },
        "cost": _cost(cost_usd, share_in, tot.in_tokens, tot.out_tokens),
    }
    out |= _cache_sections(sc, tot, counts)
    out |= _vllm_keys(dlat, stats, tot, makespan, slo, qs)
    batch = out["utilisation"]["mean_batch_seqs"]
    out["expected_error"] = expected_error(engine_profile(sc), named(sc), g.profile, batch, model=sc.model,
                                           overlap=sc.serving.async_scheduling,
                                           settings=forecast_settings(sc))  # fmt: skip
    hold = sum(e.max_seqs for e in engines)
    files = json.loads((d / "plan.json").read_text())["files"]
    out["rejected_reasons"] = plan.reasons | tot.dropped
    out["stability"] = _stability(plan, d, files, partials, stop_at, dropped, hold).as_dict()
    out["kv_cache"] |= kv_summary(engines)
    replica_of = [e.index // len(g.engines) for e in engines]
    dep = SimpleNamespace(scenario=sc, groups=groups, replica_of=replica_of, router=SimpleNamespace(held=0))
    out["cluster"] = _cluster(dep)
    served = np.zeros(n_engines, dtype=np.int64)
    for p in partials:
        for i, c in p.served.items():
            served[i] += c
    out["replicas"] = replica_summary(groups, engines, replica_of, None, makespan, served)
    out["simulation"] = _simulation_section(partials, n, stats, wall0, d, files)
    out["percentiles"] = dict(PERCENTILES_STATED)
    return out, stats


def _traffic_sections(
    n: int, rejected: int, makespan: float, gpus: int, lat: dict, stats, tot: Partial, slo
) -> dict:
    """summary["requests"], ["latency_s"], ["throughput"] and ["goodput"] from the merged shards."""
    from simulator.metrics import itl_percentiles

    done = tot.finished
    return {
        "requests": {
            "total": n,
            "finished": done,
            "rejected": rejected,
            "unfinished": n - done - rejected,
            "preemptions": tot.preemptions,
        },  # fmt: skip
        "latency_s": {k: lat[k].summary() for k in ("ttft", "tpot")}
        | {"itl": itl_percentiles(stats.itl_hist, QUANTILES)}
        | {k: lat[k].summary() for k in ("e2e", "queueing")},
        "throughput": {
            "duration_s": makespan,
            "requests_per_s": done / makespan,
            "input_tokens_per_s": tot.in_tokens / makespan,
            "output_tokens_per_s": tot.out_tokens / makespan,
            "output_tokens_per_s_per_gpu": tot.out_tokens / makespan / gpus,
            "per_user_output_tokens_per_s": tot.per_user_sum / tot.per_user_n if tot.per_user_n else math.nan,
        },
        "goodput": {
            "slo": slo.model_dump(exclude_none=True),
            "requests_per_s": tot.goodput_ok / makespan,
            "fraction": float(tot.goodput_ok / max(done, 1)),
        },
    }


def _merged(partials: list[Partial]) -> tuple[dict, dict, Partial]:
    """The shards' latency sketches (all requests; finished ones) and their counts and sums, merged."""
    lat = {k: Latency() for k in ("ttft", "tpot", "e2e", "queueing")}
    dlat = {k: Latency() for k in ("ttft", "tpot", "e2e")}
    tot = Partial(-1)
    for p in partials:
        for k in lat:
            lat[k].merge(p.latency[k])
        for k in dlat:
            dlat[k].merge(p.done_latency[k])
        for k in ("finished", "preemptions", "in_tokens", "out_tokens", "scheduled_prompt", "cached",
                  "goodput_ok", "per_user_sum", "per_user_n"):  # fmt: skip
            setattr(tot, k, getattr(tot, k) + getattr(p, k))
        for k, v in p.dropped.items():
            tot.dropped[k] += v
    return lat, dlat, tot


def _cache_sections(sc: Scenario, tot: Partial, counts: SchedulerCounts) -> dict:
    """summary["prefix_cache"] (and ["speculative"] when on), from the merged counts."""
    out = {
        "prefix_cache": {
            "enabled": sc.serving.caching.prefix_caching,
            "hit_rate": tot.cached / tot.scheduled_prompt if tot.scheduled_prompt else 0.0,
            "prefill_tokens_saved": tot.cached,
            "prefill_tokens_saved_incl_recompute": int(counts.cached_tokens),
            "evicted_blocks": int(counts.evicted_blocks),
        }
    }
    if sc.serving.speculative is not None:
        r_, t_ = counts.spec_rounds, counts.spec_tokens
        out["speculative"] = {
            "rounds": int(r_),
            "tokens": int(t_),
            "tokens_per_round": t_ / r_ if r_ else math.nan,
        }
    return out


def _vllm_keys(dlat: dict, stats, tot: Partial, makespan: float, slo, qs: tuple[float, ...] | None) -> dict:
    """vLLM bench serve's keys, from the finished requests' sketches (as metrics.summarize writes them)."""
    from simulator.measured import p_word, throughput_metrics
    from simulator.metrics import VLLM_PERCENTILES, _itl_keys

    vllm = throughput_metrics(tot.finished, tot.in_tokens, tot.out_tokens, makespan)
    vllm["request_goodput"] = tot.goodput_ok / makespan if slo.model_dump(exclude_none=True) else None
    for key, name in (("ttft", "ttft"), ("tpot", "tpot"), ("e2e", "e2el")):
        lt = dlat[key]
        if not lt.moments.n:
            continue
        vllm[f"mean_{name}_ms"] = lt.moments.mean * 1000.0
        vllm[f"median_{name}_ms"] = lt.sketch.percentile(50) * 1000.0
        vllm[f"std_{name}_ms"] = lt.moments.std * 1000.0
        for q in qs or VLLM_PERCENTILES:
            vllm[f"p{p_word(q)}_{name}_ms"] = lt.sketch.percentile(q) * 1000.0
        if key == "tpot":
            vllm |= _itl_keys(stats.itl_hist, qs or VLLM_PERCENTILES)
    return vllm


def _simulation_section(partials: list[Partial], n: int, stats, wall0: float, d: Path, files) -> dict:
    """summary["simulation"]: the run's wall time and rates, its shards, and where the records are."""
    wall = time.perf_counter() - wall0
    return {
        "wall_s": wall,
        "requests_per_wall_s": n / wall,
        "steps_per_wall_s": stats.steps / wall,
        "shards": len(partials),
        "shard_cpu_s": [p.cpu_s for p in partials],
        "shard_peak_rss_mib": max(p.peak_rss_mib for p in partials),
        "streamed": True,
        "records": str(d),
        "records_digest": _digest_text([p.digest for p in partials] + [_rejected_digest(d, files)]),
    }


PERCENTILES_STATED = {  # summary["percentiles"] of a streamed run: which are exact, which sketched, the bound
    "exact": ["itl (the same histogram as one process: bins 0.46% wide)", "every mean"],
    "sketched": ["ttft", "tpot", "e2e", "queueing", "median_/pNN_ ttft, tpot, e2el _ms"],
    "relative_error_bound": SKETCH_RELATIVE_ERROR,
    "sketch": f"log-spaced bins, {SKETCH_BINS_PER_DECADE} a decade from {SKETCH_LO:g} s to "
    f"{SKETCH_LO * 10**SKETCH_DECADES:g} s, merged over shards; zeros exact",
}
