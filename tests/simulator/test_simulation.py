"""End-to-end simulation: invariants on random scenarios, the decode-run shortcut, batching policies."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.scenario import parse_scenario
from simulator.simulation import simulate


def scenario(**kw):
    base = {
        "seed": kw.pop("seed", 0),
        "model": kw.pop("model", "qwen2.5-0.5b"),
        "hardware": {"gpu": kw.pop("gpu", "l4")},
        "serving": kw.pop("serving", {}),
        "workload": kw.pop(
            "workload",
            {
                "arrival": {"process": "poisson", "rate_per_s": kw.pop("rate", 20.0)},
                "prompt_tokens": {"dist": "lognormal", "median": 300, "sigma": 1.0, "max": 6000},
                "output_tokens": {"dist": "lognormal", "median": 60, "sigma": 1.0, "max": 800},
                "num_requests": kw.pop("n", 300),
            },
        ),
    }
    base.update(kw)
    return parse_scenario(base)


def check_invariants(f):
    t = f.table
    done = np.isfinite(t.finish_s)
    # every request is accounted for: finished or rejected (the run goes until the queue drains),
    # unless the run was stopped early as overloaded (simulator/stability.py)
    stopped = f.summary["stability"]["stopped_at_s"]
    assert np.all(done | t.rejected) or stopped is not None
    if stopped is not None:
        assert f.summary["stability"]["verdict"] == "overloaded"
        assert f.summary["requests"]["unfinished"] == int((~done & ~t.rejected).sum()) > 0
    assert not np.any(done & t.rejected)
    # tokens out equal tokens asked
    assert np.array_equal(t.generated[done], t.output_tokens[done])
    # times are ordered
    a, s, ft, fin = t.arrival_s[done], t.scheduled_s[done], t.first_token_s[done], t.finish_s[done]
    assert np.all(a <= s + 1e-12) and np.all(s < ft) and np.all(ft <= fin)
    # output length 1: finish with the first token
    one = done & (t.output_tokens == 1)
    assert np.array_equal(t.first_token_s[one], t.finish_s[one])
    # KV blocks: never more than the pool, all returned at the end
    kv = f.summary["kv_cache"]
    assert 0 <= kv["peak_occupancy"] <= 1.0
    if stopped is None:
        assert kv["blocks_in_use_at_end"] == 0  # every block came back, shared ones included


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    rate=st.floats(1.0, 200.0),
    max_num_seqs=st.integers(1, 64),
    max_tokens=st.sampled_from([64, 512, 2048, 8192]),
    chunked=st.booleans(),
    block_size=st.sampled_from([1, 8, 16, 32]),
    util=st.floats(0.05, 0.9),
    static=st.booleans(),
    caching=st.booleans(),
    spec=st.booleans(),
    policy=st.sampled_from(["fcfs", "priority"]),
    classes=st.booleans(),
)
def test_invariants_on_random_scenarios(
    seed, rate, max_num_seqs, max_tokens, chunked, block_size, util, static, caching, spec, policy, classes
):
    workload = {
        "arrival": {"process": "poisson", "rate_per_s": rate},
        "prompt_tokens": {"dist": "lognormal", "median": 300, "sigma": 1.0, "max": 6000},
        "output_tokens": {"dist": "lognormal", "median": 60, "sigma": 1.0, "max": 800},
        "num_requests": 120,
    }
    if classes:  # a shared system prompt, multi-turn sessions, priorities
        session = {"turns": {"dist": "uniform", "min": 1, "max": 4}, "think_time_s": 1}
        workload["classes"] = [
            {"name": "sys", "share": 1, "shared_prefix_tokens": 200, "priority": 1},
            {"name": "conv", "share": 1, "session": session},
        ]
    sc = scenario(
        seed=seed,
        workload=workload,
        serving={
            "batching": {
                "mode": "static" if static else "continuous",
                "max_num_seqs": max_num_seqs,
                "max_num_batched_tokens": max_tokens,
                "chunked_prefill": chunked,
            },
            "memory": {"block_size": block_size, "gpu_memory_utilization": util},
            "caching": {"prefix_caching": caching},
            "admission": {"scheduling_policy": policy},
            "speculative": {"method": "self", "num_speculative_tokens": 3, "acceptance_rate": 0.6}
            if spec
            else None,
        },
    )
    f = simulate(sc)
    if not f.fits:
        return
    check_invariants(f)


def test_memory_pressure_preempts_and_still_finishes_everything():
    # a tiny KV pool forces recomputation
    sc = scenario(
        gpu="t4",
        rate=50.0,
        n=300,
        serving={
            "memory": {"gpu_memory_utilization": 0.09, "runtime_reserved_gib": 0.0},
            "batching": {"max_num_seqs": 256},
        },
    )
    f = simulate(sc)
    assert f.fits
    check_invariants(f)
    assert f.summary["requests"]["preemptions"] > 0
    assert f.summary["utilisation"]["recomputed_prefill_tokens"] > 0
    assert f.summary["kv_cache"]["peak_occupancy"] > 0.9


@pytest.mark.parametrize("chunked", [True, False])
@pytest.mark.parametrize("pressure", [False, True])
def test_decode_runs_equal_stepping_one_by_one(chunked, pressure):
    serving = {"batching": {"chunked_prefill": chunked}}
    if pressure:  # a pool small enough to preempt
        serving["memory"] = {"gpu_memory_utilization": 0.09, "runtime_reserved_gib": 0.0}
    sc = scenario(gpu="t4", rate=50.0 if pressure else 8.0, n=150, serving=serving)
    fast, slow = simulate(sc), simulate(sc, step_by_step=True)
    if pressure:
        assert slow.summary["requests"]["preemptions"] > 0
    for col in ("scheduled_s", "first_token_s", "finish_s", "preemptions"):
        assert np.allclose(
            getattr(fast.table, col), getattr(slow.table, col), rtol=1e-9, atol=1e-12, equal_nan=True
        )
    assert fast.stats.steps == slow.stats.steps
    assert fast.summary["latency_s"]["itl"] == pytest.approx(slow.summary["latency_s"]["itl"], rel=1e-9)


@pytest.mark.parametrize(
    "serving",
    [
        {},
        {"batching": {"chunked_prefill": False}},
        {"memory": {"gpu_memory_utilization": 0.09, "runtime_reserved_gib": 0.0}},  # preemptions
        {"admission": {"queue_timeout_s": 0.5, "max_queue_len": 40}},  # admission control
    ],
)
def test_replica_pulling_its_arrivals_equals_an_event_per_arrival(serving):
    sc = scenario(gpu="t4", rate=40.0, n=300, serving=serving)
    pulled, sent = simulate(sc), simulate(sc, pulled=False)
    assert pulled.engines[0].arrivals is not None and sent.engines[0].arrivals is None
    for col in ("scheduled_s", "first_token_s", "finish_s", "preemptions", "rejected"):
        assert np.allclose(
            getattr(pulled.table, col), getattr(sent.table, col), rtol=1e-12, atol=0, equal_nan=True
        )
    assert pulled.stats.steps == sent.stats.steps
    # timeline rows are tuples (time, waiting, running, blocks, batch); compared as one array
    assert np.allclose(np.array(pulled.stats.timeline), np.array(sent.stats.timeline), rtol=1e-12, atol=0)
    assert np.array_equal(pulled.stats.itl_hist, sent.stats.itl_hist)
    # the pulling replica waits in simulated time only when idle; the clock still ends at the last finish
    done = np.nanmax(pulled.table.finish_s)
    assert pulled.engines[0].env.now == pytest.approx(done, rel=1e-12)
    assert sent.engines[0].env.now == pytest.approx(done, rel=1e-12)


def test_same_seed_same_forecast():
    a, b = simulate(scenario(seed=5)), simulate(scenario(seed=5))
    assert np.array_equal(a.table.finish_s, b.table.finish_s)
    c = simulate(scenario(seed=6))
    assert not np.array_equal(a.table.finish_s, c.table.finish_s)


def test_chunked_prefill_respects_token_budget_and_helps_tail_itl():
    wl = {
        "arrival": {"process": "poisson", "rate_per_s": 3.0},
        "prompt_tokens": {"dist": "fixed", "value": 6000},
        "output_tokens": {"dist": "fixed", "value": 200},
        "num_requests": 200,
    }
    chunked = simulate(
        scenario(
            model="llama-3.1-8b",
            gpu="h100-sxm",
            workload=wl,
            serving={"batching": {"max_num_batched_tokens": 1024}},
        )
    )
    first = simulate(
        scenario(
            model="llama-3.1-8b",
            gpu="h100-sxm",
            workload=wl,
            serving={"batching": {"chunked_prefill": False, "max_num_batched_tokens": 8192}},
        )
    )
    check_invariants(chunked)
    check_invariants(first)
    # prefill-first stalls every decode for a whole 6000-token prefill: far worse tail ITL
    assert first.summary["latency_s"]["itl"]["p99"] > 2 * chunked.summary["latency_s"]["itl"]["p99"]
    # ...but chunking delays the first token
    assert chunked.summary["latency_s"]["ttft"]["p50"] > first.summary["latency_s"]["ttft"]["p50"]


def test_static_batching_waits_for_the_longest_and_is_slower_under_load():
    wl = {
        "arrival": {"process": "poisson", "rate_per_s": 30.0},
        "prompt_tokens": {"dist": "uniform", "min": 100, "max": 1000},
        "output_tokens": {"dist": "uniform", "min": 10, "max": 400},
        "num_requests": 400,
    }
    cont = simulate(
        scenario(
            gpu="a100-80gb-sxm", model="llama-3.1-8b", workload=wl, serving={"batching": {"max_num_seqs": 32}}
        )
    )
    stat = simulate(
        scenario(
            gpu="a100-80gb-sxm",
            model="llama-3.1-8b",
            workload=wl,
            serving={"batching": {"mode": "static", "max_num_seqs": 32}},
        )
    )
    check_invariants(stat)
    # both are overloaded at 30 req/s (latency percentiles then only measure the run's length);
    # static batching completes far fewer requests per second, and its queue grows faster
    c, s = cont.summary["stability"], stat.summary["stability"]
    assert c["verdict"] == s["verdict"] == "overloaded"
    assert s["sustained_per_s"] < 0.8 * c["sustained_per_s"]
    assert s["drift"] > c["drift"]


def test_requests_that_can_never_run_are_rejected_with_reasons():
    sc = scenario(
        serving={
            "memory": {"max_model_len": 1000},
            "batching": {"chunked_prefill": False, "max_num_batched_tokens": 512},
        },
        workload={
            "arrival": {"process": "constant", "rate_per_s": 5},
            "prompt_tokens": {"dist": "uniform", "min": 100, "max": 1500},
            "output_tokens": {"dist": "fixed", "value": 10},
            "num_requests": 200,
        },
    )
    f = simulate(sc)
    reasons = f.summary["rejected_reasons"]
    assert (
        reasons["longer_than_max_model_len"] > 0 and reasons["prompt_over_token_budget_without_chunking"] > 0
    )
    assert f.summary["requests"]["rejected"] == sum(reasons.values())
    check_invariants(f)


def test_model_that_does_not_fit_is_reported_not_simulated():
    f = simulate(scenario(model="llama-3.1-70b", gpu="l4"))
    assert not f.fits and f.table is None
    assert "weights 131.4 GiB" in f.summary["memory"]["explain"]


def test_cost_and_throughput_are_consistent():
    f = simulate(scenario(n=400, rate=10.0))
    s = f.summary
    t, c = s["throughput"], s["cost"]
    tokens = (t["input_tokens_per_s"] + t["output_tokens_per_s"]) * t["duration_s"]
    assert c["usd_per_1m_tokens"] == pytest.approx(c["total_usd"] / tokens * 1e6)
    hours = t["duration_s"] / 3600
    assert c["total_usd"] == pytest.approx(hours * s["hardware"]["price_per_gpu_hour_usd"])


def test_progress_is_told_the_share_simulated_and_changes_nothing():
    """(issue 15, #8: the app's progress bar and run's rich bar are fed by this callback)"""
    import numpy as np

    from simulator import api

    data = {"model": "qwen2.5-0.5b", "hardware": {"gpu": "t4"},
            "workload": {"arrival": {"process": "poisson", "rate_per_s": 4}, "num_requests": 300}}  # fmt: skip
    seen: list[float] = []
    with_bar = api.simulate(api.parse_scenario(data), progress=seen.append)
    plain = api.forecast(data)
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) >= 10
    np.testing.assert_array_equal(with_bar.table.finish_s, plain.table.finish_s)


