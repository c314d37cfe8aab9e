"""`python -m calibrate`: detect the device, sweep, fit, and write the calibrated profile."""

from __future__ import annotations

import datetime as _dt
import sys
from dataclasses import dataclass
from pathlib import Path

from calibrate import detect, profile, sweep
from calibrate.accounting import STEP_KINDS
from calibrate.fit import FitResult, fit_all
from calibrate.measurements import (
    STEP_GRAPHS_NOW,
    Store,
    describe,
    identity,
    model_fingerprint,
    step_graphs,
    step_graphs_name,
)
from calibrate.plan import KINDS, Limits, Point, kind_engine_code, kv_token_budget, make_plan, sweep_ranges
from calibrate.plots import draw
from core.errors import ConfigError
from core.hardware import HardwareProfile
from core.model_spec import ModelSpec, load_model

# Memory kept free beside weights and the KV pool: activations of a 16k-token prefill step (MLP
# intermediate, qkv, logits of the last tokens), CUDA-graph pools and the allocator's slack.
ACTIVATION_RESERVE_BYTES = 8 * 2**30

CPU_LIMITS = Limits(max_kv_tokens=4096, max_batch=8, max_context=512)


class NoDevice(Exception):
    """No GPU (or no torch) where one was asked for: the CLI prints the message and exits with 2."""


@dataclass
class Options:
    quick: bool = False
    device: str = "cuda"
    model: str = "llama-3.1-8b"
    name: str | None = None
    base: str | None = None
    out_dir: str = "hardware_profiles"
    work_dir: str | None = None
    restart: bool = False  # discard the work dir's earlier measurements
    redo: str | None = None  # comma-separated kinds to measure again
    force: bool = False  # write over a profile of another device
    command: str = ""


def refuse_unbuildable(spec: ModelSpec) -> None:
    """One line before any sweep starts for a model the engine cannot build (engine.model refuses the same)."""
    if spec.is_mla:
        raise ConfigError(
            f"--model {spec.name}: multi-head latent attention (MLA, DeepSeek) is not swept by calibration "
            "(the engine serves it, engine/mla.py, but no sweep times its kernels yet); calibrate with a non-MLA model "
            "(e.g. --model llama-3.1-8b or mixtral-8x7b for MoE) and forecast this one with that GPU profile"
        )


def redo_kinds(redo: str) -> dict[str, list[dict[str, str]]]:
    """--redo's comma-separated kinds, each checked, with their filters: KIND takes every measurement of the kind
    again, KIND:PARAM=VALUE (several joined by ':') only those whose parameters match, e.g. gemm:m=1:dtype=bf16
    after a change to the batch-1 GEMV; a kind named twice takes the points either filter matches."""
    kinds: dict[str, list[dict[str, str]]] = {}
    for item in (k.strip() for k in redo.split(",")):
        if not item:
            continue
        kind, *conds = item.split(":")
        bad = [c for c in conds if c.count("=") != 1 or not c.split("=")[0]]
        if bad:
            raise ConfigError(
                f"--redo {item}: filters are PARAM=VALUE joined by ':' (e.g. gemm:m=1:dtype=bf16)"
            )
        kinds.setdefault(kind, []).append(dict(c.split("=") for c in conds))
    unknown = set(kinds) - KINDS
    if unknown or not kinds:
        raise ConfigError(
            f"--redo {','.join(sorted(unknown)) or repr(redo)}: not a measurement kind; "
            f"use some of {', '.join(sorted(KINDS))}"
        )
    return kinds


def need_torch_device(device: str):
    """The torch module, checked to reach `device`; NoDevice with one clear line otherwise."""
    try:
        import torch
    except ImportError:
        raise NoDevice(
            "calibrate needs PyTorch to time kernels: pip install torch (a CUDA build on a GPU machine)"
        ) from None
    if device == "cpu":
        return torch
    if not torch.cuda.is_available():
        raise NoDevice(
            "no CUDA GPU found (torch.cuda.is_available() is False); run on a machine with an NVIDIA GPU, "
            "or pass --device cpu for a tiny CPU calibration"
        )
    return torch


def device_limits(spec: ModelSpec, device: str) -> Limits:
    """How much KV the step runner may hold on this device next to the model's weights."""
    import torch

    if torch.device(device).type == "cpu":
        return CPU_LIMITS
    free, _total = torch.cuda.mem_get_info()
    room = free - spec.weight_bytes("bf16") - ACTIVATION_RESERVE_BYTES
    tokens = kv_token_budget(max(room, 0), spec.kv_bytes_per_token("bf16"))
    if tokens < 4096:
        raise ConfigError(
            f"{spec.name} leaves no room for a KV cache on this GPU "
            f"({spec.weight_bytes('bf16') / 2**30:.1f} GiB of weights, {free / 2**30:.1f} GiB free)"
        )
    return Limits(max_kv_tokens=min(tokens, 1_000_000), max_batch=256, max_context=32_768)


