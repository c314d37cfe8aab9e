"""The files that ship with inferplan: GPU and engine profiles, the model catalogue, traces and example scenarios.

In a checkout they are the repository's own folders (`hardware_profiles/`, `engine_profiles/`, `examples/`
at the root; `simulator/catalogue/`, `simulator/traces/`), the one copy in git. A built wheel carries them
inside the `simulator` package under the same names (pyproject.toml maps the root folders in), read here
through importlib.resources.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

_CHECKOUT_ROOT = Path(__file__).resolve().parent.parent


def shipped(folder: str) -> Path:
    """The folder of shipped files named `folder`: the installed package's copy, else the checkout's."""
    inside = files("simulator") / folder
    if inside.is_dir():
        # an installed wheel is plain files on disk, so the Traversable is a real path
        return Path(str(inside))
    return _CHECKOUT_ROOT / folder


def example_names() -> list[str]:
    """The example scenarios and search specs, by the name `run`/`search` accept (`poisson_chat_l4`)."""
    return sorted(p.stem for p in shipped("examples").glob("*.yaml"))


def find_example(name_or_path: str) -> str:
    """A scenario argument as a path: a file that exists as given, else a shipped example of that name.

    `poisson_chat_l4`, `poisson_chat_l4.yaml` and `examples/poisson_chat_l4.yaml` all name the shipped
    example from any directory; anything else is returned unchanged (and reported missing by its reader).
    """
    p = Path(name_or_path)
    if p.exists() or (p.parent != Path(".") and p.parent != Path("examples")):
        return name_or_path
    candidate = shipped("examples") / (p.name if p.suffix in (".yaml", ".yml") else f"{p.name}.yaml")
    return str(candidate) if candidate.is_file() else name_or_path
