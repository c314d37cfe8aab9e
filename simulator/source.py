"""Where requests come from: arrivals known in advance, plus follow-up turns of conversations.

A follow-up turn of a multi-turn session arrives a think time after the previous turn's response
finished, so its time is known only then (a closed loop). Replicas may peek at the next arrival to
cost runs of decode steps ahead of time; `next_arrival` covers both kinds.
"""

from __future__ import annotations

import heapq
import math

import numpy as np
import simpy


class Source:
    """Submits request ids at their arrival times; `follow_up` schedules a later turn."""

    def __init__(
        self, env: simpy.Environment, arrival_s: np.ndarray, submit, order: np.ndarray | None = None
    ) -> None:
        self.env = env
        ids = np.arange(len(arrival_s)) if order is None else order
        self.ids = ids.tolist()
        self.times = np.asarray(arrival_s)[ids].tolist()
        self.next = 0
        self.submit = submit
        self.pending: list[tuple[float, int]] = []  # follow-up turns scheduled but not yet arrived
        env.process(self._run(env))

    def next_arrival(self) -> float:
        t = self.times[self.next] if self.next < len(self.times) else math.inf
        return min(t, self.pending[0][0]) if self.pending else t

    def _run(self, env: simpy.Environment):
        times, ids, submit = self.times, self.ids, self.submit
        for i, t in enumerate(times):
            if t > env.now:
                yield env.timeout(t - env.now)
            self.next = i + 1
            submit(ids[i])

    def follow_up(self, rid: int, delay_s: float) -> None:
        """Request `rid` arrives `delay_s` from now."""
        t = self.env.now + delay_s
        heapq.heappush(self.pending, (t, rid))
        self.env.process(self._later(rid, delay_s))

    def _later(self, rid: int, delay_s: float):
        yield self.env.timeout(delay_s)
        heapq.heappop(self.pending)  # the earliest pending is this one (same delays pop in time order)
        self.submit(rid)
