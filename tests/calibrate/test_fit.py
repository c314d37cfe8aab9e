import numpy as np
import pytest

from calibrate import accounting
from calibrate.accounting import GROUPS, step_shape, work
from calibrate.fit import BLENDED, _theta_of, fit_all, fit_group
from calibrate.measurements import Record
from calibrate.plan import Limits, make_plan
from core.cost_model import BatchShape, CostModel, op_time
from core.graphs import SERVING_GRAPHS, STEP_RUNNER_GRAPHS, GraphRule
from core.hardware import Efficiencies, OpEfficiency, load_profile
from core.model_spec import load_model

pytest.importorskip("scipy")

PROFILE = load_profile("h100-sxm")
SPEC = load_model("llama-3.1-8b")
PLAN = make_plan(SPEC, "full", ["bf16"], Limits(380_000, 256, 32_768))

# Known parameters in canonical form (launch = min of the two constants, so one ramp is zero).
# Ramps as time (the fit writes them so): 3 GFLOP at 0.74 of the H100's peak, 2 MB at 0.30 of its bandwidth.
TRUTH = Efficiencies(
    gemm=OpEfficiency(
        compute=0.74,
        memory=0.86,
        compute_ramp_s=3.0e9 / (0.74 * PROFILE.peak_flops("bf16")),
        memory_ramp_s=0.0,
        launch_s=4.0e-6,
        blend=3.0,  # dense GEMMs near the ridge (cuBLAS's tile-size knee): calibrate.fit.BLENDED
    ),
    attention_prefill=OpEfficiency(
        compute=0.42,
        memory=0.30,
        compute_ramp_s=0.0,
        memory_ramp_s=2.0e6 / (0.30 * PROFILE.memory_bandwidth),
        launch_s=6.0e-6,
    ),
    attention_decode=OpEfficiency(compute=0.3, memory=0.21, launch_s=9.0e-6),
    elementwise=OpEfficiency(compute=0.1, memory=0.68, launch_s=5.0e-6),
    attention_fresh=OpEfficiency(compute=0.61, memory=0.30, launch_s=2.0e-5),
    moe=OpEfficiency(compute=0.55, memory=0.78, memory_ramp_s=1.0e-5, launch_s=2.5e-5, blend=1.3),
    moe_large=OpEfficiency(compute=0.62, memory=0.9, compute_ramp_s=3.0e-4, launch_s=2.5e-5, blend=2.0),
    attention_mla_decode=OpEfficiency(compute=0.2, memory=0.35, launch_s=9.0e-6),
    attention_mla_prefill=OpEfficiency(compute=0.28, memory=0.5, compute_ramp_s=1.5e-5, launch_s=4.0e-6),
    step_overhead_s=4.0e-4,
    per_sequence_s=5.0e-6,
)


def synthetic(
    eff: Efficiencies, noise: float = 0.0, seed: int = 0, graphs: GraphRule = SERVING_GRAPHS
) -> list[Record]:
    """Measurements the cost model itself would produce with `eff` (kernels; whole steps as the CUDA graphs of
    `graphs` run them: the serving executor's unless said)."""
    rng = np.random.default_rng(seed)
    prof = PROFILE.model_copy(update={"efficiency": eff})
    cm = CostModel(prof, SPEC, graph_padding=graphs)
    out = []
    for p in PLAN:
        if group_of(cm, p) in GROUPS:
            g = group_of(cm, p)
            w = work(cm, g, [p.params])
            t = float(op_time(getattr(eff, g), w.flops[0], w.nbytes[0], w.peak[0], cm.bw))
        elif p.kind.startswith("step_"):
            t = cm.step_time(step_shape(cm, p.kind, p.params))
        else:
            continue
        out.append(
            Record(p.key, p.kind, p.params, t * float(np.exp(noise * rng.standard_normal())), "ok", p.holdout)
        )
    return out


def group_of(cm: CostModel, p) -> str:
    """The group a point is fitted in: whole fresh prompts' attention and large MoE layers apart (as fit_all
    sorts them, calibrate.accounting.group_of)."""
    return accounting.group_of(cm, p.kind, p.params)


