"""The MoE group: calibrate's `moe` points, their accounting, and the cost model pricing routed experts on it."""

import numpy as np
import pytest

from calibrate.accounting import moe_touched, moe_work
from calibrate.plan import MOE_SHAPES, Limits, make_plan, moe_points
from core.cost_model import CostModel, moe_layer_time
from core.hardware import OpEfficiency, load_profile
from core.model_spec import load_model

MOE = OpEfficiency(compute=0.55, memory=0.78, memory_ramp_s=1.0e-5, launch_s=2.5e-5)


def point_of(spec, tokens: int) -> dict:
    """A `moe` point of `spec`'s expert shape at `tokens`."""
    return {"tokens": tokens, "experts": spec.num_experts, "top_k": spec.experts_per_token,
            "hidden": spec.hidden_size, "inter": spec.moe_intermediate_size}  # fmt: skip


def with_moe(profile, eff=MOE, large=None):
    update = {"moe": eff, "moe_large": large}
    return profile.model_copy(update={"efficiency": profile.efficiency.model_copy(update=update)})


@pytest.mark.parametrize("model", ["mixtral-8x7b", "deepseek-v2-lite"])
def test_cost_model_prices_a_layer_as_the_moe_points_count_it(model):
    """A point of the model's own expert shape, timed on the fitted curve, is the cost model's routed-expert
    time per MoE layer (uniform routing): what calibrate measures is what the simulator charges."""
    spec = load_model(model)
    prof = with_moe(load_profile("h200"))
    cm = CostModel(prof, spec)
    llama = CostModel(prof, load_model("llama-3.1-8b"))  # the calibrated model need not be an MoE one
    e, k, h, i = spec.num_experts, spec.experts_per_token, spec.hidden_size, spec.moe_intermediate_size
    assert (e, k, h, i) in MOE_SHAPES
    for t in (1, 7, 300, 4096):
        p = {"tokens": t, "experts": e, "top_k": k, "hidden": h, "inter": i}
        flops, nbytes, peak = moe_work(llama, p)
        want = spec.moe_layers * (
            max(flops / (MOE.compute * peak), nbytes / (MOE.memory * cm.bw) + 1e-5) + 2.5e-5
        )
        assert cm.expert_time(t) == pytest.approx(want, rel=1e-9)
        assert cm.expert_time(t) == pytest.approx(
            spec.moe_layers * moe_layer_time(cm, t * k, moe_touched(t, e, k), e), rel=1e-12
        )


@pytest.mark.parametrize("model", ["mixtral-8x7b", "deepseek-v2-lite"])
def test_moe_large_prices_layers_from_its_rows_an_expert(model):
    """With a moe_large curve, a layer whose routed rows average moe_large_min_rows an expert or more is priced
    on it, a smaller one on moe; calibration files its points the same way (accounting.group_of)."""
    from calibrate.accounting import group_of

    spec = load_model(model)
    large = OpEfficiency(compute=0.6, memory=0.9, compute_ramp_s=3.0e-4)
    prof = with_moe(load_profile("h200"), MOE, large)
    cm, only = CostModel(prof, spec), CostModel(with_moe(load_profile("h200")), spec)
    e, k = spec.num_experts, spec.experts_per_token
    edge = prof.efficiency.moe_large_min_rows * e // k  # tokens from which a layer is "large"
    for t in (1, edge - 1, edge, 4 * edge):
        p = point_of(spec, t)
        is_large = t * k >= prof.efficiency.moe_large_min_rows * e
        assert group_of(cm, "moe", p) == ("moe_large" if is_large else "moe")
        flops, nbytes, peak = moe_work(cm, p)
        curve = large if is_large else MOE
        want = max(
            flops / (curve.compute * peak) + curve.compute_ramp_s,
            nbytes / (curve.memory * cm.bw) + curve.memory_ramp_s,
        )
        assert cm.expert_time(t) == pytest.approx(spec.moe_layers * (want + curve.launch_s), rel=1e-9)
        assert (cm.expert_time(t) == only.expert_time(t)) == (not is_large)


def test_profiles_without_the_group_price_experts_as_before():
    """A profile without a `moe` curve (every one but the H200's) prices the expert GEMMs on the gemm curve."""
    spec, prof = load_model("mixtral-8x7b"), load_profile("h200")
    assert prof.efficiency.moe is not None  # the H200's is fitted (calibration_runs/h200_session9)
    prof = prof.model_copy(update={"efficiency": prof.efficiency.model_copy(update={"moe": None})})
    old = CostModel(prof, spec)
    new = CostModel(with_moe(prof), spec)
    assert old.expert_time(8) != new.expert_time(8)
    # the gemm curve's per-weight pricing, recomputed by hand for one token count
    touched = old.experts_touched(8)
    by_hand = sum(layers * old._weight_gemm(8 * 2, k, n, touched) for k, n, layers in old._experts)
    assert old.expert_time(8) == by_hand


