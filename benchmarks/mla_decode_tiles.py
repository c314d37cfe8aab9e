"""The absorbed MLA decode kernel (engine/mla.py's _mla_decode_kernel + combine) per tile configuration.

    python benchmarks/mla_decode_tiles.py --out $OUT/mla_dec          # on the GPU (under a minute on an H200)
    python benchmarks/mla_decode_tiles.py --out /tmp/d --cpu --tiny   # the same code on toy shapes (interpreter)

On the H200 the kernel took 83 µs a layer for DeepSeek-V2-Lite's decode at batch 32 of 1,024-token contexts
(benchmarks/kernel_profile.py): about 0.45 TB/s for the 38 MB of latents it reads, a tenth of the copy rate.
This times one layer's decode attention (work units as the engine plans them, then the combine) at DeepSeek-V2-
Lite's shape (16 heads, latent 512 + rope 64) for batch x context in {1 x 4,096, 32 x 1,024, 128 x 1,024,
8 x 8,192}, every configuration of keys an iteration (block_n), warps and pipeline stages, each checked against
the engine's default configuration first and timed as the serving loop runs it: replayed from a CUDA graph
(engine.timing.measure_graph), over enough copies of the latents that they cannot stay in the L2 cache (2 x 60 MB
between them). `eager_us` beside it is the same call launched eagerly (engine.timing.measure): the committed
H200 table (session 9) timed eager back-to-back calls, whose 60-100 µs at every shape are close to the launch
cost of the two Triton kernels, so its "2-37% of the copy rate" partly measured the host. Writes
mla_decode_tiles.json and a table (.md) with each shape's fastest configuration and its share of the copy rate.

`--units` also varies how the keys are cut into work units (engine.attention's UNIT_CTAS_PER_SM, the programs
an SM is given, and UNIT_MIN_KEYS, the shortest unit), with each configuration's tiles: the sweep above kept the
engine's units (about two programs an SM), and a program here holds all 16 heads, so fewer, longer units may
leave the kernel waiting on each block's loads rather than on bandwidth.
"""

from __future__ import annotations

import os
import sys

if "--cpu" in sys.argv:  # Triton kernels through its interpreter on the CPU (set before importing it)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import _checkout  # noqa: E402,F401  (the checkout's root on sys.path)
import torch  # noqa: E402
from _gpu_cli import device_args, pick_device  # noqa: E402

from engine import attention, kernels, mla  # noqa: E402
from engine.attention import make_layout  # noqa: E402
from engine.timing import measure, measure_graph, rotating  # noqa: E402

