"""Tensor, pipeline and expert parallelism: collective costs against their formulas, how weights and KV
split, what fits where, and the effects the literature reports (TP lowers TPOT but not by tp×; PP
adds capacity, not speed)."""

import math

import numpy as np
import pytest

from core.cost_model import BatchShape, CostModel
from core.errors import ConfigError
from core.hardware import load_profile
from core.model_spec import load_model
from core.parallelism import (
    LATENCY_HOPS,
    Parallelism,
    all_to_all_time,
    allgather_time,
    allreduce_time,
    kv_bytes_per_token_per_gpu,
    kv_heads_per_gpu,
    send_time,
    shard,
    virtual_engines,
    weight_bytes_per_gpu,
)
from simulator.memory import plan_memory
from simulator.scenario import Serving, parse_scenario
from simulator.simulation import simulate

H100 = load_profile("h100-sxm")
L70 = load_model("llama-3.1-70b")
L8 = load_model("llama-3.1-8b")


def decode(n: int, ctx_each: int) -> BatchShape:
    return BatchShape(decode_seqs=n, decode_context_tokens=n * ctx_each)


# ---------------------------------------------------------------- collectives
@pytest.mark.parametrize("n", [2, 4, 8])
@pytest.mark.parametrize("nbytes", [16e3, 1e6, 256e6])
def test_collectives_follow_their_formulas(n, nbytes):
    ic = H100.interconnect
    lat = LATENCY_HOPS * ic.latency_us * 1e-6
    rate = ic.efficiency * ic.bandwidth_gbps * 1e9
    assert allreduce_time(nbytes, n, ic) == pytest.approx(lat + 2 * (n - 1) / n * nbytes / rate)
    assert allgather_time(nbytes, n, ic) == pytest.approx(lat + (n - 1) / n * nbytes / rate)
    assert all_to_all_time(nbytes, n, ic) == pytest.approx(lat + (n - 1) / n * nbytes / rate)
    assert send_time(nbytes, ic) == pytest.approx(lat + nbytes / rate)
    assert allreduce_time(nbytes, 1, ic) == 0.0


def test_large_allreduce_runs_at_about_nccl_bus_bandwidth():
    # 1 GiB over 8 H100s: NCCL reaches ~370 GB/s bus bandwidth on NVLink (nccl-tests issue 212)
    t = allreduce_time(2**30, 8, H100.interconnect)
    busbw = 2 * 7 / 8 * 2**30 / t
    assert 340e9 < busbw < 380e9


def test_step_communication_is_two_allreduces_per_layer():
    c = CostModel(H100, L70, tp=4)
    tokens = 64
    hidden = tokens * L70.hidden_size * 2.0
    expected = 2 * L70.num_layers * allreduce_time(hidden, 4, H100.interconnect)
    assert c.communication_time(tokens) == pytest.approx(expected)
    logits = allgather_time(tokens * L70.vocab_size * 2.0, 4, H100.interconnect)
    assert c.communication_time(tokens, tokens) == pytest.approx(expected + logits)
    assert c.breakdown(decode(tokens, 1000))["communication"] == pytest.approx(expected + logits)


