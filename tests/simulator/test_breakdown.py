"""Where the time goes: a typical prefill and decode step by operation group, each with what bounds it."""

import pytest

from simulator import api
from simulator.breakdown import breakdown_lines, step_breakdown, typical_steps
from simulator.cluster import plan_groups
from simulator.results import format_summary


def _forecast(prompt: int, gpus: int = 1, model: str = "llama-3.1-8b", gpu: str = "h100-sxm"):
    return api.forecast(
        {
            "model": model,
            "hardware": {"gpu": gpu, "gpus_per_replica": gpus},
            "workload": {
                "arrival": {"process": "poisson", "rate_per_s": 1.0},
                "prompt_tokens": {"dist": "fixed", "value": prompt},
                "output_tokens": {"dist": "fixed", "value": 40},
                "num_requests": 30,
            },
        }
    )


def test_groups_sum_to_the_cost_models_step_time():
    f = _forecast(2048)
    bd = step_breakdown(f)
    for kind, b in typical_steps(f).items():
        cm = plan_groups(f.scenario, f.model)[0].cost_model(f.model, f.scenario.workload.moe_routing_skew)
        assert bd[kind]["total_s"] == pytest.approx(cm.step_time(b))
        assert sum(g["time_s"] for g in bd[kind]["groups"]) == pytest.approx(bd[kind]["total_s"])
        assert sum(g["share"] for g in bd[kind]["groups"]) == pytest.approx(1.0)
    assert bd["prefill"]["shape"] == {"prompt_tokens": 2048}


def test_long_prompts_are_compute_bound_and_small_decode_batches_memory_bound():
    bd = step_breakdown(_forecast(4096))
    gemm = {k: next(g for g in step["groups"] if g["group"] == "gemm") for k, step in bd.items()}
    assert gemm["prefill"]["bound"] == "compute"
    assert gemm["decode"]["bound"] == "memory"
    assert {g["bound"] for g in bd["decode"]["groups"] if g["group"] == "overhead"} == {"host/launch"}


def test_tensor_parallel_steps_pay_communication_bound_by_the_interconnect():
    one, two = step_breakdown(_forecast(1024)), step_breakdown(_forecast(1024, gpus=2))
    assert "communication" not in {g["group"] for g in one["prefill"]["groups"]}
    comm = next(g for g in two["prefill"]["groups"] if g["group"] == "communication")
    assert comm["time_s"] > 0 and comm["bound"] == "interconnect"


def test_the_breakdown_is_in_the_terminal_summary():
    f = _forecast(512)
    text = format_summary(f)  # (the report: tests/simulator/test_report.py)
    assert all(line in text for line in breakdown_lines(step_breakdown(f)))


def test_a_model_that_does_not_fit_has_no_breakdown():
    f = _forecast(100, model="llama-3.1-70b", gpu="t4")
    assert not f.fits
    assert step_breakdown(f) is None


def test_an_engine_whose_host_overlaps_the_gpu_shows_the_overlap_and_still_sums_to_the_step():
    """transformers-generate (host.overlap): a step is the longer of host and GPU time, so the breakdown
    subtracts the overlapped host time in its own labelled row rather than showing shares above 100%."""
    f = api.forecast(
        {
            "model": "llama-3.1-8b",
            "hardware": {"gpu": "h200"},
            "engine": "transformers-generate",
            "serving": {"batching": {"mode": "static"}},
            "workload": {
                "arrival": {"process": "poisson", "rate_per_s": 1.0},
                "prompt_tokens": {"dist": "fixed", "value": 512},
                "output_tokens": {"dist": "fixed", "value": 40},
                "num_requests": 20,
            },
        }
    )
    bd = step_breakdown(f)
    for step in bd.values():
        rows = {g["group"]: g for g in step["groups"]}
        assert rows["host_overlapped"]["time_s"] < 0
        assert rows["host_overlapped"]["label"].startswith("host work overlapped")
        assert sum(g["time_s"] for g in step["groups"]) == pytest.approx(step["total_s"])
