"""One MoE layer's routed experts at many token counts, against the cost model's fitted MoE curves.

    python benchmarks/moe_knee.py --out $OUT/knee            # on the GPU (about a minute on an H200)
    python benchmarks/moe_knee.py --out /tmp/knee --cpu       # the same code on a toy shape (CPU)

Calibration times the layer (calibrate.bench.Bench._moe: routing, sort, both grouped GEMMs, combine, from a CUDA
graph, on the faster expert backend) at power-of-two token counts. Serving steps meet every count in between, and
the H200 fidelity rows' steps of 100-2,000 tokens run 10-30% longer than priced where the layer turns from reading
weights to computing. This times the same layer at Mixtral-8x7B's and DeepSeek-V2-Lite's expert shapes at
`--tokens` and prints each beside the profile's curve (core.cost_model.moe_layer_time). Writes moe_knee.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import _checkout  # noqa: F401  (the checkout's root on sys.path)
from _gpu_cli import log

from calibrate.plan import MOE_SHAPES, MOE_SHAPES_CPU, Limits, Point
from core.cost_model import CostModel, moe_layer_time
from core.hardware import load_profile
from core.model_spec import load_model, spec_from_config

TOKENS = [48, 64, 96, 128, 160, 192, 256, 320, 384, 448, 512, 640, 768, 1024, 1536, 2048]
SHAPE_MODELS = {(8, 2, 4096, 14336): "mixtral-8x7b", (64, 6, 2048, 1408): "deepseek-v2-lite"}
TINY_MOE = {
    "model_type": "mixtral", "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
    "num_key_value_heads": 2, "intermediate_size": 96, "num_local_experts": 4, "num_experts_per_tok": 2,
    "vocab_size": 128, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--cpu", action="store_true", help="a toy shape on the CPU (tests the pipeline)")
    ap.add_argument("--profile", default="h200", help="the GPU profile whose MoE curves are compared")
    ap.add_argument("--tokens", default=",".join(map(str, TOKENS)), help="comma-separated token counts")
    ap.add_argument(
        "--reprice",
        type=Path,
        help="no device: a stored moe_knee.json priced again with --profile, into --out",
    )
    args = ap.parse_args(argv)
    if args.reprice:
        return reprice(args.reprice, args.profile, args.out)
    from calibrate.bench import Bench

    args.out.mkdir(parents=True, exist_ok=True)
    tokens = [int(t) for t in args.tokens.split(",") if t]
    dev = "cpu" if args.cpu else "cuda"
    shapes = MOE_SHAPES_CPU if args.cpu else MOE_SHAPES
    profile = load_profile(args.profile)
    rows = []
    for shape in shapes:
        e, k, h, i = shape
        spec = spec_from_config(TINY_MOE, "tiny-moe") if args.cpu else load_model(SHAPE_MODELS[shape])
        bench = Bench(spec, dev, Limits())
        cm = CostModel(profile, spec, "bf16", "bf16")
        for t in tokens:
            secs = bench.measure(
                Point("moe", {"tokens": t, "experts": e, "top_k": k, "hidden": h, "inter": i})
            )
            slots = t * k
            priced = moe_layer_time(cm, slots, cm.experts_touched(t), e)
            rows.append({"experts": e, "top_k": k, "hidden": h, "inter": i, "tokens": t, "rows_per_expert": slots / e,
                         "measured_us": secs * 1e6, "priced_us": priced * 1e6,
                         "error_pct": (priced / secs - 1) * 100})  # fmt: skip
            r = rows[-1]
            log(f"E={e} top-{k} {h}x{i} tokens {t:5d} ({r['rows_per_expert']:6.1f} rows/expert): "
                f"{r['measured_us']:8.1f} µs, priced {r['priced_us']:8.1f} ({r['error_pct']:+.1f}%)")  # fmt: skip
    rec = {"device": dev, "profile": args.profile, "rows": rows}
    (args.out / "moe_knee.json").write_text(json.dumps(rec, indent=1))
    log(f"wrote {args.out / 'moe_knee.json'}")
    return 0


def reprice(path: Path, profile_name: str, out: Path) -> int:
    """The stored measurements of `path` beside `profile_name`'s MoE curves (after a refit), written to
    out/moe_knee.json; prints the median and p90 |error| per shape."""
    rec = json.loads(path.read_text())
    profile = load_profile(profile_name)
    if profile.efficiency.moe is None:
        print(
            f"--profile {profile_name}: no fitted MoE curves (calibration's `moe` group); pick a profile that has them"
        )
        return 2
    by_shape: dict[tuple, list[dict]] = {}
    for r in rec["rows"]:
        by_shape.setdefault((r["experts"], r["top_k"], r["hidden"], r["inter"]), []).append(r)
    for shape, rows in by_shape.items():
        cm = CostModel(profile, load_model(SHAPE_MODELS[shape]), "bf16", "bf16")
        for r in rows:
            priced = moe_layer_time(
                cm, r["tokens"] * r["top_k"], cm.experts_touched(r["tokens"]), r["experts"]
            )
            r["priced_us"] = priced * 1e6
            r["error_pct"] = (priced * 1e6 / r["measured_us"] - 1) * 100
        errs = [abs(r["error_pct"]) for r in rows]
        log(f"E={shape[0]} top-{shape[1]}: {len(errs)} points, median |error| {statistics.median(errs):.1f}%, "
            f"p90 {statistics.quantiles(errs, n=10)[-1]:.1f}%")  # fmt: skip
    rec["profile"] = profile_name
    out.mkdir(parents=True, exist_ok=True)
    (out / "moe_knee.json").write_text(json.dumps(rec, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
