"""Are the fitted engine profiles' figures today's? Each engine profile written by `calibrate from-benchmark` (its
header names the command) has its fitted and held-out runs forecast again through today's simulator with the
profile's own terms, beside the forecasts its table recorded when it was fitted; and its held-out medians as the
profile states them beside today's.

    python benchmarks/published_profiles_current.py   # no device: benchmarks/results/published_profiles_current.md

A profile's terms were fitted against the simulator of its day. The simulator, the cost model and the GPU
profiles have changed since for other reasons (our engine's MoE, MLA and decode pricing), and a forecast of a
published engine runs on today's: where its runs' forecasts moved, the errors its validation states (and
simulator.expected_error shows a user) are no longer the errors it has. The command in the profile's header fits
it again on today's code; the held-out runs stay held out.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from pathlib import Path

import _checkout  # noqa: F401  (the checkout's root on sys.path)
import yaml

from calibrate import from_benchmark as fb

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "published_profiles_current.md"
PREFIX = "written by python -m calibrate from-benchmark "
MOVED = 5e-4  # a forecast this far from its table's (|today / recorded - 1|) moved: its 4 digits differ


def stale(result: dict) -> bool:
    """Whether a profile's `check` found a forecast that moved (its header's command refits it)."""
    return result["largest"] >= MOVED


def fitted_profiles(folder: Path) -> list[tuple[Path, list[str]]]:
    """(profile, its from-benchmark arguments) of every engine profile whose header says it was fitted so."""
    out = []
    for path in sorted(folder.glob("*.yaml")):
        head = path.read_text().split("\n", 1)[0]
        if PREFIX in head:
            out.append((path, shlex.split(head.split(PREFIX, 1)[1])))
    return out


def terms_of(profile: dict, terms: tuple[str, ...]) -> dict[str, float]:
    """The profile's value of each fitted term, as the fit wrote them."""
    host, k = profile["host"], profile["kernels"]
    value = {"per_step_s": host["per_step_s"]["value"], "per_sequence_s": host["per_sequence_s"]["value"],
             "per_prompt_token_s": host["per_prompt_token_s"]["value"], "gemm": k["gemm"],
             "attention": k["attention_prefill"], "attention_prefill": k["attention_prefill"],
             "attention_decode": k["attention_decode"]}  # fmt: skip
    return {t: float(value[t]) for t in terms}


def recorded(table: Path) -> dict[tuple[str, str], float]:
    """(run file name, metric) -> forecast, from a from-benchmark table's rows."""
    out = {}
    for line in table.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 5 and cells[1] in fb.FIT_METRICS:
            out[(cells[0], cells[1])] = float(cells[3])
    return out


def check(path: Path, args: list[str]) -> dict:
    """One profile: its runs' forecasts today against its table's, and its held-out medians stated and today."""
    a, terms, weights, over = fb.parse(args)
    profile = yaml.safe_load(path.read_text())
    s = fb.settings(a, terms, weights, over, int(profile["scheduling"]["max_num_batched_tokens"]))
    values = terms_of(profile, terms)
    train, held = fb.measured_runs(a)
    rows = fb.errors(train + held, s, values)
    then = recorded(ROOT / a.table)
    moved = [
        abs(fc / then[(Path(src).name, k)] - 1) for src, k, _, fc, _ in rows if (Path(src).name, k) in then
    ]
    held_now = fb.validation_of([r for r in rows if r[0] in {h.source for h in held}], [], "")
    stated = {m["metric"]: m["median_abs_pct"] for m in (profile.get("validation") or {}).get("metrics", [])}
    now = {m.metric: m.median_abs_pct for m in held_now.metrics} if held else {}
    return {"profile": path.stem, "table": a.table, "figures": len(rows), "compared": len(moved),
            "unchanged": sum(m < MOVED for m in moved), "largest": max(moved, default=0.0),
            "median_moved": statistics.median(moved) if moved else 0.0, "stated": stated, "now": now}  # fmt: skip


def report(results: list[dict]) -> str:
    lines = ["# Fitted engine profiles against today's simulator", "",
             "`python benchmarks/published_profiles_current.py`: each profile that `calibrate from-benchmark` "
             "fitted, its runs forecast again with the profile's own terms. *unchanged*: forecasts equal to the "
             "table's to its 4 digits; *moved*: |today / recorded − 1|. Held out: median |error| per metric as "
             "the profile states it → as today's simulator gives it with the same terms.", "",
             "| profile | forecasts unchanged | moved: median / largest | held out: stated → today |",
             "|---|---|---|---|"]  # fmt: skip
    for r in results:
        held = "; ".join(
            f"{k.removesuffix(' (held-out runs)')} {v:.1f} → {r['now'].get(k, float('nan')):.1f}%"
            for k, v in r["stated"].items()
        )
        lines.append(f"| {r['profile']} | {r['unchanged']} of {r['compared']} | {r['median_moved']:.1%} / "
                     f"{r['largest']:.1%} | {held or '—'} |")  # fmt: skip
    moved = [r["profile"] for r in results if stale(r)]
    lines += ["", (f"Stale (a forecast moved): {', '.join(moved)}. Their header's command fits them again on today's "
                   "code." if moved else "Every fitted profile's forecasts are today's.")]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profiles", type=Path, default=ROOT / "engine_profiles", help="engine profiles folder")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    found = fitted_profiles(args.profiles)
    if not found:
        print(
            f"error: --profiles {args.profiles}: no profile fitted by calibrate from-benchmark",
            file=sys.stderr,
        )
        return 2
    text = report([check(path, a) for path, a in found])
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
