"""A rate that changes over a day: piecewise-constant steps, a daily cosine, or hourly arrival counts.

Arrivals under a schedule come by time rescaling (Brown et al., "The time-rescaling theorem", Neural
Computation 2002): the workload's arrival process (Poisson, gamma, constant) is drawn at rate 1 in
"operational time" τ, and each τ is mapped to the clock time t with Λ(t) = τ, Λ being the integral of the
rate. Poisson stays Poisson with rate λ(t); gamma keeps its burstiness (its cv, in operational time).
Traffic classes are drawn per arrival afterwards, so they keep their shares at every hour; a class with a
schedule of its own draws its arrivals apart (its own seeded stream) and they are merged with the rest
by time (`offered` sums the parts for the day's tables).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from simulator.scenario import Daily, Hourly, RateSchedule, Steps, Workload

DAY_S = 86400.0
HOUR_S = 3600.0
_GRID_S = 60.0  # knots of the cosine's Λ, refined by Newton steps below


def rate_at(s: RateSchedule, t: np.ndarray) -> np.ndarray:
    """Mean arrival rate (requests/s) at clock times t."""
    t = np.asarray(t, dtype=float)
    if isinstance(s, Daily):
        amp = s.peak_rate_per_s - s.trough_rate_per_s
        return s.trough_rate_per_s + amp * (1 + np.cos(2 * math.pi * (t / HOUR_S - s.peak_hour) / 24)) / 2
    if isinstance(s, Hourly):
        counts = np.asarray(s.requests_per_hour) / HOUR_S
        return counts[(t // HOUR_S).astype(np.int64) % len(counts)]
    starts = np.array([x.start_s for x in s.steps])
    rates = np.array([x.rate_per_s for x in s.steps])
    return rates[np.searchsorted(starts, t, side="right") - 1]


def cumulative(s: RateSchedule, t: np.ndarray) -> np.ndarray:
    """Λ(t): the expected arrivals from 0 to t."""
    t = np.asarray(t, dtype=float)
    if isinstance(s, Daily):
        amp = s.peak_rate_per_s - s.trough_rate_per_s
        mean = s.trough_rate_per_s + amp / 2
        w = 2 * math.pi / DAY_S
        phase = 2 * math.pi * s.peak_hour / 24
        return mean * t + amp / 2 / w * (np.sin(w * t - phase) - math.sin(-phase))
    knots_t, knots_l, period = _knots(s)
    if period is not None:
        cycles = np.floor(t / period)
        return cycles * knots_l[-1] + np.interp(t - cycles * period, knots_t, knots_l)
    last = s.steps[-1]
    return np.where(
        t <= last.start_s, np.interp(t, knots_t, knots_l), knots_l[-1] + (t - last.start_s) * last.rate_per_s
    )


def _knots(s: Steps | Hourly) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Where Λ bends, with its values there; the period (None: the last step's rate holds for ever)."""
    if isinstance(s, Hourly):
        counts = np.asarray(s.requests_per_hour, dtype=float)
        return (
            np.arange(len(counts) + 1) * HOUR_S,
            np.concatenate([[0.0], np.cumsum(counts)]),
            len(counts) * HOUR_S,
        )
    starts = np.array([x.start_s for x in s.steps])
    rates = np.array([x.rate_per_s for x in s.steps])
    return starts, np.concatenate([[0.0], np.cumsum(np.diff(starts) * rates[:-1])]), None


def clock_times(s: RateSchedule, tau: np.ndarray) -> np.ndarray:
    """t with Λ(t) = τ for sorted operational times τ (inf where the rate has stopped for good)."""
    tau = np.asarray(tau, dtype=float)
    if isinstance(s, Daily):
        return _daily_inverse(s, tau)
    knots_t, knots_l, period = _knots(s)
    if period is not None:
        per = knots_l[-1]
        cycles = np.floor(tau / per)
        return cycles * period + _inverse(knots_t, knots_l, tau - cycles * per)
    last = s.steps[-1]
    out = _inverse(knots_t, knots_l, np.minimum(tau, knots_l[-1]))
    beyond = tau > knots_l[-1]
    with np.errstate(divide="ignore"):
        out[beyond] = (
            last.start_s + (tau[beyond] - knots_l[-1]) / last.rate_per_s if last.rate_per_s else math.inf
        )
    return out


