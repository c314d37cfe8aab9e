"""Speculative decoding in the serving loop: a draft model proposes k tokens, the target verifies k + 1 positions.

The scheduler (core/scheduler.py, the simulator's) decides when a step is a speculative round: while at most
`max_batch` sequences decode and blocks for a full round are free; above that batch size it schedules plain
decode steps, as the simulator does. A round here is real work on both models:

1. the draft model catches up and drafts: its first step feeds every decoding sequence the tokens its own KV
   lacks (one, or two after a round that accepted every draft, more after steps without speculation), beside
   the step's prompt chunks (the draft prefills every prompt too); then k − 1 decode steps, k drafts per
   sequence, each step's sampled ids the next step's input;
2. the target verifies in one step: per sequence a chunk of k + 1 tokens (its last token and the k drafts)
   after its context, mixed with the step's prompt chunks, sampling all k + 1 positions;
3. acceptance: a sequence keeps the leading accepted drafts, plus the target's token after them.
   **The weights are random, so the draft's tokens almost never equal the target's: which drafts are
   accepted is decided per position by a seeded draw, each accepted with probability α** (`acceptance=
   "draw"`, the simulator's model), while the steps, the KV written and the scheduling are the real ones.
   `acceptance="greedy"` accepts a draft when it equals the target's argmax (standard greedy verification;
   with a draft identical to the target every draft is accepted, which the tests use to check that the
   tokens equal a run without speculation);
4. roll-back: KV written for rejected positions is dropped: the scheduler's block pool returns the blocks
   reserved for them (`Scheduler._spec_round`), and in the engine's per-sequence region the sequence's
   length simply stops before them (the next round overwrites those slots); the draft's KV length goes back
   to the accepted prefix the same way.

A round with no prompt chunks whose sequences' draft KV lags by one or two tokens (every round after the first,
unless a plain decode step came between) replays one CUDA graph per padded batch size (`RoundGraph`): the draft's
catch-up step takes two tokens a sequence (the one before the last, rewritten unchanged when its KV is there, and
the last), its k − 1 decode steps read the previous step's argmax on the device, the target verifies, and one
copy brings back the drafts and the target's picks: no host round trip between the round's k + 1 steps. Other
rounds (prompt chunks in the step, a longer catch-up) run step by step as above. On the CPU the same static
buffers run eagerly (the tests).

Regions hold k tokens more than a sequence's final length (the verification writes up to k positions past
the tokens a sequence keeps). The draft's KV pool mirrors the target's layout: a sequence's draft KV sits at
the same slots of the draft's pool as its target KV in the target's, and when the target's executor compacts its
regions the draft's KV moves with them (`Executor.followers`, set when a run's Speculator is made).
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field

import numpy as np
import torch

ACCEPTANCE = ("draw", "greedy")


@dataclass(slots=True)
class SpecRun:
    """Speculative decoding for `serve`: the draft model's executor (a pool of as many tokens as the target's),
    k drafts per round, off above `max_batch` decoding sequences, acceptance rate α per request (or one)."""

    draft: object  # engine.serving.Executor of the draft model
    k: int
    max_batch: int
    alpha: float | np.ndarray = 0.7
    acceptance: str = "draw"
    graphs: dict = field(default_factory=dict)  # padded batch size -> RoundGraph (`warmup`)

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"speculative k must be at least 1 (got {self.k})")
        if self.acceptance not in ACCEPTANCE:
            raise ValueError(f"acceptance must be one of {', '.join(ACCEPTANCE)} (got {self.acceptance!r})")

    def warmup(self, target, log=None) -> float:
        """Build (on CUDA: capture) the round graphs of every padded batch size up to max_batch that both
        executors' chunk slots and the draft's batch hold, before serving (as `Executor.warmup` does for steps). Returns seconds."""
        from core.graphs import capture_sizes

        t0 = time.perf_counter()
        if not (target.static_mixed and self.draft.static_mixed and self.draft.static_decode):
            return 0.0
        slots = min(
            target.mixed_seqs, self.draft.mixed_seqs, self.draft.max_batch
        )  # chunk slots, scratch room
        for size in reversed([b for b in capture_sizes(self.max_batch) if b <= slots]):
            if size not in self.graphs:
                self.graphs[size] = RoundGraph(self.draft, target, size, self.k)
        if log:
            log(f"speculation: {len(self.graphs)} round graphs (k = {self.k}, batch sizes {sorted(self.graphs)}) in "
                f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
        return time.perf_counter() - t0


def verify_rows(starts: np.ndarray, ctx: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, ...]:
    """The verification of k + 1 positions a sequence as decode rows (the executor's `decodes`: region starts,
    contexts with the row's token, tokens), sequence by sequence: row j of sequence i attends to its context and
    the j tokens before it, so the split-KV decode kernel computes the causal chunk exactly. As a prompt chunk
    instead, FlashAttention-2 ran one program a head over every cached key: on an H200 a 3-token chunk after 4,096
    cached tokens took 208 µs a layer in the round's graph (benchmarks/results/step_gap_h200_session21_verify.md)."""
    n, q = tokens.shape
    return (
        np.repeat(starts, q),
        np.repeat(ctx, q) + np.tile(np.arange(q, dtype=np.int64), n),
        tokens.reshape(-1),
    )


class RoundGraph:
    """One speculative round of up to `size` decoding sequences on static buffers, captured as one CUDA graph
    (the module's docstring): the draft's catch-up step (two tokens a sequence), its k − 1 decode steps, the
    target's verification of k + 1 positions a sequence; the output is the drafts [size, k] then the target's
    picks [size, k + 1], flattened."""

    def __init__(self, draft, target, size: int, k: int) -> None:
        self.draft, self.target, self.size, self.k = draft, target, size, k
        self.first = draft.mixed_buffers(2 * size)
        self.steps = [draft.decode_buffers(size) for _ in range(k - 1)]
        self.verify = target.mixed_buffers((k + 1) * size)
        pin = target.cuda
        self.rows = torch.zeros(size * (k + 2), dtype=torch.int64, device=target.device)
        self.host_rows = torch.zeros(size * (k + 2), dtype=torch.int64, pin_memory=pin)
        self.out: torch.Tensor | None = None
        self.graph = None
        if target.use_graphs:
            dev = target.device
            stream = torch.cuda.Stream(dev)
            stream.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(
                stream
            ):  # warm-up on the padding the buffers hold (compiles, cuBLAS set-up)
                for _ in range(2):
                    self.forward()
            torch.cuda.current_stream(dev).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=target.pool):
                self.out = self.forward()
            self.graph = graph

    def forward(self) -> torch.Tensor:
        """The round on the device: every step's input from the buffers, the drafts fed forward as they come."""
        b, k = self.size, self.k
        dm, tm = self.draft.model, self.target.model
        x, res = dm.hidden(self.first.i64[: 2 * b], self.first.layout)
        ids = dm.logits(x, res, self.rows[:b]).argmax(-1)
        drafts = [ids]
        for g in self.steps:
            g.i64[:b].copy_(ids)
            ids = dm(g.i64[:b], g.layout, None).argmax(-1)
            drafts.append(ids)
        d = torch.stack(drafts, 1)  # [b, k]
        self.verify.i64[: b * (k + 1)].view(b, k + 1)[:, 1:].copy_(d)
        x, res = tm.hidden(self.verify.i64[: b * (k + 1)], self.verify.layout)
        picks = tm.logits(x, res, self.rows[b:]).argmax(-1)
        return torch.cat([d.reshape(-1), picks])

    def run(self, starts: np.ndarray, ctx: np.ndarray, pair: np.ndarray, last: np.ndarray):
        """One round for n <= size sequences (region starts, contexts with the new token, the two tokens before
        it, each one's last token): (drafts [n, k], the target's picks [n, k + 1]) on the host."""
        n, b, k = len(ctx), self.size, self.k
        first = [(int(starts[i]), int(ctx[i]) - 2, 2, pair[i], True) for i in range(n)]
        rows = np.zeros(b * (k + 2), dtype=np.int64)
        rows[:n] = self.draft.fill_mixed(self.first, first)
        for j, g in enumerate(self.steps, start=1):
            self.draft.fill_decode(g, starts, ctx + j, np.ones(n, dtype=np.int64))  # tokens: from the device
        tokens = np.zeros((n, k + 1), dtype=np.int64)  # the drafts come from the device
        tokens[:, 0] = last
        rows[b : b + n * (k + 1)] = self.target.fill_mixed(self.verify, [], verify_rows(starts, ctx, tokens))
        self.host_rows.numpy()[:] = rows
        self.rows.copy_(self.host_rows, non_blocking=True)
        if self.graph is not None:
            out = self.target.run_static(lambda: (self.graph.replay(), self.out)[1], 3)
        else:
            out = self.target.run_static(self.forward, 3)
        return out[: b * k].reshape(b, k)[:n], out[b * k :].reshape(b, k + 1)[:n]


