"""The MoE expert GEMMs through torch._grouped_mm beside the Triton kernel, and decode attention without split-K.

    python benchmarks/moe_gpu_check.py --out $OUT/moe           # on an H200 (about 90 s)
    python benchmarks/moe_gpu_check.py --out /tmp/x --cpu --tiny # the same code on toy configs (CPU)

1. Both MoE backends of engine.moe (triton_moe: the Triton grouped GEMM; grouped_mm_moe: torch._grouped_mm,
   CUTLASS on sm90) against the loop over experts (moe_reference) at Mixtral-8x7B's (E=8, top-2, H=4096,
   I=14336) and DeepSeek-V2-Lite's (E=64, top-6, H=2048, I=1408) expert shapes, T = 1, 8, 512, 4096, 8192
   tokens; then one layer's two expert GEMMs per backend at those T, replayed from a CUDA graph (ms, TFLOP/s
   of 6·pairs·H·I).
2. Ceilings: copy bandwidth and the dense bf16 GEMM rate (benchmarks/moe_mla_gpu.py's `ceilings`); the
   batch-1 GEMV (engine.fused.gemv) per tile and cuBLAS on Mixtral's dense shapes (qkv, o, router,
   lm_head), as a share of the copy rate.
3. Mixtral-8x7B bf16 (random weights) through engine.steps.StepRunner: prefill steps of 4,096 and 8,192
   tokens with the expert GEMMs on the Triton kernel, on grouped_mm (the engine's rule), and after
   engine.moe.tune_moe (both timed per rows bucket at warm-up, each checked against the reference), against
   the dense GEMM rate (bar 70%); decode steps at batch 1 and 8 (context 512) against the floor of reading
   the dense weights and the experts touched (bar 1.3x); batch 1 again with the swept GEMV tiles where
   they beat the default.
4. Qwen2.5-7B bf16 decode steps at batch 64, 128, 256 of 1,088-token contexts with the decode attention
   split into work units plus the combine kernel, and with one unit per sequence written directly
   (engine.attention.WHOLE_UNITS_MIN_FILL), against the roofline (weights + KV at the copy bandwidth).

Writes $OUT/moe_gpu_check.json (everything measured) and $OUT/moe_gpu_check.md (tables), after each section.
"""

from __future__ import annotations

import os
import sys

if "--cpu" in sys.argv:  # the Triton kernels run in Triton's interpreter on the CPU (set before importing it)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import _checkout  # noqa: E402,F401  (the checkout's root on sys.path)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _gpu_cli import device_args, pick_device  # noqa: E402
from moe_mla_gpu import TINY_MIXTRAL, ceilings, decode_floor, floor_bytes, free, log, rel_err  # noqa: E402

import engine.attention as attention  # noqa: E402
import engine.fused as fused  # noqa: E402
import engine.moe as moe  # noqa: E402
from core.model_spec import ModelSpec, load_model, spec_from_config  # noqa: E402
from engine.attention import unit_target  # noqa: E402
from engine.model import build_model  # noqa: E402
from engine.steps import StepRunner  # noqa: E402
from engine.timing import measure_graph  # noqa: E402

TOKENS = (1, 8, 512, 4096, 8192)
SHAPES = {"mixtral-8x7b": (8, 2, 4096, 14336), "deepseek-v2-lite": (64, 6, 2048, 1408)}
PREFILL, DECODE, DECODE_CONTEXT = (4096, 8192), (1, 8), 512
LARGE_BATCHES, LARGE_CONTEXT = (64, 128, 256), 1088
BAR_PREFILL, BAR_DECODE, BAR_LARGE = 0.70, 1.3, 1.3
TINY_QWEN = {
    "model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "intermediate_size": 96, "vocab_size": 97, "max_position_embeddings": 512,
    "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
}  # fmt: skip
GEMV_CANDIDATES = [(4, 512, 4), (8, 512, 4), (8, 512, 8), (16, 512, 8), (4, 1024, 4), (8, 1024, 8), (16, 256, 4),
                   (2, 1024, 4), (32, 256, 8), (16, 1024, 8), (1, 1024, 4), (2, 512, 2), (1, 2048, 8)]  # fmt: skip