SHAPES = [(1, 4096), (32, 1024), (128, 1024), (8, 8192)]
BLOCK_N, WARPS, STAGES = (16, 32, 64), (4, 8), (1, 2, 3)
L2_FLUSH_BYTES = 120 << 20  # the latents a timing rotates through at least: twice an H100/H200's L2
UNITS = [(2, 256), (4, 256), (8, 256), (4, 64), (8, 64), (16, 64)]  # --units: (programs an SM, shortest unit)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    device_args(ap, "toy shapes")
    ap.add_argument(
        "--units", action="store_true", help="also vary the work units (UNITS), each with every tile"
    )
    args = ap.parse_args(argv)
    dev = pick_device(args)
    if dev is None:
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    nh, rank, rope = (4, 32, 16) if args.tiny else (16, 512, 64)
    shapes = [(2, 40), (3, 70)] if args.tiny else SHAPES
    configs = [{"block_n": 16, "num_warps": 4, "num_stages": 1}] if args.tiny else [
        {"block_n": n, "num_warps": w, "num_stages": s} for n, w, s in itertools.product(BLOCK_N, WARPS, STAGES)
    ]  # fmt: skip
    dtype = torch.float32 if args.cpu else torch.bfloat16
    rate = float("nan")
    if dev == "cuda":  # the copy ceiling: bytes read + written a second of a 1 GiB device copy
        seconds, nbytes = kernels.time_copy(1 << 30, dev)
        rate = nbytes / seconds
    rec: dict = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__,
                 "copy_bytes_per_s": rate, "default": mla.DECODE_TILES, "rows": []}  # fmt: skip
    g = torch.Generator(device=dev).manual_seed(0)
    engine_units = (attention.UNIT_CTAS_PER_SM, attention.UNIT_MIN_KEYS)
    cuts = [engine_units] + ([u for u in UNITS if u != engine_units] if args.units else [])
    if args.tiny and args.units:
        cuts = [engine_units, (8, 16)]
    for (b, ctx), (per_sm, min_keys) in itertools.product(shapes, cuts):
        attention.UNIT_CTAS_PER_SM, attention.UNIT_MIN_KEYS = per_sm, min_keys
        try:
            lay = make_layout([1] * b, [ctx - 1] * b, dev, kv_heads=1)
        finally:
            attention.UNIT_CTAS_PER_SM, attention.UNIT_MIN_KEYS = engine_units
        nbytes = b * ctx * (rank + rope) * (4 if dtype == torch.float32 else 2)
        copies = 1 if dev != "cuda" else max(1, -(-L2_FLUSH_BYTES // nbytes))  # latents the L2 cannot hold
        pools = [torch.randn(int(lay.cu_k[-1]) + 8, 1, rank + rope, device=dev, dtype=dtype, generator=g)
                 for _ in range(copies)]  # fmt: skip
        qas = [torch.randn(b, nh, rank + rope, device=dev, dtype=dtype, generator=g) for _ in range(copies)]
        pool, qa = pools[0], qas[0]
        ref = mla.mla_decode(qa, pool, lay, rank, 0.1)
        units = int(lay.units["seq"].shape[0])
        for cfg in [mla.DECODE_TILES] + [c for c in configs if c != mla.DECODE_TILES]:
            row = {"batch": b, "context": ctx, "units": units, "ctas_per_sm": per_sm, "unit_min_keys": min_keys,
                   **cfg}  # fmt: skip
            try:
                got = mla.mla_decode(qa, pool, lay, rank, 0.1, tiles=cfg)
                row["rel_err"] = float((got.float() - ref.float()).abs().max() / ref.float().abs().max())
                if not row["rel_err"] < 2e-2:
                    raise ValueError(f"disagrees with the default tiles: {row['rel_err']:.3g}")
                fn = rotating(list(zip(qas, pools, strict=True)),
                              lambda q, kv, c=cfg, ly=lay: mla.mla_decode(q, kv, ly, rank, 0.1, tiles=c))  # fmt: skip
                row["us"] = measure_graph(fn, dev, calls=copies, repeat=20) * 1e6
                row["eager_us"] = measure(fn, dev, repeat=20) * 1e6
                row["copy_share"] = nbytes / (row["us"] * 1e-6) / rate if rate == rate else None
            except Exception as exc:  # noqa: BLE001 - a configuration out of resources is a row
                row["error"] = str(exc).splitlines()[0][:200]
            rec["rows"].append(row)
            log(" ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
        (args.out / "mla_decode_tiles.json").write_text(json.dumps(rec, indent=1))
    lines = [f"# MLA decode tiles ({rec['device']}, torch {rec['torch']})", "",
             "`python benchmarks/mla_decode_tiles.py " + " ".join(argv if argv is not None else sys.argv[1:]) + "`", "",
             "| batch x context | default units | default µs (eager µs) | best µs | best units (programs an SM, "
             "shortest) | best block_n, warps, stages | best share of copy rate |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for b, ctx in shapes:
        rows = [r for r in rec["rows"] if r["batch"] == b and r["context"] == ctx and "us" in r]
        if not rows:
            continue
        best, dflt = min(rows, key=lambda r: r["us"]), rows[0]
        share = f"{best['copy_share']:.0%}" if best.get("copy_share") else "-"
        lines.append(f"| {b} x {ctx} | {dflt['units']} | {dflt['us']:.1f} ({dflt['eager_us']:.1f}) | "
                     f"{best['us']:.1f} | {best['units']} "
                     f"({best['ctas_per_sm']}, {best['unit_min_keys']}) | {best['block_n']}, {best['num_warps']}, "
                     f"{best['num_stages']} | {share} |")  # fmt: skip
    (args.out / "mla_decode_tiles.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
