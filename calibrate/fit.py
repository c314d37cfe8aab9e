"""Fit the cost model's efficiencies to measurements (scipy least squares on log-time residuals).

Stage 1, one operation group at a time from its microbenchmarks: the cost model's kernel time
max(F/(c·P) + Rc, B/(m·W) + Rm) + launch is, for the data, max(F/(c·P) + A, B/(m·W) + Bm) with
A = Rc + launch and Bm = Rm + launch (ramps in seconds): launch and the two ramps trade off exactly, so
we fit (c, m, A, Bm) and write the canonical split launch = min(A, Bm) (one ramp is then zero).
Stage 2, from whole model steps: the fixed step overhead and the per-sequence cost, with the
groups' efficiencies held at their stage-1 values.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import product

import numpy as np

from calibrate.accounting import GROUPS, STEP_KINDS, Work, group_of, label, step_shape, work
from calibrate.measurements import Record
from core.cost_model import CostModel, blend_terms
from core.graphs import SERVING_GRAPHS, GraphRule
from core.hardware import Efficiencies, HardwareProfile, OpEfficiency
from core.model_spec import ModelSpec

# Groups whose compute term never binds in practice (decode attention moves ~4 FLOP per KV byte;
# element-wise kernels are counted with no FLOPs): their compute efficiency is not identifiable
# and stays at the base profile's value.
MEMORY_ONLY = {"attention_decode", "elementwise", "gemv"}
# groups fitted with the blended roofline (OpEfficiency.blend): the MoE layer, whose grouped GEMMs stream the touched
# experts' weights and compute at once from a few rows an expert to hundreds. On the H200's `moe` points (session 14,
# python -m calibrate.group_from_run calibration_runs/h200_session14_moe --group moe) one blended curve over all 28
# points misses the 6 held out by a median 3.9% (p90 7.4%, q = 1.2), where the max form needed two curves split at
# 64 rows an expert and still missed their held-out points by 3.7% / 15.0% (p90 8.9% / 16.4%).
BLENDED = {"gemm", "moe", "moe_large"}
BLEND_BOUNDS = (1.0, 20.0)
# groups whose points already run at the clocks of a long step, so the in-step compute factor (`in_step`) is not
# applied to them: a `moe` point replays MOE_CALLS layers a graph launch, 20 launches (calibrate.bench), a tenth of a
# second to a second of back-to-back expert GEMMs at prefill sizes. On an H200 (benchmarks/moe_layer_gap.py,
# benchmarks/results/engine_kernels_h200/moe_layer_gap.md) Mixtral-8x7B's points from 880 tokens ran at an SM clock
# of 1,500-1,545 MHz, as its layers inside a prefill step did (1,455-1,665), and took what those layers took
# (point / in step 0.95-1.10); with the factor on top the profile priced the layer 11-22% over its own points.
SUSTAINED = {"moe", "moe_large"}


@dataclass
class Errors:
    """Absolute percentage errors of predicted vs measured time."""

    median_pct: float = float("nan")
    p90_pct: float = float("nan")
    n: int = 0

    @classmethod
    def of(cls, predicted, measured) -> Errors:
        p, m = np.asarray(predicted, float), np.asarray(measured, float)
        if not len(m):
            return cls()
        e = np.abs(p / m - 1.0) * 100.0
        return cls(float(np.median(e)), float(np.percentile(e, 90)), int(len(e)))

    def as_dict(self) -> dict:
        if not self.n:
            return {"n": 0}
        return {"median_pct": round(self.median_pct, 2), "p90_pct": round(self.p90_pct, 2), "n": self.n}


@dataclass
class GroupFit:
    group: str
    eff: OpEfficiency | None
    train: Errors
    holdout: Errors
    rows: list[dict] = field(default_factory=list)  # label, measured_s, predicted_s, holdout
    # the fit as the points ran alone, where `eff` is its in-step curve (in_step_fit)
    alone: GroupFit | None = None

    def errors_dict(self) -> dict:
        return {"train": self.train.as_dict(), "holdout": self.holdout.as_dict()}


# ------------------------------------------------------------------ stage 1
def roofline(theta, flops, nbytes, peak, bw):
    """max(F/(c·P) + A, B/(m·W) + Bm) with theta = (c, m, A, Bm); with a fifth element q (a BLENDED group), the
    q-norm of the two terms instead of their max (OpEfficiency.blend)."""
    c, m, a, b = theta[:4]
    t_c, t_m = flops / (c * peak) + a, nbytes / (m * bw) + b
    if len(theta) > 4 and theta[4]:
        return blend_terms(t_c, t_m, theta[4])
    return np.maximum(t_c, t_m)


def to_efficiency(theta, peak: float, bw: float) -> OpEfficiency:
    """The canonical OpEfficiency for fitted (c, m, A, Bm): launch = min(A, Bm), the ramps as time (DESIGN.md:
    a ramp stored as a FLOP count turns into a fixed time that grows as the peak falls; `peak` and `bw` stay in
    the signature for the callers that pass the GPU's figures)."""
    c, m, a, b = (float(x) for x in theta[:4])
    launch = min(a, b)
    return OpEfficiency(
        compute=min(c, 1.0),
        memory=min(m, 1.0),
        compute_ramp_s=max(0.0, a - launch),
        memory_ramp_s=max(0.0, b - launch),
        launch_s=max(0.0, launch),
        blend=float(theta[4]) if len(theta) > 4 and theta[4] else None,
    )


def fit_roofline(w: Work, seconds, bw: float, compute_fixed: float | None = None, blend: bool = False):
    """Least squares on log(predicted / measured) over bounded (c, m, A, Bm), and q where `blend` (BLEND_BOUNDS);
    returns theta."""
    from scipy.optimize import least_squares

    t = np.asarray(seconds, float)
    f, b, p = w.flops, w.nbytes, w.peak
    tmin = float(t.min())
    # starting points from the data's envelopes: the best rate seen in each regime
    c0 = float(np.clip(np.max(np.where(f > 0, f / (p * t), 0.0)), 1e-3, 1.0)) if f.any() else 0.5
    m0 = float(np.clip(np.max(b / (bw * t)), 1e-3, 1.0))
    lo = np.array([1e-4, 1e-4, 0.0, 0.0] + ([BLEND_BOUNDS[0]] if blend else []))
    hi = np.array([1.0, 1.0, 10.0 * tmin + 1e-3, 10.0 * tmin + 1e-3] + ([BLEND_BOUNDS[1]] if blend else []))
    fixed_c = compute_fixed is not None

    def unpack(x):
        return (compute_fixed, x[0], x[1], x[2]) if fixed_c else tuple(x)

    def resid(x):
        return np.log(roofline(unpack(x), f, b, p, bw)) - np.log(t)

    qs = (1.5, 4.0) if blend else (None,)
    # every start from the grid; with the compute efficiency fixed the grid's first (c0 drops out of x0)
    starts = list(product((c0, 0.9 * c0 + 0.1, 0.5 * c0), (m0, 0.9 * m0 + 0.1), (0.2, 0.8), qs))
    lb, ub = (lo[1:], hi[1:]) if fixed_c else (lo, hi)
    best = None
    for cs, ms, frac, q0 in starts[: len(qs)] if fixed_c else starts:
        x0 = [cs, ms, frac * tmin, frac * tmin] + ([q0] if blend else [])
        x0 = np.clip(x0[1:] if fixed_c else x0, lb + 1e-12, ub - 1e-12)
        r = least_squares(
            resid,
            x0,
            bounds=(lb, ub),
            x_scale="jac",
            method="trf",
            xtol=1e-12,
            ftol=1e-12,
            gtol=1e-12,
            max_nfev=4000,
        )
        if best is None or r.cost < best.cost:
            best = r
    return np.array(unpack(best.x), float)


def fit_group(
    cm: CostModel, group: str, records: list[Record], base: OpEfficiency, blend: bool | None = None
) -> GroupFit:
    """Fit one group's efficiency on its non-held-out points; errors on both sets. `blend`: the blended form
    (OpEfficiency.blend) or the max form; default the group's (BLENDED)."""
    train = [r for r in records if not r.holdout]
    if len(train) < 3:
        return GroupFit(group, None, Errors(), Errors())
    w_all = work(cm, group, [r.params for r in records])
    t_all = np.array([r.seconds for r in records], float)
    hold = np.array([r.holdout for r in records])
    w_train = Work(w_all.flops[~hold], w_all.nbytes[~hold], w_all.peak[~hold], [])
    bw = cm.bw
    fixed = base.compute if group in MEMORY_ONLY else None
    blend = group in BLENDED if blend is None else blend
    theta = fit_roofline(w_train, t_all[~hold], bw, fixed, blend=blend and fixed is None)
    if group in MEMORY_ONLY:  # the compute term never binds: give it the memory term's constant
        theta[2] = theta[3]
    pred = roofline(theta, w_all.flops, w_all.nbytes, w_all.peak, bw)
    peak = float(np.median(w_all.peak))
    eff = to_efficiency(theta, peak, bw)
    rows = [
        {"label": lab, "measured_s": float(m), "predicted_s": float(p), "holdout": bool(h)}
        for lab, m, p, h in zip(w_all.label, t_all, pred, hold, strict=True)
    ]
    return GroupFit(
        group, eff, Errors.of(pred[~hold], t_all[~hold]), Errors.of(pred[hold], t_all[hold]), rows
    )


def gemv_points(records) -> list[Record]:
    """The measured bf16 GEMM points of one row (the sweep model's shapes, `gemm`, and smaller ones, `gemv`): what
    the engine runs through its GEMV (engine.model.Dense)."""
    return [
        r
        for r in records
        if r.kind in ("gemm", "gemv") and r.seconds is not None and r.params.get("m") == 1
        and r.params.get("dtype", "bf16") == "bf16"
    ]  # fmt: skip


def fit_gemv(cm: CostModel, records: list[Record], base: OpEfficiency) -> GroupFit:
    """The GEMV curve (Efficiencies.gemv: memory-bound, its compute asymptote the base's) on `gemv_points`: fitted
    on those not held out, and their held-out error the plan's held-out points'; where the plan held none out (a
    store without `gemv` points: five one-row shapes), on all, each point's held-out error that of the curve
    fitted without it (leave-one-out)."""
    if any(r.holdout for r in records):
        fit = fit_group(cm, "gemv", records, base)
        return fit if fit.eff is not None else GroupFit("gemv", None, Errors(), Errors())
    recs = [replace(r, holdout=False) for r in records]
    fit = fit_group(cm, "gemv", recs, base)
    if fit.eff is None or len(recs) < 4:
        return GroupFit("gemv", None, Errors(), Errors())
    loo = []
    for i, r in enumerate(recs):
        eff = fit_group(cm, "gemv", recs[:i] + recs[i + 1 :], base).eff
        loo.append(evaluate_group(cm, "gemv", [r], eff).rows[0]["predicted_s"])
    fit.holdout = Errors.of(loo, [r.seconds for r in recs])
    return fit


# ------------------------------------------------------------------ stage 2
def with_efficiency(profile: HardwareProfile, eff: Efficiencies) -> HardwareProfile:
    return profile.model_copy(update={"efficiency": eff})


def step_predictions(cm: CostModel, steps: list[Record]) -> tuple[np.ndarray, np.ndarray]:
    """(time of the groups without overheads, sequences) per step, from the cost model itself."""
    groups, seqs = [], []
    for r in steps:
        b = step_shape(cm, r.kind, r.params)
        parts = cm.breakdown(b)
        groups.append(sum(v for k, v in parts.items() if k != "overhead"))
        seqs.append(b.decode_seqs + b.prefill_seqs)
    return np.array(groups, float), np.array(seqs, float)


def fit_overheads(groups_s: np.ndarray, seqs: np.ndarray, measured: np.ndarray) -> tuple[float, float]:
    """step_overhead_s and per_sequence_s (both ≥ 0) minimising log-time error over whole steps."""
    from scipy.optimize import least_squares

    t = np.asarray(measured, float)

    def resid(x):
        return np.log(groups_s + x[0] + x[1] * seqs) - np.log(t)

    gap = np.clip(t - groups_s, 0.0, None)
    x0 = [float(np.median(gap)) + 1e-6, 1e-7]
    hi = [float(t.max()), float(t.max()) / max(seqs.max(), 1.0)]
    r = least_squares(
        resid,
        np.clip(x0, [0, 0], hi),
        bounds=([0.0, 0.0], hi),
        x_scale="jac",
        xtol=1e-12,
        ftol=1e-12,
        gtol=1e-12,
    )
    return float(r.x[0]), float(r.x[1])


@dataclass
class FitResult:
    efficiency: Efficiencies
    groups: dict[str, GroupFit]
    extra_gemm: dict[str, GroupFit] = field(default_factory=dict)  # fp8 / int8 / int4 GEMMs
    # the bf16 GEMM curve's compute asymptote in whole steps over alone (in_step_compute_factor); None unrefined
    in_step_compute: float | None = None

    def errors(self) -> dict:
        out = {g: f.errors_dict() for g, f in self.groups.items() if f.train.n or f.holdout.n}
        for d, f in self.extra_gemm.items():
            out[f"gemm_{d}"] = f.errors_dict()
        return out


def evaluate_group(cm: CostModel, group: str, records: list[Record], eff: OpEfficiency) -> GroupFit:
    """Errors of `eff` on a group's microbenchmarks (fitted and held-out points separately)."""
    if not records:
        return GroupFit(group, eff, Errors(), Errors())
    w = work(cm, group, [r.params for r in records])
    t = np.array([r.seconds for r in records], float)
    hold = np.array([r.holdout for r in records])
    pred = roofline(_theta_of(eff, float(np.median(w.peak)), cm.bw), w.flops, w.nbytes, w.peak, cm.bw)
    rows = [
        {"label": lab, "measured_s": float(m), "predicted_s": float(p), "holdout": bool(h)}
        for lab, m, p, h in zip(w.label, t, pred, hold, strict=True)
    ]
    return GroupFit(group, eff, Errors.of(pred[~hold], t[~hold]), Errors.of(pred[hold], t[hold]), rows)


def evaluate_steps(
    profile: HardwareProfile,
    model: ModelSpec,
    eff: Efficiencies,
    steps: list[Record],
    graphs: GraphRule | None = SERVING_GRAPHS,
) -> dict:
    """Whole-step errors of the profile with `eff`, overall ('step') and per step kind; the steps priced as
    they ran, through the CUDA graphs of `graphs` (padding included)."""
    cm = CostModel(with_efficiency(profile, eff), model, serving_host=False, graph_padding=graphs)
    pred = np.array([cm.step_time(step_shape(cm, r.kind, r.params)) for r in steps])
    t = np.array([r.seconds for r in steps], float)
    hold = np.array([r.holdout for r in steps])
    rows = [
        {
            "label": f"{r.kind[5:]} {label(r.kind, r.params)}",
            "measured_s": float(m),
            "predicted_s": float(p),
            "holdout": bool(h),
        }
        for r, m, p, h in zip(steps, t, pred, hold, strict=True)
    ]
    out = {
        "step": GroupFit("step", None, Errors.of(pred[~hold], t[~hold]), Errors.of(pred[hold], t[hold]), rows)
    }
    for k in STEP_KINDS:
        sel = np.array([r.kind == k for r in steps])
        if sel.any():
            out[k] = GroupFit(
                k,
                None,
                Errors.of(pred[sel & ~hold], t[sel & ~hold]),
                Errors.of(pred[sel & hold], t[sel & hold]),
            )
    return out


def fit_all(
    profile: HardwareProfile,
    model: ModelSpec,
    records: list[Record],
    refine: bool = True,
    graphs: GraphRule | None = SERVING_GRAPHS,
    overheads: tuple[float, float] | None = None,
) -> FitResult:
    """All stages over every ok record; groups without data keep the base profile's values. The whole steps
    are priced as they ran: through the CUDA graphs of `graphs` (the store's, measurements.step_graphs; None:
    eagerly, unpadded). `overheads` (step_overhead_s, per_sequence_s), where given, are measured elsewhere
    (benchmarks/step_gap.py: a served step's GPU time outside its kernels) and held in stages 2 and 3: the
    steps cannot tell a constant from a bias of the curves at small sizes, and a measured one settles it.

    Errors are those of the final efficiencies: on each group's microbenchmarks and on whole steps,
    training and held-out points apart.
    """
    base = profile.efficiency
    cm = CostModel(profile, model, serving_host=False, graph_padding=graphs)
    by: dict[str, list[Record]] = {}
    for r in records:
        if r.status == "ok":
            # whole fresh prompts long enough for the engine's fresh-prompt kernel form their own group
            kind = group_of(cm, r.kind, r.params)
            by.setdefault(kind, []).append(r)

    extra: dict[str, GroupFit] = {}
    eight_bit: dict[str, list[Record]] = {}  # fp8 / int8 / int4 GEMM points by dtype (int4: weight-only)
    new = {}
    ran: set[str] = set()  # groups fitted on this run's points (the others keep the base's curve)
    micro: dict[str, list[Record]] = {}
    for g in GROUPS:
        recs = by.get(g, [])
        if g == "gemm":
            for d in sorted({r.params.get("dtype", "bf16") for r in recs} - {"bf16"}):
                eight_bit[d] = [r for r in recs if r.params.get("dtype") == d]
                extra[d] = fit_group(cm, g, eight_bit[d], base.gemm)
            recs = [r for r in recs if r.params.get("dtype", "bf16") == "bf16"]
        micro[g] = recs
        start = getattr(base, g) or base.attention_prefill  # attention_fresh may be new to this profile
        f = fit_group(cm, g, recs, start)
        new[g] = f.eff if f.eff is not None else getattr(base, g)
        if f.eff is not None:
            ran.add(g)

    gemv = fit_gemv(cm, gemv_points(by.get("gemm", []) + by.get("gemv", [])), base.gemv or base.gemm)
    if gemv.eff is not None:  # one-row GEMMs: the engine's GEMV, their own curve
        new["gemv"] = gemv.eff
    eff = base.model_copy(update=new)
    steps = [r for k in STEP_KINDS for r in by.get(k, [])]
    train = [r for r in steps if not r.holdout]
    if overheads is not None:
        eff = eff.model_copy(update={"step_overhead_s": overheads[0], "per_sequence_s": overheads[1]})
    elif len(train) >= 2:
        cm2 = CostModel(with_efficiency(profile, eff), model, serving_host=False, graph_padding=graphs)
        g_s, seqs = step_predictions(cm2, train)
        o, s = fit_overheads(g_s, seqs, np.array([r.seconds for r in train], float))
        eff = eff.model_copy(update={"step_overhead_s": o, "per_sequence_s": s})
    kc = None
    if refine and len(train) >= 8:
        fitted = {g: [r for r in micro[g] if not r.holdout] for g in GROUPS}
        alone = eff.gemm
        eff = refine_on_steps(
            profile, model, eff, fitted, train, graphs=graphs, hold_overheads=overheads is not None
        )
        # The whole steps are bf16, so only the bf16 GEMM curve learns how GEMMs run inside a step; the curves
        # the steps could not teach take the same factor on their compute asymptote (_take_in_step)
        kc = eff.gemm.compute / alone.compute
        eff, extra = _take_in_step(cm, model, eff, extra, eight_bit, ran, kc)

    eff = eff.model_copy(update=_serving_terms(base, by.get("serving", [])))
    fits = {
        g: evaluate_group(cm, g, micro[g], getattr(eff, g)) for g in GROUPS if getattr(eff, g) is not None
    }
    if gemv.eff is not None:
        fits["gemv"] = gemv
    if steps:
        fits.update(evaluate_steps(profile, model, eff, steps, graphs))
    return FitResult(eff, fits, extra, kc)


def _serving_terms(base: Efficiencies, records: list[Record]) -> dict[str, float]:
    """The serving loop's host costs: measured, not fitted (the run's `serving` points, else the base profile's)."""
    from calibrate.serving import QUANTITIES

    serving = {k: getattr(base, k) for k in QUANTITIES}
    serving.update({r.params["quantity"]: r.seconds for r in records if r.params.get("quantity") in serving})
    return serving


# ------------------------------------------------------------------ kernels timed alone, priced in steps
def in_step(eff: OpEfficiency, factor: float) -> OpEfficiency:
    """A curve fitted on kernels timed alone, as it runs inside whole steps: its compute asymptote times the
    profile's in-step factor (the ramps and the memory side as fitted).

    Calibration times a kernel 20 times in a row; a serving step runs tensor-core work back to back for as
    long as it lasts, and the GPU's clocks fall when its power limit binds (benchmarks/gemm_clocks.py: on an
    H200 a dense bf16 GEMM runs at 0.86× its first milliseconds' rate once the load has lasted ~0.1 s, with the
    SM clock at ~1,480 MHz of 1,980; at half the time in GEMMs, not at all). Stage 2 of the fit learns that
    factor for the bf16 GEMM curve from whole steps; every other curve with a compute side that was fitted
    on kernels alone (8-bit GEMMs here, `group_from_run`'s groups, `int4_from_run`'s families) takes the same,
    except those whose points ran under that load already (SUSTAINED; `takes_in_step`).
    """
    return eff.model_copy(update={"compute": min(1.0, eff.compute * factor)})


def takes_in_step(group: str) -> bool:
    """Whether a curve of `group` fitted on its points alone takes the in-step compute factor: not where the
    compute side never binds (MEMORY_ONLY) nor where the points already ran under a step's sustained load
    (SUSTAINED)."""
    return group not in MEMORY_ONLY and group not in SUSTAINED


def in_step_fit(cm: CostModel, group: str, records: list[Record], fit: GroupFit, factor: float) -> GroupFit:
    """`fit`'s curve as it runs inside steps (in_step), with its errors on the same points; `fit` kept as `alone`."""
    out = evaluate_group(cm, group, records, in_step(fit.eff, factor))
    out.alone = fit
    return out


def in_step_factor(profile: HardwareProfile) -> float | None:
    """The profile's `calibration.in_step_compute_factor` (see `in_step`), or None where it has none."""
    f = getattr(profile.calibration, "in_step_compute_factor", None) if profile.calibration else None
    return float(f) if f else None


def _take_in_step(
    cm: CostModel,
    model: ModelSpec,
    eff: Efficiencies,
    extra: dict[str, GroupFit],
    eight_bit: dict[str, list[Record]],
    ran: set[str],
    kc: float,
) -> tuple[Efficiencies, dict[str, GroupFit]]:
    """The curves stage 2 could not refine, fitted on kernels alone, with the in-step factor `kc` the bf16 GEMM
    curve learnt (in_step): the 8-bit GEMMs (the whole steps are bf16; their microbenchmark errors are reported
    for the curve they get), and this run's groups the model's steps hold none of (a Llama sweep's MoE and MLA
    points), as group_from_run writes them."""
    extra = {
        d: in_step_fit(cm, "gemm", eight_bit[d], f, kc) if f.eff is not None else f for d, f in extra.items()
    }
    alone = {
        g: in_step(getattr(eff, g), kc)
        for g in GROUPS
        if g in ran and takes_in_step(g) and not refined_in_steps(g, model)
    }
    return eff.model_copy(update=alone), extra


def refined_in_steps(group: str, model: ModelSpec) -> bool:
    """Whether stage 2 refines `group` on the model's whole steps: the MoE group only where the steps hold MoE
    layers, the MLA groups only where they hold MLA attention (else the steps say nothing about them)."""
    if group in ("moe", "moe_large"):
        return model.is_moe
    if group in ("attention_mla_decode", "attention_mla_prefill"):
        return model.is_mla
    return True


# ------------------------------------------------------------------ stage 3
def _theta_of(eff: OpEfficiency, peak: float, bw: float) -> list[float]:
    """(c, m, A, Bm) of an OpEfficiency: the inverse of `to_efficiency`."""
    a = eff.compute_ramp_flops / (eff.compute * peak) + eff.compute_ramp_s + eff.launch_s
    b = eff.memory_ramp_bytes / (eff.memory * bw) + eff.memory_ramp_s + eff.launch_s
    return [eff.compute, eff.memory, a, b] + ([eff.blend] if eff.blend else [])


def _parameter_layout(
    eff: Efficiencies,
    active: list[str],
    t_micro: dict[str, np.ndarray],
    t_step_max: float,
    peak: float,
    bw: float,
    overheads: bool = True,
) -> tuple[list[float], list[float], list[float], dict]:
    """refine_on_steps' parameters: per group (c, m, A, Bm), or (m, A, Bm) for memory-only groups, then (unless
    `overheads` is False: held) the step overhead and per-sequence time. Returns (start values, lower and upper
    bounds, each group's (first index, parameter names, its theta))."""
    x0, lo, hi, slots = [], [], [], {}
    for g in active:
        th = _theta_of(getattr(eff, g), peak, bw)
        tmin = float(t_micro[g].min()) if g in t_micro else 1e-5
        names = (1, 2, 3) if g in MEMORY_ONLY else (0, 1, 2, 3)
        slots[g] = (len(x0), names, th)
        for i in names:
            x0.append(th[i])
            lo.append(1e-4 if i < 2 else 0.0)
            hi.append(1.0 if i < 2 else 10 * tmin + 1e-3)
    if overheads:
        x0 += [eff.step_overhead_s, eff.per_sequence_s]
        lo += [0.0, 0.0]
        hi += [t_step_max, 1e-3]
    return x0, lo, hi, slots


def refine_on_steps(
    profile: HardwareProfile,
    model: ModelSpec,
    eff: Efficiencies,
    micro: dict[str, list[Record]],
    steps: list[Record],
    prior_weight: float = 0.1,
    graphs: GraphRule | None = SERVING_GRAPHS,
    hold_overheads: bool = False,
) -> Efficiencies:
    """Refit every group and the overheads jointly on whole steps, the microbenchmarks acting as a prior.

    Kernels inside a model step do not run quite as they do alone (clocks under sustained load, L2
    shared with the neighbouring kernels, launch gaps inside CUDA graphs), so the step times get the
    last word; each group's microbenchmarks keep its parameters where the steps say little.
    `prior_weight` is the microbenchmarks' total weight relative to the steps'. The steps are priced through
    the CUDA graphs of `graphs`, as they ran.
    """
    from scipy.optimize import least_squares

    bw = profile.memory_bandwidth
    peak = profile.peak_flops("bf16")
    # eff's fresh-prompt rule
    cm0 = CostModel(with_efficiency(profile, eff), model, serving_host=False, graph_padding=graphs)
    shapes = [step_shape(cm0, r.kind, r.params) for r in steps]
    t_steps = np.array([r.seconds for r in steps], float)
    # the MoE group is refined only where the steps hold MoE layers (else they say nothing about it)
    active = [g for g in GROUPS if getattr(eff, g) is not None and refined_in_steps(g, model)]
    groups = [g for g in active if micro.get(g)]
    works = {g: work(cm0, g, [r.params for r in micro[g]]) for g in groups}
    t_micro = {g: np.array([r.seconds for r in micro[g]], float) for g in groups}
    w_micro = {g: np.sqrt(prior_weight * len(steps) / len(groups) / len(micro[g])) for g in groups}

    # overheads measured elsewhere (hold_overheads) are not parameters
    x0, lo, hi, slots = _parameter_layout(
        eff, active, t_micro, float(t_steps.max()), peak, bw, overheads=not hold_overheads
    )

    def unpack(x) -> tuple[dict[str, list[float]], Efficiencies]:
        thetas, new = {}, {}
        for g in active:
            start, names, th = slots[g]
            th = list(th)
            for j, i in enumerate(names):
                th[i] = x[start + j]
            if g in MEMORY_ONLY:
                th[2] = th[3]
            thetas[g] = th
            new[g] = to_efficiency(th, peak, bw)
        if not hold_overheads:
            new.update(step_overhead_s=float(x[-2]), per_sequence_s=float(x[-1]))
        return thetas, eff.model_copy(update=new)

    def resid(x):
        thetas, e = unpack(x)
        cm = CostModel(with_efficiency(profile, e), model, serving_host=False, graph_padding=graphs)
        r = [np.log(np.array([cm.step_time(b) for b in shapes]) / t_steps)]
        for g in groups:
            w = works[g]
            r.append(w_micro[g] * np.log(roofline(thetas[g], w.flops, w.nbytes, w.peak, bw) / t_micro[g]))
        return np.concatenate(r)

    x0 = np.clip(np.array(x0, float), np.array(lo) + 1e-15, np.array(hi) - 1e-15)
    res = least_squares(
        resid, x0, bounds=(lo, hi), x_scale="jac", xtol=1e-10, ftol=1e-10, gtol=1e-10, max_nfev=300
    )
    return unpack(res.x)[1]
