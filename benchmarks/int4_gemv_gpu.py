"""int4 (W4A16) GEMV at 1-8 token rows against the 4-bit weight-read floor, and a whole int4 decode step.

    python benchmarks/int4_gemv_gpu.py --out $OUT/int4        # on the GPU (about 90 s on an H200)
    python benchmarks/int4_gemv_gpu.py --out /tmp/g --cpu     # the same code on toy shapes (Triton interpreter)

1. Copy bandwidth (a 2 GiB device copy, bytes read + written): the ceiling the floor is taken at.
2. Per weight shape (Llama-3.1-8B's qkv / o / gate_up / down, then Gemma-3-12B's) and rows in {1, 2, 4, 8}: every
   candidate of engine/quant.py's tuner as the tuner measures it (checked against the reference on a slice,
   then timed from a CUDA graph over enough weight copies to overflow L2), the chosen one, its error on the
   full output, GB/s of packed weights + scales and x over the floor (those bytes at the copy bandwidth).
3. Llama-3.1-8B int4 (random weights) after `engine.quant.tune_model` (the 1-row bucket): one batch-1 decode step at a 1,024-token
   context through engine.steps.StepRunner with CUDA graphs, against the step floor (every byte a decode step
   must read — packed weights + scales, 16-bit weights other than the embedding table, the KV cache — at the
   copy bandwidth), and the kernels chosen.
Writes int4_gemv.json and int4_gemv.md under --out (rewritten after every shape, so a cut run keeps its rows).
"""

from __future__ import annotations

import os
import sys

if "--cpu" in sys.argv:  # Triton kernels through its interpreter on the CPU (set before importing it)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import _checkout  # noqa: E402,F401  (the checkout's root on sys.path)
import torch  # noqa: E402
from kernel_profile import TINY  # noqa: E402  (its toy config for --cpu)

# (model, shape, K, N)
SHAPES = [
    ("llama-3.1-8b", "gate_up", 4096, 28672),  # the most bytes first (a cut run keeps them)
    ("llama-3.1-8b", "down", 14336, 4096),
    ("llama-3.1-8b", "qkv", 4096, 6144),
    ("llama-3.1-8b", "o", 4096, 4096),
    ("gemma-3-12b", "qkv", 3840, 8192),
    ("gemma-3-12b", "o", 4096, 3840),
    ("gemma-3-12b", "gate_up", 3840, 30720),
    ("gemma-3-12b", "down", 15360, 3840),
]
# the shape of published W4A16 results on Hopper: Marlin at one row on an H100, 4.98 TFLOP/s (inclusionAI/humming
# PR #2, dense n8192 k8192 channelwise), for the same kernels against the same floor (--shapes published)
PUBLISHED_SHAPES = [("published", "8192x8192", 8192, 8192)]
ROWS = (1, 2, 4, 8)
CPU_SHAPES = [("toy", "a", 256, 192)]
CPU_ROWS = (1, 3)
STEP_CONTEXT = 1024


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def reset_tuner() -> None:
    """Forget every tuned choice (so each row count is tuned at that count, not taken from its bucket)."""
    from engine import quant

    quant._TUNED.clear()
    quant._TIMES.clear()
    quant._PLAN.clear()


