"""Batch size 1 is a single FCFS server: exact agreement with Lindley's recursion on every sample path,
and the mean wait against the closed forms (the high-load points, which need millions of requests for
2%, are in benchmarks/queueing.py)."""

import numpy as np
import pytest

from benchmarks.queueing import closed_form, measure, scenario, service_law
from simulator.simulation import simulate
from simulator.theory import lindley_waits, md1_wait, mg1_wait, mm1_wait, mmc_wait


def test_closed_forms():
    assert md1_wait(0.5, 1.0) == pytest.approx(0.5)
    assert mm1_wait(0.5, 1.0) == pytest.approx(1.0)
    assert mg1_wait(0.5, 1.0, 2.0) == pytest.approx(mm1_wait(0.5, 1.0))
    assert mmc_wait(0.5, 1.0, 1) == pytest.approx(mm1_wait(0.5, 1.0))
    assert mmc_wait(1.8, 1.0, 2) == pytest.approx(4.2632, rel=1e-3)  # Erlang C, c=2, a=1.8


@pytest.mark.parametrize("kind", ["D", "G"])
@pytest.mark.parametrize("rho", [0.5, 0.7, 0.9])
def test_waits_equal_lindley_on_the_sample_path(kind, rho):
    sc, _ = scenario(kind, rho, 20_000, seed=11)
    f = simulate(sc)
    t = f.table
    s, _ = service_law(kind)
    service = s[t.output_tokens - 1] if kind == "G" else np.full(len(t), s[0])
    # the simulator's service times are the cost model's, request by request
    assert np.allclose(t.finish_s - t.scheduled_s, service, rtol=1e-9)
    assert np.allclose(t.scheduled_s - t.arrival_s, lindley_waits(t.arrival_s, service), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("kind,rho,n", [("D", 0.5, 300_000), ("D", 0.7, 800_000), ("G", 0.5, 300_000)])
def test_mean_wait_within_two_percent_of_closed_form(kind, rho, n):
    r = measure(kind, rho, n, seed=3)
    assert abs(r["error"]) < 0.02, r


def test_geometric_service_is_close_to_exponential():
    s, p = service_law("G")
    mean, m2 = float(s @ p), float(s**2 @ p)
    # E[S²] / (2 E[S]²) is 1 for exponential service: M/M/1 and P-K agree within a few percent
    assert m2 / (2 * mean**2) == pytest.approx(1.0, abs=0.03)
    assert closed_form("G", 0.5 / mean) == pytest.approx(mm1_wait(0.5 / mean, mean), rel=0.03)
