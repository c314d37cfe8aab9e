"""Which engine code a measurement ran: a hash of the engine's source files.

A device run copies the working tree without its git history, so a measurement records the code itself: the
first 12 hex digits of a SHA-256 over `engine/*.py` (names and bytes, sorted). Fidelity rows
(benchmarks/fidelity.py) and calibration points (calibrate.measurements) carry it, so a table or a resumed sweep
can say which of its measurements ran other code than the checkout's. Reading files only: no torch, no import of
the engine.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def engine_code(root: Path | None = None) -> str:
    """The hash of `root`/engine/*.py (default: this checkout's); "" where there is no engine folder."""
    folder = (root or ROOT) / "engine"
    files = sorted(folder.glob("*.py"))
    if not files:
        return ""
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:12]
