"""Host phases (EngineProfile.host.phases): the simulator's seeded drift of an engine's host time and its stalls,
and their fit (calibrate/host_phases.py) recovering known parameters from synthetic steps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from calibrate.host_phases import RunSteps, fit_phases
from core.engine_profile import HostPhases, load_engine_profile, write_engine_profile
from core.requests import Requests
from simulator.host_phases import HostPhaseClock
from simulator.scenario import parse_scenario
from simulator.simulation import simulate


def phases(**kw) -> HostPhases:
    base = {"log_mean": 0.1, "log_std": 0.2, "correlation_s": 1.0, "stall_rate_per_s": 0.0, "stall_s": 0.5}
    return HostPhases(**(base | kw | {"source": "fit"}))


def test_clock_is_seeded_and_its_mean_multiplier_is_the_profiles():
    p = phases()
    a, b, c = HostPhaseClock(p, 3, 0), HostPhaseClock(p, 3, 0), HostPhaseClock(p, 4, 0)
    t = np.arange(20_000) * 0.1
    xa = [a.extra(s, 1.0, 0.1) for s in t]
    assert xa == [b.extra(s, 1.0, 0.1) for s in t]  # same seed and replica: the same draws
    assert xa != [c.extra(s, 1.0, 0.1) for s in t]
    # 2,000 s over a 1 s correlation: the mean multiplier within a few percent of exp(mu + sigma^2 / 2)
    assert 1.0 + np.mean(xa) == pytest.approx(p.mean_multiplier(), rel=0.03)


def test_stalls_come_at_their_rate():
    clock = HostPhaseClock(phases(log_std=0.0, log_mean=0.0, stall_rate_per_s=0.5, stall_s=2.0), 0, 0)
    extra = np.array([clock.extra(s * 0.1, 1.0, 0.1) for s in range(20_000)])  # 2,000 s of 0.1 s steps
    # a step of 0.1 s stalls with probability 1 - exp(-0.5 * 0.1)
    assert int(np.sum(extra > 1.0)) == pytest.approx(20_000 * -math.expm1(-0.05), rel=0.1)


def _scenario(engine: str, seed: int = 0):
    return parse_scenario(
        {"name": "p", "seed": seed, "model": "llama-3.1-8b", "engine": engine, "hardware": {"gpu": "h200"},
         "workload": {"arrival": {"process": "poisson", "rate_per_s": 1.0}, "num_requests": 1,
                      "prompt_tokens": {"dist": "fixed", "value": 16}, "output_tokens": {"dist": "fixed", "value": 2}}},
        "p",
    )  # fmt: skip


def test_a_profile_with_phases_runs_slower_on_average_and_by_its_seed(tmp_path):
    rng = np.random.default_rng(0)
    reqs = Requests(np.sort(rng.uniform(0, 20, 40)), rng.integers(100, 800, 40), rng.integers(20, 60, 40))
    tf = load_engine_profile("transformers")
    assert tf.host.phases is not None and tf.host.phases.mean_multiplier() > 1.0
    runs = [simulate(_scenario("transformers", s), requests=reqs).table for s in (0, 0, 1)]
    assert np.array_equal(runs[0].finish_s, runs[1].finish_s)  # the seed fixes the draws
    assert not np.array_equal(runs[0].finish_s, runs[2].finish_s)
    # the same profile without its phases: every step pays the fitted terms as they are, so it runs faster
    flat = tf.model_copy(update={"host": tf.host.model_copy(update={"phases": None})})
    path = tmp_path / "flat.yaml"
    write_engine_profile(flat, path)
    base = simulate(_scenario(str(path)), requests=reqs).table

    def tpot(t) -> float:
        return float(np.median((t.finish_s - t.first_token_s) / (t.output_tokens - 1)))

    assert all(tpot(t) > 1.02 * tpot(base) for t in runs)


def test_fit_recovers_known_phases_from_synthetic_steps():
    rng = np.random.default_rng(1)
    mu, sigma, tau, dt, n = 0.05, 0.25, 2.0, 0.1, 30_000
    a = math.exp(-dt / tau)
    x = np.empty(n)
    x[0] = mu
    for k in range(1, n):
        x[k] = mu + (x[k - 1] - mu) * a + sigma * math.sqrt(1 - a * a) * rng.standard_normal()
    host = np.full(n, dt * 0.9 / math.exp(mu))
    gpu = np.full(n, dt * 0.1)
    meas = gpu + host * np.exp(x)
    stall_at = rng.choice(n, 30, replace=False)
    meas[stall_at] += 0.7
    f = fit_phases([RunSteps("synthetic", meas, gpu, host)])
    assert f.stalls == 30 and f.stall_s == pytest.approx(0.7, abs=0.1)
    assert f.log_std == pytest.approx(sigma, rel=0.1)
    assert f.mean_multiplier == pytest.approx(float(np.mean(np.exp(x))), rel=0.02)
    assert f.correlation_s == pytest.approx(tau, rel=0.3)
