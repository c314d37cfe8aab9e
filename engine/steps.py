"""Whole model steps (prefill, decode, mixed) on the GPU, timed as an engine runs them.

A step is a list of sequences, each with q new tokens after p cached ones (decode: q = 1).
Steps of up to `graph_max_tokens` tokens run as CUDA graphs captured per padded size, as vLLM
does (its capture sizes: 1, 2, 4, then multiples of 8): the token count, the sequence count and
the longest context are rounded up to a bucket; padding tokens form dummy sequences in slots
after the real ones, so no real sequence reads more keys than its own (in a step with decodes,
one token per dummy, so that the dummies join the decode group). Larger steps run eagerly,
where the host launch time is small next to the GPU work.
"""

from __future__ import annotations

import bisect
import time

import numpy as np
import torch

from core.cost_model import BatchShape
from core.graphs import capture_sizes  # noqa: F401  (engine.steps.capture_sizes: the sizes live in core)
from engine.attention import (
    StepLayout,
    balanced_units,
    device_sms,
    make_layout,
    plan_layout,
    prefill_count,
    unit_capacity,
    unit_heads,
    unit_target,
    unit_waves,
)
from engine.fused import tune_gemv
from engine.model import Transformer
from engine.timing import measure


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def extrapolate_layers(t_a: float, layers_a: int, t_b: float, layers_b: int, layers_full: int) -> float:
    """Step time of the full model from steps of two partial builds (per-layer slope plus the fixed part)."""
    per_layer = (t_b - t_a) / (layers_b - layers_a)
    return t_a + (layers_full - layers_a) * per_layer