def _without_wall(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "simulation"}


def test_a_run_built_in_stages_is_simulate():
    """(issue 17) build → run → summarize, each typed, is what `simulate` does: a deployment of two
    replicas and a response cache, built but not yet run, then run to the end and summarized."""
    from simulator.cluster import plan_groups
    from simulator.metrics import RunRecord
    from simulator.simulation import Deployment, RunEnd, build, run, summarize_run
    from simulator.workload import generate

    sc = scenario(
        n=150, rate=15.0, cluster={"replicas": 2}, response_cache={"hit_rate": 0.2, "lookup_latency_s": 0.01}
    )
    whole = simulate(sc)
    groups = plan_groups(sc, whole.model)
    dep = build(sc, whole.model, groups, {g.name: None for g in groups}, generate(sc.workload, sc.seed))
    assert isinstance(dep, Deployment) and len(dep.engines) == 2 and dep.links is None
    assert dep.env.now == 0 and not np.isfinite(dep.table.scheduled_s).any()  # built, not run
    record, end = run(dep)
    assert isinstance(end, RunEnd) and end.stopped is None
    assert end.hold == 2 * dep.engines[0].scheduler.max_seqs
    assert isinstance(record, RunRecord) and record.table is dep.table and record.wall_s > 0
    pools = [e.scheduler.pool for e in dep.engines]
    assert record.counts.peak_blocks_used == max(p.peak_used for p in pools) > 0
    assert record.stats.steps == sum(e.stats.steps for e in dep.engines)
    summary = summarize_run(dep, record, end)
    assert _without_wall(summary) == _without_wall(whole.summary)
    assert summary["response_cache"]["hits"] > 0 and summary["cluster"]["replicas"] == 2
    np.testing.assert_array_equal(dep.table.finish_s, whole.table.finish_s)


