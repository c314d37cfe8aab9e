"""Fit an engine's host-time phases and stalls (EngineProfile.host.phases) to the steps of its fitted runs.

transformers' manager runs a step of one shape at levels that stay for seconds and change without a cause the
step records show (calibration_runs/transformers_h200; none of active, waiting, free blocks or finished requests
explains them), and stalls now and then. Given each fitted run's steps in order — measured seconds, the cost
model's GPU seconds and the fitted host seconds — the host multiplier of a step is (measured - GPU) / host:

- a stall is a step at least STALL_EXCESS_S over its prediction and over twice it; the stall rate is their count
  over the runs' seconds, their length the mean excess over the level-scaled prediction;
- the other steps' log multipliers give the level's spread (`log_std`), and `log_mean` makes the mean multiplier
  the runs' time-weighted one (sum of host seconds measured over sum predicted), which is what a run's busy time
  and a request's TPOT follow;
- `correlation_s`: exp(-lag / correlation_s) fitted to the log multipliers' autocorrelation at lags of 1..MAX_LAG
  steps, each lag in seconds (the mean time between the steps paired).

Imports numpy and scipy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

# a step this much over its prediction (and over twice it) is a stall (0.4-1.1 s in the H200 runs, the phases'
# slowest level about 1.6x the fitted one: 104 against 66 ms at batch 1)
STALL_EXCESS_S = 0.25
MAX_LAG = 20  # steps: the autocorrelation is fitted over lags 1..MAX_LAG (about 2 s of a run)
MIN_MULTIPLIER = (
    0.05  # a step whose GPU prediction exceeds its time keeps a small host share, not a log of <= 0
)


@dataclass(frozen=True, slots=True)
class RunSteps:
    """One run's steps in order: measured seconds, the GPU seconds and the host seconds predicted for each."""

    name: str
    measured_s: np.ndarray
    gpu_s: np.ndarray
    host_s: np.ndarray


@dataclass(frozen=True, slots=True)
class PhaseFit:
    """The fitted phases (HostPhases' fields) and what they were fitted from."""

    log_mean: float
    log_std: float
    correlation_s: float
    stall_rate_per_s: float
    stall_s: float
    steps: int
    stalls: int
    seconds: float

    @property
    def mean_multiplier(self) -> float:
        return float(np.exp(self.log_mean + self.log_std**2 / 2))


def _stalls(r: RunSteps) -> np.ndarray:
    pred = r.gpu_s + r.host_s
    return (r.measured_s - pred >= STALL_EXCESS_S) & (r.measured_s >= 2 * pred)


def _log_multipliers(r: RunSteps) -> tuple[np.ndarray, np.ndarray]:
    """(log multiplier, start time) of each step that is not a stall."""
    keep = ~_stalls(r)
    m = np.maximum((r.measured_s - r.gpu_s) / r.host_s, MIN_MULTIPLIER)
    start = np.cumsum(r.measured_s) - r.measured_s
    return np.log(m[keep]), start[keep]


def _autocorrelation(runs: list[RunSteps], log_mean: float, var: float) -> tuple[np.ndarray, np.ndarray]:
    """Pooled autocorrelation of the log multipliers at lags 1..MAX_LAG steps, and each lag's mean seconds."""
    rho, lag_s = [], []
    for k in range(1, MAX_LAG + 1):
        prods, dts = [], []
        for r in runs:
            x, t = _log_multipliers(r)
            if len(x) > k:
                prods.append((x[:-k] - log_mean) * (x[k:] - log_mean))
                dts.append(t[k:] - t[:-k])
        if prods:
            rho.append(float(np.mean(np.concatenate(prods))) / var)
            lag_s.append(float(np.mean(np.concatenate(dts))))
    return np.array(rho), np.array(lag_s)


def fit_phases(runs: list[RunSteps]) -> PhaseFit:
    """The phases and stalls of the fitted runs' steps (module docstring)."""
    seconds = float(sum(r.measured_s.sum() for r in runs))
    stall_excess = []
    xs, host_meas, host_pred = [], 0.0, 0.0
    for r in runs:
        s = _stalls(r)
        x, _ = _log_multipliers(r)
        xs.append(x)
        host_meas += float((r.measured_s - r.gpu_s)[~s].sum())
        host_pred += float(r.host_s[~s].sum())
        stall_excess.append((r, s))
    x = np.concatenate(xs)
    level = host_meas / host_pred
    log_std = float(np.std(x))
    log_mean = float(np.log(level) - log_std**2 / 2)
    rho, lag_s = _autocorrelation(runs, float(np.mean(x)), float(np.var(x)))
    fit = minimize_scalar(
        lambda tau: float(np.sum((rho - np.exp(-lag_s / tau)) ** 2)), bounds=(1e-3, 600.0), method="bounded"
    )
    excess = np.concatenate([(r.measured_s - r.gpu_s - level * r.host_s)[s] for r, s in stall_excess])
    return PhaseFit(
        log_mean,
        log_std,
        float(fit.x),
        len(excess) / seconds,
        float(np.mean(excess)) if len(excess) else 0.0,
        len(x),
        len(excess),
        seconds,
    )


def describe(name: str, f: PhaseFit) -> str:
    """A table row of a fit: its mean level, spread, correlation time and stalls."""
    return (
        f"| {name} | {f.steps} | {f.mean_multiplier:.3f} | {f.log_std:.3f} | {f.correlation_s:.2f} | "
        f"{f.stalls} in {f.seconds:.0f} s | {f.stall_s:.2f} |"
    )


TABLE_HEAD = [
    "| runs | steps | mean host multiplier | log spread | correlation (s) | stalls | stall length (s) |",
    "|---|---:|---:|---:|---:|---|---:|",
]
