"""Fleet scale: one forecast of 1,000 replicas of Llama-3.1-8B on H100s at 20,000 requests/s, in shards.

Poisson arrivals, chat lengths (lognormal, median 600 prompt and 150 output tokens), round robin.

The full run is one simulated hour (72 million requests); `--duration-s` scales it down to what a
machine allows. Each worker count runs in a fresh process (its peak memory its own) and reports wall
time, CPU time (the process and its shard workers), peak resident memory of the coordinator and of the
largest worker, and requests per second of wall and of CPU. Every row's per-request records are hashed:
the sharded runs must equal the single-process one. Sharding needs a router that decides up front; the
fleet uses round robin (simulator/shard.py).

    python benchmarks/fleet_scale.py --duration-s 60 --workers 1 2       # 1.2M requests, here
    python benchmarks/fleet_scale.py --workers 64 --ray auto --stream --out DIR   # the hour on a Ray cluster

`--stream` (simulator/fleet_stream.py): the coordinator stays flat (workload drawn by each shard, records
written by the shards in numpy chunks to --records-dir, summary merged from sums and percentile sketches);
`--out` is then a folder for the table (fleet_scale.md), the row (row.json) and summary.json. The full hour
on one 16-core machine, stopping in time at --deadline-s and continued by the same command with --resume:

    python3 benchmarks/fleet_scale.py --replicas 1000 --rate 20000 --duration-s 3600 --workers 15 \
        --stream --deadline-s 500 --out $OUT/fleet72m
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import _checkout  # noqa: F401  (first: the checkout's root on sys.path)

from simulator.scenario import DEFAULT_SCENARIO, apply_overrides, parse_scenario  # noqa: E402

# the chat preset's lengths (simulator/presets.py): at 20 requests/s a replica runs about 65 sequences at once
# and keeps up; the default scenario's conversation-trace lengths overload it there (17.4 requests/s sustained)
FLEET = [
    "cluster.router=round_robin",
    "workload.arrival.process=poisson",
    "workload.prompt_tokens={dist: lognormal, median: 600, sigma: 0.8, max: 8000}",
    "workload.output_tokens={dist: lognormal, median: 150, sigma: 0.7, max: 1500}",
]


RESULTS = Path(__file__).parent / "results" / "fleet_scale.md"


def scenario(replicas: int, rate: float, duration_s: float):
    """The default scenario's model and GPU as a fleet behind round robin, with chat lengths."""
    n = int(round(rate * duration_s))
    data = apply_overrides(
        copy.deepcopy(DEFAULT_SCENARIO),
        [
            f"cluster.replicas={replicas}",
            *FLEET,
            f"workload.arrival.rate_per_s={rate}",
            f"workload.num_requests={n}",
        ],
    )
    return parse_scenario(data)


def streamed(args: argparse.Namespace) -> dict:
    """One streamed row, in this process: coordinator and shards' CPU and peak memory, the summary."""
    from simulator.fleet_stream import Incomplete, simulate_streamed

    sc = scenario(args.replicas, args.rate, args.duration_s)
    t0, c0 = time.perf_counter(), time.process_time()
    log = lambda line: print(f"[{time.perf_counter() - t0:6.0f} s] {line}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        f = simulate_streamed(sc, args.records_dir, args.one, args.shards, "ray" if args.ray else "processes",
                              args.ray, args.resume, args.deadline_s, args.chunk_rows, log=log)  # fmt: skip
    except Incomplete as e:
        return {"incomplete": str(e), "wall_s": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    s = f.summary
    own_cpu = time.process_time() - c0
    shard_cpu = s["simulation"]["shard_cpu_s"]
    n = s["requests"]["total"]
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "summary.json").write_text(json.dumps(s, indent=2, default=str) + "\n")
    return {
        "workers": args.one,
        "backend": ("ray" if args.ray else "processes") + ", streamed",
        "requests": n,
        "wall_s": wall,
        "cpu_s": own_cpu + sum(shard_cpu),
        # on idle cores: the coordinator's CPU, then a worker's shards (they run one after another on it)
        "critical_cpu_s": own_cpu + max(max(shard_cpu), sum(shard_cpu) / args.one),
        "worker_rate": n / sum(shard_cpu),
        "rss_coordinator_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_worker_mib": s["simulation"]["shard_peak_rss_mib"],
        "records_sha256": s["simulation"]["records_digest"][:16],
        "verdict": s["stability"]["verdict"],
        "ttft_p50_s": s["latency_s"]["ttft"]["p50"],
        "shards": len(shard_cpu),
        "resumed": bool(args.resume),
    }


