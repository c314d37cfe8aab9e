"""The router's choices, on stand-in replicas whose load is set by hand."""

import numpy as np

from simulator.router import NO_PREFIX, Router, prefix_ids


class Stub:
    def __init__(self, tokens=0, reqs=0):
        self.tokens, self.reqs, self.got = tokens, reqs, []
        self.track_future = False

    def connect(self, hooks):
        if hooks.track_future is not None:
            self.track_future = hooks.track_future

    def load(self):
        return self.tokens, self.reqs

    def submit(self, rid):
        self.got.append(rid)
        self.reqs += 1


def test_round_robin_takes_turns_and_skips_replicas_that_cannot_hold_a_request():
    reps = [Stub(), Stub(), Stub()]
    assert list(Router("round_robin", reps).static_targets(np.arange(7))) == [0, 1, 2, 0, 1, 2, 0]
    can = [None, np.array([True, False, True, True]), None]
    assert list(Router("round_robin", reps, can).static_targets(np.arange(4))) == [0, 2, 0, 1]


def test_least_outstanding_picks_the_least_loaded_replica():
    reps = [Stub(500), Stub(120), Stub(300)]
    r = Router("least_outstanding", reps)
    assert r.static_targets(np.arange(3)) is None  # depends on load: decided on arrival
    r.route(0)
    assert reps[1].got == [0]
    reps[1].tokens = 900
    r.route(1)
    assert reps[2].got == [1]
    assert all(x.track_future for x in reps)  # load must be read as of now


def test_prefix_affinity_sends_a_prefix_to_one_replica_and_the_rest_to_the_least_loaded():
    reps = [Stub(10), Stub(0), Stub(20), Stub(30)]
    segs = [((7, 1000), (100, 50)), ((7, 1000), (101, 80)), ((9, 1000), (102, 5)), None]
    pid = prefix_ids(segs, 4)
    assert list(pid[:3]) == [7, 7, 9] and pid[3] == NO_PREFIX
    r = Router("prefix_affinity", reps, prefix=pid)
    t = r.static_targets(np.arange(4))
    assert t[0] == t[1] >= 0 and t[3] == -1
    hashed = {
        int(Router("prefix_affinity", reps, prefix=np.arange(400)).static_targets(np.arange(400))[i])
        for i in range(400)
    }
    assert hashed == {0, 1, 2, 3}  # prefixes spread over every replica
    r.route(3)
    assert reps[1].got == [3]


def test_router_queue_holds_requests_until_a_replica_has_room():
    reps = [Stub(), Stub()]
    r = Router("least_outstanding", reps, max_ongoing=1)
    for rid in range(4):
        r.route(rid)
    assert reps[0].got == [0] and reps[1].got == [1] and list(r.queue) == [2, 3] and r.held == 2
    reps[1].reqs = 0  # replica 1 finished its request
    r.pull(reps[1])
    assert reps[1].got == [1, 2] and list(r.queue) == [3]


def test_connect_takes_only_the_hooks_given():
    """A replica is driven through a typed record of hooks; those left None keep what it had."""
    import math

    import simpy

    from core.kv_cache import BlockPool
    from core.records import RequestTable, StepStats
    from core.scheduler import Scheduler, SchedulerConfig
    from simulator.replica import Replica, ReplicaHooks

    table = RequestTable(np.zeros(1), np.array([10]), np.array([5]))
    rep = Replica(simpy.Environment(), 0, Scheduler(BlockPool(10, 16), SchedulerConfig(4, 64)), None, table,
                  StepStats(1.0))  # fmt: skip
    assert rep.next_arrival() == math.inf and rep.track_future is False
    rep.connect(ReplicaHooks(next_arrival=lambda: 3.0))
    rep.connect(ReplicaHooks(track_future=True))
    assert rep.next_arrival() == 3.0 and rep.track_future is True and rep.hold is None
    placed = Replica(simpy.Environment(), 1, Scheduler(BlockPool(10, 16), SchedulerConfig(4, 64)), None, table,
                     StepStats(1.0), group="g", group_index=2, run_cap=1)  # fmt: skip
    assert (placed.group, placed.group_index, placed.run_cap, placed.draft_time) == ("g", 2, 1, None)
