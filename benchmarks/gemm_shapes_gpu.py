"""The catalogue's own dense GEMM shapes at served row counts: cuBLAS as the engine calls it, beside what
PyTorch's TunableOp picks, each against the calibrated GEMM curve.

    python benchmarks/gemm_shapes_gpu.py --out $OUT/gs                # on the GPU (about 3 minutes on an H200)
    python benchmarks/gemm_shapes_gpu.py --out /tmp/gs --cpu --tiny   # the same code on toy shapes (CPU)

Calibration fits one bf16 GEMM curve on the sweep model's weight shapes (Llama-3.1-8B: calibrate.plan). This
times every dense weight shape (and the LM head) of the catalogue models that fit one GPU at 1-4,096 rows,
with calibration's own timer (calibrate.bench: rotating weights replayed from a CUDA graph, F.linear as the
engine's Dense layer calls it), and prices each with the curve of --profile taken alone (its in-step factor
undone, as the curve was fitted on kernels alone) and as a step prices it. With `--tuned`, the same shapes
again with TunableOp on (torch.cuda.tunable: every cuBLAS/cuBLASLt algorithm tried, the fastest kept), to say
how much a better algorithm choice would give at each shape. Writes gemm_shapes.json and gemm_shapes.md;
resumable (shapes already in the JSON are kept unless --fresh).
"""

from __future__ import annotations

import os
import sys

if "--cpu" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
from pathlib import Path  # noqa: E402

import _checkout  # noqa: E402,F401  (the checkout's root on sys.path)
import torch  # noqa: E402
from _gpu_cli import device_args, log, open_report, pick_device, write_report  # noqa: E402

from calibrate.fit import in_step, in_step_factor  # noqa: E402
from core.cost_model import CostModel  # noqa: E402
from core.hardware import OpEfficiency, load_profile  # noqa: E402
from core.model_spec import ModelSpec, load_model  # noqa: E402

MODELS = ("qwen2.5-7b", "llama-3.1-8b", "gemma-3-12b", "deepseek-v2-lite", "mixtral-8x7b")
ROWS = (1, 8, 32, 64, 128, 192, 256, 384, 512, 1024, 2048, 4096)
TUNED_ROWS = (64, 128, 256, 512, 1024)
TINY_ROWS = (1, 4, 16)
REPEAT_CASES = (("qwen2.5-7b", (64, 128, 256, 1024)), ("llama-3.1-8b", (64, 128, 256, 1024)))


def shapes(spec: ModelSpec) -> list[tuple[str, int, int]]:
    """(name, K, N) of the model's dense weight GEMMs and its LM head, each shape once."""
    out, seen = [], set()
    for g in [*spec.dense_gemms, spec.lm_head]:
        if (g.k, g.n) not in seen:
            seen.add((g.k, g.n))
            out.append((g.name, g.k, g.n))
    return out


def alone_curve(profile) -> OpEfficiency:
    """The profile's bf16 GEMM curve as fitted on kernels alone: calibrate.fit.in_step undone (its in-step factor
    divided out; the curve as it is where the profile has none)."""
    return in_step(profile.efficiency.gemm, 1.0 / (in_step_factor(profile) or 1.0))


def priced_alone(cm: CostModel, eff: OpEfficiency, m: int, k: int, n: int) -> float:
    """Seconds one [k, n] bf16 GEMM of m rows takes on the curve `eff` (the GEMV curve at one row, as the engine
    streams a single row through its Triton GEMV); the step's own price is cm._weight_gemm."""
    if m == 1 and cm.gemv_dense:
        return cm._weight_gemm(1, k, n)
    return cm._weight_gemm_with(eff, m, k, n, 1.0)


def time_shapes(bench, spec: ModelSpec, rows, tuned: bool) -> list[dict]:
    """Each shape at each row count timed by calibration's timer; with `tuned`, TunableOp picking the algorithm
    (tuned on the first, eager call, then replayed from the graph like the rest)."""
    out = []
    for name, k, n in shapes(spec):
        for m in rows:
            if tuned and m == 1:
                continue  # one row goes through the engine's own GEMV, not cuBLAS
            try:
                s = bench._gemm(m, k, n, "bf16")
            except RuntimeError as exc:  # one shape failing leaves the others
                log(f"  {spec.name} {name} {k}x{n} m={m}: {exc}")
                continue
            out.append({"name": name, "k": k, "n": n, "m": m, "seconds": s, "tuned": tuned})
    return out


