"""The summary's typed inputs: scheduler counters summed explicitly, a summary without a run."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from core.hardware import load_profile
from core.model_spec import load_model
from simulator.memory import plan_memory
from simulator.metrics import RunRecord, SchedulerCounts, Setup, summarize
from simulator.scenario import parse_scenario
from simulator.simulation import simulate


def _sched(peak: int, used: int, cached: int, evicted: int, rounds: int, tokens: int):
    pool = SimpleNamespace(peak_used=peak, used=used, evictions=evicted)
    return SimpleNamespace(pool=pool, cached_tokens=cached, spec_rounds=rounds, spec_yield=tokens)


def test_scheduler_counts_sum_over_schedulers_and_keep_the_fullest_peak():
    c = SchedulerCounts.of(
        [_sched(10, 1, 100, 3, 7, 20), _sched(30, 2, 50, 4, 5, 11), _sched(20, 0, 0, 0, 0, 0)]
    )
    assert (c.peak_blocks_used, c.blocks_in_use, c.cached_tokens) == (30, 3, 150)
    assert (c.evicted_blocks, c.spec_rounds, c.spec_tokens) == (7, 12, 31)


def _scenario(**kw):
    data = {"seed": 1, "model": "qwen2.5-0.5b", "hardware": {"gpu": "l4"},
            "serving": {"caching": {"prefix_caching": True}},
            "workload": {"arrival": {"process": "poisson", "rate_per_s": 10.0}, "num_requests": 120}} | kw  # fmt: skip
    return parse_scenario(data)


def test_summary_of_several_replicas_reads_the_summed_counters():
    f = simulate(_scenario(cluster={"replicas": 3}))
    pools = [e.scheduler.pool for e in f.engines]
    s = f.summary
    assert s["prefix_cache"]["prefill_tokens_saved_incl_recompute"] == sum(
        e.scheduler.cached_tokens for e in f.engines
    )
    assert s["prefix_cache"]["evicted_blocks"] == sum(p.evictions for p in pools)
    assert s["kv_cache"]["blocks_in_use_at_end"] == sum(p.used for p in pools) == 0


def test_summary_without_a_run_has_the_deployment_only():
    sc = _scenario()
    model, profile = load_model(sc.model), load_profile(sc.hardware.gpu)
    setup = Setup(sc, model, profile, plan_memory(profile, model, sc.serving))
    alone = summarize(setup)
    assert set(alone) == {"scenario", "model", "hardware", "memory", "fits"}
    f = simulate(sc)
    run = RunRecord(f.table, f.stats, SchedulerCounts.of([e.scheduler for e in f.engines]), f.wall_s)
    full = summarize(setup, run)
    assert {k: full[k] for k in alone} == alone
    assert full["requests"]["finished"] == int(np.isfinite(f.table.finish_s).sum()) > 0
    assert full["latency_s"] == f.summary["latency_s"]


def test_vllm_names_agree_with_the_planners_own_keys_and_the_percentiles_flag(tmp_path):
    from simulator.cli import main

    out = tmp_path / "run"
    assert (
        main(["run", "--no-capacity", "--requests", "150", "--percentiles", "50,90,99", "--out", str(out)])
        == 0
    )
    s = json.loads((out / "summary.json").read_text())
    lat, t = s["latency_s"], s["throughput"]
    for ours, theirs in (("ttft", "ttft"), ("tpot", "tpot"), ("e2e", "e2el")):
        assert s[f"p90_{theirs}_ms"] == pytest.approx(lat[ours]["p90"] * 1e3, rel=1e-12)
        assert s[f"mean_{theirs}_ms"] == pytest.approx(lat[ours]["mean"] * 1e3, rel=1e-12)
        assert s[f"median_{theirs}_ms"] == pytest.approx(lat[ours]["p50"] * 1e3, rel=1e-12)
    assert s["p99_itl_ms"] == pytest.approx(lat["itl"]["p99"] * 1e3, rel=1e-12)
    assert s["request_throughput"] == pytest.approx(t["requests_per_s"], rel=1e-12)
    assert s["output_throughput"] == pytest.approx(t["output_tokens_per_s"], rel=1e-12)
    assert s["total_token_throughput"] == pytest.approx(t["input_tokens_per_s"] + t["output_tokens_per_s"])
    assert "p95_ttft_ms" not in s and s["request_goodput"] == pytest.approx(s["goodput"]["requests_per_s"])