TUNE_GAIN = 1.03  # a swept GEMV tile replaces the default for a shape when this much faster
BACKENDS = {"triton_moe": moe.triton_moe, "grouped_mm_moe": moe.grouped_mm_moe}
FORCE_TRITON = 1 << 40  # GROUPED_MM_MIN_ROWS that keeps every step on the Triton kernel


def expert_kernels(dev: str, tiny: bool) -> list[dict]:
    """Both backends against the reference, then timed, per shape and token count."""
    dtype = torch.float32 if dev == "cpu" else torch.bfloat16
    shapes = {"tiny": (4, 2, 32, 48), "tiny-64": (16, 6, 32, 16)} if tiny else SHAPES
    tokens = (1, 8, 40) if tiny else TOKENS
    g = torch.Generator(device=dev).manual_seed(0)
    rows = []
    for name, (e, k, h, i) in shapes.items():
        wgu = (torch.randn(e, 2 * i, h, device=dev, generator=g) * h**-0.5).to(dtype)
        wd = (torch.randn(e, h, i, device=dev, generator=g) * i**-0.5).to(dtype)
        for t in tokens:
            x = torch.randn(t, h, device=dev, generator=g).to(dtype)
            w, ids = moe.route(torch.randn(t, e, device=dev, generator=g), k, True)
            want = moe.moe_reference(x, wgu, wd, w, ids)
            flops = 6.0 * t * k * h * i
            r = {"shape": name, "experts": e, "top_k": k, "hidden": h, "inter": i, "tokens": t}
            args = (x, wgu, wd, w, ids)
            for b, fn in BACKENDS.items():
                err = rel_err(fn(*args), want)
                tol = 1e-4 if dtype == torch.float32 else moe.CHECK_TOL
                try:  # from a CUDA graph, as a decode step runs it (a failed capture: recorded, not timed)
                    s = measure_graph(
                        lambda fn=fn, a=args: fn(*a), dev, calls=2, repeat=5 if dev != "cpu" else 1
                    )
                except Exception as e:  # noqa: BLE001
                    r[b] = {"rel_err": err, "ok": err < tol, "error": f"{type(e).__name__}: {str(e)[:160]}"}
                    continue
                r[b] = {"rel_err": err, "ok": err < tol, "seconds": s, "flops_per_s": flops / s}
            r["engine_pick"] = moe.moe_backend(x, ids.numel(), wgu)
            rows.append(r)
            log(f"{name} T={t}: " + ", ".join(
                f"{b} err {r[b]['rel_err']:.1e} " + (f"{r[b]['seconds'] * 1e3:.3f} ms {r[b]['flops_per_s'] / 1e12:.0f} "
                f"TFLOP/s" if "seconds" in r[b] else r[b]["error"]) for b in BACKENDS)
                + f"; rule picks {r['engine_pick']}")  # fmt: skip
            del x, want, args
        del wgu, wd
        free()
    return rows


