"""Prefill/decode disaggregation: prompts computed on a prefill pool, their KV sent to a decode pool.

As vLLM's disaggregated prefill (NIXL connector) and DistServe run it: a prefill replica computes the
prompt and samples the first token (TTFT is set there), then keeps the prompt's KV until it has been
read. The request goes to a decode replica (chosen by the router), which admits it like any request,
when it has a free sequence slot and KV blocks for the prompt (vLLM's WAITING_FOR_REMOTE_KVS); only
then does the KV cross the link, taking latency + bytes / bandwidth, one transfer after another on a
busy link. When the KV has landed, the sequence joins the decode batch at the next step boundary
and the prefill replica frees its blocks.

Conditional disaggregation: prompts with at most `local_prefill_max_tokens` tokens left to compute
(short, or mostly in a decode replica's prefix cache) skip the prefill pool and are prefilled by the
decode replica itself (their transfer would cost more than it saves).

A link is FIFO with known service times, so a transfer's completion time is known when it starts;
that is the same queue a `simpy.Resource` of capacity 1 would give, and the decode replica needs
that time in advance to bound its runs of decode steps (`Replica.next_join`).
"""

from __future__ import annotations

import heapq
import math
from collections import deque

import numpy as np
import simpy

from core.model_spec import ModelSpec
from core.scheduler import Sequence
from simulator.replica import Replica, ReplicaHooks
from simulator.router import Router
from simulator.scenario import Disaggregation


class Link:
    """One KV-transfer link: bytes serialise at `bandwidth` one transfer at a time; latency is added
    to each (pipelined, as RDMA writes are)."""

    def __init__(self, env: simpy.Environment, bandwidth_bytes_per_s: float, latency_s: float) -> None:
        self.env, self.bw, self.latency = env, bandwidth_bytes_per_s, latency_s
        self.free_at = 0.0
        self.busy_s = 0.0
        self.transfers = 0

    def send(self, nbytes: float) -> tuple[float, float]:
        """Queue a transfer now; returns (start, done): when it gets the link, and when it has landed."""
        start = max(self.env.now, self.free_at)
        dt = nbytes / self.bw
        self.free_at = start + dt
        self.busy_s += dt
        self.transfers += 1
        return start, self.free_at + self.latency


def kv_bytes(model: ModelSpec, kv_dtype: str, prompt: int) -> float:
    """Bytes of a prompt's KV cache over all layers (sliding-window layers keep their window only)."""
    b = prompt * model.kv_bytes_per_token(kv_dtype)
    if model.sliding_layers:
        b += min(prompt, model.sliding_window) * model.sliding_kv_bytes_per_token(kv_dtype)
    return b


