"""GPU hardware profiles: datasheet ceilings, price, and the cost model's efficiencies.

A profile is one YAML file in `hardware_profiles/`, looked up by its short name (`h100-sxm`).
Display units in the file (GiB, GB/s, TFLOP/s, µs); SI on the properties the simulator reads.
Calibrated profiles carry a `calibration` block; its fitted efficiencies are the ones used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.errors import ConfigError, one_line, read_yaml
from core.resources import shipped

# The shipped profiles: the checkout's hardware_profiles/, or the installed package's copy of it.
PROFILE_DIR = shipped("hardware_profiles")
# A user's own profile folders (os.pathsep-separated), searched before the shipped ones; `--profiles DIR`
# sets it too, so that search workers in other processes find the same profiles.
PROFILES_ENV = "INFERPLAN_PROFILES"

GROUPS = ("gemm", "attention_prefill", "attention_decode", "elementwise")
# Whole fresh prompts (nothing cached before them) longer than this many tokens run through a second
# prefill kernel in the engine (cuDNN's fused attention, padded to a multiple of the bucket so that its
# execution plans are built once, at warm-up): see engine/attention.py. Profiles measured with it carry
# that kernel's efficiency as `attention_fresh`; the rule's two numbers travel with it.
FRESH_PREFILL_MIN_TOKENS = 2049
FRESH_PREFILL_BUCKET = 128
# MoE layers whose routed (token, expert) rows average at least this many an expert leave the regime where the
# expert GEMMs stream the touched experts' weights (the engine's split-K Triton kernel) for a compute ramp
# (128-row tiles, then torch._grouped_mm from engine.moe.GROUPED_MM_MIN_ROWS): one roofline does not fit both,
# so calibration fits `moe` below and `moe_large` from here. 64 is where the fitted points' p90 error is lowest
# on the H200's moe sweep (8.2% at 64 rows; 9.9-18.2% splitting at 48, 96, 128 or 160; one curve: 23.6%);
# the number travels with the profile (Efficiencies.moe_large_min_rows).
MOE_LARGE_MIN_ROWS = 64


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class OpEfficiency(_Strict):
    """Roofline efficiencies of one operation group.

    Time of one kernel with F FLOPs moving B bytes:
    max(F / (compute · peak) + compute_ramp_s, B / (memory · bandwidth) + memory_ramp_s) + launch_s
    (with `blend` q: the q-norm of the two terms, each with launch_s, in place of the max).
    The ramps make efficiency grow smoothly with problem size (a kernel reaches half its asymptotic rate
    when its work takes as long as its ramp). They are stored as time, which carries across GPUs
    (core/gpu_transfer.py), never as a FLOP count, which turns into a fixed time that grows as the
    peak falls. `compute_ramp_flops` / `memory_ramp_bytes` are the older spelling that calibrations
    before issue 14 wrote: a FLOP (byte) count valid only at the peak (bandwidth) of the GPU it was
    fitted on; they add to the time ramps, and a transfer converts them to time on that GPU first.
    """

    compute: float = Field(gt=0, le=1.0, description="asymptotic fraction of peak FLOP/s")
    memory: float = Field(gt=0, le=1.0, description="asymptotic fraction of datasheet memory bandwidth")
    compute_ramp_s: float = Field(
        0.0, ge=0, description="seconds of work at which compute efficiency is half its asymptote"
    )
    memory_ramp_s: float = Field(
        0.0, ge=0, description="seconds of traffic at which bandwidth efficiency is half its asymptote"
    )
    compute_ramp_flops: float = Field(
        0.0, ge=0, description="(older spelling, on the profile's own GPU only) FLOPs at half the asymptote"
    )
    memory_ramp_bytes: float = Field(
        0.0, ge=0, description="(older spelling, on the profile's own GPU only) bytes at half the asymptote"
    )
    launch_s: float = Field(0.0, ge=0, description="fixed time per kernel (launch, tail), seconds")
    blend: float | None = Field(
        None,
        ge=1.0,
        description="where set, the two terms (each with launch_s) combine as (t_c^q + t_m^q)^(1/q) instead of their "
        "max: a kernel that streams weights and computes at once over a wide range of sizes (the MoE layer's "
        "grouped GEMMs, whose rows an expert move it from one bound to the other) takes longer than either "
        "term where they are close; q is fitted (calibrate.fit.BLENDED), large q is the max",
    )


class Efficiencies(_Strict):
    gemm: OpEfficiency
    attention_prefill: OpEfficiency
    attention_decode: OpEfficiency
    elementwise: OpEfficiency
    attention_fresh: OpEfficiency | None = Field(
        None,
        description="prefill attention of a whole fresh prompt longer than fresh_prefill_min_tokens (its own "
        "kernel in the engine, measured by python -m calibrate); absent: attention_prefill serves every chunk",
    )
    moe: OpEfficiency | None = Field(
        None,
        description="one MoE layer's routed experts as the engine runs them (routing, the expert sort, the two "
        "grouped GEMMs over the touched experts, the combine; measured by python -m calibrate as its own "
        "group); absent: the expert GEMMs are priced on the gemm curve, one call per weight",
    )
    attention_mla_decode: OpEfficiency | None = Field(
        None,
        description="MLA decode attention in the absorbed form (engine/mla.py's Triton kernel and combine over the "
        "cached latents; measured by python -m calibrate at DeepSeek-V2-Lite's shape); absent: attention_decode",
    )
    attention_mla_prefill: OpEfficiency | None = Field(
        None,
        description="MLA prompt attention in the absorbed form (engine/mla.py's prompt kernel, steps of up to "
        "MLA_ABSORBED_STEP_TOKENS tokens); absent: attention_prefill",
    )
    gemv: OpEfficiency | None = Field(
        None,
        description="single-row weight GEMMs (a batch-1 decode step's projections, a step's one logits row) as the "
        "engine streams them: its Triton GEMV with the tile its warm-up picks per shape (engine.fused.tune_gemv); "
        "fitted on calibration's bf16 GEMM points of one row (calibrate.fit.fit_gemv); absent: the gemm curve",
    )
    moe_large: OpEfficiency | None = Field(
        None,
        description="MoE layers with at least moe_large_min_rows routed rows an expert on average (prefill-size "
        "steps, where the expert GEMMs are compute-bound; fitted by python -m calibrate as its own group); "
        "absent: the moe curve prices every MoE layer",
    )
    moe_large_min_rows: int = Field(
        MOE_LARGE_MIN_ROWS, ge=1, description="routed rows an expert from which moe_large prices a MoE layer"
    )
    fresh_prefill_min_tokens: int = Field(
        FRESH_PREFILL_MIN_TOKENS,
        ge=1,
        description="fresh prompts of at least this many tokens take attention_fresh",
    )
    fresh_prefill_bucket: int = Field(
        FRESH_PREFILL_BUCKET, ge=1, description="they run padded to a multiple of this many tokens"
    )
    step_overhead_s: float = Field(
        ge=0, description="fixed time per model step (scheduling, sampling, graph launch)"
    )
    per_sequence_s: float = Field(
        0.0, ge=0, description="host time per sequence in a step (bookkeeping, sampling)"
    )
    serving_step_s: float = Field(
        0.0,
        ge=0,
        description="host seconds per step of a serving loop outside the GPU's work (scheduling, inputs, sampled "
        "ids back, bookkeeping), measured by python -m calibrate with engine/serving.py",
    )
    serving_per_sequence_s: float = Field(0.0, ge=0, description="the same, per sequence in the step")
    serving_prompt_step_s: float = Field(
        0.0,
        ge=0,
        description="the same, extra for a step with prompt tokens (its layout is larger to prepare)",
    )
    spec_round_s: float = Field(
        0.0,
        ge=0,
        description="seconds a speculative round of the engine's (engine/speculative.py, draft model) takes beyond "
        "its k draft steps and its verification step as the cost model prices them (benchmarks/fit_spec_round.py)",
    )
    eager_launch_s_per_layer: float = Field(
        0.0,
        ge=0,
        description="host seconds per layer to issue a step run eagerly (without a CUDA graph): an eager "
        "step takes at least this times the layers (serving.cuda_graphs: decode_only)",
    )
    eager_launch_mla_s_per_layer: float = Field(
        0.0,
        ge=0,
        description="the same for an MLA model's eager steps (DeepSeek-V2-Lite's plain-form prompt steps in the "
        "serving loop's rhythm, calibrate.serving.measure_mla_eager); 0: eager_launch_s_per_layer scaled by the "
        "kernels a layer launches",
    )


class CollectiveFit(_Strict):
    """One collective's measured cost on this machine: latency + the formula's bytes / bandwidth
    (`python -m calibrate interconnect`; the bytes as core.parallelism counts them)."""

    latency_us: float = Field(ge=0, description="fitted fixed time, µs")
    bandwidth_gbps: float = Field(gt=0, description="fitted rate of the formula's bytes, GB/s")
    ranks: int = Field(ge=2, description="GPUs the fit was measured on")
    holdout_median_pct: float | None = Field(None, ge=0, description="median error on held-out sizes, %")


class Interconnect(_Strict):
    kind: str = Field(description="nvlink, pcie, infinity-fabric, ...")
    bandwidth_gbps: float = Field(gt=0, description="per-GPU unidirectional bandwidth, GB/s")
    latency_us: float = Field(ge=0, description="one-way latency of a small message, µs")
    # NCCL's maintainer: "450GB/s is the line rate. With the protocol overhead (~20%) NCCL can get an
    # effective NVLink bandwidth of 370GB/s" on H100 (github.com/NVIDIA/nccl-tests/issues/212): 0.82.
    efficiency: float = Field(
        0.8, gt=0, le=1.0, description="fraction of the bandwidth collectives reach (NCCL bus bandwidth)"
    )
    measured: dict[Literal["all_reduce", "all_gather", "all_to_all", "send"], CollectiveFit] | None = Field(
        None, description="measured fits per collective; where given they replace the datasheet figures"
    )


class Price(_Strict):
    usd_per_hour: float = Field(ge=0)
    source: str


class PeakTflops(_Strict):
    """Dense (no sparsity) peak rates of the matrix units, TFLOP/s (TOP/s for int8)."""

    fp32: float | None = Field(None, gt=0)
    tf32: float | None = Field(None, gt=0)
    fp16: float | None = Field(None, gt=0)
    bf16: float | None = Field(None, gt=0)
    fp8: float | None = Field(None, gt=0)
    int8: float | None = Field(None, gt=0)


class Sustained(_Strict):
    """What the GPU sustains, measured (here or in a published microbenchmark): the asymptotes a transfer
    scales the fitted efficiencies to (core/gpu_transfer.py). Datasheet rates are boost-clock ceilings
    that power-capped parts (T4, L4: 70-72 W) fall far below under sustained tensor load."""

    tflops: dict[Literal["fp16", "bf16", "fp8", "int8"], float] = Field(
        description="dense GEMM rate of a large matmul, TFLOP/s (TOP/s for int8), per dtype"
    )
    memory_bandwidth_gbps: float = Field(gt=0, description="device copy or stream bandwidth, GB/s")
    assumed: list[str] = Field(
        default_factory=list,
        description="the figures above that are assumptions (no published measurement found): dtypes of `tflops`, "
        "or memory_bandwidth_gbps",
    )

    @field_validator("tflops")
    @classmethod
    def _positive(cls, v: dict[str, float]) -> dict[str, float]:
        if not v or any(x <= 0 for x in v.values()):
            raise ValueError("needs at least one positive rate")
        return v


# Weight formats a scenario may ask for, and what a GPU without matrix units for them runs instead.
WEIGHT_FORMATS = ("bf16", "fp16", "fp8", "int8", "int4")


class Formats(_Strict):
    """Number formats the matrix units run natively, and what engines do with the others on this GPU."""

    native: list[Literal["fp16", "bf16", "fp8", "int8"]] = Field(
        description="formats the tensor/matrix units run natively"
    )
    fallback: dict[str, str] = Field(
        default_factory=dict,
        description="a weight format the units lack -> what engines run instead (one line, with its source)",
    )
    unsupported: dict[str, str] = Field(
        default_factory=dict, description="a weight format engines refuse on this GPU -> why"
    )
    kv_fallback: dict[str, str] = Field(
        default_factory=dict,
        description="a KV-cache format the units lack -> how engines store and read it instead (one line, sourced)",
    )
    kv_unsupported: dict[str, str] = Field(
        default_factory=dict, description="a KV-cache format engines refuse on this GPU -> why"
    )


class Calibration(BaseModel):
    """Provenance of a measured profile (free-form beyond the named fields)."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)
    status: Literal["measured", "transferred", "fitted"] = "measured"
    date: str = ""
    gpu: str = ""
    notes: str = ""


