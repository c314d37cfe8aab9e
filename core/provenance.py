"""Which engine code a measurement ran: a hash of the engine's source files.

A device run copies the working tree without its git history, so a measurement records the code itself: the
first 12 hex digits of a SHA-256 over `engine/*.py` (names and bytes, sorted). Fidelity rows
(benchmarks/fidelity.py) and calibration points (calibrate.measurements) carry it, so a table or a resumed sweep
can say which of its measurements ran other code than the checkout's. A fidelity row hashes the code its model
runs: the files of features the model lacks (FEATURE_FILES) left out, so that a change to MLA's attention does not
name a dense model's rows. Reading files only: no torch, no import of the engine.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# engine files whose code only models with a feature run (the ModelSpec property naming it): a model without it
# imports the module but builds none of its layers (engine.model picks MLAttention for MLA models and MoE layers
# for MoE ones; the serving loop's MoE tuner finds no MoE layer to time and MLA's step limit applies to MLA only)
FEATURE_FILES = {"mla.py": "is_mla", "moe.py": "is_moe"}


def model_features(model: object) -> dict[str, bool]:
    """The FEATURE_FILES features `model` (a ModelSpec) has, as a measurement records them beside its code."""
    return {attr: bool(getattr(model, attr)) for attr in FEATURE_FILES.values()}


def engine_code(root: Path | None = None, features: dict[str, bool] | None = None) -> str:
    """The hash of `root`/engine/*.py (default: this checkout's); "" where there is no engine folder. With
    `features` (model_features of a model, or a measurement's record of them), the code such a model runs: the
    FEATURE_FILES of features it lacks left out."""
    folder = (root or ROOT) / "engine"
    files = [
        f
        for f in sorted(folder.glob("*.py"))
        if features is None or f.name not in FEATURE_FILES or features.get(FEATURE_FILES[f.name], False)
    ]
    if not files:
        return ""
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:12]
