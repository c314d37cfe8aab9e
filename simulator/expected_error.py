"""How far a forecast may be off: the validation its GPU × engine pair has, shown beside the headline numbers.

The evidence, best first:
- the engine profile's own held-out checks (`validation` of engine_profiles/*.yaml: runs of that engine the fit
  never saw), on the GPU it was fitted on — "validated"; on another GPU the same figures are shown as
  "transferred" (they were not checked there);
- for our engine (the default), the GPU's fidelity table (benchmarks/results/fidelity_GPU.md: the simulator
  against the engine's real continuous-batching runs), else the GPU profile's held-out step-time error from
  its calibration — "validated";
- nothing — "unvalidated", said plainly: a datasheet GPU profile, or an engine profile without held-out checks.

Figures are the median |error| of the held-out rows, in percent, per headline quantity (TTFT, TPOT,
throughput, or step time where only steps were checked); where several checks name one quantity, the
largest median is shown (the band a reader should expect, not the best case).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from core.engine_profile import EngineProfile, transferred
from core.hardware import HardwareProfile

FIDELITY_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
QUANTITIES = ("ttft", "tpot", "throughput", "step_time")


def _quantity(metric: str) -> str | None:
    m = metric.lower()
    if "ttft" in m:
        return "ttft"
    if "tpot" in m or "itl" in m:
        return "tpot"
    if "throughput" in m or "tok/s" in m:
        return "throughput"
    if "step" in m:
        return "step_time"
    return None


def _widest(pairs: list[tuple[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for metric, pct in pairs:
        q = _quantity(metric)
        if q is not None:
            out[q] = max(out.get(q, 0.0), float(pct))
    return out


def fidelity_table(gpu: str) -> tuple[dict[str, float], str] | None:
    """The median |error| row of benchmarks/results/fidelity_GPU.md (our engine's end-to-end checks), if any."""
    path = FIDELITY_DIR / f"fidelity_{gpu}.md"
    if not path.is_file():
        return None
    lines = path.read_text().splitlines()
    header = next((ln for ln in lines if ln.startswith("| row |")), None)
    median = next((ln for ln in lines if ln.startswith("| **median")), None)
    if header is None or median is None:
        return None
    names = [c.strip() for c in header.strip("|").split("|")]
    cells = [
        c.strip() for c in median.replace("\\|", "/").strip("|").split("|")
    ]  # (the label's escaped bars)
    pairs = []
    for name, cell in zip(names, cells, strict=False):
        if name in ("TTFT p50", "TPOT p50", "out tok/s") and cell.endswith("%"):
            pairs.append((name, abs(float(cell.rstrip("%")))))
    return (_widest(pairs), f"benchmarks/results/{path.name}") if pairs else None


# a fidelity row's figures (benchmarks/fidelity_transformers.py's json) by headline quantity
ROW_QUANTITY = {"ttft_p50_s": "ttft", "ttft_p90_s": "ttft", "tpot_p50_s": "tpot", "tpot_p90_s": "tpot",
                "output_tokens_per_s": "throughput", "ttft_s": "ttft", "decode_s_per_token": "tpot"}  # fmt: skip


def engine_fidelity(engine: EngineProfile) -> tuple[dict[str, float], str] | None:
    """Median |error| per quantity of the held-out end-to-end rows this profile ran in
    benchmarks/results/fidelity_ENGINE_GPU.json (the simulator against the engine's measured runs), if any."""
    path = FIDELITY_DIR / f"fidelity_{engine.engine}_{engine.gpu}.json"
    if engine.gpu is None or not path.is_file():
        return None
    try:
        rows = [r for r in json.loads(path.read_text())["rows"] if r.get("profile") == engine.name]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    pairs = []
    for key, q in ROW_QUANTITY.items():
        errs = [
            abs(r["simulated"][key] / r["measured"][key] - 1.0) * 100.0
            for r in rows
            if not r.get("fitted") and r["measured"].get(key) and r["simulated"].get(key) is not None
        ]
        if errs:
            pairs.append((q, float(np.median(errs))))
    return (_widest(pairs), f"benchmarks/results/{path.name}") if pairs else None


def expected_error(engine: EngineProfile, engine_named: bool, gpu: HardwareProfile) -> dict:
    """summary["expected_error"]: status (validated, transferred, unvalidated), the basis in words, the
    percentages per headline quantity, and the line a terminal, page or report shows."""
    figures: dict[str, float] = {}
    if engine_named and engine.validation is not None:
        figures = _widest([(m.metric, m.median_abs_pct) for m in engine.validation.metrics])
        moved = transferred(engine, gpu.name)
        status = "transferred" if moved else "validated"
        basis = f"engine profile {engine.name}: held-out checks ({engine.validation.table})"
        e2e = engine_fidelity(engine)
        if e2e is not None:  # the end-to-end rows, where the engine's runs were replayed
            figures |= e2e[0]
            basis += f" and held-out end-to-end rows ({e2e[1]})"
        if moved:
            basis += f", made on {engine.gpu}, not on {gpu.name}"
    elif engine.host.gpu_profile_loop and gpu.is_calibrated:  # our engine on a GPU it was calibrated on
        fid = fidelity_table(gpu.name)
        if fid is not None:
            figures, table = fid
            status, basis = "validated", f"our engine's end-to-end fidelity rows on {gpu.name} ({table})"
        else:
            step = _step_holdout(gpu)
            status = "validated" if step is not None else "unvalidated"
            figures = {"step_time": step} if step is not None else {}
            basis = f"GPU profile {gpu.name}: held-out step times of its calibration" if step is not None else (
                f"no held-out checks on {gpu.name}")  # fmt: skip
    else:
        status = "unvalidated"
        basis = (
            f"engine profile {engine.name} has no held-out checks"
            if engine_named and not engine.host.gpu_profile_loop
            else f"GPU profile {gpu.name} is not calibrated (datasheet figures, efficiencies transferred)"
        )
    return (
        {"status": status, "basis": basis}
        | {f"{q}_pct": figures.get(q) for q in QUANTITIES}
        | {"line": band_line(status, basis, figures)}
    )


def _step_holdout(gpu: HardwareProfile) -> float | None:
    cal = gpu.calibration
    errs = getattr(cal, "fit_errors_pct", None) if cal is not None else None
    try:
        return float(errs["step"]["holdout"]["median_pct"])
    except (TypeError, KeyError, ValueError):
        return None


NAMES = {"ttft": "TTFT", "tpot": "TPOT", "throughput": "throughput", "step_time": "step time"}


def band_line(status: str, basis: str, figures: dict[str, float]) -> str:
    if status == "unvalidated" or not figures:
        return f"expected error: unvalidated ({basis})"
    parts = ", ".join(f"{NAMES[q]} ±{figures[q]:.3g}%" for q in QUANTITIES if q in figures)
    return f"expected error ({status}): {parts} (median |error| of held-out rows; {basis})"
