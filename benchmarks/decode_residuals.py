"""Where a fidelity row's graphed decode steps are priced off: the GPU span the engine measured against the cost model's
GPU price of the very same steps, by batch and by what the steps held.

    python benchmarks/decode_residuals.py [--gpu h200]      # no device: benchmarks/results/decode_residuals_h200.md
    python benchmarks/decode_residuals.py --gemm-shapes benchmarks/results/engine_kernels_h200/session24/gemm_shapes/gemm_shapes.json

Every stored fidelity row of the GPU (benchmarks/results/**/fidelity/<gpu>/<row>/engine_steps.csv) logged each step
the engine ran: its shape, and the span between CUDA events around it (`gpu_s`). For the decode-only steps replayed
from a CUDA graph this is the graph's GPU time, host excluded, so it is compared with the cost model's price of
that shape without the serving loop's host terms (CostModel(serving_host=False), the profile as committed). The
residual is span minus price; per row: its mean over all decode steps and per batch bin (% of the price), then
a least-squares line of the residual (µs a step; a step of two or more sequences, where the dense weights leave
the engine's GEMV for cuBLAS's GEMMs; a sequence; a thousand context tokens) and the attention share of the price.
A constant says a fixed cost per step, the second term a cost of the GEMM path (its kernels, or kernels only a
step of several rows launches), a slope on sequences per-sequence work, one on context tokens the KV walk.

--gemm-shapes RUN (a `benchmarks/gemm_shapes_gpu.py` run: the catalogue's dense weight shapes timed alone at 2-4,096
rows) adds a counterfactual: each measured shape's GEMMs priced times its own measured slowness relative to the
sweep model's shapes at the same rows (measured over curve, divided by the sweep model's median of that ratio:
the curve itself was refined on the sweep model's steps), log-interpolated in rows. It asks whether the rows'
decode residuals are the dense GEMMs' shapes; it changes no profile.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import _checkout  # noqa: F401  (the checkout's root on sys.path)
import numpy as np
from fidelity import predicted_steps, step_trace

from core.cost_model import CostModel
from core.graphs import SERVING_GRAPHS
from core.hardware import load_profile
from core.model_spec import load_model

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BINS = ((1, 2), (2, 4), (4, 8), (8, 16), (16, 32), (32, 64), (64, 1 << 20))
SWEEP = "llama-3.1-8b"


def stored_rows(results: Path, gpu: str) -> list[tuple[str, Path, dict]]:
    """(table, row folder, record) of every stored row of `gpu` with a step log, in path order; the table is the
    results folder the row's fidelity/ sits in."""
    out = []
    for path in sorted(results.rglob(f"fidelity/{gpu}/*/engine_steps.csv")):
        try:
            rec = json.loads((path.parent / "row.json").read_text())
        except (OSError, ValueError):
            continue
        table = path.parent.parent.parent.parent.relative_to(results).as_posix()
        table = "fidelity" if table == "." else table
        out.append((table, path.parent, rec))
    return out


def decode_steps(path: Path) -> dict[str, np.ndarray]:
    """The row's decode-only steps replayed from a graph (no prompt tokens, no speculative round), every column of
    the engine's step log (fidelity.step_trace)."""
    trace = step_trace(path)
    keep = (trace["graph"] == 1) & (trace["prefill_tokens"] == 0)
    if "spec_seqs" in trace:
        keep &= trace["spec_seqs"] == 0
    return {k: v[keep] for k, v in trace.items()}


