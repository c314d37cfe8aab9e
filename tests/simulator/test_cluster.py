"""Replicas behind a router: runs of decode steps stay exact, load spreads, cost adds up, and the
queueing behaviour of c servers matches Erlang C."""

import numpy as np
import pytest

from benchmarks.queueing import service_law
from simulator.scenario import parse_scenario
from simulator.simulation import simulate
from simulator.theory import mmc_wait


def scenario(**kw):
    base = {
        "seed": kw.pop("seed", 0),
        "model": kw.pop("model", "qwen2.5-0.5b"),
        "hardware": kw.pop("hardware", {"gpu": "t4"}),
        "workload": {
            "arrival": {"process": "poisson", "rate_per_s": kw.pop("rate", 30.0)},
            "prompt_tokens": {"dist": "lognormal", "median": 300, "sigma": 1.0, "max": 4000},
            "output_tokens": {"dist": "lognormal", "median": 60, "sigma": 1.0, "max": 800},
            "num_requests": kw.pop("n", 300),
        },
    }
    base.update(kw)
    return parse_scenario(base)


def same_run(a, b):
    for col in ("scheduled_s", "first_token_s", "finish_s", "preemptions", "replica"):
        assert np.allclose(
            getattr(a.table, col), getattr(b.table, col), rtol=1e-9, atol=1e-12, equal_nan=True
        ), col
    assert a.stats.steps == b.stats.steps


def all_served(f):
    t = f.table
    done = np.isfinite(t.finish_s)
    assert np.all(done | t.rejected)
    assert np.array_equal(t.generated[done], t.output_tokens[done])


@pytest.mark.parametrize(
    "cluster",
    [
        {"replicas": 3, "router": "round_robin"},
        {"replicas": 3, "router": "least_outstanding"},
        {"replicas": 2, "max_ongoing_requests": 4},
        {"groups": [{"gpu": "t4"}, {"gpu": "l4", "count": 2, "serving": {"batching": {"max_num_seqs": 8}}}]},
    ],
)
def test_decode_runs_equal_stepping_one_by_one_with_several_replicas(cluster):
    # a replica costs decode runs ahead only up to the next arrival it could be sent: the router must
    # see every replica as of the arrival, never the end of a run it has already committed
    sc = scenario(cluster=cluster)
    fast, slow = simulate(sc), simulate(sc, step_by_step=True)
    same_run(fast, slow)
    all_served(fast)


def test_pipeline_parallel_replica_runs_as_virtual_engines():
    sc = scenario(hardware={"gpu": "t4", "gpus_per_replica": 2, "pipeline_parallel": 2})
    f = simulate(sc)
    assert len(f.engines) == 2 and {e.scheduler.max_seqs for e in f.engines} == {128}
    assert f.summary["cluster"]["replicas"] == 1 and f.summary["hardware"]["gpus"] == 2
    same_run(f, simulate(sc, step_by_step=True))
    all_served(f)


def test_one_replica_in_a_cluster_section_is_the_plain_scenario():
    a, b = simulate(scenario()), simulate(scenario(cluster={"replicas": 1, "router": "round_robin"}))
    assert np.array_equal(a.table.finish_s, b.table.finish_s, equal_nan=True)
    assert "replicas" not in a.summary


def test_round_robin_deals_requests_in_turn():
    f = simulate(scenario(n=301, cluster={"replicas": 3, "router": "round_robin"}))
    assert np.array_equal(f.table.replica[:9], [0, 1, 2] * 3)
    assert [r["requests_served"] for r in f.summary["replicas"]] == [101, 100, 100]


def test_least_outstanding_balances_uneven_requests_better_than_round_robin():
    # every other request is long: round robin sends all long ones to one replica
    wl = {"seed": 3, "rate": 6.0, "n": 400, "model": "llama-3.1-8b", "hardware": {"gpu": "h100-sxm"}}
    rr = scenario(**wl, cluster={"replicas": 2, "router": "round_robin"})
    lo = scenario(**wl, cluster={"replicas": 2, "router": "least_outstanding"})
    n = 400
    from simulator.workload import generate

    reqs = generate(rr.workload, rr.seed)
    reqs.output_tokens = np.where(np.arange(n) % 2 == 0, 1500, 20)
    reqs.prompt_tokens = np.where(np.arange(n) % 2 == 0, 4000, 200)
    f_rr, f_lo = simulate(rr, reqs), simulate(lo, reqs)
    busy_rr = [r["busy_fraction"] for r in f_rr.summary["replicas"]]
    busy_lo = [r["busy_fraction"] for r in f_lo.summary["replicas"]]
    assert abs(busy_lo[0] - busy_lo[1]) < abs(busy_rr[0] - busy_rr[1])
    assert f_lo.summary["latency_s"]["e2e"]["p99"] < f_rr.summary["latency_s"]["e2e"]["p99"]


def test_two_replicas_at_double_rate_match_one_at_the_base_rate():
    one = simulate(scenario(model="llama-3.1-8b", hardware={"gpu": "h100-sxm"}, rate=8.0, n=1500))
    two = simulate(
        scenario(
            model="llama-3.1-8b", hardware={"gpu": "h100-sxm"}, rate=16.0, n=3000, cluster={"replicas": 2}
        )
    )
    for key in ("ttft", "tpot", "e2e"):
        assert two.summary["latency_s"][key]["p50"] == pytest.approx(
            one.summary["latency_s"][key]["p50"], rel=0.15
        )
    assert two.summary["throughput"]["requests_per_s"] == pytest.approx(
        2 * one.summary["throughput"]["requests_per_s"], rel=0.1
    )
    # twice the GPUs for twice the tokens: the same cost per token
    assert two.summary["cost"]["usd_per_1m_tokens"] == pytest.approx(
        one.summary["cost"]["usd_per_1m_tokens"], rel=0.1
    )