def close(a: OpEfficiency, b: OpEfficiency, rel: float = 0.02, fields=None):
    for f in fields or ("compute", "memory", "compute_ramp_s", "memory_ramp_s", "launch_s"):
        x, y = getattr(a, f), getattr(b, f)
        if y == 0:
            scale = {"compute_ramp_s": 2e-8, "memory_ramp_s": 5e-9, "launch_s": 1e-8}.get(f, 1e-3)
            assert abs(x) < scale, (f, x, y)
        else:
            assert abs(x / y - 1) < rel, (f, x, y)


@pytest.mark.parametrize("group", GROUPS)
def test_each_group_is_recovered_from_its_microbenchmarks(group):
    cm = CostModel(PROFILE.model_copy(update={"efficiency": TRUTH}), SPEC)  # (TRUTH's moe / moe_large split)
    recs = [r for r in synthetic(TRUTH) if group_of(cm, r) == group]
    assert len(recs) >= 6, group
    f = fit_group(cm, group, recs, getattr(PROFILE.efficiency, group) or PROFILE.efficiency.attention_prefill)
    # memory-bound groups (moe: below moe_large_min_rows rows an expert, the weights streamed): no compute side
    fields = (
        ("memory", "memory_ramp_s", "launch_s")
        if group in ("attention_decode", "elementwise", "moe", "attention_mla_decode")
        else None
    )
    if group in (
        "attention_fresh",
        "attention_mla_prefill",
    ):  # causal prompts: compute-bound, the memory terms
        # never bind, and only the compute side's fixed time (ramp / rate + launch) is identifiable
        fields = ("compute",)
        peak = PROFILE.peak_flops("bf16")
        a_fit, a_true = _theta_of(f.eff, peak, cm.bw)[2], _theta_of(getattr(TRUTH, group), peak, cm.bw)[2]
        assert a_fit == pytest.approx(a_true, rel=0.05)
    if group in ("moe", "attention_mla_decode"):  # memory-bound: only the memory side's fixed time (ramp +
        # launch) is identifiable
        fields = ("memory",)
        truth = getattr(TRUTH, group)
        fixed = f.eff.memory_ramp_s + f.eff.launch_s
        assert fixed == pytest.approx(truth.memory_ramp_s + truth.launch_s, rel=0.05)
    close(f.eff, getattr(TRUTH, group), fields=fields)
    if group in BLENDED - {"moe"}:  # a blended group's exponent too (OpEfficiency.blend; moe's points below
        # moe_large_min_rows rows an expert are memory-bound, where it is not identifiable)
        assert f.eff.blend == pytest.approx(getattr(TRUTH, group).blend, rel=0.05)
    assert f.train.median_pct < 0.1 and f.holdout.median_pct < 0.1


def test_whole_fit_recovers_the_overheads_and_predicts_steps():
    res = fit_all(PROFILE, SPEC, synthetic(TRUTH))
    assert res.efficiency.step_overhead_s == pytest.approx(TRUTH.step_overhead_s, rel=0.02)
    assert res.efficiency.per_sequence_s == pytest.approx(TRUTH.per_sequence_s, rel=0.02)
    close(res.efficiency.gemm, TRUTH.gemm)
    assert res.groups["step"].train.median_pct < 0.5 and res.groups["step"].holdout.median_pct < 0.5


