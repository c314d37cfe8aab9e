"""Memory and time of reading a large trace: a generated 10^6-row CSV (and JSONL) through `read_trace`.

Each reading runs in a new process whose code comes from a checkout (`--before`, default /work/main,
and this one), so the two readers are compared on the same file. Peak RSS is the process's high-water
mark (VmHWM) less its mark after the imports; the tracemalloc peak counts Python and numpy
allocations only (a separate run: tracing slows the read). The trace's own arrays are 24 B per row
(the JSONL's two hash ids a row add 24 B more in this reader: ids and offsets; the old one kept lists).

    python benchmarks/trace_memory.py                    # 10^6 rows; writes benchmarks/results/trace_memory.md
    python benchmarks/trace_memory.py --rows 100000 --before /path/to/other/checkout
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

# Run in the child: import the reader, note the RSS mark, read, report peak and wall time.
PROBE = """
import json, sys, time, tracemalloc

def hwm_kib():  # this process's RSS high-water mark (ru_maxrss would carry the parent's over exec)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
from simulator.workload import read_trace  # (both checkouts have it there: the same imports either way)
path, traced = sys.argv[1], sys.argv[2] == "1"
base_kib = hwm_kib()
if traced:
    tracemalloc.start()
t0 = time.perf_counter()
t = read_trace(path)
wall_s = time.perf_counter() - t0
peak = tracemalloc.get_traced_memory()[1] if traced else 0
rss_kib = hwm_kib()
arrays = t.prompt_tokens.nbytes + t.output_tokens.nbytes + (t.arrival_s.nbytes if t.arrival_s is not None else 0)
arrays += sum(a.nbytes for a in (getattr(t.hash_ids, "ids", None), getattr(t.hash_ids, "offsets", None)) if a is not None)
print(json.dumps({"rss_mb": (rss_kib - base_kib) / 1024, "process_mb": rss_kib / 1024, "traced_mb": peak / 2**20, "wall_s": wall_s,
                  "rows": len(t.prompt_tokens), "arrays_mb": arrays / 2**20,
                  "first": [float(t.arrival_s[1]), int(t.prompt_tokens[-1])]}))
"""


def write_traces(folder: Path, rows: int, seed: int = 0) -> tuple[Path, Path]:
    """A CSV in the splitwise layout and a Mooncake JSONL, both `rows` long with increasing times."""
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(0.05, rows))
    prompt = rng.integers(1, 8000, rows)
    output = rng.integers(1, 1000, rows)
    csv_path, jsonl_path = folder / "big.csv", folder / "big.jsonl"
    with csv_path.open("w") as f:
        f.write("arrived_at,num_prefill_tokens,num_decode_tokens\n")
        f.writelines(f"{a:.6f},{p},{o}\n" for a, p, o in zip(t.tolist(), prompt.tolist(), output.tolist()))
    with jsonl_path.open("w") as f:
        f.writelines(
            f'{{"timestamp": {int(a * 1000)}, "input_length": {p}, "output_length": {o}, "hash_ids": [{p % 97}, {p % 89}]}}\n'
            for a, p, o in zip(t.tolist(), prompt.tolist(), output.tolist())
        )
    return csv_path, jsonl_path


def measure(code: Path, trace: Path, traced: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code)}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(trace), "1" if traced else "0"],
        env=env,
        cwd=code,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--before", type=Path, default=Path("/work/main"), help="checkout with the old reader")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "trace_memory.md")
    args = ap.parse_args()
    lines = [
        f"# Reading a {args.rows:,}-row trace: peak memory and time",
        "",
        f"`python benchmarks/trace_memory.py --rows {args.rows}` (before: `{args.before}`; after: this checkout).",
        "Peak RSS is above the process's mark after imports (process peak: the whole process, as "
        "`/usr/bin/time -v` reports it); tracemalloc counts Python and numpy allocations.",
        "arrays MB: the returned arrays (after: with the JSONL's hash ids, 2 a row, flat with offsets).",
        "",
        "| trace | reader | rows | arrays MB | peak RSS MB | process peak RSS MB | tracemalloc peak MB | read s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        csv_path, jsonl_path = write_traces(Path(tmp), args.rows)
        for trace in (csv_path, jsonl_path):
            results = {}
            for label, code in (("before", args.before), ("after", ROOT)):
                rss, traced = measure(code, trace, False), measure(code, trace, True)
                results[label] = rss
                lines.append(
                    f"| {trace.suffix[1:]} | {label} | {rss['rows']:,} | {rss['arrays_mb']:.1f} | "
                    f"{rss['rss_mb']:.0f} | {rss['process_mb']:.0f} | {traced['traced_mb']:.0f} | {rss['wall_s']:.2f} |"
                )
                print(lines[-1], flush=True)
            # the same arrays either way (spot values; the examples' per-request CSVs are diffed separately)
            assert results["before"]["first"] == results["after"]["first"], results
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
