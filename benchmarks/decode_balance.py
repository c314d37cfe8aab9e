"""How the cost model prices calibration's whole decode steps with equal contexts against ragged ones of the same
mean: the cost model sees a decode batch's total context only.

    python benchmarks/decode_balance.py                                   # the committed H200 store
    python benchmarks/decode_balance.py --run calibration_runs/h200_session14_moe --profile h200 --min-batch 32
    python benchmarks/decode_balance.py --large benchmarks/results/engine_kernels_h200/large_decode_session15.json

Calibration times each decode step shape twice (calibrate.plan: every sequence at one context, and lognormal
contexts of the same mean). The engine runs the first as one work unit per sequence and the second split into
equal units (engine.attention.balanced_units), and the two take different times; the cost model prices both
from the batch's total context. This prices every stored `step_decode` point as calibration does (no serving host
terms, the step runner's graphs) and prints measured against priced, per batch size, for the equal and the ragged
point; writes the table to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import _checkout  # noqa: F401  (the checkout's root on sys.path)

from calibrate.accounting import step_shape
from core.cost_model import CostModel
from core.graphs import STEP_RUNNER_GRAPHS
from core.hardware import load_profile
from core.model_spec import load_model

ROOT = Path(__file__).resolve().parents[1]
EQUAL_MAX_OVER_MEAN = (
    1.01  # contexts within 1% of their mean: the "equal" points (calibrate.plan makes them exact)
)


def rows(run: Path, profile: str, model: str, min_batch: int) -> list[dict]:
    """One row per stored step_decode point of at least `min_batch` sequences, in the store's order."""
    cm = CostModel(load_profile(profile), load_model(model), "bf16", "bf16", serving_host=False,
                   graph_padding=STEP_RUNNER_GRAPHS)  # fmt: skip
    out = []
    for line in (run / "measurements.jsonl").read_text().splitlines():
        r = json.loads(line)
        ctx = r.get("params", {}).get("context_lens") if r.get("kind") == "step_decode" else None
        if not ctx or len(ctx) < min_batch:
            continue
        priced = cm.step_time(step_shape(cm, "step_decode", r["params"]))
        mean = sum(ctx) / len(ctx)
        out.append({"batch": len(ctx), "mean_context": mean, "equal": max(ctx) <= EQUAL_MAX_OVER_MEAN * mean,
                    "measured_ms": r["seconds"] * 1e3, "priced_ms": priced * 1e3,
                    "error_pct": (priced / r["seconds"] - 1) * 100, "held_out": bool(r.get("holdout"))})  # fmt: skip
    return out


def table(recs: list[dict], run: Path, profile: str) -> str:
    lines = [f"# Decode steps, equal against ragged contexts ({run.name}, profile {profile})", "",
             "`python benchmarks/decode_balance.py`; error = priced / measured − 1 (calibration's pricing: no "
             "serving host terms).", "",
             "| batch | mean context | contexts | measured (ms) | priced (ms) | error | held out |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in recs:
        lines.append(f"| {r['batch']} | {r['mean_context']:.0f} | {'equal' if r['equal'] else 'ragged'} | "
                     f"{r['measured_ms']:.2f} | {r['priced_ms']:.2f} | {r['error_pct']:+.1f}% | "
                     f"{'yes' if r['held_out'] else ''} |")  # fmt: skip
    lines.append("")
    for kind in (True, False):
        errs = [r["error_pct"] for r in recs if r["equal"] == kind]
        if errs:
            lines.append(f"- {'equal' if kind else 'ragged'} contexts: {len(errs)} points, median error "
                         f"{statistics.median(errs):+.1f}%, range {min(errs):+.1f}% to {max(errs):+.1f}%")  # fmt: skip
    return "\n".join(lines) + "\n"


def large_rows(path: Path, profile: str) -> list[dict]:
    """The serving loop's large-batch decode checks (fidelity.decode_check records, as moe_mla_gpu.py stores them)
    priced again with `profile` as decode_check prices them: measured step (the loop's median) against the cost
    model's step time, and the roofline ratio as measured."""
    from fidelity import decode_price

    hw, out = load_profile(profile), []
    for r in json.loads(path.read_text()):
        priced = (
            decode_price(hw, load_model(r["model"]), r["batch"], int(r["mean_context"] * r["batch"])) * 1e3
        )
        out.append({"model": r["model"], "batch": r["batch"], "mean_context": r["mean_context"],
                    "measured_ms": r["step_ms"], "priced_ms": priced, "error_pct": (priced / r["step_ms"] - 1) * 100,
                    "roofline_ratio": r["roofline_ratio"]})  # fmt: skip
    return out


def large_table(recs: list[dict], path: Path, profile: str) -> str:
    lines = ["", f"## The serving loop's large-batch decode checks ({path.name}, profile {profile})", "",
             "Every sequence at one context (fidelity.decode_check); error = priced / measured − 1.", "",
             "| model | batch | mean context | measured (ms) | priced (ms) | error | × roofline |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in recs:
        lines.append(f"| {r['model']} | {r['batch']} | {r['mean_context']:.0f} | {r['measured_ms']:.2f} | "
                     f"{r['priced_ms']:.2f} | {r['error_pct']:+.1f}% | {r['roofline_ratio']:.2f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=ROOT / "calibration_runs" / "h200_session15_units",
                    help="a calibration work directory (its measurements.jsonl)")  # fmt: skip
    ap.add_argument("--profile", default="h200")
    ap.add_argument(
        "--model", default="llama-3.1-8b", help="the model the run swept (calibration's sweep model)"
    )
    ap.add_argument("--min-batch", type=int, default=32, help="only steps of at least this many sequences")
    ap.add_argument(
        "--large", type=Path, help="also price the serving loop's large-batch decode checks in this JSON"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "decode_balance_h200.md")
    args = ap.parse_args(argv)
    if not (args.run / "measurements.jsonl").is_file():
        print(f"--run {args.run}: no measurements.jsonl there; give a calibration work directory")
        return 2
    recs = rows(args.run, args.profile, args.model, args.min_batch)
    if not recs:
        print(f"--run {args.run}: no step_decode points of {args.min_batch}+ sequences; lower --min-batch")
        return 2
    text = table(recs, args.run, args.profile)
    if args.large is not None:
        if not args.large.is_file():
            print(
                f"--large {args.large}: no such file; give moe_mla_gpu.py's large-batch decode records (JSON)"
            )
            return 2
        text += large_table(large_rows(args.large, args.profile), args.large, args.profile)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
