"""What a model's architecture adds to our engine's step beyond its GEMMs and attention FLOPs: the small kernels a
layer launches (counted in H200 kernel profiles) and the absorbed MLA prompt kernel's SM occupancy."""

import pytest

from core.cost_model import (
    ELEMENTWISE_SET,
    MLA_PREFILL_ROWS,
    ROUTING_KERNELS,
    WALK_KV_ELEMS,
    BatchShape,
    CostModel,
    absorbed_prefill_share,
    kv_walk_ratio,
    routing_kernels_per_layer,
    small_kernels_per_layer,
)
from core.engine_profile import load_engine_profile
from core.graphs import SERVING_GRAPHS
from core.hardware import load_profile
from core.model_spec import load_model


@pytest.mark.parametrize(
    "name, kernels",
    [
        ("llama-3.1-8b", 4),
        ("qwen2.5-7b", 4),
        ("gemma-3-12b", 10),
        ("mixtral-8x7b", 9),
    ],  # Mixtral: 10 profiled with the router's top-k and softmax, one uniform-routing kernel now
)
def test_small_kernels_a_layer_are_the_profiled_counts(name, kernels):
    assert small_kernels_per_layer(load_model(name)) == kernels


def test_deepseek_counts_its_one_dense_layer_apart():
    m = load_model("deepseek-v2-lite")  # 27 layers, the first dense: routing on 26 of them
    # two norms and the act-mul, MLA's four (its fused glue, engine.mla.mla_rope_cache, and what follows the
    # attention); routing and the shared expert's two on the MoE layers
    assert small_kernels_per_layer(m) == pytest.approx(7 + 7 * 26 / 27)


def test_each_extra_small_kernel_costs_the_calibrated_groups_share():
    prof = load_profile("h200")
    gemma, qwen = load_model("gemma-3-12b"), load_model("qwen2.5-7b")
    launch = prof.efficiency.elementwise.launch_s
    cm = CostModel(prof, gemma, graph_padding=SERVING_GRAPHS)  # our engine's steps: priced with its graphs
    assert CostModel(prof, gemma).small_kernels_s == 0.0  # a bare GPU price (another engine's fit) adds none
    assert cm.small_kernels_s == pytest.approx(gemma.num_layers * launch * (10 / ELEMENTWISE_SET - 1))
    qwen_cm = CostModel(prof, qwen, graph_padding=SERVING_GRAPHS)
    assert qwen_cm.small_kernels_s == 0.0  # the calibrated set itself
    b = BatchShape.of([], [700] * 8)
    assert cm.breakdown(b)["elementwise"] > cm.elementwise_time(8) - cm.small_kernels_s > 0
    # another engine's kernels are in its own fitted factors: no count added
    vllm = CostModel(prof, gemma, engine=load_engine_profile("vllm-h200"), graph_padding=SERVING_GRAPHS)
    assert vllm.small_kernels_s == 0.0


def test_routing_kernels_are_counted_once_where_the_moe_curve_times_them():
    # the h200 profile's MoE curve is fitted on points that time routing, align and combine with the experts
    # (calibrate.bench.Bench._moe): those kernels are not small kernels of their own there; on a profile without
    # the curve (expert GEMMs priced as weight GEMMs) they are
    mixtral = load_model("mixtral-8x7b")
    assert routing_kernels_per_layer(mixtral) == ROUTING_KERNELS
    assert routing_kernels_per_layer(load_model("llama-3.1-8b")) == 0.0
    h200, h100 = load_profile("h200"), load_profile("h100-sxm")
    assert h200.efficiency.moe is not None and h100.efficiency.moe is None
    for prof, kernels in ((h200, 9 - ROUTING_KERNELS), (h100, 9)):
        cm = CostModel(prof, mixtral, graph_padding=SERVING_GRAPHS)
        launch = prof.efficiency.elementwise.launch_s
        assert cm.small_kernels_s == pytest.approx(
            mixtral.num_layers * launch * (kernels / ELEMENTWISE_SET - 1)
        )


def test_absorbed_prompt_share_counts_programs_in_waves():
    rows_a_program = MLA_PREFILL_ROWS // 16  # DeepSeek-V2-Lite: 16 heads, 4 tokens a program
    assert absorbed_prefill_share(128, 16, 132) == pytest.approx(32 / 132)
    assert absorbed_prefill_share(132 * rows_a_program, 16, 132) == 1.0
    assert absorbed_prefill_share(2048, 16, 132) == pytest.approx(512 / (4 * 132))
    assert absorbed_prefill_share(128, 16, None) == 1.0  # a profile without an SM count: no occupancy term
    assert absorbed_prefill_share(128, 8, 132) == pytest.approx(16 / 132)  # tp 2: 8 tokens a program


def test_a_short_chunk_after_a_long_context_costs_more_than_its_flops_say():
    prof = load_profile("h200")
    cm = CostModel(prof, load_model("deepseek-v2-lite"))
    short, fresh = BatchShape.of([(128, 16384)]), BatchShape.of([(2048, 0)])
    # about the same pairs (2.1M vs 2.1M), a quarter of the SMs for the short chunk
    assert short.prefill_pairs == pytest.approx(fresh.prefill_pairs, rel=0.01)
    assert cm.attention_prefill_time(short) > 2.5 * cm.attention_prefill_time(fresh)


def test_the_prompt_kernels_walk_over_context_is_priced_as_the_sweep_models_heads():
    # a cached token costs the chunked kernel's walk the same whatever the KV heads and their width (WALK_KV_ELEMS:
    # Llama-3.1-8B's 8 x 128); MLA keeps its own latent bytes
    llama, qwen, gemma, ds = (
        load_model(n) for n in ("llama-3.1-8b", "qwen2.5-7b", "gemma-3-12b", "deepseek-v2-lite")
    )
    assert kv_walk_ratio(llama) == 1.0 and kv_walk_ratio(ds) == 1.0
    assert kv_walk_ratio(qwen) == pytest.approx(WALK_KV_ELEMS / (4 * 128))
    assert kv_walk_ratio(gemma) == pytest.approx(WALK_KV_ELEMS / (8 * 256))
    prof = load_profile("h200")
    cms = {m.name: CostModel(prof, m) for m in (llama, qwen, gemma)}
    for name, cm in cms.items():
        m = cm.model
        per_layer = cm.walk_tok_bytes / m.full_attention_layers
        assert per_layer == pytest.approx(2 * WALK_KV_ELEMS * 2)  # bf16 K and V of the sweep model's heads
        assert cm.kv_tok_bytes / m.full_attention_layers == pytest.approx(
            2 * m.num_kv_heads * m.head_dim * 2
        ), name
    # a short chunk after a long context: the walk sets its time, the same per layer for Qwen's 4 KV heads as Llama's 8
    b = BatchShape.of([(16, 16384)])
    per_layer = {n: cm.attention_prefill_time(b) / cm.model.full_attention_layers for n, cm in cms.items()}
    assert per_layer["qwen2.5-7b"] == pytest.approx(per_layer["llama-3.1-8b"], rel=0.02)