def shape_rows(model: str, shape: str, k: int, n: int, rows, bw: float, dev: str) -> list[dict]:
    from engine import quant
    from engine.timing import measure

    g = torch.Generator(device=dev).manual_seed(0)
    w = (torch.randn((n, k), device=dev, generator=g) * k**-0.5).to(torch.bfloat16)
    qw, sc = quant.quantize_int4(w)
    del w
    tg = quant.tinygemm_pack(qw, sc)
    wref = quant.dequantize(qw, sc, torch.float32)
    out = []
    for m in rows:
        reset_tuner()
        x = torch.randn((m, k), device=dev, generator=g).to(torch.bfloat16)
        y = quant.w4a16(x, qw, sc, tg).float()  # on the GPU: the tuner checks and times every candidate
        ref = x.float() @ wref.t()
        err = float((y - ref).abs().max() / ref.abs().max())
        times = quant.tuning_times(m, n, k, tinygemm=tg is not None)
        if not times:  # the CPU: no tuning; every kernel of the new family timed here, eagerly
            times = {}
            for c in [("w4", (quant._bucket(m), 64, 16, 2, 2, 2)), quant.candidates(m, x, tg)[0]]:
                why = quant._check(c, x, qw, sc, tg)
                times[quant.cand_name(c)] = (
                    f"dropped: {why}"
                    if why
                    else measure(
                        lambda c=c, a=(x, qw, sc, tg): quant.run_candidate(c, *a), dev, warmup=1, repeat=2
                    )
                )
        ok = {c: t for c, t in times.items() if isinstance(t, float)}
        chosen = min(ok, key=ok.__getitem__)
        nbytes = qw.numel() * 4 + sc.numel() * sc.element_size() + 2 * m * (k + n)
        floor = nbytes / bw
        best_of = {}
        for fam in ("w4asm", "w4", "planes", "gemv", "tile", "tinygemm"):
            fam_t = {c: t for c, t in ok.items() if c.split("(")[0] == fam}
            if fam_t:
                best_of[fam] = min(fam_t.values())
        row = {"model": model, "shape": shape, "k": k, "n": n, "m": m, "chosen": chosen, "us": ok[chosen] * 1e6,
               "floor_us": floor * 1e6, "x_floor": ok[chosen] / floor, "gb_s": nbytes / ok[chosen] / 1e9,
               "max_rel_error": err, "best_us_by_kernel": {f: t * 1e6 for f, t in best_of.items()},
               "candidates_us": {c: (t * 1e6 if isinstance(t, float) else t) for c, t in times.items()}}  # fmt: skip
        out.append(row)
        fams = ", ".join(f"{f} {t * 1e6:.1f}" for f, t in best_of.items())
        log(f"{model} {shape} [{k}->{n}] m={m}: {chosen} {row['us']:.1f} µs = {row['x_floor']:.2f}x floor "
            f"({row['floor_us']:.1f} µs), {row['gb_s']:.0f} GB/s, error {err:.1e}; best per kernel (µs): {fams}")  # fmt: skip
        dropped = {c: t for c, t in times.items() if not isinstance(t, float)}
        if dropped:
            log(f"    dropped: {dropped}")
        del x, y, ref
    del qw, sc, tg, wref
    return out


def step_floor_bytes(model, context: int) -> tuple[int, int]:
    """(bytes one decode step must read: int4 packed weights + scales, 16-bit parameters but the embedding
    table, the KV cache at `context` tokens; of which int4 bytes)."""
    from engine.quant import Int4Linear

    int4 = other = 0
    seen = set()
    for mod in model.modules():
        if isinstance(mod, Int4Linear):
            int4 += mod.qweight.numel() * 4 + mod.scales.numel() * mod.scales.element_size()
            seen.update(id(p) for p in mod.parameters())
        elif isinstance(mod, torch.nn.Embedding):
            seen.update(id(p) for p in mod.parameters())
    for p in model.parameters():
        if id(p) not in seen:
            other += p.numel() * p.element_size()
            seen.add(id(p))
    return int4 + other, int4


def decode_step(bw: float, cpu: bool) -> dict:
    from core.model_spec import load_model, spec_from_config
    from engine import quant
    from engine.model import build_model
    from engine.steps import StepRunner

    dev = "cpu" if cpu else "cuda"
    spec = spec_from_config(TINY, "tiny") if cpu else load_model("llama-3.1-8b")
    ctx = 64 if cpu else STEP_CONTEXT
    t0 = time.perf_counter()
    reset_tuner()
    model = build_model(spec, dtype="int4", device=dev)
    built = time.perf_counter() - t0
    tuned = quant.tune_model(model, 1, log=log)  # the batch-1 bucket: the one this step runs
    runner = StepRunner(model, 1, ctx + 8, device=dev, cuda_graphs=not cpu, kv_tokens=ctx + 64)
    step = runner.decode([ctx], warmup=1 if cpu else 3, repeat=2 if cpu else 20)
    weights, int4 = step_floor_bytes(model, ctx)
    kv = 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * ctx * 2  # K and V, bf16
    floor = (weights + kv) / bw
    rec = {"model": spec.name, "context": ctx, "step_ms": step * 1e3, "floor_ms": floor * 1e3,
           "x_floor": step / floor, "bytes_read": weights + kv, "int4_bytes": int4, "kv_bytes": kv,
           "int4_floor_ms": int4 / bw * 1e3, "build_s": built, "tuned_pairs": tuned,
           "chosen": quant.tuned_configs()}  # fmt: skip
    log(f"{spec.name} int4 decode, batch 1, context {ctx}: {rec['step_ms']:.3f} ms = {rec['x_floor']:.2f}x the "
        f"step floor ({rec['floor_ms']:.3f} ms: {(weights + kv) / 1e9:.2f} GB, of which int4 {int4 / 1e9:.2f} GB)")  # fmt: skip
    return rec