def gemm_dtypes(base: HardwareProfile | None, device: str) -> list[str]:
    """bf16 always; fp8 and int8 where the GPU runs them natively and torch can; int4 (weight-only, the engine's
    Triton W4A16 kernel, engine/quant.py) where Triton runs: its own GEMM group, dequantization included."""
    if device == "cpu" or base is None:
        return ["bf16"]
    from engine.quant import triton
    from engine.quantize import fp8_supported

    out = ["bf16"]
    if base.native_dtype("fp8") and fp8_supported(device):
        out.append("fp8")
    if base.native_dtype("int8"):
        out.append("int8")
    if triton is not None:
        out.append("int4")
    return out


def _sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def ceilings(store: Store) -> dict:
    """Copy bandwidth (bytes read + written) and large-GEMM rate per dtype, from the sweep."""
    out: dict = {}
    for r in store.ok("copy"):
        n = r.params["nbytes"] // 2 * 2
        out["copy_bandwidth_gbps"] = _sig(2 * n / r.seconds / 1e9)
    for r in store.ok("ceiling_gemm"):
        q = r.params
        out[f"gemm_{q['dtype']}_tflops"] = _sig(2.0 * q["m"] * q["k"] * q["n"] / r.seconds / 1e12)
        out[f"gemm_{q['dtype']}_shape"] = f"{q['m']}x{q['k']}x{q['n']}"
    return out


def base_for_run(base_name: str, store: Store) -> HardwareProfile:
    """The datasheet profile to start from; on the CPU, one made of the measured ceilings."""
    if base_name != "cpu":
        return profile.read(base_name, "--base")
    c = ceilings(store)
    if "copy_bandwidth_gbps" not in c or "gemm_bf16_tflops" not in c:
        raise ConfigError("the CPU run has no copy or GEMM ceiling measured; rerun with --restart")
    template = profile.read("h100-sxm").efficiency  # starting values only; every group is refitted
    return profile.cpu_base(c["copy_bandwidth_gbps"] * 1e9, c["gemm_bf16_tflops"] * 1e12, template, 8 * 2**30)


def need_measurements(store: Store) -> None:
    if not store.ok():
        raise ConfigError(
            f"{store.path}: no measurement to fit ({len(store.records)} points failed or ran out of memory, "
            f"{store.skipped_lines} lines damaged); run python -m calibrate to measure"
        )


def fit_and_write(
    store: Store,
    spec: ModelSpec,
    base: HardwareProfile,
    name: str,
    out_dir: Path,
    work_dir: Path,
    plan: list[Point] | None,
    provenance: dict,
    log=print,
    force: bool = False,
    overheads: tuple[float, float] | None = None,
    exclude: tuple[str, ...] = (),
) -> tuple[Path, FitResult]:
    """Fit every group, draw the plots, write the profile; returns its path and the fit. `overheads`: measured
    step terms the fit holds (calibrate.fit.fit_all); `exclude`: kinds of points left out (recorded)."""
    records = [r for r in store.records.values() if r.kind not in exclude]
    need_measurements(store)
    # checked again at the end: a profile may have been written there while the sweep ran
    profile.check_overwrite(Path(out_dir) / f"{name}.yaml", provenance.get("gpu", ""), force)
    graphs = step_graphs(store.meta)
    result = fit_all(base, spec, records, graphs=graphs, overheads=overheads)
    plots = draw(
        result.groups | {f"gemm_{d}": f for d, f in result.extra_gemm.items()},
        work_dir,
        title=f"{provenance.get('gpu', '')} · {spec.name}",
    )
    if isinstance(plots, str):
        log(plots)
    c = ceilings(store)
    if "copy_bandwidth_gbps" in c:
        c["copy_fraction_of_datasheet"] = round(c["copy_bandwidth_gbps"] / base.memory_bandwidth_gbps, 3)
    for d in ("bf16", "fp8", "int8"):
        k = f"gemm_{d}_tflops"
        if k in c and base.native_dtype(d):
            c[f"gemm_{d}_fraction_of_datasheet"] = round(c[k] * 1e12 / base.peak_flops(d), 3)
    ok = [r for r in records if r.status == "ok"]
    prov = {
        "date": _dt.date.today().isoformat(),
        **provenance,
        "model": spec.name,
        "measurements": {
            "ok": len(ok),
            "oom": sum(r.status == "oom" for r in records),
            "error": sum(r.status == "error" for r in records),
            "file": str(work_dir / "measurements.jsonl"),
        },
        "sweep": sweep_ranges(plan if plan is not None else [Point(r.kind, r.params, r.holdout) for r in ok]),
        "fit_errors_pct": result.errors(),
        # the CUDA graphs the whole steps were priced through, as they ran (measurements.step_graphs)
        "step_graphs": step_graphs_name(store.meta) if graphs is not None else "eager",
        "ceilings": c,
    }
    if exclude:
        prov["excluded_kinds"] = list(exclude)
    if overheads is not None:
        prov["held_overheads"] = {"step_overhead_s": overheads[0], "per_sequence_s": overheads[1]}
    if result.in_step_compute is not None:  # what curves fitted on kernels alone take (calibrate.fit.in_step)
        prov["in_step_compute_factor"] = result.in_step_compute
    if result.extra_gemm:
        prov["gemm_by_dtype"] = {d: f.eff.model_dump() for d, f in result.extra_gemm.items() if f.eff}
    header = (
        f"{base.display_name}: datasheet figures as in the base profile ({base.name}); see `sources`.\n"
        f"Efficiencies fitted by `python -m calibrate` on {provenance.get('gpu', 'this device')} "
        f"({prov['date']}); provenance and fit errors under `calibration`."
    )
    prof = profile.calibrated(base, name, result.efficiency, prov)
    path = profile.write(prof, out_dir, header)
    return path, result


