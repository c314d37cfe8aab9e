"""The data files that ship with inferplan, found the same way in a checkout and in an installed wheel.

In a checkout they are the repository's own folders (`hardware_profiles/`, `examples/` at the root;
`core/catalogue/`, `simulator/traces/`), the one copy in git. A built wheel carries each inside the package
that reads it, under the same name (pyproject.toml maps the root folders in): GPU profiles and the model
catalogue and engine profiles (`engine_profiles/`) in `core`, examples and traces in `simulator`.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

_CHECKOUT_ROOT = Path(__file__).resolve().parent.parent


def shipped(folder: str, package: str = "core") -> Path:
    """The shipped folder `folder`: the installed `package`'s copy, else the checkout's own folder."""
    inside = files(package) / folder
    if inside.is_dir():
        # an installed wheel is plain files on disk, so the Traversable is a real path
        return Path(str(inside))
    for candidate in (_CHECKOUT_ROOT / package / folder, _CHECKOUT_ROOT / folder):
        if candidate.is_dir():
            return candidate
    return _CHECKOUT_ROOT / folder
