"""Requests in flight capped by the client.

A closed-loop workload: a fixed number of users, each sending its next request the moment its last one
finished (vLLM bench serve --max-concurrency N at request rate inf; GuideLLM's concurrent strategy).
User k sends requests k, k + N, k + 2N, ...; the first N arrive at time 0 and every later one when the
request before it in its user's chain finishes (the simulator's follow-up turns, with no think time and no
shared prompt: each request is a fresh prompt, as the benchmarks send them).

A rate with a cap (`ClientGate`): requests arrive at the workload's rate and at most N are in flight; the
rest wait at the client, first come first served (vLLM bench serve --request-rate R --max-concurrency N).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from core.errors import ConfigError
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


class ClientGate:
    """At most `cap` requests in flight from the client, the rest waiting there in arrival order: vLLM bench
    serve with both --request-rate and --max-concurrency. Requests arrive at the rate, each takes a slot of
    `asyncio.Semaphore(max_concurrency)` before it is sent, and a finished request's slot goes to the first
    one waiting (vllm-project/vllm, vllm/benchmarks/serve.py `limited_request_func`).

    A waiting request's send time becomes its arrival at the server (`table.arrival_s`): its TTFT and E2E count
    from the send, as vLLM's do (the request function starts its timer, `st = time.perf_counter()`, inside the
    semaphore: vllm/benchmarks/lib/endpoint_request_func.py). The wait itself is `client_wait` in the summary.
    """

    def __init__(
        self, env, cap: int, arrival_s: np.ndarray, refused: list[bool], lookup_s: float = 0.0
    ) -> None:
        self.env, self.cap, self.arrival_s, self.refused = env, cap, arrival_s, refused
        self.lookup_s = lookup_s  # a response cache's lookup, between the send and the server
        self.client_s = arrival_s.copy()  # when each request reached the client (its send may come later)
        self.in_flight = 0
        self.waiting: deque[int] = deque()
        self.handed: set[int] = set()  # released from the wait, on their way through the source
        self.source = self.submit = None

    def connect(self, source, submit) -> None:
        """`source.follow_up` sends a released request; `submit` hands a request to the deployment."""
        self.source, self.submit = source, submit

    def arrive(self, rid: int) -> None:
        """A request's arrival at the client (the source's callback): sent now if a slot is free."""
        if rid in self.handed:  # released by a finish: its slot is already taken
            self.handed.discard(rid)
            self.submit(rid)
            return
        self.client_s[rid] = self.arrival_s[rid]  # (a conversation's later turn: set by its source just now)
        if self.refused[rid]:  # never served: it fails at once and holds no slot
            self.submit(rid)
        elif self.in_flight < self.cap:
            self.in_flight += 1  # (before submit: a response-cache hit finishes inside it)
            self.submit(rid)
        else:
            self.waiting.append(rid)

    def on_finish(self, rid: int, finish_s: float) -> None:
        """A request in flight finished: its slot goes to the first one waiting, sent now."""
        while self.waiting:
            nxt = self.waiting.popleft()
            if self.refused[nxt]:
                continue
            self.arrival_s[nxt] = self.env.now
            self.handed.add(nxt)
            self.source.follow_up(nxt, self.lookup_s)
            return
        self.in_flight -= 1


def client_wait(gate: ClientGate, served: np.ndarray) -> dict:
    """summary["client_wait"]: how long requests waited at the client for one of the `cap` slots."""
    cap = gate.cap
    wait = (gate.arrival_s - gate.client_s)[served]
    wait = wait[np.isfinite(wait)]
    waited = wait > 0
    out = {"max_in_flight": cap, "requests": int(len(wait)), "waited": int(waited.sum())}
    if len(wait):
        out |= {
            "mean_s": float(wait.mean()),
            "p50_s": float(np.median(wait)),
            "p99_s": float(np.percentile(wait, 99)),
        }
    return out


def client_gate(
    workload, servings: list, env, arrival_s: np.ndarray, refused: list[bool], lookup_s: float = 0.0
) -> ClientGate | None:
    """The client's cap on requests in flight for a workload with a rate and `arrival.concurrency`, else None."""
    cap = workload.arrival.concurrency
    if cap is None or workload.arrival.process == "closed_loop":
        return None
    for sv in servings:
        if sv.admission.max_queue_len is not None or sv.admission.queue_timeout_s is not None:
            raise ConfigError(
                "workload.arrival.concurrency holds requests at the client, and a request the server drops would "
                "keep its slot; remove serving.admission.max_queue_len and queue_timeout_s, or the concurrency"
            )
    return ClientGate(env, cap, arrival_s, refused, lookup_s)
