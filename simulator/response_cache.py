"""A response cache in front of the model (exact-match or semantic, e.g. GPTCache, Redis LangCache).

Every request pays the lookup latency. A hit returns the stored response then: no GPU time, its
tokens count as served but not as GPU work. A miss goes on to the router. Whether a request hits is
drawn per request with the configured hit rate, from its own random stream (changing the cache does
not reshuffle the workload).
"""

from __future__ import annotations

import numpy as np

from simulator.scenario import ResponseCache

SEED_SALT = 0x5CAC4E  # separates this stream from the workload's


def draw_hits(spec: ResponseCache, n: int, seed: int, class_rates: np.ndarray | None = None) -> np.ndarray:
    """Which of n requests the cache answers (`class_rates`: a hit rate per request, from its class)."""
    rng = np.random.default_rng([seed, SEED_SALT])
    return rng.random(n) < (spec.hit_rate if class_rates is None else class_rates)


def front(env, hits: np.ndarray, table, route, on_finish=None):
    """The entry point for requests that have done their lookup: hits are answered, misses routed."""

    def submit(rid: int) -> None:
        if not hits[rid]:
            route(rid)
            return
        now = env.now
        table.scheduled_s[rid] = table.first_token_s[rid] = table.finish_s[rid] = now
        table.generated[rid] = int(table.output_tokens[rid])
        if on_finish is not None:
            on_finish(rid, now)

    return submit
