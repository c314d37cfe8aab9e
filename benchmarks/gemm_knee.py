"""Dense GEMMs near the ridge: the bf16 GEMM curve fitted in the max form and in the blended form, per run.

    python benchmarks/gemm_knee.py calibration_runs/h200 calibration_runs/h200_session16_serving \
        calibration_runs/h100-sxm            # no device; writes benchmarks/results/gemm_knee.md

Each run's bf16 GEMM microbenchmarks (the sweep model's weight shapes, 1-8,192 rows) are fitted twice with
calibration's group fit (`calibrate.fit.fit_group`, the run's own held-out points left out): with the roofline's
max(compute, memory) and with their q-norm (`OpEfficiency.blend`, q fitted). Around the ridge, 128-256 rows on an
H200, cuBLAS switches tile shapes and a GEMM that streams its weights while it computes takes longer than either
term alone (the "knee"); one max-form curve prices it low there and high past it. The table gives both fits'
errors on the fitted and the held-out points, and the median signed error by rows band.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import _checkout  # noqa: F401  (the checkout's root on sys.path)
import numpy as np

from calibrate.fit import fit_group
from calibrate.group_from_run import group_points
from calibrate.measurements import Store
from core.errors import ConfigError
from core.hardware import load_profile

RESULTS = Path(__file__).resolve().parent / "results"
BANDS = ((1, 127), (128, 256), (257, 1024), (1025, 1 << 30))


def fits(run: Path) -> list[dict]:
    """The run's bf16 GEMM points fitted in both forms: per form its curve, errors and signed error by band."""
    path = run / "measurements.jsonl"
    if not path.exists():
        raise ConfigError(f"{path}: no measurements; pass a `python -m calibrate` work dir")
    store = Store.open(path, warn=lambda m: None)
    base = (store.meta or {}).get("base") or "h100-sxm"
    prof = load_profile(base)
    cm, recs = group_points(store, prof, "gemm")
    recs = [r for r in recs if r.params.get("dtype", "bf16") == "bf16"]
    out = []
    for form, blended in (("max", False), ("blended", True)):
        g = fit_group(cm, "gemm", recs, prof.efficiency.gemm, blend=blended)
        m = np.array([r.params["m"] for r in recs])
        err = np.array([row["predicted_s"] / row["measured_s"] - 1.0 for row in g.rows]) * 100
        bands = {}
        for lo, hi in BANDS:
            sel = (m >= lo) & (m <= hi)
            bands[(lo, hi)] = float(np.median(err[sel])) if sel.any() else float("nan")
        out.append({"run": str(run), "form": form, "blend": g.eff.blend, "train": g.train, "holdout": g.holdout,
                    "bands": bands, "n": len(recs)})  # fmt: skip
    return out


def table(rows: list[dict], command: str) -> str:
    band_names = [f"{lo}-{hi} rows" if hi < 1 << 30 else f"{lo}+ rows" for lo, hi in BANDS]
    lines = [
        "# bf16 GEMM curve: max form against blended form",
        "",
        f"`{command}`; calibration's group fit on each run's bf16 GEMM points (the run's held-out points left out "
        "of the fit); |error| medians and p90s, then the median signed error (predicted / measured − 1) by rows.",
        "",
        "| run | form | q | fitted median / p90 | held-out median / p90 | " + " | ".join(band_names) + " |",
        "|---|---|---|---|---|" + "---|" * len(BANDS),
    ]
    for r in rows:
        q = f"{r['blend']:.2f}" if r["blend"] else "—"
        t, h = r["train"], r["holdout"]
        bands = " | ".join(f"{v:+.1f}%" for v in r["bands"].values())
        lines.append(f"| {r['run']} | {r['form']} | {q} | {t.median_pct:.1f}% / {t.p90_pct:.1f}% (n={t.n}) | "
                     f"{h.median_pct:.1f}% / {h.p90_pct:.1f}% (n={h.n}) | {bands} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/gemm_knee.py", description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="calibration work dirs (their measurements.jsonl)")
    ap.add_argument("--out", default=str(RESULTS / "gemm_knee.md"), help="the table (Markdown)")
    a = ap.parse_args(argv)
    command = "python benchmarks/gemm_knee.py " + " ".join(a.runs)
    try:
        rows = [r for run in a.runs for r in fits(Path(run))]
        text = table(rows, command)
        Path(a.out).write_text(text)
        print(text)
    except (ConfigError, OSError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
