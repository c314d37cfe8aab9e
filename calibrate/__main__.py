"""Command line: `python -m calibrate [options]`, `python -m calibrate validate PROFILE`, `python -m calibrate fit DIR`,
`python -m calibrate --engine transformers` (another engine's profile, calibrate/engine_calibration.py),
`python -m calibrate from-benchmark RUN.json... --gpu GPU --engine NAME` (an engine profile fitted to measured runs)."""

from __future__ import annotations

import argparse
import math
import shlex
import sys

from calibrate.engine_calibration import BUDGET_S, EngineOptions, NoEngine, calibrate_engine
from core.errors import ConfigError

FORCE_HELP = "write over a profile of another device (or give a CPU fit a GPU profile's name)"


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors as the one line every bad input gets (not usage text, not an exit)."""

    def error(self, message: str):
        raise ConfigError(f"{self.prog}: {message}; see {self.prog} --help")


def _run_parser(prog: str) -> argparse.ArgumentParser:
    p = _Parser(
        prog=prog,
        description="Measure this GPU with the engine, fit the cost model's efficiencies, write a profile. "
        "Verbs: (none) calibrate; `validate PROFILE` checks a profile on held-out steps; "
        "`fit DIR` refits stored measurements without a device.",
    )
    p.add_argument("--quick", action="store_true", help="a smaller sweep (under 2 minutes on an H100)")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (a tiny plan, for tests)")
    p.add_argument(
        "--model", default="llama-3.1-8b", help="catalogue name or config.json path whose shapes to sweep"
    )
    p.add_argument("--name", help="profile name to write (default: the base profile's name, e.g. h100-sxm)")
    p.add_argument("--base", help="datasheet profile to start from (default: detected from the GPU's name)")
    p.add_argument(
        "--out-dir",
        help="folder for the profile (default: hardware_profiles; with --engine, engine_profiles)",
    )
    p.add_argument(
        "--engine",
        help="time this third-party engine instead (transformers: its generate and continuous batching, "
        "--model's shapes, random weights) and fit its engine profile for this GPU",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=BUDGET_S,
        help=f"--engine: stop starting measurements after this many seconds (default {BUDGET_S:g})",
    )
    p.add_argument(
        "--work-dir", help="folder for raw measurements and plots (default: calibration_runs/NAME)"
    )
    p.add_argument("--restart", action="store_true", help="discard earlier measurements in the work dir")
    p.add_argument(
        "--fresh", action="store_true", help=argparse.SUPPRESS
    )  # --restart's old name, still taken
    p.add_argument(
        "--redo",
        metavar="KINDS",
        help="measure these kinds again, comma-separated (e.g. attention_prefill,step_prefill after an engine "
        "change), or only a kind's points whose parameters match (gemm:m=1:dtype=bf16); the other stored "
        "measurements are kept",
    )
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    return p


def _validate_parser(prog: str) -> argparse.ArgumentParser:
    p = _Parser(
        prog=f"{prog} validate",
        description="Time held-out whole steps and compare with the profile's prediction.",
    )
    p.add_argument("profile", help="profile name (h100-sxm) or .yaml path")
    p.add_argument("--model", default="llama-3.1-8b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--work-dir", help="where validate.jsonl goes (default: calibration_runs/PROFILE)")
    p.add_argument("--out", help="write the table as Markdown to this file")
    p.add_argument(
        "--stored",
        action="store_true",
        help="no device: compare the profile with the steps already measured in the work dir (after a refit)",
    )
    return p


def _fit_parser(prog: str) -> argparse.ArgumentParser:
    p = _Parser(prog=f"{prog} fit", description="Refit a work dir's measurements.")
    p.add_argument("work_dir")
    p.add_argument("--name", help="profile name to write (default: the run's base profile)")
    p.add_argument("--model", help="model whose accounting to use (default: the run's)")
    p.add_argument("--out-dir", default="hardware_profiles")
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    p.add_argument(
        "--step-overhead",
        metavar="SECONDS[,PER_SEQUENCE]",
        help="hold step_overhead_s (and per_sequence_s, default 0) at these measured values instead of fitting "
        "them (benchmarks/step_gap.py measures a served step's GPU time outside its kernels)",
    )
    p.add_argument(
        "--exclude",
        metavar="KIND[,KIND]",
        default="",
        help="leave these kinds of points out of the fit (e.g. step_mixed measured under an engine rule since "
        "changed); recorded in the profile",
    )
    return p


def _overheads(text: str | None) -> tuple[float, float] | None:
    """--step-overhead's value: (seconds a step, seconds a sequence), or None."""
    if not text:
        return None
    try:
        parts = [float(x) for x in text.split(",")]
    except ValueError:
        parts = []
    if not 1 <= len(parts) <= 2 or min(parts) < 0 or not all(math.isfinite(x) for x in parts):
        raise ConfigError(
            f"--step-overhead {text!r}: give SECONDS or SECONDS,PER_SEQUENCE (>= 0), e.g. 244e-6"
        )
    return parts[0], parts[1] if len(parts) == 2 else 0.0


def main(argv: list[str] | None = None, prog: str = "python -m calibrate") -> int:
    """The command line; `prog` names it in usage lines and in the command recorded in a profile."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = f"{prog} " + shlex.join(argv) if argv else prog
    from calibrate.calibration import NoDevice

    try:
        if argv and argv[0] == "validate":
            a = _validate_parser(prog).parse_args(argv[1:])
            from calibrate.validate import validate

            validate(a.profile, a.model, a.device, a.work_dir, a.out, command=command, stored=a.stored)
        elif argv and argv[0] == "from-benchmark":
            from calibrate.from_benchmark import main as from_benchmark

            return from_benchmark(argv[1:], prog)
        elif argv and argv[0] == "interconnect":  # under torchrun (calibrate/interconnect.py)
            from calibrate.interconnect import main as interconnect

            return interconnect(argv[1:], prog)
        elif argv and argv[0] == "fit":
            a = _fit_parser(prog).parse_args(argv[1:])
            from calibrate.calibration import refit

            kinds = tuple(k for k in a.exclude.split(",") if k)
            refit(a.work_dir, a.name, a.out_dir, a.model, force=a.force, overheads=_overheads(a.step_overhead),
                  exclude=kinds, command=command)  # fmt: skip
        else:
            a = _run_parser(prog).parse_args(argv)
            if a.engine:
                return calibrate_engine(
                    EngineOptions(
                        a.engine,
                        a.model,
                        a.base,
                        a.work_dir,
                        a.out_dir or "engine_profiles",
                        a.budget_s,
                        a.force,
                    )
                )
            if a.fresh:
                print("note: --fresh is now called --restart", file=sys.stderr)
            from calibrate.calibration import Options, run

            run(
                Options(
                    quick=a.quick,
                    device=a.device,
                    model=a.model,
                    name=a.name,
                    base=a.base,
                    out_dir=a.out_dir or "hardware_profiles",
                    work_dir=a.work_dir,
                    restart=a.restart or a.fresh,
                    redo=a.redo,
                    force=a.force,
                    command=command,
                )
            )
    except (ConfigError, NoDevice, NoEngine) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\ninterrupted; measurements so far are kept: rerun the same command to resume", file=sys.stderr
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
