"""Proof that a behaviour-preserving change preserves behaviour: every example's outputs, byte for byte.

    python benchmarks/same_outputs.py --save /tmp/before.json     # on the commit before the change
    python benchmarks/same_outputs.py --check /tmp/before.json    # after it: exit 1 on any difference

Runs every example under examples/ (`run` for scenarios, `search --workers 1` for searches) into a temporary
folder and hashes each output file (summary.json, requests.csv, timeline.csv, search.csv, ...), and redoes
the simulator side of every committed fidelity table (`benchmarks/fidelity.py --resimulate`) into another. The only
parts left out are what a clock decides: summary.json's wall-time figures (any key naming `wall`) and
search tables' wall-time columns, and the code hash heading a search's journal. `scenario.yaml` (the scenario echoed back) is hashed
too but reported apart, since a schema change may rewrite how it is spelled without changing a result.
The table of files and digests is printed and written to `--table` (default benchmarks/results/same_outputs.md).
With `--added-keys-only`, summary.json is hashed without the keys a change added on purpose (listed below):
a change that only adds keys then shows every file the same, which proves the earlier keys unchanged.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WALL_COLUMNS = ("wall_s", "sim_wall_s", "search_wall_s")  # clock-decided columns of search tables


# Summary keys a change added on purpose, dropped from summary.json before hashing under --added-keys-only:
# the digests then prove that every key that was there before is byte-identical (issue 12 added vLLM bench
# serve's names at the top level, the per-user and per-GPU rates under `throughput`, and `expected_error`).
VLLM_LATENCY = re.compile(r"(mean|median|std|p[0-9.]+)_(ttft|tpot|itl|e2el)_ms")
ADDED_TOP = {"duration", "completed", "total_input_tokens", "total_output_tokens", "request_throughput",
             "request_goodput", "output_throughput", "total_token_throughput", "expected_error"}  # fmt: skip
ADDED_THROUGHPUT = {"per_user_output_tokens_per_s", "output_tokens_per_s_per_gpu"}
ADDED_ONLY = False  # set by --added-keys-only


def _added(path: tuple[str, ...]) -> bool:
    if len(path) == 1:
        return path[0] in ADDED_TOP or VLLM_LATENCY.fullmatch(path[0]) is not None
    return len(path) == 2 and path[0] == "throughput" and path[1] in ADDED_THROUGHPUT


def _without_clock(data, path: tuple[str, ...] = ()):
    """The summary less every figure a clock decides (keys naming wall time, at any depth), and under
    --added-keys-only less the keys ADDED_TOP / ADDED_THROUGHPUT name."""
    if isinstance(data, dict):
        return {
            k: _without_clock(v, (*path, k))
            for k, v in data.items()
            if "wall" not in k and not (ADDED_ONLY and _added((*path, k)))
        }
    if isinstance(data, list):
        return [_without_clock(v) for v in data]
    return data


def _digest_summary(text: str) -> str:
    data = _without_clock(json.loads(text))
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _digest_csv(text: str) -> str:
    rows = list(csv.reader(io.StringIO(text)))
    if rows:
        keep = [i for i, name in enumerate(rows[0]) if name not in WALL_COLUMNS]
        rows = [[row[i] for i in keep if i < len(row)] for row in rows]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def digest(path: Path) -> str:
    text = path.read_text()
    if path.name == "summary.json":
        return _digest_summary(text)
    if path.suffix == ".csv":
        return _digest_csv(text)
    if path.suffix == ".jsonl":  # a search's journal: its header's key hashes the code itself, by design
        lines = [_without_clock(json.loads(line)) for line in text.splitlines() if line.strip()]
        for line in lines:
            line.pop("key", None) if "journal" in line else None
        return hashlib.sha256(json.dumps(lines, sort_keys=True).encode()).hexdigest()
    return hashlib.sha256(text.encode()).hexdigest()


def examples() -> list[tuple[str, str]]:
    """(name, verb) of every shipped example."""
    out = []
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        out.append((path.stem, "search" if path.stem.startswith("search") else "run"))
    return out


def run_all(workdir: Path) -> dict[str, str]:
    digests: dict[str, str] = {}
    for name, verb in examples():
        out = workdir / name
        cmd = [
            sys.executable,
            "-m",
            "simulator",
            verb,
            str(ROOT / "examples" / f"{name}.yaml"),
            "--out",
            str(out),
        ]
        cmd += ["--workers", "1"] if verb == "search" else []
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(
                f"error: {name}: `{' '.join(cmd)}` failed: {done.stderr.strip().splitlines()[-1:]}"
            )
        for path in sorted(p for p in out.rglob("*") if p.is_file()):
            digests[f"{name}/{path.relative_to(out)}"] = digest(path)
        print(f"  {name}: {sum(1 for k in digests if k.startswith(name + '/'))} files", file=sys.stderr)
    return digests


def resimulate_fidelity(workdir: Path) -> dict[str, str]:
    """The fidelity tables' simulator side, redone from the committed engine runs (`fidelity.py --resimulate`)."""
    digests: dict[str, str] = {}
    for raw in sorted((ROOT / "benchmarks" / "results" / "fidelity").iterdir()):
        if not raw.is_dir() or raw.name == "cpu":
            continue
        out = workdir / "fidelity-out"
        shutil.copytree(raw, out / "fidelity" / raw.name)
        cmd = [
            sys.executable,
            "benchmarks/fidelity.py",
            "--resimulate",
            "--profile",
            raw.name,
            "--out-dir",
            str(out),
        ]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(
                f"error: fidelity {raw.name}: `{' '.join(cmd)}` failed: {done.stderr.strip()[-300:]}"
            )
        for path in sorted((out / "fidelity" / raw.name).rglob("simulator_requests.csv")):
            digests[f"fidelity/{raw.name}/{path.parent.name}/{path.name}"] = digest(path)
        table = (out / f"fidelity_{raw.name}.md").read_text().splitlines()
        body = [line for line in table if "--resimulate" not in line]  # the line that quotes the command
        digests[f"fidelity/fidelity_{raw.name}.md"] = hashlib.sha256("\n".join(body).encode()).hexdigest()
        print(f"  fidelity {raw.name}: resimulated", file=sys.stderr)
    return digests


