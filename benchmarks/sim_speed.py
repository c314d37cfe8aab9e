"""Simulator speed: simulated requests and model steps per wall-clock second on one core.

The default scenario (Llama-3.1-8B on one H100, conversation trace at its own arrival times), with the
trace looped to N requests; also at 4× the trace's rate (bigger batches) and with prefill-first
scheduling. Target (DESIGN.md): 1,000,000 requests in under 60 s.

    python benchmarks/sim_speed.py                 # 1,000,000 requests per row
    python benchmarks/sim_speed.py --requests 100000
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import time
from pathlib import Path

import _checkout  # noqa: F401  (first: the checkout's root on sys.path)

from simulator.scenario import DEFAULT_SCENARIO, apply_overrides, parse_scenario  # noqa: E402
from simulator.simulation import simulate  # noqa: E402

SHARED_PROMPT = (
    "workload.classes=[{name: chat, share: 1, shared_prefix_tokens: 1000,"
    " prompt_tokens: {dist: trace}, output_tokens: {dist: trace}}]"
)
VARIANTS = {
    "default (chunked prefill, trace rate)": [],
    "4x trace rate": ["workload.arrival.rate_per_s=22"],
    "prefill-first (no chunking)": [
        "serving.batching.chunked_prefill=false",
        "serving.batching.max_num_batched_tokens=16384",
    ],
    "prefix caching + chunked prefill, 1k shared prompt": [
        "serving.caching.prefix_caching=true",
        SHARED_PROMPT,
    ],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--only", choices=list(VARIANTS), help="run one variant")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "sim_speed.md"))
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    rows = []
    for name, overrides in VARIANTS.items():
        if args.only and name != args.only:
            continue
        data = apply_overrides(copy.deepcopy(DEFAULT_SCENARIO), overrides)
        data["workload"]["num_requests"] = args.requests
        sc = parse_scenario(data)
        t0, c0 = time.perf_counter(), time.process_time()
        f = simulate(sc)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        s = f.summary
        row = (name, args.requests, wall, cpu, args.requests / wall, f.stats.steps, f.stats.steps / wall,
               s["utilisation"]["mean_batch_seqs"], s["throughput"]["duration_s"])  # fmt: skip
        rows.append(row)
        print(
            f"{name}: {wall:.1f} s wall, {cpu:.1f} s CPU, {row[4]:,.0f} req/s, {row[6]:,.0f} steps/s",
            flush=True,
        )
    head = "| scenario | requests | wall (s) | CPU (s) | requests/s | steps | steps/s | mean batch | simulated (h) |"
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r[0]} | {r[1]:,} | {r[2]:.1f} | {r[3]:.1f} | {r[4]:,.0f} | {r[5]:,} | {r[6]:,.0f} | {r[7]:.1f} "
            f"| {r[8] / 3600:.1f} |"
        )
    proc = platform.processor() or platform.machine()
    text = "\n".join(lines) + f"\n\nOne core of {proc}, Python {platform.python_version()}.\n"
    print("\n" + text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        f"# Simulator speed\n\n`python benchmarks/sim_speed.py --requests {args.requests}`\n\n{text}"
    )


if __name__ == "__main__":
    main()
