"""The batching policy: given waiting and running sequences and free KV blocks, the next batch.

No clock here (STYLE.md, "one scheduler, two executors"): the SimPy replica advances time by the
cost model's step time, the engine's serving loop runs the same batch on a GPU.

Continuous batching follows vLLM. With chunked prefill (V1 and V0-chunked), a step first gives every
decoding sequence one token, then spends the rest of the token budget on prompt chunks (running
prefills first, then waiting requests in arrival order). Without it (V0 default), a step is either
all prefills (whole prompts, as many as fit) or all decodes, prefills first. When a decode needs a
block and none is free, the most recently admitted sequence is preempted and recomputed later.

Decoding sequences are never visited one by one in a step. They share a step counter `dstep`, so a
sequence's context is `c + dstep` with `c` fixed when it joins; the batch's total context is
`sum(c) + n·dstep`, the blocks a step needs are counted per phase of `dstep` modulo the block size,
and finishes come off a heap keyed by the step they finish on. A step is O(1) plus its admissions.

Static batching (`static_batch`) takes up to `max_num_seqs` requests, pads prompts to the longest,
prefills, then decodes all of them until the longest output is done; tokens stream as they are
produced, but slots (and padded compute) are released only when the whole batch completes.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Sequence as Sequence_
from dataclasses import dataclass, field

import numpy as np

from core.cost_model import BatchShape, chunk_pairs
from core.kv_cache import BlockPool, blocks_for
from core.model_spec import ModelSpec


def sliding_terms(model: ModelSpec) -> tuple[int, float]:
    """SchedulerConfig's (sliding_window, sliding_ratio) for `model`: its window, and its sliding-window layers' KV
    bytes a token over its full layers' (0.0 without sliding layers). The simulator and the engine's serving loop
    (benchmarks/fidelity.py) both take them from here, so both admit a sequence against the same blocks.

    A model whose every layer slides (Mistral-7B v0.1's config: a 4,096-token window on all 32) has no full layers
    to measure blocks in: its blocks are its sliding layers' (`pool_kv_bytes_per_token`), charged for every token
    as full attention's are (ratio 0.0), exact up to the window and more than an engine that frees the blocks
    leaving the window holds past it. The window still prices its prompt chunks' attention."""
    ratio = (
        model.sliding_kv_bytes_per_token("bf16") / model.kv_bytes_per_token("bf16")
        if model.sliding_layers and not every_layer_slides(model)
        else 0.0
    )
    return model.sliding_window, ratio


def every_layer_slides(model: ModelSpec) -> bool:
    """Whether `model` has sliding-window layers and no full-attention one (`sliding_terms`)."""
    return bool(model.sliding_layers) and not model.full_attention_layers


def pool_kv_bytes_per_token(model: ModelSpec, full: float, sliding: float) -> float:
    """KV bytes a token of a block holds, from the (full, sliding) bytes a token of `model` (core.parallelism's
    kv_bytes_per_token_per_gpu): the full layers', or where every layer slides, the sliding layers' (`sliding_terms`)."""
    return sliding if every_layer_slides(model) else full


def accepted(rng: np.random.Generator, alpha: float, k: int) -> int:
    """Drafted tokens accepted in one round: leading successes of k Bernoulli(α) trials."""
    if alpha >= 1.0:
        return k
    if alpha <= 0.0:
        return 0
    return min(int(rng.geometric(1.0 - alpha)) - 1, k)


@dataclass(slots=True, frozen=True)
class SpecDecode:
    """Speculative decoding: rounds of `k` drafted tokens while at most `max_batch` sequences decode;
    each drafted token is accepted with probability `alpha[rid]`, drawn from `rng`."""

    k: int
    max_batch: int
    alpha: Sequence_[float]  # acceptance rate per request id
    rng: np.random.Generator


@dataclass(slots=True, frozen=True)
class SchedulerConfig:
    """The batching policy's settings (the per-request inputs, keys, priorities and arrival times, are
    given to `Scheduler` beside it)."""

    max_num_seqs: int
    max_num_batched_tokens: int
    chunked_prefill: bool = True
    sliding_window: int = 0  # tokens a sliding-window layer keeps (0: none)
    sliding_ratio: float = 0.0  # sliding-window layers' KV bytes per token over the full layers'
    watermark: float = 0.01  # share of the blocks admission keeps free for decodes
    max_waiting: int | None = None  # admission control: refuse arrivals beyond this many queued
    timeout_s: float | None = None  # admission control: drop requests queued longer than this
    # whole prompts of at least fresh[0] tokens take the cost model's fresh-prompt kernel
    # (CostModel.fresh: min tokens, bucket)
    fresh: tuple[int, int] | None = None
    spec: SpecDecode | None = None


@dataclass(slots=True, eq=False)
class Sequence:
    """A request inside the engine. `prompt` grows on recompute to include tokens already generated."""

    rid: int
    prompt: int
    output: int
    orig_prompt: int = 0
    generated: int = 0  # tokens generated before the current prefill (valid while not decoding)
    computed: int = 0  # prompt tokens whose KV is computed
    blocks: int = 0  # blocks held while prefilling
    window_blocks: int = 0  # sliding-window layers' KV, held from admission to finish
    priority: int = 0  # higher runs first under the priority policy
    hits: tuple | None = None  # prefix-cache estimate while queued: (cached blocks, of them free)
    hits_version: int = -1  # the pool's version when `hits` was looked up
    shared: object = ()  # prefix-cache keys of blocks it references, not owns (a leading part of `keys`)
    keys: object = None  # prefix-cache keys of its prompt's full blocks, once looked up (until recompute)
    cached_tokens: int = 0  # prompt tokens found in the prefix cache at its (last) start
    decoding: bool = False
    c: int = 0  # while decoding: total tokens = c + dstep
    finish_at: int = 0  # dstep after which it is done
    epoch: int = 0

    def __post_init__(self) -> None:
        if not self.orig_prompt:
            self.orig_prompt = self.prompt


@dataclass(slots=True)
class Batch:
    """The scheduler's output for one step (vLLM v1's SchedulerOutput): the prompt chunks to compute
    (sequence, tokens), how many sequences decode and their total context, the speculative round, the
    sequences preempted to make room, and the step's shape for the cost model. The decoding sequences
    themselves are listed only on request (`Scheduler.decoding`)."""

    prefills: list[tuple[Sequence, int]] = field(default_factory=list)
    num_decodes: int = 0
    decode_context: int = 0
    spec_k: int = 0  # > 0: the decodes are speculative rounds of k drafted tokens, verified together
    spec_tokens: int = 0  # tokens the rounds yielded (set when the step completes)
    spec_reserved: int = 0  # blocks held for the round until its accepted tokens are known
    preempted: list[Sequence] = field(default_factory=list)
    shape: BatchShape = field(default_factory=BatchShape)
    # drafted tokens accepted per decoding sequence (decoding() order), when the executor decided them
    # (the engine's verification); None: drawn from SpecDecode's rng when the step completes (the simulator)
    spec_accepted: Sequence_[int] | None = None


@dataclass(slots=True)
class StepResult:
    first_tokens: list[Sequence]  # sequences whose prefill finished this step (a token was sampled)
    finished: list[Sequence]  # sequences whose output is complete


@dataclass(slots=True)
class StaticBatch:
    """Static batching's batch: its sequences, padded to the longest prompt and output, hold
    `blocks_per_seq` blocks each from admission until the whole batch completes."""

    seqs: list[Sequence]
    prompt_tokens: int  # the longest prompt (every prompt is padded to it)
    output_tokens: int  # the longest output (every sequence decodes until it is done)
    blocks_per_seq: int


_NO_SHAPE = BatchShape()  # a batch's shape until it is computed


class Scheduler:
    def __init__(
        self,
        pool: BlockPool,
        config: SchedulerConfig,
        block_keys=None,
        priority_of=None,
        arrival_s=None,
    ) -> None:
        self.pool = pool
        self.config = config
        # an unreachable minimum when there is no fresh-prompt kernel
        self.fresh_min, self.fresh_bucket = config.fresh if config.fresh is not None else (1 << 62, 1)
        self.B = pool.block_size
        self.max_seqs = config.max_num_seqs
        self.max_tokens = config.max_num_batched_tokens
        self.chunked = config.chunked_prefill
        self.window = config.sliding_window
        # Sliding-window layers keep at most `window` tokens per sequence; their KV, in units of the
        # full-attention layers' blocks (ratio of bytes per token), is reserved when a sequence starts.
        self.sliding_ratio = config.sliding_ratio
        self.watermark = int(config.watermark * pool.num_blocks)  # admission keeps a few blocks for decodes
        # Prefix caching: block_keys(rid, tokens) gives the keys of the full blocks among a request's
        # first `tokens` tokens, or [] when it shares nothing with anyone.
        self.block_keys = block_keys if pool.cached is not None else None
        self._forget_keys = getattr(self.block_keys, "forget", None)  # (None: it keeps nothing per request)
        self.cached_tokens = 0  # prompt tokens served from the prefix cache, recomputations included
        # Priority scheduling (vLLM's `priority` policy) when priority_of (per request id) is given;
        # admission control: refuse arrivals beyond max_waiting queued, drop those queued past timeout_s.
        self.priority_of = priority_of
        self.max_waiting = config.max_waiting
        self.timeout_s = config.timeout_s
        self.arrival_s = arrival_s
        self.dropped: list[tuple[int, str]] = []  # (request id, reason)
        self.spec = config.spec
        self.spec_rounds = 0
        self.spec_yield = 0
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # admission order; preemption takes from the end
        self.prefilling: list[Sequence] = []  # running sequences with prompt left to compute
        # decode state
        self.dstep = 0
        self.n_decoding = 0
        self.c_sum = 0
        self.phase = [0] * self.B
        self.finish_heap: list[tuple[int, int, int, Sequence]] = []
        self.num_preemptions = 0

    # ------------------------------------------------------------------ queries
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def decode_context(self) -> int:
        return self.c_sum + self.n_decoding * self.dstep

    def add(self, seq: Sequence) -> bool:
        """Queue a new request; False (and recorded in `dropped`) when admission control refuses it."""
        if self.max_waiting is not None and len(self.waiting) >= self.max_waiting:
            self.dropped.append((seq.rid, "queue_full"))
            return False
        if self.sliding_ratio:
            seq.window_blocks = self.window_blocks(seq.orig_prompt + seq.output)
        if self.priority_of is None:
            self.waiting.append(seq)
            return True
        seq.priority = p = self.priority_of[seq.rid]
        i = len(self.waiting)  # behind every request of the same or higher priority
        while i and self.waiting[i - 1].priority < p:
            i -= 1
        self.waiting.insert(i, seq)
        return True

    def expire(self, now: float) -> list[Sequence]:
        """Drop queued requests that were never started and have waited longer than timeout_s."""
        if self.timeout_s is None or not self.waiting:
            return []
        limit, arrival = now - self.timeout_s, self.arrival_s
        gone = [s for s in self.waiting if arrival[s.rid] < limit and not s.generated and not s.computed]
        for s in gone:
            self.waiting.remove(s)
            self.dropped.append((s.rid, "timed_out"))
        return gone

    def add_prefilled(self, seq: Sequence) -> None:
        """Join decode with a prompt prefilled elsewhere (disaggregated serving; its first token is
        `seq.generated`). The caller has already allocated its KV blocks, blocks_for(prompt) plus
        `window_blocks`, from this pool and checked that a sequence slot is free."""
        seq.computed = seq.prompt
        self.running.append(seq)
        self._join_decode(seq)

    def window_blocks(self, tokens: int) -> int:
        """Blocks (full-layer units) the sliding-window layers need for a sequence of `tokens`."""
        return (
            blocks_for(int(min(tokens, self.window) * self.sliding_ratio), self.B)
            if self.sliding_ratio
            else 0
        )

    def _admissible(self, budget: int, look_again: bool = False) -> bool:
        """Could the head of the waiting queue start this step? (`look_again`: look its prefix up again now;
        otherwise the lookup made when it first reached the head stands, as an estimate.)"""
        if not self.waiting or len(self.running) >= self.max_seqs or budget <= 0:
            return False
        head, pool = self.waiting[0], self.pool
        hits, take = 0, 0
        if self.block_keys:  # looked up again when the cache changed since (look_again) or never looked up
            if head.hits is None or (look_again and head.hits_version != pool.version):
                # _prefix_hits and (below) blocks_for, inline on the hot path; kept equal by
                # tests/core/test_scheduler.py::test_admission_check_equals_prefix_hits_and_blocks_for
                if head.keys is None:
                    head.keys = self.block_keys(head.rid, head.prompt)
                head.hits = pool.lookup(head.keys, (head.prompt - 1) // self.B)
                head.hits_version = pool.version
            hits, take = head.hits
        todo = head.prompt - hits * self.B
        if todo > budget:
            if not self.chunked:
                return False
            todo = budget
        need = -(-todo // self.B)  # blocks_for, inline
        return need + take + head.window_blocks <= pool.free - self.watermark  # pool.can_allocate

    def _prefix_hits(self, s: Sequence) -> tuple[int, int]:
        """(leading prompt blocks in the prefix cache, how many of them sit in the free list)."""
        if s.keys is None:
            s.keys = self.block_keys(s.rid, s.prompt)
        return self.pool.lookup(s.keys, (s.prompt - 1) // self.B)  # the last token is always computed

    def decode_run(self, cap: int) -> tuple[int, int] | None:
        """(steps, blocks): decode-only steps that can run back to back now, and the new blocks they take
        (-1: surely few enough, not counted; `blocks_over` counts them once the run's length is settled).

        The run stops at the next finish and before blocks run out; None whenever a prefill could be
        scheduled or a decode step would need a preemption.
        """
        n = self.n_decoding
        if not n or self.prefilling or (self.spec is not None and self._spec_now()):
            return None
        if self.waiting and self._admissible(self.max_tokens - n if self.chunked else self.max_tokens):
            return None
        k = self.finish_heap[0][0] - self.dstep
        if k > cap:
            k = cap
        # a block per sequence per block_size steps, at most (blocks_for, inline; kept equal by
        # tests/core/test_scheduler.py::test_blocks_held_equal_blocks_for_their_tokens)
        if n * -(-k // self.B) <= self.pool.free:
            return k, -1
        need = self.blocks_over(k)
        if need <= self.pool.free:
            return k, need
        per_step = np.asarray(self.phase)[(self.dstep + np.arange(k)) % self.B]
        k = int(np.searchsorted(np.cumsum(per_step), self.pool.free, side="right"))
        return (k, int(per_step[:k].sum())) if k else None

    def blocks_over(self, k: int) -> int:
        """New blocks the next k decode steps take: one per sequence per block_size steps, by phase."""
        B = self.B
        full = k // B
        part = k - full * B
        if not part:
            return self.n_decoding * full
        i, ph = self.dstep % B, self.phase
        j = i + part
        extra = sum(ph[i:j]) if j <= B else sum(ph[i:]) + sum(ph[: j - B])
        return self.n_decoding * full + extra

    def decoding(self) -> tuple[np.ndarray, np.ndarray]:
        """(request ids, context tokens) of the sequences a scheduled batch decodes, in admission order: for
        an executor that runs each sequence (the context: tokens before this step's, whose KV it reads).
        O(running); the simulator never needs it (its decodes are counted, not listed)."""
        seqs = [s for s in self.running if s.decoding]
        rids = np.fromiter((s.rid for s in seqs), dtype=np.int64, count=len(seqs))
        return rids, np.fromiter((s.c for s in seqs), dtype=np.int64, count=len(seqs)) + self.dstep

    # ------------------------------------------------------------------ decode bookkeeping
    def _join_decode(self, s: Sequence) -> None:
        s.decoding = True
        s.c = s.orig_prompt + s.generated - self.dstep
        s.finish_at = self.dstep + s.output - s.generated
        self.n_decoding += 1
        self.c_sum += s.c
        self.phase[(1 - s.c) % self.B] += 1
        heapq.heappush(self.finish_heap, (s.finish_at, s.rid, s.epoch, s))

    def _leave_decode(self, s: Sequence) -> int:
        """Remove from the decode set; returns the blocks it holds."""
        s.decoding = False
        self.n_decoding -= 1
        self.c_sum -= s.c
        self.phase[(1 - s.c) % self.B] -= 1
        s.generated = s.c + self.dstep - s.orig_prompt
        # blocks_for, inline on the hot path; kept equal by
        # tests/core/test_scheduler.py::test_blocks_held_equal_blocks_for_their_tokens
        return -(-(s.c + self.dstep - 1) // self.B)

    def _forget(self, rid: int) -> None:
        """A finished request's keys are no longer needed by the key source."""
        if self._forget_keys is not None:
            self._forget_keys(rid)

    def _victim(self) -> Sequence:
        """Who is preempted: the newest sequence; under the priority policy the newest of the lowest priority."""
        if self.priority_of is None:
            return self.running[-1]
        low = min(s.priority for s in self.running)
        return next(s for s in reversed(self.running) if s.priority == low)

    def _release(self, s: Sequence, held: int, kv_tokens: int) -> None:
        """Give back a sequence's blocks; with prefix caching its full blocks stay cached."""
        if not self.block_keys:
            self.pool.release(held + s.window_blocks)
            return
        shared = len(s.shared)
        self.pool.unshare(s.shared)
        if s.keys is not None and shared == len(s.keys) < s.prompt // self.B:
            # its keys stop inside the prompt (nobody could share more): it owns no keyed block
            self.pool.release(held - shared + s.window_blocks)
        else:
            keys = self.block_keys(s.rid, kv_tokens)
            self.pool.release(held - shared + s.window_blocks, keys[shared:])
        s.shared = ()

    def _preempt(self, victim: Sequence) -> None:
        self.running.remove(victim)
        if victim.decoding:
            held = self._leave_decode(victim)
            kv = victim.orig_prompt + victim.generated - 1
        else:
            held = victim.blocks
            kv = victim.computed
            self.prefilling.remove(victim)
        self._release(victim, held, kv)
        victim.epoch += 1
        victim.blocks = 0
        victim.computed = 0
        victim.prompt = victim.orig_prompt + victim.generated
        victim.keys = None
        self.waiting.appendleft(victim)
        self.num_preemptions += 1

    # ------------------------------------------------------------------ scheduling
    def schedule(self) -> Batch | None:
        """Build the next step's batch, allocating its KV blocks; None when nothing can run."""
        if not self.chunked and (self.prefilling or self._admissible(self.max_tokens, look_again=True)):
            b = self._prefill_only()
            if b.prefills:
                return b
        b = Batch([], 0, 0, 0, 0, 0, [], _NO_SHAPE)
        budget = self.max_tokens
        if self.spec is not None and self._spec_now():
            n, k = self.n_decoding, self.spec.k
            b.spec_k, b.num_decodes, b.decode_context = k, n, self.decode_context
            b.spec_reserved = self._spec_blocks(k + 1)
            self.pool.allocate(b.spec_reserved)  # room for every draft to be accepted; the rest is returned
            budget -= n * (k + 1)
        elif self.n_decoding:
            pool = self.pool
            need = self.phase[self.dstep % self.B]
            while need > pool.free and self.running:
                victim = self._victim()
                was_decoding_here = victim.decoding and (1 - victim.c) % self.B == self.dstep % self.B
                self._preempt(victim)
                b.preempted.append(victim)
                need -= was_decoding_here
            n = self.n_decoding
            if n:
                if need:
                    pool.allocate(need)
                b.num_decodes = n
                b.decode_context = self.c_sum + n * self.dstep
                budget -= n
        if self.chunked:
            for s in list(self.prefilling) if self.prefilling else ():  # continue partial prefills
                if budget <= 0:
                    break
                chunk = min(s.prompt - s.computed, budget)
                if not self._grow(s, chunk, b):
                    break
                budget -= chunk
            while self._admissible(budget, look_again=True):
                s = self.waiting.popleft()
                self._start(s)
                chunk = min(s.prompt - s.computed, budget)
                self._grow(s, chunk, b)
                budget -= chunk
        if not b.prefills and not b.num_decodes:
            return None
        b.shape = self._shape(b)
        return b

    def _spec_now(self) -> bool:
        """Speculate this step: few enough sequences decode, and blocks for a full round are free."""
        spec = self.spec
        if spec is None or not self.n_decoding or self.n_decoding > spec.max_batch:
            return False
        per_seq = blocks_for(spec.k + 1, self.B) + 1
        return (
            self.n_decoding * per_seq <= self.pool.free
            and self.n_decoding * (spec.k + 1) <= self.max_tokens
            and self._spec_blocks(spec.k + 1) <= self.pool.free
        )

    def _spec_blocks(self, tokens: int) -> int:
        """New blocks the decoding sequences need if each gains `tokens` tokens."""
        B, d = self.B, self.dstep
        # blocks_for, inline per sequence; kept equal by
        # tests/core/test_scheduler.py::test_blocks_held_equal_blocks_for_their_tokens
        return sum(
            -(-(s.c + d - 1 + tokens) // B) - -(-(s.c + d - 1) // B) for s in self.running if s.decoding
        )

    def _spec_round(self, reserved: int, given: Sequence_[int] | None = None) -> int:
        """Verify one round for every decoding sequence (drafts accepted: `given` per sequence in decoding()
        order, else drawn); returns the tokens yielded."""
        spec = self.spec
        k, alpha, rng = spec.k, spec.alpha, spec.rng
        B, d, ph = self.B, self.dstep, self.phase
        new_blocks = tokens = i = 0
        for s in self.running:
            if not s.decoding:
                continue
            gen = s.c + d - s.orig_prompt
            kv = s.c + d - 1
            a = accepted(rng, alpha[s.rid], k) if given is None else int(given[i])
            i += 1
            t = min(a + 1, s.output - gen)
            tokens += t
            new_blocks += -(-(kv + t) // B) - -(-kv // B)  # blocks_for, inline (as in _spec_blocks)
            if t > 1:
                ph[(1 - s.c) % B] -= 1
                s.c += t - 1
                ph[(1 - s.c) % B] += 1
                self.c_sum += t - 1
                s.epoch += 1
                s.finish_at = d + 1 + s.output - gen - t
                heapq.heappush(self.finish_heap, (s.finish_at, s.rid, s.epoch, s))
        self.pool.release(reserved - new_blocks)
        self.spec_rounds += self.n_decoding
        self.spec_yield += tokens
        return tokens

    def _prefill_only(self) -> Batch:
        b = Batch()
        budget = self.max_tokens
        for s in list(self.prefilling):  # one that could not get its blocks when it started
            if self._grow(s, s.prompt - s.computed, b):
                budget -= s.prompt - s.computed
        while self._admissible(budget, look_again=True):
            s = self.waiting.popleft()
            self._start(s)
            self._grow(s, s.prompt - s.computed, b)
            budget -= s.prompt - s.computed
        b.shape = self._shape(b)
        return b

    def _start(self, s: Sequence) -> None:
        """Admit a sequence; its prefix lookup was just made by _admissible(look_again=True)."""
        if self.block_keys:
            hits = (s.hits or self._prefix_hits(s))[0]
            keys = s.keys
            if hits:
                s.shared = keys if hits == len(keys) else keys[:hits]
                self.pool.share(s.shared)
            s.blocks = hits
            s.computed = hits * self.B
            s.cached_tokens = s.computed
            self.cached_tokens += s.computed
        if s.window_blocks:  # after sharing the hits: allocating may evict cached blocks
            self.pool.allocate(s.window_blocks)
        s.hits = None
        self.running.append(s)
        self.prefilling.append(s)

    def _grow(self, s: Sequence, chunk: int, b: Batch) -> bool:
        """Allocate blocks for the next `chunk` prompt tokens of `s` and put the chunk in the batch."""
        pool = self.pool
        # blocks_for, inline on the hot path; kept equal by
        # tests/core/test_scheduler.py::test_blocks_held_equal_blocks_for_their_tokens
        need = -(-(s.computed + chunk) // self.B) - s.blocks
        if need > pool.free:
            return False
        pool.allocate(need)
        s.blocks += need
        b.prefills.append((s, chunk))
        return True

    def _shape(self, b: Batch) -> BatchShape:
        tokens = pairs = spairs = ctx = 0
        logits = b.num_decodes
        fresh = None
        fmin = self.fresh_min
        for s, chunk in b.prefills:
            done = s.computed
            tokens += chunk
            # chunk_pairs(done, chunk), inline; kept equal by
            # tests/core/test_scheduler.py::test_step_shape_equals_batch_shape_of_its_chunks
            pairs += chunk * done + chunk * (chunk + 1) / 2
            if self.window:
                spairs += chunk_pairs(done, chunk, self.window)
            ctx += done
            logits += done + chunk == s.prompt
            if chunk >= fmin and not done:
                fresh = fresh or []
                fresh.append(chunk)
        # verification: k + 1 decode rows a sequence, row j over its context and the j tokens before it
        # (engine.speculative.verify_rows: the split-KV decode kernel, not a prompt chunk's)
        if b.spec_k:
            n, q = b.num_decodes, b.spec_k + 1
            rows_ctx = q * b.decode_context + n * q * (q - 1) // 2
            return BatchShape(
                tokens, len(b.prefills), pairs, spairs, ctx, n * q, rows_ctx, logits + n * q - n
            )
        # prefill tokens, seqs, pairs, sliding pairs, context tokens; decode seqs, context tokens; logits
        shape = BatchShape(
            tokens, len(b.prefills), pairs, spairs, ctx, b.num_decodes, b.decode_context, logits
        )
        if fresh:
            for chunk in fresh:
                shape.add_fresh(chunk, self.fresh_bucket)
        return shape

    # ------------------------------------------------------------------ static batching
    def static_batch(self) -> StaticBatch | None:
        """Take up to max_num_seqs waiting requests, padded to the longest prompt and output, dropping the
        newest until their padded KV fits (one always runs); allocates their blocks. None when none waits."""
        waiting, pool = self.waiting, self.pool
        if not waiting:
            return None
        seqs = [waiting.popleft() for _ in range(min(self.max_seqs, len(waiting)))]
        while True:
            p_max = max(s.prompt for s in seqs)
            o_max = max(s.output for s in seqs)
            per_seq = pool.blocks_for(p_max + o_max) + self.window_blocks(p_max + o_max)
            if len(seqs) * per_seq <= pool.free or len(seqs) == 1:
                break
            waiting.appendleft(seqs.pop())
        pool.allocate(len(seqs) * per_seq)
        return StaticBatch(seqs, p_max, o_max, per_seq)

    def static_done(self, batch: StaticBatch) -> None:
        """A static batch completed: its slots and blocks come back together."""
        self.pool.release(len(batch.seqs) * batch.blocks_per_seq)

    # ------------------------------------------------------------------ completion
    def complete(self, b: Batch) -> StepResult:
        """Apply a finished step: prompt progress, sampled tokens, finishes."""
        first, finished = [], []
        if b.spec_k:
            b.spec_tokens = self._spec_round(b.spec_reserved, b.spec_accepted)
        if b.num_decodes:
            self.dstep += 1
            finished += self._pop_finished()
        for s, chunk in b.prefills:
            s.computed += chunk
            if s.computed < s.prompt:
                continue
            self.prefilling.remove(s)
            s.generated += 1
            first.append(s)
            if self.block_keys:  # its prompt's full blocks become shareable with later requests
                keys = s.keys if s.keys is not None else self.block_keys(s.rid, s.prompt)
                if len(keys) > len(s.shared) and self.pool.publish(keys, len(s.shared)):
                    s.shared = keys
            if s.generated >= s.output:
                self.running.remove(s)
                self._release(s, s.blocks, s.prompt)
                self._forget(s.rid)
                s.blocks = 0
                finished.append(s)
            else:
                self._join_decode(s)
        return StepResult(first, finished)

    def advance_decodes(self, k: int, blocks: int) -> list[Sequence]:
        """Apply k decode-only steps taking `blocks` new blocks (from `decode_run`); returns finishes."""
        if blocks:
            self.pool.allocate(blocks)
        self.dstep += k
        return self._pop_finished()

    def _pop_finished(self) -> list[Sequence]:
        finished = []
        heap = self.finish_heap
        while heap and heap[0][0] <= self.dstep:
            _, _, epoch, s = heapq.heappop(heap)
            if epoch != s.epoch or not s.decoding:
                continue
            self._release(s, self._leave_decode(s), s.orig_prompt + s.output - 1)
            if self._forget_keys is not None:
                self._forget_keys(s.rid)
            self.running.remove(s)
            finished.append(s)
        return finished
