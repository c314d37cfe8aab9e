"""How the decode attention kernel's work units should be cut: every plan of engine.attention.plan_decode_units on
calibration's decode shapes, equal and ragged contexts, timed as a decode step runs it.

    python benchmarks/decode_units.py --out $OUT/units            # on the GPU (about 3 minutes on an H200)
    python benchmarks/decode_units.py --out /tmp/u --cpu --tiny   # the same code on toy shapes (Triton interpreted)
    python benchmarks/decode_units.py --compare BEFORE.json AFTER.json --out FILE.md   # two runs, no device

For each shape (the attention_decode points of a calibration store, then large batches of Llama-3.1-8B's and
Qwen2.5-7B's heads with equal and lognormal contexts), the decode kernel (engine.fused.decode_attention) runs
with each plan:

- `rule`: the plan the engine picks (plan_decode_units' defaults: whole units when the sequences fill the GPU
  evenly, else split with `split_waves`);
- `whole`: one unit per sequence (no merge kernel);
- `splitW`: units of at most total keys / (target x W) keys (W = 1 was the rule before session 15).

Each plan's output is checked against the reference attention (max |difference| / max |value|), then it is replayed
from a CUDA graph over KV pools rotated past the L2 (engine.kernels' decode timing). Writes decode_units.json
(every time) and decode_units.md (per shape: each plan's time over the fastest plan's) under --out, after every
shape, so a cut run keeps what it measured.
"""

from __future__ import annotations

import os
import sys

if "--cpu" in sys.argv:  # Triton kernels through its interpreter on the CPU (set before importing it)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import _checkout  # noqa: E402,F401  (the checkout's root on sys.path)
import torch  # noqa: E402
from _gpu_cli import device_args, log, pick_device  # noqa: E402

from calibrate.plan import mixed_lengths  # noqa: E402
from engine.attention import (  # noqa: E402
    device_sms,
    make_layout,
    plan_decode_units,
    reference_attention,
    unit_target,
    unit_tensors,
)
from engine.fused import decode_attention  # noqa: E402
from engine.kernels import decode_inputs  # noqa: E402
from engine.timing import measure_graph, rotating  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STORE = ROOT / "calibration_runs" / "h200_session14_moe" / "measurements.jsonl"
LLAMA_HEADS = {"num_heads": 32, "num_kv_heads": 8, "head_dim": 128}
QWEN_HEADS = {"num_heads": 28, "num_kv_heads": 4, "head_dim": 128}
TINY_HEADS = {"num_heads": 4, "num_kv_heads": 2, "head_dim": 64}
WAVES = (1, 2, 4, 8)
TINY_WAVES = (1, 8)  # --tiny: fewer plans (the interpreter is slow)
WHOLE_MIN_BATCH = 8  # forced whole plans below this many sequences are not timed (one program a sequence)


def plans(n: int, waves=WAVES) -> dict[str, dict]:
    """name -> plan_decode_units keyword arguments."""
    out: dict[str, dict] = {"rule": {}}
    if n >= WHOLE_MIN_BATCH:
        out["whole"] = {"whole": True}
    for w in waves:
        out[f"split{w}"] = {"whole": False, "waves": w}
    return out


def shapes(tiny: bool, store: Path) -> list[dict]:
    """The shapes to time: (context_lens, heads, source)."""
    if tiny:
        return [
            {"context_lens": [40, 4000, 70, 9], "heads": TINY_HEADS, "source": "tiny"},
            {"context_lens": [64] * 8, "heads": TINY_HEADS, "source": "tiny"},
        ]
    out = []
    for line in store.read_text().splitlines():
        r = json.loads(line)
        if r.get("kind") == "attention_decode":
            p = dict(r["params"])
            out.append({"context_lens": p.pop("context_lens"), "heads": p, "source": "calibration",
                        "calibration_s": r["seconds"]})  # fmt: skip
    for heads, means in ((LLAMA_HEADS, (512, 1024, 2048, 4096)), (QWEN_HEADS, (1088,))):
        for b in (64, 128, 256):
            for mean in means:
                if b * mean > 2**20:
                    continue
                for spread in (0.4, 0.8):
                    lens = mixed_lengths(b, mean, seed=7000 * b + mean + int(spread * 10), spread=spread)
                    out.append({"context_lens": lens, "heads": heads, "source": f"lognormal {spread}"})
                if heads is QWEN_HEADS:
                    out.append({"context_lens": [mean] * b, "heads": heads, "source": "equal"})
    return out


def time_plans(shape: dict, dev: str, tiny: bool = False) -> dict:
    """Every plan of one shape: seconds, units, chunk, error against the reference attention."""
    ctx = shape["context_lens"]
    h = shape["heads"]
    nh, nkv, d = h["num_heads"], h["num_kv_heads"], h["head_dim"]
    dtype = torch.float32 if dev == "cpu" else torch.bfloat16
    b, total = len(ctx), sum(ctx)
    target = unit_target(device_sms(dev), nkv)
    lay = make_layout([1] * b, [c - 1 for c in ctx], dev, kv_heads=nkv)
    bufs = decode_inputs(ctx, nh, nkv, d, dtype, dev)
    q0, k0, v0 = bufs[0]
    res = {"batch": b, "mean_context": total / b, "max_context": max(ctx), **h, "target": target,
           "source": shape["source"], "calibration_s": shape.get("calibration_s"), "plans": {}}  # fmt: skip
    ref = reference_attention(q0, k0, v0, lay, d**-0.5).float()
    todo = list((plans(b, TINY_WAVES) if tiny else plans(b)).items())
    # the first plan once more, untimed, first: the first timing of a shape read up to 14% slow on an H200
    for name, kw in ([("warm-up", todo[0][1])] if dev != "cpu" else []) + todo:
        units = plan_decode_units(ctx, target, **kw)
        lay.units, lay.whole_units = unit_tensors(units, dev), units["whole"]
        out = decode_attention(q0, k0, v0, lay, d**-0.5).float()
        err = float((out - ref).abs().max() / ref.abs().max())
        fn = rotating(bufs, lambda q, k, v: decode_attention(q, k, v, lay, d**-0.5))
        s = measure_graph(fn, dev, calls=max(len(bufs), 8), repeat=5 if dev != "cpu" else 1, warmup=2)
        if name != "warm-up":
            res["plans"][name] = {
                "seconds": s,
                "units": units["count"],
                "chunk": units["chunk"],
                "rel_err": err,
            }
    return res