class Disaggregated:
    """Wires a prefill pool to a decode pool through KV-transfer links."""

    def __init__(
        self,
        env: simpy.Environment,
        spec: Disaggregation,
        model: ModelSpec,
        kv_dtype: str,
        table,
        source,
        prefill: list[Replica],
        decode: list[Replica],
        prefill_replica_of: list[int],
        prefill_router: Router,
        decode_router: Router,
    ) -> None:
        self.env, self.spec, self.model, self.kv_dtype = env, spec, model, kv_dtype
        self.table, self.source = table, source
        self.prefill, self.decode = prefill, decode
        self.prefill_router, self.decode_router = prefill_router, decode_router
        lk = spec.link
        if lk.per == "pool":
            shared = Link(env, lk.bandwidth_gbps * 1e9, lk.latency_s)
            self.links = {p: shared for p in prefill}
        else:  # one per prefill replica, shared by its virtual engines
            by_replica: dict[int, Link] = {}
            self.links = {
                p: by_replica.setdefault(r, Link(env, lk.bandwidth_gbps * 1e9, lk.latency_s))
                for p, r in zip(prefill, prefill_replica_of, strict=True)
            }
        self.pending: dict[Replica, deque] = {d: deque() for d in decode}  # routed here, not admitted
        self.arriving: dict[Replica, list] = {d: [] for d in decode}  # (done, rid, seq) in flight to d
        self.in_flight: list[float] = []  # done times of all transfers in flight
        n = len(table)
        self.handoff_s = np.full(n, np.nan)  # first token on the prefill replica
        self.start_s = np.full(n, np.nan)  # transfer got the link
        self.done_s = np.full(n, np.nan)  # KV landed on the decode replica
        self.bytes = 0.0
        self.local = 0  # requests prefilled on the decode pool
        for p in prefill:
            p.connect(ReplicaHooks(handoff=self._handoff_from(p)))
        for d in decode:
            d.connect(
                ReplicaHooks(
                    before_step=self._boundary_of(d),
                    hold=self.pending[d].__len__,
                    next_join=self._next_join_of(d),
                    next_arrival=self._next_handoff,
                    track_future=True,
                )
            )

    # ------------------------------------------------------------------ entry
    def route(self, rid: int) -> None:
        """A new request: prompts with at most local_prefill_max_tokens to compute (short ones, or ones
        mostly in a decode replica's prefix cache) stay on the decode pool; the rest go to the prefill pool."""
        todo = int(self.table.prompt_tokens[rid])
        limit = self.spec.local_prefill_max_tokens
        if limit and todo > limit:
            todo -= max(self._cached_tokens(d, rid) for d in self.decode)
        if todo <= limit:
            self.local += 1
            self.decode_router.route(rid)
        else:
            self.prefill_router.route(rid)

    @staticmethod
    def _cached_tokens(d: Replica, rid: int) -> int:
        """Prompt tokens of `rid` that decode replica d holds in its prefix cache now."""
        sched = d.scheduler
        if not sched.block_keys:
            return 0
        prompt = int(d.table.prompt_tokens[rid])
        return sched.pool.lookup(sched.block_keys(rid, prompt), (prompt - 1) // sched.B)[0] * sched.B

    # ------------------------------------------------------------------ prefill side
    def _handoff_from(self, p: Replica):
        def handoff(s: Sequence, end: float) -> None:
            held = p.pool.blocks_for(s.prompt) + s.window_blocks
            p.pool.allocate(held)  # the prompt's KV stays until the decode replica has read it
            t = self.table
            rid = s.rid
            self.handoff_s[rid] = end
            d = self.decode_router.pick(rid)
            seq = Sequence(rid, s.prompt, int(t.output_tokens[rid]), generated=1)
            seq.window_blocks = d.scheduler.window_blocks(seq.orig_prompt + seq.output)
            d.outstanding_tokens += seq.orig_prompt + seq.output
            d.ongoing += 1
            self.pending[d].append((seq, p, held))
            d.kick()

        return handoff

    # ------------------------------------------------------------------ decode side
    def _boundary_of(self, d: Replica):
        sched, pool, pending, arriving, env = d.scheduler, d.pool, self.pending[d], self.arriving[d], self.env

        def boundary() -> None:
            while arriving and arriving[0][0] <= env.now:
                seq = heapq.heappop(arriving)[2]
                d.join_prefilled(seq)
            while pending:
                seq, p, held = pending[0]
                if len(sched.running) + len(arriving) >= sched.max_seqs:
                    return
                need = pool.blocks_for(seq.prompt) + seq.window_blocks
                if not pool.can_allocate(need, sched.watermark):
                    return
                pending.popleft()
                pool.allocate(need)
                self._transfer(d, seq, p, held)

        return boundary

    def _transfer(self, d: Replica, seq: Sequence, p: Replica, held: int) -> None:
        nbytes = kv_bytes(self.model, self.kv_dtype, seq.prompt)
        start, done = self.links[p].send(nbytes)
        rid = seq.rid
        self.start_s[rid], self.done_s[rid] = start, done
        self.bytes += nbytes
        heapq.heappush(self.arriving[d], (done, rid, seq))
        heapq.heappush(self.in_flight, done)

        def landed(_event) -> None:
            p.pool.release(held)
            p.kick()
            d.kick()

        self.env.timeout(done - self.env.now).callbacks.append(landed)

    def _next_join_of(self, d: Replica):
        arriving = self.arriving[d]
        return lambda: arriving[0][0] if arriving else math.inf

    def _next_handoff(self) -> float:
        """Earliest time a new request could reach a decode replica: the next arrival, the end of a
        prefill step in progress, or (if a prefill replica waits for blocks) the next transfer landing."""
        now = self.env.now
        t = self.source.next_arrival()
        blocked = False
        for p in self.prefill:
            if p.step_end >= now:
                t = min(t, p.step_end)
            elif p.scheduler.waiting:
                blocked = True
        if blocked:
            fl = self.in_flight
            while fl and fl[0] < now:
                heapq.heappop(fl)
            if fl:
                t = min(t, fl[0])
        return t

    # ------------------------------------------------------------------ results
    def summary(self, makespan: float) -> dict:
        sent = np.isfinite(self.done_s)
        wait = self.start_s[sent] - self.handoff_s[sent]
        total = self.done_s[sent] - self.handoff_s[sent]
        links = {id(k): k for k in self.links.values()}.values()

        def pct(x: np.ndarray, q: float) -> float:
            return float(np.percentile(x, q)) if len(x) else math.nan

        return {
            "transfers": int(sent.sum()),
            "local_prefills": self.local,
            "kv_gib": self.bytes / 2**30,
            "handoff_to_kv_landed_s": {
                "mean": float(total.mean()) if len(total) else math.nan,
                "p99": pct(total, 99),
            },  # fmt: skip
            "wait_for_decode_slot_and_link_s": {
                "mean": float(wait.mean()) if len(wait) else math.nan,
                "p99": pct(wait, 99),
            },  # fmt: skip
            "link_busy_fraction": max((lk.busy_s / max(makespan, 1e-12) for lk in links), default=0.0),
            "links": len(links),
        }
