"""One model replica as a SimPy process: one event per model step (or per run of identical steps).

The replica asks the scheduler for a batch, asks the cost model what the step costs, advances the
clock by that, and records what the step produced. When only decodes can run and nothing changes
until the next finish, the steps up to that finish are costed together with numpy and taken as one
timeout; an arrival during such a run ends it at the next step boundary, exactly where a real
engine would admit the new request. The per-step results are identical to stepping one by one.
A lone replica reading its own arrivals chains its steps on its own clock and waits in SimPy only
when idle.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import simpy

from core.cost_model import BatchShape, CostModel
from core.kv_cache import BlockPool
from core.records import RequestTable, StepRecorder, StepStats
from core.scheduler import Batch, Scheduler, Sequence

RUN_CAP = 4096  # most decode steps costed in one event


@dataclass(slots=True)
class ReplicaHooks:
    """How the rest of a deployment drives a replica, handed over with `Replica.connect` (None: left as is).

    A cluster's router or a disaggregated pair gives these instead of setting attributes on the replica."""

    before_step: Callable[[], None] | None = None  # runs at every step boundary
    # work outside waits for this replica (a run then stops at its next finish)
    hold: Callable[[], int] | None = None
    next_join: Callable[[], float] | None = None  # when the next sequence prefilled elsewhere joins
    next_arrival: Callable[[], float] | None = None  # when the next request that may come here arrives
    handoff: Callable[[Sequence, float], None] | None = None  # prefill role: pass a prefilled sequence on
    on_finish: Callable[[int, float], None] | None = None  # (request id, finish time), for next turns
    track_future: bool | None = None  # show a router the load as of now, not as of the end of a run
    # a source whose arrivals only this replica takes: it reads them at its step boundaries (pulling)
    arrivals: object | None = None


