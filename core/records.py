"""Per-request records and per-step statistics, kept as numpy arrays for a million requests."""

from __future__ import annotations

import math

import numpy as np

# Inter-token latency is a per-token distribution: a histogram with log-spaced bins 0.46% wide
# from 1 µs to 10^4 s keeps percentiles within 0.25% at constant memory.
ITL_LO, ITL_BINS_PER_DECADE, ITL_DECADES = 1e-6, 500, 10
_EDGE = 10 ** (1 / ITL_BINS_PER_DECADE)
_INV_LO = 1 / ITL_LO
_LAST = ITL_BINS_PER_DECADE * ITL_DECADES
_EDGES = np.array([ITL_LO * _EDGE**i for i in range(_LAST + 1)])  # lower edge of each bin


class RequestTable:
    """Timestamps and counts per request id (NaN: never happened).

    While a simulation runs the per-request fields are plain lists (cheap to index one element at a
    time); `freeze()` turns them into numpy arrays for the metrics.
    """

    _LIVE = (
        "scheduled_s",
        "first_token_s",
        "finish_s",
        "preemptions",
        "replica",
        "generated",
        "cached_tokens",
    )

    def __init__(self, arrival_s: np.ndarray, prompt_tokens: np.ndarray, output_tokens: np.ndarray) -> None:
        n = len(arrival_s)
        self.arrival_s = arrival_s
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        nan = float("nan")
        self.scheduled_s: list | np.ndarray = [nan] * n
        self.first_token_s: list | np.ndarray = [nan] * n
        self.finish_s: list | np.ndarray = [nan] * n
        self.preemptions: list | np.ndarray = [0] * n
        self.replica: list | np.ndarray = [-1] * n
        self.generated: list | np.ndarray = [0] * n  # output tokens produced, checked against output_tokens
        self.cached_tokens: list | np.ndarray = [0] * n  # prompt tokens found in the prefix cache
        self.class_id = np.zeros(n, dtype=np.int64)
        self.rejected = np.zeros(n, dtype=bool)

    def freeze(self) -> None:
        for name in self._LIVE:
            v = getattr(self, name)
            if isinstance(v, list):
                setattr(self, name, np.array(v, dtype=float if name.endswith("_s") else np.int64))

    def __len__(self) -> int:
        return len(self.arrival_s)