def test_steps_are_fitted_through_the_graphs_they_ran_on():
    """A sweep timed on engine/steps.py's own graphs (up to 512 tokens; the stored H100/H200 sweeps) is fitted
    exactly when its steps are priced by that rule, not the serving loop's (which pads the mixed steps of
    513-2,048 tokens that the old runner ran eagerly)."""
    recs = synthetic(TRUTH, graphs=STEP_RUNNER_GRAPHS)
    cm = CostModel(PROFILE, SPEC)
    shapes = [step_shape(cm, r.kind, r.params) for r in recs if r.kind.startswith("step_")]
    assert any(
        SERVING_GRAPHS.rows(b.tokens, b.prefill_tokens, b.prefill_seqs)
        != STEP_RUNNER_GRAPHS.rows(b.tokens, b.prefill_tokens, b.prefill_seqs)
        for b in shapes
    )
    res = fit_all(PROFILE, SPEC, recs, graphs=STEP_RUNNER_GRAPHS)
    assert res.groups["step"].train.median_pct < 0.5 and res.groups["step"].train.p90_pct < 0.5
    off = fit_all(PROFILE, SPEC, recs, graphs=SERVING_GRAPHS)
    assert off.groups["step_mixed"].train.p90_pct > res.groups["step_mixed"].train.p90_pct


def test_noisy_measurements_still_give_the_asymptotes():
    res = fit_all(PROFILE, SPEC, synthetic(TRUTH, noise=0.01), refine=False)
    close(res.efficiency.gemm, TRUTH.gemm, rel=0.02, fields=("compute", "memory"))
    close(res.efficiency.attention_decode, TRUTH.attention_decode, rel=0.02, fields=("memory",))
    assert res.groups["step"].holdout.median_pct < 3


def test_accounting_matches_the_cost_model_group_by_group():
    """Kernel counts used for fitting, summed over a step, give CostModel.breakdown exactly."""
    cm = CostModel(PROFILE, SPEC)
    eff = PROFILE.efficiency
    L = SPEC.num_layers
    b = step_shape(cm, "step_mixed", {"chunks": [[300, 700]], "decode_context_lens": [100, 2000, 50]})
    parts = cm.breakdown(b)

    def t(group, params):
        w = work(cm, group, [params])
        return float(op_time(getattr(eff, group), w.flops[0], w.nbytes[0], w.peak[0], cm.bw))

    heads = {"num_heads": SPEC.num_heads, "num_kv_heads": SPEC.num_kv_heads, "head_dim": SPEC.head_dim}
    assert L * t("attention_prefill", {"chunk": 300, "prior": 700, **heads}) == pytest.approx(
        parts["attention_prefill"]
    )
    assert L * t("attention_decode", {"context_lens": [100, 2000, 50], **heads}) == pytest.approx(
        parts["attention_decode"]
    )
    assert L * t("elementwise", {"tokens": 303}) == pytest.approx(parts["elementwise"])
    gemm = sum(
        g.layers * t("gemm", {"m": 303, "k": g.k, "n": g.n, "dtype": "bf16"}) for g in SPEC.dense_gemms
    )
    gemm += t("gemm", {"m": 4, "k": SPEC.lm_head.k, "n": SPEC.lm_head.n, "dtype": "bf16"})
    assert gemm == pytest.approx(parts["gemm"])


def test_step_shape_matches_the_engine_runner():
    torch = pytest.importorskip("torch")  # noqa: F841
    from engine.steps import StepRunner

    cm = CostModel(PROFILE, SPEC)
    r = StepRunner.__new__(StepRunner)  # batch_shape needs only the model's spec
    r.model = type("M", (), {"spec": SPEC})()
    ours = step_shape(cm, "step_mixed", {"chunks": [[300, 700]], "decode_context_lens": [100, 2000, 50]})
    theirs = r.batch_shape([300, 1, 1, 1], [700, 99, 1999, 49], 3)
    for f in (
        "prefill_tokens",
        "prefill_seqs",
        "prefill_pairs",
        "prefill_context_tokens",
        "decode_seqs",
        "decode_context_tokens",
    ):
        assert getattr(ours, f) == getattr(theirs, f), f
    assert cm.step_time(ours) == pytest.approx(cm.step_time(theirs))
    assert isinstance(ours, BatchShape)