class Replica:
    def __init__(
        self,
        env: simpy.Environment,
        index: int,
        scheduler: Scheduler,
        cost: CostModel,
        table: RequestTable,
        stats: StepStats,
        static: bool = False,
        role: str = "colocated",
        *,
        group=None,
        group_index: int = 0,
        draft_time=None,
        run_cap: int = RUN_CAP,
        host_phases=None,
    ) -> None:
        """`group` (simulator/cluster.py's Group) and `group_index`: where this replica was deployed;
        `draft_time`: speculative decoding's drafting cost (simulator/speculative.py's DraftCost);
        `run_cap`: most decode steps costed in one event (1: one at a time, to check the shortcut);
        `host_phases`: the engine's host-time drift (simulator/host_phases.py's HostPhaseClock; run_cap 1)."""
        self.env, self.index = env, index
        self.group, self.group_index = group, group_index
        self.scheduler, self.cost, self.table, self.stats = scheduler, cost, table, stats
        self.pool: BlockPool = scheduler.pool
        self.wake: simpy.Event | None = None
        self.recorder = StepRecorder(table, stats, scheduler)
        self.outstanding_tokens = 0  # prompt + output tokens of requests held and not finished (routing)
        self.ongoing = 0  # requests held and not finished
        self.completed = 0  # requests this replica finished (prefill role: handed on), for the early stop
        # Roles (simulator/disaggregation.py): "prefill" computes prompts and the first token, then
        # hands each request to `handoff(seq, t)`; "decode" also takes requests prefilled elsewhere.
        self.role = role
        self.handoff = None
        self.step_end = 0.0  # end of the step or run in progress
        # Cluster hooks (simulator/cluster.py): `before_step()` runs at every step boundary; `hold()`
        # says work outside waits for this replica's capacity (a run then stops at its next finish);
        # `next_join()` is when the next sequence prefilled elsewhere joins (it always does).
        self.before_step = None
        self.hold = None
        self.next_join = _never
        # finishes already committed by a run but not yet reached in time, so that a router looking at
        # this replica sees its load as of now, not as of the end of the run
        self.track_future = False
        self._future: deque[tuple[float, int]] = deque()
        self.next_arrival = lambda: math.inf  # time of the next request into the system (set by the cluster)
        self.on_finish = None  # callback(rid, finish_s), for conversations' next turns
        self.draft_time = draft_time  # speculative decoding: seconds of drafting for (n sequences, context)
        self._due: list[int] = []  # finishes inside a run whose callbacks fire when the run's event ends
        self.run_cap = run_cap
        self.host_phases = host_phases
        # A source whose arrivals only this replica takes (ReplicaHooks.arrivals): the replica then
        # reads them at its step boundaries instead of being sent each one by an event.
        self.arrivals = None
        # A pulling replica runs ahead of the SimPy clock while busy; past `sync_at` (`sync_by`) it lets
        # the clock catch up with one timeout, so that the simulation can look at it between chunks
        # (nothing else is scheduled: the results are the same).
        self.sync_at = math.inf
        # async scheduling (CostModel.decode_overlap, engine.serving._Loop): the engine decides the step after a
        # decode-only one while that one runs, at its start, so a request arriving during it joins a step later
        # than a loop that waits for each step would take it. Pulling replicas read arrivals up to `_seen`; a
        # router's arrivals during such a step wait in `_late` until the next decision is made.
        self.overlap = getattr(cost, "decode_overlap", False)
        self._late_steps = 1 if self.overlap else 0  # how many steps later an arrival joins a decode run
        self._seen = 0.0
        self._late: list[Sequence] = []
        self._hide_after = math.inf  # a router's arrivals after this time are held (the running step's start)
        self._last_step_s = 0.0  # the last decode run's last step, seconds
        self._after_wait = True  # the last step was one the loop waited for (the next decode pays its host)
        self.process = env.process(self._static_loop() if static else self._loop())

    def connect(self, hooks: ReplicaHooks) -> None:
        """Take the hooks a cluster or a disaggregated pair gives (those not None)."""
        for name in ReplicaHooks.__slots__:
            value = getattr(hooks, name)
            if value is not None:
                setattr(self, name, value)

    def sync_by(self, t: float) -> None:
        """A pulling replica lets the SimPy clock catch up with it once its steps pass time t."""
        self.sync_at = t

    # ------------------------------------------------------------------ arrivals
    def submit(self, rid: int) -> None:
        t = self.table
        prompt, output = t.prompt_tokens.item(rid), t.output_tokens.item(rid)
        if self.role == "prefill":  # the prefill replica samples the first token only
            output = 1
        t.replica[rid] = self.index
        seq = Sequence(rid, prompt, output)
        # (async scheduling: the next step was decided before it came; env.now read only while that can be)
        if self._hide_after != math.inf and self.env.now > self._hide_after:
            self._late.append(seq)
        else:
            self.scheduler.add(seq)
        self.outstanding_tokens += prompt + output
        self.ongoing += 1
        if self.wake is not None:
            self.kick()

    def join_prefilled(self, seq: Sequence) -> None:
        """A sequence prefilled elsewhere, its KV blocks already allocated here, joins the decode batch
        (its load was counted here when it was routed here)."""
        self.table.replica[seq.rid] = self.index
        self.scheduler.add_prefilled(seq)
        self.recorder.joined(seq, self.table.first_token_s[seq.rid])

    def _release_late(self) -> None:
        """A router's arrivals held back during an overlapped decode step enter the queue (the decision they
        missed is made)."""
        for seq in self._late:
            self.scheduler.add(seq)
        self._late.clear()

    def _async_step(self, batch: Batch, dt: float) -> tuple[bool, float]:
        """Async scheduling: whether the step overlaps the next one's host work (a decode-only step), and its
        seconds: a decode step right after one the loop waited for pays its host time (nothing ran meanwhile)."""
        overlaps = self._overlaps(batch)
        if overlaps and self._after_wait:
            dt += self.cost.decode_hidden(batch.shape)
        self._after_wait = not overlaps
        return overlaps, dt

    def _overlaps(self, batch: Batch) -> bool:
        """Whether async scheduling overlaps this step's host work: a decode-only step (engine.serving's rule)."""
        return self.overlap and not batch.prefills and not batch.spec_k and batch.num_decodes > 0

    def kick(self) -> None:
        """Wake the replica if it is idle (new work, or blocks freed)."""
        if self.wake is not None and not self.wake.triggered:
            self.wake.succeed()

    def load(self) -> tuple[int, int]:
        """(outstanding tokens, ongoing requests) as of now."""
        tokens, reqs, fut, now = self.outstanding_tokens, self.ongoing, self._future, self.env.now
        while fut and fut[0][0] <= now:
            fut.popleft()
        for _, n in fut:
            tokens += n
            reqs += 1
        return tokens, reqs

    def _idle(self):
        """Wait until kicked (new work, or blocks freed); returns the time then."""
        self.wake = self.env.event()
        yield self.wake
        self.wake = None
        return self.env.now

    # ------------------------------------------------------------------ continuous batching
    def _loop(self):
        """Continuous batching. Fed by the router (`submit`), each step or run of decode steps is one SimPy
        timeout. Fed by `arrivals` directly (pulling), arrivals join at the first step boundary at or after
        their time, where a real engine admits them, as when the source sends them; steps and runs then
        follow one another on the replica's own clock `now`, and the process waits in simulated time only
        while it has nothing to do, catching up with its clock then (no other process looks at it meanwhile)."""
        sched, env, src, cost = self.scheduler, self.env, self.arrivals, self.cost
        pulling = src is not None
        times = src.times if pulling else ()  # times[src.next]: the next arrival (inf after the last)
        now = env.now
        while True:
            if pulling:
                if now >= self.sync_at:
                    self.sync_at = math.inf
                    yield env.timeout(now - env.now)
                seen = min(self._seen, now) if self.overlap else now
                if times[src.next] <= seen:
                    src.take(seen)
            elif self.before_step is not None:
                self.before_step()
            if not (sched.waiting or sched.running):
                # (async scheduling: arrivals held back since nothing more was decided)
                if self._late or (pulling and times[src.next] <= now):
                    self._release_late()
                    self._seen = now
                    continue
                now = yield from (self._wait_arrival(now) if pulling else self._idle())
                self._seen = now
                continue
            # (async: a decode step after one the loop waited for is priced alone, its host time not hidden)
            run = (
                None if self._late or (self.overlap and self._after_wait) else sched.decode_run(self.run_cap)
            )
            if run is not None and run[0] > 1:
                if pulling:
                    now += self._decode_ahead(run[0], run[1], now)
                else:
                    now = yield from self._decode_run(*run)
                if self.overlap:
                    self._seen, self._after_wait = now - self._last_step_s, False
                continue
            if sched.timeout_s is not None:
                sched.expire(now)
            batch = sched.schedule()
            if self._late:
                self._release_late()
            if batch is None:  # waiting work that cannot start until something arrives
                now = yield from (self._wait_arrival(now) if pulling else self._idle())
                self._seen = now
                continue
            dt, prefill_s = cost.step_split(batch.shape)
            if self.draft_time is not None:
                dt, prefill_s = self._with_drafting(batch, dt, prefill_s)
            if self.host_phases is not None:  # the engine's host level now (simulator/host_phases.py)
                extra = self.host_phases.extra(now, cost.host_time(batch.shape), dt)
                dt, prefill_s = dt + extra, prefill_s * (1.0 + extra / dt) if dt else prefill_s
            start = now
            overlaps = False
            if self.overlap:  # async scheduling (see __init__)
                overlaps, dt = self._async_step(batch, dt)
            if pulling:
                now += dt
                seen = start if overlaps else now
                if times[src.next] <= seen:  # arrivals during the step are queued when it ends
                    src.take(seen)
            else:
                self.step_end = start + dt
                if overlaps:
                    self._hide_after = start
                yield env.timeout(dt)
                if overlaps:
                    self._hide_after = math.inf
                now = env.now
            if self.overlap:
                self._seen = start if overlaps else now
            self._record_step(batch, dt, prefill_s, start, now)
            if self._due and not pulling:
                self._fire_due()

    def _wait_arrival(self, now: float):
        """Wait (in simulated time, from where the clock last stood) for the next arrival; returns its time."""
        nxt = self.arrivals.next_arrival()
        if nxt == math.inf:  # nothing more will come: catch up with the clock and wait for good
            if now > self.env.now:
                yield self.env.timeout(now - self.env.now)
            yield self.env.event()
        yield self.env.timeout(nxt - self.env.now)
        return nxt

    def _with_drafting(self, batch: Batch, dt: float, prefill_s: float) -> tuple[float, float]:
        """Add the draft model's work: prefill of new prompt chunks and, in a speculative round, drafting."""
        prompt = sum(c for _, c in batch.prefills)
        if prompt:
            draft = self.draft_time.draft
            shape = BatchShape.of(
                [(c, s.computed) for s, c in batch.prefills],
                fresh=draft.fresh if draft is not None else None,
                logits_tokens=0,
            )
            extra = self.draft_time.prefill(shape)
            dt += extra
            prefill_s += extra
        if batch.spec_k:  # drafting, then verification, counted as output work
            dt += self.draft_time(batch.num_decodes, batch.decode_context)
            prefill_s = dt * prompt / batch.shape.tokens
        return dt, prefill_s

    def _record_step(self, batch: Batch, dt: float, prefill_s: float, start: float, end: float) -> None:
        res = self.scheduler.complete(batch)
        self.recorder.step(batch, res.first_tokens, dt, prefill_s, start, end)
        if res.finished:
            self._finish(res.finished, end)
        if end >= self.stats.next_sample:
            self.recorder.sample(end, batch.shape.decode_seqs + batch.shape.prefill_seqs)

    def _finish(self, finished: list[Sequence], end: float) -> None:
        if self.track_future and end > self.env.now:
            self._future.extend((end, s.orig_prompt + s.output) for s in finished)
        self.ongoing -= len(finished)
        self.completed += len(finished)
        if self.role == "prefill":
            self._prefilled(finished, end)
            return
        self.recorder.finished(finished, end)
        due = self.on_finish is not None
        for s in finished:
            if due:
                self._due.append(s.rid)
            self.outstanding_tokens -= s.orig_prompt + s.output

    def _prefilled(self, finished: list[Sequence], end: float) -> None:
        """Prefill role: requests with more to generate go on to a decode replica."""
        t = self.table
        for s in finished:
            self.outstanding_tokens -= s.orig_prompt + s.output
            if t.output_tokens[s.rid] > 1:
                self.handoff(s, end)
                continue
            self.recorder.finished([s], end)
            if self.on_finish is not None:
                self._due.append(s.rid)

    def _decode_run(self, k: int, blocks: int):
        """Decode-only steps costed in closed form and taken as one event; returns the time after them."""
        start = self.env.now
        t = self._decode_ahead(k, blocks, start)
        self.step_end = start + t
        if self.overlap:  # async scheduling: the step after the run is decided at its last step's start
            self._hide_after = start + t - self._last_step_s
        yield self.env.timeout(t)
        self._hide_after = math.inf
        self._fire_due()
        return self.env.now

    def _decode_ahead(self, k: int, blocks: int, start: float) -> float:
        """Commit decode-only steps from `start`, in closed form; returns their seconds.

        The run goes from finish to finish while nothing else could be scheduled. If the next arrival
        could join the batch, it ends at the first step boundary after that arrival (where a real
        engine would admit it): the source's arrival times are known in advance, and no other process
        can observe this replica before then.
        """
        sched, cap = self.scheduler, self.run_cap
        next_join, next_arrival, hold = self.next_join, self.next_arrival, self.hold
        joins = next_join is not _never
        t = 0.0
        while True:
            horizon = next_join() - start - t if joins else math.inf
            arrival = next_arrival()
            if not sched.waiting and len(sched.running) < sched.max_seqs and arrival - start - t < horizon:
                horizon = arrival - start - t
            m, dt = self._decode_segment(k, blocks, start + t, horizon, t > 0)
            t += dt
            if m < k or arrival <= start + t or self._due:  # cut short, an arrival, a callback
                break
            if (joins and next_join() <= start + t) or (hold is not None and hold()):
                break
            run = sched.decode_run(cap)
            if run is None:
                break
            k, blocks = run
        return t

    def _fire_due(self) -> None:
        t = self.table
        for rid in self._due:
            self.on_finish(rid, t.finish_s[rid])
        self._due.clear()

    def _decode_segment(
        self, k: int, blocks: int, start: float, horizon: float, pulled: bool = False
    ) -> tuple[int, float]:
        """Commit up to k decode steps of the current batch from time `start`; stops at the step in
        progress at `horizon` seconds (async scheduling: at the step after it, the first one decided after the
        arrival; at the first step when the horizon has passed, unless this segment continues a run, `pulled`).
        Returns (steps, seconds); `_last_step_s`: the last step's seconds."""
        late = self._late_steps
        # async: an arrival before this segment (unseen, not pulled in by an earlier segment of the run) stops it
        # after its first step
        first_only = late and horizon <= 0 and not pulled
        sched, st, pool, rec = self.scheduler, self.stats, self.pool, self.recorder
        n = sched.n_decoding
        context = sched.c_sum + n * sched.dstep
        line = self.cost.decode_step_line(n, context, k)
        if line is None:  # a kink in the roofline inside the run: cost each step
            times = self.cost.decode_step_times(n, context + n * np.arange(k))
            ends = np.cumsum(times)
            a = float(times[0])
            m = 1 if first_only else min(int(np.searchsorted(ends, horizon, side="right")) + 1 + late, k)
            done = float(ends[m - 1])
            if late:
                self._last_step_s = float(times[m - 1])
        else:
            a, b = line
            done = k * a + b * k * (k - 1) / 2
            m = k
            if horizon < done:
                m = 1 if first_only else min(_steps_done(a, b, horizon) + 1 + late, k)
                done = m * a + b * m * (m - 1) / 2
            if late:
                self._last_step_s = a + b * (m - 1)
        if m < k or blocks < 0:
            blocks = sched.blocks_over(m)
        # _record_step's sums over m decode steps at once, blocks growing evenly over the run; kept equal by
        # tests/simulator/test_replica.py::test_decode_run_stats_equal_stepping_one_by_one
        st.steps += m
        st.busy_s += done
        st.decode_s += done
        st.kv_block_seconds += (pool.num_blocks - pool.free + blocks / 2) * done
        st.batch_seq_steps += n * m
        if rec.just_joined:
            rec.decode_itl(n, start + a)
        else:  # (StepRecorder.decode_itl, inline; last_decode_end is set below)
            st.add_itl(start + a - rec.last_decode_end, n)
        if m > 1:
            if line is None:
                st.add_itl_many(times[1:m], n)
            else:
                st.add_itl_line(a, b, 1, m, n)
        end = start + done
        rec.last_decode_end = end
        finished = sched.advance_decodes(m, blocks)
        if finished:
            self._finish(finished, end)
        if end >= st.next_sample:
            st.sample(end, len(sched.waiting), len(sched.running), pool.used, n)
        return m, done

    # ------------------------------------------------------------------ static batching
    def _static_loop(self):
        sched, env, t, st, pool, cost = self.scheduler, self.env, self.table, self.stats, self.pool, self.cost
        while True:
            if self.before_step is not None:
                self.before_step()
            batch = sched.static_batch()
            if batch is None:
                yield from self._idle()
                continue
            seqs, p_max, o_max = batch.seqs, batch.prompt_tokens, batch.output_tokens
            n = len(seqs)
            start = env.now
            for s in seqs:
                t.scheduled_s[s.rid] = start
            # prefill, as many padded prompts per step as the token budget allows
            per_step = max(1, sched.max_tokens // p_max)
            for i in range(0, n, per_step):
                m = min(per_step, n - i)
                shape = BatchShape.of(
                    [(p_max, 0)] * m, window=sched.window, fresh=cost.fresh, logits_tokens=m
                )
                dt = cost.step_time(shape)
                yield env.timeout(dt)
                st.steps += 1
                st.busy_s += dt
                st.prefill_s += dt
                st.prefill_tokens += m * p_max
                st.kv_block_seconds += pool.used * dt
                st.batch_seq_steps += m
            first = env.now
            for s in seqs:
                t.first_token_s[s.rid] = first
            # decode all n rows until the longest output is done
            if o_max > 1:
                times = cost.decode_step_times(n, n * (p_max + np.arange(1, o_max)))
                ends = first + np.cumsum(times)
                yield env.timeout(float(ends[-1] - first))
                self._static_decoded(seqs, times)
            for s in seqs:
                t.finish_s[s.rid] = first if s.output == 1 else float(ends[s.output - 2])
                t.generated[s.rid] = s.output
                if self.on_finish is not None:
                    self._due.append(s.rid)
                self.outstanding_tokens -= s.orig_prompt + s.output
            self.ongoing -= n  # slots come back when the whole batch is done
            self.completed += n
            sched.static_done(batch)
            st.sample(env.now, len(sched.waiting), n, pool.used, n)
            self._fire_due()

    def _static_decoded(self, seqs: list[Sequence], times: np.ndarray) -> None:
        """Record a static batch's decode steps of `times` seconds each (every row decodes until the longest
        output is done; a row's tokens count until its own output is)."""
        st, pool, n, steps = self.stats, self.pool, len(seqs), len(times)
        outs = np.array([s.output for s in seqs])
        counts = np.array([(outs >= j + 2).sum() for j in range(steps)])
        idx = np.arange(steps)
        for j in np.unique(counts):
            if j:
                st.add_itl_many(times[idx[counts == j]], int(j))
        busy = float(times.sum())
        st.steps += steps
        st.busy_s += busy
        st.decode_s += busy
        st.kv_block_seconds += pool.used * busy
        st.batch_seq_steps += n * steps


def _never() -> float:
    return math.inf


def _steps_done(a: float, b: float, elapsed: float) -> int:
    """Largest m with m·a + b·m·(m−1)/2 <= elapsed (steps of a + b·j seconds)."""
    if b <= 0:
        m = int(elapsed / a)
    else:
        h = a - b / 2
        m = int((-h + math.sqrt(h * h + 2 * b * elapsed)) / b)
    while m > 0 and m * a + b * m * (m - 1) / 2 > elapsed:
        m -= 1
    while (m + 1) * a + b * (m + 1) * m / 2 <= elapsed:
        m += 1
    return m
