"""The built wheel carries every shipped file and runs from an empty directory with nothing else on the path.

Built from a copy of the checkout (so the build writes nothing into it), without build isolation (no
network), then unpacked as pip installs it; the full install into a new venv is in .ci/run.
"""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = (
    "pyproject.toml",
    "README.md",
    "app.py",
    "app_pages",
    "core",
    "simulator",
    "engine",
    "calibrate",
    "inferplan",
)
SOURCES += ("hardware_profiles", "engine_profiles", "examples")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q", "-w", str(out)]
    subprocess.run([*cmd, str(src)], check=True, capture_output=True, timeout=120)
    (whl,) = out.glob("inferplan-*.whl")
    return whl


def test_wheel_carries_every_shipped_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"core/hardware_profiles/{p.name}" for p in (ROOT / "hardware_profiles").glob("*.yaml")}
    expected |= {f"core/engine_profiles/{p.name}" for p in (ROOT / "engine_profiles").glob("*.yaml")}
    expected |= {f"simulator/examples/{p.name}" for p in (ROOT / "examples").glob("*.yaml")}
    expected |= {f"core/catalogue/{p.name}" for p in (ROOT / "core" / "catalogue").iterdir()}
    expected |= {f"simulator/traces/{p.name}" for p in (ROOT / "simulator" / "traces").iterdir()}
    expected |= {f"inferplan/app/app_pages/{p.name}" for p in (ROOT / "app_pages").glob("*.py")}
    expected |= {"inferplan/app/app.py", "inferplan/cli.py", "simulator/resources.py", "core/resources.py"}
    assert len(expected) > 40
    assert expected <= names, sorted(expected - names)
    assert not any(
        n.startswith(("tests/", "benchmarks/", "hardware_profiles/", "engine_profiles/")) for n in names
    )
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "inferplan = inferplan.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_unpacked_wheel_runs_from_an_empty_directory(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # what pip puts in site-packages
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "HOME": str(tmp_path)}

    def run(*args: str) -> str:
        r = subprocess.run([sys.executable, *args], cwd=empty, env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return r.stdout

    where = run("-c", "import simulator, inferplan.cli as c; print(simulator.__file__, c.app_script())")
    assert where.split() == [str(site / "simulator" / "__init__.py"), str(site / "inferplan/app/app.py")]
    gpus = run("-m", "inferplan", "gpus")
    assert "h100-sxm" in gpus and "built-in" in gpus and "./hardware_profiles" not in gpus
    engines = run("-c", "from core.engine_profile import engine_names as e, ENGINE_DIR as d; print(e(), d)")
    assert "'ours'" in engines and engines.split()[-1] == str(site / "core" / "engine_profiles")
    out = run("-m", "inferplan", "run", "poisson_chat_l4", "--requests", "20", "--out", "o")
    assert "TTFT" in out and (empty / "o" / "summary.json").is_file()