def copy_bandwidth(dev: str) -> float:
    """Bytes a second of a device copy (read + written; 2 GiB on the GPU, 16 MiB on the CPU): the floors' rate."""
    from engine.kernels import time_copy

    secs, nbytes = time_copy((16 if dev == "cpu" else 2048) * 2**20, dev)
    return nbytes / secs


def markdown(res: dict) -> str:
    graphs = "CUDA graphs" if res["device"] != "cpu" else "eager"
    lines = [f"# int4 GEMV on {res['device']} (torch {res['torch']})", "",
             f"Copy bandwidth {res['copy_gb_s']:.0f} GB/s (the floor: packed weights + scales + x/y at it).", "",
             "| model | shape | K->N | rows | chosen | µs | floor µs | x floor | GB/s | max rel err | best µs per kernel |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in res["rows"]:
        best = ", ".join(f"{f} {t:.1f}" for f, t in r["best_us_by_kernel"].items())
        lines.append(f"| {r['model']} | {r['shape']} | {r['k']}->{r['n']} | {r['m']} | {r['chosen']} | {r['us']:.1f} "
                     f"| {r['floor_us']:.1f} | {r['x_floor']:.2f} | {r['gb_s']:.0f} | {r['max_rel_error']:.1e} "
                     f"| {best} |")  # fmt: skip
    st = res.get("step")
    if st and "step_ms" in st:
        lines += ["", f"{st['model']} int4 decode step, batch 1, context {st['context']} ({graphs}): "
                  f"{st['step_ms']:.3f} ms, {st['x_floor']:.2f}x the step floor {st['floor_ms']:.3f} ms "
                  f"({st['bytes_read'] / 1e9:.2f} GB read; int4 alone {st['int4_floor_ms']:.3f} ms)."]  # fmt: skip
    elif st:
        lines += ["", f"decode step: {st}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument(
        "--budget-s", type=float, default=85.0, help="stop starting shapes after this many seconds"
    )
    ap.add_argument("--no-step", action="store_true", help="skip the whole decode step")
    ap.add_argument(
        "--shapes",
        choices=("models", "published"),
        default="models",
        help="models (Llama-3.1-8B's and Gemma-3-12B's weights) or published (the 8,192 x 8,192 layer of "
        "published Hopper W4A16 results)",
    )
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    dev = "cpu" if args.cpu else "cuda"
    bw = copy_bandwidth(dev)
    res = {"device": "cpu" if args.cpu else torch.cuda.get_device_name(), "torch": torch.__version__,
           "copy_gb_s": bw / 1e9, "rows": [], "command": " ".join(sys.argv)}  # fmt: skip
    log(f"copy bandwidth {bw / 1e9:.0f} GB/s")

    def save() -> None:
        res["wall_s"] = time.perf_counter() - t_start
        (args.out / "int4_gemv.json").write_text(json.dumps(res, indent=1))
        (args.out / "int4_gemv.md").write_text(markdown(res))

    step_reserve = 0.0 if args.no_step else (1.0 if args.cpu else 45.0)
    for model, shape, k, n in (
        CPU_SHAPES if args.cpu else (PUBLISHED_SHAPES if args.shapes == "published" else SHAPES)
    ):
        if time.perf_counter() - t_start > args.budget_s - step_reserve and res["rows"]:
            res.setdefault("skipped", []).append(f"{model} {shape}")
            log(f"{model} {shape}: skipped (time budget)")
            continue
        try:
            res["rows"] += shape_rows(model, shape, k, n, CPU_ROWS if args.cpu else ROWS, bw, dev)
        except Exception as e:  # noqa: BLE001 - one shape failing does not lose the others
            res.setdefault("errors", []).append(f"{model} {shape}: {type(e).__name__}: {str(e)[:300]}")
            log(res["errors"][-1])
        gc.collect()
        if not args.cpu:
            torch.cuda.empty_cache()
        save()
    if not args.no_step:
        try:
            res["step"] = decode_step(bw, args.cpu)
        except Exception as e:  # noqa: BLE001 - the per-shape rows above are kept
            res["step"] = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
            log(f"decode step: {res['step']['error']}")
    save()
    log(f"wrote {args.out / 'int4_gemv.json'} in {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
