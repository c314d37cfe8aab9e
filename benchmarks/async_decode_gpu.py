"""Large-batch decode through the serving loop with and without async scheduling, against the roofline and the
cost model.

    python benchmarks/async_decode_gpu.py --out $OUT/ad            # on an H200 (about 3 minutes)
    python benchmarks/async_decode_gpu.py --out /tmp/x --cpu --tiny # the same code on a toy config (CPU)

For Qwen2.5-7B and Llama-3.1-8B (bf16, random weights) at batch 1, 64, 128, 256 (every request arriving at
once, 1,024-token prompts, 128 outputs): benchmarks/fidelity.py's decode_check, first with the loop waiting for
each step's tokens (engine/serving.py as it ran before), then with async scheduling (`serve(async_scheduling=
True)`: the next decode step scheduled and prepared while the GPU runs this one, its input tokens gathered on the
device). A step is the loop's median iteration (waiting) or the median time from one step's tokens to the next's
(async; recorded for both as the cadence); beside it the GPU span between CUDA events, the roofline (weights +
KV at the measured copy rate, FLOPs at the measured GEMM rate), the per-phase roofline (GEMMs, then attention,
each at its own bound) and the cost model of --profile with its async pricing on or off to match (a decode-only
step then takes the longer of its GPU work and the loop's host terms). Issue 13's bars: within 1.3x of the
roofline at batch 64-256, the cost model within 5%.

Resumable: models already in $OUT/async_decode.json are kept (--fresh: start over). No device:

    python benchmarks/async_decode_gpu.py --reprice benchmarks/results/engine_kernels_h200/async_decode_session23.json

prices the stored steps again with the current cost model and profile (the cost model column) and rewrites the
tables beside the JSON.
"""

from __future__ import annotations

import os
import sys

if "--cpu" in sys.argv:  # the Triton kernels run in Triton's interpreter on the CPU (set before importing it)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import _checkout  # noqa: E402,F401  (the checkout's root on sys.path)
import torch  # noqa: E402
from _gpu_cli import device_args, open_report, pick_device, write_report  # noqa: E402
from moe_mla_gpu import free, large_decode, log  # noqa: E402

from core.model_spec import load_model  # noqa: E402

MODELS, SIZES = ("qwen2.5-7b", "llama-3.1-8b"), (1, 64, 128, 256)
BAR_ROOFLINE, BAR_MODEL = 1.3, 0.05


def tables(raw: dict) -> str:
    out = [f"# Large-batch decode with and without async scheduling ({raw['device']}, torch {raw['torch']})", "",
           f"`{raw['command']}`" + (f"; cost model column: `{raw['repriced']}`" if raw.get("repriced") else "")
           + ". Step: the loop's median iteration (waiting) or the median time between one decode "
           "step's tokens and the next's (async). Cost model error: priced over measured, minus one. Bars: "
           f"≤ {BAR_ROOFLINE}× the roofline at batch 64-256; the cost model within {BAR_MODEL:.0%}.", "",
           "| model | batch | loop | step ms | cadence ms | GPU ms | step − GPU ms | × roofline | × per-phase "
           "roofline | cost model error |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in raw.get("rows", []):
        mode = "async" if r["async_scheduling"] else "waits"
        out.append(f"| {r['model']} | {r['batch']} | {mode} | {r['step_ms']:.2f} | {r['cadence_ms']:.2f} | "
                   f"{r['gpu_ms']:.2f} | {r['step_ms'] - r['gpu_ms']:+.2f} | {r['roofline_ratio']:.2f} | "
                   f"{r['kernel_roofline_ratio']:.2f} | {1 / r['model_ratio'] - 1:+.1%} |")  # fmt: skip
    return "\n".join(out + [""])


def reprice(path: Path, profile_name: str) -> int:
    """The stored rows' cost-model column again, with the current code and --profile (no device)."""
    from fidelity import decode_price

    from core.hardware import load_profile

    raw = json.loads(path.read_text())
    profile = load_profile(profile_name)
    for r in raw["rows"]:
        b, ctx = r["batch"], int(round(r["mean_context"] * r["batch"]))
        priced = decode_price(profile, load_model(r["model"]), b, ctx, overlap=r["async_scheduling"])
        r["model_tokens_per_s"], r["model_ratio"] = b / priced, r["step_ms"] / 1e3 / priced
    raw["repriced"] = f"python benchmarks/async_decode_gpu.py --reprice {path} --profile {profile_name}"
    write_report(path.parent, path.stem, raw, tables(raw))
    log(f"repriced {len(raw['rows'])} rows of {path} with {profile_name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="folder for the results (the device's $OUT)")
    p.add_argument("--reprice", type=Path, help="no device: price a stored async_decode JSON's steps again")
    device_args(p, "a toy config")
    p.add_argument(
        "--profile", default="h200", help="the GPU's calibrated profile for the cost model's column"
    )
    p.add_argument("--fresh", action="store_true", help="ignore an existing async_decode.json in --out")
    args = p.parse_args(argv)
    if args.reprice is not None:
        if not args.reprice.exists():
            print(
                f"error: --reprice {args.reprice}: no such file; give an async_decode JSON", file=sys.stderr
            )
            return 2
        return reprice(args.reprice, args.profile)
    if args.out is None:
        print("error: --out is required (a folder for the results), or --reprice FILE", file=sys.stderr)
        return 2
    dev = pick_device(args, paired=True)
    if dev is None:
        return 2
    out, raw = open_report(Path(args.out), "async_decode", "async_decode_gpu.py", argv, dev, args.fresh)
    path = out / "async_decode.json"
    t0 = time.perf_counter()
    profile, refs, sizes = args.profile, list(MODELS), list(SIZES)
    if args.cpu:
        import fidelity

        torch.set_num_threads(1)
        tiny_llama, profile = fidelity.cpu_setup(Path(tempfile.mkdtemp(prefix="async_decode_cpu_")))
        refs, sizes = [tiny_llama], [1, 8]
    done = {r["model"] for r in raw.get("rows", [])}
    for ref in refs:
        if load_model(ref).name in done:
            continue
        raw["rows"] = raw.get("rows", []) + large_decode(
            None, profile, ref, dev == "cpu", sizes, (False, True)
        )
        write_report(out, "async_decode", raw, tables(raw))
        free()
    write_report(out, "async_decode", raw, tables(raw))
    log(f"wrote {path} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