def gemv_sweep(spec: ModelSpec, dev: str, ceil: dict, tiny: bool) -> tuple[list[dict], dict]:
    """The batch-1 GEMV (engine.fused.gemv) on the model's dense shapes per tile, and cuBLAS (F.linear), timed
    from CUDA graphs over weight copies that overflow L2; each checked against an fp32 product. Returns the
    rows and the picks ((N, K) -> tile) that beat the default GEMV_TILE by TUNE_GAIN."""
    from engine import fused
    from engine.timing import copies_for_cache, measure_graph, rotating

    dtype = torch.float32 if dev == "cpu" else torch.bfloat16
    h, hd = spec.hidden_size, spec.head_dim
    shapes = {"qkv": ((spec.num_heads + 2 * spec.num_kv_heads) * hd, h), "o": (h, spec.num_heads * hd),
              "router": (spec.num_experts, h), "lm_head": (spec.vocab_size, h)}  # fmt: skip
    cands = ["cublas", fused.GEMV_TILE] + [c for c in GEMV_CANDIDATES if c != fused.GEMV_TILE]
    g = torch.Generator(device=dev).manual_seed(0)
    rows, picks = [], {}
    for name, (n, k) in shapes.items():
        w = (torch.randn(n, k, device=dev, generator=g) * k**-0.5).to(dtype)
        x = torch.randn(1, k, device=dev, generator=g).to(dtype)
        want = torch.nn.functional.linear(x.float(), w.float())
        copies = copies_for_cache(n * k * w.element_size(), dev)
        bufs = [(w,)] + [(w.clone(),) for _ in range(copies - 1)]
        r: dict = {"name": name, "n": n, "k": k, "tiles": {}}
        for tile in cands[: 3 if dev == "cpu" else None]:
            key = tile if isinstance(tile, str) else "x".join(map(str, tile))
            try:
                err = rel_err(fused.gemv(x, w, tile=tile), want)
                s = measure_graph(rotating(bufs, lambda w, t=tile, x=x: fused.gemv(x, w, tile=t)), dev,
                                  calls=max(copies, 4), repeat=10)  # fmt: skip
                r["tiles"][key] = {"tile": tile, "seconds": s, "bytes_per_s": n * k * w.element_size() / s,
                                   "rel_err": err, "ok": err < (1e-4 if dev == "cpu" else 2e-2)}  # fmt: skip
            except Exception as e:  # noqa: BLE001 - a tile that does not compile is reported, not fatal
                r["tiles"][key] = {"tile": tile, "error": f"{type(e).__name__}: {str(e)[:120]}"}
        ok = {kk: v for kk, v in r["tiles"].items() if v.get("ok")}
        default = "x".join(map(str, fused.GEMV_TILE))
        if ok and default in ok:
            best = min(ok, key=lambda kk: ok[kk]["seconds"])
            r["best"] = best
            if ok[best]["seconds"] * TUNE_GAIN < ok[default]["seconds"]:
                picks[(n, k)] = ok[best]["tile"]
        rows.append(r)
        log(f"gemv {name} {n}x{k}: " + ", ".join(
            f"{kk} {v['bytes_per_s'] / ceil['copy_bytes_per_s']:.0%}" if "seconds" in v else f"{kk} failed"
            for kk, v in r["tiles"].items()) + f" of the copy rate; best {r.get('best')}")  # fmt: skip
        del w, bufs
    free()
    return rows, picks


