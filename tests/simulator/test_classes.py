"""Traffic classes: mixes by share, per-class SLOs and goodput, priority scheduling, admission control."""

import numpy as np
import pytest

from simulator.scenario import parse_scenario
from simulator.simulation import simulate

CLASSES = [
    {
        "name": "chat",
        "share": 0.7,
        "priority": 1,
        "prompt_tokens": {"dist": "fixed", "value": 300},
        "output_tokens": {"dist": "fixed", "value": 100},
        "slo": {"ttft_s": 0.2},
    },
    {
        "name": "batch",
        "share": 0.3,
        "prompt_tokens": {"dist": "fixed", "value": 6000},
        "output_tokens": {"dist": "fixed", "value": 300},
        "slo": {"e2e_s": 120},
    },
]


def scenario(policy="fcfs", rate=6.0, n=1500, **admission):
    return parse_scenario(
        {
            "seed": 4,
            "model": "llama-3.1-8b",
            "hardware": {"gpu": "h100-sxm"},
            "serving": {"admission": {"scheduling_policy": policy, **admission}},
            "workload": {
                "arrival": {"process": "poisson", "rate_per_s": rate},
                "num_requests": n,
                "classes": CLASSES,
            },
        }
    )


def test_shares_and_per_class_results():
    f = simulate(scenario())
    k = f.summary["classes"]
    assert k["chat"]["requests"] + k["batch"]["requests"] == 1500
    assert k["chat"]["requests"] / 1500 == pytest.approx(0.7, abs=0.04)
    assert k["chat"]["slo"] == {"ttft_s": 0.2} and k["batch"]["slo"] == {"e2e_s": 120}
    t = f.table
    chat = t.class_id == 0
    assert np.all(t.prompt_tokens[chat] == 300) and np.all(t.prompt_tokens[~chat] == 6000)
    ttft = t.first_token_s - t.arrival_s
    assert k["chat"]["goodput_fraction"] == pytest.approx(np.mean(ttft[chat] <= 0.2), abs=1e-9)


def test_priority_scheduling_protects_the_urgent_class():
    # overload (the GPU busy throughout): the queue decides who waits, and priority puts chat first
    fcfs, prio = simulate(scenario("fcfs", rate=10.0)), simulate(scenario("priority", rate=10.0))
    c_f, c_p = fcfs.summary["classes"]["chat"], prio.summary["classes"]["chat"]
    assert c_p["ttft"]["p99"] < 0.7 * c_f["ttft"]["p99"]
    assert c_p["goodput_fraction"] > c_f["goodput_fraction"]
    # the batch class pays for it
    assert prio.summary["classes"]["batch"]["ttft"]["p99"] >= fcfs.summary["classes"]["batch"]["ttft"]["p99"]


def test_admission_control_sheds_load_and_bounds_queueing():
    over = dict(rate=20.0, n=1500)
    free = simulate(scenario(**over))
    capped = simulate(scenario(max_queue_len=20, queue_timeout_s=5.0, **over))
    r = capped.summary["rejected_reasons"]
    assert r["queue_full"] + r["timed_out"] > 0
    assert capped.summary["requests"]["rejected"] >= r["queue_full"] + r["timed_out"]
    assert capped.summary["latency_s"]["queueing"]["p99"] < 0.5 * free.summary["latency_s"]["queueing"]["p99"]
    t = capped.table
    done = np.isfinite(t.finish_s)
    assert np.all(done | t.rejected)
    assert np.all((t.scheduled_s - t.arrival_s)[done] <= 5.0 + 1e-9)
