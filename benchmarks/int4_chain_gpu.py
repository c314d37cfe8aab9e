"""A batch-1 decode step's int4 GEMVs back to back, with and without programmatic dependent launch (PDL).

    python benchmarks/int4_chain_gpu.py --out $OUT/chain      # on the GPU (sm90+ for the PDL rows; ~2 min)
    python benchmarks/int4_chain_gpu.py --out /tmp/c --cpu    # the same code on toy shapes (no PDL rows)

A single int4 GEMV of a decode step reads 8-60 MB; at 4+ TB/s that is 2-15 µs, so the few microseconds a
kernel spends starting (launch, the first loads' latency) and ending (the last programs alone on the GPU)
are a large part of it. Programmatic dependent launch lets the next kernel start while this one ends: a
PDL kernel asks L2 for its first weights, then waits (`gdc_wait`) for the kernel before it, whose output
it reads. This measures Llama-3.1-8B's per-layer chain (qkv, o, gate_up, down; each GEMV's input a view of
the one before's output) for 32 layers of separate weights in one CUDA graph:

- `tuned`: the kernel engine/quant.py's tuner picks per shape (no PDL);
- `w4asm`: `_w4_kernel` at one config for every shape, no PDL (`rb1`: the split-K partials summed one split a
  load, as before RB; `aim8`: twice the K-splits);
- `pdl early / late / end`: the same with PDL, the next kernel allowed to start at once, once every program is
  past its main loop, or as programs end; `p4`: the first 4 chunks of each program's weights asked of L2
  before it waits;
- `+ gaps`: a plain (non-PDL) elementwise kernel between GEMVs, as a step's norms and activations sit between
  them;
- `bf16`: the same chain in 16 bits through cuBLAS, against its own floor (for scale).

Every row against the chain's floor: the bytes it must read (packed weights + scales, x and y) at the copy
bandwidth. The PDL rows' outputs are checked equal to the no-PDL row's. Then, where the tuner has PDL
candidates (`engine.quant.PDL`), the whole Llama-3.1-8B int4 decode step at batch 1 with and without them.
Writes int4_chain.json and int4_chain.md under --out.
"""

from __future__ import annotations

import os
import sys

if "--cpu" in sys.argv:  # Triton kernels through its interpreter on the CPU (set before importing it)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import _checkout  # noqa: E402,F401  (the checkout's root on sys.path)
import torch  # noqa: E402
from int4_gemv_gpu import copy_bandwidth, decode_step, log, reset_tuner  # noqa: E402

# Llama-3.1-8B's per-layer GEMVs in step order: (name, K, N)
LAYER = [("qkv", 4096, 6144), ("o", 4096, 4096), ("gate_up", 4096, 28672), ("down", 14336, 4096)]
CPU_LAYER = [("a", 256, 384), ("b", 256, 256), ("c", 256, 768), ("d", 512, 256)]
LAYERS, CPU_LAYERS = 32, 2
# asm, ROWS, BLOCK_N, R, programs per SM, warps, stages (the tuner's usual pick at one row)
W4_CFG = (1, 1, 512, 16, 4, 4, 2)
CPU_CFG = (0, 1, 64, 16, 2, 2, 2)
# (name, the config's tail: chunks prefetched (-1: no PDL), when the next kernel may start (1 at once, 2 past
# the main loops, 3 as programs end), split-K partials a load in the reduction; plain kernels between GEMVs)
VARIANTS = [
    ("w4asm", (), False),
    ("w4asm rb1", (-1, 1, 1), False),
    ("w4asm aim8", (), False),
    ("pdl early", (0, 1, 8), False),
    ("pdl late", (0, 2, 8), False),
    ("pdl late p4", (4, 2, 8), False),
    ("pdl end", (0, 3, 8), False),
    ("pdl end p4", (4, 3, 8), False),
    ("w4asm + gaps", (), True),
    ("pdl late + gaps", (0, 2, 8), True),
    ("pdl late p4 + gaps", (4, 2, 8), True),
]
SPLIT_AIM = {"w4asm aim8": 8}  # programs per SM the K-split aims at, where not the config's