def error_table(result: FitResult) -> str:
    """Plain-text table of fit errors per group (training and held-out points)."""
    lines = [
        f"{'group':<20} {'fit median':>10} {'fit p90':>8} {'held-out median':>16} {'held-out p90':>13} {'n fit/held':>10}"
    ]

    def cell(x):
        return f"{x:.1f}%" if x == x else "-"

    fits = result.groups | {f"gemm_{d}": f for d, f in result.extra_gemm.items()}
    for g, f in fits.items():
        if not (f.train.n or f.holdout.n):
            continue
        lines.append(
            f"{g:<20} {cell(f.train.median_pct):>10} {cell(f.train.p90_pct):>8} "
            f"{cell(f.holdout.median_pct):>16} {cell(f.holdout.p90_pct):>13} {f.train.n:>5}/{f.holdout.n:<4}"
        )
    return "\n".join(lines)


def stale_engine_line(other: dict[str, int], code: str | dict[str, str]) -> str:
    """One line on the stored points that ran other engine code than this checkout's `code`, one code or one per
    kind (Store.other_engine)."""
    n = sum(other.values())
    kinds = ",".join(sorted(other))
    now = (f"engine/*.py {code}" if isinstance(code, str) else
           "engine/*.py less the feature files a kind does not run: calibrate.plan.kind_engine_code")  # fmt: skip
    return (f"{n} stored measurement{'s' * (n > 1)} ({kinds}) ran other engine code than this checkout's "
            f"({now}), or were taken before the store recorded it; they are kept: --redo "
            f"KINDS measures them again where the engine changed")  # fmt: skip


