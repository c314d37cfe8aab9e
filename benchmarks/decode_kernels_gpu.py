"""Two of a large decode step's kernels, timed alone: the rope + KV-write kernel and decode attention's tiles.

    python benchmarks/decode_kernels_gpu.py --out $OUT/dk --label new      # on the GPU (about a minute)
    python benchmarks/decode_kernels_gpu.py --out /tmp/dk --cpu --tiny     # the same code on toy shapes (CPU)

benchmarks/loop_profile_gpu.py found, in Qwen2.5-7B's decode step of 256 sequences on an H200, the rope + KV-write
kernel (engine.fused.rope_and_cache) at 6.9 µs a layer for 2.4 MB, and decode attention at 93% of the copy rate.
Here each alone, replayed from a CUDA graph (engine.timing.measure_graph): rope_and_cache for three models' heads
at 1-8,192 tokens (checked against engine.fused.rope_cache_ref first), and decode attention (engine.fused.
decode_attention through engine.attention.varlen_attention, as engine.kernels.time_attention_decode times it)
over 1,088-token contexts at 64-256 sequences for each DECODE_TILE candidate (BLOCK_N, warps, stages), where the
checkout has DECODE_TILE. `--label` names the checkout in the records: run it from an older checkout's copy
for a before/after on one machine. Appends to decode_kernels.json in --out, writes decode_kernels.md.
"""

from __future__ import annotations

import os
import sys

if "--cpu" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402

import _checkout  # noqa: E402,F401  (the checkout's root on sys.path)
import torch  # noqa: E402
from _gpu_cli import device_args, open_report, pick_device, write_report  # noqa: E402

ROPE_HEADS = {"qwen2.5-7b": (28, 4, 128), "llama-3.1-8b": (32, 8, 128), "gemma-3-12b": (16, 8, 256)}
ROPE_TOKENS = (1, 8, 64, 128, 256, 1024, 8192)
ATTN_CASES = (("qwen2.5-7b", 28, 4, 64), ("qwen2.5-7b", 28, 4, 128), ("qwen2.5-7b", 28, 4, 256),
              ("llama-3.1-8b", 32, 8, 128), ("llama-3.1-8b", 32, 8, 256))  # fmt: skip
ATTN_CONTEXT = 1088
TILES = ((64, 4, 2), (64, 4, 3), (64, 4, 4), (128, 4, 2), (128, 8, 2), (128, 8, 3), (32, 4, 3), (32, 2, 4))


def rope_case(nh: int, nkv: int, d: int, t: int, dev: str, dtype) -> tuple[float, float]:
    """(seconds a call, max |error| against the torch reference) of rope_and_cache on t tokens."""
    from engine.fused import rope_and_cache, rope_cache_ref
    from engine.model import rope_tables
    from engine.timing import measure_graph

    g = torch.Generator(device=dev).manual_seed(t)
    qkv = torch.randn(t, nh + 2 * nkv, d, device=dev, generator=g).to(dtype)
    q, k, v = qkv[:, :nh], qkv[:, nh : nh + nkv], qkv[:, nh + nkv :]
    cos, sin = rope_tables(d, 10000.0, 4096, dev)
    pos = torch.randint(0, 4096, (t,), device=dev, generator=g)
    slots = torch.randperm(2 * t, device=dev, generator=g)[:t]
    pools = [torch.zeros(2 * t, nkv, d, device=dev, dtype=dtype) for _ in range(4)]
    want = rope_cache_ref(q, k, v, cos, sin, pos, slots, pools[2], pools[3])
    got = rope_and_cache(q, k, v, cos, sin, pos, slots, pools[0], pools[1])
    err = max(float((got.float() - want.float()).abs().max()), float((pools[0] - pools[2]).abs().max().float()),
              float((pools[1] - pools[3]).abs().max().float()))  # fmt: skip
    s = measure_graph(lambda: rope_and_cache(q, k, v, cos, sin, pos, slots, pools[0], pools[1]), dev, calls=20,
                      repeat=20)  # fmt: skip
    return s, err


def attention_case(nh: int, nkv: int, b: int, dev: str, tiny: bool) -> list[dict]:
    """Decode attention of b sequences of ATTN_CONTEXT keys for every DECODE_TILE candidate (just the checkout's
    own kernel where it has no DECODE_TILE)."""
    from engine import fused
    from engine.kernels import time_attention_decode

    ctx, d = (64, 16) if tiny else (ATTN_CONTEXT, 128)
    tiles = TILES[:2] if tiny else TILES
    out = []
    if not hasattr(fused, "DECODE_TILE"):
        s = time_attention_decode(b, ctx, nh, nkv, d, device=dev, repeat=20)
        return [{"tile": "fixed", "seconds": s, "bytes": 2 * b * ctx * nkv * d * 2}]
    keep = fused.DECODE_TILE
    try:
        for tile in tiles:
            fused.DECODE_TILE = tile
            s = time_attention_decode(b, ctx, nh, nkv, d, device=dev, repeat=20)
            out.append({"tile": list(tile), "seconds": s, "bytes": 2 * b * ctx * nkv * d * 2})
    finally:
        fused.DECODE_TILE = keep
    return out


def report(raw: dict) -> str:
    lines = [f"# Decode-step kernels alone ({raw.get('device')}, torch {raw.get('torch')})", "",
             "`python benchmarks/decode_kernels_gpu.py --out DIR --label L`, once per checkout.", "",
             "## rope + KV write (µs a call)", "", "| label | heads (q, kv, d) | tokens | µs | max error |",
             "|---|---|---|---|---|"]  # fmt: skip
    for r in raw.get("rope", []):
        lines.append(f"| {r['label']} | {r['model']} {tuple(r['heads'])} | {r['tokens']} | {r['seconds'] * 1e6:.2f} | "
                     f"{r['error']:.3g} |")  # fmt: skip
    lines += ["", f"## decode attention, {ATTN_CONTEXT}-token contexts", "",
              "| label | model | sequences | tile (BLOCK_N, warps, stages) | µs | TB/s |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in raw.get("attention", []):
        lines.append(f"| {r['label']} | {r['model']} | {r['batch']} | {r['tile']} | {r['seconds'] * 1e6:.1f} | "
                     f"{r['bytes'] / r['seconds'] / 1e12:.2f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--label", default="this checkout", help="what to call this checkout in the records")
    device_args(p, "toy shapes")
    args = p.parse_args(argv)
    dev = pick_device(args, paired=True)
    if dev is None:
        return 2
    out, raw = open_report(args.out, "decode_kernels", "decode_kernels_gpu.py", argv, dev, fresh=False)
    dtype = torch.float32 if args.cpu else torch.bfloat16
    heads = {"tiny": (4, 2, 16)} if args.tiny else ROPE_HEADS
    for model, (nh, nkv, d) in heads.items():
        for t in (1, 8) if args.tiny else ROPE_TOKENS:
            s, err = rope_case(nh, nkv, d, t, dev, dtype)
            raw.setdefault("rope", []).append({"label": args.label, "model": model, "heads": [nh, nkv, d], "tokens": t,
                                               "seconds": s, "error": err})  # fmt: skip
    for model, nh, nkv, b in (("tiny", 4, 2, 4),) if args.tiny else ATTN_CASES:
        for r in attention_case(nh, nkv, b, dev, args.tiny):
            raw.setdefault("attention", []).append(dict(r, label=args.label, model=model, batch=b))
    write_report(out, "decode_kernels", raw, report(raw))
    print(report(raw))
    return 0


if __name__ == "__main__":
    sys.exit(main())
