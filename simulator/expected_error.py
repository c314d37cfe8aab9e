"""How far a forecast may be off: the validation its GPU × engine pair has, shown beside the headline numbers.

The evidence, best first:
- the engine profile's own held-out checks (`validation` of engine_profiles/*.yaml: runs of that engine the fit
  never saw), on the GPU it was fitted on — "validated"; on another GPU the same figures are shown as
  "transferred" (they were not checked there);
- for our engine (the default), the GPU's fidelity table (benchmarks/results/fidelity_GPU.md: the simulator
  against the engine's real continuous-batching runs), else the GPU profile's held-out step-time error from
  its calibration — "validated";
- nothing — "unvalidated", said plainly: a datasheet GPU profile, or an engine profile without held-out checks.

A forecast with `serving.async_scheduling` on takes our engine's async rows on its GPU where there are some
(benchmarks/results/fidelity_async/: the same rows run with the loop's async scheduling); where there are none, the
waiting loop's band, with the words saying so. The waiting loop's band pools the fidelity table's rows with the
async table's waiting rows: separate runs, often on other lent machines, so a row whose errors move with the
machine (a host-bound step, a backlog) shows that spread.

Figures are the median |error| of the held-out rows, in percent, per headline quantity (TTFT, TPOT,
throughput, or step time where only steps were checked); where several checks name one quantity, the
largest median is shown (the band a reader should expect, not the best case).

Load: an engine profile's checks ran at some load (`validation.loads`: each checked run's mean sequences a
step). A band checked at hundreds of sequences a step says little of a forecast at a few, where a per-step
host term or a kernel factor weighs differently (the published vLLM profiles, fitted and checked at full load,
forecast vLLM's own batch-of-8 latency runs 22-90% slow: benchmarks/results/published_low_load_checks.md). So
a forecast's band is taken from the checks whose load is within a factor LOAD_SPAN of its mean batch (said
so); with none that near, the band of every held-out row is shown with the words "outside the checked load"
and both loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from core.engine_profile import EngineProfile, LoadCheck, transferred
from core.hardware import HardwareProfile

FIDELITY_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
QUANTITIES = ("ttft", "tpot", "throughput", "step_time")
LOAD_SPAN = 2.0  # a check speaks for loads within this factor of its mean sequences a step


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
        if name in ROW_FIGURES.values() and cell.endswith("%"):
            pairs.append((name, abs(float(cell.rstrip("%")))))
    return (_widest(pairs), f"benchmarks/results/{path.name}") if pairs else None


# a fidelity row's figures (benchmarks/fidelity.py's row.json), named as the table's median row names them: the
# p90s too, as a forecast reports them (a row's tail can be off where its median is not: the H200 DeepSeek-V2-Lite
# row's TTFT p50 +2.2%, p90 +41.8%, its long prompts' eager steps host-bound)
ROW_FIGURES = {"ttft_p50": "TTFT p50", "ttft_p90": "TTFT p90", "tpot_p50": "TPOT p50", "tpot_p90": "TPOT p90",
               "output_tokens_per_s": "out tok/s"}  # fmt: skip


ASYNC_DIR = "fidelity_async"  # under FIDELITY_DIR: benchmarks/fidelity.py --row ...:async --out-dir there


def stored_rows(gpu: str, root: Path | None = None) -> list[tuple[str, dict]]:
    """(folder name, its row.json) of our engine's stored fidelity rows on `gpu` (ROOT/fidelity/GPU/ROW/row.json,
    ROOT FIDELITY_DIR by default): read once per forecast, for the band and for what the rows ran."""
    out = []
    for path in sorted(((root or FIDELITY_DIR) / "fidelity" / gpu).glob("*/row.json")):
        try:
            out.append((path.parent.name, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue
    return out


def _fidelity_rows(
    rows: list[tuple[str, dict]], table: str, overlap: bool | None = None
) -> list[tuple[str, LoadCheck]]:
    """Stored rows (`stored_rows`) as load checks, each with its catalogue model: the row's mean sequences a step in
    the engine's run and its errors (the row.json the table is made from); with `overlap` set, only the rows whose
    loop had async scheduling on (True) or off (False)."""
    out = []
    for folder, r in rows:
        try:
            if overlap is not None and bool(r.get("async_scheduling", False)) != overlap:
                continue
            batch = float(r["engine_run"]["mean_batch_seqs"])
            errs = {
                name: 100.0 * (r["simulator"][k] / r["engine"][k] - 1.0) for k, name in ROW_FIGURES.items()
            }
        except (ValueError, KeyError, TypeError, ZeroDivisionError):
            continue
        if batch > 0:
            check = LoadCheck(run=r.get("row", folder), batch=batch, errors_pct=errs, table=table)
            out.append((r.get("row_model", r.get("model")), check))
    return out


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


def expected_error(
    engine: EngineProfile,
    engine_named: bool,
    gpu: HardwareProfile,
    batch: float | None = None,
    model: str | None = None,
    overlap: bool = False,
    settings: dict[str, str] | None = None,
) -> dict:
    """summary["expected_error"]: status (validated, transferred, unvalidated), the basis in words, the
    percentages per headline quantity, and the line a terminal, page or report shows. `batch`: the forecast's
    mean sequences a step, set beside the loads the engine profile was checked at (`load` in the result).
    `model`: the forecast's catalogue model; where our engine's fidelity rows on this GPU include that model, the
    band is that model's rows (at this load where some are near it), not every model's. `overlap`: the forecast's
    serving.async_scheduling (our engine's async rows on this GPU, where it has some). `settings`: the forecast's
    settings beyond what every fidelity row ran (`forecast_settings`); those no row on this GPU ran are named
    (`unexercised` in the result), since the band says nothing of them."""
    figures: dict[str, float] = {}
    load = None
    unexercised: list[str] = []
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
        load = load_of(engine.validation.loads, batch)
        if load is not None and load.get("pct"):  # the band of the checks at this forecast's load
            figures, basis = load.pop("pct"), f"{load['words']}; profile {engine.name}" + (
                f", made on {engine.gpu}, not on {gpu.name}" if moved else "")  # fmt: skip
            missing = [NAMES[q] for q in ("ttft", "tpot", "throughput") if q not in figures]
            if missing:  # (a band of one quantity must not read as the others being fine)
                basis += f"; no {' or '.join(missing)} checked at this load"
    elif engine.host.gpu_profile_loop and gpu.is_calibrated:  # our engine on a GPU it was calibrated on
        main, waiting = stored_rows(gpu.name), stored_rows(gpu.name, FIDELITY_DIR / ASYNC_DIR)
        figures, status, basis, load = _ours(gpu, batch, model, overlap, main, waiting)
        unexercised = unexercised_settings(gpu.name, settings or {}, main + waiting) if figures else []
        if unexercised:
            basis += f"; not run by any row on {gpu.name}: {', '.join(unexercised)}"
    else:
        status = "unvalidated"
        basis = (
            f"engine profile {engine.name} has no held-out checks"
            if engine_named and not engine.host.gpu_profile_loop
            else f"GPU profile {gpu.name} is not calibrated (datasheet figures, efficiencies transferred)"
        )
    line = band_line(status, basis, figures)
    if load is not None and not load["near"]:
        line += f"; {load['words']}"
    return (
        {"status": status, "basis": basis}
        | {f"{q}_pct": figures.get(q) for q in QUANTITIES}
        | ({"load": load} if load is not None else {})
        | ({"unexercised": unexercised} if unexercised else {})
        | {"line": line}
    )


def forecast_settings(scenario) -> dict[str, str]:
    """A scenario's settings that our engine's fidelity rows may not have run (key: what a row records of it, value:
    the words a band names it by): its weights' and KV cache's types always, and every departure from one GPU,
    continuous chunked batching without speculation, prefix caching or disaggregation."""
    hw, sv = scenario.hardware, scenario.serving
    tp = hw.gpus_per_replica // hw.pipeline_parallel
    out = {f"weights:{sv.precision.weight_dtype}": f"{sv.precision.weight_dtype} weights",
           f"kv:{sv.precision.kv_dtype}": f"{sv.precision.kv_dtype} KV cache"}  # fmt: skip
    if tp > 1:
        out["tensor_parallel"] = f"{tp}-way tensor parallel" + (
            " with expert parallel" if hw.expert_parallel else ""
        )
    if hw.pipeline_parallel > 1:
        out["pipeline_parallel"] = f"{hw.pipeline_parallel} pipeline stages"
    if sv.speculative is not None:
        out["speculative"] = "speculative decoding"
    if sv.caching.prefix_caching:
        out["prefix_caching"] = "prefix caching"
    if sv.batching.mode == "static":
        out["static"] = "static batching"
    elif not sv.batching.chunked_prefill:
        out["unchunked"] = "unchunked prompts"
    if scenario.disaggregation is not None:
        out["disaggregation"] = "disaggregated prefill and decode"
    return out


def row_settings(row: dict) -> set[str]:
    """The `forecast_settings` keys one stored fidelity row (its row.json) ran: one GPU, continuous batching, a bf16
    KV cache, no speculation; its weights; prefix caching in a `prefix` trace row; unchunked where it says so."""
    out = {f"weights:{row.get('weight_dtype', 'bf16')}", "kv:bf16"}
    if row.get("trace") == "prefix":
        out.add("prefix_caching")
    if row.get("chunked_prefill") is False:
        out.add("unchunked")
    return out


# checks our engine ran apart from the fidelity tables, per GPU: their table and the settings its rows ran (the
# speculation rows and the int4 row of benchmarks/compare_spec_int4.py; not in any band, so named where they exist)
APART = {"fidelity_spec_int4_{gpu}.md": {"speculative", "weights:int4"}}


def unexercised_settings(gpu: str, settings: dict[str, str], rows: list[tuple[str, dict]]) -> list[str]:
    """The words of `settings` that none of our engine's fidelity `rows` on `gpu` ran (`stored_rows` of the waiting
    and async tables alike); where a table apart checked one (APART), it says where. None where there are no rows."""
    ran: set[str] = set()
    for _, r in rows:
        try:
            ran |= row_settings(r)
        except (TypeError, AttributeError):
            continue
    if not ran:  # no rows: the band is a calibration's step times, nothing to set beside
        return []
    apart = {key: name.format(gpu=gpu) for name, keys in APART.items() for key in keys
             if (FIDELITY_DIR / name.format(gpu=gpu)).is_file()}  # fmt: skip
    return [
        words + (f" (checked apart: benchmarks/results/{apart[key]})" if key in apart else "")
        for key, words in settings.items()
        if key not in ran
    ]


def _ours(
    gpu: HardwareProfile,
    batch: float | None,
    model: str | None,
    overlap: bool,
    main: list[tuple[str, dict]],
    more: list[tuple[str, dict]],
) -> tuple:
    """(figures, status, basis, load) for our engine on a GPU it was calibrated on: its fidelity rows (`stored_rows`
    of the fidelity table's folder, `main`, and of the async table's, `more`: the async rows with `overlap`, where the
    GPU has some), else its calibration's held-out step times."""
    load = None
    fid = fidelity_table(gpu.name)
    async_table = f"benchmarks/results/fidelity_async/fidelity_{gpu.name}.md"
    async_rows = _fidelity_rows(more, async_table, overlap=True) if overlap else []
    if async_rows:
        fid = (_band([c for _, c in async_rows]), async_table)
    if fid is not None:
        figures, table = fid
        status, basis = "validated", f"our engine's end-to-end fidelity rows on {gpu.name} ({table})"
        # the waiting loop's rows: the fidelity table's and the async table's waiting rows, each a run of its own
        # (the same row on two lent machines can differ by more than the rows differ: machine spread is in the band)
        waiting = [] if async_rows else _fidelity_rows(more, async_table, overlap=False)
        rows = async_rows or _fidelity_rows(main, table) + waiting
        own = [c for m, c in rows if model and m == model]
        load = load_of(own or [c for _, c in rows], batch)
        if load is not None and load.get("pct"):  # the rows at this forecast's load
            figures, basis = load.pop("pct"), f"{load['words']}; our engine on {gpu.name}"
        elif own:  # this model's rows, none near this load: their band, and the load said
            figures = _band(own)
            basis = f"our engine's fidelity rows of {model} on {gpu.name} ({table})"
        if own:
            basis += f"; {model}'s own rows"
        elif model:  # a model nobody ran in the engine on this GPU: the band is the other models' (said so)
            basis += f"; no row of {model}: the band is other models' rows"
        if waiting:
            basis += f"; with the waiting-loop rows of {async_table}"
        if async_rows:
            basis += "; rows with async scheduling on"
        elif overlap:
            basis += f"; async scheduling on, but no async rows on {gpu.name}: the band is the waiting loop's"
    else:
        step = _step_holdout(gpu)
        status = "validated" if step is not None else "unvalidated"
        figures = {"step_time": step} if step is not None else {}
        basis = f"GPU profile {gpu.name}: held-out step times of its calibration" if step is not None else (
            f"no held-out checks on {gpu.name}")  # fmt: skip
    return figures, status, basis, load