def run(opts: Options, log=print) -> Path:
    """The whole calibration; returns the profile path. Raises ConfigError / NoDevice with one-line messages."""
    spec = load_model(opts.model)
    refuse_unbuildable(spec)
    cpu = opts.device == "cpu"
    if opts.device not in ("cpu", "cuda") and not opts.device.startswith("cuda:"):
        raise ConfigError(f"--device {opts.device!r}: use cuda or cpu")
    if opts.name is not None:
        profile.check_name(opts.name)
    kinds = redo_kinds(opts.redo) if opts.redo is not None else {}
    need_torch_device(opts.device)
    if cpu:
        gpu = detect.GpuInfo(name="cpu")
        base_name = "cpu"
    else:
        gpu = detect.detect()
        if gpu is None:
            raise NoDevice(
                "no NVIDIA GPU found through NVML or torch; pass --device cpu for a tiny CPU calibration"
            )
        base_name = detect.resolve_base(gpu.name, opts.base)
    base = None if cpu else profile.read(base_name, "--base")
    name = opts.name or base_name
    out_dir = profile.check_writable(Path(opts.out_dir))
    # before the sweep: a run must not end, minutes later, unable to write its profile
    profile.check_overwrite(out_dir / f"{name}.yaml", gpu.name, opts.force)
    work_dir = profile.check_writable(Path(opts.work_dir or Path("calibration_runs") / name), "--work-dir")
    mode = "cpu" if cpu else ("quick" if opts.quick else "full")
    versions = detect.software_versions()
    ident = identity(gpu.name, "cpu" if cpu else "cuda", spec, versions)
    run_info = {"base": base_name, "mode": mode, "driver": gpu.driver, "device_info": gpu.as_dict(),
                "model_arg": opts.model, "step_graphs": STEP_GRAPHS_NOW}  # fmt: skip
    store = Store.open(work_dir / "measurements.jsonl", ident, restart=opts.restart, provenance=run_info)
    if n := store.steps_through(STEP_GRAPHS_NOW, set(STEP_KINDS)):
        log(
            f"{n} stored whole steps were timed on engine/steps.py's own graphs: taken again through the serving loop's"
        )
    if kinds:
        log(f"--redo: {store.forget(kinds)} stored measurements of {opts.redo} to take again")
    store.engine = {kind: kind_engine_code(kind, spec) for kind in KINDS}
    if other := store.other_engine(store.engine):
        log(stale_engine_line(other, store.engine))

    from calibrate.bench import Bench  # torch and engine from here on

    limits = device_limits(spec, opts.device)
    plan = make_plan(spec, mode, gemm_dtypes(base, opts.device), limits, n_gpus=gpu.count if not cpu else 1)
    log(
        f"calibrating {gpu.name} ({base_name}) with {spec.name}: {mode} plan of {len(plan)} points, "
        f"measurements in {work_dir}/measurements.jsonl"
    )
    bench = Bench(spec, opts.device, limits, quick=opts.quick)
    timing = sweep.BenchTiming(bench.repeat, bench.warmup, cpu, opts.quick, limits.max_kv_tokens)
    cm = sweep.prior_cost_model(spec, base)
    rep = sweep.run_sweep(
        plan, store, bench.measure, bench.recover, label_text=f"{mode} sweep",
        prior=lambda todo: sweep.point_costs(todo, cm, timing),
    )  # fmt: skip
    log(
        f"sweep: {rep.measured} measured, {rep.skipped} already there, {rep.oom} out of memory, {rep.errors} failed"
    )

    base = base_for_run(base_name, store)
    prov = {
        "gpu": gpu.name,
        **versions,
        "driver": gpu.driver,
        "mode": mode,
        "device": gpu.as_dict(),
        "command": opts.command or "python -m calibrate",
    }
    if cpu:
        prov["notes"] = "CPU run: datasheet replaced by the measured ceilings; for tests only"
    path, result = fit_and_write(store, spec, base, name, out_dir, work_dir, plan, prov, log, opts.force)
    log(error_table(result))
    log(f"wrote {path} (plots and measurements in {work_dir})")
    return path


def refit(
    work_dir: str,
    name: str | None,
    out_dir: str,
    model: str | None = None,
    log=print,
    force: bool = False,
    overheads: tuple[float, float] | None = None,
    exclude: tuple[str, ...] = (),
    command: str | None = None,
) -> Path:
    """Fit again from a work dir's measurements, with no device (e.g. after changing the fit); `overheads` and
    `exclude` as fit_and_write takes them, `command` the one recorded (default: the plain refit's)."""
    if Path(work_dir).exists() and not Path(work_dir).is_dir():
        raise ConfigError(
            f"{work_dir}: is a file, not a work dir; pass the folder python -m calibrate measured into "
            "(e.g. calibration_runs/h100-sxm)"
        )
    path = Path(work_dir) / "measurements.jsonl"
    if not path.exists():
        raise ConfigError(
            f"{path} does not exist; run python -m calibrate first or pass the right --work-dir"
        )
    if name is not None:
        profile.check_name(name)
    profile.check_writable(Path(out_dir))  # before the fit, not after it
    damaged: list[str] = []
    store = Store.open(path, warn=damaged.append)
    need_measurements(store)
    kinds = sorted({r.kind for r in store.records.values()})
    unknown = [k for k in exclude if k not in kinds]
    if unknown:
        raise ConfigError(
            f"--exclude {','.join(unknown)}: {path} has no such points; its kinds: {', '.join(kinds)}"
        )
    meta = store.meta
    model_arg = model or meta.get("model_arg") or meta.get("model", "llama-3.1-8b")
    spec = load_model(model_arg)
    measured = store.identity.get("model_config")
    if measured and model_fingerprint(spec) != measured:
        raise ConfigError(
            f"--model {model_arg}: not the model measured in {path} ({describe(store.identity)}, other shapes); "
            "pass --model with the config that run measured"
        )
    base_name = meta.get("base") or "h100-sxm"
    name = name or base_name
    profile.check_overwrite(Path(out_dir) / f"{name}.yaml", meta.get("gpu", ""), force)
    for msg in damaged:  # after the refusals above, each of which is one line on its own
        warn(msg)
    base = base_for_run(base_name, store)
    prov = {
        "gpu": meta.get("gpu", ""),
        "command": command or f"python -m calibrate fit {work_dir}",
        **{k: v for k, v in meta.items() if k in ("torch", "cuda", "driver", "mode")},
        "device": meta.get("device_info", {}),
    }
    prov.setdefault("notes", "refitted from stored measurements")
    out, result = fit_and_write(
        store, spec, base, name, Path(out_dir), Path(work_dir), None, prov, log, force, overheads, exclude
    )
    log(error_table(result))
    log(f"wrote {out}")
    return out


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)
