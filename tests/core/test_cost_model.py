"""Cost model: monotone in the work, exact closed forms, and the decode-run shortcut equals stepping."""

import numpy as np
import pytest

from core.cost_model import BatchShape, CostModel, chunk_pairs, step_time
from core.hardware import load_profile
from core.model_spec import load_model


@pytest.fixture(scope="module")
def cm():
    return CostModel(load_profile("h100-sxm"), load_model("llama-3.1-8b"))


def prefill(n: int, prior: int = 0) -> BatchShape:
    return BatchShape(
        prefill_tokens=n, prefill_seqs=1, prefill_pairs=chunk_pairs(prior, n), prefill_context_tokens=prior
    )


def decode(n: int, ctx_each: int) -> BatchShape:
    return BatchShape(decode_seqs=n, decode_context_tokens=n * ctx_each)


@pytest.mark.parametrize(
    "prior,chunk,window", [(0, 1, 0), (0, 7, 0), (5, 3, 0), (0, 20, 8), (6, 5, 8), (30, 4, 8), (3, 2, 8)]
)
def test_chunk_pairs_matches_brute_force(prior, chunk, window):
    brute = sum(min(pos, window) if window else pos for pos in range(prior + 1, prior + chunk + 1))
    assert chunk_pairs(prior, chunk, window) == pytest.approx(brute)


def test_prefill_time_grows_with_prompt(cm):
    times = [cm.step_time(prefill(n)) for n in (1, 16, 128, 512, 2048, 8192, 16384)]
    assert all(b > a for a, b in zip(times, times[1:]))
    # long prompts are compute bound: doubling the prompt roughly doubles the time; causal attention,
    # quadratic in the prompt, adds more (a 16k prompt's attention is ~30% of its FLOPs on Llama-3.1-8B)
    assert 1.9 < times[-1] / times[-2] < 2.6


def test_decode_time_grows_with_batch_and_context(cm):
    by_batch = [cm.step_time(decode(n, 1024)) for n in (1, 8, 64, 256)]
    by_ctx = [cm.step_time(decode(32, c)) for c in (128, 1024, 8192, 32768)]
    assert all(b > a for a, b in zip(by_batch, by_batch[1:]))
    assert all(b > a for a, b in zip(by_ctx, by_ctx[1:]))
    # small-batch decode is weight-read bound: batch 8 costs barely more than batch 1
    assert by_batch[1] / by_batch[0] < 1.1


def test_decode_at_batch_one_is_near_the_weight_read_floor(cm):
    t = cm.step_time(decode(1, 512))
    floor = cm.weight_read_floor()
    assert floor < t < 1.6 * floor


def test_fp8_weights_speed_up_decode_and_prefill():
    p, m = load_profile("h100-sxm"), load_model("llama-3.1-8b")
    bf16, fp8 = CostModel(p, m, "bf16"), CostModel(p, m, "fp8")
    assert fp8.step_time(decode(1, 512)) < 0.7 * bf16.step_time(decode(1, 512))
    assert fp8.step_time(prefill(8192)) < 0.75 * bf16.step_time(prefill(8192))


def test_faster_gpu_is_faster():
    m = load_model("llama-3.1-8b")
    shape = decode(16, 2048)
    times = {g: step_time(load_profile(g), m, shape) for g in ("t4", "a100-80gb-sxm", "h100-sxm", "h200")}
    assert times["t4"] > times["a100-80gb-sxm"] > times["h100-sxm"] > times["h200"]


def test_mixed_step_costs_less_than_separate_steps(cm):
    mixed = BatchShape(
        prefill_tokens=512,
        prefill_seqs=1,
        prefill_pairs=chunk_pairs(0, 512),
        decode_seqs=32,
        decode_context_tokens=32 * 1000,
    )
    assert cm.step_time(mixed) < cm.step_time(prefill(512)) + cm.step_time(decode(32, 1000))
    assert cm.step_time(mixed) > max(cm.step_time(prefill(512)), cm.step_time(decode(32, 1000)))


def test_breakdown_sums_to_step_time_and_split_is_consistent(cm):
    b = BatchShape(
        prefill_tokens=300,
        prefill_seqs=2,
        prefill_pairs=chunk_pairs(0, 300),
        decode_seqs=10,
        decode_context_tokens=9000,
    )
    parts = cm.breakdown(b)
    assert set(parts) == {
        "gemm",
        "attention_prefill",
        "attention_decode",
        "elementwise",
        "communication",
        "overhead",
    }
    assert parts["communication"] == 0.0  # one GPU
    assert sum(parts.values()) == pytest.approx(cm.step_time(b))
    total, pre = cm.step_split(b)
    assert total == pytest.approx(cm.step_time(b))
    assert parts["attention_prefill"] < pre < total