def load_of(checks: list[LoadCheck], batch: float | None) -> dict | None:
    """Where a forecast of `batch` mean sequences a step stands among the loads of the profile's checks: the
    checks within LOAD_SPAN of it (`near`) and, from them, the band (`pct`: per metric the median |error| over
    those checks, the widest per quantity); with none near, the words say it is outside the checked load. None
    without checks or a batch."""
    if not checks or batch is None or not batch > 0:
        return None
    lo, hi = min(c.batch for c in checks), max(c.batch for c in checks)
    near = [c for c in checks if abs(np.log(c.batch / batch)) <= np.log(LOAD_SPAN)]
    out = {"forecast_batch": round(float(batch), 3), "checked_batch": [lo, hi], "near": [c.run for c in near]}
    if not near:
        return out | {"words": f"outside the checked load: this forecast runs {batch:.3g} sequences a step, "
                      f"the checks ran {lo:.3g}-{hi:.3g}, so the band may not hold"}  # fmt: skip
    pct = _band(near)
    runs = (", ".join(f"{Path(c.run).name} at {c.batch:.3g}" for c in near) if len(near) <= 3 else
            f"{len(near)} runs at {min(c.batch for c in near):.3g}-{max(c.batch for c in near):.3g}")  # fmt: skip
    notes = "; ".join(c.note for c in near if c.note)
    words = (f"the checks near this forecast's load of {batch:.3g} sequences a step ({runs}; "
             f"{', '.join(sorted({c.table for c in near}))}{'; ' + notes if notes else ''})")  # fmt: skip
    return out | {"pct": pct, "words": words}


def _band(checks: list[LoadCheck]) -> dict[str, float]:
    """Per metric the median |error| over `checks`, the widest per quantity."""
    by_metric: dict[str, list[float]] = {}
    for c in checks:
        for k, v in c.errors_pct.items():
            by_metric.setdefault(k, []).append(abs(v))
    return _widest([(k, float(np.median(v))) for k, v in by_metric.items()])


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