def test_simulate_is_a_page():
    """(issue 17, STYLE "To avoid": a 180-line simulate) no function of the run's stages is over 80 lines."""
    import ast
    import inspect

    from simulator import metrics, simulation

    for mod in (simulation, metrics):
        for node in ast.walk(ast.parse(inspect.getsource(mod))):
            if isinstance(node, ast.FunctionDef):
                assert node.end_lineno - node.lineno < 80, (mod.__name__, node.name)
    tree = ast.parse(inspect.getsource(simulation.simulate))
    assert tree.body[0].end_lineno - tree.body[0].lineno < 50


# ---------------------------------------------------------------- async scheduling (serving.async_scheduling)
ASYNC_CASES = [
    {},
    {"batching": {"chunked_prefill": False}},
    {"memory": {"gpu_memory_utilization": 0.09, "runtime_reserved_gib": 0.0}},  # preemptions
]


@pytest.mark.parametrize("serving", ASYNC_CASES)
def test_async_decode_runs_equal_stepping_one_by_one(serving):
    """With async scheduling an arrival during a decode-only step joins one step later; a run of decode steps
    costed ahead ends where stepping one by one would let it in, and prices each step as stepping does."""
    sc = scenario(gpu="t4", rate=40.0, n=200, serving=serving | {"async_scheduling": True})
    fast, slow = simulate(sc), simulate(sc, step_by_step=True)
    assert fast.engines[0].overlap and slow.engines[0].overlap
    for col in ("scheduled_s", "first_token_s", "finish_s", "preemptions"):
        assert np.allclose(
            getattr(fast.table, col), getattr(slow.table, col), rtol=1e-9, atol=1e-12, equal_nan=True
        )
    assert fast.stats.steps == slow.stats.steps
    check_invariants(fast)