class ShapedCostModel(CostModel):
    """The cost model with each measured dense weight shape's GEMMs times its factor at the step's rows
    (`shape_factors`); unmeasured shapes, experts and one-row GEMVs as the curve prices them."""

    def __init__(
        self, *args, factors: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]], **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        self.factors = factors  # (k, n) -> (rows, factor): `shape_factors`

    def _factor(self, k: int, n: int, rows: float) -> float:
        f = self.factors.get((k, n))
        if f is None or rows <= 1:
            return 1.0
        xs, ys = f
        return float(np.interp(np.log(min(max(rows, xs[0]), xs[-1])), np.log(xs), ys))

    def _weight_gemm(self, slots: float, k: int, n: int, copies: float = 1.0) -> float:
        t = super()._weight_gemm(slots, k, n, copies)
        if copies == 1.0 and not (slots == 1 and self.gemv_dense):
            t *= self._factor(k, n, slots)
        return t

    def gemm_time(self, tokens: int, logits_tokens: int, rows: int = 0) -> float:
        t = super().gemm_time(tokens, logits_tokens, rows)
        if (
            logits_tokens > 1
        ):  # the LM head, priced on the curve directly (gemm_time of no tokens): its factor on top
            k, n = self._lm
            t += (self._factor(k, n, logits_tokens) - 1.0) * super().gemm_time(0, logits_tokens)
        return t


def shape_factors(run: dict, profile) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    """(k, n) -> (rows, factor) from a gemm_shapes run: measured over the curve, over the sweep model's median of
    that ratio at the same rows (its TunableOp re-timings and one-row points left out)."""
    ratios: dict[str, dict[tuple[int, int], dict[int, float]]] = {}
    for model, points in run["models"].items():
        cm = CostModel(profile, load_model(model), serving_host=False)
        for p in points:
            if p["tuned"] or p["m"] == 1:
                continue
            pred = cm._weight_gemm(p["m"], p["k"], p["n"])
            ratios.setdefault(model, {}).setdefault((p["k"], p["n"]), {})[p["m"]] = p["seconds"] / pred
    base = ratios[SWEEP]
    rows = sorted(set.intersection(*(set(v) for v in base.values())))
    median = {m: float(np.median([v[m] for v in base.values()])) for m in rows}
    out = {}
    for shapes in ratios.values():
        for shape, by_rows in shapes.items():
            ms = [m for m in sorted(by_rows) if m in median]
            out[shape] = (np.array(ms, float), np.array([by_rows[m] / median[m] for m in ms]))
    return out