def test_whole_fresh_prompts_take_the_fresh_kernel_in_the_cost_model():
    """A long fresh prompt costs one attention_fresh call per layer at its padded length; the other chunks
    share the chunked kernel's call; with no such kernel in the profile every chunk takes the latter."""
    prof = PROFILE.model_copy(
        update={
            "efficiency": PROFILE.efficiency.model_copy(update={"attention_fresh": TRUTH.attention_fresh})
        }
    )
    cm = CostModel(prof, SPEC, serving_host=False)
    heads = {"num_heads": SPEC.num_heads, "num_kv_heads": SPEC.num_kv_heads, "head_dim": SPEC.head_dim}
    chunks = [(5000, 0), (300, 700), (2048, 0)]  # 2048 is under the threshold: chunked kernel
    b = step_shape(
        cm, "step_prefill", {"prompt_lens": [c for c, _ in chunks], "prior_lens": [p for _, p in chunks]}
    )
    assert (b.fresh_seqs, b.fresh_tokens) == (1, 5000)
    assert b.fresh_padded_pairs == 5120 * 5121 / 2  # padded to the 128-token bucket
    L = SPEC.num_layers
    wf = work(cm, "attention_fresh", [{"chunk": 5000, "prior": 0, **heads}])
    fresh = L * op_time(TRUTH.attention_fresh, wf.flops[0], wf.nbytes[0], wf.peak[0], cm.bw)
    wc = work(cm, "attention_prefill", [{"chunk": c, "prior": p, **heads} for c, p in chunks[1:]])
    rest = L * op_time(prof.efficiency.attention_prefill, wc.flops.sum(), wc.nbytes.sum(), wc.peak[0], cm.bw)
    assert cm.breakdown(b)["attention_prefill"] == pytest.approx(fresh + rest)

    bare = PROFILE.model_copy(
        update={"efficiency": PROFILE.efficiency.model_copy(update={"attention_fresh": None})}
    )
    plain = CostModel(bare, SPEC, serving_host=False)
    assert (
        plain.fresh is None
        and step_shape(plain, "step_prefill", {"prompt_lens": [5000], "prior_lens": [0]}).fresh_seqs == 0
    )
    assert cm.step_time(BatchShape.of([(5000, 0)], fresh=cm.fresh)) < cm.step_time(BatchShape.of([(5000, 0)]))


def test_eight_bit_gemms_take_the_in_step_factor_the_steps_teach_bf16():
    """Whole steps whose GEMMs run at 0.9x their microbenchmark rate: refinement lowers the bf16 compute
    asymptote by about that, and the fp8 curve (no fp8 step to learn from) takes the same factor."""
    slow = TRUTH.model_copy(
        update={"gemm": TRUTH.gemm.model_copy(update={"compute": TRUTH.gemm.compute * 0.9})}
    )
    micro = [r for r in synthetic(TRUTH) if not r.kind.startswith("step_")]
    steps = [r for r in synthetic(slow) if r.kind.startswith("step_")]
    fp8 = OpEfficiency(compute=0.70, memory=0.80, compute_ramp_flops=4.0e9, launch_s=3.0e-6)
    cm = CostModel(PROFILE, SPEC)
    for m in (256, 1024, 4096, 8192, 16384):
        for k, n in ((4096, 6144), (4096, 28672), (14336, 4096)):
            p = {"m": m, "k": k, "n": n, "dtype": "fp8"}
            w = work(cm, "gemm", [p])
            t = float(op_time(fp8, w.flops[0], w.nbytes[0], w.peak[0], cm.bw))
            micro.append(Record(f"gemm:{m},{k},{n},fp8", "gemm", p, t, "ok", m == 4096))
    alone = fit_all(PROFILE, SPEC, micro + steps, refine=False)
    res = fit_all(PROFILE, SPEC, micro + steps)
    k = res.efficiency.gemm.compute / alone.efficiency.gemm.compute
    assert 0.85 < k < 0.95
    assert alone.extra_gemm["fp8"].eff.compute == pytest.approx(fp8.compute, rel=0.02)
    assert res.extra_gemm["fp8"].eff.compute == pytest.approx(fp8.compute * k, rel=0.02)
    assert res.extra_gemm["fp8"].eff.memory == pytest.approx(alone.extra_gemm["fp8"].eff.memory)