def pdl_supported() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9


def make_weights(layer, n_layers: int, dev: str, tg: bool):
    from engine import quant

    g = torch.Generator(device=dev).manual_seed(0)
    out = []
    for _ in range(n_layers):
        ws = {}
        for name, k, n in layer:
            qw = torch.randint(-(2**31), 2**31 - 1, (k // 8, n), device=dev, dtype=torch.int32, generator=g)
            sc = torch.full((k // quant.GROUP, n), 1.0 / (4.6 * k**0.5), device=dev, dtype=torch.bfloat16)
            ws[name] = (qw, sc, quant.tinygemm_pack(qw, sc) if tg else None)
        out.append(ws)
    return out


def chain_fn(weights, layer, x0, gemv, gap: bool):
    """One pass over every layer: each GEMV's input is the first K columns of the one before's output."""

    def run():
        x = x0
        for ws in weights:
            for name, k, _ in layer:
                x = gemv(x[:, :k].contiguous() if gap else x[:, :k], *ws[name], name)
                if gap:
                    x = x * 1.0  # a plain kernel between GEMVs (a norm or activation stands here in a step)
        return x

    return run


def time_chain(fn, dev: str, repeat: int) -> float:
    """Seconds of one pass, replayed from a CUDA graph on the GPU (engine.timing.measure_graph); once on the CPU."""
    from engine.timing import measure_graph

    return measure_graph(fn, dev, calls=1, repeat=1 if dev == "cpu" else repeat, warmup=1)


def chain_rows(args, bw: float, dev: str) -> list[dict]:
    from engine import quant

    layer, n_layers = (CPU_LAYER, CPU_LAYERS) if args.cpu else (LAYER, LAYERS)
    cfg = CPU_CFG if args.cpu else W4_CFG
    weights = make_weights(layer, n_layers, dev, tg=not args.cpu)
    nbytes = n_layers * sum(k * n // 2 + (k // quant.GROUP) * n * 2 + 2 * (k + n) for _, k, n in layer)
    floor = nbytes / bw
    x0 = torch.randn((1, max(k for _, k, _ in layer)), device=dev).to(torch.bfloat16)
    variants = [("tuned", lambda x, qw, sc, tg, name: quant.w4a16(x, qw, sc, tg), False)]
    for vname, tail, gap in VARIANTS if pdl_supported() else VARIANTS[:2]:
        c = (*cfg[:4], SPLIT_AIM.get(vname, cfg[4]), *cfg[5:], *tail)
        variants.append((vname, lambda x, qw, sc, tg, name, c=c: quant._w4(x, qw, sc, c), gap))
    rows, ref = [], None
    for name, gemv, gap in variants:
        try:
            t = time_chain(chain_fn(weights, layer, x0, gemv, gap), dev, args.repeat)
        except Exception as e:  # noqa: BLE001 - a variant this GPU or Triton cannot run is reported, not fatal
            rows.append({"variant": name, "error": f"{type(e).__name__}: {str(e)[:300]}"})
            log(f"{name}: {rows[-1]['error']}")
            continue
        one = chain_fn(weights[:1], layer, x0, gemv, gap)().float()  # one layer, eagerly: outputs compared
        if name == "w4asm":
            ref = one
        diff = (
            float((one - ref).abs().max() / ref.abs().max()) if ref is not None and name != "w4asm" else None
        )
        rows.append({"variant": name, "us": t * 1e6, "floor_us": floor * 1e6, "x_floor": t / floor,
                     "per_layer_us": t * 1e6 / n_layers, "max_abs_diff_vs_w4asm": diff})  # fmt: skip
        log(f"{name}: {t * 1e6:.1f} µs = {t / floor:.2f}x the floor {floor * 1e6:.1f} µs (diff {diff})")
    rows.append(bf16_row(layer, n_layers, dev, bw, args.repeat))
    rows[-1]["chosen"] = quant.tuned_configs()
    return rows


def bf16_row(layer, n_layers: int, dev: str, bw: float, repeat: int) -> dict:
    import torch.nn.functional as F

    ws = [{name: (torch.randn((n, k), device=dev).to(torch.bfloat16),) for name, k, n in layer}
          for _ in range(n_layers)]  # fmt: skip
    nbytes = n_layers * sum(2 * k * n + 2 * (k + n) for _, k, n in layer)
    x0 = torch.randn((1, max(k for _, k, _ in layer)), device=dev).to(torch.bfloat16)
    t = time_chain(chain_fn(ws, layer, x0, lambda x, w, name: F.linear(x, w), False), dev, repeat)
    log(f"bf16 (cuBLAS): {t * 1e6:.1f} µs = {t * bw / nbytes:.2f}x its floor {nbytes / bw * 1e6:.1f} µs")
    return {"variant": "bf16", "us": t * 1e6, "floor_us": nbytes / bw * 1e6, "x_floor": t * bw / nbytes,
            "per_layer_us": t * 1e6 / n_layers}  # fmt: skip


def markdown(res: dict) -> str:
    lines = [f"# int4 GEMV chains at batch 1 on {res['device']} (torch {res['torch']}, Triton {res['triton']})", "",
             f"`{res['command']}`. Copy bandwidth {res['copy_gb_s']:.0f} GB/s; the floor is the chain's bytes at it.",
             "", "| variant | chain µs | per layer µs | floor µs | × floor | max rel. diff vs w4asm (one layer) |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in res["rows"]:
        if "error" in r:
            lines.append(f"| {r['variant']} | {r['error']} | | | | |")
            continue
        d = r.get("max_abs_diff_vs_w4asm")
        lines.append(f"| {r['variant']} | {r['us']:.1f} | {r['per_layer_us']:.2f} | {r['floor_us']:.1f} | "
                     f"{r['x_floor']:.2f} | {'' if d is None else f'{d:.1e}'} |")  # fmt: skip
    for key, label in (("step", "without PDL candidates"), ("step_pdl", "with PDL candidates")):
        st = res.get(key)
        if st and "step_ms" in st:
            lines += ["", f"Decode step {label}: {st['step_ms']:.3f} ms, {st['x_floor']:.2f}x the step floor "
                      f"{st['floor_ms']:.3f} ms; chosen {st['chosen']}"]  # fmt: skip
            for shape, times in st.get("tuning", {}).items():
                ok = sorted((t, c) for c, t in times.items() if isinstance(t, float))[:6]
                lines.append(f"- {shape}: " + ", ".join(f"{c} {t * 1e6:.1f} µs" for t, c in ok))
        elif st:
            lines += ["", f"Decode step {label}: {st}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--no-step", action="store_true", help="skip the whole decode steps")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    import triton

    from engine import quant

    dev = "cpu" if args.cpu else "cuda"
    bw = copy_bandwidth(dev)
    res = {"device": "cpu" if args.cpu else torch.cuda.get_device_name(), "torch": torch.__version__,
           "triton": triton.__version__, "copy_gb_s": bw / 1e9, "command": " ".join(sys.argv)}  # fmt: skip

    def save() -> None:
        (args.out / "int4_chain.json").write_text(json.dumps(res, indent=1))
        (args.out / "int4_chain.md").write_text(markdown(res))

    res["rows"] = chain_rows(args, bw, dev)
    save()
    if not args.no_step:
        for key, pdl in (("step", False), ("step_pdl", True)):
            if pdl and not pdl_supported():
                continue
            quant.PDL = pdl
            reset_tuner()
            try:
                res[key] = decode_step(bw, args.cpu)
                res[key]["tuning"] = quant.tuning_record()
            except Exception as e:  # noqa: BLE001 - the chain rows above are kept
                res[key] = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
                log(f"{key}: {res[key]['error']}")
            save()
    log(f"wrote {args.out / 'int4_chain.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