def _inverse(knots_t: np.ndarray, knots_l: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """Λ⁻¹ of a piecewise-linear Λ; a τ on a flat stretch (rate 0) maps to the stretch's end."""
    i = np.clip(np.searchsorted(knots_l, tau, side="left"), 1, len(knots_l) - 1)
    l0, l1, t0, t1 = knots_l[i - 1], knots_l[i], knots_t[i - 1], knots_t[i]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(l1 > l0, (tau - l0) / (l1 - l0), 1.0)
    return t0 + frac * (t1 - t0)


def _daily_inverse(s: Daily, tau: np.ndarray) -> np.ndarray:
    """The cosine's Λ⁻¹: interpolated on a one-minute grid, then Newton steps on the closed-form Λ."""
    grid = np.arange(0.0, DAY_S + _GRID_S, _GRID_S)
    per = float(cumulative(s, DAY_S))
    cycles = np.floor(tau / per)
    r = tau - cycles * per
    t = np.interp(r, cumulative(s, grid), grid)
    for _ in range(3):
        lam = rate_at(s, t)
        step = np.where(lam > 0, (cumulative(s, t) - r) / np.where(lam > 0, lam, 1.0), 0.0)
        t = np.clip(t - step, 0.0, DAY_S)
    return cycles * DAY_S + t


def scheduled_arrivals(
    w: Workload, n: int | None, unit_gaps: Callable[[int], np.ndarray], default_n: int
) -> np.ndarray:
    """Arrival times under the workload's schedule: n of them, or all before duration_s. `unit_gaps(k)`
    draws k gaps of the arrival process at rate 1 (from the workload's seeded arrival stream)."""
    s = w.schedule
    if w.duration_s:
        need = float(cumulative(s, w.duration_s))
        tau = np.cumsum(unit_gaps(int(need * 1.2 + 50)))
        while tau[-1] < need:
            tau = np.concatenate([tau, tau[-1] + np.cumsum(unit_gaps(int(need * 0.2 + 50)))])
        t = clock_times(s, tau[tau < need])
        return t[t < w.duration_s]
    t = clock_times(s, np.cumsum(unit_gaps(n or default_n)))
    return t[np.isfinite(t)]


def constant_rate(s: RateSchedule) -> float | None:
    """The rate of a schedule that never changes (one step), else None."""
    return s.steps[0].rate_per_s if isinstance(s, Steps) and len(s.steps) == 1 else None


def peak_rate_per_s(s: RateSchedule) -> float:
    """The highest rate of the schedule (the cosine's peak, the busiest step or hour)."""
    return s.peak_rate_per_s


def hourly_rates(s: RateSchedule, duration_s: float) -> np.ndarray:
    """Mean rate in each hour of [0, duration_s) (the last hour may be partial)."""
    edges = np.append(np.arange(0.0, duration_s, HOUR_S), duration_s)
    lam = cumulative(s, edges)
    return np.diff(lam) / np.diff(edges)


@dataclass(frozen=True, slots=True)
class Offered:
    """The workload's whole offered rate: its schedule (or constant rate) for the classes that share it,
    plus each class's own schedule. Rates of session classes count conversations, as arrivals do."""

    parts: tuple[RateSchedule | float, ...]

    def cumulative(self, t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, dtype=float)
        total = np.zeros_like(t)
        for p in self.parts:
            total = total + (p * t if isinstance(p, float) else cumulative(p, t))
        return total

    def rate_at(self, t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, dtype=float)
        total = np.zeros_like(t)
        for p in self.parts:
            total = total + (np.full_like(t, p) if isinstance(p, float) else rate_at(p, t))
        return total

    def peak_rate_per_s(self, duration_s: float) -> float:
        """The highest rate: the schedule's own peak for one part; for a sum, the highest over the run on
        a one-minute grid and at every step's start (so a sum of steps is exact, cosines to the minute)."""
        if len(self.parts) == 1 and not isinstance(self.parts[0], float):
            return float(self.parts[0].peak_rate_per_s)
        span = max(duration_s, DAY_S)
        t = [np.arange(0.0, span, _GRID_S)]
        t += [np.array([x.start_s for x in p.steps]) for p in self.parts if isinstance(p, Steps)]
        return float(self.rate_at(np.concatenate(t)).max())

    def hourly_rates(self, duration_s: float) -> np.ndarray:
        """Mean rate in each hour of [0, duration_s) (the last hour may be partial)."""
        edges = np.append(np.arange(0.0, duration_s, HOUR_S), duration_s)
        return np.diff(self.cumulative(edges)) / np.diff(edges)


def offered(w: Workload) -> Offered | None:
    """The workload's offered rate as schedules, or None when nothing in it has a schedule."""
    own = [c.schedule for c in w.classes or [] if c.schedule is not None]
    if w.schedule is None and not own:
        return None
    shared = len(own) < len(w.classes or [None])  # some arrivals come from the workload's own rate
    base = w.schedule if w.schedule is not None else w.arrival.rate_per_s
    return Offered(((base,) if shared and base is not None else ()) + tuple(own))


def class_mix(w: Workload) -> list[float]:
    """Each class's expected arrivals over the run (duration_s), for a mix that stands for the whole day
    where class schedules cannot be kept (one replica's capacity at a constant rate)."""
    end = float(w.duration_s)
    shared = [c.share for c in w.classes if c.schedule is None]
    base = w.schedule if w.schedule is not None else w.arrival.rate_per_s
    base_total = (
        0.0 if not shared else (base * end if isinstance(base, float) else float(cumulative(base, end)))
    )
    return [
        base_total * c.share / sum(shared) if c.schedule is None else float(cumulative(c.schedule, end))
        for c in w.classes
    ]
