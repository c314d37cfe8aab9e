"""A real continuous-batching serving loop: replay a workload on the model, batches from the simulator's scheduler.

Requests enter at their arrival times (wall clock since the start); at every step boundary the very same
`core.scheduler.Scheduler` the SimPy replica uses decides the batch (DESIGN.md, "one scheduler,
two executors"), and the `Executor` here runs it: each sequence owns a contiguous region of the
model's KV pool (engine/attention.py) from its start to its finish or preemption (recomputed later),
prefill and mixed steps run eagerly, decode-only steps replay CUDA graphs captured per padded batch
size, and the next token is the argmax of the real logits. Every request gets the records the
simulator writes (a `RequestTable` and `StepStats`), plus the time of each of its tokens, so
`simulator.metrics.summarize` reads a real run exactly as it reads a forecast.

Host work per step is O(batch): the scheduler's batch, the per-sequence inputs as numpy arrays, one
device copy of the step's metadata, one synchronisation (after the sampled ids are copied back: the
tokens' timestamp), and vectorised bookkeeping. The engine ignores EOS: a request generates exactly
its output length, as in the simulator.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from core.cost_model import CostModel
from core.graphs import MIXED_GRAPH_TOKENS, MIXED_PREFILL_SEQS, capture_sizes, mixed_sizes
from core.kv_cache import BlockPool
from core.records import RequestTable, StepRecorder, StepStats
from core.requests import Requests
from core.scheduler import Batch, Scheduler, SchedulerConfig, Sequence, SpecDecode, sliding_terms
from engine import mla
from engine.attention import (
    StepLayout,
    balanced_units,
    device_sms,
    fresh_rule,
    make_layout,
    plan_decode_units,
    prebuild_fresh,
    unit_capacity,
    unit_heads,
    unit_target,
    unit_waves,
    whole_units,
)
from engine.fused import compiled_variants, jit_functions, tune_gemv
from engine.model import Transformer
from engine.moe import tune_moe
from engine.quant import tune_model
from engine.speculative import SpecRun, Speculator

# serve(trace=True), per step: when it ended; seconds in the scheduler, preparing inputs, in the executor
# (launch, GPU, sampled ids back) and recording; the executor's host seconds until every launch was issued
# and its GPU span between CUDA events (NaN on the CPU); how it ran (0 eager, 1 decode graph, 2 mixed-step
# graph, 3 a speculative round's graph: engine/speculative.py); the batch's BatchShape; the sequences a
# speculative round verified (0: not a round); Triton kernels compiled during the step (a JIT compile stalls
# it for 0.1-1 s; warm-up is meant to leave none; -1: this Triton's cache cannot be counted).
TRACE_FIELDS = ("end_s", "schedule_s", "prepare_s", "execute_s", "record_s", "launch_s", "gpu_s", "graph",
                "prefill_tokens", "prefill_seqs", "prefill_pairs", "sliding_prefill_pairs", "prefill_context_tokens",
                "decode_seqs", "decode_context_tokens", "logits_tokens", "fresh_seqs", "fresh_tokens", "fresh_pairs",
                "fresh_padded_pairs", "spec_seqs", "compiles")  # fmt: skip
IDLE_SPIN_S = 2e-3  # below this gap to the next arrival, spin instead of sleeping (sleep overshoots ~0.1 ms)
# A mixed step's decodes take split work units when their contexts are uneven (balanced_units), as a decode step's
# do: one unit a sequence lets the longest decode set the attention's time. Before session 18 a mixed graph took
# one unit a sequence whenever its token count filled the GPU (whole_units by count), whatever its decodes'
# contexts; calibration's and validation's mixed steps, whose decodes have lognormal contexts (the longest 2-13x
# the mean), then took 1.5-4.5 ms over their price (calibration_runs/h200_session17_validate). False: that rule
# (benchmarks/kernel_profile.py --mixed-units whole measures it).
SPLIT_MIXED = True


# ---------------------------------------------------------------------------------------------- KV regions
class Regions:
    """Best-fit allocator of contiguous token regions in the engine's KV pool, one per running sequence.

    The scheduler's `BlockPool` decides admission and preemption (it is what the simulator counts); this
    only places each admitted sequence's region, sized for its final length (prompt + output), so the
    engine's pool must hold somewhat more than the scheduler's blocks (see `physical_tokens`).
    """

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self.starts: list[int] = [0]  # free segments, sorted by start
        self.sizes: list[int] = [tokens]

    def allocate(self, n: int) -> int | None:
        """The start of a region of n slots, from the smallest free segment that holds it (best fit)."""
        best = -1
        for i, size in enumerate(self.sizes):
            if size >= n and (best < 0 or size < self.sizes[best]):
                best = i
                if size == n:
                    break
        if best < 0:
            return None
        start = self.starts[best]
        if self.sizes[best] == n:
            del self.starts[best], self.sizes[best]
        else:
            self.starts[best] += n
            self.sizes[best] -= n
        return start

    def free(self, start: int, n: int) -> None:
        i = bisect.bisect_left(self.starts, start)
        if i and self.starts[i - 1] + self.sizes[i - 1] == start:  # merge with the segment before
            i -= 1
            self.sizes[i] += n
        else:
            self.starts.insert(i, start)
            self.sizes.insert(i, n)
        if i + 1 < len(self.starts) and self.starts[i] + self.sizes[i] == self.starts[i + 1]:
            self.sizes[i] += self.sizes.pop(i + 1)
            del self.starts[i + 1]

    @property
    def free_tokens(self) -> int:
        return sum(self.sizes)


def region_headroom(requests: Requests, max_num_seqs: int, extra: int = 0) -> int:
    """Slots the regions take beyond the scheduler's blocks: the outputs still to come of the most sequences
    that can run, and the prompt still to prefill of two sequences mid-way through a chunked prefill (plus
    `extra` slots per sequence: speculation's k)."""
    k = min(max_num_seqs, len(requests))
    outputs = int(np.sort(requests.output_tokens)[::-1][:k].sum()) if k else 0
    return outputs + 2 * int(requests.prompt_tokens.max(initial=0)) + k * extra


def physical_tokens(
    num_blocks: int, block_size: int, requests: Requests, max_num_seqs: int, extra: int = 0
) -> int:
    """KV slots the engine's pool needs so that the batches the scheduler admits find room.

    Regions hold a sequence's final length while the scheduler counts only its blocks so far: the
    scheduler's tokens plus `region_headroom`, and never more than the longest `max_num_seqs` requests
    together. (Not a strict bound with many prompts mid-prefill at once; `Executor.place` then compacts
    the pool, and fails with a clear message if even that leaves too little.)
    """
    total = (requests.prompt_tokens + requests.output_tokens).astype(np.int64) + extra
    k = min(max_num_seqs, len(total))
    longest = int(np.sort(total)[::-1][:k].sum()) if k else 0
    return max(1, min(longest, num_blocks * block_size + region_headroom(requests, max_num_seqs, extra)))


# ---------------------------------------------------------------------------------------------- executor
def wanted_rows(ends: np.ndarray, want: list) -> np.ndarray:
    """Rows to sample: the last int(w) tokens of each chunk (w True: its last one), given cumulative ends."""
    ends = np.asarray(ends, dtype=np.int64)
    w = np.asarray([int(x) for x in want], dtype=np.int64)
    if not len(w) or (w <= 1).all():
        return ends[w.astype(bool)] - 1 if len(w) else np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(e - n, e) for e, n in zip(ends, w)]).astype(np.int64)