class StepRunner:
    """Runs and times model steps with a token-pool KV cache of `kv_tokens` slots per layer.

    With `serving` (the default) the timed steps (`prefill`, `decode`, `mixed`) run through the serving
    loop's own `engine.serving.Executor.step`, the function `serve` calls for every batch: its decode
    graphs, its mixed-step graphs (prompt chunks up to its token cap), its eager path beyond, and each
    step's time is the executor's GPU span (from its first device work to its last launch: input upload,
    graph replay or eager launches, sampling), the span the serving loop's trace reports as "GPU". So the
    steps calibration times are the steps the serving loop runs (on the CPU: wall seconds of the same call).
    `serving=False` keeps this runner's own graphs (per padded token count, sequence count and context).
    `logits` always runs this runner's path (it returns the logits, which the executor samples away).
    """

    def __init__(
        self,
        model: Transformer,
        max_batch: int,
        max_context: int,
        device: str = "cuda",
        cuda_graphs: bool = True,
        kv_tokens: int | None = None,
        graph_max_tokens: int = 512,
        gemv: bool | None = None,
        seed: int = 0,
        serving: bool = True,
    ) -> None:
        self.model, self.device = model, torch.device(device)
        self.max_batch, self.max_context = max_batch, max_context
        self.graph_max_tokens = graph_max_tokens
        self.use_graphs = cuda_graphs and self.device.type == "cuda"
        self.sizes = capture_sizes(graph_max_tokens)
        self.kv_tokens = kv_tokens or max_batch * max_context + graph_max_tokens
        # the batch-1 GEMV kernel streams weights faster than cuBLAS on Hopper (benchmarks/engine_bars.py)
        model.set_gemv(self.device.type == "cuda" if gemv is None else gemv)
        # each shape's GEMV tile, as the executor's warm-up picks it (CUDA only)
        tune_gemv(model.gemv_weights())
        # the pool's tail, past kv_tokens, is scratch for graph padding when a caller pins its regions
        self.scratch = self.kv_tokens
        if not serving:  # else the executor allocates the pool (with room for both runners' padding)
            model.allocate_kv(self.kv_tokens + graph_max_tokens, seed=seed)
        self.unit_target = unit_target(device_sms(self.device), unit_heads(model.spec))
        self.unit_waves = unit_waves(model.spec)
        self.vocab = model.spec.vocab_size
        self.gen = torch.Generator(device="cpu").manual_seed(seed)
        self.graphs: dict[tuple[int, int, int, int], dict] = {}
        self.pool = torch.cuda.graph_pool_handle() if self.use_graphs else None
        self.executor = None
        if serving:  # the serving loop's executor over the same pool (it re-allocates it, with its scratch)
            from engine.serving import Executor  # engine.serving imports this module

            self.executor = Executor(model, self.kv_tokens, max_batch, device=str(self.device),
                                     cuda_graphs=cuda_graphs, seed=seed, max_context=max_context,
                                     gemv=self.device.type == "cuda" if gemv is None else gemv)  # fmt: skip
            if model.kv[0][0].shape[0] < self.kv_tokens + graph_max_tokens:  # this runner's padding too
                model.allocate_kv(self.kv_tokens + graph_max_tokens, seed=seed)

    # ------------------------------------------------------------------ public steps
    # Prefill and mixed steps: medians of 10 after 3 warm-ups (5 after 2 left a 700-token prefill
    # between 19 and 27 ms from one run to the next on an H100).
    def prefill(
        self,
        prompt_lens: list[int],
        prior_lens: list[int] | None = None,
        return_shape: bool = False,
        warmup: int = 3,
        repeat: int = 10,
    ):
        """Seconds of one step prefilling chunks of `prompt_lens` tokens after `prior_lens` cached ones."""
        prior = list(prior_lens) if prior_lens is not None else [0] * len(prompt_lens)
        return self._timed(list(prompt_lens), prior, 0, return_shape, warmup, repeat)

    def decode(self, context_lens: list[int], return_shape: bool = False, warmup: int = 3, repeat: int = 20):
        """Seconds of one decode step; sequence i's new token attends to context_lens[i] keys (itself included)."""
        ctx = list(context_lens)
        return self._timed([1] * len(ctx), [c - 1 for c in ctx], len(ctx), return_shape, warmup, repeat)

    def mixed(
        self,
        prefill_chunks: list[tuple[int, int]],
        decode_context_lens: list[int],
        return_shape: bool = False,
        warmup: int = 3,
        repeat: int = 10,
    ):
        """Seconds of one step with prefill chunks (chunk, prior) and decodes (context incl. the new token)."""
        q = [c for c, _ in prefill_chunks] + [1] * len(decode_context_lens)
        p = [pr for _, pr in prefill_chunks] + [c - 1 for c in decode_context_lens]
        return self._timed(q, p, len(decode_context_lens), return_shape, warmup, repeat)

    def logits(
        self,
        q_lens: list[int],
        prior_lens: list[int],
        tokens: torch.Tensor | None = None,
        starts: list[int] | None = None,
    ) -> torch.Tensor:
        """Run one step once and return the logits of each sequence's last new token [S, vocab].

        `starts` pins each sequence's first KV slot, so that consecutive steps of a sequence share its cache.
        """
        fn, out = self._prepare(q_lens, prior_lens, tokens, starts)
        fn()
        return out()

    def batch_shape(
        self, q_lens: list[int], prior_lens: list[int], n_decode: int, fresh: tuple[int, int] | None = None
    ) -> BatchShape:
        """The cost model's summary of a step whose last `n_decode` sequences are decodes (`fresh`: CostModel.fresh)."""
        n_pre = len(q_lens) - n_decode
        return BatchShape.of(
            list(zip(q_lens[:n_pre], prior_lens[:n_pre], strict=True)),
            [p + 1 for p in prior_lens[n_pre:]],
            self.model.spec.sliding_window,
            fresh,
            logits_tokens=len(q_lens),
        )

    def reset_graphs(self) -> None:
        """Drop captured graphs (after changing the model, e.g. `set_gemv`), with a new memory pool."""
        self.graphs.clear()
        if self.use_graphs:
            torch.cuda.synchronize(self.device)
            self.pool = torch.cuda.graph_pool_handle()
        if self.executor is not None:  # the serving loop's graphs too
            self.executor.reset_graphs()

    # ------------------------------------------------------------------ machinery
    def _timed(self, q_lens, prior_lens, n_decode, return_shape, warmup, repeat):
        if self.executor is not None:
            seconds = self._served(q_lens, prior_lens, n_decode, warmup, repeat)
        else:
            fn, _ = self._prepare(q_lens, prior_lens)
            seconds = measure(fn, self.device, warmup=warmup, repeat=repeat)
        return (seconds, self.batch_shape(q_lens, prior_lens, n_decode)) if return_shape else seconds

    def _served(self, q_lens, prior_lens, n_decode: int, warmup: int, repeat: int) -> float:
        """Median seconds of the step through `Executor.step` (its GPU span on CUDA, wall time on the CPU),
        every sequence in its own region from the pool's start, the last `n_decode` sequences decoding."""
        self._check(q_lens, prior_lens, 0)
        q = np.asarray(q_lens, dtype=np.int64)
        prior = np.asarray(prior_lens, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(q + prior)[:-1]]).astype(np.int64)
        toks = torch.randint(1, self.vocab, (int(q.sum()),), generator=self.gen).numpy()
        n_pre = len(q) - n_decode
        rows = np.concatenate([[0], np.cumsum(q)])
        prefills = [(int(starts[i]), int(prior[i]), int(q[i]), toks[rows[i] : rows[i + 1]], True)
                    for i in range(n_pre)]  # fmt: skip
        decodes = (starts[n_pre:], prior[n_pre:] + 1, toks[rows[n_pre] :]) if n_decode else None
        ex = self.executor
        for _ in range(warmup):
            ex.step(prefills, decodes)
        ex.time_gpu = ex.cuda
        times = []
        try:
            for _ in range(repeat):
                t0 = time.perf_counter()
                ex.step(prefills, decodes)
                times.append(ex.last_gpu_s if ex.cuda else time.perf_counter() - t0)
        finally:
            ex.time_gpu = False
        return float(np.median(times))

    def _check(self, q_lens, prior_lens, extra_tokens: int) -> None:
        if not q_lens or min(q_lens) < 1 or min(prior_lens) < 0:
            raise ValueError("a step needs at least one sequence, each with >= 1 new token and >= 0 cached")
        longest = max(p + q for p, q in zip(prior_lens, q_lens, strict=True))
        if longest > self.max_context:
            raise ValueError(f"a sequence of {longest} tokens exceeds max_context={self.max_context}")
        need = sum(p + q for p, q in zip(prior_lens, q_lens, strict=True)) + extra_tokens
        if need > self.kv_tokens:
            raise ValueError(
                f"the step needs {need} KV slots but the pool has {self.kv_tokens}; "
                "pass a larger kv_tokens or a smaller batch"
            )

    def _tokens(self, n: int) -> torch.Tensor:
        return torch.randint(1, self.vocab, (n,), generator=self.gen).to(self.device)

    def _prepare(self, q_lens, prior_lens, tokens=None, starts=None):
        """(callable running the step, callable returning the real sequences' logits)."""
        t = sum(q_lens)
        if self.use_graphs and t <= self.graph_max_tokens:
            return self._prepare_graph(q_lens, prior_lens, tokens, starts)
        self._check(q_lens, prior_lens, 0)
        lay = make_layout(
            q_lens,
            prior_lens,
            self.device,
            starts=starts,
            kv_heads=unit_heads(self.model.spec),
            waves=self.unit_waves,
        )
        toks = tokens.to(self.device) if tokens is not None else self._tokens(t)
        last = (lay.cu_q[1:] - 1).to(torch.int64)
        box: dict[str, torch.Tensor] = {}

        def run():
            box["out"] = self.model(toks, lay, last)

        return run, lambda: box["out"]

    def _prepare_graph(self, q_lens, prior_lens, tokens, starts=None):
        n, t = len(q_lens), sum(q_lens)
        tb = self.sizes[bisect.bisect_left(self.sizes, t)]
        pad = tb - t
        n_pre = prefill_count(list(q_lens))
        if n_pre < n:  # decodes present: one token per dummy, so the dummies are decodes too
            sb = self.sizes[bisect.bisect_left(self.sizes, n + pad)]
            dummies = sb - n
            dq = [1] * pad + [0] * (dummies - pad)
        else:  # prefill only: padding tokens, one per dummy sequence, the rest on the last one
            sb = self.sizes[bisect.bisect_left(self.sizes, n + (1 if pad else 0))]
            dummies = sb - n
            dq = [0] * dummies
            for j in range(dummies):
                dq[j] = min(1, pad - sum(dq)) if j < dummies - 1 else pad - sum(dq)
        self._check(q_lens, prior_lens, pad)
        q_all = list(q_lens) + dq
        n_group = sb if n_pre == n else n_pre  # sequences on the prefill path
        decode_only = n_pre == 0 and max(q_all) <= 1
        max_q = 1 if decode_only else tb
        # the decode kernel needs no bound on the context; the prefill kernels get a power-of-two one
        max_k = (
            0
            if decode_only
            else max(
                tb,
                min(
                    _pow2(max(p + q for p, q in zip(prior_lens, q_lens, strict=True))),
                    _pow2(self.max_context),
                ),
            )
        )
        # one unit per decode when they fill the GPU evenly (balanced_units over the group's contexts, dummies too)
        group_k = [p + q for p, q in zip(list(prior_lens) + [0] * dummies, q_all, strict=True)][n_group:]
        whole = balanced_units(group_k, self.unit_target)
        cap = unit_capacity(self.unit_target, sb - n_group, whole, self.unit_waves)
        pinned = None
        if starts is not None:  # padding goes to scratch, never over another sequence's KV or off the pool
            pinned, off = list(starts), self.scratch
            for q in dq:
                pinned.append(off)
                off += q
        plan = plan_layout(
            q_all,
            list(prior_lens) + [0] * dummies,
            starts=pinned,
            n_prefill=n_group,
            target=self.unit_target,
            cap=cap,
            whole=whole,
            waves=self.unit_waves,
        )
        key = (tb, sb, max_q, max_k, n_group, whole)
        g = self.graphs.get(key)
        if g is None:
            g = self._capture(key, plan, tokens, n)
        self._fill(g, plan, tokens, tb)
        rows = g["out"]
        return g["graph"].replay, lambda: rows[:n]

    def _fill(self, g, plan, tokens, tb):
        s = g["static"]
        toks = tokens.to(self.device) if tokens is not None else self._tokens(len(plan["positions"]))
        s["tokens"][: len(toks)].copy_(toks)
        s["positions"].copy_(torch.tensor(plan["positions"]))
        s["slots"].copy_(torch.tensor(plan["slots"]))
        s["cu_q"].copy_(torch.tensor(plan["cu_q"]))
        s["cu_k"].copy_(torch.tensor(plan["cu_k"]))
        s["seqused_k"].copy_(torch.tensor(plan["k_lens"]))
        last = [max(0, c - 1) for c in plan["cu_q"][1:]]
        s["last"].copy_(torch.tensor(last))
        for k in ("seq", "lo", "hi", "seq_units"):
            s["u_" + k].copy_(torch.tensor(plan["units"][k], dtype=torch.int32))

    def _capture(self, key, plan, tokens, n_real: int) -> dict:
        tb, sb, max_q, max_k, n_group = key
        dev = self.device
        static = {
            "tokens": self._tokens(tb),
            "positions": torch.zeros(tb, dtype=torch.int64, device=dev),
            "slots": torch.zeros(tb, dtype=torch.int64, device=dev),
            "cu_q": torch.zeros(sb + 1, dtype=torch.int32, device=dev),
            "cu_k": torch.zeros(sb + 1, dtype=torch.int32, device=dev),
            "seqused_k": torch.zeros(sb, dtype=torch.int32, device=dev),
            "last": torch.zeros(sb, dtype=torch.int64, device=dev),
        }
        for k in ("seq", "lo", "hi", "seq_units"):
            static["u_" + k] = torch.zeros(len(plan["units"][k]), dtype=torch.int32, device=dev)
        g = {"static": static}
        self._fill(g, plan, tokens, tb)
        units = {k: static["u_" + k] for k in ("seq", "lo", "hi", "seq_units")}
        lay = StepLayout(
            plan["q_lens"],
            plan["k_lens"],
            plan["k_starts"],
            static["cu_q"],
            static["cu_k"],
            static["seqused_k"],
            static["positions"],
            static["slots"],
            max_q,
            max(max_k, 1),
            n_group,
            n_real,
            units,
            plan["units"]["whole"],
        )
        stream = torch.cuda.Stream(dev)
        stream.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(stream):  # warm-up compiles the Triton kernels and sets up cuBLAS
            for _ in range(2):
                self.model(static["tokens"], lay, static["last"])
        torch.cuda.current_stream(dev).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self.model(static["tokens"], lay, static["last"])
        g.update(graph=graph, out=out)
        self.graphs[key] = g
        return g
