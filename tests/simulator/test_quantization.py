"""Quantization: bytes and compute rates per dtype, int4's dequantization cost, fp8 KV; their effects
(int4 wins at batch 1 on a bandwidth-bound GPU and loses its edge at large batch); the seed experiment."""

import math

import numpy as np
import pytest

from core.cost_model import (
    DEQUANT_INSTR_PER_WEIGHT,
    DEQUANT_TILE_TOKENS,
    BatchShape,
    CostModel,
    chunk_pairs,
    gemm_rate,
)
from core.hardware import load_profile
from core.model_spec import dtype_bytes, load_model
from simulator.memory import plan_memory
from simulator.scenario import Precision, Serving

H100, L4, T4 = load_profile("h100-sxm"), load_profile("l4"), load_profile("t4")
L8 = load_model("llama-3.1-8b")


def decode(n: int, ctx_each: int = 512) -> BatchShape:
    return BatchShape(decode_seqs=n, decode_context_tokens=n * ctx_each)


def prefill(n: int) -> BatchShape:
    return BatchShape(prefill_tokens=n, prefill_seqs=1, prefill_pairs=chunk_pairs(0, n))


# ---------------------------------------------------------------- mechanism
def test_weight_bytes_per_dtype():
    assert [dtype_bytes(d) for d in ("bf16", "fp8", "int8")] == [2.0, 1.0, 1.0]
    assert dtype_bytes("int4") == 0.5 + 2 / 128  # 4-bit weights + a 16-bit scale per group of 128
    lin, other = L8.linear_params, L8.other_params
    for d in ("bf16", "fp8", "int8", "int4"):
        assert L8.weight_bytes(d) == pytest.approx(lin * dtype_bytes(d) + other * 2.0)


def test_compute_rate_is_the_dtype_the_matrix_units_run():
    # H100: fp8 and int8 natively (W8A8), at their calibrated efficiencies when the profile has them
    e, peak, deq = gemm_rate(H100, "fp8")
    assert peak == pytest.approx(1978.9e12) and not deq
    fitted = getattr(H100.calibration, "gemm_by_dtype", None) or {}
    if "fp8" in fitted:
        assert e.compute == pytest.approx(fitted["fp8"]["compute"])
    assert gemm_rate(H100, "int8")[1] == pytest.approx(1978.9e12)
    # T4: int8 natively; no fp8 units, so fp8 weights are dequantized to 16-bit (weight-only)
    assert gemm_rate(T4, "int8")[1:] == (pytest.approx(130e12), False)
    assert gemm_rate(T4, "fp8")[1:] == (pytest.approx(65e12), True)
    # int4 is weight-only everywhere: 16-bit compute plus dequantization
    assert gemm_rate(H100, "int4")[1:] == (pytest.approx(989.4e12), True)
    assert gemm_rate(H100, "bf16")[1:] == (pytest.approx(989.4e12), False)


def test_int4_gemm_adds_dequantization_per_token_tile():
    bf16, int4 = CostModel(L4, L8, "bf16"), CostModel(L4, L8, "int4")
    k, n = 4096, 14336
    alu = L4.peak_tflops.fp32 * 1e12 / 2
    e = int4.gemm_eff
    for tokens in (1, 64, 65, 4096):
        compute16 = (2.0 * tokens * k * n + e.compute_ramp_flops) / (
            e.compute * int4.gemm_peak
        ) + e.compute_ramp_s
        deq = k * n * math.ceil(tokens / DEQUANT_TILE_TOKENS) * DEQUANT_INSTR_PER_WEIGHT / alu
        mem4 = (k * n * dtype_bytes("int4") + tokens * (k + n) * 2.0 + e.memory_ramp_bytes) / (
            e.memory * int4.bw
        ) + e.memory_ramp_s
        assert int4._weight_gemm(tokens, k, n) == pytest.approx(max(compute16 + deq, mem4) + e.launch_s)
    # batch 1: a quarter of the bytes; 4096 tokens: 16-bit compute plus dequantization, slower than bf16
    assert int4._weight_gemm(1, k, n) < 0.4 * bf16._weight_gemm(1, k, n)
    assert int4._weight_gemm(4096, k, n) > 1.05 * bf16._weight_gemm(4096, k, n)


def test_fp8_kv_halves_kv_bytes_and_doubles_blocks():
    bf, f8 = CostModel(H100, L8, kv_dtype="bf16"), CostModel(H100, L8, kv_dtype="fp8")
    assert f8.kv_tok_bytes == pytest.approx(bf.kv_tok_bytes / 2)
    long = decode(64, 16_000)
    assert f8.attention_decode_time(64, long.decode_context_tokens) < 0.55 * bf.attention_decode_time(
        64, long.decode_context_tokens
    )
    a, b = (plan_memory(H100, L8, Serving(precision=Precision(kv_dtype=d))) for d in ("bf16", "fp8"))
    assert b.block_bytes == pytest.approx(a.block_bytes / 2)
    assert b.num_blocks == pytest.approx(2 * a.num_blocks, abs=1)


# ---------------------------------------------------------------- effects
@pytest.mark.parametrize("gpu", ["l4", "t4"])
def test_int4_decode_much_faster_at_batch_one_on_a_bandwidth_bound_gpu(gpu):
    p = load_profile(gpu)
    bf16, int4 = CostModel(p, L8, "fp16"), CostModel(p, L8, "int4")
    assert bf16.step_time(decode(1)) / int4.step_time(decode(1)) > 2.2


def test_int4_advantage_shrinks_then_reverses_with_batch():
    bf16, int4 = CostModel(L4, L8, "bf16"), CostModel(L4, L8, "int4")
    ratios = [bf16.step_time(decode(n)) / int4.step_time(decode(n)) for n in (1, 16, 64, 256, 512)]
    assert all(b < a for a, b in zip(ratios, ratios[1:]))  # the edge shrinks as the batch grows
    assert ratios[0] > 2.2 and ratios[-1] < 1.0  # and at 512 sequences dequantization makes int4 slower
    assert int4.step_time(prefill(8192)) > bf16.step_time(prefill(8192))  # compute-bound prefill too


def test_w8a8_speeds_up_compute_bound_prefill_on_h100():
    times = {d: CostModel(H100, L8, d).step_time(prefill(8192)) for d in ("bf16", "int8", "fp8")}
    assert times["fp8"] < times["int8"] < times["bf16"]  # int8's measured rate is below fp8's on H100


# ---------------------------------------------------------------- the seed experiment
def test_seed_experiment_shapes():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from benchmarks.seed_experiment import sweep

    rows = sweep((128, 1024, 8192), engines=(("ours", "int4"),))
    assert {r["engine"].split()[0] for r in rows} == {"ours"} and len(rows) == 3
    ttft = np.array([r["ttft_s"] for r in rows])
    tps = np.array([r["decode_tokens_per_s"] for r in rows])
    # TTFT roughly linear in the prompt: 8x the tokens, 7-10x the time; per-token cost about constant
    assert 7.0 < ttft[2] / ttft[1] < 10.0
    per_1k = np.array([r["ttft_ms_per_1k_prompt"] for r in rows])
    assert per_1k.max() / per_1k.min() < 1.4
    # decode tokens/s roughly flat across a 64x range of prompt lengths
    assert tps.max() / tps.min() < 1.2
    assert 10 < tps.mean() < 60  # int4 12B on 320 GB/s: ~7 GB read per token