def test_plan_has_moe_points_quick_only_mixtral():
    spec = load_model("llama-3.1-8b")
    full = [p for p in make_plan(spec, "full", ["bf16"], Limits()) if p.kind == "moe"]
    quick = [p for p in make_plan(spec, "quick", ["bf16"], Limits()) if p.kind == "moe"]
    assert {p.params["experts"] for p in full} == {8, 64} and {p.params["experts"] for p in quick} == {8}
    assert any(p.holdout for p in quick) and not all(p.holdout for p in quick)
    assert max(p.params["tokens"] for p in quick) >= 4096 and min(p.params["tokens"] for p in quick) == 1
    assert len(moe_points("cpu")) == 5


def test_moe_points_time_the_backend_the_engine_would_tune_to(monkeypatch):
    """Where both expert-GEMM backends run, a moe point is the faster of the two (what engine.moe.tune_moe
    keeps at warm-up), each timed with the other's routing forced off; the engine's picks are left as found."""
    from calibrate import bench as bench_mod
    from calibrate.plan import Point
    from engine import moe

    seen = []

    key = (moe.rows_bucket(8 * 2, 8), 2 * 48, 32, 8)  # (rows bucket, 2I, H, experts) of the point below

    def fake_measure(fn, dev, calls, repeat, warmup):
        seen.append(moe.BACKEND.get(key))
        return {"triton": 3e-4, "grouped_mm": 2e-4}.get(seen[-1], 9e-4)

    monkeypatch.setattr(moe, "grouped_mm_supported", lambda x: True)
    monkeypatch.setattr(bench_mod, "measure_graph", fake_measure)
    monkeypatch.setattr(moe, "use_fused", lambda x: False)  # the reference loop runs on the CPU
    before = {(1, 2, 3, 4): "triton"}
    moe.set_backends(before)
    try:
        b = bench_mod.Bench(load_model("llama-3.1-8b"), "cpu", Limits())
        p = Point("moe", {"tokens": 8, "experts": 8, "top_k": 2, "hidden": 32, "inter": 48}, False)
        assert b.measure(p) == 2e-4
        assert sorted(seen) == sorted(moe.BACKENDS) and dict(moe.BACKEND) == before
    finally:
        moe.set_backends({})


def test_a_blended_curve_prices_the_q_norm_of_its_terms_and_takes_every_moe_point():
    """OpEfficiency.blend: a layer costs (t_c^q + t_m^q)^(1/q), each term with launch_s, which is at least the
    max form's time, tends to it as q grows, and is the sum at q = 1; without a moe_large curve every `moe`
    point is one group's (calibrate.accounting.group_of)."""
    from calibrate.accounting import group_of
    from core.cost_model import op_time, op_times

    spec = load_model("mixtral-8x7b")
    prof = load_profile("h200")
    llama = CostModel(with_moe(prof), load_model("llama-3.1-8b"))
    for t in (1, 64, 512, 8192):
        p = point_of(spec, t)
        assert group_of(llama, "moe", p) == "moe"
        flops, nbytes, peak = moe_work(llama, p)
        t_c = flops / (MOE.compute * peak) + MOE.launch_s
        t_m = nbytes / (MOE.memory * llama.bw) + MOE.memory_ramp_s + MOE.launch_s
        times = {}
        for q in (1.0, 1.2, 8.0, 200.0):
            eff = MOE.model_copy(update={"blend": q})
            times[q] = op_time(eff, flops, nbytes, peak, llama.bw)
            top = max(t_c, t_m)  # (scaled: t^200 underflows)
            assert times[q] == pytest.approx(
                top * ((t_c / top) ** q + (t_m / top) ** q) ** (1 / q), rel=1e-12
            )
            assert float(
                op_times(eff, np.array([flops]), np.array([nbytes]), peak, llama.bw)[0]
            ) == pytest.approx(times[q], rel=1e-12)
        plain = op_time(MOE, flops, nbytes, peak, llama.bw)
        assert times[1.0] == pytest.approx(t_c + t_m) and times[1.0] > times[1.2] > times[8.0] >= plain
        assert times[200.0] == pytest.approx(plain, rel=1e-2)
