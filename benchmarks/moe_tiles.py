"""Where one MoE layer's time goes between a few hundred and a few thousand tokens, and which tiles serve each GEMM.

    python benchmarks/moe_tiles.py --out $OUT/tiles            # on the GPU (a few minutes on an H200)
    python benchmarks/moe_tiles.py --out /tmp/tiles --cpu      # a toy shape, Triton interpreted (tests the pipeline)

The MoE knee sweep (benchmarks/moe_knee.py, results/engine_kernels_h200/moe_knee.json) found Mixtral-8x7B's layer
at 1,024 tokens 51% slower than at 768 (1,696 vs 1,120 µs) while 1,536 tokens took 2,044: the serving rows'
mixed steps of 768-1,280 tokens run 12-16% longer than priced. This takes the layer apart at each token count of
`--tokens`, for Mixtral-8x7B's and DeepSeek-V2-Lite's expert shapes (calibrate.plan.MOE_SHAPES):

- the `align` pass (engine.moe.align: pairs sorted by expert, each expert's run padded to whole row blocks), on
  the engine's kernels (one program up to ALIGN_ONE_PROGRAM_MAX_PAIRS, then count / scan / place), on the one
  program at every size, and on the torch path;
- each grouped GEMM (gate_up, then down with the routing weight) on the Triton kernel under the engine's own
  tile config (engine.moe.kernel_config) and under each of CONFIGS;
- the whole layer as the engine runs it (engine.moe.routed_experts: route, align, GEMMs, combine) on each
  backend (Triton, torch._grouped_mm).

Everything is replayed from a CUDA graph (engine.timing.measure_graph), as in a captured step; routing is uniform
on average (random logits, as calibration's `moe` points). Writes moe_tiles.json (every time) and moe_tiles.md.
"""

from __future__ import annotations

import os
import sys

if "--cpu" in sys.argv:  # the Triton kernels run in Triton's interpreter on the CPU (set before importing it)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import _checkout  # noqa: E402,F401  (the checkout's root on sys.path)
import torch  # noqa: E402
from _gpu_cli import log  # noqa: E402

import engine.moe as moe  # noqa: E402
from calibrate.plan import MOE_SHAPES, MOE_SHAPES_CPU  # noqa: E402
from engine.fused import act_mul  # noqa: E402
from engine.timing import measure_graph  # noqa: E402

TOKENS = [384, 512, 640, 768, 896, 1024, 1152, 1280, 1536, 1792, 2048]
TOKENS_CPU = [8, 24]
DECODE_TOKENS = [1, 2, 4, 8]  # --decode: the small steps where a few touched experts' weights are streamed
# --decode's grid beside the engine's own: 16-row blocks, column tile x K tile x pipeline stages x K slices
DECODE_CONFIGS = [
    {"BM": 16, "BN": bn, "BK": bk, "GROUP": 1, "num_warps": w, "num_stages": st, "SPLIT_K": sk}
    for bn in (32, 64, 128)
    for bk in (64, 128, 256)
    for st in (3, 4, 5)
    for w in ((4, 8) if bn == 128 else (4,))
    for sk in (1, 2, 4)
    if bn * bk <= 16384
]
CONFIGS = [  # beside the engine's own (kernel_config); SPLIT_K 1 unless stated
    {"BM": 64, "BN": 128, "BK": 64, "GROUP": 8, "num_warps": 8, "num_stages": 4},
    {"BM": 64, "BN": 128, "BK": 64, "GROUP": 8, "num_warps": 4, "num_stages": 4},
    {"BM": 64, "BN": 256, "BK": 64, "GROUP": 8, "num_warps": 8, "num_stages": 3},
    {"BM": 128, "BN": 128, "BK": 64, "GROUP": 8, "num_warps": 8, "num_stages": 3},
    {"BM": 128, "BN": 128, "BK": 64, "GROUP": 8, "num_warps": 4, "num_stages": 4},
    {"BM": 128, "BN": 256, "BK": 64, "GROUP": 8, "num_warps": 8, "num_stages": 3},
    {"BM": 128, "BN": 256, "BK": 64, "GROUP": 8, "num_warps": 8, "num_stages": 4},
    {"BM": 128, "BN": 256, "BK": 64, "GROUP": 32, "num_warps": 8, "num_stages": 3},
    {"BM": 128, "BN": 256, "BK": 64, "GROUP": 8, "num_warps": 8, "num_stages": 3, "SPLIT_K": 2},
    {"BM": 128, "BN": 128, "BK": 64, "GROUP": 8, "num_warps": 8, "num_stages": 3, "SPLIT_K": 2},
]


