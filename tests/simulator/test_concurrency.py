"""Requests in flight capped by the client (simulator/concurrency.py): closed loops of N users, each sending when
its last request finished, and a rate with at most N in flight (the rest waiting at the client)."""

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
    ):
        with pytest.raises(ConfigError, match=match) as e:
            parse_scenario(_scenario(2, **wl))
        assert "\n" not in str(e.value)


def _capped(rate: float, cap: int | None, n: int = 80, **extra) -> dict:
    data = _scenario(1, n)
    data["workload"]["arrival"] = {"process": "poisson", "rate_per_s": rate} | (
        {"concurrency": cap} if cap else {}
    )
    return data | extra


@pytest.mark.parametrize("cap", [1, 3])
def test_a_rate_with_a_cap_sends_each_waiting_request_at_the_next_free_slot(cap):
    f = simulate(parse_scenario(_capped(40.0, cap)))  # 40 req/s: far more than `cap` requests in flight serve
    t, offered = f.table, f.requests.arrival_s
    assert np.isfinite(t.finish_s).all() and _in_flight(t) == cap
    done = np.sort(t.finish_s)
    # first come first served (vLLM's asyncio.Semaphore): request k takes the slot the (k - cap)-th finish frees,
    # or goes at once where it arrives after that
    sent = np.where(
        np.arange(len(t)) < cap, offered, np.maximum(offered, np.r_[np.zeros(cap), done][: len(t)])
    )
    np.testing.assert_allclose(t.arrival_s, sent, rtol=0, atol=1e-9)
    w = f.summary["client_wait"]
    assert w["max_in_flight"] == cap and w["waited"] > len(t) // 2
    assert w["mean_s"] == pytest.approx(float(np.mean(t.arrival_s - offered)), rel=1e-12)
    # TTFT counts from the send (vLLM starts its timer inside the semaphore), not from the arrival at the client
    assert f.summary["latency_s"]["ttft"]["p99"] < 1.0 < w["p99_s"]


def test_a_cap_never_reached_changes_nothing():
    free = simulate(parse_scenario(_capped(0.5, None, n=40)))
    capped = simulate(parse_scenario(_capped(0.5, 64, n=40)))
    assert capped.summary["client_wait"]["waited"] == 0
    for k in ("arrival_s", "first_token_s", "finish_s"):  # (to rounding: decode runs are cut at other times)
        np.testing.assert_allclose(getattr(capped.table, k), getattr(free.table, k), rtol=1e-12, atol=1e-12)


def test_a_cap_with_admission_limits_is_one_line():
    data = _capped(5.0, 2) | {"serving": {"admission": {"queue_timeout_s": 1.0}}}
    with pytest.raises(ConfigError, match="keep its slot") as e:
        simulate(parse_scenario(data))
    assert "\n" not in str(e.value)


def test_a_capped_client_falling_behind_its_rate_is_overloaded_not_stable():
    # 400 requests at 40 req/s through one slot: the server is never busier than one request, the client's queue
    # grows; the verdict counts the client's arrivals, so it says so (the server-side TTFT stays short)
    f = simulate(parse_scenario(_capped(40.0, 1, n=400)))
    st = f.summary["stability"]
    assert st["verdict"] == "overloaded" and st["offered_per_s"] == pytest.approx(40.0, rel=0.2)
    assert st["sustained_per_s"] < 0.1 * st["offered_per_s"]
    assert f.summary["latency_s"]["ttft"]["p99"] < 0.2


def test_a_cap_spanning_replicas_keeps_a_fleet_in_one_process():
    from simulator.shard import unshardable
    from simulator.workload import generate

    sc = parse_scenario(_capped(40.0, 4) | {"cluster": {"replicas": 4, "router": "round_robin"}})
    assert "arrival.concurrency" in unshardable(sc, generate(sc.workload, sc.seed), 4)
    f = simulate(sc)
    assert _in_flight(f.table) == 4  # one client's cap over all four replicas
