"""Is a run stable? The verdict of a finished run, and the cheap check that stops an overloaded one early.

A queue that can keep up holds a bounded number of requests in the system; one that cannot grows
without bound, and then its latency percentiles only measure how long the run was. The verdict looks
at the number in the system N(t) = arrivals − completions over the arrival window (after a warm-up):
a drift of N(t) that is a real fraction of the arrival rate and larger than N's own fluctuation means
overload, and so do admission-control drops. A window only a few service times long cannot tell a
filling queue from a growing one: there only growth beyond what the engines' running batches hold is
overload, and anything less is inconclusive.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

Verdict = Literal["stable", "overloaded", "inconclusive"]

WARMUP_FRACTION = 0.2  # of the arrival window, skipped: the queue fills from empty there
MIN_SERVICE_TIMES = 10  # an arrival window shorter than this many service times is inconclusive
MIN_ARRIVALS = 20  # fewer arrivals than this after the warm-up cannot show a trend: inconclusive
DRIFT_MIN = 0.01  # N(t) growing by 1% of the arrival rate is overload (when above its noise)
SHORT_DRIFT_MIN = 0.05  # the same in a window too short to be sure the queue had filled
DROP_MIN = 0.01  # admission control dropping 1% of arrivals is overload
SAMPLES = 256  # points of N(t) the drift is fitted to

# Early stop (during the run): the waiting backlog summed over engines is checked CHECKS times over
# the arrival window; the run stops when, over the last GROWTH_CHECKS checks, it grew at every check
# by at least GROWTH_MIN of the arrivals meanwhile (a load of 1/(1 − 0.25) = 1.33× capacity or more)
# and it is above both twice what the engines run at once (+ BACKLOG_MIN) and STOP_FRACTION of the run,
# and the engines have completed at least as many requests as they run at once.
CHECKS = 100
GROWTH_CHECKS = 10
GROWTH_MIN = 0.25
BACKLOG_MIN = 100
STOP_FRACTION = 0.1


@dataclass(slots=True)
class Stopped:
    """Where an overloaded run was cut short."""

    at_s: float
    arrived: int
    waiting: int


@dataclass(slots=True)
class Stability:
    """The verdict of one run, with the rates and the reason in one line."""

    verdict: Verdict
    reason: str
    offered_per_s: float  # arrivals per second over the window after warm-up
    sustained_per_s: float  # completions per second over the same window
    drift: float  # slope of N(t) over the window, as a fraction of the offered rate
    window_s: float  # the arrival window judged (after warm-up)
    service_s: float  # mean time from first scheduled to finish of finished requests
    stopped_at_s: float | None = None  # the run was stopped early (overloaded) at this simulated time
    arrived: int = 0
    total: int = 0

    @property
    def meaningful(self) -> bool:
        """Latency percentiles describe steady state only when the run was stable."""
        return self.verdict == "stable"

    def as_dict(self) -> dict:
        return asdict(self) | {"latency_meaningful": self.meaningful}


class Backlog:
    """The run-time check: is the waiting backlog so large and growing that the run is surely overloaded?"""

    def __init__(self, hold: int, total: int) -> None:
        self.hold, self.total = hold, total  # sequences the engines run at once; requests in the run
        self.history: list[tuple[int, int]] = []  # (waiting, arrived) at each check

    def overloaded(self, waiting: int, arrived: int, completed: int) -> bool:
        """At a check: `waiting` requests queued, `arrived` so far, `completed` so far (the run stops only
        once the engines turned over a full batch, so that its sustained rate and service time are known)."""
        h = self.history
        h.append((waiting, arrived))
        if len(h) <= GROWTH_CHECKS or completed < self.hold:
            return False
        if waiting < max(2 * self.hold + BACKLOG_MIN, STOP_FRACTION * self.total):
            return False
        last = h[-GROWTH_CHECKS - 1 :]
        return all(
            w1 - w0 >= GROWTH_MIN * (a1 - a0) and a1 > a0
            for (w0, a0), (w1, a1) in zip(last, last[1:], strict=False)
        )


@dataclass(slots=True)
class Counts:
    """What the verdict reads of a run's records: totals, and how many requests had arrived, been served
    (arrived and not rejected) and finished by given times. `assess` builds it from whole arrays; a
    streamed fleet run (simulator/fleet_stream.py) from its record chunks, one at a time."""

    total: int  # requests that arrived on their own
    arrived: int  # of them, those that arrived by the stop (all without one)
    first_s: float  # the first arrival
    last_s: float  # the last arrival by the stop
    service_s: float  # mean time from first scheduled to finish of finished requests
    finished: int
    last_finish_s: float
    # (times) -> (arrivals, served arrivals, finishes) at or before each time
    upto: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


def _sustained_rate(c: Counts, warm: float, t1: float, drained: bool) -> float:
    """Completions per second over the window [warm, t1]."""
    window = t1 - warm
    _, _, fin = c.upto(np.array([warm, t1]))
    completed = int(fin[1] - fin[0])
    sustained = completed / window if window > 0 else math.nan
    if drained and c.finished and 0 < window < c.service_s and c.last_finish_s > warm:
        # no request both starts and finishes in a window shorter than its service time (500 req/s into
        # 5.6 s batches read as 5 req/s sustained): count the completions until the queue has drained
        sustained = int(c.finished - fin[0]) / (c.last_finish_s - warm)
    return sustained


def _growth(c: Counts, warm: float, t1: float) -> tuple[float, float]:
    """Growth of the number in the system over [warm, t1] (least squares) and its fluctuation about it."""
    window = t1 - warm
    t = np.linspace(warm, t1, SAMPLES)
    _, served, fin = c.upto(t)
    n = served - fin
    # fitted on the window scaled to [0, 1]: times of 1e-300 s or 1e300 s would overflow the fit's scaling
    x = (t - warm) / window if window > 0 else t - warm
    growth, icept = np.polyfit(x, n, 1) if window > 0 else (0.0, float(n[0]))
    return growth, float(np.std(n - (growth * x + icept)))


def _grows(long_enough: bool, drift: float, growth: float, noise: float, arrivals: int, hold: int) -> bool:
    """Whether the number in the system grew as only an overloaded queue does."""
    # In a long window the queue has filled before the warm-up ends: growth beyond N's own fluctuation
    # is overload. In a short one it may still be filling: only growth beyond what the engines' running
    # batches hold, at a clear drift, is.
    # (and beyond the arrivals' own Poisson noise, √ of those in the window: a short run's arrival rate
    # drifts too; 4 H100s at a sixth of their capacity 'grew by 14' with 327 arrivals)
    return bool(
        (long_enough and drift >= DRIFT_MIN and growth > max(3 * noise, math.sqrt(arrivals)))
        or (drift >= SHORT_DRIFT_MIN and growth > hold + 3 * noise)
    )


def assess(
    arrival_s: np.ndarray,
    scheduled_s: np.ndarray,
    finish_s: np.ndarray,
    rejected: np.ndarray,
    dropped: int,
    hold: int,
    stopped: Stopped | None = None,
) -> Stability:
    """The stability verdict of a run from its per-request records.

    `dropped`: requests refused or dropped by admission control (queue full, timed out); `hold`:
    sequences the engines run at once (their max_num_seqs summed), what a stable system may hold
    beyond a queue.
    """
    came = np.isfinite(arrival_s)
    total = int(came.sum())
    arr = np.sort(arrival_s[came])
    done = np.isfinite(finish_s)
    service_s = float((finish_s[done] - scheduled_s[done]).mean()) if done.any() else math.nan
    if stopped is not None:
        arr = arr[arr <= stopped.at_s]
    served = np.sort(arrival_s[came & ~rejected])
    fin = np.sort(finish_s[done])

    def upto(t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (np.searchsorted(arr, t, "right"), np.searchsorted(served, t, "right"),
                np.searchsorted(fin, t, "right"))  # fmt: skip

    first, last = (float(arr[0]), float(arr[-1])) if len(arr) else (math.nan, math.nan)
    last_finish = float(fin[-1]) if len(fin) else math.nan
    return judge(Counts(total, len(arr), first, last, service_s, len(fin), last_finish, upto), dropped, hold,
                 stopped)  # fmt: skip


def judge(c: Counts, dropped: int, hold: int, stopped: Stopped | None = None) -> Stability:
    """The verdict from a run's counts (`assess`, or a streamed run's)."""
    total, service_s = c.total, c.service_s
    if c.arrived < 2:
        return Stability("inconclusive", "fewer than 2 arrivals", math.nan, math.nan, math.nan, 0.0,
                         service_s, None, c.arrived, total)  # fmt: skip
    t0, t1 = c.first_s, c.last_s if stopped is None else stopped.at_s
    span = t1 - t0
    warm = t0 + WARMUP_FRACTION * span
    window = t1 - warm
    arr_at, _, _ = c.upto(np.array([warm, t1]))
    in_window = int(arr_at[1] - arr_at[0])
    offered = in_window / window if window > 0 else math.nan
    sustained = _sustained_rate(c, warm, t1, drained=stopped is None)
    growth, noise = _growth(c, warm, t1)
    slope = growth / window if window > 0 else 0.0
    drift = slope / offered if offered > 0 else math.nan
    served_total = int(c.upto(np.array([math.inf]))[1][0])

    def verdict(v: Verdict, reason: str) -> Stability:
        return Stability(v, reason, offered, sustained, float(drift), window, service_s,
                         None if stopped is None else stopped.at_s, c.arrived, total)  # fmt: skip

    rates = f"offered {offered:.3g} req/s, sustained {sustained:.3g} req/s"
    if not c.finished and stopped is None and dropped < DROP_MIN * total:
        return verdict(
            "inconclusive", f"no request finished ({total - served_total:,} of {total:,} rejected)"
        )
    if stopped is not None:
        return verdict(
            "overloaded",
            f"stopped at t={stopped.at_s:.4g} s after {c.arrived:,} of {total:,} arrivals: {stopped.waiting:,} "
            f"requests waiting and growing ({rates})",
        )
    if dropped >= DROP_MIN * total:
        return verdict(
            "overloaded",
            f"admission control dropped {dropped:,} of {total:,} requests ({dropped / total:.1%}; {rates})",
        )
    long_enough = span >= MIN_SERVICE_TIMES * service_s
    if _grows(long_enough, drift, growth, noise, in_window, hold):
        return verdict(
            "overloaded",
            f"requests in the system grew by {growth:,.0f} over {window:.4g} s ({drift:.0%} of the arrival "
            f"rate; {rates})",
        )
    if not long_enough:
        need = math.ceil(MIN_SERVICE_TIMES * service_s / span * total) if span > 0 else total
        # (a link of 1e-300 GB/s needs a count of 300 digits: no run can tell)
        tell = f"run about {need:,} requests to tell" if need < 10**15 else "no run of any length can tell"
        return verdict(
            "inconclusive",
            f"the arrival window {span:.3g} s is shorter than {MIN_SERVICE_TIMES}× the service time "
            f"{service_s:.3g} s; {tell} ({rates})",
        )
    if in_window < MIN_ARRIVALS:  # 2-4 requests far apart showed no growth, but could not have
        need = math.ceil(MIN_ARRIVALS / max(in_window, 1) * total)
        return verdict(
            "inconclusive",
            f"only {in_window:,} arrivals after the warm-up, too few to show a trend; run about {need:,} "
            f"requests to tell ({rates})",
        )
    return verdict("stable", f"no growing queue over {window:.4g} s ({rates})")