class HardwareProfile(_Strict):
    name: str
    display_name: str
    vendor: Literal["nvidia", "amd", "other"] = "nvidia"
    memory_gib: float = Field(gt=0)
    memory_bandwidth_gbps: float = Field(gt=0, description="datasheet memory bandwidth, GB/s")
    peak_tflops: PeakTflops
    interconnect: Interconnect
    pcie_bandwidth_gbps: float = Field(gt=0, description="host link, unidirectional GB/s")
    tdp_w: float | None = Field(None, gt=0)
    sm_count: int | None = Field(None, gt=0, description="streaming multiprocessors (AMD: compute units)")
    sm_clock_mhz: float | None = Field(None, gt=0, description="boost clock of the SMs, MHz")
    sustained: Sustained | None = None
    formats: Formats | None = None
    price: Price
    efficiency: Efficiencies
    sources: dict[str, str] = Field(description="where each figure comes from")
    calibration: Calibration | None = None

    @field_validator("peak_tflops")
    @classmethod
    def _has_a_16bit_rate(cls, v: PeakTflops) -> PeakTflops:
        # a field validator, so the error is reported at `peak_tflops`, not at the top level
        if not (v.fp16 or v.bf16):
            raise ValueError("needs an fp16 or bf16 rate")
        return v

    # ---------------------------------------------------------------- SI views
    @property
    def memory_bytes(self) -> float:
        return self.memory_gib * 2**30

    @property
    def memory_bandwidth(self) -> float:
        """Datasheet bytes/s."""
        return self.memory_bandwidth_gbps * 1e9

    def peak_flops(self, dtype: str) -> float:
        """FLOP/s the matrix units run for operands of `dtype` (int4 weight-only runs at 16-bit)."""
        p = self.peak_tflops
        order = {
            "fp32": ("tf32", "fp32"),
            "bf16": ("bf16", "fp16"),
            "fp16": ("fp16", "bf16"),
            "fp8": ("fp8", "fp16", "bf16"),
            "int8": ("int8", "fp16", "bf16"),
            "int4": ("bf16", "fp16"),
        }.get(dtype, ("bf16", "fp16"))
        for d in order:
            v = getattr(p, d)
            if v:
                return v * 1e12
        raise ConfigError(f"profile {self.name}: no peak rate for {dtype}")

    def native_dtype(self, dtype: str) -> bool:
        """Whether the matrix units run `dtype` natively (no fallback)."""
        return bool(getattr(self.peak_tflops, dtype, None))

    @property
    def is_calibrated(self) -> bool:
        return self.calibration is not None and self.calibration.status == "measured"

    @property
    def status(self) -> str:
        """Where the efficiencies come from: measured here, fitted to published runs, transferred, or datasheet."""
        return self.calibration.status if self.calibration is not None else "datasheet"

    def sustained_flops(self, dtype: str) -> float | None:
        """The large-GEMM rate this GPU sustains for `dtype` (FLOP/s): its calibration's ceiling when measured
        here, else the profile's sourced `sustained` figure; None where neither has it."""
        ceilings = getattr(self.calibration, "ceilings", None) or {}
        tf = ceilings.get(f"gemm_{dtype}_tflops") if self.is_calibrated else None
        if tf is None and dtype == "fp16":
            tf = ceilings.get("gemm_bf16_tflops") if self.is_calibrated else None
        if tf is None and self.sustained is not None:
            tf = self.sustained.tflops.get(dtype)
            if tf is None and dtype in ("fp16", "bf16"):
                tf = self.sustained.tflops.get("bf16" if dtype == "fp16" else "fp16")
        return tf * 1e12 if tf else None

    @property
    def sustained_bandwidth(self) -> float | None:
        """Bytes/s this GPU's memory sustains (device copy): its calibration's, else the sourced figure."""
        ceilings = getattr(self.calibration, "ceilings", None) or {}
        if self.is_calibrated and ceilings.get("copy_bandwidth_gbps"):
            return ceilings["copy_bandwidth_gbps"] * 1e9
        return self.sustained.memory_bandwidth_gbps * 1e9 if self.sustained is not None else None


