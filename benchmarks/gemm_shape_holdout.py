"""Would sweeping other models' GEMM shapes make the one bf16 GEMM curve hold better for a model it never saw?

    python benchmarks/gemm_shape_holdout.py      # no device: writes benchmarks/results/gemm_shape_holdout.md

Calibration fits one bf16 GEMM curve on the sweep model's weight shapes (Llama-3.1-8B). Issue 13 asks for a second
sweep model where one model's shapes do not cover a catalogue entry; attention has one (calibrate.plan.
ATTENTION_VARIANTS). Here it is tested for GEMMs on measured points, not assumed: the catalogue's dense shapes
timed by calibration's own timer (benchmarks/gemm_shapes_gpu.py, the stored run RUN), 2-4,096 rows (one row goes
through the engine's GEMV and its own curve). Each model is left out in turn and the curve is fitted with
calibration's group fit (calibrate.fit.fit_group, its blended form) on (a) one other model's shapes (Llama's, or
Qwen's when Llama is the one left out) and (b) all four other models' shapes. The left-out model's points are
the check: its median and p90 |error| under each fit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import _checkout  # noqa: F401  (the checkout's root on sys.path)

from calibrate.fit import fit_group
from calibrate.measurements import Record
from calibrate.plan import point_key
from core.cost_model import CostModel
from core.hardware import load_profile
from core.model_spec import load_model

ROOT = Path(__file__).resolve().parent.parent
RUN = (
    ROOT / "benchmarks" / "results" / "engine_kernels_h200" / "session24" / "gemm_shapes" / "gemm_shapes.json"
)
OUT = ROOT / "benchmarks" / "results" / "gemm_shape_holdout.md"
SWEEP, SECOND = "llama-3.1-8b", "qwen2.5-7b"


def records(run: dict, models: list[str], holdout: bool) -> list[Record]:
    """The models' bf16 GEMM points of two or more rows (TunableOp's re-timings left out) as calibration records."""
    out = []
    for model in models:
        for r in run["models"][model]:
            if r["tuned"] or r["m"] == 1:
                continue
            p = {"m": r["m"], "k": r["k"], "n": r["n"], "dtype": "bf16"}
            out.append(Record(point_key("gemm", p), "gemm", p, r["seconds"], holdout=holdout))
    return out


def holdout_errors(run: dict, profile: str = "h200") -> list[dict]:
    """Per left-out model: its points' median / p90 |error| (%) under the curve fitted on one model's shapes and on
    the four others'."""
    prof = load_profile(profile)
    cm = CostModel(prof, load_model(SWEEP), serving_host=False)
    models = list(run["models"])
    out = []
    for left in models:
        one = SECOND if left == SWEEP else SWEEP
        check = records(run, [left], True)
        a = fit_group(cm, "gemm", records(run, [one], False) + check, prof.efficiency.gemm)
        b = fit_group(
            cm, "gemm", records(run, [m for m in models if m != left], False) + check, prof.efficiency.gemm
        )
        out.append({"model": left, "points": len(check), "one": one,
                    "one_median": a.holdout.median_pct, "one_p90": a.holdout.p90_pct,
                    "others_median": b.holdout.median_pct, "others_p90": b.holdout.p90_pct})  # fmt: skip
    return out


def report(rows: list[dict], run: dict) -> str:
    lines = ["# The bf16 GEMM curve on a model it never saw: one sweep model's shapes or four", "",
             f"`python benchmarks/gemm_shape_holdout.py`; points: `{RUN.relative_to(ROOT)}` ({run.get('device')}, "
             f"`{run.get('command')}`). Each model left out in turn; the curve fitted by calibrate.fit.fit_group on "
             "one other model's shapes or on the four others'; |error| of the left-out model's points.", "",
             "| left out | points | fitted on | median / p90 | fitted on the four others: median / p90 |",
             "|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['model']} | {r['points']} | {r['one']} | {r['one_median']:.1f} / {r['one_p90']:.1f}% | "
                     f"{r['others_median']:.1f} / {r['others_p90']:.1f}% |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    if not RUN.exists():
        print(
            f"error: {RUN}: no stored run; run benchmarks/gemm_shapes_gpu.py on a GPU first", file=sys.stderr
        )
        return 2
    run = json.loads(RUN.read_text())
    text = report(holdout_errors(run), run)
    OUT.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