def mixtral(spec: ModelSpec, dev: str, ceil: dict, tiny: bool, gemv_picks: dict) -> dict:
    t0 = time.perf_counter()
    model = build_model(spec, dtype="fp32" if dev == "cpu" else "bf16", device=dev)
    prefills = (64, 128) if tiny else PREFILL
    # the "default GEMV" rows on GEMV_TILE itself: the runner's warm-up tuning (engine.fused.tune_gemv) held off
    keep_tune, fused.TUNE_GEMV = fused.TUNE_GEMV, False
    try:
        runner = StepRunner(model, max(DECODE), max(max(prefills), DECODE_CONTEXT), device=dev)
    finally:
        fused.TUNE_GEMV = keep_tune
    log(f"{spec.name}: built in {time.perf_counter() - t0:.0f} s")
    dense, expert = floor_bytes(model)
    reps = {"warmup": 1, "repeat": 2} if dev == "cpu" else {"warmup": 2, "repeat": 5}
    rec: dict = {
        "model": spec.name,
        "dense_bytes": dense,
        "expert_bytes": expert,
        "prefill": [],
        "decode": [],
    }
    keep = moe.GROUPED_MM_MIN_ROWS

    def prefill(n: int, mode: str) -> None:
        step = runner.prefill([n], **reps)
        flops = (
            spec.flops_per_token(0) * n
            + spec.attn_flops_per_pair * spec.full_attention_layers * n * (n + 1) / 2
        )
        share = flops / step / ceil["gemm_flops_per_s"]
        rec["prefill"].append({"tokens": n, "experts": mode, "step_s": step, "flops_per_s": flops / step,
                               "share_of_gemm_rate": share, "bar": BAR_PREFILL, "ok": share >= BAR_PREFILL})  # fmt: skip
        log(f"prefill {n} tokens, experts on {mode}: {step * 1e3:.1f} ms, {flops / step / 1e12:.0f} TFLOP/s = "
            f"{share:.0%} of the dense GEMM rate (bar {BAR_PREFILL:.0%})")  # fmt: skip

    try:
        for mode, rule in (("triton", FORCE_TRITON), ("grouped_mm rule", keep)):
            moe.GROUPED_MM_MIN_ROWS = rule
            for n in prefills:
                prefill(n, mode)
        moe.GROUPED_MM_MIN_ROWS = keep
        t1 = time.perf_counter()
        rec["tune"] = {"/".join(map(str, k)): v for k, v in moe.tune_moe(model, max(prefills), log).items()}
        rec["tune_s"] = time.perf_counter() - t1
        if rec["tune"]:
            for n in prefills:
                prefill(n, "tuned")

        def decode(b: int, gemv: str) -> None:
            ctx = [DECODE_CONTEXT] * b
            step = runner.decode(ctx, **({"warmup": 1, "repeat": 2} if dev == "cpu" else {}))
            floor, touched = decode_floor(model, spec, ctx, dense, expert, ceil["copy_bytes_per_s"], dev)
            rec["decode"].append({"batch": b, "context": DECODE_CONTEXT, "gemv": gemv, "step_s": step,
                                  "floor_s": floor, "experts_touched_per_layer": touched,
                                  "ratio": step / floor, "bar": BAR_DECODE, "ok": step / floor <= BAR_DECODE})  # fmt: skip
            log(f"decode batch {b} ({gemv} GEMV tiles): {step * 1e3:.2f} ms, floor {floor * 1e3:.2f} ms: "
                f"{step / floor:.2f}x (bar {BAR_DECODE}x)")  # fmt: skip

        for b in DECODE:
            decode(b, "default")
        if gemv_picks:  # the swept GEMV tiles: batch 1 again (its graph captured anew)
            fused.GEMV_TILES.update(gemv_picks)
            runner.reset_graphs()  # the runner's and its executor's graphs, with a new pool
            decode(1, "swept")
            rec["gemv_tiles"] = {f"{n}x{k}": t for (n, k), t in gemv_picks.items()}
    finally:
        if gemv_picks:
            fused.GEMV_TILES.clear()
        moe.GROUPED_MM_MIN_ROWS = keep
        moe.set_backends({})
    return rec


def ragged_contexts(batch: int, mean: int) -> list[int]:
    """`batch` decode contexts of about `mean` tokens on average, spread as a serving batch's are (lognormal,
    sigma 1, seeded; the longest several times the mean): where one unit per sequence leaves programs idle
    while the longest sequence's finishes."""
    rng = np.random.default_rng(batch)
    x = rng.lognormal(0.0, 1.0, batch)
    return [int(v) for v in np.clip(np.round(x / x.mean() * mean), 16, 16 * mean)]


