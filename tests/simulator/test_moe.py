"""MoE routing: touched experts per step under top-k with a skew, checked against a Monte Carlo of the
routing itself; small batches read only the touched experts' weights; expert parallelism's all-to-all."""

import numpy as np
import pytest

from core.cost_model import BatchShape, CostModel
from core.hardware import load_profile
from core.model_spec import load_model
from core.parallelism import (
    all_to_all_time,
    allgather_time,
    allreduce_time,
    expected_touched,
    expert_inclusion,
    experts_by_gpu,
)
from simulator.scenario import parse_scenario
from simulator.simulation import simulate

H100 = load_profile("h100-sxm")
MIXTRAL = load_model("mixtral-8x7b")
DSV2 = load_model("deepseek-v2-lite")


def decode(n: int, ctx_each: int = 1000) -> BatchShape:
    return BatchShape(decode_seqs=n, decode_context_tokens=n * ctx_each)


def route(q: np.ndarray, tokens: int, rng: np.random.Generator) -> np.ndarray:
    """Top-k choices of `tokens` tokens with inclusion probabilities q (sum k): systematic sampling picks
    exactly k distinct experts per token with exactly these marginals (Madow 1949)."""
    edges = np.concatenate([[0.0], np.cumsum(q)])
    k = round(q.sum())
    u = rng.random((tokens, 1)) + np.arange(k)
    return np.searchsorted(edges, u, side="right") - 1


@pytest.mark.parametrize(
    "experts,k,skew", [(8, 2, 0.0), (8, 2, 1.0), (64, 6, 0.0), (64, 6, 1.2), (64, 6, 2.5)]
)
def test_inclusion_probabilities_are_a_valid_top_k(experts, k, skew):
    q = expert_inclusion(experts, k, skew)
    assert q.sum() == pytest.approx(k)
    assert np.all((q > 0) & (q <= 1.0 + 1e-12))
    assert np.all(np.diff(q) <= 1e-12)  # hottest first
    if skew == 0:
        assert q == pytest.approx(np.full(experts, k / experts))


@pytest.mark.parametrize("experts,k,skew", [(8, 2, 0.0), (8, 2, 1.5), (64, 6, 0.0), (64, 6, 1.2)])
def test_touched_experts_match_a_monte_carlo(experts, k, skew):
    rng = np.random.default_rng(7)
    q = expert_inclusion(experts, k, skew)
    for tokens in (1, 3, 16, 64):
        trials = [route(q, tokens, rng) for _ in range(3000)]
        for t in trials[:50]:  # each token picks k distinct experts
            assert all(len(set(row)) == k for row in t)
        mc = np.mean([len(np.unique(t)) for t in trials])
        assert expected_touched(q, tokens) == pytest.approx(mc, rel=0.02), tokens


def test_skew_touches_fewer_experts_and_reads_less():
    uniform = CostModel(H100, MIXTRAL, tp=2)
    skewed = CostModel(H100, MIXTRAL, tp=2, routing_skew=1.5)
    assert uniform.experts_touched(1) == pytest.approx(2.0) == skewed.experts_touched(1)
    for n in (4, 8, 16):
        assert skewed.experts_touched(n) < uniform.experts_touched(n) - 0.5
        assert skewed.step_time(decode(n)) < uniform.step_time(decode(n))
    # a large batch touches every expert either way
    assert skewed.experts_touched(512) == pytest.approx(8.0, abs=0.01)
    assert skewed.step_time(decode(512)) == pytest.approx(uniform.step_time(decode(512)), rel=0.01)


def test_small_batch_decode_reads_only_touched_experts():
    c = CostModel(H100, DSV2)  # 64 experts, top-6
    assert c.experts_touched(1) == pytest.approx(6.0)
    assert c.experts_touched(4096) == pytest.approx(64.0, abs=0.01)
    expert_bytes = sum(g.layers * g.k * g.n for g in DSV2.expert_gemms) * 2.0
    # the routed experts' part of a step grows with the experts its tokens touch until all are read
    t1, t8, t64 = (c.expert_time(n) for n in (1, 8, 64))
    assert t1 < t8 < t64
    read_all = 64 * expert_bytes / (c.gemm_eff.memory * c.bw)
    assert 6 / 64 < t1 / read_all < 1.5 * 6 / 64  # 6 of 64 experts' weights (plus kernel launches)


def test_expert_parallel_deals_experts_and_pays_all_to_all():
    ep = CostModel(H100, MIXTRAL, tp=4, ep=4)
    q = expert_inclusion(8, 2)
    by_gpu = experts_by_gpu(q, 4)
    assert [len(g) for g in by_gpu] == [2, 2, 2, 2]
    assert sum(g.sum() for g in by_gpu) == pytest.approx(2.0)  # every (token, expert) pair lands somewhere
    tokens, ic = 256, H100.interconnect
    hidden = tokens * MIXTRAL.hidden_size * 2.0
    expected = MIXTRAL.num_layers * (
        allreduce_time(hidden, 4, ic)
        + 2 * all_to_all_time(hidden / 4 * 2, 4, ic)
        + allgather_time(hidden, 4, ic)
    )
    assert ep.communication_time(tokens) == pytest.approx(expected)
    # whole experts per GPU: at batch 1 a GPU reads one full expert where TP reads quarters of two
    tp = CostModel(H100, MIXTRAL, tp=4)
    assert ep.expert_time(1) > tp.expert_time(1)


def test_routing_skew_is_a_scenario_setting():
    def run(skew):
        s = parse_scenario(
            {
                "model": "mixtral-8x7b",
                "hardware": {"gpu": "h100-sxm", "gpus_per_replica": 2},
                "workload": {
                    "moe_routing_skew": skew,
                    "arrival": {"process": "poisson", "rate_per_s": 2.0},
                    "prompt_tokens": {"dist": "fixed", "value": 200},
                    "output_tokens": {"dist": "fixed", "value": 100},
                    "num_requests": 40,
                },
            }
        )
        return simulate(s).summary["latency_s"]["tpot"]["p50"]

    assert run(2.0) < run(0.0)
