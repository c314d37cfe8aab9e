"""MoE decode steps before and after the streaming decode tiles and the tuned GEMV, and large-batch decode now.

    python benchmarks/moe_decode_gpu.py --out $OUT/md            # on an H200 (about 6 minutes)
    python benchmarks/moe_decode_gpu.py --out /tmp/x --cpu --tiny # the same code on toy configs (CPU)

1. Checks (first; a failure ends the run): the Triton grouped-GEMM MoE (engine.moe.fused_moe, the decode rule
   in force) against the loop over experts at Mixtral's and DeepSeek-V2-Lite's expert shapes
   (benchmarks/moe_mla_gpu.py's check_moe).
2. Ceilings: copy bandwidth and the dense bf16 GEMM rate (moe_mla_gpu.py's ceilings).
3. Mixtral-8x7B and DeepSeek-V2-Lite bf16 (random weights) through engine.steps.StepRunner: decode steps at
   batch 1, 2, 4, 8 (context 512, CUDA graphs) under three engines in turn, the graphs captured anew for
   each: "before" (engine.moe.DECODE_SPLIT: the session-13 tiles with K split; every GEMV on the default tile),
   "tiles" (the streaming decode tiles, default GEMV) and "after" (both: the GEMV tile per shape timed by
   engine.fused.tune_gemv, as the executor's warm-up does). Each step against the floor of reading the dense
   weights plus the experts the step touched (counted per layer in an eager run) plus the KV, at the copy
   bandwidth: issue 13's bar, 1.3x.
4. Large-batch decode through the serving loop (benchmarks/fidelity.py's decode_check) for Qwen2.5-7B and
   Llama-3.1-8B at batch 1, 64, 128, 256 (1,024-token prompts, 128 outputs), on the engine as it is now:
   the step against the roofline and the per-phase roofline, and the cost model of --profile.

Resumable: sections already in $OUT/moe_decode.json are kept (--fresh: start over). Writes moe_decode.json
after every model and moe_decode.md (tables).
"""

from __future__ import annotations

import os
import sys

if "--cpu" in sys.argv:  # the Triton kernels run in Triton's interpreter on the CPU (set before importing it)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import _checkout  # noqa: E402,F401  (the checkout's root on sys.path)
import torch  # noqa: E402
from _gpu_cli import device_args, open_report, pick_device, write_report  # noqa: E402
from moe_mla_gpu import (  # noqa: E402
    TINY_DEEPSEEK,
    TINY_MIXTRAL,
    ceilings,
    check_moe,
    decode_floor,
    floor_bytes,
    free,
    large_decode,
    log,
)

import engine.fused as fused  # noqa: E402
import engine.moe as moe  # noqa: E402
from core.model_spec import load_model, spec_from_config  # noqa: E402
from engine.model import build_model  # noqa: E402
from engine.steps import StepRunner  # noqa: E402

BATCHES, CONTEXT, BAR = (1, 2, 4, 8), 512, 1.3
MOE_MODELS = {"mixtral-8x7b": TINY_MIXTRAL, "deepseek-v2-lite": TINY_DEEPSEEK}
LARGE_MODELS, LARGE_SIZES = ("qwen2.5-7b", "llama-3.1-8b"), (1, 64, 128, 256)
# (name, engine.moe.DECODE_SPLIT, engine.fused.TUNE_GEMV)
VARIANTS = (("before", True, False), ("tiles", False, False), ("after", False, True))


def set_variant(split: bool, tune: bool, model) -> dict:
    """Put the engine in a variant: the decode rule, and the GEMV tiles cleared then tuned (or not)."""
    moe.DECODE_SPLIT, fused.TUNE_GEMV = split, tune
    fused.GEMV_TILES.clear()
    fused.GEMV_TUNED.clear()
    return {
        f"{n}x{k}": {str(t): v for t, v in r.items()}
        for (n, k), r in fused.tune_gemv(model.gemv_weights(), log).items()
    }


def moe_steps(name: str, dev: str, ceil: dict, tiny: bool) -> dict:
    """Decode steps of one MoE model under each of VARIANTS (see the module's docstring, 3)."""
    t0 = time.perf_counter()
    spec = spec_from_config(MOE_MODELS[name], name=f"tiny-{name}") if tiny else load_model(name)
    model = build_model(spec, dtype="fp32" if dev == "cpu" else "bf16", device=dev)
    runner = StepRunner(model, max(BATCHES), CONTEXT + 8, device=dev)
    dense, expert = floor_bytes(model)
    log(f"{spec.name}: built in {time.perf_counter() - t0:.0f} s")
    rec: dict = {
        "model": spec.name,
        "dense_bytes": dense,
        "expert_bytes": expert,
        "floors": {},
        "variants": {},
    }
    for b in BATCHES:
        rec["floors"][b] = decode_floor(
            model, spec, [CONTEXT] * b, dense, expert, ceil["copy_bytes_per_s"], dev
        )
    reps = {"warmup": 1, "repeat": 2} if dev == "cpu" else {}
    keep = moe.DECODE_SPLIT, fused.TUNE_GEMV
    try:
        for variant, split, tune in VARIANTS:
            v = rec["variants"][variant] = {"gemv_tune": set_variant(split, tune, model), "steps": {}}
            runner.reset_graphs()  # the graphs captured anew under this variant's kernels
            for b in BATCHES:
                v["steps"][b] = step = runner.decode([CONTEXT] * b, **reps)
                floor = rec["floors"][b][0]
                log(f"{spec.name} {variant}: decode batch {b} {step * 1e3:.2f} ms, floor {floor * 1e3:.2f} ms, "
                    f"{step / floor:.2f}x (bar {BAR}x)")  # fmt: skip
    finally:
        moe.DECODE_SPLIT, fused.TUNE_GEMV = keep
        fused.GEMV_TILES.clear()
        fused.GEMV_TUNED.clear()
    return rec


