"""Closed-loop workloads (simulator/concurrency.py): N users, each sending when its last request finished."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import ConfigError
from simulator.scenario import parse_scenario
from simulator.simulation import simulate


def _scenario(concurrency: int, n: int = 60, **workload) -> dict:
    return {
        "name": "closed",
        "model": "llama-3.1-8b",
        "hardware": {"gpu": "h100-sxm"},
        "workload": {
            "arrival": {"process": "closed_loop", "concurrency": concurrency},
            "prompt_tokens": {"dist": "uniform", "min": 100, "max": 900},
            "output_tokens": {"dist": "uniform", "min": 20, "max": 200},
            "num_requests": n,
        }
        | workload,
    }


def _in_flight(table) -> int:
    """The most requests between arrival and finish at any moment."""
    events = sorted(
        [(a, 1) for a in table.arrival_s] + [(f, -1) for f in table.finish_s], key=lambda e: (e[0], e[1])
    )
    now = peak = 0
    for _, d in events:
        now += d
        peak = max(peak, now)
    return peak


@pytest.mark.parametrize("users", [1, 4])
def test_each_user_sends_when_its_last_request_finished(users):
    f = simulate(parse_scenario(_scenario(users)))
    t = f.table
    assert np.isfinite(t.finish_s).all() and _in_flight(t) == users
    for k in range(users, len(t)):  # request k follows request k - users, its user's previous one
        assert t.arrival_s[k] == pytest.approx(t.finish_s[k - users], abs=1e-12)
    s = f.summary
    if users == 1:  # one user: the throughput is one request per mean end-to-end latency
        assert s["throughput"]["requests_per_s"] == pytest.approx(1 / s["latency_s"]["e2e"]["mean"], rel=1e-9)
    tpot = (t.finish_s - t.first_token_s) / (t.output_tokens - 1)
    assert s["throughput"]["per_user_output_tokens_per_s"] == pytest.approx(np.mean(1 / tpot), rel=1e-12)
    assert s["throughput"]["output_tokens_per_s_per_gpu"] == pytest.approx(
        s["throughput"]["output_tokens_per_s"]
    )


def test_closed_loop_refuses_a_rate_or_missing_users_in_one_line():
    for wl, match in (
        ({"arrival": {"process": "closed_loop"}}, "needs arrival.concurrency"),
        ({"arrival": {"process": "closed_loop", "concurrency": 2, "rate_per_s": 3}}, "remove rate_per_s"),
        (
            {"arrival": {"process": "poisson", "rate_per_s": 1, "concurrency": 2}},
            "for arrival.process closed_loop",
        ),
    ):
        with pytest.raises(ConfigError, match=match) as e:
            parse_scenario(_scenario(2, **wl))
        assert "\n" not in str(e.value)