def timed(fn, dev: str, repeat: int) -> float | str:
    """Seconds of one call from a CUDA graph, or why it did not run (a tile that does not fit, say)."""
    try:
        return measure_graph(fn, dev, calls=2, repeat=repeat, warmup=2)
    except Exception as err:  # noqa: BLE001 - a config that cannot run is reported, not fatal
        return f"{type(err).__name__}: {str(err)[:100]}"


def align_times(ids: torch.Tensor, e: int, bms: set[int], dev: str, repeat: int) -> dict:
    """`align` at each row block in `bms` on the engine's kernels, on the one program at any size, and on the
    torch path: {path: {block: seconds}}."""
    keep = moe.ALIGN_KERNEL_MAX_PAIRS, moe.ALIGN_ONE_PROGRAM_MAX_PAIRS
    paths = {"align_kernel": keep, "align_one_program": (keep[0], 1 << 62), "align_torch": (-1, 0)}
    out = {}
    for name, limits in paths.items():
        moe.ALIGN_KERNEL_MAX_PAIRS, moe.ALIGN_ONE_PROGRAM_MAX_PAIRS = limits
        try:
            out[name] = {bm: timed(lambda bm=bm: moe.align(ids, e, bm), dev, repeat) for bm in sorted(bms)}
        finally:
            moe.ALIGN_KERNEL_MAX_PAIRS, moe.ALIGN_ONE_PROGRAM_MAX_PAIRS = keep
    return out


def gemm_times(x, weights: tuple, tw, ids, dev: str, configs: list[dict], repeat: int) -> list[dict]:
    """Each grouped GEMM (gate_up, then down with the routing weights) under the engine's tile config first, then
    under each other config of `configs`."""
    w_gu, w_d = weights
    e, k, pairs = w_gu.shape[0], ids.shape[1], ids.numel()
    flat_w = tw.reshape(-1).float()
    out = []
    for gemm, w in (("gate_up", w_gu), ("down", w_d)):
        own = moe.kernel_config(pairs, w.shape[1], e, w.shape[2])
        own = dict(own, SPLIT_K=own.get("SPLIT_K", 1))
        others = [dict(c, SPLIT_K=c.get("SPLIT_K", 1)) for c in configs]
        for j, cfg in enumerate([own] + [c for c in others if c != own]):
            sorted_ids, block_e = moe.align(ids, e, cfg["BM"])
            if gemm == "gate_up":
                fn = lambda c=cfg, s=sorted_ids, b=block_e: moe.grouped_gemm(x, w_gu, s, b, k, pairs, c)  # noqa: E731
            else:
                # (fp32 under SPLIT_K: cast back to the activations' dtype, as engine.moe.triton_moe does)
                h1 = moe.grouped_gemm(x, w_gu, sorted_ids, block_e, k, pairs, cfg)
                a = act_mul(h1.to(x.dtype), "silu")
                fn = lambda c=cfg, s=sorted_ids, b=block_e, a=a: moe.grouped_gemm(  # noqa: E731
                    a, w_d, s, b, 1, pairs, c, weights=flat_w
                )
            out.append({"gemm": gemm, "config": cfg, "engine": j == 0, "row_blocks": int((block_e >= 0).sum()),
                        "seconds": timed(fn, dev, repeat)})  # fmt: skip
    return out


def layer_times(x, weights: tuple, tw, ids, dev: str, repeat: int) -> dict:
    """The whole layer as the engine runs it (engine.moe.routed_experts) on each expert backend that runs here."""
    w_gu, w_d = weights
    return {
        backend: timed(lambda: moe.routed_experts(x, w_gu, w_d, tw, ids), dev, repeat)
        for backend in moe.forcing_backends(x, w_gu, ids.numel())
    }


def one_point(shape: tuple, weights: tuple, tokens: int, dev: str, configs: list[dict], repeat: int) -> dict:
    """Every timing of one layer shape at `tokens` tokens: align, each grouped GEMM per config, the layer."""
    e, k, h, _ = shape
    g = torch.Generator(device=dev).manual_seed(tokens)
    x = torch.randn(tokens, h, device=dev, generator=g).to(weights[0].dtype)
    logits = torch.randn(tokens, e, device=dev, generator=g).to(
        weights[0].dtype
    )  # uniform routing on average
    tw, ids = moe.route(logits, k, True)
    pairs = ids.numel()
    counts = torch.bincount(ids.reshape(-1), minlength=e)
    rec = {
        "tokens": tokens,
        "pairs": pairs,
        "max_rows": int(counts.max()),
        "min_rows": int(counts.min()),
        "touched": int((counts > 0).sum()),
    }
    own_bm = moe.kernel_config(pairs, weights[0].shape[1], e, h)["BM"]
    rec.update(align_times(ids, e, {own_bm, 64, 128}, dev, repeat))
    rec["gemms"] = gemm_times(x, weights, tw, ids, dev, configs, repeat)
    rec["layer"] = layer_times(x, weights, tw, ids, dev, repeat)
    return rec


