"""Two kernel profiles of the same steps side by side: what an engine change did, step by step and kernel by kernel.

    python benchmarks/kernel_profile_compare.py BEFORE AFTER [--out FILE.md]   # no device

BEFORE and AFTER are `benchmarks/kernel_profile.py` outputs (its kernel_profile.json, or the folder holding it),
typically from one device call that profiled a copy of the old checkout and then the new one on one machine. For
every case in both: the served step (the graphed runner, as the serving loop runs it), its kernels' device time,
the eager step, the host's issue time (`--host` runs) and the kernel launches a step, before → after; then the
kernels whose time a step moved by at least 5 µs and 2% (or that appear in one run only), among the 40 longest
of either run's eager step.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import _checkout  # noqa: F401  (the checkout's root on sys.path)

# (key, label, scale to display, unit)
FIGURES = (
    ("served_step_s", "served step", 1e3, "ms"),
    ("served_kernel_sum_us", "served kernels", 1e-3, "ms"),
    ("eager_step_s", "eager step", 1e3, "ms"),
    ("kernel_sum_us", "eager kernels", 1e-3, "ms"),
    ("issue_s", "host issue", 1e3, "ms"),
    ("launches_per_step", "launches", 1.0, ""),
)
MIN_US, MIN_SHARE = 5.0, 0.02


def load(path: Path) -> dict:
    """The cases of a kernel_profile.json (or of the one in folder `path`)."""
    f = path / "kernel_profile.json" if path.is_dir() else path
    return json.loads(f.read_text())["cases"]


def _cell(a, b, scale: float) -> str:
    if a is None or b is None:
        return "" if a is None and b is None else f"{(a if a is not None else b) * scale:.2f} (one run)"
    pct = f" ({100 * (b / a - 1):+.1f}%)" if a else ""
    return f"{a * scale:.2f} → {b * scale:.2f}{pct}"


def moved_kernels(before: dict, after: dict) -> list[tuple[str, float | None, float | None]]:
    """(kernel, µs a step before, after) for the kernels of either run's top list whose time moved by at least
    MIN_US and MIN_SHARE, or that are in one run's list only; largest move first."""
    a = {r["kernel"]: r["us_per_step"] for r in before.get("top", [])}
    b = {r["kernel"]: r["us_per_step"] for r in after.get("top", [])}
    out = []
    for k in a.keys() | b.keys():
        x, y = a.get(k), b.get(k)
        if x is None or y is None or (abs(y - x) >= MIN_US and abs(y - x) >= MIN_SHARE * max(x, y)):
            out.append((k, x, y))
    return sorted(out, key=lambda r: -abs((r[2] or 0.0) - (r[1] or 0.0)))


def report(before: dict, after: dict, names: tuple[str, str]) -> str:
    lines = [
        "# Kernel profiles before and after",
        "",
        f"Before: `{names[0]}`; after: `{names[1]}` (`python benchmarks/kernel_profile_compare.py`). Times per step; "
        "launches: device kernels, copies and memsets a step (runs before the count was kept leave it blank).",
        "",
        "| case | " + " | ".join(label for _, label, _, _ in FIGURES) + " |",
        "|---|" + "---|" * len(FIGURES),
    ]
    common = [c for c in before if c in after]
    for case in common:
        cells = [_cell(before[case].get(k), after[case].get(k), s) for k, _, s, _ in FIGURES]
        cells = [f"{c} {u}" if c and u else c for c, (_, _, _, u) in zip(cells, FIGURES, strict=True)]
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    for case in common:
        moved = moved_kernels(before[case], after[case])
        if not moved:
            continue
        lines += [
            "",
            f"**{case}**: kernels that moved (µs a step, eager)",
            "",
            "| kernel | before | after |",
            "|---|---|---|",
        ]
        for k, x, y in moved:
            lines.append(
                f"| `{k[:100]}` | {'' if x is None else f'{x:.1f}'} | {'' if y is None else f'{y:.1f}'} |"
            )
    only = sorted(set(before) ^ set(after))
    if only:
        lines += ["", "In one run only: " + ", ".join(only) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path, help="kernel_profile.json (or its folder) of the old code")
    ap.add_argument("after", type=Path, help="kernel_profile.json (or its folder) of the new code")
    ap.add_argument("--out", type=Path, help="also write the table here")
    args = ap.parse_args(argv)
    for p in (args.before, args.after):
        f = p / "kernel_profile.json" if p.is_dir() else p
        if not f.is_file():
            print(
                f"error: {p}: no kernel_profile.json there; pass a kernel_profile.py --out folder",
                file=sys.stderr,
            )
            return 2
    text = report(load(args.before), load(args.after), (args.before.as_posix(), args.after.as_posix()))
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
