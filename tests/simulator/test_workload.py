"""Workload generation: distributions, traces in the common formats, determinism."""

import numpy as np
import pytest

from core.errors import ConfigError
from simulator.scenario import Workload
from simulator.workload import generate, read_trace


def wl(**kw) -> Workload:
    return Workload.model_validate(kw)


def test_same_seed_same_requests_and_streams_are_independent():
    w = wl(
        arrival={"process": "poisson", "rate_per_s": 5},
        prompt_tokens={"dist": "uniform", "min": 10, "max": 20},
        num_requests=100,
    )
    a, b = generate(w, 3), generate(w, 3)
    assert np.array_equal(a.arrival_s, b.arrival_s) and np.array_equal(a.prompt_tokens, b.prompt_tokens)
    c = generate(w, 4)
    assert not np.array_equal(a.arrival_s, c.arrival_s)
    # changing the prompt distribution leaves arrivals untouched
    w2 = wl(
        arrival={"process": "poisson", "rate_per_s": 5},
        prompt_tokens={"dist": "fixed", "value": 7},
        num_requests=100,
    )
    assert np.array_equal(generate(w2, 3).arrival_s, a.arrival_s)


def test_poisson_gamma_constant_rates():
    for proc, cv in (("poisson", 1.0), ("gamma", 3.0), ("constant", 1.0)):
        r = generate(wl(arrival={"process": proc, "rate_per_s": 10, "cv": cv}, num_requests=20000), 1)
        gaps = np.diff(r.arrival_s)
        assert np.mean(gaps) == pytest.approx(0.1, rel=0.05)
        want_cv = {"poisson": 1.0, "gamma": 3.0, "constant": 0.0}[proc]
        assert np.std(gaps) / np.mean(gaps) == pytest.approx(want_cv, abs=0.1)
        assert np.all(np.diff(r.arrival_s) >= 0)


def test_length_distributions():
    n = 20000
    base = {"arrival": {"process": "constant", "rate_per_s": 1}, "num_requests": n}
    r = generate(wl(**base, prompt_tokens={"dist": "lognormal", "median": 500, "sigma": 0.8, "max": 4000}), 0)
    assert np.median(r.prompt_tokens) == pytest.approx(500, rel=0.05) and r.prompt_tokens.max() <= 4000
    r = generate(wl(**base, output_tokens={"dist": "exponential", "mean": 50}), 0)
    assert r.output_tokens.mean() == pytest.approx(50, rel=0.05) and r.output_tokens.min() >= 1
    r = generate(wl(**base, prompt_tokens={"dist": "uniform", "min": 3, "max": 5}), 0)
    assert set(np.unique(r.prompt_tokens)) == {3, 4, 5}


def test_duration_limits_arrivals():
    r = generate(wl(arrival={"process": "poisson", "rate_per_s": 20}, duration_s=50), 2)
    assert r.arrival_s.max() < 50 and len(r) == pytest.approx(1000, rel=0.15)


def test_builtin_traces():
    conv = read_trace("conversation")
    assert len(conv.prompt_tokens) > 19000 and conv.arrival_s is not None
    assert np.median(conv.prompt_tokens) == pytest.approx(1020, rel=0.05)
    summ = read_trace("summarization")
    assert summ.arrival_s is None and len(summ.prompt_tokens) > 28000


def test_trace_replay_loop_and_rescale():
    w = wl(
        trace="code",
        arrival={"process": "trace"},
        prompt_tokens={"dist": "trace"},
        output_tokens={"dist": "trace"},
    )
    r = generate(w, 0)
    t = read_trace("code")
    assert np.array_equal(r.arrival_s, t.arrival_s) and np.array_equal(r.prompt_tokens, t.prompt_tokens)
    n = len(t.prompt_tokens)
    looped = generate(w.model_copy(update={"num_requests": 2 * n + 5}), 0)
    assert len(looped) == 2 * n + 5 and np.all(np.diff(looped.arrival_s) >= 0)
    assert np.array_equal(looped.prompt_tokens[n : 2 * n], t.prompt_tokens)
    fast = generate(
        wl(trace="code", arrival={"process": "trace", "rate_per_s": 26.0}, prompt_tokens={"dist": "trace"}), 0
    )
    assert len(fast) / fast.arrival_s[-1] == pytest.approx(26.0, rel=0.01)


def test_trace_lengths_with_synthetic_arrivals():
    r = generate(
        wl(
            trace="summarization",
            arrival={"process": "poisson", "rate_per_s": 1},
            prompt_tokens={"dist": "trace"},
            num_requests=50,
        ),
        0,
    )
    assert len(r) == 50 and r.prompt_tokens.min() > 0
    with pytest.raises(ConfigError, match="has no arrival times"):
        generate(wl(trace="summarization", arrival={"process": "trace"}), 0)


def test_other_trace_formats(tmp_path):
    azure = tmp_path / "azure.csv"
    azure.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.680,100,20\n2023-11-16 18:15:47.180,200,30\n"
    )
    t = read_trace(str(azure))
    assert t.arrival_s.tolist() == pytest.approx([0.0, 0.5]) and t.prompt_tokens.tolist() == [100, 200]
    moon = tmp_path / "mooncake.jsonl"
    moon.write_text(
        '{"timestamp": 1000, "input_length": 50, "output_length": 5, "hash_ids": [1, 2]}\n{"timestamp": 3000, "input_length": 60, "output_length": 6}\n'
    )
    t = read_trace(str(moon))
    assert t.arrival_s.tolist() == pytest.approx([0.0, 2.0]) and t.output_tokens.tolist() == [5, 6]


def test_bad_traces(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        read_trace("nope")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="needs a prompt-length column"):
        read_trace(str(bad))
    bad.write_text("num_prefill_tokens,num_decode_tokens\nx,2\n")
    with pytest.raises(ConfigError, match="line 2: num_prefill_tokens: .x. is not a token count"):
        read_trace(str(bad))


def test_classes_without_sessions_segments_and_shareable_prefixes():
    w = wl(
        arrival={"process": "poisson", "rate_per_s": 5},
        prompt_tokens={"dist": "uniform", "min": 10, "max": 20},
        num_requests=300,
        classes=[
            {"name": "sys", "share": 1, "shared_prefix_tokens": 100},
            {"name": "tail", "share": 1, "shared_prefix_tokens": 50, "prefix_position": "end"},
            {"name": "plain", "share": 1},
        ],
    )
    r = generate(w, 1)
    assert len(r) == 300 and set(r.class_id.tolist()) == {0, 1, 2}
    assert (r.next_turn == -1).all() and np.isfinite(r.arrival_s).all()
    for rid in range(len(r)):
        ci, segs = int(r.class_id[rid]), r.segments[rid]
        user = int(r.prompt_tokens[rid]) - (100, 50, 0)[ci]
        assert 10 <= user <= 20
        if ci == 0:  # a system prompt at the start is shared, up to its end
            assert segs[0][1] == 100 and segs[1] == (2 * rid, user) and r.shareable[rid] == 100
        else:
            assert segs is None and r.shareable[rid] == 0