def test_cost_is_summed_over_every_gpu_of_every_group():
    f = simulate(
        scenario(cluster={"groups": [{"gpu": "t4", "count": 2}, {"gpu": "l4", "gpus_per_replica": 2}]})
    )
    s = f.summary
    from core.hardware import load_profile

    per_hour = 2 * load_profile("t4").price.usd_per_hour + 2 * load_profile("l4").price.usd_per_hour
    assert s["hardware"]["gpus"] == 4 and s["cluster"]["usd_per_hour"] == pytest.approx(per_hour)
    assert s["cost"]["total_usd"] == pytest.approx(per_hour * s["throughput"]["duration_s"] / 3600)
    assert {r["gpu"] for r in s["replicas"]} == {"t4", "l4"}
    assert sum(r["requests_served"] for r in s["replicas"]) == s["requests"]["finished"]


def test_requests_only_one_group_can_hold_go_there():
    # the T4 group serves at most 1000 tokens per request; the L4 group takes the longer ones
    f = simulate(
        scenario(
            rate=5.0,
            cluster={
                "groups": [{"gpu": "t4", "serving": {"memory": {"max_model_len": 1000}}}, {"gpu": "l4"}]
            },
        )
    )
    t = f.table
    long = (t.prompt_tokens + t.output_tokens) > 1000
    assert long.any() and not t.rejected.any()
    assert np.all(t.replica[long] == 1)


def test_router_queue_with_one_request_per_replica_is_mmc():
    """c replicas at batch size 1, one request each, the rest queued at the router: M/G/c with
    near-exponential service; mean wait against Erlang C with the Allen–Cunneen (1 + C²)/2 factor
    (exact for c = 1: Pollaczek–Khinchine)."""
    s, p = service_law("G")
    mean, m2 = float(s @ p), float(s**2 @ p)
    c, rho = 2, 0.7
    rate = rho * c / mean
    sc = parse_scenario(
        {
            "seed": 2,
            "model": "llama-3.1-8b",
            "hardware": {"gpu": "h100-sxm"},
            "serving": {"batching": {"max_num_seqs": 1}, "memory": {"max_model_len": 10_000}},
            "cluster": {"replicas": c, "max_ongoing_requests": 1},
            "workload": {
                "arrival": {"process": "poisson", "rate_per_s": rate},
                "prompt_tokens": {"dist": "fixed", "value": 1},
                "output_tokens": {"dist": "exponential", "mean": 100},
                "num_requests": 120_000,
            },
        }
    )
    f = simulate(sc)
    wait = f.table.scheduled_s - f.table.arrival_s
    expect = mmc_wait(rate, mean, c) * (1 + (m2 / mean**2 - 1)) / 2
    assert wait.mean() == pytest.approx(expect, rel=0.05)  # batch-means standard error ≈ 2.5%
    assert f.summary["cluster"]["held_at_router"] > 0


def test_itl_of_two_token_outputs_is_their_tpot():
    """Every request makes 2 tokens, prompts alone in prefill-only steps: each request's one gap is its
    TPOT, so the ITL distribution is the TPOT distribution. (The replica used to count a sequence that
    finished at its first decode step from the previous decode step, not from its own first token.)"""
    sc = scenario(
        n=400,
        rate=20.0,
        serving={"batching": {"chunked_prefill": False}},
        workload={
            "arrival": {"process": "poisson", "rate_per_s": 20.0},
            "prompt_tokens": {"dist": "lognormal", "median": 300, "sigma": 1.0, "max": 4000},
            "output_tokens": {"dist": "fixed", "value": 2},
            "num_requests": 400,
        },
    )
    f = simulate(sc)
    t = f.table
    tpot = np.sort(t.finish_s - t.first_token_s)
    lat = f.summary["latency_s"]
    assert f.stats.itl_hist.sum() == len(tpot)
    for q in (50, 90, 99):  # histogram bins are 0.46% wide; a quantile that falls between two samples
        # (here p90 can sit in the gap between steps with and without a prefill) lies between them
        lo, hi = np.percentile(tpot, q, method="lower"), np.percentile(tpot, q, method="higher")
        assert 0.98 * lo <= lat["itl"][f"p{q}"] <= 1.02 * hi


@pytest.mark.parametrize(
    "cluster",
    [{"replicas": 3, "router": "least_outstanding"}, {"replicas": 2, "max_ongoing_requests": 4}],
)
def test_async_decode_runs_equal_stepping_one_by_one_with_several_replicas(cluster):
    # async scheduling: a router's arrival during a replica's decode step (or a run's last step) waits for the
    # decision after the next one, in a run costed ahead as in stepping one by one
    sc = scenario(cluster=cluster, serving={"async_scheduling": True})
    fast, slow = simulate(sc), simulate(sc, step_by_step=True)
    assert all(e.overlap for e in fast.engines)
    same_run(fast, slow)
    all_served(fast)