def provenance(p: HardwareProfile) -> tuple[str, str]:
    """(where a profile's efficiencies come from, its validation error): measured here, transferred (and from
    which profile) or datasheet, with the held-out error of its steps or of its published checks."""
    cal = p.calibration.model_dump() if p.calibration is not None else {}
    if p.is_calibrated:
        held = (cal.get("fit_errors_pct") or {}).get("step", {}).get("holdout", {})
        err = (
            f"held-out steps {held['median_pct']:.1f}% median" if held.get("median_pct") is not None else "—"
        )
        return "measured here", err
    if p.calibration is None:
        return "datasheet", "unvalidated"
    v = cal.get("validation") or {}
    status = {
        "transferred": f"transferred from {cal.get('source_profile', '?')}",
        "fitted": "fitted to published",
    }
    parts = []
    if v.get("rule_h100_to_h200_median_pct") is not None:
        parts.append(f"rule H100->H200 {v['rule_h100_to_h200_median_pct']:.1f}%")
    if v.get("published_median_abs_pct") is not None:
        n = v["published_checks"]
        parts.append(f"{n} published check{'s' if n != 1 else ''} {v['published_median_abs_pct']:.0f}%")
    elif v:
        parts.append("no published check")
    return status.get(p.calibration.status, p.calibration.status), ", ".join(parts) or "unvalidated"


