"""The `inferplan` command: the simulator's verbs under its own name, `calibrate` and `app`, one version."""

import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as a package (the test extra installs it there)
    import tomli as tomllib

import simulator
from inferplan import cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("verb", ["run", "compare", "search", "report", "models", "gpus", "examples"])
def test_each_verb_has_its_own_usage_line(verb, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([verb, "--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: inferplan {verb} ")
    with pytest.raises(SystemExit):
        simulator.cli.main([verb, "--help"])
    assert capsys.readouterr().out.startswith(f"usage: python -m simulator {verb} ")


def test_bad_verb_is_one_line_naming_inferplan(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["frobnicate"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: inferplan: argument cmd: invalid choice: 'frobnicate'")
    assert "'calibrate', 'app'" in err


def test_one_version_everywhere(capsys):
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in meta["project"] and meta["project"]["dynamic"] == ["version"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "simulator.__version__"}
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"inferplan {simulator.__version__}\n"


def test_calibrate_delegates_with_its_own_usage(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["calibrate", "validate", "--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("usage: inferplan calibrate validate ")
    assert cli.main(["calibrate", "fit"]) == 2
    assert capsys.readouterr().err.startswith("error: inferplan calibrate fit: the following arguments")


def test_calibrate_without_torch_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(cli, "find_spec", lambda name: None)  # as in a base install: no torch
    assert cli.main(["calibrate", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: inferplan calibrate: needs PyTorch, which is not installed; install torch")


def test_app_starts_streamlit_on_the_apps_main_script(monkeypatch):
    calls = []
    monkeypatch.setattr(cli.os, "execv", lambda exe, cmd: calls.append((exe, cmd)))
    assert cli.main(["app", "--server.port", "8599"]) == 0
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", "8599"]
    assert calls == [(sys.executable, cmd)]


def test_app_without_streamlit_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(cli, "find_spec", lambda name: None)
    assert cli.main(["app"]) == 2
    assert capsys.readouterr().err == (
        "error: inferplan app: needs Streamlit, which is not installed; pip install 'inferplan[app]'\n"
    )


def test_console_script_is_the_inferplan_command():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["scripts"] == {"inferplan": "inferplan.cli:main"}
    r = subprocess.run([sys.executable, "-m", "inferplan", "run", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("usage: inferplan run ")