@dataclass(slots=True)
class _MixedGraph:
    """A step of `size` tokens with prompt chunks: the sequence slots are MIXED_PREFILL_SEQS for chunks (unused
    ones empty), then `size` for decodes and padding (one-token dummies in scratch, then empty ones)."""

    size: int
    seqs: int
    i64: torch.Tensor  # device: tokens, positions, slots (size each)
    i32: (
        torch.Tensor
    )  # device: cu_q (seqs+1), cu_k (seqs+1), seqused_k (seqs), units seq/lo/hi (cap each), seq_units
    host64: torch.Tensor
    host32: torch.Tensor
    cap: int
    layout: StepLayout
    hidden: tuple | None = None  # (x, residual) [size, hidden], the graph's outputs
    graph: object = None


@dataclass(slots=True)
class _DecodeGraph:
    size: int
    i64: torch.Tensor  # device: tokens, positions, slots (size each)
    # device: cu_k (size+1), seqused_k (size), units seq/lo/hi (cap each), seq_units (size+1)
    i32: torch.Tensor
    host64: torch.Tensor
    host32: torch.Tensor
    cap: int
    layout: StepLayout
    ids: torch.Tensor | None = None  # sampled ids [size], the graph's output
    graph: object = None


@dataclass(slots=True)
class InFlight:
    """A decode step launched without waiting for its ids (async scheduling, `Executor.launch_decode`)."""

    ids: torch.Tensor  # device: the step's sampled ids [n] (the next step gathers its input tokens from them)
    host: torch.Tensor  # (pinned) host: where they are being copied
    copied: object  # CUDA event after the step's inputs left the pinned buffers (None on the CPU)
    done: object  # CUDA event after the ids' copy (None on the CPU)
    start: object  # CUDA event at the step's first device work, when timed (else None)
    launch_s: float  # host seconds to issue it


