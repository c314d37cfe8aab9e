"""Attention points of other heads than the calibrated model's (GQA ratios, head widths) in the same groups."""

import pytest

from calibrate.accounting import attention_decode_work, attention_prefill_work
from calibrate.plan import ATTENTION_VARIANTS, Limits, make_plan
from core.cost_model import BatchShape, CostModel, op_time
from core.hardware import load_profile
from core.model_spec import load_model


def test_plan_adds_qwen_and_gemma_heads_to_a_llama_sweep():
    llama = load_model("llama-3.1-8b")
    full = make_plan(llama, "full", ["bf16"], Limits())
    heads = {(p.params["num_heads"], p.params["num_kv_heads"], p.params["head_dim"])
             for p in full if p.kind.startswith("attention_")}  # fmt: skip
    assert heads == {(32, 8, 128), *ATTENTION_VARIANTS}
    variant = [p for p in full if p.kind.startswith("attention_") and p.params["num_heads"] == 28]
    assert any(p.holdout for p in variant) and not all(p.holdout for p in variant)
    # a sweep on Qwen itself does not repeat its own heads as a variant
    qwen = make_plan(load_model("qwen2.5-7b"), "quick", ["bf16"], Limits())
    assert {p.params["head_dim"] for p in qwen if p.kind == "attention_decode"} == {128, 256}


@pytest.mark.parametrize("chunk,prior", [(512, 4096), (2048, 1024)])
def test_a_qwen_point_counts_what_the_cost_model_charges_qwen(chunk, prior):
    """Counted on the Llama calibration's cost model, a Qwen-heads point's work is Qwen's per layer: timed on a
    curve it gives the cost model's Qwen attention time (chunked prompt and decode)."""
    prof = load_profile("h200")
    llama_cm, qwen = CostModel(prof, load_model("llama-3.1-8b")), load_model("qwen2.5-7b")
    qwen_cm = CostModel(prof, qwen)
    heads = {"num_heads": 28, "num_kv_heads": 4, "head_dim": 128}
    eff = prof.efficiency
    f, b, peak = attention_prefill_work(llama_cm, {"chunk": chunk, "prior": prior, **heads})
    want = qwen.full_attention_layers * op_time(eff.attention_prefill, f, b, peak, llama_cm.bw)
    got = qwen_cm.attention_prefill_time(BatchShape.of([(chunk, prior)], []))
    assert got == pytest.approx(want, rel=1e-9)
    lens = [1024] * 16
    f, b, peak = attention_decode_work(llama_cm, {"context_lens": lens, **heads})
    want = qwen.num_layers * op_time(eff.attention_decode, f, b, peak, llama_cm.bw)
    assert qwen_cm.attention_decode_time(16, sum(lens)) == pytest.approx(want, rel=1e-9)
    # and the Llama heads' own points are counted as before (the model's cost-model terms)
    own = {"chunk": chunk, "prior": prior, "num_heads": 32, "num_kv_heads": 8, "head_dim": 128}
    assert attention_prefill_work(llama_cm, own)[0] == llama_cm.pair_flops * (
        chunk * prior + chunk * (chunk + 1) / 2
    )
