"""Every script under benchmarks/ starts from the repository root with no inferplan installed: `--help`
works, and a GPU script on a machine without PyTorch says so in one line (exit 2), never a traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))
GPU = [p for p in SCRIPTS if "\nimport torch" in p.read_text()]
WITH_HELP = [p for p in SCRIPTS if p not in GPU and "argparse" in p.read_text()]

# `python benchmarks/X.py` where inferplan is not installed: drop installed copies (an editable install's
# finder, path entries holding simulator/) and start the script as the interpreter would, its folder first
# on sys.path. BLOCK names modules to hide (`import torch` then raises ModuleNotFoundError).
LAUNCH = """
import os, runpy, sys
block, script = sys.argv[1], sys.argv[2]
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
for name in block.split(","):
    if name:
        sys.modules[name] = None
sys.path[:] = [os.path.dirname(script)] + [p for p in sys.path[1:] if not os.path.isdir(os.path.join(p, "simulator"))]
sys.argv = sys.argv[2:]
runpy.run_path(script, run_name="__main__")
"""


def _launch(script: Path, *args: str, block: str = "") -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", LAUNCH, block, str(script), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_the_launch_has_no_inferplan_installed(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import simulator\n")
    r = _launch(probe)
    assert r.returncode == 1 and "ModuleNotFoundError: No module named 'simulator'" in r.stderr


@pytest.mark.parametrize("script", WITH_HELP, ids=[p.stem for p in WITH_HELP])
def test_help_runs_without_installation(script):
    r = _launch(script, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: ")


@pytest.mark.parametrize("script", GPU, ids=[p.stem for p in GPU])
def test_gpu_script_without_torch_is_one_line(script):
    r = _launch(script, "--help", block="torch")
    assert r.returncode == 2, r.stderr
    need = "needs PyTorch and a GPU: install torch (a CUDA build on a GPU machine)"
    assert r.stderr == f"error: benchmarks/{script.name}: {need}\n"