class StepStats:
    """Aggregates over steps: busy time split by work, ITL histogram, KV and queue timelines."""

    def __init__(self, timeline_interval_s: float) -> None:
        self.steps = 0
        self.busy_s = 0.0
        self.prefill_s = 0.0  # busy time attributed to prompt tokens
        self.decode_s = 0.0
        self.prefill_tokens = 0  # computed, recomputation included
        self.kv_block_seconds = 0.0  # ∫ used blocks dt, for time-weighted occupancy
        self.batch_seq_steps = 0  # Σ sequences per step, for mean batch size
        self._itl_s: list[float] = []  # ITL samples not yet binned, and their token counts
        self._itl_n: list[int] = []
        self._lines: list = []  # runs of steps not yet binned: a, b, j0, j1, count of each (add_itl_line)
        self._hist = np.zeros(ITL_BINS_PER_DECADE * ITL_DECADES + 1, dtype=np.int64)
        self.interval = timeline_interval_s
        self.next_sample = 0.0
        self.timeline: list[tuple[float, int, int, int, int]] = []  # t, waiting, running, kv used, batch

    def add(self, other: StepStats) -> None:
        """Add another engine's totals and ITL histogram (not its timeline)."""
        self.steps += other.steps
        self.busy_s += other.busy_s
        self.prefill_s += other.prefill_s
        self.decode_s += other.decode_s
        self.prefill_tokens += other.prefill_tokens
        self.kv_block_seconds += other.kv_block_seconds
        self.batch_seq_steps += other.batch_seq_steps
        self.itl_hist += other.itl_hist

    # ITL histogram
    def add_itl(self, seconds: float, count: int) -> None:
        """`count` tokens that came `seconds` after their previous one (binned in batches, later)."""
        if count > 0:
            self._itl_s.append(seconds)
            self._itl_n.append(count)
            if len(self._itl_s) >= 65536:
                self._flush_itl()

    def _flush_itl(self) -> None:
        if self._itl_s:
            s = np.maximum(np.array(self._itl_s), ITL_LO)
            idx = np.minimum((np.log10(s * _INV_LO) * ITL_BINS_PER_DECADE).astype(np.int64), _LAST)
            np.add.at(self._hist, idx, np.array(self._itl_n, dtype=np.int64))
            self._itl_s.clear()
            self._itl_n.clear()
        if self._lines:
            self._flush_lines()

    def _flush_lines(self) -> None:
        """Bin the runs `add_itl_line` holds: with numpy those whose durations fall in one bin (most) or
        two, one by one the others."""
        a, b, j0, j1, count = np.array(self._lines, dtype=float).reshape(-1, 5).T
        self._lines.clear()
        lo, hi = _bins(a + b * j0), _bins(a + b * (j1 - 1))
        one = (lo == hi) | (b <= 0)
        np.add.at(self._hist, lo[one], (count * (j1 - j0))[one].astype(np.int64))
        two = ~one & (hi == lo + 1)  # j below upto are in bin lo, the rest in bin hi (as in `_spread`)
        c, first, end = count[two], j0[two], j1[two]
        upto = np.minimum(np.maximum(np.ceil((_EDGES[hi[two]] - a[two]) / b[two]), first), end)
        np.add.at(self._hist, lo[two], (c * (upto - first)).astype(np.int64))
        np.add.at(self._hist, hi[two], (c * (end - upto)).astype(np.int64))
        for i in np.flatnonzero(~one & ~two).tolist():
            self._spread(
                float(a[i]), float(b[i]), int(j0[i]), int(j1[i]), int(count[i]), int(lo[i]), int(hi[i])
            )

    @property
    def itl_hist(self) -> np.ndarray:
        """Tokens per ITL bin (log-spaced from ITL_LO, ITL_BINS_PER_DECADE a decade)."""
        self._flush_itl()
        return self._hist

    @itl_hist.setter
    def itl_hist(self, value: np.ndarray) -> None:
        self._itl_s.clear()
        self._itl_n.clear()
        self._lines.clear()
        self._hist = value

    def add_itl_many(self, seconds: np.ndarray, count: int) -> None:
        if count > 0 and len(seconds):
            idx = np.clip(
                np.floor(np.log10(np.maximum(seconds, ITL_LO) / ITL_LO) * ITL_BINS_PER_DECADE),
                0,
                len(self._hist) - 1,
            ).astype(np.int64)
            np.add.at(self._hist, idx, count)

    def add_itl_line(self, a: float, b: float, j0: int, j1: int, count: int) -> None:
        """Add `count` samples of each duration a + b·j for j in [j0, j1) (b >= 0), exactly per bin
        (binned in batches, later)."""
        lines = self._lines
        lines += (a, b, j0, j1, count)
        if len(lines) >= 5 * 16384:
            self._flush_lines()

    def _spread(self, a: float, b: float, j0: int, j1: int, count: int, lo: int, hi: int) -> None:
        """`add_itl_line` for a run whose first and last durations fall in bins lo < hi."""
        below = j0
        for i in range(lo + 1, hi + 1):  # j with a + b·j under bin i's lower edge
            upto = min(max(math.ceil((_EDGES[i] - a) / b), below), j1)
            self._hist[i - 1] += count * (upto - below)
            below = upto
        self._hist[hi] += count * (j1 - below)

    def sample(self, t: float, waiting: int, running: int, kv_used: int, batch: int) -> None:
        if t >= self.next_sample:
            self.timeline.append((t, waiting, running, kv_used, batch))
            self.next_sample = t + self.interval


