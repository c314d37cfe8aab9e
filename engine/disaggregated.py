"""Disaggregated prefill/decode in the engine: a prefill process and a decode process, the prompt's KV sent
between them, each with the simulator's scheduler over its own KV blocks.

The prefill rank runs the ordinary serving loop (engine.serving.serve) on requests whose output is their
first token, as a prefill replica of the simulator does: the first token's time is the request's TTFT.
When a prompt completes, before its KV region is freed, `PrefillExecutor` copies the prompt's KV out of
every layer's pools into one buffer and sends it to the decode rank as one message (after a small header:
request id, prompt length, first token, the send's time, and the prompt's token ids), without waiting.

The decode rank (`decode_loop`) polls for headers at step boundaries; when one has come it receives the
KV, and admits the request as the simulator's decode replica does (`simulator.disaggregation`): once a
sequence slot and the prompt's blocks are free, the blocks are allocated, the KV is copied into the
sequence's region and the sequence joins decoding (`Scheduler.add_prefilled`); then the same step loop as
the one-GPU engine runs its decode batches (preempted sequences are recomputed locally).

Each transfer is recorded (`Transfer`): bytes, when it was sent, when its header was seen, when its KV had
landed (one clock: `distributed.common_origin`), beside the simulator's link forecast for the
same bytes (latency + bytes / bandwidth).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from core.kv_cache import BlockPool
from core.requests import Requests
from core.scheduler import Scheduler, SchedulerConfig, Sequence
from engine.attention import fresh_rule
from engine.distributed import common_origin
from engine.serving import IDLE_SPIN_S, Executor, ServingRun, _Replay, serve

HEADER = 4  # int64: request id (-1: no more), prompt tokens, first token, send time in µs since the start


@dataclass(slots=True)
class Transfer:
    """One prompt's KV, prefill rank to decode rank (seconds since the common start)."""

    rid: int
    nbytes: int
    sent_s: float  # the prefill rank issued the send (its prompt had just completed)
    seen_s: float  # the decode rank found the header (at a step boundary)
    landed_s: float  # the KV had arrived on the decode rank

    @property
    def wire_s(self) -> float:
        """Seconds from the header seen to the KV landed: what the link model's latency + bytes/bandwidth is."""
        return self.landed_s - self.seen_s


def kv_message(model, start: int, prompt: int) -> torch.Tensor:
    """A sequence's prompt KV from every layer's pools, as one tensor [layers, 2, prompt, kv_heads, head_dim]."""
    return torch.stack(
        [torch.stack([k[start : start + prompt], v[start : start + prompt]]) for k, v in model.kv]
    )


class PrefillExecutor(Executor):
    """The prefill rank's executor: a prompt's KV and first token are sent to `peer` as it completes."""

    def __init__(self, model, pool_tokens: int, max_batch: int, peer: int, control, data=None, **kw) -> None:
        super().__init__(model, pool_tokens, max_batch, **kw)
        self.peer, self.control, self.data = peer, control, data
        self.t0 = time.perf_counter()
        self.parts: dict[int, list[np.ndarray]] = {}  # per request: its prompt's token ids so far
        self.done: dict[int, int] = {}  # request id -> first token, for prompts completed this step
        self.pending: list = []  # sends in flight, with the buffers they read

    def step(self, prefills, decodes):
        out = super().step(prefills, decodes)
        k = 0
        for start, cached, _chunk, ids, want in prefills:
            rid = int(np.flatnonzero(self.region == start)[0])
            parts = self.parts.setdefault(rid, [])
            if not cached:
                parts.clear()  # a recomputed prompt starts again
            parts.append(np.asarray(ids, dtype=np.int64))
            if want:
                self.done[rid] = int(out[k])
                k += 1
        return out

    def release(self, rid: int) -> None:
        parts = self.parts.pop(rid, None)
        if rid in self.done:
            self._send(rid, np.concatenate(parts), self.done.pop(rid))
        super().release(rid)

    def _send(self, rid: int, prompt_ids: np.ndarray, first: int) -> None:
        n = len(prompt_ids)
        kv = kv_message(self.model, int(self.region[rid]), n).contiguous()
        sent_us = int((time.perf_counter() - self.t0) * 1e6)
        head = torch.tensor([rid, n, first, sent_us], dtype=torch.int64)
        ids = torch.from_numpy(prompt_ids.copy())
        works = [
            dist.isend(head, self.peer, group=self.control),
            dist.isend(ids, self.peer, group=self.control),
        ]
        works.append(dist.isend(kv, self.peer, group=self.data))
        self.pending.append((works, head, ids, kv))
        self.pending = [p for p in self.pending if not all(w.is_completed() for w in p[0])]

    def finish(self) -> None:
        """Tell the decode rank no more prompts come, and wait for every send."""
        stop = torch.tensor([-1, 0, 0, 0], dtype=torch.int64)
        self.pending.append(([dist.isend(stop, self.peer, group=self.control)], stop, None, None))
        for works, *_ in self.pending:
            for w in works:
                w.wait()
        self.pending = []


def run_prefill(executor: PrefillExecutor, requests: Requests, pool: BlockPool, max_num_seqs: int,
                max_num_batched_tokens: int, barrier_group=None, **kw) -> ServingRun:  # fmt: skip
    """The prefill rank: serve every request's prompt and first token, sending each prompt's KV on."""
    first_only = Requests(requests.arrival_s, requests.prompt_tokens, np.ones(len(requests), dtype=np.int64))
    executor.t0 = common_origin(barrier_group)
    run = serve(executor, first_only, pool, max_num_seqs, max_num_batched_tokens, **kw)
    executor.finish()
    return run


