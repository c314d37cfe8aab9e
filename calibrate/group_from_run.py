"""One fitted group from another calibration run, added to a profile without refitting the rest.

A calibrated profile is one sweep, fitted together. When a group is added to the sweep later (the `moe`
group: one MoE layer's routed experts, engine.moe) or the engine's kernels for one group change, re-running
the whole sweep refits every group, and the profile's other figures (and every forecast and fidelity table
built on them) move with scipy's and the GPU's run-to-run noise. This fits only GROUP's points of a newer run
(its `measurements.jsonl`, as `python -m calibrate` wrote it, the same `calibrate.fit.fit_group` and the
points' own hold-out flags) and writes `efficiency.<group>`, `calibration.fit_errors_pct.<group>` and
`calibration.<group>_source` (command, date, run, GPU, torch) into the profile (`moe` and `moe_large` are the
`moe` points below and from the profile's `moe_large_min_rows` routed rows an expert, as `fit_all` files them); every other line is left byte
for byte. The run must come from the profile's GPU (its meta line says which).

`--group serving` takes the serving loop's host costs (calibrate.serving.QUANTITIES: per step, per sequence,
per prompt step, eager launch per layer), which calibration measures rather than fits, as the run measured
them: what changes when the serving loop's host code changes (its per-sequence work vectorised, say).

    python -m calibrate.group_from_run calibration_runs/h200_session8 --group moe \
        --profile hardware_profiles/h200.yaml --date 2026-12-02 [--write] [--replace]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from calibrate.accounting import GROUPS, KIND_OF, group_of, is_moe_large
from calibrate.fit import (
    SUSTAINED,
    fit_gemv,
    fit_group,
    gemv_points,
    in_step_factor,
    in_step_fit,
    takes_in_step,
)
from calibrate.measurements import Store
from core.cost_model import CostModel
from core.errors import ConfigError
from core.hardware import read_profile
from core.model_spec import load_model

# groups fitted here beside the stage-1 ones: the serving loop's host costs (measured, not fitted) and the GEMV
# curve (calibrate.fit.fit_gemv, on the gemm points of one row)
EXTRA_GROUPS = ("serving", "gemv")
# where each section's block ends in a profile as core.hardware.write_profile lays it out
_EFF_AFTER = "  fresh_prefill_min_tokens:"


def _run_model(store: Store):
    """The model a run measured: its own --model argument (a catalogue name or a config.json path), as
    `python -m calibrate fit` finds it."""
    meta = store.meta or {}
    return load_model(meta.get("model_arg") or (store.identity or {}).get("model") or "llama-3.1-8b")


def _in_group(cm: CostModel, r, group: str) -> bool:
    """Whether a stored point is fitted in `group`: as calibrate.fit files it (accounting.group_of: with the
    profile's own moe_large split, or one `moe` curve over all moe points where it has none), except that
    `--group moe_large` takes the moe points past moe_large_min_rows even where the profile has no split yet."""
    if group == "moe_large":
        return r.kind == "moe" and is_moe_large(cm, r.params)
    if group == "gemv":  # one-row bf16 GEMMs, of the gemm and gemv kinds (calibrate.fit.gemv_points)
        return bool(gemv_points([r]))
    return group_of(cm, r.kind, r.params) == group


def engine_codes(store: Store, group: str) -> list[str]:
    """The engine code (core.provenance) the run's points of `group`'s kinds ran, each once ("not recorded" for
    points stored before they carried it): what `<group>_source` says the curve was measured on."""
    kinds = {spec.split(":")[0] for spec in KIND_OF.get(group, group).split(",")}
    return sorted({r.engine or "not recorded" for r in store.records.values() if r.kind in kinds})


def fit_run(work_dir: Path, group: str, profile_path: Path):
    """(GroupFit, the run's store) for `group`'s points of the run in `work_dir`, priced on the profile's
    peaks and bandwidth (what the cost model will use them with); for `serving`, ({quantity: seconds}, store)."""
    if group not in GROUPS + EXTRA_GROUPS:
        raise ConfigError(f"--group {group!r}: one of {', '.join(GROUPS + EXTRA_GROUPS)}")
    path = Path(work_dir) / "measurements.jsonl"
    if not path.exists():
        raise ConfigError(f"{path}: no measurements; pass the --work-dir of a `python -m calibrate` run")
    store = Store.open(path, warn=lambda m: print(f"warning: {m}", file=sys.stderr))
    if group == "serving":
        recs = [r for r in store.records.values() if r.kind == group and r.seconds is not None]
        from calibrate.serving import OPTIONAL, QUANTITIES

        got = {r.params.get("quantity"): float(r.seconds) for r in recs}
        missing = [q for q in QUANTITIES if q not in got and q not in OPTIONAL]
        if missing:
            raise ConfigError(
                f"{path}: the run has no serving {', '.join(missing)}; rerun with --redo serving"
            )
        _same_gpu(store, profile_path, path)
        return {q: got[q] for q in QUANTITIES if q in got}, store
    prof = read_profile(profile_path)
    gpu = (store.identity or {}).get("gpu", "")
    want = (prof.calibration.gpu if prof.calibration else "") or ""
    if want and gpu and gpu != want:
        raise ConfigError(
            f"{path}: measured on {gpu}, but {profile_path} is calibrated on {want}; use that GPU's run"
        )
    cm, recs = group_points(store, prof, group)
    if len(recs) < 4:
        kind = KIND_OF.get(group, group)
        raise ConfigError(
            f"{path}: {len(recs)} '{group}' points; the run needs that group (rerun with --redo {kind})"
        )
    base = getattr(prof.efficiency, group) or prof.efficiency.gemm
    if group == "gemm":  # the bf16 curve (fit_all fits each other dtype's points as its own curve)
        recs = [r for r in recs if r.params.get("dtype", "bf16") == "bf16"]
    recs = sorted(recs, key=lambda r: r.key)
    # (gemv: the one-row bf16 GEMM points, each held out from its own fit where the plan held none out)
    fit = fit_gemv(cm, recs, base) if group == "gemv" else fit_group(cm, group, recs, base)
    if fit.eff is None:
        raise ConfigError(f"{path}: too few fitted '{group}' points (need 3 not held out)")
    factor = in_step_factor(prof)
    if factor and takes_in_step(group):  # priced inside steps: the profile's in-step compute factor
        fit = in_step_fit(cm, group, recs, fit, factor)
    return fit, store


def group_points(store: Store, prof, group: str) -> tuple[CostModel, list]:
    """The cost model of the run's model on `prof`, and the run's measured points of `group` in the store's order,
    as calibrate.fit.fit_all files them (moe_large: the moe points past the profile's rule)."""
    cm = CostModel(prof, _run_model(store), "bf16", "bf16")
    return cm, [r for r in store.records.values() if r.seconds is not None and _in_group(cm, r, group)]


def in_step_from_run(work_dir: Path, profile_path: Path):
    """(factor, the run's bf16 GEMM points fitted alone, store): the profile's in-step compute factor
    (calibrate.fit.in_step), its bf16 GEMM curve's compute asymptote over the same points' fit alone. The run
    must be the one the profile was fitted on (`calibration.measurements.file`): the factor compares one
    curve with its own points."""
    prof = read_profile(profile_path)
    own = ((getattr(prof.calibration, "measurements", None) or {}).get("file")) if prof.calibration else None
    path = Path(work_dir) / "measurements.jsonl"
    if not own or Path(own).resolve() != path.resolve():
        raise ConfigError(
            f"{work_dir}: not the run {profile_path} was fitted on ({own or 'none recorded'}); "
            "the in-step factor compares the profile's GEMM curve with its own points, so pass that run"
        )
    store = Store.open(path, warn=lambda m: print(f"warning: {m}", file=sys.stderr))
    cm, recs = group_points(store, prof, "gemm")
    recs = [r for r in recs if r.params.get("dtype", "bf16") == "bf16"]
    fit = fit_group(cm, "gemm", recs, prof.efficiency.gemm)  # in the store's order, as calibrate.fit.fit_all
    if fit.eff is None:
        raise ConfigError(f"{path}: too few bf16 GEMM points to fit (need 3 not held out)")
    return prof.efficiency.gemm.compute / fit.eff.compute, fit, store


def write_in_step(path: Path, factor: float, source: dict) -> None:
    """(Re)write calibration.in_step_compute_factor and calibration.in_step_source at the profile's end."""
    text = path.read_text()
    top = [ln for ln in text.splitlines() if ln and not ln[0].isspace() and not ln.startswith("#")]
    if not top or top[-1] != "calibration:":  # the profile writer's layout: calibration last
        raise ConfigError(f"{path}: no calibration section at its end (is it a calibrated profile?)")
    lines = drop_block(text.splitlines(keepends=True), "  in_step_source:\n", 2)
    lines = [ln for ln in lines if not ln.startswith("  in_step_compute_factor:")]
    new = "".join(lines + [f"  in_step_compute_factor: {factor!r}\n"] + _block("in_step_source", source, 2))
    yaml.safe_load(new)
    path.write_text(new)
    read_profile(path)


def _same_gpu(store: Store, profile_path: Path, path: Path):
    prof = read_profile(profile_path)
    gpu = (store.identity or {}).get("gpu", "")
    want = (prof.calibration.gpu if prof.calibration else "") or ""
    if want and gpu and gpu != want:
        raise ConfigError(
            f"{path}: measured on {gpu}, but {profile_path} is calibrated on {want}; use that GPU's run"
        )
    return prof


def write_serving(path: Path, values: dict[str, float], source: dict) -> None:
    """Replace the efficiency section's serving lines in place and (re)write calibration.serving_source."""
    from calibrate.serving import OPTIONAL

    write_terms(path, values, "serving_source", source, OPTIONAL)


def write_terms(
    path: Path, values: dict[str, float], source_key: str, source: dict, optional: tuple | set = ()
) -> None:
    """Replace efficiency lines (`values`) in place, a quantity in `optional` the profile predates inserted after
    the eager launch's line, and (re)write calibration.<source_key>; every other line as it was."""
    lines = drop_block(path.read_text().splitlines(keepends=True), f"  {source_key}:\n", 2)
    for q, v in values.items():
        at = [i for i, ln in enumerate(lines) if ln.startswith(f"  {q}:")]
        if not at and q in optional:  # a quantity the profile predates: its line after the eager launch's
            at = [i for i, ln in enumerate(lines) if ln.startswith("  eager_launch_s_per_layer:")]
            if len(at) == 1:
                lines.insert(at[0] + 1, f"  {q}: {v!r}\n")
                continue
        if len(at) != 1:
            raise ConfigError(f"{path}: expected one efficiency.{q} line, found {len(at)}")
        lines[at[0]] = f"  {q}: {v!r}\n"
    new = "".join(lines + _block(source_key, source, 2))
    yaml.safe_load(new)
    path.write_text(new)
    read_profile(path)


def _block(key: str, value, indent: int) -> list[str]:
    text = yaml.safe_dump({key: value}, sort_keys=False, width=1000)
    return [" " * indent + ln + "\n" for ln in text.splitlines()]


def drop_block(lines: list[str], header: str, indent: int) -> list[str]:
    """`lines` without the block that starts at `header` (its deeper-indented lines included)."""
    if header not in lines:
        return lines
    i = lines.index(header)
    j = i + 1
    while j < len(lines) and (lines[j].startswith(" " * (indent + 2)) or not lines[j].strip()):
        j += 1
    return lines[:i] + lines[j:]


def write_profile(path: Path, group: str, eff: dict, errors: dict, source: dict, replace: bool) -> None:
    """Insert efficiency.<group>, calibration.fit_errors_pct.<group> and calibration.<group>_source."""
    text = path.read_text()
    data = yaml.safe_load(text)
    if (data.get("efficiency") or {}).get(group) is not None and not replace:
        raise ConfigError(f"{path}: efficiency.{group} is already there; pass --replace to refit it")
    lines = text.splitlines(keepends=True)
    lines = (
        drop_block(lines, f"  {group}:\n", 2)
        if (data.get("efficiency") or {}).get(group) is not None
        else lines
    )
    lines = drop_block(lines, f"  {group}_source:\n", 2)
    fe = "  fit_errors_pct:\n"
    if fe in lines:  # drop an earlier entry for the group inside fit_errors_pct
        start = lines.index(fe)
        sub = f"    {group}:\n"
        if sub in lines[start:]:
            k = lines.index(sub, start)
            end = k + 1
            while end < len(lines) and lines[end].startswith("      "):
                end += 1
            lines = lines[:k] + lines[end:]
    at = next((i for i, ln in enumerate(lines) if ln.startswith(_EFF_AFTER)), None)
    if at is None:
        raise ConfigError(
            f"{path}: no efficiency.fresh_prefill_min_tokens line to place efficiency.{group} before"
        )
    lines = lines[:at] + _block(group, eff, 2) + lines[at:]
    if fe not in lines:
        raise ConfigError(f"{path}: no calibration.fit_errors_pct block (is it a calibrated profile?)")
    start = lines.index(fe) + 1
    end = start
    while end < len(lines) and lines[end].startswith("    "):
        end += 1
    lines = lines[:end] + _block(group, errors, 4) + lines[end:]
    lines = lines + _block(f"{group}_source", source, 2)
    new = "".join(lines)
    yaml.safe_load(new)  # still one YAML document
    path.write_text(new)
    read_profile(path)  # and still a profile


def report(fit) -> str:
    out = ["| point | measured (µs) | fitted curve (µs) | error | use |", "|---|---|---|---|---|"]
    for r in fit.rows:
        err = r["predicted_s"] / r["measured_s"] - 1
        use = "held out" if r["holdout"] else "fitted"
        out.append(
            f"| {r['label']} | {r['measured_s'] * 1e6:.1f} | {r['predicted_s'] * 1e6:.1f} | {err:+.1%} | {use} |"
        )
    e = fit.errors_dict()
    out.append(f"\nfitted points: median |error| {e['train']['median_pct']}%, p90 {e['train']['p90_pct']}% (n={e['train']['n']}); "
               f"held out: median {e['holdout']['median_pct']}%, p90 {e['holdout']['p90_pct']}% (n={e['holdout']['n']})")  # fmt: skip
    alone = fit.alone
    if alone is not None:
        a = alone.errors_dict()
        out.append(f"the curve above is the fit with its compute asymptote x {fit.eff.compute / alone.eff.compute:.4f}, "
                   f"the profile's in-step factor (calibration.in_step_compute_factor); the fit itself: "
                   f"{a['train']['median_pct']}% / {a['holdout']['median_pct']}% (fitted / held out median)")  # fmt: skip
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m calibrate.group_from_run", description=__doc__.split("\n")[0]
    )
    ap.add_argument(
        "work_dir", type=Path, help="a `python -m calibrate` run's --work-dir (measurements.jsonl)"
    )
    ap.add_argument("--group", help=f"the group to fit ({', '.join(GROUPS + EXTRA_GROUPS)})")
    ap.add_argument(
        "--in-step-factor",
        action="store_true",
        help="instead of a group: the profile's in-step compute factor from its own run (calibrate.fit.in_step)",
    )
    ap.add_argument("--profile", required=True, type=Path, help="the profile YAML to add the group to")
    ap.add_argument("--date", required=True, help="date of the GPU run (YYYY-MM-DD)")
    ap.add_argument("--write", action="store_true", help="write the group into --profile (else only report)")
    ap.add_argument("--replace", action="store_true", help="refit a group the profile already has")
    a = ap.parse_args(argv)
    if (a.group is None) == (not a.in_step_factor):
        ap.error("pass one of --group GROUP or --in-step-factor")
    command = "python -m calibrate.group_from_run " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        if a.in_step_factor:
            return _in_step_main(a, command)
        fit, store = fit_run(a.work_dir, a.group, a.profile)
        if a.group == "serving":
            old = read_profile(a.profile).efficiency
            for q, v in fit.items():
                print(f"{q}: {getattr(old, q) * 1e6:.1f} µs -> {v * 1e6:.1f} µs (measured)")
        else:
            print(report(fit))
        if a.write:
            ident = store.identity or {}
            source = {
                "command": command,
                "date": a.date, "run": str(a.work_dir), "gpu": ident.get("gpu"), "torch": ident.get("torch"),
                "note": "only this group fitted from this run; the profile's other groups are from its own sweep",
            }  # fmt: skip
            source["engine_code"] = engine_codes(store, a.group)
            if a.group != "serving" and fit.alone is not None:
                source["in_step_compute_factor"] = fit.eff.compute / fit.alone.eff.compute
                source["fitted_compute"] = fit.alone.eff.compute
            elif a.group in SUSTAINED:
                source["in_step"] = (
                    "not applied: the points ran under a step's sustained load (calibrate.fit.SUSTAINED)"
                )
            if a.group == "serving":
                source["note"] = "the serving loop's host costs as this run measured them (not fitted)"
                write_serving(a.profile, fit, source)
            else:
                eff = {k: float(v) for k, v in fit.eff.model_dump(exclude_none=True).items()}
                write_profile(a.profile, a.group, eff, fit.errors_dict(), source, a.replace)
            print(f"wrote efficiency.{a.group} into {a.profile}")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _in_step_main(a: argparse.Namespace, command: str) -> int:
    factor, fit, store = in_step_from_run(a.work_dir, a.profile)
    e = fit.errors_dict()
    print(
        f"bf16 GEMM compute asymptote: {fit.eff.compute:.4f} fitted alone (median |error| {e['train']['median_pct']}% "
        f"fitted, {e['holdout']['median_pct']}% held out), {fit.eff.compute * factor:.4f} in the profile: "
        f"in-step compute factor {factor:.4f}"
    )
    if a.write:
        ident = store.identity or {}
        source = {
            "command": command, "date": a.date, "run": str(a.work_dir), "gpu": ident.get("gpu"),
            "torch": ident.get("torch"), "fitted_alone_compute": fit.eff.compute,
            "note": "the profile's bf16 GEMM compute asymptote (refined on whole steps) over the same run's bf16 "
            "GEMM points fitted alone; curves fitted on kernels alone take it on their compute side "
            "(calibrate.fit.in_step; benchmarks/gemm_clocks.py measures the clock drop behind it)",
        }  # fmt: skip
        write_in_step(a.profile, factor, source)
        print(f"wrote calibration.in_step_compute_factor into {a.profile}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
