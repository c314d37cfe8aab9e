"""Accuracy and speed scripts, run from the repository root: `python benchmarks/X.py` (see _checkout.py)."""

import sys

from benchmarks import _checkout

# The scripts import the helper as `_checkout` (their own folder is first on sys.path when run as files);
# imported as `benchmarks.X` by the tests, the same module answers to that name.
sys.modules.setdefault("_checkout", _checkout)