def priced(cm: CostModel, steps: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(GPU price, attention part) of every step, seconds: the price as fidelity.py writes it (predicted_steps)."""
    attn = [
        cm.attention_decode_time(int(n), float(c))
        for n, c in zip(steps["decode_seqs"], steps["decode_context_tokens"], strict=True)
    ]
    return predicted_steps(steps, cm), np.array(attn)


def residuals(steps: dict[str, np.ndarray], price: np.ndarray, attn: np.ndarray) -> dict:
    """The row's figures: mean residual % overall and per batch bin, the line's three terms, the attention share."""
    r = steps["gpu_s"] - price
    seqs = steps["decode_seqs"]
    out = {"steps": len(r), "mean_seqs": float(seqs.mean()), "gpu_ms": float(steps["gpu_s"].mean() * 1e3),
           "price_ms": float(price.mean() * 1e3), "all_pct": float(100 * r.mean() / price.mean()),
           "attention_share": float(attn.mean() / price.mean()), "bins": {}}  # fmt: skip
    for lo, hi in BINS:
        m = (seqs >= lo) & (seqs < hi)
        if m.sum() >= 20:
            out["bins"][lo] = float(100 * r[m].mean() / price[m].mean())
    # a step of two or more sequences runs its dense weights through cuBLAS's GEMMs, one of one sequence through
    # the engine's GEMV: a term of its own, so that the slopes are not that switch
    x = np.c_[np.ones(len(r)), seqs >= 2, seqs, steps["decode_context_tokens"] / 1000.0]
    coef, *_ = np.linalg.lstsq(x, r, rcond=None)
    if not (seqs >= 2).any() or (seqs >= 2).all():  # the term is the constant's then: no split
        coef, *_ = np.linalg.lstsq(x[:, [0, 2, 3]], r, rcond=None)
        coef = np.insert(coef, 1, 0.0)
    out["per_step_us"], out["gemm_us"], out["per_seq_us"], out["per_kctx_us"] = (float(c * 1e6) for c in coef)
    return out


def analyse(results: Path, gpu: str, shapes: Path | None) -> list[dict]:
    prof = load_profile(gpu)
    factors = shape_factors(json.loads(shapes.read_text()), prof) if shapes else None
    out = []
    for table, folder, rec in stored_rows(results, gpu):
        steps = decode_steps(folder / "engine_steps.csv")
        if len(steps["gpu_s"]) < 20:
            continue
        spec = load_model(rec.get("row_model") or rec["model"])
        args = (prof, spec, rec.get("weight_dtype", "bf16"), "bf16")
        cm = CostModel(*args, serving_host=False, graph_padding=SERVING_GRAPHS)
        row = {"table": table, "row": rec["row"], **residuals(steps, *priced(cm, steps))}
        if factors is not None:
            shaped = ShapedCostModel(*args, factors=factors, serving_host=False, graph_padding=SERVING_GRAPHS)
            row["shaped_pct"] = residuals(steps, *priced(shaped, steps))["all_pct"]
        out.append(row)
    return out


def report(rows: list[dict], gpu: str, command: str, shapes: Path | None) -> str:
    bins = " | ".join(f"{lo}-{hi - 1}" if hi < 1 << 20 else f"{lo}+" for lo, hi in BINS)
    head = (
        f"| table | row | steps | mean seqs | GPU / priced ms | residual | {bins} | per step µs | from 2 seqs µs | "
        "per seq µs | per 1k ctx µs | attention share |"
    )
    lines = [
        f"# Graphed decode steps: the GPU span against the cost model's GPU price ({gpu})",
        "",
        f"`{command}`. Residual = (engine's GPU span − price) / price, the price without the serving loop's host "
        "terms; per batch bin (sequences in the step) where the bin has 20 steps; then the residual's least-squares "
        "line over the steps (a step; a step of two or more sequences, whose dense weights go through cuBLAS's "
        "GEMMs where one sequence's go through the engine's GEMV; a sequence; a thousand context tokens) and the "
        "attention's share of the price.",
        "",
        head + (" with shape factors |" if shapes else ""),
        "|" + "---|" * (head.count("|") - 1 + (1 if shapes else 0)),
    ]
    for r in rows:
        cells = [f"{r['bins'][lo]:+.1f}%" if lo in r["bins"] else "" for lo, _ in BINS]
        line = (f"| {r['table']} | {r['row']} | {r['steps']} | {r['mean_seqs']:.1f} | {r['gpu_ms']:.2f} / "
                f"{r['price_ms']:.2f} | {r['all_pct']:+.1f}% | " + " | ".join(cells) +
                f" | {r['per_step_us']:+.0f} | {r['gemm_us']:+.0f} | {r['per_seq_us']:+.1f} | {r['per_kctx_us']:+.1f} | "
                f"{100 * r['attention_share']:.0f}% |")  # fmt: skip
        lines.append(line + (f" {r['shaped_pct']:+.1f}% |" if shapes else ""))
    med = float(np.median([abs(r["all_pct"]) for r in rows])) if rows else float("nan")
    lines += ["", f"Median |residual| over the rows: {med:.1f}%."]
    if shapes:
        shaped = float(np.median([abs(r["shaped_pct"]) for r in rows]))
        lines[-1] += f" With the shape factors: {shaped:.1f}% (factors from `{shapes.as_posix()}`)."
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", default="h200", help="the GPU's profile name, as the results' folders name it")
    ap.add_argument(
        "--gemm-shapes", type=Path, help="a gemm_shapes_gpu.py run: the shape-factor counterfactual"
    )
    ap.add_argument("--results", type=Path, default=RESULTS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.gemm_shapes is not None and not args.gemm_shapes.is_file():
        print(
            f"error: --gemm-shapes {args.gemm_shapes}: no such file; pass a gemm_shapes.json", file=sys.stderr
        )
        return 2
    command = "python benchmarks/decode_residuals.py" + (f" --gpu {args.gpu}" if args.gpu != "h200" else "")
    if args.gemm_shapes:
        command += f" --gemm-shapes {args.gemm_shapes}"
    text = report(analyse(args.results, args.gpu, args.gemm_shapes), args.gpu, command, args.gemm_shapes)
    suffix = "_shapes" if args.gemm_shapes else ""
    (args.results / f"decode_residuals_{args.gpu}{suffix}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
