"""Step statistics: the ITL histogram binned in batches against binning each run on its own."""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from core.records import _EDGE, _LAST, ITL_BINS_PER_DECADE, ITL_LO, StepStats


def bin_of(seconds: float) -> int:
    return min(int(math.log10(seconds / ITL_LO) * ITL_BINS_PER_DECADE), _LAST) if seconds > ITL_LO else 0


def one_by_one(lines) -> np.ndarray:
    """Each run binned on its own: both ends by their logarithm, and where they differ the steps between
    split at the bins' edges."""
    hist = np.zeros(_LAST + 1, dtype=np.int64)
    for a, b, j0, j1, count in lines:
        lo, hi = bin_of(a + b * j0), bin_of(a + b * (j1 - 1))
        if lo == hi or b <= 0:
            hist[lo] += count * (j1 - j0)
            continue
        below = j0
        for i in range(lo + 1, hi + 1):
            upto = min(max(math.ceil((ITL_LO * _EDGE**i - a) / b), below), j1)
            hist[i - 1] += count * (upto - below)
            below = upto
        hist[hi] += count * (j1 - below)
    return hist


line = st.tuples(
    st.floats(1e-7, 5.0),  # a
    st.one_of(st.just(0.0), st.floats(0.0, 1e-3)),  # b
    st.integers(0, 3),  # j0
    st.integers(1, 300),  # steps
    st.integers(1, 256),  # count
)


@settings(max_examples=60, deadline=None)
@given(st.lists(line, min_size=1, max_size=40))
def test_runs_of_steps_are_binned_as_each_token_would_be(runs):
    lines = [(a, b, j0, j0 + k, c) for a, b, j0, k, c in runs]
    stats = StepStats(1.0)
    for ln in lines:
        stats.add_itl_line(*ln)
    assert np.array_equal(stats.itl_hist, one_by_one(lines))


def test_durations_at_bin_edges():
    # durations exactly at (and one bit either side of) computed bin edges, where numpy's and math's
    # logarithms could disagree
    stats = StepStats(1.0)
    lines = []
    for i in (1, 7, 500, 1234, 2500, 3999, _LAST - 1):
        edge = ITL_LO * _EDGE**i
        for x in (math.nextafter(edge, 0), edge, math.nextafter(edge, 1)):
            lines.append((x, 0.0, 0, 3, 2))
        lines.append((edge * 0.999, edge * 1e-4, 0, 40, 1))  # a run across the edge
    for ln in lines:
        stats.add_itl_line(*ln)
    assert np.array_equal(stats.itl_hist, one_by_one(lines))


def test_many_runs_flush_in_batches_and_match():
    rng = np.random.default_rng(0)
    stats = StepStats(1.0)
    lines = []
    for _ in range(20_000):  # more than one batch
        a = float(rng.uniform(0.005, 0.05))
        ln = (a, float(rng.uniform(0, a * 1e-3)), 1, int(rng.integers(2, 60)), int(rng.integers(1, 64)))
        lines.append(ln)
        stats.add_itl_line(*ln)
    assert np.array_equal(stats.itl_hist, one_by_one(lines))
    assert stats.itl_hist.sum() == sum((j1 - j0) * c for _, _, j0, j1, c in lines)


def _stepped(sched, rec, t_end: float) -> None:
    """Schedule one step, complete it at `t_end` and record it as an executor does."""
    batch = sched.schedule()
    res = sched.complete(batch)
    rec.step(batch, res.first_tokens, 1.0, 0.0, t_end - 1.0, t_end)
    rec.finished(res.finished, t_end)


def test_recorder_counts_a_fresh_sequence_that_finishes_at_once_from_its_first_token():
    """A sequence whose first token came in a step without decodes and that finishes at the next decode
    step: its gap runs from its own first token, not from the previous decode step."""
    from core.kv_cache import BlockPool
    from core.records import RequestTable, StepRecorder
    from core.scheduler import Scheduler, SchedulerConfig, Sequence

    table = RequestTable(np.zeros(2), np.array([10, 10]), np.array([5, 2]))
    stats = StepStats(1.0)
    sched = Scheduler(BlockPool(100, 16), SchedulerConfig(8, 64, chunked_prefill=False))
    rec = StepRecorder(table, stats, sched)
    sched.add(Sequence(0, 10, 5))
    _stepped(sched, rec, 1.0)  # A's prompt: its first token
    _stepped(sched, rec, 2.0)  # A decodes
    sched.add(Sequence(1, 10, 2))
    _stepped(sched, rec, 3.0)  # B's prompt alone (no chunking): B's first token
    _stepped(sched, rec, 4.0)  # A and B decode; B is done
    assert table.finish_s[1] == 4.0 and table.first_token_s[1] == 3.0
    want = StepStats(1.0)
    for gap in (1.0, 2.0, 1.0):  # A: 2 − 1 and 4 − 2; B: 4 − 3
        want.add_itl(gap, 1)
    assert (stats.itl_hist == want.itl_hist).all()
