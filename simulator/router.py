"""The router in front of a pool of replicas: which replica serves a request.

round_robin: in turn. least_outstanding: the replica with the fewest outstanding tokens (prompt +
output of the requests it holds and has not finished), ties to the lowest index. prefix_affinity:
requests that share a prefix (the same first prompt segment: a system prompt, a conversation) go to
the same replica, whose prefix cache is warm: the prefix id hashed onto the replicas; requests
without one go to the least loaded.

With `max_ongoing_requests`, a replica takes at most that many requests at a time; the rest wait in
one FIFO queue at the router and go to the first replica that frees up (Ray Serve's
max_ongoing_requests). At batch size 1 with one request per replica this is the M/M/c queue.

The router reads replicas' load as of now (`Replica.load`), never the end of a run they committed.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from simulator.replica import Replica, ReplicaHooks

_MIX, _MASK = 0x9E3779B97F4A7C15, 2**64 - 1  # Fibonacci hashing (Knuth, TAOCP vol. 3, 6.4)


NO_PREFIX = np.iinfo(np.int64).min  # segment ids may be negative (shared system prompts are)


def prefix_ids(segments: list | None, n: int) -> np.ndarray | None:
    """Per request the id of its first prompt segment (NO_PREFIX: shares nothing), or None without segments."""
    if segments is None:
        return None
    return np.array([s[0][0] if s else NO_PREFIX for s in segments], dtype=np.int64)


class Router:
    def __init__(
        self,
        policy: str,
        replicas: list[Replica],
        eligible: list[np.ndarray | None] | None = None,
        prefix: np.ndarray | None = None,
        max_ongoing: int | None = None,
    ) -> None:
        self.policy = policy
        self.replicas = replicas
        self.eligible = eligible if eligible is not None and any(e is not None for e in eligible) else None
        self.prefix = prefix if policy == "prefix_affinity" else None
        self.max_ongoing = max_ongoing
        self.queue: deque[int] = deque()  # requests waiting at the router (with max_ongoing)
        self.held = 0  # requests that waited at the router
        self._turn = 0
        self._pos = {r: i for i, r in enumerate(replicas)}
        self.dynamic = policy == "least_outstanding" or max_ongoing is not None
        for r in replicas:  # a router reading loads needs them as of now
            r.connect(ReplicaHooks(track_future=self.dynamic or self.prefix is not None))

    def set_ready(self, replicas: list[Replica]) -> None:
        """Route only to these replicas from now on (an autoscaled fleet's ready ones, simulator/autoscaling.py)."""
        self.replicas = replicas

    # ------------------------------------------------------------------ static assignment
    def static_targets(self, rids: np.ndarray) -> np.ndarray | None:
        """Replica index per request when the choice does not depend on load (−1: decided on arrival);
        None when every choice depends on load. Lets each replica look ahead to its own arrivals only."""
        if self.dynamic:
            return None
        n = len(self.replicas)
        if self.prefix is not None:
            pid = self.prefix[rids]
            has = pid != NO_PREFIX
            out = np.full(len(rids), -1, dtype=np.int64)
            out[has] = [self._hash(int(p)) for p in pid[has]]
            if self.eligible is not None:
                for i in np.flatnonzero(out >= 0):
                    e = self.eligible[out[i]]
                    if e is not None and not e[rids[i]]:
                        out[i] = -1
            return out.astype(np.int64)
        if self.eligible is None:
            return np.arange(len(rids), dtype=np.int64) % n
        out = np.empty(len(rids), dtype=np.int64)
        for i, rid in enumerate(rids.tolist()):
            r = self._next_in_turn(rid)
            out[i] = self._pos[r] if r is not None else -1
        return out

    def _hash(self, pid: int) -> int:
        return (((pid * _MIX) & _MASK) >> 32) % len(self.replicas)

    # ------------------------------------------------------------------ on arrival
    def pick(self, rid: int) -> Replica | None:
        """The replica for request `rid` now; None when it must wait at the router."""
        if self.policy == "round_robin":
            r = self._next_in_turn(rid, room=True)
            if r is not None or self.max_ongoing is None:
                return r
            return None
        if self.prefix is not None and self.prefix[rid] != NO_PREFIX:
            r = self.replicas[self._hash(int(self.prefix[rid]))]
            if self._can(r, rid) and self._room(r):
                return r
        return self.least_loaded(rid)

    def least_loaded(self, rid: int) -> Replica | None:
        best, best_load = None, None
        for r in self.replicas:
            if not self._can(r, rid):
                continue
            tokens, reqs = r.load()
            if self.max_ongoing is not None and reqs >= self.max_ongoing:
                continue
            if best_load is None or tokens < best_load:
                best, best_load = r, tokens
        return best

    def _next_in_turn(self, rid: int, room: bool = False) -> Replica | None:
        n = len(self.replicas)
        for k in range(n):
            r = self.replicas[(self._turn + k) % n]
            if self._can(r, rid) and (not room or self._room(r)):
                self._turn = (self._turn + k + 1) % n
                return r
        return None

    def _can(self, r: Replica, rid: int) -> bool:
        e = self.eligible[self._pos[r]] if self.eligible is not None else None
        return e is None or bool(e[rid])

    def _room(self, r: Replica) -> bool:
        return self.max_ongoing is None or r.load()[1] < self.max_ongoing

    def route(self, rid: int) -> None:
        """Send request `rid` to a replica, or queue it at the router."""
        r = self.pick(rid)
        if r is None:
            self.queue.append(rid)
            self.held += 1
        else:
            r.submit(rid)

    # ------------------------------------------------------------------ router queue
    def pull(self, r: Replica) -> None:
        """At replica r's step boundary: give it queued requests while it has room (FIFO)."""
        q = self.queue
        while q and r.load()[1] < self.max_ongoing:
            for i, rid in enumerate(q):
                if self._can(r, rid):
                    del q[i]
                    r.submit(rid)
                    break
            else:
                return