def preheat(device: str, seconds: float) -> None:
    """Keep the GPU in dense bf16 GEMMs for `seconds` (its clocks where a serving step's load puts them)."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    end = torch.cuda.Event(enable_timing=True)
    start = torch.cuda.Event(enable_timing=True)
    start.record()
    while True:
        for _ in range(10):
            a @ a
        end.record()
        end.synchronize()
        if start.elapsed_time(end) / 1e3 >= seconds:
            return


def repeatability(bench, device: str, rounds: int, heat_s: float) -> list[dict]:
    """The same points timed `rounds` times: each round all of REPEAT_CASES as calibration times them, then all
    again each right after `heat_s` of dense GEMMs; then with cuBLASLt preferred (torch's BLAS choice)."""
    out = []
    cases = [(model, name, k, n, m) for model, rows in REPEAT_CASES for name, k, n in shapes(load_model(model))
             for m in rows]  # fmt: skip

    def timed(rnd: int, heat: float, blas: str) -> list[dict]:
        out = []
        for model, name, k, n, m in cases:
            if heat:
                preheat(device, heat)
            out.append({"model": model, "name": name, "k": k, "n": n, "m": m, "round": rnd, "heat_s": heat,
                        "blas": blas, "seconds": bench._gemm(m, k, n, "bf16")})  # fmt: skip
        return out

    out = [rec for r in range(rounds) for heat in (0.0, heat_s) for rec in timed(r, heat, "default")]
    torch.backends.cuda.preferred_blas_library("cublaslt")
    try:
        out += timed(0, heat_s, "cublaslt")
    finally:
        torch.backends.cuda.preferred_blas_library("default")
    return out


def repeat_report(recs: list[dict]) -> str:
    """Per point: the spread of its plain timings, of its preheated ones, preheated over plain, cuBLASLt over
    default (both preheated)."""
    by: dict[tuple, dict] = {}
    for r in recs:
        key = (r["model"], r["name"], r["k"], r["n"], r["m"])
        by.setdefault(key, {}).setdefault((r["heat_s"] > 0, r["blas"]), []).append(r["seconds"])
    lines = ["## The same points timed again", "",
             "Spread: (max − min) / min of one point's timings over the rounds. Heated: each timing right after "
             "dense GEMMs kept the GPU busy (its clocks under load).", "",
             "| model | shape | rows | plain µs (min-max) | spread | heated µs (min-max) | spread | heated / plain "
             "| cuBLASLt / default |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for (model, name, k, n, m), v in by.items():
        a, b, lt = v.get((False, "default"), []), v.get((True, "default"), []), v.get((True, "cublaslt"), [])
        if not a or not b:
            continue
        ma, mb = statistics.median(a), statistics.median(b)
        lines.append(
            f"| {model} | {name} {k} × {n} | {m} | {min(a) * 1e6:.1f}-{max(a) * 1e6:.1f} | {max(a) / min(a) - 1:.1%} "
            f"| {min(b) * 1e6:.1f}-{max(b) * 1e6:.1f} | {max(b) / min(b) - 1:.1%} | {mb / ma:.3f} | "
            f"{'' if not lt else f'{statistics.median(lt) / mb:.3f}'} |"
        )
    return "\n".join(lines) + "\n"


def set_tuning(on: bool, folder: Path) -> None:
    """TunableOp on (tuning every new GEMM shape, results kept in `folder`) or off."""
    t = torch.cuda.tunable
    t.enable(on)
    t.tuning_enable(on)
    if on:
        t.set_filename(str(folder / "tunableop_results.csv"))
        t.set_max_tuning_duration(30)
        t.set_max_tuning_iterations(100)


def report(raw: dict, profile_name: str) -> str:
    """The table: per model and shape, measured µs and the curve's error at each row count."""
    prof = load_profile(profile_name)
    alone = alone_curve(prof)
    lines = [
        f"# The catalogue's dense GEMM shapes ({raw.get('device')}, torch {raw.get('torch')})",
        "",
        f"`{raw.get('command')}`. Curve errors are priced over measured, minus one, on `{profile_name}`'s bf16 "
        "GEMM curve taken alone (kernels alone, as it was fitted) and as a step prices it (its in-step factor); "
        "`tuned` is TunableOp's pick over the default.",
        "",
        "| model | shape (K × N) | rows | µs | TFLOP/s | curve alone | curve in step | tuned / default |",
        "|---|---|---|---|---|---|---|---|",
    ]
    summary: dict[str, list[float]] = {}
    for model, recs in raw.get("models", {}).items():
        cm = CostModel(prof, load_model("llama-3.1-8b" if model == "tiny" else model), "bf16", "bf16")
        tuned = {(r["k"], r["n"], r["m"]): r["seconds"] for r in recs if r["tuned"]}
        for r in (r for r in recs if not r["tuned"]):
            k, n, m, s = r["k"], r["n"], r["m"], r["seconds"]
            a, b = priced_alone(cm, alone, m, k, n) / s - 1, cm._weight_gemm(m, k, n) / s - 1
            summary.setdefault(model, []).append(a)
            t = tuned.get((k, n, m))
            lines.append(
                f"| {model} | {r['name']} {k} × {n} | {m} | {s * 1e6:.1f} | {2 * m * k * n / s / 1e12:.0f} | "
                f"{a:+.1%} | {b:+.1%} | {'' if t is None else f'{t / s:.3f}'} |"
            )
    lines += ["", "| model | points | median curve-alone error | median |error| |", "|---|---|---|---|"]
    for model, errs in summary.items():
        med_abs = statistics.median(abs(e) for e in errs)
        lines.append(f"| {model} | {len(errs)} | {statistics.median(errs):+.1%} | {med_abs:.1%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument(
        "--profile", default="h200", help="profile whose GEMM curve prices the shapes (default h200)"
    )
    p.add_argument("--tuned", action="store_true", help="time the shapes again with TunableOp picking (GPU)")
    p.add_argument(
        "--repeatability", type=int, default=0, metavar="ROUNDS",
        help="(GPU) time REPEAT_CASES this many rounds, plain and preheated, and with cuBLASLt preferred",
    )  # fmt: skip
    p.add_argument("--heat-s", type=float, default=0.2, help="seconds of dense GEMMs before a heated timing")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated catalogue models")
    p.add_argument("--fresh", action="store_true", help="ignore an existing gemm_shapes.json in --out")
    device_args(p, "toy shapes (one tiny config) for the pipeline check")
    args = p.parse_args(argv)
    dev = pick_device(args, paired=True)
    if dev is None:
        return 2
    from calibrate.bench import Bench

    out, raw = open_report(args.out, "gemm_shapes", "gemm_shapes_gpu.py", argv, dev, args.fresh)
    if args.repeatability and dev == "cuda":
        bench = Bench(load_model("llama-3.1-8b"), dev, limits=None)
        raw["repeat"] = repeatability(bench, dev, args.repeatability, args.heat_s)
        (out / "gemm_repeat.md").write_text(repeat_report(raw["repeat"]))
        write_report(out, "gemm_shapes", raw, report(raw, args.profile))
        print(repeat_report(raw["repeat"]))
        return 0
    models = raw.setdefault("models", {})
    for model in ["tiny"] if args.tiny else args.models.split(","):
        key = model + (":tuned" if args.tuned else "")
        if key in raw.setdefault("done", []):
            continue
        spec = tiny_spec() if args.tiny else load_model(model)
        bench = Bench(spec, dev, limits=None)
        log(f"{model}: {len(shapes(spec))} shapes")
        recs = time_shapes(bench, spec, TINY_ROWS if args.tiny else ROWS, tuned=False)
        if args.tuned and dev == "cuda":
            set_tuning(True, out)
            recs += time_shapes(bench, spec, TUNED_ROWS, tuned=True)
            set_tuning(False, out)
        models[model] = recs
        raw["done"].append(key)
        write_report(out, "gemm_shapes", raw, report(raw, args.profile))
    write_report(out, "gemm_shapes", raw, report(raw, args.profile))
    print(report(raw, args.profile))
    return 0


def tiny_spec() -> ModelSpec:
    from core.model_spec import spec_from_config

    return spec_from_config(
        {"model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128},
        name="tiny",
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
