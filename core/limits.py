"""Size limits: a mistyped or hostile input is refused with an estimate before it can eat the machine.

Each limit has a default and an environment variable that raises it (a number) or lifts it (`off`);
the refusal names both. The defaults sit well above what the examples and benchmarks need.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from core.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Limit:
    env: str  # the environment variable that overrides the default
    default: int
    unit: str  # what is counted, for the message ("requests", "replicas", ...)

    def value(self) -> int | None:
        """The limit in force (None: lifted with `off`)."""
        raw = os.environ.get(self.env, "").strip()
        if not raw:
            return self.default
        if raw.lower() in ("off", "none", "unlimited"):
            return None
        try:
            n = int(float(raw))
        except (ValueError, OverflowError):  # not a number, nan, inf
            n = 0
        if n < 1:
            raise ConfigError(
                f"environment: {self.env}: {raw!r} is not a positive whole number; "
                f"set a number of {self.unit}, or `off` to lift the limit"
            )
        return n

    def check(self, estimate: float, where: str, how: str = "") -> None:
        """Refuse (one line: the estimate, the limit, how to override) when `estimate` is above the limit."""
        limit = self.value()
        if limit is None or estimate <= limit:
            return
        shown = f"{estimate:,.0f}" if estimate < 1e15 else f"{estimate:.3g}"
        detail = f" ({how})" if how else ""
        raise ConfigError(
            f"{where}: about {shown} {self.unit}{detail}, above the limit of {limit:,}; "
            f"make it smaller, or raise the limit with {self.env}={_suggest(estimate)} (or {self.env}=off)"
        )


def _suggest(estimate: float) -> str:
    return str(int(estimate) + 1) if estimate < 1e15 else "off"


# measured: examples/poisson_chat_l4.yaml --requests 200000 (no per-request CSV) took 9.6 s and 133 MB peak
# RSS, so 10 M is about 8 minutes and a few GB: the most a laptop should start without being asked.
MAX_REQUESTS = Limit("INFERPLAN_MAX_REQUESTS", 10_000_000, "requests")
# measured: 10,000 replicas of examples/poisson_chat_l4.yaml (100 requests) took 5.8 s and 582 MB peak RSS,
# about 58 KB each; a million would need about 58 GB before the first request.
MAX_REPLICAS = Limit("INFERPLAN_MAX_REPLICAS", 10_000, "replicas")
# each configuration is a binary search of about ten simulations.
MAX_CONFIGURATIONS = Limit("INFERPLAN_MAX_CONFIGURATIONS", 10_000, "configurations")
# scenario files, search specs and profiles are a few KiB; 10 MiB leaves room for long inline sweeps.
MAX_YAML_BYTES = Limit("INFERPLAN_MAX_YAML_BYTES", 10 * 2**20, "bytes")
# nodes that YAML aliases (*name) add when expanded; plain anchors reuse a block or two, never 100,000 nodes.
MAX_YAML_ALIAS_NODES = Limit("INFERPLAN_MAX_YAML_ALIAS_NODES", 100_000, "nodes added by aliases")
