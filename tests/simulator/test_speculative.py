"""Speculative decoding: the acceptance formula against the simulator's Monte Carlo, and its effects."""

import numpy as np
import pytest

from core.scheduler import accepted
from simulator.scenario import parse_scenario
from simulator.simulation import simulate
from simulator.speculative import expected_tokens


def scenario(spec=None, rate=0.2, n=200, out=200, max_seqs=256, model="llama-3.1-8b", **serving):
    return parse_scenario(
        {
            "seed": 1,
            "model": model,
            "hardware": {"gpu": "h100-sxm"},
            "serving": {"speculative": spec, "batching": {"max_num_seqs": max_seqs}, **serving},
            "workload": {
                "arrival": {"process": "constant", "rate_per_s": rate},
                "prompt_tokens": {"dist": "fixed", "value": 500},
                "output_tokens": {"dist": "fixed", "value": out},
                "num_requests": n,
            },
        }
    )


SELF = {"method": "self", "num_speculative_tokens": 3, "acceptance_rate": 0.6, "draft_cost_fraction": 0.02}


@pytest.mark.parametrize("alpha,k", [(0.0, 4), (0.5, 1), (0.6, 3), (0.8, 5), (1.0, 2)])
def test_expected_tokens_formula_matches_sampling(alpha, k):
    rng = np.random.default_rng(0)
    draws = [accepted(rng, alpha, k) + 1 for _ in range(40_000)]
    assert np.mean(draws) == pytest.approx(expected_tokens(alpha, k), rel=0.01)
    assert min(draws) >= 1 and max(draws) <= k + 1


def test_simulator_monte_carlo_matches_the_formula():
    f = simulate(scenario(SELF, n=150, out=400))
    sched_rounds = f.summary["speculative"]["rounds"]
    per_round = f.summary["speculative"]["tokens_per_round"]
    # the last round of each request is cut at its length: compare on the uncut rounds
    assert sched_rounds > 20_000
    assert per_round == pytest.approx(expected_tokens(0.6, 3), rel=0.03)
    assert np.array_equal(f.table.generated, f.table.output_tokens)


def test_ttft_unchanged_and_tpot_better_at_batch_one():
    base, spec = simulate(scenario()), simulate(scenario(SELF))
    assert np.allclose(base.table.first_token_s, spec.table.first_token_s)  # isolated requests: same TTFT
    gain = base.summary["latency_s"]["tpot"]["p50"] / spec.summary["latency_s"]["tpot"]["p50"]
    assert gain > 1.5


def test_benefit_vanishes_at_large_batch():
    # 64 sequences decode at once: above max_batch_size the engine stops speculating
    busy = dict(rate=50.0, n=400, out=300)
    base = simulate(scenario(None, **busy))
    spec = simulate(scenario(dict(SELF, max_batch_size=16), **busy))
    b, s = base.summary["latency_s"]["tpot"]["p50"], spec.summary["latency_s"]["tpot"]["p50"]
    assert s == pytest.approx(b, rel=0.05)
    small_gain = (
        simulate(scenario(None)).summary["latency_s"]["tpot"]["p50"]
        / simulate(scenario(SELF)).summary["latency_s"]["tpot"]["p50"]
    )
    assert small_gain > 1.3 * (b / s)


def test_draft_model_costs_memory_and_prefill_time():
    spec = {
        "method": "draft",
        "draft_model": "qwen2.5-0.5b",
        "num_speculative_tokens": 4,
        "acceptance_rate": 0.7,
    }
    base = simulate(scenario(None, model="qwen2.5-32b", n=50))
    drafted = simulate(scenario(spec, model="qwen2.5-32b", n=50))
    assert drafted.memory.weight_bytes > base.memory.weight_bytes
    assert drafted.memory.num_blocks < base.memory.num_blocks
    ttft_b, ttft_d = base.summary["latency_s"]["ttft"]["p50"], drafted.summary["latency_s"]["ttft"]["p50"]
    assert ttft_b < ttft_d < 1.15 * ttft_b  # the draft prefills the prompt too: a little slower
    assert drafted.summary["latency_s"]["tpot"]["p50"] < 0.8 * base.summary["latency_s"]["tpot"]["p50"]


def test_needs_a_draft_model():
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match="needs draft_model"):
        scenario({"method": "draft"})


def test_graphed_rounds_drop_the_draft_steps_host_time():
    """Graphed rounds price the k draft steps without the serving loop's host terms (the round pays them once, in
    its verification): each round is k x (host per step + per sequence) shorter, prompts' TTFT unchanged."""
    from core.cost_model import BatchShape, CostModel
    from core.hardware import load_profile
    from core.model_spec import load_model
    from simulator.speculative import DraftCost

    spec = {
        "method": "draft",
        "draft_model": "qwen2.5-0.5b",
        "num_speculative_tokens": 3,
        "acceptance_rate": 0.7,
    }
    sc = scenario(spec, n=40, model="qwen2.5-7b")
    plain, graphed = (
        simulate(sc),
        simulate(scenario(dict(spec, graphed_rounds=True), n=40, model="qwen2.5-7b")),
    )
    assert np.allclose(plain.table.first_token_s, graphed.table.first_token_s)
    t_plain, t_graphed = (f.summary["latency_s"]["tpot"]["p50"] for f in (plain, graphed))
    profile, draft = load_profile("h100-sxm"), load_model("qwen2.5-0.5b")
    host = CostModel(profile, draft).overhead_time(1) - CostModel(
        profile, draft, serving_host=False
    ).overhead_time(1)
    assert host > 0
    cost = DraftCost(
        sc.serving.speculative, None, CostModel(profile, draft), CostModel(profile, draft, serving_host=False)
    )
    steps = [
        CostModel(profile, draft).step_time(BatchShape(decode_seqs=1, decode_context_tokens=600 + i))
        for i in range(3)
    ]
    assert cost(1, 600) == pytest.approx(sum(steps) - 3 * host, rel=1e-9)
    # a round yields (1 - 0.7^4) / 0.3 tokens: TPOT drops by about 3 host terms over that many tokens
    assert t_plain - t_graphed == pytest.approx(3 * host / expected_tokens(0.7, 3), rel=0.35)


def test_a_profiles_round_cost_is_added_once_per_draft_round():
    """efficiency.spec_round_s (benchmarks/fit_spec_round.py) is added to every draft-model round, once."""
    from core.cost_model import CostModel
    from core.hardware import load_profile
    from core.model_spec import load_model
    from simulator.speculative import DraftCost

    sc = scenario({"method": "draft", "draft_model": "qwen2.5-0.5b", "num_speculative_tokens": 3})
    base = load_profile("h100-sxm")
    with_round = base.model_copy(
        update={"efficiency": base.efficiency.model_copy(update={"spec_round_s": 2e-3})}
    )
    target, draft = load_model("qwen2.5-7b"), load_model("qwen2.5-0.5b")
    t0, t1 = (
        DraftCost(sc.serving.speculative, CostModel(p, target), CostModel(p, draft))(2, 900)
        for p in (base, with_round)
    )
    assert t1 - t0 == pytest.approx(2e-3, rel=1e-9)
