"""Simulator speed: simulated requests and model steps per wall-clock second on one core.

The default scenario (Llama-3.1-8B on one H100, conversation trace at its own arrival times), with the
trace looped to N requests; also at 4× the trace's rate (bigger batches) and with prefill-first
scheduling. Target (issue 18): 1,000,000 requests in under 30 s.

`--beside REV` measures another commit's code in the same run, each row in a fresh process, the two
trees alternating (REV first for one variant, this checkout first for the next): a shared machine's
speed drifts, so only figures measured side by side compare. CPU seconds are what to read there; wall
time counts the wait for a core.

    python benchmarks/sim_speed.py                 # 1,000,000 requests per row
    python benchmarks/sim_speed.py --requests 100000
    taskset -c 1 python benchmarks/sim_speed.py --requests 1000000 --beside HEAD~1
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _checkout  # (first: the checkout's root on sys.path)

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


def measure(name: str, requests: int) -> dict:
    """One variant in this process, with whichever `simulator` is first on sys.path."""
    from simulator.scenario import DEFAULT_SCENARIO, apply_overrides, parse_scenario
    from simulator.simulation import simulate

    data = apply_overrides(copy.deepcopy(DEFAULT_SCENARIO), VARIANTS[name])
    data["workload"]["num_requests"] = requests
    sc = parse_scenario(data)
    t0, c0 = time.perf_counter(), time.process_time()
    f = simulate(sc)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    s = f.summary
    import simulator

    return {"code": str(Path(simulator.__file__).parent.parent), "name": name, "requests": requests, "wall_s": wall, "cpu_s": cpu, "steps": f.stats.steps,
            "mean_batch": s["utilisation"]["mean_batch_seqs"], "simulated_s": s["throughput"]["duration_s"]}  # fmt: skip


def _in_fresh_process(name: str, requests: int, code: str | None) -> dict:
    cmd = [sys.executable, __file__, "--row", name, "--requests", str(requests)] + (
        ["--code", code] if code else []
    )
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _tree(rev: str) -> tuple[str, str]:
    """Commit `rev`'s files in a temporary folder (git archive: no worktree, nothing else changed), and its
    short hash."""
    root = _checkout.ROOT
    short = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", rev], check=True,
                           stdout=subprocess.PIPE, text=True).stdout.strip()  # fmt: skip
    d = tempfile.mkdtemp(prefix=f"sim_speed_{short}_")
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", rev], check=True, stdout=subprocess.PIPE
    ).stdout
    subprocess.run(["tar", "-x", "-C", d], input=archive, check=True)
    return d, short


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--only", choices=list(VARIANTS), help="run one variant")
    ap.add_argument(
        "--beside", metavar="REV", help="also measure this commit's code, alternating with this tree"
    )
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "sim_speed.md"))
    ap.add_argument("--row", help=argparse.SUPPRESS)  # (one variant, in a fresh process)
    ap.add_argument("--code", help=argparse.SUPPRESS)  # (the tree whose simulator that row runs)
    args = ap.parse_args()
    if args.row:
        if args.code:
            sys.path.insert(0, args.code)
        print(json.dumps(measure(args.row, args.requests)))
        return
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(
            0, {min(os.sched_getaffinity(0))}
        )  # one core (rows in fresh processes inherit it)
    names = [n for n in VARIANTS if not args.only or n == args.only]
    trees: list[tuple[str, str | None]] = [("this tree", None)]
    if args.beside:
        other, short = _tree(args.beside)
        trees.append((short if short.startswith(args.beside) else f"{short} ({args.beside})", other))
    rows = []
    for i, name in enumerate(names):
        order = trees if i % 2 else trees[::-1]  # (the other tree first in every other variant)
        for label, code in order:
            r = _in_fresh_process(name, args.requests, code) if args.beside else measure(name, args.requests)
            r["tree"] = label
            assert code is None or r["code"] == code, r["code"]  # (that tree's simulator, not this one's)
            rows.append(r)
            print(f"{name} [{label}]: {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU, "
                  f"{r['requests'] / r['cpu_s']:,.0f} req/CPU-s, {r['steps'] / r['cpu_s']:,.0f} steps/CPU-s", flush=True)  # fmt: skip
    head = ("| scenario | code | requests | wall (s) | CPU (s) | requests/CPU-s | steps | steps/CPU-s | mean batch "
            "| simulated (h) |")  # fmt: skip
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (names.index(r["name"]), r["tree"] != "this tree")):
        lines.append(
            f"| {r['name']} | {r['tree']} | {r['requests']:,} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} "
            f"| {r['requests'] / r['cpu_s']:,.0f} | {r['steps']:,} | {r['steps'] / r['cpu_s']:,.0f} "
            f"| {r['mean_batch']:.1f} | {r['simulated_s'] / 3600:.1f} |"
        )
    proc = platform.processor() or platform.machine()
    text = (
        "\n".join(lines) + f"\n\nOne core of {proc}, Python {platform.python_version()}, load average "
        f"{os.getloadavg()[0]:.1f} at the end (wall time counts the wait for the core; CPU time is the work).\n"
    )
    print("\n" + text)
    cmd = f"python benchmarks/sim_speed.py --requests {args.requests}" + (
        f" --beside {args.beside}" if args.beside else ""
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(f"# Simulator speed\n\n`{cmd}`\n\n{text}")


if __name__ == "__main__":
    main()
