"""The MLA attention groups: calibrate's `mla_decode` / `mla_prefill` points at DeepSeek-V2-Lite's shape, their
accounting, and the cost model pricing an MLA model's absorbed-form attention on the fitted curves."""

import pytest

from calibrate.accounting import group_of, mla_decode_work, mla_prefill_work
from calibrate.bench import Bench
from calibrate.plan import MLA_SHAPE, Limits, make_plan, mla_points
from core.cost_model import BatchShape, CostModel, op_time
from core.hardware import OpEfficiency, load_profile
from core.model_spec import load_model

DEC = OpEfficiency(compute=0.2, memory=0.3, memory_ramp_s=1.5e-5, launch_s=4e-6)
PRE = OpEfficiency(compute=0.3, memory=0.5, compute_ramp_s=2e-5, launch_s=4e-6)


def with_mla(profile):
    update = {"attention_mla_decode": DEC, "attention_mla_prefill": PRE}
    return profile.model_copy(update={"efficiency": profile.efficiency.model_copy(update=update)})


def test_the_points_shape_is_deepseek_v2_lites():
    spec = load_model("deepseek-v2-lite")
    got = (spec.num_heads, spec.kv_lora_rank, spec.qk_rope_head_dim, spec.q_head_dim, spec.v_head_dim)
    assert got == tuple(MLA_SHAPE[k] for k in ("heads", "rank", "rope", "q_head_dim", "v_head_dim"))


@pytest.mark.parametrize("b,ctx", [(1, 4096), (32, 1024), (256, 1024)])
def test_cost_model_prices_mla_decode_as_the_points_count_it(b, ctx):
    """A decode point at the model's shape, on the fitted curve, is the cost model's decode attention per layer:
    what calibrate measures is what the simulator charges."""
    spec = load_model("deepseek-v2-lite")
    cm = CostModel(with_mla(load_profile("h200")), spec)
    p = {"context_lens": [ctx] * b, **MLA_SHAPE}
    assert group_of(cm, "mla_decode", p) == "attention_mla_decode"
    want = spec.num_layers * op_time(DEC, *mla_decode_work(cm, p)[:2], cm.attn_peak, cm.bw)
    assert cm.attention_decode_time(b, b * ctx) == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("chunk,prior", [(512, 0), (1024, 2048), (2048, 0)])
def test_cost_model_prices_absorbed_prompts_as_the_points_count_them(chunk, prior):
    spec = load_model("deepseek-v2-lite")
    cm = CostModel(with_mla(load_profile("h200")), spec)
    p = {"chunk": chunk, "prior": prior, **MLA_SHAPE}
    assert group_of(cm, "mla_prefill", p) == "attention_mla_prefill"
    want = spec.num_layers * op_time(PRE, *mla_prefill_work(cm, p)[:2], cm.attn_peak, cm.bw)
    assert cm.attention_prefill_time(BatchShape.of([(chunk, prior)], [])) == pytest.approx(want, rel=1e-9)


def test_other_models_and_large_mla_steps_keep_their_curves():
    """Only an MLA model's absorbed form takes the MLA curves: Llama's attention is unchanged, and an MLA step
    above the absorbed threshold (the plain form) stays on attention_prefill."""
    base, mla = load_profile("h200"), with_mla(load_profile("h200"))
    llama = load_model("llama-3.1-8b")
    b = BatchShape.of([(1024, 512)], [900] * 8)
    assert CostModel(mla, llama).step_time(b) == CostModel(base, llama).step_time(b)
    ds = load_model("deepseek-v2-lite")
    big = BatchShape.of([(4096, 0)], [])
    assert CostModel(mla, ds).attention_prefill_time(big) == CostModel(base, ds).attention_prefill_time(big)
    assert CostModel(mla, ds).attention_prefill_time(BatchShape.of([(512, 0)], [])) != CostModel(
        base, ds
    ).attention_prefill_time(BatchShape.of([(512, 0)], []))


def test_plans_hold_mla_points_and_the_cpu_bench_times_them():
    spec = load_model("llama-3.1-8b")
    full = [p for p in make_plan(spec, "full", ["bf16"], Limits()) if p.kind.startswith("mla_")]
    quick = [p for p in make_plan(spec, "quick", ["bf16"], Limits()) if p.kind.startswith("mla_")]
    assert {p.kind for p in full} == {"mla_decode", "mla_prefill"} and len(quick) < len(full)
    for pts in (full, quick):
        for kind in ("mla_decode", "mla_prefill"):
            mine = [p for p in pts if p.kind == kind]
            assert sum(not p.holdout for p in mine) >= 3 and any(p.holdout for p in mine)
    assert len({p.key for p in full}) == len(full)
    b = Bench(spec, "cpu", Limits())
    assert all(b.measure(p) > 0 for p in mla_points("cpu"))