def weight_format(profile: HardwareProfile, weight_dtype: str) -> str | None:
    """The one-line note of a weight format this GPU runs through an engine's fallback (None: native, or a
    profile that lists no formats); ConfigError naming the field when engines refuse it on this GPU.

    Distinct from an engine profile lacking a quantized kernel: this is the GPU lacking the units."""
    f = profile.formats
    if f is None or weight_dtype in f.native or weight_dtype == "int4" and "int4" not in f.unsupported:
        return None
    if weight_dtype in f.unsupported:
        raise ConfigError(
            f"serving.precision.weight_dtype: {weight_dtype} on {profile.display_name}: the GPU has no "
            f"{weight_dtype} units and engines refuse it ({f.unsupported[weight_dtype]}); use one of "
            f"{', '.join(d for d in WEIGHT_FORMATS if d not in f.unsupported)}"
        )
    if weight_dtype in f.fallback:
        return f"{weight_dtype} weights on {profile.display_name}: {f.fallback[weight_dtype]}"
    return None


def kv_format(profile: HardwareProfile, kv_dtype: str) -> str | None:
    """The one-line note of a KV-cache format this GPU stores through an engine's fallback (None: native, or
    not listed); ConfigError naming the field when engines refuse it on this GPU. The cost model prices the KV
    cache by its bytes and attention at the 16-bit rate, which is what the fallbacks run."""
    f = profile.formats
    if f is None:
        return None
    if kv_dtype in f.kv_unsupported:
        raise ConfigError(
            f"serving.precision.kv_dtype: {kv_dtype} on {profile.display_name}: engines refuse an {kv_dtype} KV "
            f"cache on this GPU ({f.kv_unsupported[kv_dtype]}); use "
            + " or ".join(d for d in ("fp16", "bf16") if d in f.native)
        )
    if kv_dtype in f.kv_fallback:
        return f"{kv_dtype} KV cache on {profile.display_name}: {f.kv_fallback[kv_dtype]}"
    return None


