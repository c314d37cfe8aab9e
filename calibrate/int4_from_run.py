"""The int4 (W4A16) GEMM group fitted from a spec/int4 GPU run's kernel timings.

`benchmarks/spec_int4_gpu.py` times, for each of Llama-3.1-8B's four weight shapes and each rows bucket the
engine tunes (1 ... 8,192 tokens), every candidate int4 kernel inside a CUDA graph and records the one the
engine runs (`int4_launch_configs`, times in `int4_tuning`). Those are kernel measurements like calibration's
GEMM sweep, so this fits each kernel family the engine chose (tinygemm, tile, dequantize-then-16-bit-GEMM) with
calibration's own GEMM-group fit (calibrate.fit.fit_group), holding some rows buckets out: one roofline cannot
follow kernels that switch with the rows count. The batch-1 family's curve goes under
`calibration.gemm_by_dtype.int4` (what core.cost_model.gemm_rate uses instead of 16-bit efficiency plus a derived
dequantization term), the others under `calibration.int4_kernel_curves` (a GEMM costs the fastest curve, as the
engine's tuner picks per bucket), the provenance under `calibration.int4_source`. The rest of the profile file is left byte for byte.

    python -m calibrate.int4_from_run benchmarks/results/spec_int4/spec_int4_h200.json \
        --profile hardware_profiles/h200.yaml --date 2026-12-02 [--write]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from calibrate.fit import Errors, GroupFit, fit_group, in_step_factor, in_step_fit
from calibrate.group_from_run import drop_block
from calibrate.measurements import Record
from core.cost_model import CostModel
from core.errors import ConfigError
from core.hardware import read_profile
from core.model_spec import load_model

# Rows buckets held out of the fit (every weight shape): one small-batch, one mid, one prefill-sized bucket,
# each between fitted buckets, so the held-out error says how the curves interpolate.
HOLDOUT_ROWS = (8, 128, 1024)


def family(kernel: str) -> str:
    """'tile(16,128,4,3,2)' -> 'tile': a kernel family, its launch configurations aside."""
    return kernel.split("(")[0]


def records_of(run: dict) -> list[Record]:
    """One int4 GEMM record per (shape, rows bucket): the time of the kernel the engine chose there
    (`note`: the kernel)."""
    chosen, times = run.get("int4_launch_configs") or {}, run.get("int4_tuning") or {}
    if not chosen:
        raise ConfigError("the run has no int4_launch_configs: rerun benchmarks/spec_int4_gpu.py")
    out = []
    for key, kernel in chosen.items():
        m, n, k = (int(x) for x in key.split("/")[:3])
        t = (times.get(key) or {}).get(kernel)
        if t is None:
            raise ConfigError(f"int4_tuning[{key!r}] has no time for the chosen kernel {kernel!r}")
        params = {"m": m, "k": k, "n": n, "dtype": "int4"}
        out.append(Record(key, "gemm", params, float(t), holdout=m in HOLDOUT_ROWS, note=kernel))
    return sorted(out, key=lambda r: (r.params["k"], r.params["n"], r.params["m"]))


def family_records(run: dict) -> dict[str, list[Record]]:
    """Per kernel family the engine chose somewhere, its best time (over launch configurations) at every
    (shape, rows bucket) the tuner timed it: the kernel measurements a family's curve is fitted on."""
    used = {family(k) for k in (run.get("int4_launch_configs") or {}).values()}
    out: dict[str, list[Record]] = {}
    for key, cands in (run.get("int4_tuning") or {}).items():
        m, n, k = (int(x) for x in key.split("/")[:3])
        best: dict[str, float] = {}
        for name, t in cands.items():
            best[family(name)] = min(best.get(family(name), float("inf")), float(t))
        for f, t in best.items():
            if f in used:
                params = {"m": m, "k": k, "n": n, "dtype": "int4"}
                out.setdefault(f, []).append(
                    Record(key, "gemm", params, t, holdout=m in HOLDOUT_ROWS, note=f)
                )
    return out