def large_decode(spec: ModelSpec, dev: str, ceil: dict, tiny: bool) -> dict:
    """Decode steps at large batch, split (work units + combine) against whole (one unit per sequence)."""
    t0 = time.perf_counter()
    model = build_model(spec, dtype="fp32" if dev == "cpu" else "bf16", device=dev)
    batches, context = ((4, 8), 40) if tiny else (LARGE_BATCHES, LARGE_CONTEXT)
    cases = [(b, sh, [context] * b if sh == "uniform" else ragged_contexts(b, context))
             for sh in ("uniform", "ragged") for b in batches]  # fmt: skip
    runner = StepRunner(model, max(batches), max(max(c) for *_, c in cases) + 8, device=dev,
                        kv_tokens=max(sum(c) for *_, c in cases) + 1024)  # fmt: skip
    log(f"{spec.name}: built in {time.perf_counter() - t0:.0f} s")
    dense, _ = floor_bytes(model)
    target = unit_target(attention.device_sms(dev), spec.num_kv_heads)
    rec: dict = {"model": spec.name, "dense_bytes": dense, "unit_target": target, "rows": []}
    keep = attention.WHOLE_UNITS_MIN_FILL, attention.WHOLE_MAX_SHARE
    # the engine's own rule for each case's contexts, before the loop moves its fill
    rule = {(b, sh): attention.balanced_units(c, target) for b, sh, c in cases}
    try:
        for b, shape, ctx in cases:
            kv = sum(ctx) * spec.kv_bytes_per_token("bf16") * (2 if dev == "cpu" else 1)
            floor = (dense + kv) / ceil["copy_bytes_per_s"]
            row = {"batch": b, "context": context, "shape": shape, "longest": max(ctx), "floor_s": floor,
                   "engine_whole": rule[(b, shape)]}  # fmt: skip
            for mode, fill in (("split", float("inf")), ("whole", 0.0)):
                # whole: one unit per sequence whatever the contexts (balanced_units' share test off too)
                attention.WHOLE_UNITS_MIN_FILL = fill
                attention.WHOLE_MAX_SHARE = float("inf")
                runner.reset_graphs()  # the graphs' unit grids follow the rule: captured again (new pool)
                reps = {"warmup": 1, "repeat": 2} if dev == "cpu" else {"warmup": 3, "repeat": 20}
                row[mode + "_s"] = step = runner.decode(ctx, **reps)
                row[mode + "_ratio"] = step / floor
            rec["rows"].append(row)
            log(f"decode batch {b} x {context} ({shape}, longest {max(ctx)}): split {row['split_s'] * 1e3:.2f} ms, "
                f"whole {row['whole_s'] * 1e3:.2f} ms, roofline {floor * 1e3:.2f} ms ({row['split_ratio']:.2f}x / "
                f"{row['whole_ratio']:.2f}x, bar {BAR_LARGE}x); engine rule: "
                f"{'whole' if row['engine_whole'] else 'split'}")  # fmt: skip
    finally:
        attention.WHOLE_UNITS_MIN_FILL, attention.WHOLE_MAX_SHARE = keep
    return rec


