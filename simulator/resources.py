"""The example scenarios and traces that ship with the simulator (see core/resources.py for how shipped
folders are found in a checkout and in a wheel)."""

from __future__ import annotations

from pathlib import Path

from core.resources import shipped as _shipped


def shipped(folder: str) -> Path:
    """The simulator's shipped folder `folder` (`examples`, `traces`)."""
    return _shipped(folder, package="simulator")


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
