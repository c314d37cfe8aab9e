"""`inferplan VERB`: the simulator's verbs (run, compare, search, report, models, gpus, examples),
`inferplan calibrate …` (the GPU half, python -m calibrate) and `inferplan app` (the planning app)."""

from __future__ import annotations

import argparse
import os
import sys
from importlib.resources import files
from importlib.util import find_spec
from pathlib import Path

from simulator.cli import build_parser
from simulator.cli import main as simulator_main

PROG = "inferplan"


def _more_verbs(sub: argparse._SubParsersAction) -> None:
    # Listed for --help; their arguments are their own programs' (see main), so they take the rest as is.
    for name, about in (
        ("calibrate", "measure this GPU and write its profile (python -m calibrate; needs torch)"),
        ("app", "start the planning app in a browser (Streamlit; needs the app extra)"),
    ):
        v = sub.add_parser(name, help=about, add_help=False)
        v.add_argument("rest", nargs=argparse.REMAINDER)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["calibrate"]:
        return calibrate(argv[1:])
    if argv[:1] == ["app"]:
        return app(argv[1:])
    return simulator_main(argv, build_parser(PROG, _more_verbs))


def _missing(verb: str, module: str, fix: str) -> int:
    print(f"error: {PROG} {verb}: needs {module}, which is not installed; {fix}", file=sys.stderr)
    return 2


def calibrate(argv: list[str]) -> int:
    """`python -m calibrate` under this command's name."""
    if find_spec("torch") is None:
        return _missing(
            "calibrate",
            "PyTorch",
            "install torch (a CUDA build on a GPU machine), then pip install 'inferplan[calibrate]'",
        )
    try:
        from calibrate.__main__ import main as calibrate_main

        return calibrate_main(argv, prog=f"{PROG} calibrate")
    except ModuleNotFoundError as e:  # scipy, matplotlib or pynvml: the calibrate extra
        return _missing("calibrate", e.name or str(e), "pip install 'inferplan[calibrate]'")


def app_script() -> Path:
    """The app's main script: the installed package's copy, else the checkout's app.py."""
    inside = files("inferplan") / "app" / "app.py"
    if inside.is_file():
        return Path(str(inside))  # an installed wheel is plain files on disk
    return Path(__file__).resolve().parent.parent / "app.py"


def app(argv: list[str]) -> int:
    """`streamlit run` on the app; the arguments after `app` go to Streamlit (e.g. --server.port 8502)."""
    if find_spec("streamlit") is None:
        return _missing("app", "Streamlit", "pip install 'inferplan[app]'")
    # Streamlit takes this process's place, so that Ctrl-C and a kill reach the server itself
    os.execv(sys.executable, [sys.executable, "-m", "streamlit", "run", str(app_script()), *argv])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
