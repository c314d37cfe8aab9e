"""A closed-loop workload: a fixed number of users, each sending its next request the moment its last one
finished (vLLM bench serve --max-concurrency N at request rate inf; GuideLLM's concurrent strategy).

User k sends requests k, k + N, k + 2N, ...; the first N arrive at time 0 and every later one when the
request before it in its user's chain finishes (the simulator's follow-up turns, with no think time and no
shared prompt: each request is a fresh prompt, as the benchmarks send them).
"""

from __future__ import annotations

import numpy as np

from core.requests import Requests


def closed_loop(concurrency: int, prompt_tokens: np.ndarray, output_tokens: np.ndarray) -> Requests:
    """Requests in `concurrency` chains: arrival 0 for each chain's first, NaN (set on the previous one's
    finish) for the rest."""
    n = len(prompt_tokens)
    users = min(concurrency, n)
    arrival = np.full(n, np.nan)
    arrival[:users] = 0.0
    ids = np.arange(n, dtype=np.int64)
    next_turn = np.where(ids + users < n, ids + users, -1)
    return Requests(
        arrival,
        prompt_tokens.astype(np.int64),
        output_tokens.astype(np.int64),
        next_turn=next_turn,
        think_s=np.zeros(n),
    )