def us(v) -> str:
    return f"{v * 1e6:.0f}" if isinstance(v, float) else "—"


def best(gemms: list[dict], gemm: str) -> dict | None:
    ok = [g for g in gemms if g["gemm"] == gemm and isinstance(g["seconds"], float)]
    return min(ok, key=lambda g: g["seconds"]) if ok else None


def cfg_name(c: dict) -> str:
    s = f"{c['BM']}x{c['BN']}x{c['BK']} g{c['GROUP']} w{c['num_warps']} s{c['num_stages']}"
    return s + (f" k{c['SPLIT_K']}" if c.get("SPLIT_K", 1) > 1 else "")


def table(raw: dict) -> str:
    lines = [
        "# One MoE layer taken apart (benchmarks/moe_tiles.py)",
        "",
        f"Device {raw['device']}; µs per call from a CUDA graph; uniform routing on average. Engine: the tile "
        "config engine.moe.kernel_config picks; best: the fastest of the engine's and CONFIGS.",
        "",
    ]
    for sh in raw["shapes"]:
        e, k, h, i = sh["shape"]
        lines += [
            f"## E={e} top-{k} H={h} I={i}",
            "",
            "| tokens | rows/expert (max) | align engine / one program / torch | gate_up engine | gate_up best | down engine | "
            "down best | layer triton | layer grouped_mm |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for p in sh["points"]:
            own = {g["gemm"]: g for g in p["gemms"] if g["engine"]}
            b = {gm: best(p["gemms"], gm) for gm in ("gate_up", "down")}
            bm = own["gate_up"]["config"]["BM"] if "gate_up" in own else 128
            cells = [
                str(p["tokens"]),
                f"{p['pairs'] / e:.0f} ({p['max_rows']})",
                " / ".join(
                    us(p[a].get(bm)) for a in ("align_kernel", "align_one_program", "align_torch") if a in p
                ),
            ]
            for gm in ("gate_up", "down"):
                o = own.get(gm)
                cells.append(
                    f"{us(o['seconds'])} ({cfg_name(o['config'])}, {o['row_blocks']} blocks)" if o else "—"
                )
                cells.append(f"{us(b[gm]['seconds'])} ({cfg_name(b[gm]['config'])})" if b[gm] else "—")
            cells += [us(p["layer"].get("triton")), us(p["layer"].get("grouped_mm"))]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--cpu", action="store_true", help="a toy shape on the CPU, Triton interpreted")
    ap.add_argument("--tokens", help="comma-separated token counts (default: 384-2,048; --cpu: 8,24)")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument(
        "--decode", action="store_true", help="decode-sized steps (1-8 tokens) over DECODE_CONFIGS"
    )
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    dev = "cpu" if args.cpu else "cuda"
    default = DECODE_TOKENS if args.decode else TOKENS_CPU if args.cpu else TOKENS
    tokens = [int(t) for t in args.tokens.split(",")] if args.tokens else default
    grid = DECODE_CONFIGS if args.decode else CONFIGS
    configs = grid[:1] if args.cpu else grid
    repeat = 1 if args.cpu else args.repeat
    dtype = torch.float32 if args.cpu else torch.bfloat16
    raw: dict = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "shapes": []}
    for shape in MOE_SHAPES_CPU if args.cpu else MOE_SHAPES:
        e, k, h, i = shape
        g = torch.Generator(device=dev).manual_seed(0)
        w_gu = (torch.randn(e, 2 * i, h, device=dev, generator=g) * h**-0.5).to(dtype)
        w_d = (torch.randn(e, h, i, device=dev, generator=g) * i**-0.5).to(dtype)
        entry = {"shape": list(shape), "points": []}
        raw["shapes"].append(entry)
        for t in tokens:
            p = one_point(shape, (w_gu, w_d), t, dev, configs, repeat)
            entry["points"].append(p)
            b = {gm: best(p["gemms"], gm) for gm in ("gate_up", "down")}
            log(f"E={e} {t:5d} tokens: layer " + ", ".join(f"{n} {us(v)} µs" for n, v in p["layer"].items())
                + "; best gate_up " + (us(b["gate_up"]["seconds"]) if b["gate_up"] else "—")
                + ", down " + (us(b["down"]["seconds"]) if b["down"] else "—"))  # fmt: skip
            (args.out / "moe_tiles.json").write_text(json.dumps(raw, indent=1))
        del w_gu, w_d
        if dev == "cuda":
            torch.cuda.empty_cache()
    (args.out / "moe_tiles.md").write_text(table(raw))
    print(table(raw))
    log(f"wrote {args.out / 'moe_tiles.json'} and moe_tiles.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
