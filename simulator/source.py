"""Where requests come from: arrivals known in advance, plus follow-up turns of conversations.

A follow-up turn of a multi-turn session arrives a think time after the previous turn's response
finished, so its time is known only then (a closed loop). Replicas may peek at the next arrival to
cost runs of decode steps ahead of time; `next_arrival` covers both kinds.

When one replica takes every arrival, it may pull them itself (`pulled`): the source then schedules
no event of its own, and the replica calls `take` at each step boundary, the only moments it looks.
"""

from __future__ import annotations

import heapq
import math

import numpy as np
import simpy


class Source:
    """Submits request ids at their arrival times; `follow_up` schedules a later turn."""

    def __init__(
        self,
        env: simpy.Environment,
        arrival_s: np.ndarray,
        submit,
        order: np.ndarray | None = None,
        pulled: bool = False,
    ) -> None:
        self.env = env
        ids = np.arange(len(arrival_s)) if order is None else order
        self.ids = ids.tolist()
        self.count = len(self.ids)
        self.times = np.asarray(arrival_s)[ids].tolist() + [math.inf]  # `times[next]`: the next one, if any
        self.next = 0
        self.submit = submit
        self.pending: list[tuple[float, int]] = []  # follow-up turns scheduled but not yet arrived
        # a chain of timeouts with a callback each: lighter than a process per arrival
        if self.count and not pulled:
            env.timeout(max(self.times[0], 0.0)).callbacks.append(self._arrive)

    def next_arrival(self) -> float:
        t = self.times[self.next]
        return min(t, self.pending[0][0]) if self.pending else t

    def _arrive(self, _event) -> None:
        """The timeout for arrival `next` fired: submit it and any others due at the same time."""
        times, ids, submit, env = self.times, self.ids, self.submit, self.env
        i, n, now = self.next, self.count, env.now
        while True:
            i += 1
            self.next = i
            submit(ids[i - 1])
            if i >= n or times[i] > now:
                break
        if i < n:
            env.timeout(times[i] - now).callbacks.append(self._arrive)

    def take(self, now: float) -> None:
        """Submit every arrival due by `now` (a pulling replica, at a step boundary)."""
        times, ids, submit = self.times, self.ids, self.submit
        i = self.next
        while times[i] <= now:
            i += 1
            self.next = i
            submit(ids[i - 1])

    def follow_up(self, rid: int, delay_s: float) -> None:
        """Request `rid` arrives `delay_s` from now."""
        t = self.env.now + delay_s
        heapq.heappush(self.pending, (t, rid))
        self.env.process(self._later(rid, delay_s))

    def _later(self, rid: int, delay_s: float):
        yield self.env.timeout(delay_s)
        heapq.heappop(self.pending)  # the earliest pending is this one (same delays pop in time order)
        self.submit(rid)
