"""The GPU transfer rule checked where both ends are measured: the H100's calibration carried to the H200.

    python benchmarks/gpu_transfer.py                    # the table, written to benchmarks/results/gpu_transfer.md
    python benchmarks/gpu_transfer.py --write-profiles   # rewrite the transferred profiles' efficiencies by the rule

Every whole model step measured on the H200 (calibration_runs/h200: the sweep's steps and the held-out
validation steps, Llama-3.1-8B bf16, GPU time only) is predicted three ways: with the H200's own calibrated
profile, with the H100's calibration carried over by core/gpu_transfer.py's rule (sustained ceilings,
ramps in time), and with the H100's efficiencies copied unchanged (what the transferred profiles did before).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import _checkout  # noqa: F401  (first: the checkout's root on sys.path)
import numpy as np
import yaml

from calibrate.accounting import step_shape
from core.cost_model import CostModel
from core.gpu_transfer import transferred_profile
from core.hardware import PROFILE_DIR, load_profile
from core.model_spec import load_model

ROOT = Path(__file__).resolve().parents[1]
SOURCE = "h100-sxm"
# the profiles whose efficiencies are the H100's carried by the rule (not measured, not fitted)
TRANSFERRED = ("t4", "l4", "a10g", "a100-40gb", "a100-80gb-sxm", "h100-pcie", "b200", "mi300x")


def measured_steps(run: Path) -> list[dict]:
    """Every ok whole-step record of a calibration run (sweep and validation)."""
    out = []
    for name in ("measurements.jsonl", "validate.jsonl"):
        p = run / name
        if not p.exists():
            continue
        for line in p.read_text().splitlines():
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if d.get("kind", "").startswith("step_") and d.get("status") == "ok":
                out.append(d | {"set": "validation" if name == "validate.jsonl" else "sweep"})
    return out


def predict(profile, model, steps: list[dict]) -> np.ndarray:
    cm = CostModel(profile, model, serving_host=False)
    return np.array([cm.step_time(step_shape(cm, s["kind"], s["params"])) for s in steps])


def errors(pred: np.ndarray, meas: np.ndarray) -> tuple[float, float, float]:
    e = (pred / meas - 1.0) * 100.0
    return float(np.median(np.abs(e))), float(np.percentile(np.abs(e), 90)), float(np.max(np.abs(e)))


def check(out: Path) -> str:
    model = load_model("llama-3.1-8b")
    h100, h200 = load_profile(SOURCE), load_profile("h200")
    steps = measured_steps(ROOT / "calibration_runs" / "h200")
    meas = np.array([s["seconds"] for s in steps])
    by_rule = transferred_profile(h100, h200)
    copied = h200.model_copy(update={"efficiency": h100.efficiency})
    rows = {
        "H200's own calibration": predict(h200, model, steps),
        "H100's, transferred by the rule": predict(by_rule, model, steps),
        "H100's, copied unchanged (before)": predict(copied, model, steps),
    }
    kinds = sorted({s["kind"] for s in steps})
    lines = [
        "# H100 → H200 transfer check",
        "",
        "`python benchmarks/gpu_transfer.py`: every whole step measured on the H200 "
        f"(calibration_runs/h200, Llama-3.1-8B bf16, {len(steps)} steps: "
        f"{sum(s['set'] == 'sweep' for s in steps)} from the sweep, {sum(s['set'] == 'validation' for s in steps)} "
        "held-out validation steps), GPU time only, predicted with each set of efficiencies. "
        "|error| = |predicted / measured − 1|. Bar: the rule within 10% (median).",
        "",
        "| efficiencies | median \\|error\\| | p90 | max | "
        + " | ".join(f"{k[5:]} median" for k in kinds)
        + " |",
        "|---|---|---|---|" + "---|" * len(kinds),
    ]
    for name, pred in rows.items():
        med, p90, mx = errors(pred, meas)
        per = []
        for k in kinds:
            sel = np.array([s["kind"] == k for s in steps])
            per.append(f"{errors(pred[sel], meas[sel])[0]:.1f}%")
        lines.append(f"| {name} | {med:.1f}% | {p90:.1f}% | {mx:.1f}% | " + " | ".join(per) + " |")
    rule, own = rows["H100's, transferred by the rule"], rows["H200's own calibration"]
    med, p90, _ = errors(rule, own)
    lines += [
        "",
        f"The rule against the H200 profile's own predictions of the same steps: median {med:.1f}%, p90 {p90:.1f}%.",
        "",
        "What the rule carried (core/gpu_transfer.py): compute asymptotes × (H200 sustained bf16 GEMM / peak) / "
        f"(H100's) = {h200.sustained_flops('bf16') / h200.peak_flops('bf16'):.3f} / "
        f"{h100.sustained_flops('bf16') / h100.peak_flops('bf16'):.3f}; memory asymptotes × (copy / datasheet) = "
        f"{h200.sustained_bandwidth / h200.memory_bandwidth:.3f} / {h100.sustained_bandwidth / h100.memory_bandwidth:.3f} "
        "(both GPUs' calibration ceilings); ramps in seconds × SM clock ratio "
        f"{h100.sm_clock_mhz:.0f}/{h200.sm_clock_mhz:.0f} MHz; launch and per-step overheads unchanged.",
    ]
    text = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


# ---------------------------------------------------------------- the shipped transferred profiles
HEADER = (
    "# Default efficiencies: the H100 SXM's calibration (hardware_profiles/h100-sxm.yaml) carried to this GPU by\n"
    "# core/gpu_transfer.py's rule (asymptotes scaled to this GPU's sustained ceilings in `sustained`, ramps in\n"
    "# SM-clock time, latencies in seconds), not measured on it; written by python benchmarks/gpu_transfer.py\n"
    "# --write-profiles, until `python -m calibrate` on this GPU replaces them with fitted values.\n"
)
EFFICIENCY_SOURCE = (
    "carried from h100-sxm.yaml (fitted by python -m calibrate on an H100 SXM) by core/gpu_transfer.py's rule, "
    "with this GPU's sustained ceilings (sources.sustained) and SM clock; not measured on this GPU"
)


def _block(key: str, value) -> str:
    return yaml.safe_dump({key: value}, sort_keys=False, width=120)


def rule_check_pct() -> float:
    """Median |error| of the H100's calibration carried to the H200 by the rule, on the H200's measured steps."""
    steps = measured_steps(ROOT / "calibration_runs" / "h200")
    by_rule = transferred_profile(load_profile(SOURCE), load_profile("h200"))
    meas = np.array([s["seconds"] for s in steps])
    return errors(predict(by_rule, load_model("llama-3.1-8b"), steps), meas)[0]


def write_profiles(names=TRANSFERRED) -> list[Path]:
    """Rewrite each transferred profile's `efficiency` and `calibration` by the rule (with the validation figures
    `python -m simulator gpus` shows); the rest of the file kept."""
    from gpu_published import check_errors

    source = load_profile(SOURCE)
    rule = round(rule_check_pct(), 1)
    written = []
    for name in names:
        path = PROFILE_DIR / f"{name}.yaml"
        text = path.read_text()
        prof = transferred_profile(source, load_profile(str(path)))
        eff = prof.efficiency.model_dump(mode="json", exclude_none=True)
        cal = prof.calibration.model_dump(mode="json", exclude_none=True)
        cal["notes"] = (
            "Efficiencies are the H100 SXM's calibration carried by core/gpu_transfer.py, not measured on this GPU. "
            "Checked where both ends are measured: carried to the H200 the rule predicts its measured steps within "
            "the figure in benchmarks/results/gpu_transfer.md. The serving loop's host times are the H100 host's."
        )
        published = check_errors(name)
        cal["validation"] = {
            "rule_h100_to_h200_median_pct": rule,
            "published_checks": len(published),
            **(
                {"published_median_abs_pct": round(float(np.median(np.abs(published))), 1)}
                if published
                else {}
            ),
            "tables": "benchmarks/results/gpu_transfer.md, benchmarks/results/gpu_published.md",
        }
        lines = text.splitlines(keepends=True)
        head = [ln for ln in lines if ln.startswith("#")]
        keep = [
            ln
            for ln in head
            if not re.match(r"# (Default efficiencies|fitted by|until|fraction of peak|calibrate)", ln)
        ]
        keep = [  # HEADER's own lines go (it is added once below), so rewriting never repeats them
            ln for ln in keep if ln not in HEADER.splitlines(keepends=True) and "H100 measurements" not in ln
        ]
        body = "".join(ln for ln in lines if not ln.startswith("#"))
        eff_text, cal_text = _block("efficiency", eff), _block("calibration", cal)
        body = re.sub(r"(?ms)^efficiency:\n.*?(?=^sources:)", lambda _, t=eff_text: t, body)
        body = re.sub(r"(?ms)^calibration:\n.*\Z", lambda _, t=cal_text: t, body)
        body = re.sub(r"(?m)^  efficiency: .*\n", lambda _: f"  efficiency: {EFFICIENCY_SOURCE}\n", body)
        path.write_text("".join(keep) + HEADER + body)
        written.append(path)
    return written


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_transfer.md")
    ap.add_argument(
        "--write-profiles", action="store_true", help="rewrite the transferred profiles by the rule"
    )
    args = ap.parse_args()
    if args.write_profiles:
        for p in write_profiles():
            print(f"wrote {p}")
        return 0
    print(check(args.out), end="")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
