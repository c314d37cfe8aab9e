"""Calibration's time left, replayed on real sweeps: the count-based estimate against the cost-based one.

The recordings under benchmarks/results/calibration_eta/ hold each point's wall time (the bench's
`measure` call, model builds and JIT compiles included) of whole `python -m calibrate` sweeps:
llama-3.1-8b on an H200 (full and quick plans; the quick one on a newly started machine, so its first kernels
compile), qwen2.5-0.5b, two small llama-shaped models and the tests' tiny model on this 2-core CPU
(shared with other work, so its timings are noisy). The priors' constants (calibrate/sweep.py) were
set from the first five recordings; the last, recorded after, is held out. Each is replayed through
`calibrate.progress.Progress` on a fake clock; at 10/25/50/75% of the run's wall time the table
compares the time actually left with the old estimate (elapsed / points done × points left) and the
new one (`Eta`: each remaining point's prior, corrected online). "resumed" replays the full H200
sweep with its first half already in the store. Writes benchmarks/results/calibration_eta.md.

    python benchmarks/calibration_eta.py
    python benchmarks/calibration_eta.py --record walls.jsonl --mode quick --model llama-3.1-8b  # on a GPU
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import _checkout  # noqa: F401  (first: the checkout's root on sys.path)

from calibrate import profile  # noqa: E402
from calibrate.plan import Point  # noqa: E402
from calibrate.progress import Progress  # noqa: E402
from calibrate.sweep import BenchTiming, point_costs, prior_cost_model  # noqa: E402
from core.model_spec import load_model  # noqa: E402

HERE = Path(__file__).resolve().parent
RECORDINGS = HERE / "results" / "calibration_eta"
OUT = HERE / "results" / "calibration_eta.md"
CHECKPOINTS = (0.10, 0.25, 0.50, 0.75)

# (name, recording, model, base profile or None for the CPU, the bench's repeat and warm-up, quick)
# Every recording here predates two additions to the serving point (recorded 2026-12-02): its workload run three
# times and pooled (20a55bb, 2026-12-03) and the MLA eager measure after it (calibrate.serving.measure_mla_eager,
# 2026-12-04). They are replayed with the serving point they ran (RECORDED); priced as today's sweep runs it, the
# H200 replays read 66-309% high at their last checkpoints, the time of work the recorded sweeps never did.
RECORDED = {"serving_runs": 1, "mla_eager": False}
RUNS = [
    ("H200 full", "walls_full.jsonl", "llama-3.1-8b", "h200", 20, 3, False),
    ("H200 quick (fresh machine)", "walls_quick.jsonl", "llama-3.1-8b", "h200", 10, 3, True),
    ("CPU qwen2.5-0.5b", "walls_cpu_qwen.jsonl", "qwen2.5-0.5b", None, 3, 1, False),
    ("CPU 8-layer llama-shaped", "walls_cpu_mid.jsonl", "mid_config.json", None, 3, 1, False),
    ("CPU tests' tiny model", "walls_cpu_tiny.jsonl", "tiny_config.json", None, 3, 1, False),
    # recorded after the constants were set from the five above: how they carry to another model
    ("CPU 4-layer wide, held out", "walls_cpu_wide.jsonl", "wide_config.json", None, 3, 1, False),
]  # fmt: skip


def record(path: Path, mode: str, model: str) -> None:
    """Time each point of a sweep as `python -m calibrate` runs it (same plan, same bench), one JSON line a
    point, appended as it ends. The GPU recordings were made so, inline, on a device without pydantic."""
    from calibrate import detect
    from calibrate.bench import Bench
    from calibrate.calibration import device_limits, gemm_dtypes
    from calibrate.plan import make_plan

    spec = load_model(model)
    device = "cpu" if mode == "cpu" else "cuda"
    base = None if device == "cpu" else profile.read(detect.resolve_base(detect.detect().name, None))
    limits = device_limits(spec, device)
    plan = make_plan(spec, mode, gemm_dtypes(base, device), limits)
    bench = Bench(spec, device, limits, quick=mode == "quick")
    with path.open("a") as f:
        f.write(json.dumps({"kind": "meta", "kv": limits.max_kv_tokens, "n": len(plan)}) + "\n")
        for i, p in enumerate(plan):
            t0, status, seconds = time.monotonic(), "ok", None
            try:
                seconds = float(bench.measure(p))
            except Exception as e:  # noqa: BLE001 - recorded, as the sweep records it
                status = f"{type(e).__name__}: {str(e)[:80]}"
                bench.recover()
            wall = time.monotonic() - t0
            row = {
                "i": i,
                "kind": p.kind,
                "params": p.params,
                "wall_s": wall,
                "seconds": seconds,
                "status": status,
            }
            f.write(json.dumps(row) + "\n")
            f.flush()


def load(path: Path) -> tuple[dict, list[dict]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows[0], rows[1:]


def replay(points: list[Point], walls_s: list[float], timing: BenchTiming, cm) -> list[dict]:
    """Drive a Progress through the points on a fake clock; one row per checkpoint."""
    now = [0.0]
    bar = Progress(point_costs(points, cm, timing), "replay", stream=io.StringIO(), clock=lambda: now[0])
    total_s = sum(walls_s)
    rows, marks = [], list(CHECKPOINTS)
    for done, wall in enumerate(walls_s, 1):
        # the estimate a reader sees at a checkpoint is the one shown when the point crossing it began
        while marks and now[0] + wall > marks[0] * total_s:
            frac_points = (done - 1) / len(points)
            rows.append({
                "at": marks.pop(0),
                "points": f"{done - 1}/{len(points)}",
                "actual": total_s - now[0],
                # the count-based estimate it replaces (nothing before the first point ends)
                "old": now[0] / frac_points * (1 - frac_points) if frac_points else float("nan"),
                "new": bar.left_s(),
            })  # fmt: skip
        now[0] += wall
        bar.advance()
    return rows


def _clock(s: float) -> str:
    if s != s:
        return "-"
    return f"{int(s) // 60}m{int(s) % 60:02d}s" if s >= 60 else f"{s:.1f}s"


def _err(est: float, actual: float) -> str:
    return f"{100 * (est - actual) / actual:+.0f}%" if actual > 0 and est == est else "-"


def main() -> None:
    lines = [
        "# Calibration time left: count-based vs cost-based",
        "",
        "`python benchmarks/calibration_eta.py`: per-point wall times of real sweeps replayed through "
        "`calibrate.progress.Progress` on a fake clock. *old*: elapsed / points done × points left; "
        "*new*: the remaining points' priors (calibrate/sweep.py `point_costs`), corrected online by `Eta`.",
        "",
        "| sweep | at % of wall time | points done | actual left | old ETA | old error | new ETA | new error |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    errors: list[tuple[float, float]] = []  # |relative error| of the old and new estimates
    for name, file, model, base, repeat, warmup, quick in RUNS:
        meta, rows = load(RECORDINGS / file)
        spec = load_model(str(RECORDINGS / model) if model.endswith(".json") else model)
        cm = prior_cost_model(spec, profile.read(base) if base else None)
        cpu = base is None
        kv = meta.get("kv") or meta.get("limits", [0])[0]  # the CPU recordings say "limits"
        timing = BenchTiming(repeat, warmup, cpu, quick, kv, **RECORDED)
        points = [Point(r["kind"], r["params"]) for r in rows]
        walls = [r["wall_s"] for r in rows]
        cases = [(name, points, walls)]
        if file == "walls_full.jsonl":  # the second half of the sweep after an interruption
            half = len(points) // 2
            cases.append((f"{name}, resumed at point {half}", points[half:], walls[half:]))
        for label, pts, ws in cases:
            lines.append(f"| **{label}** ({len(pts)} points, {_clock(sum(ws))}) | | | | | | | |")
            for r in replay(pts, ws, timing, cm):
                if r["old"] == r["old"] and r["actual"] > 0:
                    errors.append((abs(r["old"] / r["actual"] - 1), abs(r["new"] / r["actual"] - 1)))
                lines.append(
                    f"| | {100 * r['at']:.0f}% | {r['points']} | {_clock(r['actual'])} | {_clock(r['old'])} | "
                    f"{_err(r['old'], r['actual'])} | {_clock(r['new'])} | {_err(r['new'], r['actual'])} |"
                )
    old, new = (sorted(e[k] for e in errors) for k in (0, 1))
    lines += [
        "",
        f"Over the {len(errors)} checkpoints: median |error| old {100 * old[len(old) // 2]:.0f}%, "
        f"new {100 * new[len(new) // 2]:.0f}%; worst old {100 * old[-1]:.0f}%, new {100 * new[-1]:.0f}%.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    OUT.write_text(text)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--record", type=Path, help="time a sweep's points into this JSONL instead of replaying")
    ap.add_argument("--mode", default="quick", choices=["quick", "full", "cpu"])
    ap.add_argument("--model", default="llama-3.1-8b")
    a = ap.parse_args()
    if a.record:
        record(a.record, a.mode, a.model)
    else:
        main()
