"""Comparing configurations: side-by-side numbers, differences called out, break-even against an API."""

import math

import pytest

from simulator.comparison import HOURS_PER_MONTH, break_even, differences, table
from simulator.scenario import parse_scenario
from simulator.simulation import simulate

WORKLOAD = {
    "arrival": {"process": "poisson", "rate_per_s": 2.0},
    "prompt_tokens": {"dist": "fixed", "value": 500},
    "output_tokens": {"dist": "fixed", "value": 100},
    "num_requests": 80,
}


@pytest.fixture(scope="module")
def forecasts():
    out = {}
    for label, gpu, model in (
        ("A", "h100-sxm", "llama-3.1-8b"),
        ("B", "a100-80gb-sxm", "llama-3.1-8b"),
        ("C", "t4", "llama-3.1-70b"),
    ):
        out[label] = simulate(
            parse_scenario(
                {"model": model, "hardware": {"gpu": gpu}, "workload": WORKLOAD, "slo": {"ttft_s": 0.5}}
            )
        )
    return out


def test_table_has_the_simulated_numbers(forecasts):
    t = table(forecasts)
    assert t["TTFT p99 (ms)"]["A"] == pytest.approx(forecasts["A"].summary["latency_s"]["ttft"]["p99"] * 1e3)
    assert t["fits"] == {"A": "yes", "B": "yes", "C": "no"}
    assert "C" not in t["TTFT p99 (ms)"]


def test_differences_name_the_best_and_the_misfit(forecasts):
    notes = differences(forecasts)
    assert any(n.startswith("C does not fit") for n in notes)
    ttft = next(n for n in notes if n.startswith("best TTFT p99"))
    a, b = (forecasts[k].summary["latency_s"]["ttft"]["p99"] for k in "AB")
    assert ttft.startswith(f"best TTFT p99 (ms): {'A' if a < b else 'B'}")
    assert f"{max(a, b) / min(a, b):.2f}×" in ttft


def test_break_even_volume(forecasts):
    f = forecasts["A"]
    s = f.summary
    be = break_even(f, 0.2, 0.6)
    monthly = s["cost"]["total_usd"] / s["throughput"]["duration_s"] * 3600 * HOURS_PER_MONTH
    assert be.self_hosted_usd_per_month == pytest.approx(monthly)
    # 500 prompt + 100 output tokens: the blend weighs the prices 5:1
    assert be.api_usd_per_1m_tokens == pytest.approx((5 * 0.2 + 0.6) / 6)
    assert be.tokens_per_month * be.api_usd_per_1m_tokens / 1e6 == pytest.approx(monthly)
    assert be.requests_per_s == pytest.approx(be.tokens_per_month / (3600 * HOURS_PER_MONTH) / 600)
    assert break_even(forecasts["C"], 0.2, 0.6) is None
    assert math.isfinite(be.served_tokens_per_month)
