"""Fleet scale: one forecast of 1,000 replicas of Llama-3.1-8B on H100s at 20,000 requests/s, in shards.

Poisson arrivals, chat lengths (lognormal, median 600 prompt and 150 output tokens), round robin.

The full run is one simulated hour (72 million requests); `--duration-s` scales it down to what a
machine allows. Each worker count runs in a fresh process (its peak memory its own) and reports wall
time, CPU time (the process and its shard workers), peak resident memory of the coordinator and of the
largest worker, and requests per second of wall and of CPU. Every row's per-request records are hashed:
the sharded runs must equal the single-process one. Sharding needs a router that decides up front; the
fleet uses round robin (simulator/shard.py).

    python benchmarks/fleet_scale.py --duration-s 60 --workers 1 2       # 1.2M requests, here
    python benchmarks/fleet_scale.py --workers 64 --ray auto             # the full hour on a Ray cluster
"""

from __future__ import annotations

import argparse
import copy
import hashlib
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


def one(args: argparse.Namespace) -> dict:
    """One row, in this process: simulate with `args.one` workers (1: the plain single-process run)."""
    from simulator.shard import simulate_sharded
    from simulator.simulation import simulate

    sc = scenario(args.replicas, args.rate, args.duration_s)
    t0, c0 = time.perf_counter(), time.process_time()
    if args.one == 1 and not args.ray:
        f = simulate(sc)
    else:
        f = simulate_sharded(sc, args.one, "ray" if args.ray else "processes", args.one, args.ray)
    wall = time.perf_counter() - t0
    me = resource.getrusage(resource.RUSAGE_SELF)
    t = f.table
    digest = hashlib.sha256()
    for name in ("replica", "scheduled_s", "first_token_s", "finish_s", "preemptions", "rejected"):
        digest.update(getattr(t, name).tobytes())
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
        "records_sha256": digest.hexdigest()[:16],
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
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "fleet_scale.md"))
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # (a row, in a fresh process)
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(one(args)))
        return
    rows = []
    for w in args.workers:
        cmd = [sys.executable, __file__, "--one", str(w), "--replicas", str(args.replicas), "--rate",
               str(args.rate), "--duration-s", str(args.duration_s)] + (["--ray", args.ray] if args.ray else [])  # fmt: skip
        # the full hour is 72 million requests, above the 10 million a scenario may ask for unasked
        env = os.environ | {"INFERPLAN_MAX_REQUESTS": "off"}
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
        row = json.loads(out.strip().splitlines()[-1])
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
        + "\n"
    )
    print("\n" + text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("# Fleet scale\n\n" + (__doc__ or "").split("\n\n")[0] + "\n\n" + text)


if __name__ == "__main__":
    main()
