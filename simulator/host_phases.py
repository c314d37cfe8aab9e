"""An engine's host time drifting over wall time, and its stalls (EngineProfile.host.phases).

transformers' continuous-batching manager runs the same batch-1 decode step at about 28, 66 or 104 ms for
seconds at a time and now and then stalls for 0.5-0.9 s (calibration_runs/transformers_h200, recorded steps);
no function of the step's shape says which. A replica whose engine has `host.phases` draws a level for each
step: the log multiplier on the step's host seconds follows an Ornstein-Uhlenbeck process over the replica's
clock (sampled exactly at each step's start, however far apart), and a step of `dt` seconds stalls with
probability 1 - exp(-rate · dt). Every draw comes from the scenario's seed and the replica's index.
"""

from __future__ import annotations

import math

import numpy as np

from core.engine_profile import HostPhases

# the seed stream of host phases (simulation.py's own streams are SeedSequence(seed).spawn(5) children)
STREAM = 7


class HostPhaseClock:
    """One replica's draws of host-time level and stalls, in step order."""

    __slots__ = ("p", "rng", "x", "t")

    def __init__(self, phases: HostPhases, seed: int, replica: int) -> None:
        self.p = phases
        self.rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(STREAM, replica)))
        self.x = phases.log_mean + phases.log_std * float(self.rng.standard_normal())  # stationary start
        self.t = 0.0

    def extra(self, now: float, host_s: float, dt: float) -> float:
        """Seconds a step starting at `now`, of `host_s` host seconds and `dt` seconds as costed, adds."""
        p = self.p
        a = math.exp(-max(now - self.t, 0.0) / p.correlation_s)
        z, u = self.rng.standard_normal(), self.rng.random()
        self.x = p.log_mean + (self.x - p.log_mean) * a + p.log_std * math.sqrt(1.0 - a * a) * float(z)
        self.t = now
        out = host_s * (math.exp(self.x) - 1.0)
        if p.stall_rate_per_s and u < -math.expm1(-p.stall_rate_per_s * (dt + out)):
            out += p.stall_s
        return out