def markdown(rows: list[dict], device: str) -> str:
    names = list(plans(WHOLE_MIN_BATCH))
    lines = [f"# Decode attention work units on {device}", "",
             "`python benchmarks/decode_units.py --out DIR`: one layer's decode attention (µs, CUDA graph) per unit "
             "plan; the fastest plan per shape is bold.", "",
             "| heads (q/kv/d) | batch | mean ctx | max ctx | contexts | target | " + " | ".join(names) + " |",
             "|---" * (6 + len(names)) + "|"]  # fmt: skip
    for r in rows:
        best = min(p["seconds"] for p in r["plans"].values())
        cells = []
        for n in names:
            p = r["plans"].get(n)
            if p is None:
                cells.append("")
                continue
            v = f"{p['seconds'] * 1e6:.1f}"
            cells.append(f"**{v}**" if p["seconds"] == best else v)
        lines.append(f"| {r['num_heads']}/{r['num_kv_heads']}/{r['head_dim']} | {r['batch']} | "
                     f"{r['mean_context']:.0f} | {r['max_context']} | {r['source']} | {r['target']} | "
                     + " | ".join(cells) + " |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _key(r: dict) -> tuple:
    return (
        r["num_heads"],
        r["num_kv_heads"],
        r["head_dim"],
        r["batch"],
        round(r["mean_context"]),
        r["max_context"],
    )


def compare(before: dict, after: dict) -> str:
    """The rule's time per shape after against before (two runs' decode_units.json, shapes matched), summarised by
    kind of batch, and how close the later rule is to the best plan it was timed against."""
    old = {_key(r): r["plans"]["rule"]["seconds"] for r in before["rows"]}
    groups: dict[str, list[float]] = {"ragged, 64-256 sequences (longest over 1.5x the mean)": [],
                                      "equal or near, 64-256 sequences": [], "1-32 sequences": []}  # fmt: skip
    near = worst = 0
    for r in after["rows"]:
        rule = r["plans"]["rule"]["seconds"]
        near += rule <= 1.05 * min(p["seconds"] for p in r["plans"].values())
        worst = max([worst] + [p["rel_err"] for p in r["plans"].values()])
        if _key(r) not in old:
            continue
        g = ("1-32 sequences" if r["batch"] < 64 else "ragged, 64-256 sequences (longest over 1.5x the mean)"
             if r["max_context"] > 1.5 * r["mean_context"] else "equal or near, 64-256 sequences")  # fmt: skip
        groups[g].append((rule / old[_key(r)] - 1) * 100)
    lines = ["| shapes | n | median change | range |", "|---|---|---|---|"]
    for g, ch in groups.items():
        if ch:
            lines.append(
                f"| {g} | {len(ch)} | {statistics.median(ch):+.1f}% | {min(ch):+.1f}% to {max(ch):+.1f}% |"
            )
    n = len(after["rows"])
    lines += ["", f"The rule's plan within 5% of the best plan timed on {near} of {n} shapes; largest relative error of "
              f"any plan against the reference {worst:.1e}."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--out", type=Path, required=True, help="a folder for a run; with --compare, the summary's file"
    )
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"),
                    help="no device: the rule's time per shape in two runs' decode_units.json, summarised")  # fmt: skip
    ap.add_argument(
        "--store", type=Path, default=STORE, help="a calibration store whose attention_decode shapes to time"
    )
    device_args(ap, "toy shapes")
    args = ap.parse_args(argv)
    if args.compare:
        missing = [p for p in args.compare if not p.is_file()]
        if missing:
            print(
                f"error: --compare {missing[0]}: no such file; give two runs' decode_units.json",
                file=sys.stderr,
            )
            return 2
        before, after = (json.loads(p.read_text()) for p in args.compare)
        text = compare(before, after)
        args.out.write_text(f"# Decode units: {args.compare[1].name} against {args.compare[0].name}\n\n"
                            f"`python benchmarks/decode_units.py --compare {args.compare[0]} {args.compare[1]} --out "
                            f"{args.out}`\n\n{text}")  # fmt: skip
        print(text)
        return 0
    dev = pick_device(args, paired=True)
    if dev is None:
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    t0, rows = time.perf_counter(), []
    for i, shape in enumerate(shapes(args.tiny, args.store)):
        r = time_plans(shape, dev, args.tiny)
        rows.append(r)
        best = min(r["plans"], key=lambda k: r["plans"][k]["seconds"])
        log(f"{i + 1}: {r['num_kv_heads']} kv heads, batch {r['batch']}, mean {r['mean_context']:.0f}, max "
            f"{r['max_context']}: rule {r['plans']['rule']['seconds'] * 1e6:.1f} us, best {best} "
            f"{r['plans'][best]['seconds'] * 1e6:.1f} us")  # fmt: skip
        (args.out / "decode_units.json").write_text(json.dumps({"device": name, "rows": rows}, indent=1))
        (args.out / "decode_units.md").write_text(markdown(rows, name))
        torch.cuda.empty_cache() if dev == "cuda" else None
    log(f"wrote {args.out / 'decode_units.md'} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