class StepRecorder:
    """What a step leaves in the records, one rule for both executors (the SimPy replica and the engine's
    serving loop): busy time and its prompt part as the executor attributes them, KV block-seconds, the
    time a request is first scheduled, first and finish times, and ITL samples.

    ITL: a decode step's token comes `end − last_decode_end` after the previous one for every sequence
    that decoded at the previous decode step; a sequence that got its first token in a step without
    decodes (`just_joined`), or that was preempted, counts from its own last token (`last_token`).
    """

    __slots__ = ("table", "stats", "sched", "pool", "just_joined", "last_decode_end", "last_token")

    def __init__(self, table: RequestTable, stats: StepStats, sched) -> None:
        self.table, self.stats, self.sched, self.pool = table, stats, sched, sched.pool
        self.just_joined: list = []  # joined decoding since the last decode step, not at a decode step
        self.last_decode_end = 0.0
        self.last_token: dict[int, float] = {}  # last token time of sequences not in the decode set

    def step(self, batch, first_tokens: list, dt: float, prefill_s: float, start: float, end: float) -> None:
        """A completed step from `start` to `end` (`dt` seconds busy, `prefill_s` of them on prompt tokens);
        `first_tokens`: the sequences whose prefill it finished (the scheduler's StepResult). Record the
        step's finishes after it (`finished`), then its timeline point (`sample`)."""
        t, st, pool = self.table, self.stats, self.pool
        shape = batch.shape
        st.steps += 1
        st.busy_s += dt
        st.prefill_s += prefill_s
        st.decode_s += dt - prefill_s
        st.prefill_tokens += shape.prefill_tokens
        st.kv_block_seconds += (pool.num_blocks - pool.free) * dt
        st.batch_seq_steps += shape.decode_seqs + shape.prefill_seqs
        for s in batch.preempted:
            t.preemptions[s.rid] += 1
            if s.generated:  # its last token came at the last decode step, unless it only just joined
                self.last_token.setdefault(s.rid, self.last_decode_end)
        scheduled = t.scheduled_s
        for s, _ in batch.prefills:
            if scheduled[s.rid] != scheduled[s.rid]:  # NaN: its first step
                scheduled[s.rid] = start
                t.cached_tokens[s.rid] = s.cached_tokens
        if batch.num_decodes:
            if self.just_joined:
                self.decode_itl(batch.num_decodes, end)
            else:  # (decode_itl, inline)
                st.add_itl(end - self.last_decode_end, batch.num_decodes)
                self.last_decode_end = end
            if batch.spec_tokens > batch.num_decodes:  # the rest of a round's tokens arrive together
                st.add_itl(0.0, batch.spec_tokens - batch.num_decodes)
        first = t.first_token_s
        for s in first_tokens:
            if first[s.rid] != first[s.rid]:  # NaN: its first token
                first[s.rid] = end
            else:  # recomputed after preemption: the gap since its last token before it
                st.add_itl(end - self.last_token.pop(s.rid), 1)
            if s.decoding and not batch.num_decodes:  # (after a decode step, its token came with theirs)
                self.just_joined.append(s)
                self.last_token[s.rid] = end

    def sample(self, end: float, batch_seqs: int) -> None:
        """The timeline's point at `end` (once the step's finishes are recorded), if one is due."""
        sched = self.sched
        self.stats.sample(end, len(sched.waiting), len(sched.running), self.pool.used, batch_seqs)

    def decode_itl(self, n: int, end: float) -> None:
        """ITL samples of a decode step of n sequences ending at `end`: the gap since each one's previous token."""
        st, counted = self.stats, 0
        if self.just_joined:
            last = self.last_token
            for s in self.just_joined:
                if s.decoding or s.generated >= s.output:  # (not preempted since; finished now or decoding)
                    st.add_itl(end - last.pop(s.rid, self.last_decode_end), 1)
                    counted += 1
            self.just_joined.clear()
        if n > counted:
            st.add_itl(end - self.last_decode_end, n - counted)
        self.last_decode_end = end

    def joined(self, seq, first_token_s: float) -> None:
        """A sequence prefilled elsewhere joins the decode set: its next token's gap counts from its first."""
        self.just_joined.append(seq)
        self.last_token[seq.rid] = first_token_s

    def finished(self, seqs: list, end: float) -> None:
        """Sequences whose output completed at `end`."""
        t, last = self.table, self.last_token
        finish, generated = t.finish_s, t.generated
        for s in seqs:
            finish[s.rid] = end
            generated[s.rid] = s.generated
            if last:
                last.pop(s.rid, None)


def _bin(seconds: float) -> int:
    """The ITL bin of a duration."""
    return min(int(math.log10(seconds / ITL_LO) * ITL_BINS_PER_DECADE), _LAST) if seconds > ITL_LO else 0


def _bins(seconds: np.ndarray) -> np.ndarray:
    """`_bin` of each duration. numpy's logarithm may differ from math's in the last bit, so durations
    within rounding of a bin's edge are binned by `_bin` itself."""
    x = np.log10(np.maximum(seconds, ITL_LO) * _INV_LO) * ITL_BINS_PER_DECADE
    idx = np.minimum(x.astype(np.int64), _LAST)
    for i in np.flatnonzero(np.abs(x - np.round(x)) < 1e-6).tolist():
        idx[i] = _bin(float(seconds[i]))
    return idx


def itl_percentiles(hist: np.ndarray, qs: tuple[float, ...]) -> dict[str, float]:
    """Percentiles of the token-level ITL distribution (bin centres in log space)."""
    total = hist.sum()
    out: dict[str, float] = {}
    if not total:
        return {f"p{q:g}": float("nan") for q in qs} | {"mean": float("nan")}
    cum = np.cumsum(hist)
    centres = ITL_LO * 10 ** ((np.arange(len(hist)) + 0.5) / ITL_BINS_PER_DECADE)
    for q in qs:
        i = int(np.searchsorted(cum, q / 100.0 * total, side="left"))
        out[f"p{q:g}"] = float(centres[min(i, len(centres) - 1)])
    out["mean"] = float((hist * centres).sum() / total)
    return out
