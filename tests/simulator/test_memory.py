"""Memory plan: what fits, what does not, with the numbers."""

import pytest

from core.hardware import load_profile
from core.model_spec import load_model
from simulator.memory import GIB, plan_memory
from simulator.scenario import Memory, Precision, Serving


def test_llama8b_on_h100_numbers():
    m, p = load_model("llama-3.1-8b"), load_profile("h100-sxm")
    plan = plan_memory(p, m, Serving())
    assert plan.fits
    assert plan.weight_bytes == pytest.approx(m.param_count * 2)
    expected_kv = 0.9 * 80 * GIB - plan.weight_bytes - plan.activation_bytes - 1 * GIB
    assert plan.kv_bytes == pytest.approx(expected_kv)
    assert plan.num_blocks == int(expected_kv // (16 * 131072))
    assert plan.kv_tokens == plan.num_blocks * 16


def test_70b_does_not_fit_one_h100_but_fits_four():
    m, p = load_model("llama-3.1-70b"), load_profile("h100-sxm")
    one = plan_memory(p, m, Serving())
    assert not one.fits and one.num_blocks == 0
    text = one.explain()
    assert "weights 131.4 GiB" in text and "KV room left -" in text
    four = plan_memory(p, m, Serving(), tp=4)
    # every matrix splits 4 ways; only the norms (0.01% of the weights) are replicated
    assert four.fits and four.weight_bytes == pytest.approx(one.weight_bytes / 4, rel=1e-3)


def test_quantization_frees_room_for_kv():
    m, p = load_model("llama-3.1-8b"), load_profile("l4")
    bf16 = plan_memory(p, m, Serving())
    int4 = plan_memory(p, m, Serving(precision=Precision(weight_dtype="int4")))
    fp8kv = plan_memory(p, m, Serving(precision=Precision(weight_dtype="int4", kv_dtype="fp8")))
    assert int4.kv_bytes > bf16.kv_bytes
    assert fp8kv.num_blocks == pytest.approx(2 * int4.num_blocks, abs=1)


def test_utilisation_and_sliding_window_blocks():
    m, p = load_model("gemma-3-12b"), load_profile("h100-sxm")
    lo = plan_memory(p, m, Serving(memory=Memory(gpu_memory_utilization=0.5)))
    hi = plan_memory(p, m, Serving(memory=Memory(gpu_memory_utilization=0.9)))
    assert hi.num_blocks > lo.num_blocks > 0
    # blocks are sized by the 8 global layers; the 40 sliding layers cost 5x that per token, up to 1024 tokens
    assert hi.block_bytes == pytest.approx(16 * m.kv_bytes_per_token("bf16"))
    ratio = m.sliding_kv_bytes_per_token("bf16") / m.kv_bytes_per_token("bf16")
    assert ratio == pytest.approx(5.0)
    from core.kv_cache import BlockPool
    from core.scheduler import Scheduler, SchedulerConfig

    s = Scheduler(
        BlockPool(1000, 16), SchedulerConfig(8, 8192, sliding_window=m.sliding_window, sliding_ratio=ratio)
    )
    assert s.window_blocks(100) == 32 and s.window_blocks(5000) == 320


def test_a_model_whose_every_layer_slides_is_charged_as_full_attention():
    """Mistral-7B v0.1's config puts a 4,096-token window on all 32 layers: there are no full layers to size blocks
    by. Its blocks are its sliding layers' (as many as v0.3's, the same layers without a window), charged for every
    token, and the memory line says so; its attention is still priced over the window. (It read 0 blocks, "DOES NOT
    FIT", and the scheduler divided by zero.)"""
    import numpy as np

    from core.cost_model import BatchShape, CostModel
    from core.model_spec import spec_from_config
    from core.scheduler import sliding_terms
    from simulator.cluster import window_blocks

    v03, p = load_model("mistral-7b"), load_profile("h100-sxm")
    v01 = spec_from_config(dict(v03.config, sliding_window=4096), name="mistral-7b-v0.1")
    assert v01.sliding_layers == v01.num_layers == 32 and v01.full_attention_layers == 0
    a, b = plan_memory(p, v01, Serving()), plan_memory(p, v03, Serving())
    assert a.fits and a.num_blocks == b.num_blocks > 0 and a.block_bytes == b.block_bytes
    assert "every layer slides (4096-token window)" in a.explain() and not b.note
    assert sliding_terms(v01) == (4096, 0.0)  # charged for every token, no window blocks beside
    assert window_blocks(v01, np.array([100, 10_000]), 16) == 0
    long = BatchShape.of([], [16_000] * 8)  # decode at 16k tokens: v0.1's attention reads its window only
    assert CostModel(p, v01).step_time(long) < 0.9 * CostModel(p, v03).step_time(long)
