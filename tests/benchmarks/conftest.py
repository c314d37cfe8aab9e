"""What the benchmark scripts' CPU-path tests share."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_script(script: str, *args, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python benchmarks/<script> args...` from the checkout's root, its output captured."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / script), *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def run_benchmark():
    """run_script, as a fixture (tests/benchmarks has no package to import it from)."""
    return run_script
