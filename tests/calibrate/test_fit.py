import numpy as np
import pytest

from calibrate.accounting import GROUPS, step_shape, work
from calibrate.fit import fit_all, fit_group
from calibrate.measurements import Record
from calibrate.plan import Limits, make_plan
from simulator.cost_model import BatchShape, CostModel, op_time
from simulator.hardware import Efficiencies, OpEfficiency, load_profile
from simulator.model_spec import load_model

pytest.importorskip("scipy")

PROFILE = load_profile("h100-sxm")
SPEC = load_model("llama-3.1-8b")
PLAN = make_plan(SPEC, "full", ["bf16"], Limits(380_000, 256, 32_768))

# Known parameters in canonical form (launch = min of the two constants, so one ramp is zero).
TRUTH = Efficiencies(
    gemm=OpEfficiency(
        compute=0.74, memory=0.86, compute_ramp_flops=3.0e9, memory_ramp_bytes=0.0, launch_s=4.0e-6
    ),
    attention_prefill=OpEfficiency(
        compute=0.42, memory=0.30, compute_ramp_flops=0.0, memory_ramp_bytes=2.0e6, launch_s=6.0e-6
    ),
    attention_decode=OpEfficiency(compute=0.3, memory=0.21, launch_s=9.0e-6),
    elementwise=OpEfficiency(compute=0.1, memory=0.68, launch_s=5.0e-6),
    step_overhead_s=4.0e-4,
    per_sequence_s=5.0e-6,
)


def synthetic(eff: Efficiencies, noise: float = 0.0, seed: int = 0) -> list[Record]:
    """Measurements the cost model itself would produce with `eff` (kernels and whole steps)."""
    rng = np.random.default_rng(seed)
    prof = PROFILE.model_copy(update={"efficiency": eff})
    cm = CostModel(prof, SPEC)
    out = []
    for p in PLAN:
        if p.kind in GROUPS:
            w = work(cm, p.kind, [p.params])
            t = float(op_time(getattr(eff, p.kind), w.flops[0], w.nbytes[0], w.peak[0], cm.bw))
        elif p.kind.startswith("step_"):
            t = cm.step_time(step_shape(cm, p.kind, p.params))
        else:
            continue
        out.append(
            Record(p.key, p.kind, p.params, t * float(np.exp(noise * rng.standard_normal())), "ok", p.holdout)
        )
    return out


def close(a: OpEfficiency, b: OpEfficiency, rel: float = 0.02, fields=None):
    for f in fields or ("compute", "memory", "compute_ramp_flops", "memory_ramp_bytes", "launch_s"):
        x, y = getattr(a, f), getattr(b, f)
        if y == 0:
            scale = {"compute_ramp_flops": 1e7, "memory_ramp_bytes": 1e4, "launch_s": 1e-8}.get(f, 1e-3)
            assert abs(x) < scale, (f, x, y)
        else:
            assert abs(x / y - 1) < rel, (f, x, y)


@pytest.mark.parametrize("group", GROUPS)
def test_each_group_is_recovered_from_its_microbenchmarks(group):
    recs = [r for r in synthetic(TRUTH) if r.kind == group]
    cm = CostModel(PROFILE, SPEC)
    f = fit_group(cm, group, recs, getattr(PROFILE.efficiency, group))
    fields = (
        ("memory", "memory_ramp_bytes", "launch_s") if group in ("attention_decode", "elementwise") else None
    )
    close(f.eff, getattr(TRUTH, group), fields=fields)
    assert f.train.median_pct < 0.1 and f.holdout.median_pct < 0.1


def test_whole_fit_recovers_the_overheads_and_predicts_steps():
    res = fit_all(PROFILE, SPEC, synthetic(TRUTH))
    assert res.efficiency.step_overhead_s == pytest.approx(TRUTH.step_overhead_s, rel=0.02)
    assert res.efficiency.per_sequence_s == pytest.approx(TRUTH.per_sequence_s, rel=0.02)
    close(res.efficiency.gemm, TRUTH.gemm)
    assert res.groups["step"].train.median_pct < 0.5 and res.groups["step"].holdout.median_pct < 0.5


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
