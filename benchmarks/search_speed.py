"""Capacity-search speed: a 200-configuration sweep on the local process pool.

5 GPUs × 2 GPU counts × 2 weight dtypes × 5 max_num_seqs × chunked prefill on/off = 200 configurations
of Llama-3.1-8B serving chat traffic (a 400-request base, lognormal lengths), each binary-searched
for its maximum rate under TTFT ≤ 500 ms and TPOT ≤ 50 ms for 90% of requests. Target (issue 6): minutes
on 2 cores. Writes the figure and the cheapest configurations to benchmarks/results/search_speed.md.

    python benchmarks/search_speed.py               # all cores (2 here)
    python benchmarks/search_speed.py --workers 1
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import _checkout  # noqa: F401  (first: the checkout's root on sys.path)

from simulator.presets import WORKLOADS  # noqa: E402
from simulator.search import format_table, parse_spec, progress_bar, run_search  # noqa: E402

# the app's chat preset, 400 requests, at a placeholder rate (the search sets it)
CHAT = {
    **WORKLOADS["chat (Poisson, lognormal lengths)"],
    "arrival": {"process": "poisson", "rate_per_s": 1.0},
}

SPEC = {
    "name": "search-speed-200",
    "base": {
        "model": "llama-3.1-8b",
        "workload": CHAT,
        "slo": {"ttft_s": 0.5, "tpot_s": 0.05},
    },
    "sweep": {
        "hardware.gpu": ["l4", "a10g", "a100-40gb", "a100-80gb-sxm", "h100-sxm"],
        "hardware.gpus_per_replica": [1, 2],
        "serving.precision.weight_dtype": ["bf16", "fp8"],
        "serving.batching.max_num_seqs": [32, 64, 128, 256, 512],
        "serving.batching.chunked_prefill": [True, False],
    },
    "target_rate_per_s": 20,
    "rate": {"min_per_s": 0.05, "max_per_s": 500, "rel_tol": 0.05},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "search_speed.md"))
    args = ap.parse_args()
    spec = parse_spec(SPEC, "search_speed")
    t0 = time.perf_counter()
    result = run_search(
        spec, "processes" if args.workers > 1 else "serial", args.workers, progress=progress_bar()
    )
    wall = time.perf_counter() - t0
    sims = sum(r.simulations for r in result.results)
    # probes are sized from each configuration's service time (simulator/search.py), at least the base's
    requests = sum(p.requests for r in result.results for p in r.probes)
    table = format_table(result, limit=10)
    print(table)
    lines = [
        "# Capacity-search speed",
        "",
        f"`python benchmarks/search_speed.py` on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, {args.workers} worker processes, Python {platform.python_version()}.",
        "",
        "| configurations | simulations | requests per simulation (mean) | wall time | configurations/s "
        "| simulations/s | simulated requests/s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {len(result.results)} | {sims:,} | {requests / max(sims, 1):,.0f} | {wall:.1f} s "
        f"| {len(result.results) / wall:.2f} | {sims / wall:.1f} | {requests / wall:,.0f} |",
        "",
        f"{len(result.feasible)} of {len(result.results)} configurations meet the SLOs; "
        f"{sims / len(result.results):.1f} simulations per configuration on average "
        "(one saturated run of the base's 400 requests to bracket the rate, then doubling/halving and bisection "
        "to 5%, each run long enough for a queue to build).",
        "",
        "```",
        table,
        "```",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print(f"\n{len(result.results)} configurations, {sims} simulations in {wall:.1f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