def compare(before: dict[str, str], after: dict[str, str]) -> list[tuple[str, str]]:
    rows = []
    for key in sorted(set(before) | set(after)):
        if key not in after:
            rows.append((key, "missing after"))
        elif key not in before:
            rows.append((key, "new after"))
        else:
            rows.append((key, "same" if before[key] == after[key] else "DIFFERENT"))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--save", type=Path, help="write the digests of this checkout's outputs here")
    group.add_argument("--check", type=Path, help="compare this checkout's outputs with digests saved before")
    ap.add_argument("--table", type=Path, default=ROOT / "benchmarks" / "results" / "same_outputs.md")
    ap.add_argument(
        "--added-keys-only",
        action="store_true",
        help="hash summary.json without the keys a change added on purpose (ADDED_TOP, ADDED_THROUGHPUT): "
        "'same' then means every earlier key is byte-identical",
    )
    args = ap.parse_args(argv)
    global ADDED_ONLY
    ADDED_ONLY = args.added_keys_only
    with tempfile.TemporaryDirectory(prefix="same-outputs-") as tmp:
        after = run_all(Path(tmp)) | resimulate_fidelity(Path(tmp))
    if args.save:
        args.save.write_text(json.dumps(after, indent=1, sort_keys=True))
        print(f"saved {len(after)} digests to {args.save}")
        return 0
    before = json.loads(args.check.read_text())
    rows = compare(before, after)
    results = [r for r in rows if not r[0].endswith("scenario.yaml")]
    echoes = [r for r in rows if r[0].endswith("scenario.yaml")]
    lines = ["| output | before vs after |", "|---|---|"] + [f"| {k} | {v} |" for k, v in results]
    bad = [r for r in results if r[1] != "same"]
    lines += [
        "",
        f"{len(results) - len(bad)} of {len(results)} result files identical; "
        f"{sum(v == 'same' for _, v in echoes)} of {len(echoes)} scenario echoes identical.",
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    args.table.parent.mkdir(parents=True, exist_ok=True)
    args.table.write_text(table)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