@pytest.mark.parametrize("serving", ASYNC_CASES)
def test_async_pulling_its_arrivals_equals_an_event_per_arrival(serving):
    sc = scenario(gpu="t4", rate=40.0, n=200, serving=serving | {"async_scheduling": True})
    pulled, sent = simulate(sc), simulate(sc, pulled=False)
    assert pulled.engines[0].arrivals is not None and sent.engines[0].arrivals is None
    for col in ("scheduled_s", "first_token_s", "finish_s", "preemptions"):
        assert np.allclose(
            getattr(pulled.table, col), getattr(sent.table, col), rtol=1e-12, atol=0, equal_nan=True
        )
    assert pulled.stats.steps == sent.stats.steps


def test_async_scheduling_hides_decode_host_time_and_delays_arrivals():
    """Decode-only steps take the longer of GPU work and host terms (faster decode, TPOT down), and a request
    arriving while one runs waits a step longer to be scheduled (first steps start later)."""
    base = {"memory": {"gpu_memory_utilization": 0.9}}
    waits = simulate(scenario(gpu="t4", rate=4.0, n=200, serving=base))
    over = simulate(scenario(gpu="t4", rate=4.0, n=200, serving=base | {"async_scheduling": True}))
    tw, to = waits.table, over.table
    tpot = lambda t: np.nanmedian((t.finish_s - t.first_token_s) / np.maximum(t.output_tokens - 1, 1))  # noqa: E731
    assert tpot(to) < tpot(tw) * 0.99
    wait_w, wait_o = tw.scheduled_s - tw.arrival_s, to.scheduled_s - to.arrival_s
    assert np.nanmean(wait_o) > np.nanmean(wait_w)


def test_async_scheduling_is_refused_where_it_is_not_modelled():
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"serving\.async_scheduling: needs decode steps on CUDA graphs"):
        scenario(serving={"async_scheduling": True, "cuda_graphs": "none"})
    with pytest.raises(
        ConfigError, match=r"serving\.async_scheduling: modelled for this project's serving loop only"
    ):
        scenario(serving={"async_scheduling": True}, engine="transformers", gpu="h200")
    spec = {"method": "self", "num_speculative_tokens": 3, "acceptance_rate": 0.6}
    with pytest.raises(ConfigError, match=r"serving\.async_scheduling: not with speculative decoding"):
        scenario(serving={"async_scheduling": True, "speculative": spec})