def large(ref: str, dev: str, profile: str, sizes: list[int]) -> list[dict]:
    """fidelity.decode_check's records for `ref` on an executor warmed up as the serving loop's is
    (moe_mla_gpu.py's large_decode), with the per-phase roofline ratio named as the tables give it."""
    recs = large_decode(None, profile, ref, dev == "cpu", sizes)
    for r in recs:
        r["per_phase_ratio"] = r["kernel_roofline_ratio"]
    return recs


def tables(raw: dict) -> str:
    c = raw.get("ceilings") or {}
    ceil = f"{c.get('copy_bytes_per_s', 0) / 1e9:.0f} GB/s copy, {c.get('gemm_flops_per_s', 0) / 1e12:.0f} TFLOP/s GEMM"
    out = [f"# MoE decode steps before and after; large-batch decode ({raw['device']}, torch {raw['torch']})", "",
           f"`{raw['command']}`; ceilings measured in the run: {ceil}.", ""]  # fmt: skip
    for rec in raw.get("moe", {}).values():
        out += [f"## {rec['model']} decode steps, context {CONTEXT} (bar: ≤ {BAR}× the floor)", "",
                "| batch | experts touched / layer | floor ms | " + " | ".join(f"{v} ms (× floor)" for v, *_ in VARIANTS)
                + " |", "|---|---|---|" + "---|" * len(VARIANTS)]  # fmt: skip
        for b, (floor, touched) in rec["floors"].items():
            cells = [
                f"{s * 1e3:.2f} ({s / floor:.2f}×)"
                for s in (rec["variants"][v]["steps"][b] for v, *_ in VARIANTS)
            ]
            out.append(f"| {b} | {touched:.2f} | {floor * 1e3:.2f} | " + " | ".join(cells) + " |")
        picks = {s: r.get("pick") for s, r in rec["variants"]["after"]["gemv_tune"].items()}
        out += ["", f"GEMV tiles the warm-up picked (N x K: tile): {picks}", ""]
    rows = raw.get("large", [])
    if rows:
        out += ["## Large-batch decode through the serving loop (the engine now)", "",
                "| model | batch | step ms | GPU ms | × roofline | × per-phase roofline | cost model error |",
                "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in rows:
            out.append(f"| {r['model']} | {r['batch']} | {r['step_ms']:.2f} | {r['gpu_ms']:.2f} | "
                       f"{r['roofline_ratio']:.2f} | {r['per_phase_ratio']:.2f} | {1 / r['model_ratio'] - 1:+.1%} |")  # fmt: skip
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the results (the device's $OUT)")
    device_args(p, "toy configs of the same architectures")
    p.add_argument(
        "--profile", default="h200", help="the GPU's calibrated profile for the cost model's column"
    )
    p.add_argument("--skip", nargs="*", default=[], choices=["moe", "large"])
    p.add_argument("--fresh", action="store_true", help="ignore an existing moe_decode.json in --out")
    args = p.parse_args(argv)
    dev = pick_device(args, paired=True)
    if dev is None:
        return 2
    if args.cpu:
        torch.set_num_threads(1)
    out, raw = open_report(Path(args.out), "moe_decode", "moe_decode_gpu.py", argv, dev, args.fresh)
    path = out / "moe_decode.json"
    t0 = time.perf_counter()

    def save() -> None:
        write_report(out, "moe_decode", raw, tables(raw))

    checks = check_moe(dev, args.tiny)
    bad = [c for c in checks if not c["ok"]]
    if bad:
        print(f"error: fused_moe disagrees with the loop over experts: {bad[0]}", file=sys.stderr)
        return 1
    raw["checks"] = checks
    raw.setdefault("ceilings", ceilings(dev))
    save()
    for name in MOE_MODELS if "moe" not in args.skip else ():
        if name not in raw.setdefault("moe", {}):
            raw["moe"][name] = moe_steps(name, dev, raw["ceilings"], args.tiny)
            save()
            free()
    profile, refs, sizes = args.profile, list(LARGE_MODELS), list(LARGE_SIZES)
    if args.cpu:
        import fidelity

        tiny_llama, profile = fidelity.cpu_setup(Path(tempfile.mkdtemp(prefix="moe_decode_cpu_")))
        refs, sizes = [tiny_llama], [1, 8]
    done = {r["model"] for r in raw.get("large", [])}
    for ref in refs if "large" not in args.skip else ():
        if load_model(ref).name not in done:
            raw["large"] = raw.get("large", []) + large(ref, dev, profile, sizes)
            save()
            free()
    log(f"wrote {path} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