class Executor:
    """Runs scheduler batches on a model: per-sequence KV regions, eager prefill and mixed steps, CUDA-graph
    decode steps for padded batch sizes, greedy sampling. `step` returns the sampled ids on the host.

    The pool has `pool_tokens` slots for sequences plus a scratch area after them where the padding
    sequences of a captured decode step write their KV, so padding never touches a real sequence's region.
    """

    def __init__(
        self,
        model: Transformer,
        pool_tokens: int,
        max_batch: int,
        device: str = "cuda",
        cuda_graphs: bool = True,
        static_decode: bool | None = None,
        seed: int = 0,
        mixed_graph_tokens: int | None = None,
        static_mixed: bool | None = None,
        max_context: int = 32768,
        mixed_seqs: int = MIXED_PREFILL_SEQS,
        gemv: bool | None = None,
    ) -> None:
        self.model, self.device = model, torch.device(device)
        # single-row steps stream their weights through the Triton GEMV on CUDA (engine.model.Dense), as the
        # calibration's batch-1 GEMM points time them (calibrate/bench.py)
        if gemv is not None or self.device.type == "cuda":
            model.set_gemv(self.device.type == "cuda" if gemv is None else gemv)
        self.mixed_seqs = mixed_seqs  # chunk slots of a mixed-step graph (speculation's verify chunks too)
        self.cuda = self.device.type == "cuda"
        self.sizes = capture_sizes(max_batch)
        self.max_batch = self.sizes[-1]
        # steps with prompt tokens, up to mixed_graph_tokens of them in all, replay a graph captured per
        # padded token count (mixed_sizes); more tokens, or more than MIXED_PREFILL_SEQS prompts, run eagerly
        top = (
            (MIXED_GRAPH_TOKENS if cuda_graphs and self.cuda else 0)
            if mixed_graph_tokens is None
            else mixed_graph_tokens
        )
        if model.spec.is_mla:  # larger MLA steps run prompt chunks in the plain form, eagerly (engine.mla)
            top = min(top, mla.ABSORBED_PROMPT_TOKENS)
        self.mixed_sizes = mixed_sizes(top) if top else []
        self.static_mixed = (
            bool(self.mixed_sizes) if static_mixed is None else static_mixed and bool(self.mixed_sizes)
        )
        self.max_k = 1 << max(
            0, (int(max_context) - 1).bit_length()
        )  # the graphs' bound on keys per sequence
        self.scratch = pool_tokens
        model.allocate_kv(pool_tokens + max(self.max_batch, top), seed=seed)
        self.reset()
        self.target_heads = unit_heads(model.spec)
        self.target = unit_target(device_sms(self.device), self.target_heads)
        self.waves = unit_waves(model.spec)
        self.use_graphs = cuda_graphs and self.cuda
        # decode steps through the static buffers (without a graph on the CPU, to test the path there)
        self.static_decode = self.use_graphs if static_decode is None else static_decode
        self.graphs: dict[int, _DecodeGraph] = {}
        # sizes whose graph runs one unit per sequence also get a split graph, for steps of uneven contexts
        self.split_graphs: dict[int, _DecodeGraph] = {}
        self.mixed_graphs: dict[int, _MixedGraph] = {}
        # ... and so do mixed-step sizes: their decodes take split units when their contexts are uneven
        self.split_mixed_graphs: dict[int, _MixedGraph] = {}
        self.pool = torch.cuda.graph_pool_handle() if self.use_graphs else None
        self.vocab = model.spec.vocab_size
        self.graph_pool_bytes = 0
        # per-step timing (serve(trace=True)): the GPU span of the last step between CUDA events, and the
        # host seconds from the step's start until its launches were all issued (before the final sync)
        self.time_gpu = False
        self.last_gpu_s = float("nan")
        self.last_launch_s = float("nan")
        self.last_path = 0  # how the last step ran: 0 eager, 1 decode graph, 2 mixed-step graph
        self._timed = self._marked = False
        self.eager_launch_s = float("nan")  # measured by warmup(): host seconds to issue an eager step
        self._events = (
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            if self.cuda
            else None
        )
        # async scheduling (launch_decode): two host buffers for ids in flight, used in turn
        self._ids_out = [
            torch.zeros(self.max_batch, dtype=torch.int64, pin_memory=self.cuda) for _ in range(2)
        ]
        self._flip = 0

    # ------------------------------------------------------------------ set-up
    def warmup(self, log=None, max_prompt: int = 0) -> float:
        """Capture the graphs of every decode batch size and every mixed-step token count (largest first, so
        later captures reuse its memory), build the cuDNN plans of every padded fresh-prompt length up to
        `max_prompt` tokens (the scheduler's token budget; engine.attention), run eager steps and measure
        their host launch time (`eager_launch_s`), so that no compile, capture or int4/MoE kernel tuning happens
        while requests wait. Returns seconds."""
        t0 = time.perf_counter()
        # int4 layers: every rows bucket a step can have tuned now, before any capture or request (engine/quant.py)
        most = max(max_prompt, self.mixed_sizes[-1] if self.mixed_sizes else 0, self.max_batch)
        tune_model(self.model, most, log)
        # MoE layers: the Triton grouped GEMM or torch._grouped_mm per rows bucket, timed now (engine/moe.py)
        tune_moe(self.model, most, log)
        # batch-1 steps' GEMVs: a tile per weight shape, timed now (engine/fused.py)
        tune_gemv(self.model.gemv_weights(), log)
        if self.static_decode:
            for size in reversed(self.sizes):
                self._graph(size)
                self._graph(size, split=True)  # a second graph only where the first runs one unit each
        if self.static_mixed:
            for size in reversed(self.mixed_sizes):
                self._mixed_graph(size)
                if SPLIT_MIXED:
                    self._mixed_graph(size, split=True)  # where the first runs one unit each
        plans = 0
        if self.cuda and max_prompt and not self.model.spec.is_mla:
            k_pool, v_pool = self.model.kv[0]
            plans = prebuild_fresh(k_pool, v_pool, self.model.spec.num_heads, min(max_prompt, self.scratch))
        self.eager_launch_s = self.measure_launch()
        self.warm_eager()
        if log:
            log(f"warm-up: {len(self.graphs) + len(self.split_graphs)} decode and "
                f"{len(self.mixed_graphs) + len(self.split_mixed_graphs)} mixed-step graphs, {plans} "
                f"fresh-prompt lengths, eager launch "
                f"{self.eager_launch_s * 1e3:.2f} ms a step ({self.eager_launch_s / self.model.num_layers * 1e6:.0f} "
                f"µs a layer) in {time.perf_counter() - t0:.1f} s")  # fmt: skip
        return time.perf_counter() - t0

    def measure_launch(self, repeat: int = 7) -> float:
        """Host seconds to issue one small step eagerly (a chunk of up to 32 tokens and up to 8 decodes, at
        the start of the pool, before any request owns it): the floor under an eager step's time, what the
        mixed-step graphs save. Median of `repeat` after one warm-up; 0 on the CPU, where ops run as issued."""
        if not self.cuda:
            return 0.0
        n = max(0, min(8, self.max_batch, self.scratch - self._probe_chunk()))
        times = []
        for _ in range(repeat + 1):
            t0 = time.perf_counter()
            ids = self._probe_step(n)
            times.append(time.perf_counter() - t0)
            ids.cpu()
        return float(np.median(times[1:]))

    def warm_eager(self) -> int:
        """Run once the eager step that graph capture and measure_launch leave unseen: a prompt chunk with enough
        decodes to fill the GPU one work unit each (whole units: the decode kernel writes the output itself,
        a Triton kernel of its own). Triton compiles a kernel on its first call, for 0.1-1 s; without this the
        first eager step of that kind compiled in the middle of a run (Qwen2.5-7B on an H200: an eager step of
        2 chunks and 60 decodes took 288 ms against 52 priced, and the requests queued behind it moved TTFT p90
        by a fifth). Returns how many steps it ran (0 on the CPU, or when no step the pool allows has them)."""
        if not self.cuda:
            return 0
        n = next((k for k in range(1, self.max_batch + 1) if balanced_units(np.ones(k), self.target)), 0)
        if not n or self._probe_chunk() + n > self.scratch:
            return 0
        self._probe_step(n).cpu()
        return 1

    def _probe_chunk(self) -> int:
        return max(1, min(32, self.scratch // 2))

    def _probe_step(self, n: int) -> torch.Tensor:
        """One eager step at the start of the pool, before any request owns it: a chunk of up to 32 tokens and
        `n` one-token decodes after it (none when 0); the sampled ids, on the device."""
        chunk = self._probe_chunk()
        toks = np.ones(chunk, dtype=np.int64)
        dec = (chunk + np.arange(n, dtype=np.int64), np.ones(n, dtype=np.int64), np.ones(n, dtype=np.int64))
        return self._eager([(0, 0, chunk, toks, True)], dec if n else None)

    # ------------------------------------------------------------------ regions
    def reset(self, num_requests: int = 0) -> None:
        """Forget every region (a new run on the same pool); `region[rid]` is request rid's first slot or -1."""
        self.regions = Regions(self.scratch)
        self.region = np.full(num_requests, -1, dtype=np.int64)
        self.length = np.zeros(num_requests, dtype=np.int64)
        self.compactions = 0
        # models whose KV pools mirror this one's regions (a speculative run's draft, engine.speculative.Speculator):
        # a compaction moves theirs too
        self.followers: list = []

    def place(self, rid: int, tokens: int) -> int:
        """Give request rid a region of `tokens` slots; when the free space is too fragmented, compact first."""
        start = self.regions.allocate(tokens)
        if start is None and self.regions.free_tokens >= tokens:
            self._compact()
            start = self.regions.allocate(tokens)
        if start is None:
            raise RuntimeError(
                f"engine KV pool full: a region of {tokens} tokens does not fit in {self.regions.free_tokens} "
                f"free slots of {self.regions.tokens}; give the engine a larger pool (pool_tokens) or the "
                "scheduler fewer blocks"
            )
        self.region[rid], self.length[rid] = start, tokens
        return start

    def release(self, rid: int) -> None:
        self.regions.free(int(self.region[rid]), int(self.length[rid]))
        self.region[rid] = -1

    def _compact(self) -> None:
        """Move every live region down to the start of the pool, in place order, copying its KV on the device."""
        live = np.flatnonzero(self.region >= 0)
        live = live[np.argsort(self.region[live])]
        lengths = self.length[live]
        new = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        moved = new != self.region[live]
        if moved.any():
            src = np.concatenate(
                [np.arange(a, a + n) for a, n in zip(self.region[live][moved], lengths[moved])]
            )
            dst = np.concatenate([np.arange(a, a + n) for a, n in zip(new[moved], lengths[moved])])
            src_t, dst_t = (torch.from_numpy(x).to(self.device) for x in (src, dst))
            # each pool once: an MLA layer's value pool is its key pool (a second copy would read moved slots);
            # a draft's pools (`followers`) hold its KV at the same slots, so they move with these
            pools = {id(p): p for m in (self.model, *self.followers) for kv in m.kv for p in kv}
            for pool in pools.values():
                pool.index_copy_(0, dst_t, pool.index_select(0, src_t))  # gathered first: overlaps are safe
            self.region[live] = new
        used = int(lengths.sum())
        self.regions = Regions(self.scratch)
        if used:
            self.regions.allocate(used)
        self.compactions += 1

    # ------------------------------------------------------------------ steps
    def step(
        self,
        prefills: list[tuple[int, int, int, np.ndarray, bool]],
        decodes: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    ) -> np.ndarray:
        """Run one step and return the sampled ids (host int64): one per prefill chunk that wants logits
        (in order), then one per decode.

        prefills: (region start, cached tokens, chunk, the chunk's token ids, wants logits: True/1 for the
        chunk's last token, an int w for its last w tokens, as a speculative round's verification wants);
        decodes: (region starts, contexts including the new token, input token ids), numpy arrays.
        """
        t0 = time.perf_counter()
        self._timed = timed = self.time_gpu and self._events is not None
        self._marked = False
        n_dec = 0 if decodes is None else len(decodes[0])
        if not prefills and n_dec and self.static_decode and n_dec <= self.max_batch:
            ids, self.last_path = self._decode(*decodes), 1
        elif (
            self.static_mixed
            and len(prefills) <= self.mixed_seqs
            and sum(c for _, _, c, _, _ in prefills) + n_dec <= self.mixed_sizes[-1]
        ):
            ids, self.last_path = self._mixed(prefills, decodes), 2
        else:
            self._mark()  # an eager step's span includes its launches: they are what it waits for
            ids, self.last_path = self._eager(prefills, decodes), 0
        return self._finish(t0, ids, timed)

    def _finish(self, t0: float, ids: torch.Tensor, timed: bool) -> np.ndarray:
        """A step's end: its host time to launch, its GPU span (timed) and its ids on the host."""
        self.last_launch_s = time.perf_counter() - t0
        if timed:
            self._events[1].record()
        out = ids.cpu().numpy()  # the synchronisation that timestamps the step's tokens
        if timed:
            self.last_gpu_s = self._events[0].elapsed_time(self._events[1]) / 1e3
        return out

    def _mark(self) -> None:
        """Start the step's GPU span (first call only): right before its first device work, after host planning."""
        if self._timed and not self._marked:
            self._events[0].record()
            self._marked = True

    def _eager(self, prefills, decodes) -> torch.Tensor:
        q_lens = [c for _, _, c, _, _ in prefills]
        prior = [p for _, p, _, _, _ in prefills]
        starts = [s for s, _, _, _, _ in prefills]
        parts = [t for _, _, _, t, _ in prefills]
        want = [w for _, _, _, _, w in prefills]
        if decodes is not None:
            d_starts, ctx, d_tok = decodes
            n = len(ctx)
            q_lens += [1] * n
            prior += (ctx - 1).tolist()
            starts += d_starts.tolist()
            parts.append(d_tok)
            want += [True] * n
        lay = make_layout(
            q_lens, prior, self.device, starts=starts, kv_heads=self.target_heads, waves=self.waves
        )
        tokens = torch.from_numpy(np.concatenate(parts).astype(np.int64, copy=False)).to(self.device)
        rows = torch.from_numpy(wanted_rows(np.cumsum(q_lens), want)).to(self.device)
        return self.model(tokens, lay, rows).argmax(-1)

    def _decode(self, starts: np.ndarray, ctx: np.ndarray, tokens: np.ndarray) -> torch.Tensor:
        g, k_lens = self._decode_graph(ctx)
        self._fill(g, starts, ctx, tokens, k_lens)
        return self._replay(g)[: len(ctx)]

    def _decode_graph(self, ctx: np.ndarray) -> tuple[_DecodeGraph, np.ndarray]:
        """The decode graph of a step of these contexts (its padded size; split units where one sequence is much
        longer than the rest) and the step's padded k_lens."""
        size = self.sizes[bisect.bisect_left(self.sizes, len(ctx))]
        k_lens = self._padded_k_lens(size, ctx)
        return self._graph(size, split=not balanced_units(k_lens, self.target)), k_lens

    def _replay(self, g: _DecodeGraph) -> torch.Tensor:
        """Run a filled decode graph: its sampled ids (every slot, padding included)."""
        if g.graph is not None:
            g.graph.replay()
            return g.ids
        self._host_lists(g)  # CPU: the same static buffers through an eager forward
        return self.model(g.i64[: g.size], g.layout, None).argmax(-1)

    # ------------------------------------------------------------------ async scheduling
    def launch_decode(
        self,
        starts: np.ndarray,
        ctx: np.ndarray,
        tokens: np.ndarray,
        prev: InFlight | None = None,
        rows: np.ndarray | None = None,
    ) -> InFlight:
        """Launch a decode-only step (`step`'s `decodes`) on its graph and return without waiting for its ids
        (`wait` takes them): the host goes on to the next step while the GPU runs this one, as vLLM's async
        scheduling does. With `prev` (a step still in flight), the sequences' input tokens are `prev`'s
        sampled ids at `rows`, gathered on the device, and `tokens` is not read."""
        t0 = time.perf_counter()
        if prev is not None and prev.copied is not None:
            prev.copied.synchronize()  # its inputs have left the pinned buffers this step writes again
        n = len(ctx)
        g, k_lens = self._decode_graph(ctx)
        timed = self.time_gpu and self.cuda
        start = torch.cuda.Event(enable_timing=True) if timed else None
        self._timed, self._marked, events = timed, False, self._events
        if timed:
            self._events = (start, events[1])  # _upload's _mark records this step's start
        self._fill(g, starts, ctx, tokens if prev is None else rows, k_lens)
        self._events = events
        copied = torch.cuda.Event() if self.cuda else None
        if copied is not None:
            copied.record()
        if prev is not None:  # the input tokens are the last step's ids, still on the device
            g.i64[:n].copy_(prev.ids.index_select(0, g.i64[:n]))
        ids = self._replay(g)[:n]
        host = self._ids_out[self._flip][:n]
        self._flip ^= 1
        host.copy_(ids, non_blocking=True)
        done = torch.cuda.Event(enable_timing=timed) if self.cuda else None
        if done is not None:
            done.record()
        self.last_path = 1
        return InFlight(ids, host, copied, done, start, time.perf_counter() - t0)

    def wait(self, f: InFlight) -> np.ndarray:
        """The sampled ids of a step `launch_decode` launched, once they are on the host (`last_gpu_s`: its GPU
        span when timed, `last_launch_s`: its host seconds to issue)."""
        if f.done is not None:
            f.done.synchronize()
        self.last_launch_s = f.launch_s
        self.last_gpu_s = f.start.elapsed_time(f.done) / 1e3 if f.start is not None else float("nan")
        self.last_path = 1
        return f.host.numpy().copy()

    @staticmethod
    def _host_lists(g: _DecodeGraph) -> None:
        """Set a decode layout's host lists from its buffers (the CPU reference attention reads them)."""
        g.layout.k_lens = g.host32[g.size + 1 : 2 * g.size + 1].tolist()
        g.layout.k_starts = g.host32[: g.size].tolist()

    # ------------------------------------------------------------------ engine/speculative.py's round graphs
    def fill_decode(self, g: _DecodeGraph, starts: np.ndarray, ctx: np.ndarray, tokens: np.ndarray) -> None:
        """Write a decode step into `decode_buffers` (contexts include the new token) and copy it over."""
        self._fill(g, starts, ctx, tokens)
        if not self.use_graphs:
            self._host_lists(g)

    def fill_mixed(self, g: _MixedGraph, chunks: list, decodes: tuple | None = None) -> np.ndarray:
        """Write a step of chunks (`step`'s prefills) and decodes (its `decodes`) into `mixed_buffers`, copy it over;
        the rows to sample."""
        return self._fill_mixed(g, chunks, decodes)

    def run_static(self, fn, path: int) -> np.ndarray:
        """Run `fn` (a graph's replay, or the same static buffers eagerly on the CPU) as one step, timed as `step`
        times its own (`last_launch_s`, `last_gpu_s`, `last_path` = path); its output copied to the host."""
        t0 = time.perf_counter()
        timed = self.time_gpu and self._events is not None
        if timed:
            self._events[0].record()
        out = fn()
        self.last_path = path
        return self._finish(t0, out, timed)

    def _fill(
        self,
        g: _DecodeGraph,
        starts: np.ndarray,
        ctx: np.ndarray,
        tokens: np.ndarray,
        k_lens: np.ndarray | None = None,
    ) -> None:
        """Write one decode step's metadata into the graph's host buffers and copy it to the device in one go
        (`k_lens`: the step's _padded_k_lens where the caller has them already)."""
        size, n, cap = g.size, len(ctx), g.cap
        pad = size - n
        scratch = self.scratch + np.arange(pad, dtype=np.int64)  # padding: one new token each, in scratch
        all_starts = np.concatenate([starts, scratch])
        k_lens = self._padded_k_lens(size, ctx) if k_lens is None else k_lens
        h64 = g.host64.numpy()
        h64[:n] = tokens
        h64[n:size] = 1
        h64[size : 2 * size] = k_lens - 1
        h64[2 * size :] = all_starts + k_lens - 1
        units = plan_decode_units(k_lens, self.target, cap=cap, arrays=True, whole=g.layout.whole_units,
                                  waves=self.waves)  # fmt: skip
        h32 = g.host32.numpy()
        h32[:size] = all_starts
        h32[size] = int((all_starts + k_lens).max())
        h32[size + 1 : 2 * size + 1] = k_lens
        self._upload(g, units, 2 * size + 1)

    @staticmethod
    def _padded_k_lens(size: int, ctx: np.ndarray) -> np.ndarray:
        """A decode graph's contexts (or a mixed graph's decode slots, `size` of them): the step's, then one key for
        each padding slot."""
        return np.concatenate([np.asarray(ctx, dtype=np.int64), np.ones(size - len(ctx), dtype=np.int64)])

    def _upload(self, g, units: dict, o: int) -> None:
        """Write the decode work units into a graph's int32 host buffer from offset o (seq, lo, hi: `g.cap`
        each, then seq_units), then copy both host buffers to the device in one go each."""
        h32, cap = g.host32.numpy(), g.cap
        h32[o : o + cap] = units["seq"]
        h32[o + cap : o + 2 * cap] = units["lo"]
        h32[o + 2 * cap : o + 3 * cap] = units["hi"]
        h32[o + 3 * cap :] = units["seq_units"]
        self._mark()
        g.i64.copy_(g.host64, non_blocking=True)
        g.i32.copy_(g.host32, non_blocking=True)

    def _mixed(self, prefills, decodes) -> torch.Tensor:
        """A step with prompt chunks through the graph of its padded token count; logits and sampling eager."""
        t = sum(c for _, _, c, _, _ in prefills) + (0 if decodes is None else len(decodes[0]))
        size = self.mixed_sizes[bisect.bisect_left(self.mixed_sizes, t)]
        split = False
        if SPLIT_MIXED and decodes is not None and len(decodes[1]):
            # the decode slots' contexts as _fill_mixed plans units over them: the decodes, then the padding dummies
            k_lens = self._padded_k_lens(len(decodes[1]) + size - t, decodes[1])
            split = not balanced_units(k_lens, self.target)
        g = self._mixed_graph(size, split)
        rows = self._fill_mixed(g, prefills, decodes)
        if g.graph is not None:
            g.graph.replay()
            x, res = g.hidden
        else:  # CPU: the same static buffers through an eager forward, host lists set for the reference path
            x, res = self.model.hidden(g.i64[: g.size], g.layout)
        index = torch.from_numpy(rows).to(self.device, non_blocking=True)
        return self.model.logits(x, res, index).argmax(-1)

    def _fill_mixed(self, g: _MixedGraph, prefills, decodes) -> np.ndarray:
        """Write a step's layout into the graph's host buffers, copy them over; returns the rows to sample."""
        size, ns, cap, npf = g.size, g.seqs, g.cap, self.mixed_seqs
        p_start = np.array([s for s, _, _, _, _ in prefills], dtype=np.int64)
        p_prior = np.array([p for _, p, _, _, _ in prefills], dtype=np.int64)
        p_q = np.array([c for _, _, c, _, _ in prefills], dtype=np.int64)
        if decodes is not None:
            d_start, ctx, d_tok = decodes
        else:
            d_start = ctx = d_tok = np.zeros(0, dtype=np.int64)
        t = int(p_q.sum()) + len(ctx)
        pad = size - t
        # sequence slots: chunks, empty chunk slots, decodes, one-token dummies, empty slots
        q = np.zeros(ns, dtype=np.int64)
        prior = np.zeros(ns, dtype=np.int64)
        start = np.full(ns, self.scratch, dtype=np.int64)
        k = len(prefills)
        q[:k], prior[:k], start[:k] = p_q, p_prior, p_start
        nd = len(ctx)
        a = npf + nd
        q[npf:a], prior[npf:a], start[npf:a] = 1, ctx - 1, d_start
        q[a : a + pad] = 1
        start[a : a + pad] = self.scratch + np.arange(pad, dtype=np.int64)
        k_lens = prior + q
        cu_q = np.zeros(ns + 1, dtype=np.int64)
        np.cumsum(q, out=cu_q[1:])
        # per token: position and slot (chunks' tokens, then decodes', then the dummies' at position 0)
        pos = np.zeros(size, dtype=np.int64)
        if k:
            pos[: int(p_q.sum())] = np.concatenate([np.arange(p, p + c) for p, c in zip(p_prior, p_q)])
        pos[int(p_q.sum()) : t] = ctx - 1
        tok_start = np.repeat(start, q)
        h64 = g.host64.numpy()
        h64[:size] = 1
        if k:
            h64[: int(p_q.sum())] = np.concatenate([x for _, _, _, x, _ in prefills])
        h64[int(p_q.sum()) : t] = d_tok
        h64[size : 2 * size] = pos
        h64[2 * size :] = tok_start + pos
        # units of the decode slots that have keys (decodes, dummies); the empty slots after them have none
        units = plan_decode_units(k_lens[npf : a + pad], self.target, seq0=npf, cap=cap, arrays=True,
                                  whole=g.layout.whole_units, waves=self.waves)  # fmt: skip
        units["seq_units"] = np.concatenate([units["seq_units"], np.full(ns - a - pad, units["count"])])
        h32 = g.host32.numpy()
        h32[: ns + 1] = cu_q
        h32[ns + 1 : 2 * ns + 1] = start
        h32[2 * ns + 1] = int((start + k_lens).max())
        h32[2 * ns + 2 : 3 * ns + 2] = k_lens
        self._upload(g, units, 3 * ns + 2)
        if g.graph is None:  # the CPU reference attention reads the host lists
            g.layout.q_lens, g.layout.k_lens, g.layout.k_starts = q.tolist(), k_lens.tolist(), start.tolist()
            g.layout.n_real = ns
        want = [w for _, _, _, _, w in prefills]
        return np.concatenate([wanted_rows(cu_q[1 : k + 1], want), cu_q[npf + 1 : a + 1] - 1]).astype(
            np.int64
        )

    def reset_graphs(self) -> None:
        """Drop every captured graph (after changing a kernel rule the graphs baked in), with a new memory pool:
        a private pool whose graphs are all freed cannot take a new capture (PyTorch's allocator asserts)."""
        self.graphs.clear()
        self.split_graphs.clear()
        self.mixed_graphs.clear()
        self.split_mixed_graphs.clear()
        if self.use_graphs:
            torch.cuda.synchronize(self.device)
            self.pool = torch.cuda.graph_pool_handle()

    def _mixed_graph(self, size: int, split: bool = False) -> _MixedGraph:
        """The mixed-step graph of `size` tokens; with `split`, for a size whose graph runs one decode unit per
        sequence, its second graph with split units (steps whose decodes' contexts are uneven), as `_graph`."""
        split = split and whole_units(size, self.target)
        graphs = self.split_mixed_graphs if split else self.mixed_graphs
        g = graphs.get(size)
        if g is not None:
            return g
        g = self.mixed_buffers(size, whole=False if split else None)
        if self.use_graphs:
            tokens = g.i64[:size]
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self.model.hidden(tokens, g.layout)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                g.hidden = self.model.hidden(tokens, g.layout)
            g.graph = graph
        graphs[size] = g
        return g

    def mixed_buffers(self, size: int, whole: bool | None = None) -> _MixedGraph:
        """The static buffers and layout of a step of `size` tokens with up to `mixed_seqs` prompt chunks, its
        decodes one unit each (`whole`; default whole_units by count) or split (no graph: `_mixed_graph` captures
        one on them; engine/speculative.py's round graphs capture their own)."""
        dev, npf = self.device, self.mixed_seqs
        ns = npf + size
        whole = whole_units(size, self.target) if whole is None else whole
        cap = unit_capacity(self.target, size, whole, waves=self.waves)
        n32 = 3 * ns + 2 + 3 * cap + size + 1
        g = _MixedGraph(
            size=size,
            seqs=ns,
            i64=torch.zeros(3 * size, dtype=torch.int64, device=dev),
            i32=torch.zeros(n32, dtype=torch.int32, device=dev),
            host64=torch.zeros(3 * size, dtype=torch.int64, pin_memory=self.cuda),
            host32=torch.zeros(n32, dtype=torch.int32, pin_memory=self.cuda),
            cap=cap,
            layout=None,
        )
        i32, o = g.i32, 3 * ns + 2
        units = {"seq": i32[o : o + cap], "lo": i32[o + cap : o + 2 * cap], "hi": i32[o + 2 * cap : o + 3 * cap],
                 "seq_units": i32[o + 3 * cap :]}  # fmt: skip
        g.layout = StepLayout(
            [1] * ns, [1] * ns, [0] * ns, i32[: ns + 1], i32[ns + 1 : 2 * ns + 2], i32[2 * ns + 2 : 3 * ns + 2],
            g.i64[size : 2 * size], g.i64[2 * size :], size, self.max_k, npf, ns, units, whole,
        )  # fmt: skip
        # capture on padding only: one empty chunk slot... every token a one-token dummy in scratch
        self._fill_mixed(g, [], None)
        return g

    def _graph(self, size: int, split: bool = False) -> _DecodeGraph:
        """The decode graph of `size` sequences: one unit per sequence where whole_units says they fill the GPU,
        else split units. With `split`, split units always: for such a size its second graph (steps of uneven
        contexts); for the others the one graph, split already."""
        split = split and whole_units(size, self.target)
        graphs = self.split_graphs if split else self.graphs
        g = graphs.get(size)
        if g is not None:
            return g
        g = self.decode_buffers(size, whole=False if split else None)
        if self.use_graphs:
            dev = self.device
            tokens = g.i64[:size]
            stream = torch.cuda.Stream(dev)
            stream.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(stream):  # warm-up compiles the Triton kernels and sets up cuBLAS
                for _ in range(2):
                    self.model(tokens, g.layout, None).argmax(-1)
            torch.cuda.current_stream(dev).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                g.ids = self.model(tokens, g.layout, None).argmax(-1)
            g.graph = graph
        graphs[size] = g
        return g

    def decode_buffers(self, size: int, whole: bool | None = None) -> _DecodeGraph:
        """The static buffers and layout of a decode step of `size` sequences, one work unit per sequence or split
        (`whole`; default whole_units by count) (no graph: `_graph` captures one on them; engine/speculative.py's
        round graphs capture their own)."""
        whole = whole_units(size, self.target) if whole is None else whole
        dev, cap = self.device, unit_capacity(self.target, size, whole, self.waves)
        pin = self.cuda
        n32 = 2 * size + 1 + 3 * cap + size + 1
        g = _DecodeGraph(
            size=size,
            i64=torch.zeros(3 * size, dtype=torch.int64, device=dev),
            i32=torch.zeros(n32, dtype=torch.int32, device=dev),
            host64=torch.zeros(3 * size, dtype=torch.int64, pin_memory=pin),
            host32=torch.zeros(n32, dtype=torch.int32, pin_memory=pin),
            cap=cap,
            layout=None,  # set below
        )
        i32, o = g.i32, 2 * size + 1
        units = {
            "seq": i32[o : o + cap],
            "lo": i32[o + cap : o + 2 * cap],
            "hi": i32[o + 2 * cap : o + 3 * cap],
            "seq_units": i32[o + 3 * cap :],
        }
        cu_q = torch.arange(size + 1, dtype=torch.int32, device=dev)
        g.layout = StepLayout(
            [1] * size,
            [1] * size,
            list(range(size)),
            cu_q,
            i32[: size + 1],
            i32[size + 1 : 2 * size + 1],
            g.i64[size : 2 * size],
            g.i64[2 * size :],
            1,
            self.scratch + self.max_batch,
            0,
            size,
            units,
            whole,
        )
        # capture on padding only: every sequence a new token in scratch
        self._fill(g, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
        return g


# ---------------------------------------------------------------------------------------------- the loop
@dataclass
class ServingRun:
    """What a real run produced: the simulator's records, each token's time, and the run's own figures."""

    table: RequestTable
    stats: StepStats
    scheduler: Scheduler
    token_times: list[np.ndarray]  # per request: seconds since the start of each of its output tokens
    wall_s: float
    warmup_s: float
    steps: int
    decode_graph_steps: int
    host_s: float  # time outside the executor's steps (scheduling, bookkeeping, idle excluded)
    idle_s: float
    unfinished: list[int] = field(default_factory=list)
    ids: np.ndarray | None = None  # every request's token stream (prompt, then output), end to end
    offsets: np.ndarray | None = None  # request i's stream is ids[offsets[i]:offsets[i + 1]]
    step_trace: dict[str, np.ndarray] | None = None  # serve(trace=True): TRACE_FIELDS, one entry per step
    spec: dict | None = (
        None  # speculative decoding: rounds (per sequence), drafted, accepted, drafting seconds
    )

    def output_ids(self, rid: int) -> np.ndarray:
        """The tokens request rid generated (greedy)."""
        end = self.offsets[rid + 1]
        return self.ids[end - int(self.table.output_tokens[rid]) : end]

    def itl_summary(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per request: (mean, p99, max) gap between consecutive output tokens (NaN with fewer than two)."""
        n = len(self.token_times)
        mean, p99, mx = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
        for i, t in enumerate(self.token_times):
            if len(t) > 1:
                d = np.diff(t)
                mean[i], p99[i], mx[i] = d.mean(), np.percentile(d, 99), d.max()
        return mean, p99, mx


class _Replay:
    """The state of one replay: every request's token stream, its KV region, its last token's time."""

    def __init__(
        self,
        executor: Executor,
        sched: Scheduler,
        requests: Requests,
        seed: int,
        cost: CostModel | None = None,
        spec: SpecRun | None = None,
    ) -> None:
        self.ex, self.sched, self.cost = executor, sched, cost
        self.extra = spec.k if spec is not None else 0  # a verification writes k slots past the kept tokens
        n = len(requests)
        self.prompt = requests.prompt_tokens.astype(np.int64)
        self.output = requests.output_tokens.astype(np.int64)
        self.table = RequestTable(requests.arrival_s.copy(), self.prompt, self.output)
        horizon = float(np.nanmax(requests.arrival_s)) if n else 1.0
        self.stats = StepStats(max(horizon / 2000.0, 1e-3))
        self.recorder = StepRecorder(self.table, self.stats, sched)  # the simulator's replica's rules
        # each request's token stream (prompt, then output) in one flat array: random prompt ids, sampled outputs
        self.off = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(self.prompt + self.output, out=self.off[1:])
        rng = np.random.default_rng(seed)
        self.ids = rng.integers(1, executor.vocab, size=int(self.off[-1]), dtype=np.int64)
        executor.reset(n)
        self.region = executor.region
        self.spec = Speculator(spec, executor, n, seed) if spec is not None else None
        self.tok_rid: list[np.ndarray] = []  # per step: which requests got a token, and when
        self.tok_time: list[float] = []

    def inputs(self, batch: Batch):
        """The executor's inputs for a batch, regions placed and freed, token ids gathered (O(batch)).

        Returns (prefills, sequences whose prompt completes, decodes, decode request ids, where their
        new tokens go in the id array)."""
        ex, ids, off, region = self.ex, self.ids, self.off, self.region
        for s in batch.preempted:  # recomputed later from its prompt and the tokens it generated
            ex.release(s.rid)
        for s, _ in batch.prefills:  # place every new region first: a compaction moves the others
            if region[s.rid] < 0:
                ex.place(s.rid, int(self.prompt[s.rid] + self.output[s.rid]) + self.extra)
        prefills, wants = [], []
        for s, chunk in batch.prefills:
            a = off[s.rid] + s.computed
            done = s.computed + chunk == s.prompt
            prefills.append((int(region[s.rid]), s.computed, chunk, ids[a : a + chunk], done))
            if done:
                wants.append(s)
        if not batch.num_decodes:
            return prefills, wants, None, None, None
        d_rids, ctx = self.sched.decoding()
        assert len(d_rids) == batch.num_decodes, "the decode set and the batch disagree"
        d_pos = off[d_rids] + ctx  # where each new token goes: right after the ctx tokens it attends to
        return prefills, wants, (region[d_rids], ctx, ids[d_pos - 1]), d_rids, d_pos

    def overlappable(self, batch: Batch) -> bool:
        """Whether async scheduling may launch `batch` without waiting for it: a decode-only step that replays a
        decode graph (prompt chunks and eager steps are waited for; serve refuses it with speculation)."""
        ex = self.ex
        return not batch.prefills and 0 < batch.num_decodes <= ex.max_batch and ex.static_decode

    def execute(self, batch: Batch, prefills, dec, d_rids, d_pos):
        """Run the batch: a speculative round (draft, then verification) when the scheduler made it one, else
        one step (and the draft model's prefill of its prompt chunks, when speculating). Returns (sampled ids,
        tokens kept per decoding sequence in a speculative round, else None)."""
        if batch.spec_k:
            return self.spec.round(batch, self, prefills, dec, d_rids, d_pos)
        if self.spec is not None:
            self.spec.prefill(batch, prefills)
        return self.ex.step(prefills, dec), None

    def record(
        self, batch: Batch, res, sampled, wants, d_rids, d_pos, start: float, end: float, kept=None
    ) -> None:
        """Store the sampled ids and each token's time, and record the step as the simulator does (`kept`:
        a speculative round's tokens per decoding sequence, already in the id stream)."""
        k = len(wants)
        for s, tok in zip(wants, sampled[:k].tolist(), strict=True):
            self.ids[self.off[s.rid] + s.prompt] = tok  # the token after its (recomputed) prompt
        if d_rids is not None:
            if kept is None:
                self.ids[d_pos] = sampled[k:]
                self.tok_rid.append(d_rids)
            else:
                assert batch.spec_tokens == int(kept.sum()), "the round's tokens and the scheduler's disagree"
                self.tok_rid.append(np.repeat(d_rids, kept))
            self.tok_time.append(end)
        dt, rec = end - start, self.recorder
        rec.step(batch, res.first_tokens, dt, self.prefill_s(batch, dt), start, end)
        if res.first_tokens:
            first = res.first_tokens
            self.tok_rid.append(np.fromiter((s.rid for s in first), dtype=np.int64, count=len(first)))
            self.tok_time.append(end)
        rec.finished(res.finished, end)
        for s in res.finished:
            self.ex.release(s.rid)
        rec.sample(end, batch.num_decodes + len(batch.prefills))

    def prefill_s(self, batch: Batch, dt: float) -> float:
        """The prompt's part of a step's measured seconds: the cost model's split, as the simulator's, when
        the run has one; the prompt tokens' share of the step's tokens otherwise."""
        shape = batch.shape
        if self.cost is not None:
            total, prompt = self.cost.step_split(shape)
            return dt * prompt / total if total > 0 else 0.0
        return dt * shape.prefill_tokens / max(shape.tokens, 1)

    def token_times(self) -> list[np.ndarray]:
        n = len(self.table)
        if not self.tok_rid:
            return [np.zeros(0) for _ in range(n)]
        rids = np.concatenate(self.tok_rid)
        times = np.repeat(np.asarray(self.tok_time), [len(r) for r in self.tok_rid])
        order = np.argsort(rids, kind="stable")
        rids, times = rids[order], times[order]
        bounds = np.searchsorted(rids, np.arange(n + 1))
        return [times[bounds[i] : bounds[i + 1]] for i in range(n)]


@dataclass(slots=True)
class _Pending:
    """A decode step in flight (async scheduling): what recording it takes once its ids are on the host."""

    batch: Batch
    res: object  # the scheduler's StepResult
    flight: InFlight
    d_rids: np.ndarray
    d_pos: np.ndarray
    now: float  # loop seconds when its iteration began
    start: float  # ... when its scheduling ended
    prepared: float  # ... when its inputs were ready


class _Loop:
    """The serving loop: admit arrivals at step boundaries, schedule, execute, record (with `rows`, one trace
    row per step). With `overlap` (async scheduling), a decode-only step on a graph is launched without waiting
    for its ids: the host schedules and prepares the next step while the GPU runs it, and records it after
    launching that next one (its input tokens gathered on the device from the step before). A step of any other
    kind first waits for the one in flight."""

    def __init__(
        self, executor: Executor, sched: Scheduler, run: _Replay, rows: list[tuple] | None, overlap: bool
    ):
        self.ex, self.sched, self.run, self.rows, self.overlap = executor, sched, run, rows, overlap
        self.kernels = jit_functions() if rows is not None else []
        self.compiled = compiled_variants(self.kernels)
        self.steps = self.graph_steps = 0
        self.busy = self.idle = self.last_end = 0.0
        self.t0 = time.perf_counter()
        self.pending: _Pending | None = None
        # request id -> its row in the step in flight
        self.row_of = np.full(len(run.table), -1, dtype=np.int64)

    @staticmethod
    def check(overlap: bool, spec) -> None:
        """Refuse what async scheduling does not cover, before anything is built."""
        if overlap and spec is not None:
            raise ValueError(
                "serve: async_scheduling with speculative decoding is not built; leave one of them off"
            )

    def clock(self) -> float:
        return time.perf_counter() - self.t0

    def run_all(self, arrivals: list[float], order: list[int], deadline_s: float | None) -> tuple:
        """Returns (wall seconds, steps, decode-graph steps, busy seconds, idle seconds)."""
        sched, run = self.sched, self.run
        prompt, output = run.prompt, run.output
        nxt = 0
        while True:
            now = self.clock()
            while nxt < len(order) and arrivals[nxt] <= now:  # arrivals enter at step boundaries
                rid = order[nxt]
                sched.add(Sequence(rid, int(prompt[rid]), int(output[rid])))
                nxt += 1
            if deadline_s is not None and now > deadline_s:
                break
            batch = sched.schedule() if sched.has_work() else None
            overlap = batch is not None and self.overlap and run.overlappable(batch)
            if self.pending is not None and not overlap:
                self.land()
            if batch is None:
                if nxt >= len(order):
                    break  # nothing can run and nothing is to come
                wait = arrivals[nxt] - self.clock()
                if wait > IDLE_SPIN_S:
                    time.sleep(wait - IDLE_SPIN_S / 2)
                self.idle += self.clock() - now
                continue
            if overlap:
                self.launch(batch, now)
            else:
                self.step(batch, now)
        if self.pending is not None:
            self.land()
        return self.clock(), self.steps, self.graph_steps, self.busy, self.idle

    def step(self, batch: Batch, now: float) -> None:
        """A step waited for: run, then record."""
        run, ex = self.run, self.ex
        start = self.clock()
        prefills, wants, dec, d_rids, d_pos = run.inputs(batch)
        prepared = self.clock()
        sampled, kept = run.execute(batch, prefills, dec, d_rids, d_pos)
        self.graph_steps += ex.last_path == 1
        end = self.clock()
        self.ended(start, end)
        run.record(batch, self.sched.complete(batch), sampled, wants, d_rids, d_pos, start, end, kept)
        self.trace(batch, now, start, prepared, end)

    def launch(self, batch: Batch, now: float) -> None:
        """A decode step launched while the one before it (if any) is still in flight; that one is recorded now."""
        run, ex, p = self.run, self.ex, self.pending
        start = self.clock()
        _, _, dec, d_rids, d_pos = run.inputs(batch)
        prepared = self.clock()
        rows = None
        if p is not None:
            rows = self.row_of[d_rids]
            # a sequence the step in flight does not decode: that step's tokens first, these from the host
            if (rows < 0).any():
                self.land()
                p, rows = None, None
                dec = (dec[0], dec[1], run.ids[d_pos - 1])
        flight = ex.launch_decode(*dec, prev=p.flight if p is not None else None, rows=rows)
        if p is not None:
            self.land()
        self.row_of[d_rids] = np.arange(len(d_rids))
        self.pending = _Pending(
            batch, self.sched.complete(batch), flight, d_rids, d_pos, now, start, prepared
        )

    def land(self) -> None:
        """Wait for the step in flight and record it: its tokens' time is now. Its busy time starts at the later
        of its own start and the previous step's end (the loop's busy spans do not overlap)."""
        p, ex = self.pending, self.ex
        self.pending = None
        sampled = ex.wait(p.flight)
        end = self.clock()
        self.row_of[p.d_rids] = -1
        start = max(p.start, self.last_end)
        self.graph_steps += 1
        self.ended(start, end)
        self.run.record(p.batch, p.res, sampled, [], p.d_rids, p.d_pos, start, end)
        self.trace(p.batch, p.now, p.start, p.prepared, end)

    def ended(self, start: float, end: float) -> None:
        """A step's count and busy time."""
        self.steps += 1
        self.busy += end - start
        self.last_end = end

    def trace(self, batch: Batch, now: float, start: float, prepared: float, end: float) -> None:
        if self.rows is None:
            return
        ex, sh = self.ex, batch.shape
        now_compiled = compiled_variants(self.kernels)
        compiles, self.compiled = (now_compiled - self.compiled if self.compiled >= 0 else -1), now_compiled
        self.rows.append((end, start - now, prepared - start, end - prepared, self.clock() - end,
                          ex.last_launch_s, ex.last_gpu_s, ex.last_path, sh.prefill_tokens, sh.prefill_seqs,
                          sh.prefill_pairs, sh.sliding_prefill_pairs, sh.prefill_context_tokens, sh.decode_seqs,
                          sh.decode_context_tokens, sh.logits_tokens, sh.fresh_seqs, sh.fresh_tokens,
                          sh.fresh_pairs, sh.fresh_padded_pairs, batch.num_decodes if batch.spec_k else 0, compiles))  # fmt: skip


def serve(
    executor: Executor,
    requests: Requests,
    pool: BlockPool,
    max_num_seqs: int,
    max_num_batched_tokens: int,
    chunked_prefill: bool = True,
    seed: int = 0,
    deadline_s: float | None = None,
    sliding_window: int | None = None,
    sliding_ratio: float | None = None,
    log=None,
    trace: bool = False,
    block_keys=None,
    cost: CostModel | None = None,
    spec: SpecRun | None = None,
    async_scheduling: bool = False,
) -> ServingRun:
    """Replay `requests` in real time on `executor` with the simulator's scheduler over `pool`.

    Prefix caching: give a `pool` made with prefix_caching=True and the requests' `block_keys`
    (`core.requests.PrefixKeys`); the scheduler then starts a request's prefill after the tokens it
    finds cached, and the executor computes only the rest, its attention reading the cached part from the
    sequence's own region. That region's cached part is not the prefix's KV (regions are not shared), so
    the step does the work and reads the bytes a real prefix cache would, but a prefix hit's greedy
    tokens are not those of a full forward (timings do not depend on values).

    Sliding-window layers' KV is charged against `pool` as the simulator charges it (`core.scheduler.sliding_terms`
    of the executor's model, unless `sliding_window` / `sliding_ratio` say otherwise).
    Arrival times are seconds from the start of the replay (requests with NaN arrivals are skipped).
    The run ends when every request has finished, or at `deadline_s` (wall seconds since the start;
    requests still in flight are left unfinished). Call `executor.warmup()` once before the first run.
    With `trace`, the run keeps one row per step (`TRACE_FIELDS`): where its time went and what it computed.
    With a `cost` model, a step's busy time splits between prompt and output work as the simulator splits
    it (`CostModel.step_split`); without one, by token share.
    With `spec`, speculative decoding with a draft model (engine/speculative.py): the scheduler makes a step a
    round of k drafts while at most `spec.max_batch` sequences decode, as the simulator's does; call
    `spec.draft.warmup()` too.
    With `async_scheduling`, decode steps are launched without waiting for their tokens (`_Loop`; not with `spec`).
    """
    _Loop.check(async_scheduling, spec)
    sd = None
    if (
        spec is not None
    ):  # the scheduler's draws stay unused: the engine decides acceptance (Batch.spec_accepted)
        sd = SpecDecode(spec.k, spec.max_batch, [0.0] * len(requests), np.random.default_rng(seed))
    window, ratio = sliding_terms(
        executor.model.spec
    )  # (None: the model's own, as the simulator's scheduler)
    window = window if sliding_window is None else sliding_window
    ratio = ratio if sliding_ratio is None else sliding_ratio
    config = SchedulerConfig(max_num_seqs, max_num_batched_tokens, chunked_prefill, sliding_window=window,
                             sliding_ratio=ratio, fresh=fresh_rule(executor.device), spec=sd)  # fmt: skip
    sched = Scheduler(pool, config, block_keys=block_keys)
    run = _Replay(executor, sched, requests, seed, cost, spec)
    order = np.flatnonzero(np.isfinite(requests.arrival_s))
    order = order[np.argsort(requests.arrival_s[order], kind="stable")]
    executor.time_gpu = trace
    rows: list[tuple] | None = [] if trace else None
    loop = _Loop(executor, sched, run, rows, async_scheduling)
    wall, steps, graph_steps, busy, idle = loop.run_all(
        requests.arrival_s[order].tolist(), order.tolist(), deadline_s
    )
    run.table.freeze()
    unfinished = np.flatnonzero(~np.isfinite(run.table.finish_s)).tolist()
    if log:
        log(
            f"served {len(order) - len(unfinished)}/{len(order)} requests in {wall:.1f} s: {steps} steps "
            f"({graph_steps} graph decodes), {sched.num_preemptions} preemptions, busy {busy / max(wall, 1e-9):.0%}"
        )
    executor.time_gpu = False
    cols = list(zip(*rows)) if rows else [()] * len(TRACE_FIELDS)
    step_trace = (
        {k: np.asarray(c, dtype=float) for k, c in zip(TRACE_FIELDS, cols, strict=True)} if trace else None
    )
    return ServingRun(run.table, run.stats, sched, run.token_times(), wall, 0.0, steps, graph_steps,
                      max(wall - busy - idle, 0.0), idle, unfinished, run.ids, run.off, step_trace,
                      run.spec.stats() if run.spec is not None else None)  # fmt: skip
