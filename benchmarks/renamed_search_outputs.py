"""Proof that the `serving` sub-blocks change a search's outputs only in how the swept fields are spelled.

    python benchmarks/renamed_search_outputs.py --check /work/base_digests_aa0d2a9.json

Runs each shipped search example (`search --workers 1`), spells every renamed field path the previous
release's way (`serving.batching.max_num_seqs` → `serving.max_num_seqs`, from scenario.SERVING_RENAMED) in
search.csv, configs.jsonl and the frontier files, and compares their digests (benchmarks/same_outputs.py's,
clock columns left out) with digests saved before the change. Prints a table and writes it to `--table`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.same_outputs import digest, examples  # noqa: E402
from simulator.scenario import SERVING_RENAMED  # noqa: E402


def old_spelling(text: str) -> str:
    """The text with each field path of now spelled as the previous release spelled it."""
    for old, new in SERVING_RENAMED.items():
        if not new.startswith("workload."):
            text = text.replace(f"serving.{new}", f"serving.{old}")
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", type=Path, required=True, help="digests saved before (same_outputs.py --save)")
    ap.add_argument(
        "--table", type=Path, default=ROOT / "benchmarks" / "results" / "renamed_search_outputs.md"
    )
    args = ap.parse_args(argv)
    before = json.loads(args.check.read_text())
    rows = []
    with tempfile.TemporaryDirectory(prefix="renamed-search-") as tmp:
        for name, verb in examples():
            if verb != "search":
                continue
            out = Path(tmp) / name
            cmd = [sys.executable, "-m", "simulator", "search", str(ROOT / "examples" / f"{name}.yaml")]
            subprocess.run(
                cmd + ["--out", str(out), "--workers", "1"], cwd=ROOT, check=True, capture_output=True
            )
            for path in sorted(p for p in out.rglob("*") if p.is_file() and p.suffix in (".csv", ".jsonl")):
                key = f"{name}/{path.relative_to(out)}"
                as_now = digest(path)
                path.write_text(old_spelling(path.read_text()))
                as_before = digest(path)
                same = "same" if as_before == before.get(key) else "DIFFERENT"
                rows.append((key, "same" if as_now == before.get(key) else "renamed", same))
    lines = ["| output | as written now | with the old field names |", "|---|---|---|"]
    lines += [f"| {k} | {a} | {b} |" for k, a, b in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    args.table.write_text(text)
    return 0 if all(b == "same" for _, _, b in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
