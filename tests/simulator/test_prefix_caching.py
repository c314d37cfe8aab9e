"""Prefix caching end to end: shared system prompts, multi-turn sessions, trace hash ids."""

import json

import numpy as np
import pytest

from core.requests import ClassPrefixKeys, PrefixKeys, prefix_keys
from simulator.scenario import parse_scenario
from simulator.simulation import simulate
from simulator.workload import generate


def scenario(classes, caching=True, n=400, rate=4.0, **wl):
    return parse_scenario(
        {
            "model": "llama-3.1-8b",
            "hardware": {"gpu": "h100-sxm"},
            "serving": {"caching": {"prefix_caching": caching}},
            "workload": {
                "arrival": {"process": "poisson", "rate_per_s": rate},
                "num_requests": n,
                "classes": classes,
                **wl,
            },
        }
    )


SYSTEM = [
    {
        "name": "chat",
        "share": 1.0,
        "shared_prefix_tokens": 1600,
        "prompt_tokens": {"dist": "fixed", "value": 400},
        "output_tokens": {"dist": "fixed", "value": 50},
    }
]


def test_shared_system_prompt_is_reused_and_cuts_ttft():
    on, off = simulate(scenario(SYSTEM)), simulate(scenario(SYSTEM, caching=False))
    pc = on.summary["prefix_cache"]
    # every request but the first finds the 1600-token system prompt (100 full blocks) cached
    assert pc["hit_rate"] == pytest.approx(1600 / 2000, rel=0.01)
    assert pc["prefill_tokens_saved"] == pytest.approx(1600 * 399, rel=0.01)
    assert off.summary["prefix_cache"]["hit_rate"] == 0
    assert on.summary["latency_s"]["ttft"]["p50"] < 0.5 * off.summary["latency_s"]["ttft"]["p50"]
    assert on.stats.prefill_tokens < 0.3 * off.stats.prefill_tokens


def test_variable_part_first_saves_nothing():
    cls = [dict(SYSTEM[0], prefix_position="end")]
    f = simulate(scenario(cls))
    assert f.summary["prefix_cache"]["hit_rate"] == 0.0
    assert f.summary["prefix_cache"]["prefill_tokens_saved"] == 0


def test_multi_turn_sessions_reuse_the_conversation_and_arrive_after_the_previous_turn():
    cls = [
        {
            "name": "conv",
            "share": 1.0,
            "session": {"turns": {"dist": "fixed", "value": 4}, "think_time_s": 2.0},
            "prompt_tokens": {"dist": "fixed", "value": 300},
            "output_tokens": {"dist": "fixed", "value": 100},
        }
    ]
    sc = scenario(cls, rate=1.0, n=200)
    f = simulate(sc)
    t = f.table
    reqs = generate(sc.workload, sc.seed)
    assert np.all(np.isfinite(t.finish_s))
    # turn k+1 arrives after turn k finished (closed loop), exactly the think time later
    nxt = reqs.next_turn
    has = nxt >= 0
    gap = t.arrival_s[nxt[has]] - t.finish_s[has]
    assert np.all(gap >= 0) and np.allclose(gap, reqs.think_s[has])
    # turn k's prompt = k·(300 + 100) + 300; all but its last partial block is reused from turn k−1
    later = ~np.isfinite(reqs.arrival_s)
    assert np.all(t.cached_tokens[later] >= (t.prompt_tokens[later] - 300 - 16) // 16 * 16 * 0.99)
    assert f.summary["prefix_cache"]["hit_rate"] > 0.5


def test_eviction_under_memory_pressure_lowers_reuse():
    # eight assistants, each with its own 800-token system prompt (50 blocks): 400 blocks in all
    many = [dict(SYSTEM[0], name=f"a{i}", share=1.0, shared_prefix_tokens=800) for i in range(8)]
    roomy = scenario(many, n=600, rate=2.0)
    tight = parse_scenario(
        json.loads(roomy.model_dump_json())
        | {"serving": {"caching": {"prefix_caching": True}, "memory": {"gpu_memory_utilization": 0.218}}}
    )
    f_tight, f_roomy = simulate(tight), simulate(roomy)
    assert f_tight.fits and f_tight.memory.num_blocks < 400
    assert f_tight.summary["prefix_cache"]["evicted_blocks"] > 0
    assert f_roomy.summary["prefix_cache"]["evicted_blocks"] == 0
    assert f_tight.summary["prefix_cache"]["hit_rate"] < f_roomy.summary["prefix_cache"]["hit_rate"] - 0.05


def test_trace_hash_ids(tmp_path):
    rows = [
        {"timestamp": 0, "input_length": 1024, "output_length": 10, "hash_ids": [1, 2]},
        {"timestamp": 500, "input_length": 1100, "output_length": 10, "hash_ids": [1, 2, 3]},
        {"timestamp": 1000, "input_length": 600, "output_length": 10, "hash_ids": [9, 10]},
    ]
    p = tmp_path / "m.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows))
    sc = parse_scenario(
        {
            "model": "llama-3.1-8b",
            "serving": {"caching": {"prefix_caching": True}},
            "workload": {
                "trace": str(p),
                "arrival": {"process": "trace"},
                "prompt_tokens": {"dist": "trace"},
                "output_tokens": {"dist": "trace"},
            },
        }
    )
    f = simulate(sc)
    # the second request shares the first 1024 tokens (hash ids 1, 2); the third shares nothing
    assert f.table.cached_tokens.tolist() == [0, 1024, 0]


def test_prefix_keys_depend_on_the_whole_prefix():
    reqs = generate(scenario(SYSTEM, n=3).workload, 0)
    keys = PrefixKeys(reqs, 16)
    a, b = keys(0, 2000), keys(1, 2000)
    # 1600 shared tokens = 100 blocks; the rest is the request's own and nobody can look it up
    assert np.array_equal(a, b) and len(a) == 100 and len(set(a.tolist())) == 100
    assert np.array_equal(keys(0, 800), a[:50])
    # ids increase along a chain (the KV pool relies on it to size its arrays)
    conv = generate(
        scenario([dict(SYSTEM[0], session={"turns": {"dist": "fixed", "value": 3}})], n=30).workload, 0
    )
    ck = PrefixKeys(conv, 16)
    for rid in range(30):
        k = ck(rid, 10**6)
        assert np.all(np.diff(k) > 0)


def test_single_turn_keys_are_their_class_chain():
    classes = [
        SYSTEM[0],
        dict(SYSTEM[0], name="tail", prefix_position="end"),
        dict(SYSTEM[0], name="other", shared_prefix_tokens=640),
        {"name": "plain", "share": 1.0, "prompt_tokens": {"dist": "fixed", "value": 300}},
    ]
    reqs = generate(scenario(classes, n=200).workload, 0)
    fast, generic = prefix_keys(reqs, 16), PrefixKeys(reqs, 16)
    assert isinstance(fast, ClassPrefixKeys) and fast.forget is None
    for rid in range(200):
        for tokens in (0, 100, 1000, 5000):
            assert np.array_equal(fast(rid, tokens), generic(rid, tokens))
    # a class's whole chain is one array, handed out again
    sys0 = [rid for rid in range(200) if reqs.class_id[rid] == 0][:2]
    assert fast(sys0[0], 5000) is fast(sys0[1], 5000)
