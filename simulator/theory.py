"""Closed-form queueing results the simulator must reproduce in degenerate settings."""

from __future__ import annotations

import math

import numpy as np


def mg1_wait(rate: float, mean_s: float, second_moment_s2: float) -> float:
    """Mean waiting time in queue of M/G/1 FCFS (Pollaczek–Khinchine): λ·E[S²] / (2·(1 − ρ))."""
    rho = rate * mean_s
    if rho >= 1:
        return math.inf
    return rate * second_moment_s2 / (2.0 * (1.0 - rho))


def md1_wait(rate: float, service_s: float) -> float:
    """M/D/1: ρ·S / (2·(1 − ρ))."""
    return mg1_wait(rate, service_s, service_s**2)


def mm1_wait(rate: float, mean_s: float) -> float:
    """M/M/1: ρ·S / (1 − ρ)."""
    return mg1_wait(rate, mean_s, 2 * mean_s**2)


def mmc_wait(rate: float, mean_s: float, c: int) -> float:
    """M/M/c mean wait in queue from the Erlang C formula."""
    a = rate * mean_s  # offered load in servers
    rho = a / c
    if rho >= 1:
        return math.inf
    terms = sum(a**k / math.factorial(k) for k in range(c))
    last = a**c / (math.factorial(c) * (1 - rho))
    erlang_c = last / (terms + last)
    return erlang_c * mean_s / (c - a)


def lindley_waits(arrival_s: np.ndarray, service_s: np.ndarray) -> np.ndarray:
    """Exact FCFS single-server waiting times for given arrivals and service times (Lindley's recursion)."""
    w = np.empty(len(arrival_s))
    x, prev_a, prev_s = 0.0, 0.0, 0.0
    for i, (a, s) in enumerate(zip(arrival_s.tolist(), service_s.tolist(), strict=True)):
        x = max(0.0, x + prev_s - (a - prev_a)) if i else 0.0
        w[i] = x
        prev_a, prev_s = a, s
    return w


def batch_means_stderr(x: np.ndarray, batches: int = 50) -> float:
    """Standard error of the mean of a correlated sequence by the method of batch means."""
    n = len(x) // batches * batches
    if n < batches:
        return math.nan
    means = x[:n].reshape(batches, -1).mean(axis=1)
    return float(means.std(ddof=1) / math.sqrt(batches))
