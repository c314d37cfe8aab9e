"""Carry a calibration from the GPU it was measured on to one that cannot be measured here.

The rule, in the cost model's terms (DESIGN.md, "Modelling rules"): each operation group's kernel time is
max(F / (η_c·P) + ramp_c, B / (η_m·W) + ramp_m) + launch. Of these,

- **asymptotes** η_c·P and η_m·W are what a GPU sustains, which datasheets overstate by different
  amounts per GPU (power caps: a 70 W T4 sustains a third of its boost-clock fp16 rate; GDDR vs HBM).
  A group keeps the fraction of its GPU's *sustained* ceiling that it reached where it was measured:
  η' = η · (S'/P') / (S/P), with S the sustained large-GEMM rate (per dtype) or device-copy bandwidth,
  measured by the source's calibration and sourced (published) for the target (`HardwareProfile.sustained`).
- **compute ramps** are times: the pipeline fill and drain of a kernel's waves, a fixed number of SM
  clock cycles, so ramp_c' = ramp_c · f / f' with f the SM boost clocks. A ramp stored as a FLOP count
  (the older profiles) is first turned into its time on the source GPU. A FLOP ramp carried unchanged
  would cost ramp/(η·P') per kernel, which grows as the peak falls: 4.8 µs a GEMM on the H100, 73 µs
  on a T4, +2.3 ms on a T4's 8B int4 decode step at batch 1, whose GEMMs are all bound by weight reads.
  A per-SM-work rule (ramp FLOPs ∝ SM count) would still charge 24 µs per GEMM on a T4, since the
  per-SM tensor rate differs 5× from the H100: the work of a batch-1 GEMV shrinks with its tokens, so a
  tile's worth of work per SM is not the right unit for what the H100's ramp measured.
- **memory ramps and launch times** are latencies (bytes in flight = bandwidth × latency by Little's
  law; a kernel's launch and tail): carried unchanged in seconds.
- **per-step overheads** fitted on the GPU are carried unchanged, and the serving loop's host times are
  the engine's, measured on the source's host, not a property of the GPU.

Checked where both ends are measured: the H100's calibration carried to the H200 by this rule against
the H200's own calibrated steps (benchmarks/gpu_transfer.py, README).
"""

from __future__ import annotations

from core.errors import ConfigError
from core.hardware import Efficiencies, HardwareProfile, OpEfficiency

GROUPS = ("gemm", "attention_prefill", "attention_decode", "elementwise", "attention_fresh", "gemv")


def _ratio(
    target: float | None, target_peak: float, source: float | None, source_peak: float, what: str
) -> float:
    if source is None or target is None:
        raise ConfigError(
            f"transfer needs the sustained {what} of both GPUs (profile `sustained`, or a calibration)"
        )
    return (target / target_peak) / (source / source_peak)


def asymptote_factors(
    source: HardwareProfile, target: HardwareProfile, dtype: str = "bf16"
) -> tuple[float, float]:
    """(compute, memory) factors on the efficiencies: the target's sustained fraction of its datasheet over the
    source's, for 16-bit GEMMs (`dtype`) and device copies."""
    sixteen = "bf16" if target.native_dtype("bf16") else "fp16"
    d = sixteen if dtype in ("bf16", "fp16") else dtype
    kc = _ratio(
        target.sustained_flops(d), target.peak_flops(d), source.sustained_flops(dtype), source.peak_flops(dtype),
        f"{d} GEMM rate",
    )  # fmt: skip
    km = _ratio(
        target.sustained_bandwidth, target.memory_bandwidth, source.sustained_bandwidth, source.memory_bandwidth,
        "memory bandwidth",
    )  # fmt: skip
    return kc, km


def clock_ratio(source: HardwareProfile, target: HardwareProfile) -> float:
    """f_source / f_target: how much longer a fixed number of SM cycles lasts on the target."""
    if not (source.sm_clock_mhz and target.sm_clock_mhz):
        raise ConfigError(f"transfer {source.name} -> {target.name} needs both profiles' sm_clock_mhz")
    return source.sm_clock_mhz / target.sm_clock_mhz


def ramp_times(e: OpEfficiency, peak: float, bandwidth: float) -> tuple[float, float]:
    """(compute, memory) ramp of `e` in seconds on the GPU whose peak and bandwidth it was fitted at."""
    return (
        e.compute_ramp_flops / (e.compute * peak) + e.compute_ramp_s,
        e.memory_ramp_bytes / (e.memory * bandwidth) + e.memory_ramp_s,
    )


def transfer_op(
    e: OpEfficiency, kc: float, km: float, clocks: float, peak: float, bandwidth: float
) -> OpEfficiency:
    """One group's efficiency on the target: asymptotes scaled, compute ramp in cycles, latencies in seconds."""
    rc, rm = ramp_times(e, peak, bandwidth)
    return OpEfficiency(
        compute=min(1.0, e.compute * kc),
        memory=min(1.0, e.memory * km),
        compute_ramp_s=rc * clocks,
        memory_ramp_s=rm,
        launch_s=e.launch_s,
        blend=e.blend,
    )


def transfer(source: HardwareProfile, target: HardwareProfile) -> Efficiencies:
    """The source's efficiencies carried to the target GPU by the rule above."""
    kc, km = asymptote_factors(source, target)
    clocks = clock_ratio(source, target)
    peak, bw = source.peak_flops("bf16"), source.memory_bandwidth
    e = source.efficiency
    ops = {
        g: transfer_op(getattr(e, g), kc, km, clocks, peak, bw) for g in GROUPS if getattr(e, g) is not None
    }
    return e.model_copy(update=ops)


def transfer_by_dtype(source: HardwareProfile, target: HardwareProfile) -> dict[str, dict]:
    """The source's fitted 8-bit GEMM curves (calibration.gemm_by_dtype) on the target, for the 8-bit formats
    the target runs natively and has a sustained rate for."""
    fitted = getattr(source.calibration, "gemm_by_dtype", None) or {}
    out = {}
    _, km = asymptote_factors(source, target)
    clocks = clock_ratio(source, target)
    for d, curve in fitted.items():
        if (
            not target.native_dtype(d)
            or target.sustained_flops(d) is None
            or source.sustained_flops(d) is None
        ):
            continue
        kc = _ratio(
            target.sustained_flops(d),
            target.peak_flops(d),
            source.sustained_flops(d),
            source.peak_flops(d),
            d,
        )
        e = OpEfficiency.model_validate(curve)
        out[d] = transfer_op(e, kc, km, clocks, source.peak_flops(d), source.memory_bandwidth).model_dump()
    return out


def transferred_profile(source: HardwareProfile, target: HardwareProfile) -> HardwareProfile:
    """The target profile with the source's calibration carried over by the rule (its own datasheet kept)."""
    from core.hardware import Calibration

    cal = Calibration(
        status="transferred",
        date=source.calibration.date if source.calibration else "",
        gpu=f"{source.calibration.gpu if source.calibration else source.name} (by core/gpu_transfer.py)",
        notes="efficiencies of the source profile carried by core/gpu_transfer.py's rule",
        source_profile=source.name,
        gemm_by_dtype=transfer_by_dtype(source, target),
    )
    return target.model_copy(update={"efficiency": transfer(source, target), "calibration": cal})