@pytest.mark.parametrize("model", ["llama-3.1-8b", "gemma-3-12b", "mixtral-8x7b", "deepseek-v2-lite"])
def test_decode_line_equals_step_by_step(model):
    c = CostModel(load_profile("h100-sxm"), load_model(model))
    for n, ctx0, k in ((1, 100, 50), (8, 4000, 300), (64, 64 * 900, 2000), (3, 3 * 1000, 40)):
        steps = c.decode_step_times(n, ctx0 + n * np.arange(k))
        singles = [
            c.step_time(BatchShape(decode_seqs=n, decode_context_tokens=ctx0 + n * j))
            for j in (0, k // 2, k - 1)
        ]
        assert steps[[0, k // 2, k - 1]] == pytest.approx(singles, rel=1e-12)
        line = c.decode_step_line(n, ctx0, k)
        if line is not None:
            a, b = line
            assert a + b * np.arange(k) == pytest.approx(steps, rel=1e-9)


def test_moe_small_batch_reads_only_touched_experts():
    c = CostModel(load_profile("h100-sxm"), load_model("mixtral-8x7b"))
    assert c.experts_touched(1) == pytest.approx(2.0)
    assert 7.9 < c.experts_touched(256) <= 8.0
    # batch 1 reads ~2 of 8 experts: much cheaper than a batch that touches all of them
    assert c.step_time(decode(1, 512)) < 0.5 * c.step_time(decode(64, 512))


def test_step_split_equals_the_breakdown_sum(cm):
    shapes = [
        BatchShape(
            prefill_tokens=300,
            prefill_seqs=2,
            prefill_pairs=chunk_pairs(0, 300),
            decode_seqs=10,
            decode_context_tokens=9000,
        ),
        BatchShape(decode_seqs=7, decode_context_tokens=7000),
        BatchShape(
            prefill_tokens=4096,
            prefill_seqs=1,
            prefill_pairs=chunk_pairs(1000, 4096),
            prefill_context_tokens=1000,
        ),
    ]
    for b in shapes * 2:  # the second pass hits the cache
        total, pre = cm.step_split(b)
        parts = cm.breakdown(b)
        assert total == pytest.approx(sum(parts.values()), rel=1e-12)
        assert parts["attention_prefill"] <= pre <= total


def test_eager_prompt_steps_wait_for_the_host_to_launch():
    """cuda_graphs: decode_only — a step with prompt tokens lasts at least layers x the eager launch time;
    decode-only steps (CUDA graphs) and steps whose GPU work is longer are unchanged."""
    base = load_profile("h100-sxm")
    prof = base.model_copy(
        update={"efficiency": base.efficiency.model_copy(update={"eager_launch_s_per_layer": 600e-6})}
    )
    spec = load_model("llama-3.1-8b")
    plain, eager = CostModel(prof, spec), CostModel(prof, spec, eager_prefill=True)
    floor = spec.num_layers * 600e-6
    small = BatchShape(prefill_tokens=64, prefill_seqs=1, prefill_pairs=chunk_pairs(0, 64), decode_seqs=8,
                       decode_context_tokens=8000)  # fmt: skip
    assert plain.step_time(small) < floor
    assert eager.step_time(small) == pytest.approx(floor)
    assert eager.breakdown(small)["launch_wait"] == pytest.approx(floor - plain.step_time(small))
    total, prompt = eager.step_split(small)
    assert total == pytest.approx(floor)
    p_total, p_prompt = plain.step_split(small)
    assert prompt > p_prompt and prompt < total  # the wait is split by the prompt's share of tokens
    big = prefill(8192)
    assert eager.step_time(big) == pytest.approx(plain.step_time(big)) and plain.step_time(big) > floor
    d = decode(8, 1000)
    assert eager.step_time(d) == pytest.approx(plain.step_time(d))
    # a profile without a measured launch time has no floor: the flag alone changes nothing
    none = base.model_copy(
        update={"efficiency": base.efficiency.model_copy(update={"eager_launch_s_per_layer": 0.0})}
    )
    assert CostModel(none, spec, eager_prefill=True).step_time(small) == pytest.approx(
        CostModel(none, spec).step_time(small)
    )
    # the calibrated H100 carries the engine's measured launch time (hundreds of µs a layer)
    assert 1e-4 < base.efficiency.eager_launch_s_per_layer < 5e-3


def test_a_blended_gemm_curve_prices_the_knee_at_the_ridge():
    """OpEfficiency.blend on the dense GEMM curve (calibrate.fit.BLENDED): a weight GEMM costs the q-norm of its
    compute and memory terms, so it is dearest relative to the max form where they are equal (cuBLAS's tile-size
    knee, 160-192 rows on an H200) and tends to the max form away from it; without `blend`, the max form."""
    prof = load_profile("h200")
    plain = prof.efficiency.gemm.model_copy(
        update={
            "compute_ramp_s": 0.0,
            "memory_ramp_s": 0.0,
            "compute_ramp_flops": 0.0,
            "memory_ramp_bytes": 0.0,
            "launch_s": 0.0,
            "blend": None,
        }  # fmt: skip
    )
    q = 3.0
    costs = {}
    for eff in (plain, plain.model_copy(update={"blend": q})):
        p = prof.model_copy(update={"efficiency": prof.efficiency.model_copy(update={"gemm": eff})})
        cm = CostModel(p, load_model("llama-3.1-8b"), serving_host=False)
        costs[eff.blend] = {
            m: cm._weight_gemm(m, 4096, 4096) for m in (1, 8, 64, 128, 160, 192, 256, 2048, 8192)
        }
    ratio = {m: costs[q][m] / costs[None][m] for m in costs[q]}
    ridge = max(ratio, key=ratio.get)
    assert ridge in (128, 160, 192, 256) and 1.15 < ratio[ridge] <= 2 ** (1 / q) + 1e-9
    assert ratio[1] < 1.01 and ratio[8192] < 1.02 and all(r >= 1.0 for r in ratio.values())


def test_one_row_gemms_take_the_gemv_curve_where_the_profile_has_one():
    """A batch-1 step's projections and a single logits row run through the engine's GEMV (engine.fused.gemv):
    priced on efficiency.gemv where the profile has it, the gemm curve from two rows on and without it."""
    from core.cost_model import CostModel
    from core.hardware import OpEfficiency, load_profile
    from core.model_spec import load_model

    prof = load_profile("h100-sxm")
    slow = OpEfficiency(compute=0.5, memory=0.1, launch_s=1e-4)  # far from the gemm curve: the switch shows
    with_gemv = prof.model_copy(update={"efficiency": prof.efficiency.model_copy(update={"gemv": slow})})
    spec = load_model("llama-3.1-8b")
    plain, one = CostModel(prof, spec, "bf16", "bf16"), CostModel(with_gemv, spec, "bf16", "bf16")
    k, n = spec.hidden_size, spec.hidden_size
    want = (k * n * 2 + (k + n) * 2) / (0.1 * prof.memory_bandwidth) + 1e-4
    assert abs(one._weight_gemm(1, k, n) - want) / want < 1e-9
    assert one._weight_gemm(2, k, n) == plain._weight_gemm(2, k, n)  # two rows: cuBLAS, the gemm curve
    assert one.gemm_time(1, 1) > 10 * plain.gemm_time(1, 1)  # every projection and the LM head
    assert one.gemm_time(0, 1) > plain.gemm_time(0, 1)  # one logits row of a prompt step too
    assert one.gemm_time(0, 2) == plain.gemm_time(0, 2)
    # int4 weights do not stream through the GEMV (engine/quant.py's kernels): only their 16-bit LM head does
    q_plain, q_one = CostModel(prof, spec, "int4", "bf16"), CostModel(with_gemv, spec, "int4", "bf16")
    assert q_one._weight_gemm(1, k, n) == q_plain._weight_gemm(1, k, n)
    assert q_one.gemm_time(1, 1) > q_plain.gemm_time(1, 1)


# ---------------------------------------------------------------- async scheduling (CostModel(async_decode=True))
def test_async_decode_step_is_the_longer_of_gpu_work_and_host_terms():
    """A decode-only step under async scheduling costs max(GPU work, host terms); a step with prompt tokens is
    unchanged; the decode closed forms (per-step times, the run's line) agree with step_time; decode_hidden is
    what the overlap took off."""
    from core.graphs import SERVING_GRAPHS

    prof, spec = load_profile("h200"), load_model("llama-3.1-8b")
    waits = CostModel(prof, spec, graph_padding=SERVING_GRAPHS)
    over = CostModel(prof, spec, graph_padding=SERVING_GRAPHS, async_decode=True)
    assert over.decode_overlap and not waits.decode_overlap
    for n in (1, 64, 256):
        b = BatchShape(decode_seqs=n, decode_context_tokens=1000 * n)
        host = waits.host_step + n * waits.host_seq
        assert host > 0
        gpu = waits.step_time(b) - host
        assert over.step_time(b) == pytest.approx(max(gpu, host), rel=1e-12)
        assert over.decode_hidden(b) == pytest.approx(min(gpu, host), rel=1e-12)
        assert over.step_split(b)[0] == pytest.approx(over.step_time(b), rel=1e-12)
        ctx = 1000 * n + n * np.arange(50)
        times = over.decode_step_times(n, ctx)
        assert times[0] == pytest.approx(over.step_time(b), rel=1e-9)
        line = over.decode_step_line(n, float(ctx[0]), 50)
        if line is not None:
            a, slope = line
            assert np.allclose(a + slope * np.arange(50), times, rtol=1e-9)
    mixed = BatchShape.of([(512, 0)], [1000] * 8)
    assert over.step_time(mixed) == pytest.approx(waits.step_time(mixed), rel=1e-12)
    assert over.decode_hidden(mixed) == 0.0