# ---------------------------------------------------------------- splits
def test_gemm_shards_column_and_row_parallel():
    g = {x.name: x for x in L70.dense_gemms}
    assert shard(L70, g["qkv"], 8) == (8192, (64 // 8 + 2 * 1) * 128)
    assert shard(L70, g["o"], 8) == (8192 // 8, 8192)
    assert shard(L70, g["gate_up"], 8) == (8192, 2 * 28672 // 8)
    assert shard(L70, g["down"], 8) == (28672 // 8, 8192)
    assert shard(L70, L70.lm_head, 8) == (8192, math.ceil(L70.vocab_size / 8))


def test_kv_heads_split_then_replicate():
    # Llama-3.1-8B has 8 KV heads: split up to tp = 8, one replicated head per GPU beyond
    assert [kv_heads_per_gpu(L8, tp) for tp in (1, 2, 4, 8, 16)] == [8, 4, 2, 1, 1]
    full = L8.kv_bytes_per_token("bf16")
    per_gpu = [kv_bytes_per_token_per_gpu(L8, "bf16", Parallelism(tp))[0] for tp in (1, 2, 8, 16)]
    assert per_gpu == pytest.approx([full, full / 2, full / 8, full / 8])
    # pipeline stages hold their own layers' KV
    assert kv_bytes_per_token_per_gpu(L8, "bf16", Parallelism(1, 4))[0] == pytest.approx(full / 4)


def test_weights_per_gpu_add_up_to_the_model():
    total = L70.weight_bytes("bf16")
    for tp, pp in ((2, 1), (4, 1), (8, 1), (1, 2), (2, 2), (1, 4)):
        per_gpu = weight_bytes_per_gpu(L70, "bf16", Parallelism(tp, pp))
        # every GPU holds its share; replicated norms and (pp) one vocabulary table per stage add a little
        assert total / (tp * pp) <= per_gpu * (1 + 1e-9) < 1.03 * total / (tp * pp), (tp, pp)


def test_invalid_splits_fail_in_one_line():
    with pytest.raises(ConfigError, match="attention heads"):
        Parallelism(3).check(L8)
    with pytest.raises(ConfigError, match="no experts"):
        Parallelism(2, 1, 2).check(L8)
    with pytest.raises(ConfigError, match="pipeline_parallel"):
        parse_scenario(
            {
                "hardware": {"gpus_per_replica": 3, "pipeline_parallel": 2},
                "workload": {"arrival": {"rate_per_s": 1}},
            }
        )
    assert Parallelism.of(
        parse_scenario(
            {
                "hardware": {"gpus_per_replica": 8, "pipeline_parallel": 2},
                "workload": {"arrival": {"rate_per_s": 1}},
            }
        ).hardware
    ) == Parallelism(4, 2, 1)


# ---------------------------------------------------------------- memory
@pytest.mark.parametrize("gpus", [1, 2, 4, 8])
def test_70b_fits_on_two_to_eight_h100s_not_one(gpus):
    plan = plan_memory(H100, L70, Serving(), tp=gpus)
    assert plan.fits == (gpus > 1)
    if gpus > 1:
        assert plan.weight_bytes < 80 * 2**30 / gpus * 1.7
        assert plan.kv_tokens > 20_000


def test_more_gpus_hold_more_kv_and_pipeline_stages_fit_too():
    tokens = [plan_memory(H100, L70, Serving(), tp=n).kv_tokens for n in (2, 4, 8)]
    assert tokens[0] < tokens[1] < tokens[2]
    assert plan_memory(H100, L70, Serving(), tp=1, pp=2).fits
    assert plan_memory(H100, L70, Serving(), tp=2, pp=2).kv_tokens > tokens[0]


def test_virtual_engines_split_seqs_and_blocks():
    ves = virtual_engines(3, 256, 1000)
    assert sum(s for s, _ in ves) == 256 and sum(b for _, b in ves) == 1000
    assert max(s for s, _ in ves) - min(s for s, _ in ves) <= 1


# ---------------------------------------------------------------- effects
def test_tensor_parallel_lowers_tpot_at_small_batch_but_not_by_tp():
    one, two, four = (CostModel(H100, L8, tp=tp) for tp in (1, 2, 4))
    t1, t2, t4 = (c.step_time(decode(1, 1000)) for c in (one, two, four))
    assert t1 > t2 > t4
    assert 1.2 < t1 / t2 < 1.9  # all-reduces and replicated work keep it under 2x
    assert t1 / t4 < 3.2
    # the shortfall is mostly the all-reduces
    assert two.breakdown(decode(1, 1000))["communication"] > 0.1 * (t2 - t1 / 2)


def test_pipeline_parallel_adds_capacity_not_speed():
    one = CostModel(H100, L8)
    two = CostModel(H100, L8, pp=2)
    # one request: the step goes through both stages plus one activation send: no faster
    t1, t2 = one.step_time(decode(1, 1000)), two.step_time(decode(1, 1000))
    send = send_time(2 * L8.hidden_size * 2.0, H100.interconnect)
    assert t2 == pytest.approx(t1 + send)
    # many requests: two virtual engines of half the batch each, one step of each in flight per stage
    m1 = plan_memory(H100, L8, Serving())
    m2 = plan_memory(H100, L8, Serving(), pp=2)
    assert m2.kv_tokens > 1.8 * m1.kv_tokens  # each GPU holds half the layers' weights and KV
    batch = 256
    tput1 = batch / one.step_time(decode(batch, 2000))
    tput2 = sum(s / two.step_time(decode(s, 2000)) for s, _ in virtual_engines(2, batch, m2.num_blocks))
    assert tput2 > 1.3 * tput1


def test_simulated_70b_on_4_gpus_beats_2_on_tpot():
    def run(gpus):
        s = parse_scenario(
            {
                "model": "llama-3.1-70b",
                "hardware": {"gpu": "h100-sxm", "gpus_per_replica": gpus},
                "workload": {
                    "arrival": {"process": "poisson", "rate_per_s": 1.0},
                    "prompt_tokens": {"dist": "fixed", "value": 500},
                    "output_tokens": {"dist": "fixed", "value": 50},
                    "num_requests": 40,
                },
            }
        )
        return simulate(s)

    assert not run(1).fits
    two, four = run(2), run(4)
    assert four.summary["latency_s"]["tpot"]["p50"] < 0.8 * two.summary["latency_s"]["tpot"]["p50"]
    assert np.isfinite(four.table.finish_s).all()
