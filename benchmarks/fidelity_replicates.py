"""The same fidelity row run more than once: how far the engine's own figures move from one run to the next.

    python benchmarks/fidelity_replicates.py [--gpu h200]   # no device: benchmarks/results/fidelity_replicates_h200.md

A fidelity row (benchmarks/fidelity.py) replays a seeded trace at a fixed rate through our engine, beside the
simulator's forecast of the same requests. Two runs of one row (the same row name, rate, request count and
duration) replay the same requests, so the simulator's side is the same and the runs differ only by the engine's
run: the lent machine, its host, its clocks. Every stored run under benchmarks/results is grouped that way (the
fidelity table's rows, the async table's waiting rows, fidelity_repeats/); for each group of two or more this
prints the engine's TTFT / TPOT p50 and p90 and output throughput per run and their spread (largest over smallest,
minus one), and the median spread over groups. A forecast's band cannot honestly be narrower than that spread:
it is how far the ground truth itself moves.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import _checkout  # noqa: F401  (the checkout's root on sys.path)
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
FIGURES = {"ttft_p50": "TTFT p50", "ttft_p90": "TTFT p90", "tpot_p50": "TPOT p50", "tpot_p90": "TPOT p90",
           "output_tokens_per_s": "out tok/s"}  # fmt: skip


def groups(results: Path, gpu: str) -> dict[tuple, list[tuple[Path, dict]]]:
    """Stored runs of `gpu`'s rows (a row.json under a folder named for the GPU) by experiment: (row, rate,
    requests, duration) -> [(path, record)], runs in path order."""
    out: dict[tuple, list[tuple[Path, dict]]] = defaultdict(list)
    for path in sorted(results.rglob("row.json")):
        if not any(
            part == gpu or part.startswith(f"{gpu}_") for part in path.relative_to(results).parts[:-2]
        ):
            continue
        try:
            rec = json.loads(path.read_text())
            key = (
                rec["row"],
                round(float(rec["rate_per_s"]), 4),
                int(rec["requests"]),
                float(rec["duration_s"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not set(FIGURES) <= set(rec.get("engine", {})):  # (a run that kept no figures)
            continue
        out[key].append((path, rec))
    return out


def spread(values: list[float]) -> float:
    """Largest over smallest, minus one, in percent."""
    return 100.0 * (max(values) / min(values) - 1.0)


def _ms(key: str, v: float) -> str:
    return f"{v:.0f}" if key == "output_tokens_per_s" else f"{v * 1e3:.1f}"


def report(grouped: dict[tuple, list[tuple[Path, dict]]], gpu: str, results: Path) -> str:
    reps = {k: v for k, v in sorted(grouped.items()) if len(v) > 1}
    lines = [
        f"# The same fidelity row, run more than once ({gpu})",
        "",
        f"`python benchmarks/fidelity_replicates.py --gpu {gpu}`. The engine's figures of each run (latencies in ms, "
        "output tokens/s), then their spread: largest over smallest, minus one. Runs of one row replay the same "
        "requests at the same rate, so the simulator's side is the same (the last column checks it) and the "
        "spread is the engine run's own: lent machine, host, clocks.",
        "",
    ]
    if not reps:
        return "\n".join(lines + ["No row has been run more than once.", ""])
    lines += [
        "| row | runs | " + " | ".join(FIGURES.values()) + " | same simulator side |",
        "|---|---|" + "---|" * len(FIGURES) + "---|",
    ]
    spreads: dict[str, list[float]] = {k: [] for k in FIGURES}
    for (row, *_), runs in reps.items():
        cells = []
        for k in FIGURES:
            vals = [float(r["engine"][k]) for _, r in runs]
            spreads[k].append(spread(vals))
            cells.append(f"{' / '.join(_ms(k, v) for v in vals)} ({spread(vals):.1f}%)")
        sims = {json.dumps({k: r.get("simulator", {}).get(k) for k in FIGURES}) for _, r in runs}
        where = ", ".join(p.relative_to(results).parts[0] for p, _ in runs)  # (each run's results folder)
        lines.append(
            f"| {row} ({where}) | {len(runs)} | "
            + " | ".join(cells)
            + f" | {'yes' if len(sims) == 1 else 'no'} |"
        )
    med = " | ".join(f"{np.median(v):.1f}%" for v in spreads.values())
    return "\n".join(lines + [f"| **median spread** | | {med} | |", ""] + step_lines(reps))


MIN_STEPS = 10  # a step kind is compared where every run took at least this many of it


def step_lines(reps: dict[tuple, list[tuple[Path, dict]]]) -> list[str]:
    """Where the runs differ: per step kind each run took at least MIN_STEPS of (the row's `engine_steps`), the
    loop's mean iteration, its GPU span, the host's share (iteration minus GPU span) and graph or eager launch,
    per run, beside the cost model's price of the same steps."""
    out = [
        "## Where the runs differ, step by step",
        "",
        "Per kind of step (the row's `engine_steps`), mean ms per run: the loop's iteration, its GPU span, the host's "
        "share of the iteration (iteration minus GPU span) and the launch, then the cost model's price of the "
        "very steps of the first run.",
        "",
        "| row | step | iteration | GPU | host | launch | cost model |",
        "|---|---|---|---|---|---|---|",
    ]
    for (row, *_), runs in reps.items():
        by_kind = [{s["kind"]: s for s in r.get("engine_steps", [])} for _, r in runs]
        for kind in by_kind[0]:
            steps = [k.get(kind) for k in by_kind]
            if any(s is None or s.get("steps", 0) < MIN_STEPS for s in steps):
                continue
            cells = [" / ".join(f"{s[f]:.2f}" for s in steps) for f in ("loop_ms", "gpu_ms")]
            cells.append(" / ".join(f"{s['loop_ms'] - s['gpu_ms']:.2f}" for s in steps))
            cells.append(" / ".join(f"{s['launch_ms']:.2f}" for s in steps))
            out.append(f"| {row} | {kind} | " + " | ".join(cells) + f" | {steps[0]['model_ms']:.2f} |")
    return out + [""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", default="h200", help="the GPU's profile name, as the results' folders name it")
    ap.add_argument("--results", type=Path, default=RESULTS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    text = report(groups(args.results, args.gpu), args.gpu, args.results)
    (args.results / f"fidelity_replicates_{args.gpu}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
