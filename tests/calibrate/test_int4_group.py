"""int4 GEMMs are calibrated as their own group (issue 19): the plan sweeps them on the model's weight shapes
(not the 16-bit LM head), the fit gives int4 its own curve (dequantization inside it), and the cost model
then uses that curve instead of the Marlin-derived dequantization term."""

from __future__ import annotations

import pytest

from calibrate.accounting import work
from calibrate.fit import fit_all
from calibrate.measurements import Record
from calibrate.plan import microbench_plan
from core.cost_model import CostModel, gemm_rate, op_time
from core.hardware import OpEfficiency, load_profile
from core.model_spec import load_model

pytest.importorskip("scipy")

PROFILE = load_profile("h100-sxm")
SPEC = load_model("llama-3.1-8b")


def test_plan_sweeps_int4_gemms_on_the_weight_shapes():
    pts = [p for p in microbench_plan(SPEC, "quick", ["bf16", "int4"]) if p.kind == "gemm"]
    int4 = [p.params for p in pts if p.params["dtype"] == "int4"]
    assert int4 and {(p["k"], p["n"]) for p in int4} == {(g.k, g.n) for g in SPEC.dense_gemms}
    assert all(p["k"] % 128 == 0 for p in int4)


def test_fitted_int4_curve_replaces_the_derived_dequantization():
    truth = OpEfficiency(compute=0.45, memory=0.75, compute_ramp_flops=2.0e9, launch_s=4.0e-6)
    cm = CostModel(PROFILE, SPEC)
    recs = []
    for m in (1, 16, 64, 256, 1024, 4096, 8192):
        for k, n in ((4096, 6144), (4096, 28672), (14336, 4096)):
            p = {"m": m, "k": k, "n": n, "dtype": "int4"}
            w = work(cm, "gemm", [p])
            assert w.peak[0] == PROFILE.peak_flops("bf16")  # 16-bit compute
            t = float(op_time(truth, w.flops[0], w.nbytes[0], w.peak[0], cm.bw))
            recs.append(Record(f"gemm:{m},{k},{n},int4", "gemm", p, t, "ok", m == 256))
    res = fit_all(PROFILE, SPEC, recs, refine=False)
    fit = res.extra_gemm["int4"]
    assert fit.eff.compute == pytest.approx(truth.compute, rel=0.02)
    assert fit.eff.memory == pytest.approx(truth.memory, rel=0.02)
    assert fit.holdout.n == 3 and "gemm_int4" in res.errors()

    derived = CostModel(PROFILE, SPEC, "int4")
    assert gemm_rate(PROFILE, "int4")[2]  # no fitted int4 curve: dequantization derived from Marlin's kernel
    cal = PROFILE.calibration.model_copy(update={"gemm_by_dtype": {"int4": fit.eff.model_dump()}})
    fitted_profile = PROFILE.model_copy(update={"calibration": cal})
    e, peak, deq = gemm_rate(fitted_profile, "int4")
    assert not deq and peak == PROFILE.peak_flops("bf16") and e.compute == pytest.approx(fit.eff.compute)
    fitted = CostModel(fitted_profile, SPEC, "int4")
    k, n = 4096, 28672
    for m in (1, 4096):
        w = work(cm, "gemm", [{"m": m, "k": k, "n": n, "dtype": "int4"}])
        want = float(op_time(fit.eff, w.flops[0], w.nbytes[0], w.peak[0], cm.bw))
        assert fitted._weight_gemm(m, k, n) == pytest.approx(want, rel=1e-6)
    assert fitted._weight_gemm(4096, k, n) != pytest.approx(derived._weight_gemm(4096, k, n), rel=1e-3)
