"""One-line errors for anything a user writes: scenario files, model configs, profiles, traces."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError


class ConfigError(ValueError):
    """A user-facing mistake; the message is one line naming the field and the fix."""


def _loc(parts: tuple) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def one_line(err: ValidationError, source: str = "", prefix: str = "") -> ConfigError:
    """Turn pydantic's multi-line report into one line per problem, joined by '; '."""
    msgs = []
    for e in err.errors(include_url=False):
        loc = _loc(tuple(e.get("loc", ())))
        if prefix:
            loc = f"{prefix}.{loc}" if loc != "(top level)" else prefix
        msg = e.get("msg", "invalid")
        if e.get("type") == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling (`--help` lists the fields)"
        elif e.get("type") == "missing":
            msg = "missing; add it"
        elif "input" in e and e.get("type") not in ("model_type", "dict_type"):
            shown = repr(e["input"])
            if len(shown) > 60:
                shown = shown[:57] + "..."
            msg = f"{msg} (got {shown})"
        msgs.append(f"{loc}: {msg}")
    where = f"{source}: " if source else ""
    return ConfigError(where + "; ".join(msgs))


def read_yaml(path: str | Path, what: str, mapping: bool = True) -> object:
    """A user's YAML file (`what` names it in errors: "scenario file", "profile", ...), as data."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{what} {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if mapping and not isinstance(data, dict):
        raise ConfigError(f"{p}: a {what.split()[0]} must be a YAML mapping")
    return data