@dataclass
class DecodeRun:
    """What the decode rank produced: its serving records (first-token times from the prefill rank), the
    transfers, and each request's full token stream (prompt ids as the prefill rank drew them)."""

    run: ServingRun
    transfers: list[Transfer]


class _Inbox:
    """A thread that receives each header, then its prompt ids and KV (blocking receives), and queues them
    for the step loop to take at a step boundary (gloo's irecv does not progress while polled)."""

    def __init__(self, executor: Executor, peer: int, control, data, t0: float) -> None:
        m = executor.model
        k = m.kv[0][0]
        self.layers, self.heads, self.dtype, self.device = len(m.kv), k.shape[1:], k.dtype, k.device
        self.peer, self.control, self.data, self.t0 = peer, control, data, t0
        self.queue: queue.Queue = queue.Queue()
        self.closed = False
        self.thread = threading.Thread(target=self._receive, daemon=True)
        self.thread.start()

    def _receive(self) -> None:
        while True:
            head = torch.zeros(HEADER, dtype=torch.int64)
            dist.recv(head, self.peer, group=self.control)
            seen = time.perf_counter() - self.t0
            rid, n, first, sent_us = head.tolist()
            if rid < 0:
                self.queue.put(None)
                return
            ids = torch.empty(n, dtype=torch.int64)
            dist.recv(ids, self.peer, group=self.control)
            kv = torch.empty((self.layers, 2, n, *self.heads), dtype=self.dtype, device=self.device)
            dist.recv(kv, self.peer, group=self.data)
            if kv.is_cuda:
                torch.cuda.synchronize(kv.device)
            landed = time.perf_counter() - self.t0
            nbytes = kv.numel() * kv.element_size()
            self.queue.put((rid, first, ids.numpy(), kv, Transfer(rid, nbytes, sent_us / 1e6, seen, landed)))

    def poll(self) -> list[tuple]:
        """Every (rid, first token, prompt ids, KV, Transfer) that has landed since the last poll."""
        got = []
        while not self.closed:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self.closed = True
                self.thread.join()
            else:
                got.append(item)
        return got


def decode_loop(executor: Executor, requests: Requests, pool: BlockPool, max_num_seqs: int,
                max_num_batched_tokens: int, peer: int = 0, control=None, data=None, seed: int = 0,
                barrier_group=None) -> DecodeRun:  # fmt: skip
    """The decode rank: admit prefilled requests as their KV lands and blocks allow, run decode steps."""
    config = SchedulerConfig(max_num_seqs, max_num_batched_tokens, True, fresh=fresh_rule(executor.device))
    sched = Scheduler(pool, config)
    run = _Replay(executor, sched, requests, seed)
    t0 = common_origin(barrier_group)
    inbox = _Inbox(executor, peer, control, data, t0)
    waiting: deque = deque()
    transfers: list[Transfer] = []
    steps = busy = 0
    while True:
        for item in inbox.poll():
            waiting.append(item)
            transfers.append(item[4])
        while waiting and len(sched.running) < sched.max_seqs:
            if not _admit(run, sched, pool, executor, *waiting[0]):
                break
            waiting.popleft()
        batch = sched.schedule() if sched.has_work() else None
        if batch is None:
            if inbox.closed and not waiting:
                break
            time.sleep(IDLE_SPIN_S / 4)
            continue
        start = time.perf_counter() - t0
        prefills, wants, dec, d_rids, d_pos = run.inputs(batch)
        sampled, kept = run.execute(batch, prefills, dec, d_rids, d_pos)
        end = time.perf_counter() - t0
        steps += 1
        busy += end - start
        run.record(batch, sched.complete(batch), sampled, wants, d_rids, d_pos, start, end, kept)
    wall = time.perf_counter() - t0
    run.table.freeze()
    unfinished = np.flatnonzero(~np.isfinite(run.table.finish_s)).tolist()
    served = ServingRun(run.table, run.stats, sched, run.token_times(), wall, 0.0, steps, 0, 0.0,
                        max(wall - busy, 0.0), unfinished, run.ids, run.off)  # fmt: skip
    return DecodeRun(served, transfers)


def _admit(run: _Replay, sched: Scheduler, pool: BlockPool, ex: Executor, rid: int, first: int,
           prompt_ids: np.ndarray, kv: torch.Tensor, transfer: Transfer) -> bool:  # fmt: skip
    """Join a prefilled request when its blocks are free: blocks, region, KV copied in, first token set."""
    n, out, t = len(prompt_ids), int(run.output[rid]), run.table
    off = run.off[rid]
    run.ids[off : off + n] = prompt_ids
    run.ids[off + n] = first
    now = transfer.sent_s  # the first token came with the send
    t.first_token_s[rid] = t.scheduled_s[rid] = now
    run.tok_rid.append(np.array([rid]))
    run.tok_time.append(now)
    if out <= 1:  # its one token came from the prefill rank: done
        t.finish_s[rid], t.generated[rid] = now, 1
        return True
    need = pool.blocks_for(n)
    if not pool.can_allocate(need, sched.watermark):
        return False
    pool.allocate(need)
    start = ex.place(rid, n + out)
    for (k_pool, v_pool), layer in zip(ex.model.kv, kv, strict=True):
        k_pool[start : start + n] = layer[0]
        v_pool[start : start + n] = layer[1]
    seq = Sequence(rid, n, out, generated=1)
    sched.add_prefilled(seq)
    run.recorder.joined(seq, now)
    return True
