"""One-line errors for anything a user writes: scenario files, model configs, profiles, traces."""

from __future__ import annotations

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