def fit_run(run: dict, profile_path: Path) -> tuple[dict[str, GroupFit], list[Record], list[float], str]:
    """Calibration's GEMM-group fit (calibrate.fit.fit_group, on the profile's GPU) of each kernel family the
    engine chose for some bucket, on the family's non-held-out points. The cost model takes the fastest
    family's curve for a GEMM, as the engine's tuner does per bucket. Returns the fits, the chosen kernel's
    records, the cost model's time for each with the curves in the profile, and the batch-1 family."""
    profile = read_profile(profile_path)
    model = load_model(run.get("refs", {}).get("int4", "llama-3.1-8b"))
    cm = CostModel(profile, model, serving_host=False)
    recs = records_of(run)
    families = family_records(run)
    fits = {f: fit_group(cm, "gemm", rs, profile.efficiency.gemm) for f, rs in families.items()}
    missing = [f for f, g in fits.items() if g.eff is None]
    if missing or not fits:
        raise ConfigError(f"fewer than 3 fitted int4 points for kernel families {missing}")
    factor = in_step_factor(profile)  # timed alone, priced inside steps (calibrate.fit.in_step)
    if factor:
        fits = {f: in_step_fit(cm, "gemm", families[f], g, factor) for f, g in fits.items()}
    first = family(next(r.note for r in recs if r.params["m"] == 1))
    fitted = profile.model_copy(update={"calibration": with_curves(profile, fits, first)})
    cm4 = CostModel(fitted, model, weight_dtype="int4", serving_host=False)
    pred = [cm4._weight_gemm(r.params["m"], r.params["k"], r.params["n"]) for r in recs]
    return fits, recs, pred, first


def with_curves(profile, fits: dict[str, GroupFit], first: str):
    """The profile's calibration with gemm_by_dtype.int4 (the batch-1 family's curve) and int4_kernel_curves
    (the other families')."""
    cal = profile.calibration.model_dump() if profile.calibration is not None else {}
    cal["gemm_by_dtype"] = {**(cal.get("gemm_by_dtype") or {}), "int4": fits[first].eff.model_dump()}
    cal["int4_kernel_curves"] = {f: g.eff.model_dump() for f, g in fits.items() if f != first}
    return type(profile.calibration).model_validate(cal)


def errors_of(recs: list[Record], pred: list[float]) -> dict:
    """Errors of the cost model's int4 GEMM time, fitted and held-out points apart."""
    out = {}
    for name, sel in (("train", False), ("holdout", True)):
        pairs = [(p, r.seconds) for r, p in zip(recs, pred, strict=True) if r.holdout is sel]
        out[name] = Errors.of([p for p, _ in pairs], [t for _, t in pairs]).as_dict()
    return out


def write_profile(path: Path, curve: dict, others: dict, source: dict, replace: bool = False) -> None:
    """Insert the int4 curve at the end of `calibration.gemm_by_dtype` and the other families' curves and the
    source after it (two-space YAML as the profile writer emits), leaving every other line as it was; with
    `replace`, an int4 curve already there (a sweep's own int4 points, or an earlier run) and its families and
    source go first."""
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    try:
        start = lines.index("  gemm_by_dtype:\n")
    except ValueError:
        raise ConfigError(f"{path}: no calibration.gemm_by_dtype block to add int4 to") from None
    if "int4" in (yaml.safe_load(text).get("calibration", {}).get("gemm_by_dtype") or {}):
        if not replace:
            raise ConfigError(
                f"{path}: calibration.gemm_by_dtype already has int4; pass --replace to refit it"
            )
        lines = lines[:start] + drop_block(lines[start:], "    int4:\n", 4)
        lines = drop_block(drop_block(lines, "  int4_kernel_curves:\n", 2), "  int4_source:\n", 2)
    end = start + 1
    while end < len(lines) and lines[end].startswith("    "):
        end += 1
    block = yaml.safe_dump({"int4": curve}, sort_keys=False, width=1000)
    rest = yaml.safe_dump({"int4_kernel_curves": others, "int4_source": source}, sort_keys=False, width=1000)
    new = ["    " + ln + "\n" for ln in block.splitlines()] + ["  " + ln + "\n" for ln in rest.splitlines()]
    path.write_text("".join(lines[:end] + new + lines[end:]))