def tables(raw: dict) -> str:
    out = [f"# MoE grouped_mm and whole-unit decode check ({raw['device']}, torch {raw['torch']})", "",
           f"Command: `{raw['command']}`", ""]  # fmt: skip
    if "ceilings" in raw:
        c = raw["ceilings"]
        out += [
            f"Copy {c['copy_bytes_per_s'] / 1e9:.0f} GB/s, dense GEMM {c['gemm_flops_per_s'] / 1e12:.0f} TFLOP/s.",
            "",
        ]
    if raw.get("experts"):
        out += ["| shape | T | triton ms | triton TFLOP/s | grouped_mm ms | grouped_mm TFLOP/s | max rel err (t/g) | rule |",
                "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in raw["experts"]:
            a, b = r["triton_moe"], r["grouped_mm_moe"]

            def cells(v: dict) -> str:
                return (
                    f"{v['seconds'] * 1e3:.3f} | {v['flops_per_s'] / 1e12:.0f}"
                    if "seconds" in v
                    else "failed | -"
                )

            out.append(f"| {r['shape']} | {r['tokens']} | {cells(a)} | {cells(b)} | {a['rel_err']:.1e} / "
                       f"{b['rel_err']:.1e} | {r['engine_pick']} |")  # fmt: skip
        out.append("")
    m = raw.get("mixtral")
    if m:
        out += [
            "| Mixtral step | experts | ms | TFLOP/s or floor | share / ratio | bar |",
            "|---|---|---|---|---|---|",
        ]
        for r in m["prefill"]:
            out.append(f"| prefill {r['tokens']} | {r['experts']} | {r['step_s'] * 1e3:.1f} | "
                       f"{r['flops_per_s'] / 1e12:.0f} | {r['share_of_gemm_rate']:.0%} | {'ok' if r['ok'] else 'MISS'} |")  # fmt: skip
        for r in m["decode"]:
            out.append(f"| decode batch {r['batch']} ({r['gemv']} GEMV) | (rule) | {r['step_s'] * 1e3:.2f} | {r['floor_s'] * 1e3:.2f} ms | "
                       f"{r['ratio']:.2f}x | {'ok' if r['ok'] else 'MISS'} |")  # fmt: skip
        out.append("")
    if raw.get("gemv"):
        out += [
            "| GEMV | N x K | share of the copy rate per tile (cublas, default first) | best |",
            "|---|---|---|---|",
        ]
        for r in raw["gemv"]:
            cells = ", ".join(f"{k} {v['bytes_per_s'] / raw['ceilings']['copy_bytes_per_s']:.0%}" if "seconds" in v
                              else f"{k} failed" for k, v in r["tiles"].items())  # fmt: skip
            out.append(f"| {r['name']} | {r['n']} x {r['k']} | {cells} | {r.get('best')} |")
        out.append("")
    q = raw.get("large_decode")
    if q:
        out += ["| decode batch | context (mean) | contexts | longest | split ms | whole ms | roofline ms | split x | "
                "whole x | engine rule |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in q["rows"]:
            out.append(f"| {r['batch']} | {r['context']} | {r.get('shape', 'uniform')} | {r.get('longest', r['context'])} | "
                       f"{r['split_s'] * 1e3:.2f} | {r['whole_s'] * 1e3:.2f} | "
                       f"{r['floor_s'] * 1e3:.2f} | {r['split_ratio']:.2f} | {r['whole_ratio']:.2f} | "
                       f"{'whole' if r['engine_whole'] else 'split'} |")  # fmt: skip
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the results (the device's $OUT)")
    device_args(p, "toy configs of the same architectures")
    p.add_argument("--skip", nargs="*", default=[], choices=["experts", "gemv", "mixtral", "large_decode"])
    args = p.parse_args(argv)
    dev = pick_device(args, paired=True)
    if dev is None:
        return 2
    if args.cpu:
        torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    raw: dict = {"command": "python benchmarks/moe_gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                 "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__}  # fmt: skip
    t0 = time.perf_counter()

    def save() -> None:
        raw["wall_s"] = time.perf_counter() - t0
        (out / "moe_gpu_check.json").write_text(json.dumps(raw, indent=1))
        (out / "moe_gpu_check.md").write_text(tables(raw))

    if "experts" not in args.skip:
        raw["experts"] = expert_kernels(dev, args.tiny)
        save()
        bad = [r for r in raw["experts"] for b in BACKENDS if not r[b]["ok"]]
        if bad:
            print(f"error: an MoE backend disagrees with moe_reference: {bad[0]}", file=sys.stderr)
            return 1
    raw["ceilings"] = ceilings(dev)
    save()
    spec = spec_from_config(TINY_MIXTRAL, name="tiny-mixtral") if args.tiny else load_model("mixtral-8x7b")
    picks = {}
    if "gemv" not in args.skip:
        raw["gemv"], picks = gemv_sweep(spec, dev, raw["ceilings"], args.tiny)
        save()
    if "mixtral" not in args.skip:
        raw["mixtral"] = mixtral(spec, dev, raw["ceilings"], args.tiny, picks)
        save()
        free()
    log(f"[{time.perf_counter() - t0:.0f} s]")
    if "large_decode" not in args.skip:
        spec = spec_from_config(TINY_QWEN, name="tiny-qwen") if args.tiny else load_model("qwen2.5-7b")
        raw["large_decode"] = large_decode(spec, dev, raw["ceilings"], args.tiny)
        save()
    log(f"wrote {out / 'moe_gpu_check.json'} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