def one(args: argparse.Namespace) -> dict:
    """One row, in this process: simulate with `args.one` workers (1: the plain single-process run)."""
    from simulator.fleet_stream import records_digest, table_chunks
    from simulator.shard import simulate_sharded
    from simulator.simulation import simulate

    if args.stream:
        return streamed(args)
    sc = scenario(args.replicas, args.rate, args.duration_s)
    t0, c0 = time.perf_counter(), time.process_time()
    if args.one == 1 and not args.ray:
        f = simulate(sc)
    else:
        f = simulate_sharded(sc, args.one, "ray" if args.ray else "processes", args.one, args.ray)
    wall = time.perf_counter() - t0
    me = resource.getrusage(resource.RUSAGE_SELF)
    t = f.table
    s = f.summary
    own_cpu = time.process_time() - c0
    shard_cpu = s["simulation"].get("shard_cpu_s") or [own_cpu]
    return {
        "workers": args.one,
        "backend": "ray" if args.ray else ("processes" if args.one > 1 else "one process"),
        "requests": len(t),
        "wall_s": wall,
        # this process's CPU and its shard workers' (they report their own: forkserver children are not ours)
        "cpu_s": own_cpu + sum(s["simulation"].get("shard_cpu_s", [])),
        # on idle cores: the coordinator's CPU and then the slowest shard's (the shards overlap)
        "critical_cpu_s": own_cpu + max(shard_cpu) if len(shard_cpu) > 1 else own_cpu,
        "worker_rate": len(t) / sum(shard_cpu),  # requests per CPU second of a worker, over all of them
        "rss_coordinator_mib": me.ru_maxrss / 1024,
        "rss_worker_mib": s["simulation"].get(
            "shard_peak_rss_mib", 0.0
        ),  # the largest shard worker (0: none)
        # (order-free: a streamed run's chunks digest alike)
        "records_sha256": records_digest(table_chunks(t))[:16],
        "verdict": s["stability"]["verdict"],
        "ttft_p50_s": s["latency_s"]["ttft"]["p50"],
        "sharding": s.get("sharding"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicas", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=20_000.0, help="requests per second into the fleet")
    ap.add_argument("--duration-s", type=float, default=3600.0, help="simulated seconds of arrivals")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts, one row each")
    ap.add_argument("--ray", metavar="ADDRESS", help="run the shards on this Ray cluster")
    ap.add_argument("--out", help="the table (default results/fleet_scale.md); with --stream a folder")
    ap.add_argument("--stream", action="store_true", help="streamed runs: a coordinator of flat memory")
    ap.add_argument("--records-dir", default="/tmp/inferplan-fleet-records",
                    help="--stream: where the shards write their records (kept for --resume)")  # fmt: skip
    ap.add_argument("--shards", type=int, help="--stream: shards (default twice the workers)")
    ap.add_argument("--deadline-s", type=float, help="--stream: stop in time to be resumed after this long")
    ap.add_argument("--resume", action="store_true", help="--stream: run only the shards not on disk")
    ap.add_argument(
        "--chunk-rows", type=int, default=1_000_000, help="--stream: requests drawn and written at a time"
    )
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # (a row, in a fresh process)
    args = ap.parse_args()
    if args.stream and args.one is None and len(args.workers) > 1:
        ap.error("--stream runs one worker count (one row) at a time")
    out_md = Path(args.out) / "fleet_scale.md" if args.stream and args.out else Path(args.out or RESULTS)
    if args.one is not None:
        print(json.dumps(one(args)))
        return
    rows = []
    for w in args.workers:
        cmd = [sys.executable, __file__, "--one", str(w), "--replicas", str(args.replicas), "--rate",
               str(args.rate), "--duration-s", str(args.duration_s)] + (["--ray", args.ray] if args.ray else [])  # fmt: skip
        if args.stream:
            cmd += ["--stream", "--records-dir", args.records_dir] + (["--out", args.out] if args.out else [])
            cmd += (["--shards", str(args.shards)] if args.shards else []) + (
                ["--resume"] if args.resume else []
            )
            cmd += ["--deadline-s", str(args.deadline_s)] if args.deadline_s else []
            cmd += ["--chunk-rows", str(args.chunk_rows)]
        # the full hour is 72 million requests, above the 10 million a scenario may ask for unasked
        env = os.environ | {"INFERPLAN_MAX_REQUESTS": "off"}
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env=env).stdout
        row = json.loads(out.strip().splitlines()[-1])
        if "incomplete" in row:
            print(
                f"stopped after {row['wall_s']:.0f} s: {row['incomplete']} (the same command with --resume)"
            )
            return
        rows.append(row)
        print(
            f"{w} worker(s): {row['wall_s']:.1f} s wall, {row['cpu_s']:.1f} s CPU, "
            f"{row['requests'] / row['wall_s']:,.0f} req/s, peak RSS {row['rss_coordinator_mib']:,.0f} MiB "
            f"+ {row['rss_worker_mib']:,.0f} MiB per worker, records {row['records_sha256']}",
            flush=True,
        )
    base = rows[0]
    head = (
        "| workers | backend | requests | wall (s) | CPU (s) | requests/s | speed-up | per-worker requests/CPU-s "
        "| CPU critical path (s) | speed-up on idle cores | peak RSS coordinator (MiB) | peak RSS worker (MiB) "
        "| records sha256 | verdict |"
    )
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        lines.append(
            f"| {r['workers']} | {r['backend']} | {r['requests']:,} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} "
            f"| {r['requests'] / r['wall_s']:,.0f} | {base['wall_s'] / r['wall_s']:.2f}x "
            f"| {r['worker_rate']:,.0f} | {r['critical_cpu_s']:.1f} | {base['critical_cpu_s'] / r['critical_cpu_s']:.2f}x "
            f"| {r['rss_coordinator_mib']:,.0f} | {r['rss_worker_mib']:,.0f} "
            f"| {r['records_sha256']} | {r['verdict']} |"
        )
    same = len({r["records_sha256"] for r in rows}) == 1
    proc = platform.processor() or platform.machine()
    text = (
        "\n".join(lines)
        + f"\n\n{args.replicas:,} replicas, {args.rate:,.0f} requests/s for {args.duration_s:,.0f} simulated s; "
        f"per-request records {'identical' if same else 'DIFFERENT'} across rows. {os.cpu_count()} CPUs of "
        f"{proc}, Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f} at the end.\n"
        f"\n    python benchmarks/fleet_scale.py --replicas {args.replicas} --rate {args.rate:g} "
        f"--duration-s {args.duration_s:g} --workers {' '.join(map(str, args.workers))}"
        + (f" --ray {args.ray}" if args.ray else "")
        + (" --stream" if args.stream else "")
        + (f" --shards {args.shards}" if args.shards else "")
        + (f" --deadline-s {args.deadline_s:g}" if args.deadline_s else "")
        + (" --resume" if args.resume else "")
        + (f" --chunk-rows {args.chunk_rows}" if args.stream and args.chunk_rows != 1_000_000 else "")
        + "\n"
    )
    if args.stream:
        r = rows[0]
        again = (
            " (resumed: wall is this call's, CPU every shard's, earlier calls' too)" if r["resumed"] else ""
        )
        text += (
            f"\nStreamed: {r['shards']} shards{again}; percentiles of TTFT/TPOT/e2e/queueing sketched "
            "(summary.json `percentiles`).\n"
        )
        (out_md.parent / "row.json").parent.mkdir(parents=True, exist_ok=True)
        (out_md.parent / "row.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n" + text)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text("# Fleet scale\n\n" + (__doc__ or "").split("\n\n")[0] + "\n\n" + text)


if __name__ == "__main__":
    main()