def report(recs: list[Record], pred: list[float]) -> str:
    names = {(4096, 6144): "qkv", (4096, 4096): "o", (4096, 28672): "gate_up", (14336, 4096): "down"}
    lines = [
        "| weight | rows | engine's kernel | measured (µs) | cost model (µs) | error | point |",
        "|---|---|---|---|---|---|---|",
    ]
    for r, p in zip(recs, pred, strict=True):
        q = r.params
        shape = names.get((q["k"], q["n"]), "{}x{}".format(q["k"], q["n"]))
        use = "held out" if r.holdout else "fitted"
        lines.append(
            f"| {shape} | {q['m']} | {r.note} | {r.seconds * 1e6:.1f} | {p * 1e6:.1f} | {p / r.seconds - 1:+.1%} | {use} |"
        )
    e = errors_of(recs, pred)
    t, h = e["train"], e["holdout"]
    lines.append(
        f"\nfitted points: median |error| {t['median_pct']}%, p90 {t['p90_pct']}% "
        f"(n={t['n']}); held out (rows {', '.join(map(str, HOLDOUT_ROWS))}): median {h['median_pct']}%, "
        f"p90 {h['p90_pct']}% (n={h['n']})"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m calibrate.int4_from_run", description=__doc__.split("\n")[0])
    ap.add_argument("run", help="spec_int4_<profile>.json written by benchmarks/spec_int4_gpu.py")
    ap.add_argument(
        "--profile", required=True, help="the profile YAML to add calibration.gemm_by_dtype.int4 to"
    )
    ap.add_argument("--date", required=True, help="date of the GPU run (YYYY-MM-DD)")
    ap.add_argument("--write", action="store_true", help="write the curve into --profile (else only report)")
    ap.add_argument("--replace", action="store_true", help="write over an int4 curve the profile already has")
    a = ap.parse_args(argv)
    try:
        run = json.loads(Path(a.run).read_text())
        fits, recs, pred, first = fit_run(run, Path(a.profile))
        print(report(recs, pred))
        for f, g in fits.items():
            e = g.errors_dict()
            print(f"{f} curve: {e['train']} fitted, {e['holdout']} held out (its own points)")
        if a.write:
            source = {
                "command": f"python -m calibrate.int4_from_run {a.run} --profile {a.profile} --date {a.date} --write"
                + (" --replace" if a.replace else ""),
                "run_command": run.get("command", ""),
                "date": a.date,
                "gpu": run.get("gpu", ""),
                "torch": run.get("torch", ""),
                "file": a.run,
                "points": f"per kernel family the engine chose ({', '.join(fits)}; int4 = {first}, the batch-1 "
                "kernel), its best time per (weight shape, rows bucket), rows "
                f"{', '.join(map(str, HOLDOUT_ROWS))} held out; a GEMM costs the fastest family's curve",
                "errors_pct_of_chosen_kernel": errors_of(recs, pred),
            }
            factor = in_step_factor(read_profile(Path(a.profile)))
            if factor:
                source["in_step_compute_factor"] = factor
                source["note"] = (
                    "each family's fitted compute asymptote times the profile's in-step factor "
                    "(calibrate.fit.in_step); errors are those of the curves written"
                )
            write_profile(
                Path(a.profile),
                fits[first].eff.model_dump(),
                {f: g.eff.model_dump() for f, g in fits.items() if f != first},
                source,
                a.replace,
            )
            print(f"wrote calibration.gemm_by_dtype.int4 into {a.profile}")
    except (ConfigError, OSError, KeyError, ValueError) as e:
        print(f"error: {e}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
