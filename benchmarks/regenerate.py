"""Every committed table and fitted engine profile that a GPU profile, the cost model or the simulator feeds, written
again from the stored runs, in the order they feed each other. No device.

    python benchmarks/regenerate.py            # all steps (about 4 minutes on one core)
    python benchmarks/regenerate.py --list     # the steps and what each writes
    python benchmarks/regenerate.py --from validate_h200   # from that step on
    python benchmarks/regenerate.py --resume   # after a failure or an interrupt: from the step that did not finish

After a change to `hardware_profiles/`, `core/`, `simulator/` or a stored engine run, tests fail on each table that
moved (the "is current" tests under tests/); this brings all of them to today's code at once. First the fitted
engine profiles (transformers' from its runs on the H200; the published engines' where a forecast moved, each with
the command in its header, on the same held-out split), then what prices runs through them, then the tables of our
engine's stored runs. Each step is a command of the repository's own; the first that fails stops the run with its
last lines, and `--resume` starts again from it. Last, the committed files the run changed (`git status`).

Not run here, as they are fits of GPU measurements, not tables: `benchmarks/fit_spec_round.py --write` and
`python -m calibrate.group_from_run` (each writes terms into a GPU profile; their commands are in the profile's
calibration notes). The README's figures are checked by tests/benchmarks/test_readme_at_a_glance.py, not written.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import _checkout  # noqa: F401  (the checkout's root on sys.path)

ROOT = Path(__file__).resolve().parent.parent
R = "benchmarks/results"
K = f"{R}/engine_kernels_h200"
STATE = ROOT / "build" / "regenerate.json"
PY = "python"


# name | command ("python": this interpreter; "refit-stale": every fitted engine profile a forecast of which moved,
# refitted with the command in its header) | what it writes (a leading "dated": a table that carries the day it was
# written, kept as it was where nothing else moved)
TABLE = f"""
transformers_profile | python -m calibrate.engine_fit calibration_runs/transformers_h200 --gpu h200 --out engine_profiles/ | engine_profiles/transformers*.yaml, {R}/engine_fit_transformers_h200.md
published_profiles | refit-stale | engine_profiles/ that calibrate from-benchmark fitted, where stale
published_low_load | python benchmarks/published_low_load_checks.py --write | {R}/published_low_load_checks.md, the engine profiles' validation.loads
gpu_transfer | python benchmarks/gpu_transfer.py | {R}/gpu_transfer.md
gpu_published | python benchmarks/gpu_published.py | {R}/gpu_published.md
spec_int4 | python benchmarks/compare_spec_int4.py {R}/spec_int4/spec_int4_h200_session22.json | {R}/fidelity_spec_int4_h200.md
spec_int4_session23 | python benchmarks/compare_spec_int4.py {R}/spec_int4/spec_int4_h200_session23.json --out-dir {R}/spec_int4/session23 | {R}/spec_int4/session23/fidelity_spec_int4_h200.md
spec_rounds | python benchmarks/spec_round_steps.py {R}/spec_int4/spec_int4_h200_session22.json --steps {R}/spec_int4/session22_steps --out {R}/spec_rounds_h200.md | {R}/spec_rounds_h200.md
validate_h200 | python -m calibrate validate h200 --stored --out {R}/validate_h200.md | dated {R}/validate_h200.md
validate_h100 | python -m calibrate validate h100-sxm --stored --out {R}/validate_h100.md | dated {R}/validate_h100.md
fidelity_h200 | python benchmarks/fidelity.py --profile h200 --resimulate | {R}/fidelity_h200.md
fidelity_async | python benchmarks/fidelity.py --profile h200 --resimulate --out-dir {R}/fidelity_async | {R}/fidelity_async/fidelity_h200.md
fidelity_h100 | python benchmarks/fidelity.py --profile h100-sxm --resimulate | {R}/fidelity_h100-sxm.md
fidelity_transformers | python benchmarks/fidelity.py --engine transformers | {R}/fidelity_transformers_h200.md (.csv, .json)
fidelity_replicates | python benchmarks/fidelity_replicates.py --gpu h200 | {R}/fidelity_replicates_h200.md
transformers_residuals | python benchmarks/transformers_residuals.py | {R}/transformers_residuals.md
transformers_repeats | python benchmarks/transformers_repeats.py | {R}/transformers_repeats.md
decode_residuals | python benchmarks/decode_residuals.py | {R}/decode_residuals_h200.md
decode_residuals_shapes | python benchmarks/decode_residuals.py --gemm-shapes {K}/session24/gemm_shapes/gemm_shapes.json | {R}/decode_residuals_h200_shapes.md
decode_balance | python benchmarks/decode_balance.py --large {K}/large_decode_session22.json | {R}/decode_balance_h200.md
moe_bars | python benchmarks/moe_mla_tables.py | {R}/moe_bars_h200.md
gemm_shape_holdout | python benchmarks/gemm_shape_holdout.py | {R}/gemm_shape_holdout.md
calibration_eta | python benchmarks/calibration_eta.py | {R}/calibration_eta.md
seed_experiment | python benchmarks/seed_experiment.py | {R}/seed_experiment.md (.csv)
queueing | python benchmarks/queueing.py | {R}/queueing.md
published_current | python benchmarks/published_profiles_current.py | {R}/published_profiles_current.md
"""


@dataclass(frozen=True)
class Step:
    name: str
    argv: tuple[str, ...]
    writes: str
    dated: str = ""  # the table whose first date is the day it was written


def parse_steps(table: str) -> list[Step]:
    steps = []
    for line in table.strip().splitlines():
        name, command, writes = (c.strip() for c in line.split(" | "))
        dated = writes.removeprefix("dated ") if writes.startswith("dated ") else ""
        steps.append(Step(name, tuple(command.split()), dated or writes, dated))
    return steps


STEPS = parse_steps(TABLE)
NAMES = [s.name for s in STEPS]


def stale_published() -> list[tuple[str, list[str]]]:
    """(profile, its from-benchmark arguments) of each fitted engine profile some forecast of which moved."""
    import published_profiles_current as ppc

    found = ppc.fitted_profiles(ROOT / "engine_profiles")
    return [(p.stem, a) for p, a in found if ppc.stale(ppc.check(p, a))]


def run_step(step: Step, log) -> tuple[int, str]:
    """Run one step from the checkout's root: (return code, the last lines of its output)."""
    if step.argv == ("refit-stale",):
        for name, args in stale_published():
            log(f"  refit {name}: python -m calibrate from-benchmark {shlex.join(args)}")
            rc, tail = _run([sys.executable, "-m", "calibrate", "from-benchmark", *args])
            if rc:
                return rc, tail
        return 0, ""
    argv = [sys.executable if a == PY else a for a in step.argv]
    dated = ROOT / step.dated if step.dated else None
    before = dated.read_text() if dated and dated.exists() else None
    rc, tail = _run(argv)
    if before is not None and not rc and undated(dated.read_text()) == undated(before):
        dated.write_text(before)  # the same table, written on another day
    return rc, tail