class Speculator:
    """The draft model's state during one replay, and the rounds it runs (see the module's docstring)."""

    def __init__(self, spec: SpecRun, target, n: int, seed: int) -> None:
        self.spec, self.target, self.draft = spec, target, spec.draft
        if self.draft.scratch != target.scratch:
            raise ValueError(
                f"the draft's KV pool ({self.draft.scratch} tokens) must match the target's ({target.scratch})"
            )
        # the draft's KV sits at the target's region slots: compactions move both
        target.followers = [self.draft.model]
        self.dlen = np.zeros(n, dtype=np.int64)  # positions with the draft's KV, per request
        alpha = np.asarray(spec.alpha, dtype=float)
        self.alpha = np.broadcast_to(alpha, (n,)) if alpha.ndim == 0 else alpha
        # acceptance draws: their own stream of the run's seed
        self.rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[1])
        self.rounds = self.drafted = self.accepted = 0
        self.draft_s = 0.0  # seconds of the drafting part of rounds (host clock, to the ids' copy back)
        self.graph_rounds = 0  # rounds run as one graph (RoundGraph; their drafting is not in draft_s)

    def prefill(self, batch, prefills: list) -> None:
        """The draft model computes the step's prompt chunks too (its KV for them; no tokens sampled)."""
        if not prefills:
            return
        self.draft.step([(s, p, c, t, False) for s, p, c, t, _ in prefills], None)
        self._prefilled(batch, prefills)

    def _prefilled(self, batch, prefills: list) -> None:
        for (seq, _), (_, p, c, _, _) in zip(batch.prefills, prefills, strict=True):
            self.dlen[seq.rid] = p + c

    def round(self, batch, run, prefills: list, dec, d_rids: np.ndarray, d_pos: np.ndarray):
        """One speculative round for the batch's decoding sequences (and its prompt chunks). Writes the tokens
        each sequence keeps into the run's id stream, sets `batch.spec_accepted`; returns (the ids sampled
        for the prompt chunks that want one, tokens kept per decoding sequence)."""
        k, ids, off = self.spec.k, run.ids, run.off
        starts, ctx, last = dec
        n = len(ctx)
        gap = ctx - self.dlen[d_rids]
        graphs = self.spec.graphs
        sizes = sorted(graphs)
        if not prefills and sizes and n <= sizes[-1] and ((gap == 1) | (gap == 2)).all():
            g = graphs[sizes[bisect.bisect_left(sizes, n)]]
            pair = np.stack([ids[d_pos - 2], ids[d_pos - 1]], axis=1)
            drafts, target = g.run(starts, ctx, pair, last)
            self.graph_rounds += 1
            return self._accept(batch, run, drafts, target, ctx, d_rids, d_pos, np.zeros(0, dtype=np.int64))
        t0 = time.perf_counter()
        # 1. the draft: catch-up (and the prompt chunks) in its first step, then k - 1 decode steps
        drafts = np.empty((n, k), dtype=np.int64)
        chunks = np.flatnonzero(gap > 1)
        singles = np.flatnonzero(gap <= 1)
        pre = [(s, p, c, t, False) for s, p, c, t, _ in prefills]
        for i in chunks:
            a = int(self.dlen[d_rids[i]])
            pre.append((int(starts[i]), a, int(gap[i]), ids[off[d_rids[i]] + a : d_pos[i]], True))
        single = (starts[singles], ctx[singles], last[singles]) if len(singles) else None
        out = self.draft.step(pre, single)
        drafts[chunks, 0] = out[: len(chunks)]
        drafts[singles, 0] = out[len(chunks) :]
        for j in range(1, k):
            drafts[:, j] = self.draft.step([], (starts, ctx + j, drafts[:, j - 1]))
        self._prefilled(batch, prefills)
        self.draft_s += time.perf_counter() - t0
        # 2. the target verifies k + 1 positions per sequence, beside the prompt chunks
        tokens = np.concatenate([last[:, None], drafts], axis=1)
        sampled = self.target.step(list(prefills), verify_rows(starts, ctx, tokens))
        n_first = len(sampled) - n * (k + 1)
        return self._accept(batch, run, drafts, sampled[n_first:].reshape(n, k + 1), ctx, d_rids, d_pos,
                            sampled[:n_first])  # fmt: skip

    def _accept(self, batch, run, drafts, target, ctx, d_rids, d_pos, first_ids):
        """Steps 3 and 4 of a round (the module's docstring); returns (`first_ids`, tokens kept per sequence)."""
        k, ids, n = self.spec.k, run.ids, len(ctx)
        # 3. acceptance: leading drafts accepted (a seeded draw at rate α, or the target's argmax agreeing)
        if self.spec.acceptance == "draw":
            hit = self.rng.random((n, k)) < self.alpha[d_rids][:, None]
        else:
            hit = drafts == target[:, :k]
        acc = np.where(hit.all(axis=1), k, np.argmin(hit, axis=1)).astype(np.int64)
        gen = ctx - run.prompt[d_rids]
        keep = np.minimum(acc + 1, run.output[d_rids] - gen)  # as Scheduler._spec_round caps it
        for i in range(n):
            t = int(keep[i])
            toks = np.concatenate([drafts[i, : min(t, int(acc[i]))], target[i, acc[i] : acc[i] + 1]])[:t]
            ids[d_pos[i] : d_pos[i] + t] = toks
        # 4. roll-back: the draft's KV is valid up to its accepted prefix (the target's: the scheduler's ctx)
        self.dlen[d_rids] = np.minimum(ctx + acc, ctx + k - 1)
        batch.spec_accepted = acc
        self.rounds += n
        self.drafted += n * k
        self.accepted += int(acc.sum())
        return first_ids, keep

    def stats(self) -> dict:
        """Rounds (one per sequence per round), drafts, accepted drafts, and the rounds' drafting seconds."""
        return {"rounds": self.rounds, "drafted": self.drafted, "accepted": self.accepted,
                "acceptance": self.accepted / self.drafted if self.drafted else float("nan"),
                "draft_s": self.draft_s, "graph_rounds": self.graph_rounds}  # fmt: skip
