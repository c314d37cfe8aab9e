"""Imported first by every script here (`import _checkout`), so that `python benchmarks/X.py` runs from a
checkout, installed or not: the checkout's root goes on sys.path (its code, not an installed copy, is
measured), and a GPU script on a machine without PyTorch says so in one line instead of a traceback.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# what the GPU scripts import that a base install does not have, and how to get it
_NEEDS = {
    "torch": "PyTorch and a GPU: install torch (a CUDA build on a GPU machine)",
    "triton": "Triton and an NVIDIA GPU: it comes with a CUDA build of torch",
    "scipy": "scipy: pip install scipy",
}


def _one_line_when_missing(kind, err, tb, previous=sys.excepthook) -> None:
    name = getattr(err, "name", None) or ""
    if issubclass(kind, ModuleNotFoundError) and name.split(".")[0] in _NEEDS:
        print(
            f"error: benchmarks/{Path(sys.argv[0]).name}: needs {_NEEDS[name.split('.')[0]]}", file=sys.stderr
        )
        sys.stderr.flush()
        os._exit(2)
    previous(kind, err, tb)


if Path(sys.argv[0]).resolve().parent == ROOT / "benchmarks":  # run as a script, not imported by a test
    sys.excepthook = _one_line_when_missing
