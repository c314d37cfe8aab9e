"""A response cache in front of the model: hits cost no GPU time and return after the lookup."""

import numpy as np
import pytest

from simulator.scenario import parse_scenario
from simulator.simulation import simulate


def scenario(cache=None, **kw):
    base = {
        "model": "llama-3.1-8b",
        "hardware": {"gpu": "h100-sxm"},
        "workload": {
            "arrival": {"process": "poisson", "rate_per_s": kw.pop("rate", 12.0)},
            "prompt_tokens": {"dist": "lognormal", "median": 800, "sigma": 0.8, "max": 8000},
            "output_tokens": {"dist": "lognormal", "median": 150, "sigma": 0.8, "max": 1500},
            "num_requests": 1500,
        },
    }
    if cache is not None:
        base["response_cache"] = cache
    base.update(kw)
    return parse_scenario(base)


def test_hits_bypass_the_gpus_and_return_after_the_lookup():
    f = simulate(scenario({"hit_rate": 0.4, "lookup_latency_s": 0.02}))
    t, rc = f.table, f.summary["response_cache"]
    hit = t.replica == -1
    assert rc["hits"] == hit.sum() and rc["hit_fraction"] == pytest.approx(0.4, abs=0.04)
    assert np.allclose(t.finish_s[hit] - t.arrival_s[hit], 0.02)
    assert np.allclose(t.first_token_s[hit], t.finish_s[hit])
    assert np.array_equal(t.generated[hit], t.output_tokens[hit])  # served, counted as output
    assert rc["tokens_served_from_cache"] == t.output_tokens[hit].sum()
    # misses pay the lookup too: none starts on the GPU before it
    assert np.all(t.scheduled_s[~hit] - t.arrival_s[~hit] >= 0.02 - 1e-12)
    # GPU work only for the misses: fewer prefill tokens than the whole workload
    assert f.stats.prefill_tokens == pytest.approx(t.prompt_tokens[~hit].sum(), rel=0.02)


def test_hits_lower_latency_and_cost_per_token():
    base, cached = simulate(scenario()), simulate(scenario({"hit_rate": 0.5, "lookup_latency_s": 0.005}))
    b, c = base.summary, cached.summary
    assert c["latency_s"]["ttft"]["p50"] < b["latency_s"]["ttft"]["p50"]
    assert c["utilisation"]["busy_fraction"] <= b["utilisation"]["busy_fraction"]
    assert c["cost"]["usd_per_1m_tokens"] <= b["cost"]["usd_per_1m_tokens"] * 1.01
    assert c["latency_s"]["e2e"]["p50"] < 0.5 * b["latency_s"]["e2e"]["p50"]


def test_hit_rate_per_class():
    from simulator.scenario import parse_scenario
    from simulator.simulation import simulate

    sc = parse_scenario(
        {
            "model": "llama-3.1-8b",
            "response_cache": {"hit_rate": 0.0, "lookup_latency_s": 0.01},
            "workload": {
                "arrival": {"process": "poisson", "rate_per_s": 5},
                "num_requests": 2000,
                "classes": [
                    {"name": "faq", "share": 1, "response_cache_hit_rate": 0.8},
                    {"name": "open", "share": 1},
                ],
            },
        }
    )
    f = simulate(sc)
    t = f.table
    cached = t.replica == -1
    assert cached[t.class_id == 0].mean() == pytest.approx(0.8, abs=0.04)
    assert not cached[t.class_id == 1].any()
