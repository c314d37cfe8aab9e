"""`python -m calibrate --engine transformers`: time a third-party engine on this GPU and fit its profile.

Two stages, each its own module: `calibrate.transformers_runs` runs transformers' own code paths (generate
sweeps and its continuous-batching manager replaying the traces) on catalogue models with random weights and
writes the raw JSON into `calibration_runs/transformers_<gpu>/<date>/` (the same day's command continues it);
then `calibrate.engine_fit` fits the engine's host terms on the newest session of the --model and checks them
on every other row of `calibration_runs/transformers_<gpu>/` (older sessions included), writing
`engine_profiles/transformers.yaml` and `transformers-generate.yaml` for this GPU and the row table in
`benchmarks/results/engine_fit_transformers_<gpu>.md`.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigError

ENGINES = ("transformers",)
BUDGET_S = 540.0  # the harness's default: one 10-minute device call, with room to write and fit


class NoEngine(RuntimeError):
    """The engine's package or a GPU is missing here: the run cannot start (one line, exit 2)."""


@dataclass(slots=True)
class EngineOptions:
    engine: str
    model: str = "llama-3.1-8b"
    base: str | None = None  # the GPU profile name (default: detected from the GPU's name)
    work_dir: str | None = None  # default: calibration_runs/<engine>_<gpu>/<UTC date>
    out_dir: str = "engine_profiles"
    budget_s: float = BUDGET_S
    force: bool = False  # replace profiles of this engine measured on another GPU


def check_ready(engine: str) -> str:
    """The GPU's NVML name, once the engine can be timed here: a known engine, its package installed, a GPU."""
    if engine not in ENGINES:
        raise ConfigError(f"--engine {engine!r}: no harness for it; calibrate one of {', '.join(ENGINES)}")
    if importlib.util.find_spec(engine) is None:
        raise NoEngine(
            f"{engine} is not installed here; `pip install {engine}` (not a project dependency) on the GPU machine "
            f"to time it, or use the shipped profiles (`python -m simulator engines`)"
        )
    from calibrate.detect import detect

    gpu = detect()
    if gpu is None:
        raise NoEngine(
            f"no GPU found (NVML and torch.cuda see none): `python -m calibrate --engine {engine}` times {engine} "
            "on a GPU; the shipped profiles hold for the GPUs they name (`python -m simulator engines`)"
        )
    return gpu.name


def check_not_replacing(out_dir: Path, engine: str, gpu: str) -> None:
    """The fit writes one profile per engine kind (`transformers.yaml`, ...): refuse, before any GPU time is spent,
    to replace one that was measured on another GPU."""
    from core.engine_profile import read_engine_profile

    for path in sorted(out_dir.glob(f"{engine}*.yaml")):
        p = read_engine_profile(path)
        if p.engine == engine and p.gpu is not None and p.gpu != gpu:
            raise ConfigError(
                f"{path} is measured on {p.gpu} and this GPU is {gpu}: give --out-dir another folder to keep "
                "both, or --force to replace it"
            )


def calibrate_engine(opts: EngineOptions) -> int:
    """Run the harness, then the fit; the exit status of the first stage that fails, else 0."""
    from calibrate import engine_fit, transformers_runs
    from calibrate.detect import resolve_base

    gpu_name = check_ready(opts.engine)
    gpu = resolve_base(gpu_name, opts.base)
    if not opts.force:
        check_not_replacing(Path(opts.out_dir), opts.engine, gpu)
    runs = Path("calibration_runs") / f"{opts.engine}_{gpu}"
    work = Path(opts.work_dir) if opts.work_dir else runs / dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    rc = transformers_runs.main(
        ["--out", str(work), "--models", opts.model, "--budget-s", str(opts.budget_s), "--gpu-tag", gpu]
    )
    if rc:
        return rc
    folder = runs if work.resolve().is_relative_to(runs.resolve()) else work
    return engine_fit.main([str(folder), "--gpu", gpu, "--out", opts.out_dir, "--train", opts.model])