def undated(text: str) -> str:
    """`text` with its first date (YYYY-MM-DD) masked."""
    return re.sub(r"\d{4}-\d{2}-\d{2}", "DATE", text, count=1)


def _run(argv: list[str]) -> tuple[int, str]:
    r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    return r.returncode, "\n".join((r.stdout + r.stderr).strip().splitlines()[-8:])


def start_index(args) -> int:
    """Where the run starts: --from's step, --resume's stored one, or the first."""
    if args.from_step:
        if args.from_step not in NAMES:
            raise SystemExit(f"error: --from {args.from_step}: not a step; give one of {', '.join(NAMES)}")
        return NAMES.index(args.from_step)
    if args.resume:
        if not STATE.exists():
            raise SystemExit(
                f"error: --resume: no unfinished run ({STATE.relative_to(ROOT)}); run without it"
            )
        name = json.loads(STATE.read_text())["next"]
        return NAMES.index(name) if name in NAMES else 0
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--list", action="store_true", help="print the steps and what each writes, run nothing")
    p.add_argument("--from", dest="from_step", metavar="STEP", help="start at this step")
    p.add_argument("--resume", action="store_true", help="start at the step the last run did not finish")
    args = p.parse_args(argv)
    if args.list:
        for i, s in enumerate(STEPS, 1):
            print(f"{i:2d}. {s.name}: {' '.join(s.argv)}\n    writes {s.writes}")
        return 0
    try:
        first = start_index(args)
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 2
    STATE.parent.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    for step in STEPS[first:]:
        STATE.write_text(json.dumps({"next": step.name}))
        print(f"[{time.perf_counter() - t0:5.0f} s] {step.name}", flush=True)
        rc, tail = run_step(step, lambda m: print(m, flush=True))
        if rc:
            print(f"{tail}\nerror: step {step.name} failed (exit {rc}); fix it, then: "
                  f"python benchmarks/regenerate.py --resume", file=sys.stderr)  # fmt: skip
            return 1
    STATE.unlink(missing_ok=True)
    changed = subprocess.run(["git", "status", "--short", "benchmarks/results", "engine_profiles"], cwd=ROOT,
                             capture_output=True, text=True).stdout  # fmt: skip
    print(f"[{time.perf_counter() - t0:5.0f} s] done; changed:\n{changed or '  nothing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
