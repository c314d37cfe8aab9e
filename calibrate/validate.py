"""`python -m calibrate validate PROFILE`: predicted vs measured whole steps on shapes the sweep never saw."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np

from calibrate import detect
from calibrate.accounting import STEP_KINDS, label, step_shape
from calibrate.fit import Errors
from calibrate.measurements import STEP_GRAPHS_NOW, Store, describe, identity, model_fingerprint, step_graphs
from calibrate.plan import Limits, Point, make_plan, mixed_lengths
from calibrate.profile import read
from calibrate.sweep import run_sweep
from core.cost_model import CostModel
from core.errors import ConfigError
from core.graphs import SERVING_GRAPHS, GraphRule
from core.hardware import HardwareProfile
from core.model_spec import ModelSpec, load_model


def validation_points(mode: str, limits: Limits) -> list[Point]:
    """Held-out whole steps: batch sizes, lengths and mixes that the sweep plan does not contain."""
    pts: list[Point] = []
    if mode == "cpu":
        decode = [(3, 24), (6, 40)]
        prefill = [[24], [48], [12, 20]]
        chunked = [(16, 24)]
        mixed = [(24, 3), (40, 5)]
        ragged = [(5, 30)]
    else:
        decode = [(b, c) for b in (3, 12, 48, 192) for c in (700, 2500)]
        prefill = [[200], [700], [3000], [6000], [12000], [300] * 6, [1500] * 3, [5000, 1000]]
        chunked = [(1500, 3000), (3000, 10000)]
        mixed = [(384, 16), (768, 48), (1536, 24), (3000, 96), (1200, 200), (96, 40)]
        ragged = [(6, 1500), (12, 700), (24, 2500), (40, 1800), (96, 700), (160, 600)]
    for b, c in decode:
        pts.append(Point("step_decode", {"context_lens": [c] * b}))
    for b, c in ragged:
        pts.append(Point("step_decode", {"context_lens": mixed_lengths(b, c, seed=31 * b + c)}))
    for lens in prefill:
        pts.append(Point("step_prefill", {"prompt_lens": lens, "prior_lens": [0] * len(lens)}))
    for chunk, prior in chunked:
        pts.append(Point("step_prefill", {"prompt_lens": [chunk], "prior_lens": [prior]}))
    for chunk, b in mixed:
        dec = mixed_lengths(b, 900 if mode != "cpu" else 20, seed=13 * b + chunk)
        pts.append(Point("step_mixed", {"chunks": [[chunk, 0]], "decode_context_lens": dec}))

    def fits(p: Point) -> bool:
        q = p.params
        ctx = (
            (q.get("context_lens") or [])
            + (q.get("decode_context_lens") or [])
            + [a + b for a, b in zip(q.get("prompt_lens", []), q.get("prior_lens", []), strict=True)]
            + [a + b for a, b in q.get("chunks", [])]
        )
        return (
            len(ctx) <= limits.max_batch
            and sum(ctx) <= limits.max_kv_tokens
            and max(ctx) <= limits.max_context
        )

    return [p for p in pts if fits(p)]


def predict(
    profile: HardwareProfile, spec: ModelSpec, points: list[Point], graphs: GraphRule | None = SERVING_GRAPHS
) -> np.ndarray:
    """The cost model's time for each whole step (GPU work only: calibration times the GPU), as it ran: through
    the CUDA graphs of `graphs` (the store's, measurements.step_graphs), padding included."""
    cm = CostModel(profile, spec, serving_host=False, graph_padding=graphs)
    return np.array([cm.step_time(step_shape(cm, p.kind, p.params)) for p in points])


def table(rows: list[dict]) -> str:
    """Markdown table of predicted vs measured steps."""
    out = ["| step | shape | measured (ms) | predicted (ms) | error |", "|---|---|---:|---:|---:|"]
    for r in rows:
        out.append(
            f"| {r['kind']} | {r['label']} | {r['measured_s'] * 1e3:.3f} | {r['predicted_s'] * 1e3:.3f} | "
            f"{r['error_pct']:+.1f}% |"
        )
    return "\n".join(out)


def summary(rows: list[dict]) -> str:
    lines = ["| steps | n | median abs. error | p90 abs. error |", "|---|---:|---:|---:|"]
    for kind in (*STEP_KINDS, "all"):
        sel = [r for r in rows if kind == "all" or r["kind"] == kind[5:]]
        if not sel:
            continue
        e = Errors.of([r["predicted_s"] for r in sel], [r["measured_s"] for r in sel])
        lines.append(f"| {kind.removeprefix('step_')} | {e.n} | {e.median_pct:.1f}% | {e.p90_pct:.1f}% |")
    return "\n".join(lines)


def validate(
    profile_name: str,
    model_name: str,
    device: str,
    work_dir: str | None,
    out: str | None,
    command: str = "",
    log=print,
    stored: bool = False,
) -> tuple[float, float]:
    """Time the held-out steps, compare with the profile's prediction; returns (median, p90) abs % error.

    `stored`: no device; compare with the steps already in the work dir's validate.jsonl (after a refit)."""
    from calibrate.calibration import device_limits, need_torch_device, refuse_unbuildable

    prof = read(profile_name)
    spec = load_model(model_name)
    if out and Path(out).is_dir():
        raise ConfigError(
            f"--out {out!r}: is a folder; pass a file name, e.g. --out {Path(out) / 'validate.md'}"
        )
    if out:
        try:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).touch()
        except OSError as e:
            raise ConfigError(f"cannot write {out!r}: {e.strerror or e}") from None
    if stored:
        path = Path(work_dir or Path("calibration_runs") / prof.name) / "validate.jsonl"
        if not path.exists():
            raise ConfigError(f"{path} does not exist; run python -m calibrate validate on the GPU first")
        store = Store.open(path)
        # the model's shapes where the store records them; by name in a store written before fingerprints
        measured = store.identity.get("model_config")
        same = (
            model_fingerprint(spec) == measured
            if measured
            else store.meta.get("model", spec.name) == spec.name
        )
        if not same:
            raise ConfigError(
                f"{path}: holds steps of {describe(store.identity)}, not {spec.name}; "
                f"pass --model {store.meta.get('model_arg') or store.meta.get('model')}"
            )
        done = [Point(r.kind, r.params) for r in store.records.values() if r.status == "ok"]
        return _report(profile_name, prof, spec, store, done, store.meta.get("gpu", "?"), out, command, log)
    refuse_unbuildable(spec)
    need_torch_device(device)
    gpu = detect.GpuInfo(name="cpu") if device == "cpu" else detect.detect()
    mode = "cpu" if device == "cpu" else "full"
    wd = Path(work_dir or Path("calibration_runs") / prof.name)
    ident = identity(
        gpu.name if gpu else "?", "cpu" if device == "cpu" else "cuda", spec, detect.software_versions()
    )
    store = Store.open(
        wd / "validate.jsonl", ident, provenance={"model_arg": model_name, "step_graphs": STEP_GRAPHS_NOW}
    )
    store.steps_through(STEP_GRAPHS_NOW, set(STEP_KINDS))  # steps timed on other graphs: measured again
    limits = device_limits(spec, device)
    sweep_keys = {p.key for p in make_plan(spec, mode, ["bf16"], limits)}
    points = [p for p in validation_points(mode, limits) if p.key not in sweep_keys]

    from calibrate.bench import Bench

    bench = Bench(spec, device, limits)
    run_sweep(points, store, bench.measure, bench.recover, label_text="validate")
    done = [p for p in points if p.key in store and store.records[p.key].status == "ok"]
    return _report(profile_name, prof, spec, store, done, gpu.name if gpu else device, out, command, log)