def profile_sources() -> list[tuple[Path, str]]:
    """Where profiles are looked up, first match wins: each folder with how it got on the list."""
    extra = os.environ.get(PROFILES_ENV)
    found = [(Path(d).expanduser(), d) for d in extra.split(os.pathsep) if d] if extra else []
    found += [(Path.cwd() / "hardware_profiles", "./hardware_profiles"), (PROFILE_DIR, "built-in")]
    seen: set[Path] = set()
    unique = []
    for d, label in found:  # a checkout's ./hardware_profiles is also the built-in folder: listed once
        key = d.resolve()
        if key not in seen:
            seen.add(key)
            unique.append((d, label))
    return unique


def profile_dirs() -> list[Path]:
    return [d for d, _ in profile_sources()]


def profile_origins() -> dict[str, str]:
    """Every profile name that can be loaded, with the folder it is read from (the first that has it)."""
    origins: dict[str, str] = {}
    for d, label in profile_sources():
        for p in sorted(d.glob("*.yaml")):
            origins.setdefault(p.stem, label)
    return dict(sorted(origins.items()))


def profile_names() -> list[str]:
    return list(profile_origins())


def read_profile(path: Path) -> HardwareProfile:
    data = read_yaml(path, "profile")
    try:
        return HardwareProfile.model_validate(data)
    except ValidationError as e:
        raise one_line(e, str(path)) from None


def load_profile(name_or_path: str) -> HardwareProfile:
    """A profile by short name (searched in --profiles/$INFERPLAN_PROFILES, ./hardware_profiles, built-in) or path."""
    p = Path(name_or_path).expanduser()
    if p.suffix in (".yaml", ".yml"):
        if not p.exists():
            raise ConfigError(f"hardware profile {str(p)!r} does not exist")
        return read_profile(p)
    for d in profile_dirs():
        f = d / f"{name_or_path.lower()}.yaml"
        if f.exists():
            return read_profile(f)
    raise ConfigError(
        f"GPU {name_or_path!r} has no profile; use one of {', '.join(profile_names())} or a .yaml path"
    )


def write_profile(profile: HardwareProfile, path: Path) -> None:
    """Write a profile as YAML (fields in declaration order)."""
    data = profile.model_dump(mode="json", exclude_none=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False, width=120))