def _report(
    profile_name: str, prof, spec, store: Store, done: list[Point], gpu_name: str, out, command: str, log
) -> tuple[float, float]:
    """Predicted vs measured for the stored steps `done`: tables logged and written to `out`."""
    if not done:
        raise ConfigError("no validation step could be measured (see the warnings above)")
    measured = np.array([store.records[p.key].seconds for p in done])
    pred = predict(prof, spec, done, step_graphs(store.meta))
    rows = [
        {
            "kind": p.kind[5:],
            "label": label(p.kind, p.params),
            "measured_s": float(m),
            "predicted_s": float(q),
            "error_pct": 100.0 * (q / m - 1.0),
        }
        for p, m, q in zip(done, measured, pred, strict=True)
    ]
    e = Errors.of(pred, measured)
    head = (
        f"Validation of profile `{prof.name}` ({prof.display_name}) with {spec.name} on "
        f"{gpu_name}, {_dt.date.today().isoformat()}: whole steps not in the sweep, "
        f"measured by the engine vs `CostModel.step_time`."
    )
    text = (
        "\n\n".join(
            [
                head,
                f"Command: `{command or 'python -m calibrate validate ' + profile_name}`",
                summary(rows),
                table(rows),
            ]
        )
        + "\n"
    )
    log(table(rows))
    log(summary(rows))
    log(f"median abs. error {e.median_pct:.1f}%, p90 {e.p90_pct:.1f}% over {e.n} held-out steps")
    if out:
        try:
            Path(out).write_text(text)
        except OSError as e:  # the tables are logged above: nothing measured is lost
            raise ConfigError(
                f"--out {out!r}: cannot write the table ({e.strerror or e}); pass another --out"
            ) from None
        log(f"wrote {out}")
    return e.median_pct, e.p90_pct
