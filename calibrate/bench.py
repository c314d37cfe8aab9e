"""Time one sweep point on the device through `engine/` (torch is imported here, lazily by callers)."""

from __future__ import annotations

import sys

import torch

from calibrate.plan import Limits, Point
from core.model_spec import ModelSpec
from engine import kernels
from engine.timing import copies_for_cache, measure_graph, random_like_nonzero, rotating

# Below this many rows a GEMM is timed replayed from a CUDA graph, as it runs inside a captured
# decode step (no host launch gap); larger ones are long enough for per-call events.
GRAPH_GEMM_MAX_M = 512
# MoE layers a replay of a `moe` point, each on its own inputs (the graph's launch spread over them, as a step's
# layers follow each other; one a replay, with the router's torch ops, read 19 µs above the served layer at one
# token on an H200: session 20)
MOE_CALLS = 4


class Bench:
    """Dispatches sweep points to the engine's timers; builds the whole model only when a step is asked for."""

    def __init__(self, spec: ModelSpec, device: str, limits: Limits, quick: bool = False) -> None:
        self.spec, self.device, self.limits = spec, device, limits
        self.cpu = torch.device(device).type == "cpu"
        self.repeat = 3 if self.cpu else (10 if quick else 20)
        self.warmup = 1 if self.cpu else 3
        self._runner = None
        self._quick = quick
        self._served: dict | None = None

    # ------------------------------------------------------------ microbenchmarks
    def measure(self, p: Point) -> float:
        q = p.params
        if p.kind in ("gemm", "ceiling_gemm", "gemv"):
            return self._gemm(q["m"], q["k"], q["n"], q.get("dtype", "bf16"))
        if p.kind == "attention_prefill":
            return kernels.time_attention_prefill(
                q["chunk"],
                q["prior"],
                q["num_heads"],
                q["num_kv_heads"],
                q["head_dim"],
                device=self.device,
                warmup=self.warmup,
                repeat=self.repeat,
            )
        if p.kind == "attention_decode":
            lens = q["context_lens"]
            return kernels.time_attention_decode(
                len(lens),
                list(lens),
                q["num_heads"],
                q["num_kv_heads"],
                q["head_dim"],
                device=self.device,
                warmup=self.warmup,
                repeat=self.repeat,
            )
        if p.kind == "elementwise":
            s, _ = kernels.time_elementwise(
                q["tokens"],
                q["hidden"],
                device=self.device,
                intermediate=q.get("intermediate"),
                head_dim=self.spec.head_dim,
                warmup=self.warmup,
                repeat=self.repeat,
            )
            return s
        if p.kind == "moe":
            return self._moe(q)
        if p.kind in ("mla_decode", "mla_prefill"):
            return self._mla(q, p.kind == "mla_decode")
        if p.kind == "copy":
            s, _ = kernels.time_copy(q["nbytes"], device=self.device, warmup=self.warmup, repeat=self.repeat)
            return s
        if p.kind == "allreduce":
            s = kernels.time_allreduce(q["nbytes"], q.get("world"))
            if s is None:
                raise RuntimeError("all-reduce needs two or more GPUs")
            return s
        if p.kind.startswith("step_"):
            return self._step(p)
        if p.kind == "serving":
            return self._serving()[q["quantity"]]
        raise ValueError(f"unknown point kind {p.kind!r}")

    def _gemm(self, m: int, k: int, n: int, dtype: str) -> float:
        if self.cpu or dtype != "bf16" or m > GRAPH_GEMM_MAX_M:
            return kernels.time_gemm(
                m, k, n, dtype, device=self.device, warmup=self.warmup, repeat=self.repeat
            )
        dev = torch.device(self.device)
        copies = max(4, copies_for_cache(k * n * 2 + m * k * 2, dev))
        bufs = [
            (
                random_like_nonzero((m, k), torch.bfloat16, dev),
                random_like_nonzero((n, k), torch.bfloat16, dev, scale=k**-0.5),
            )
            for _ in range(copies)
        ]
        # the engine's Dense layer: a Triton GEMV streams the weight for one row, cuBLAS otherwise
        if m == 1:  # with the tile the executor's warm-up picks for this shape (engine.fused.tune_gemv)
            from engine.fused import gemv, tune_gemv

            tune_gemv([bufs[0][1]])
            fn = rotating(bufs, gemv)
        else:
            fn = rotating(bufs, torch.nn.functional.linear)
        return measure_graph(fn, dev, calls=copies, repeat=self.repeat, warmup=self.warmup)

    def _moe(self, q: dict) -> float:
        """One MoE layer's routed experts as the engine serves them: `moe_times`' faster backend (what the engine's
        warm-up tuning, engine.moe.tune_moe, picks per rows bucket)."""
        return min(self.moe_times(q).values())

    def moe_times(self, q: dict) -> dict[str, float]:
        """Seconds of one MoE layer's routed experts as the engine serves them (engine.model.MoE without its router
        GEMM), on each expert-GEMM backend that runs here (engine.moe.forcing_backends): its routing
        (engine.moe.select_experts with the layer's default, uniform: one kernel), sort by expert, two grouped
        GEMMs, combine; replayed from a CUDA graph on the GPU, as in a captured step, MOE_CALLS layers a replay on
        as many inputs (each routes to other experts, so no call finds the one before's weights in L2). Weights
        are built once per shape (bf16; fp32 on the CPU)."""
        from engine import moe
        from engine.model import MoE
        from engine.moe import routed_experts, select_experts

        e, k, h, i, t = q["experts"], q["top_k"], q["hidden"], q["inter"], q["tokens"]
        dev = torch.device(self.device)
        dtype = torch.float32 if self.cpu else torch.bfloat16
        key = (e, h, i)
        if getattr(self, "_moe_weights", (None,))[0] != key:
            self._moe_weights = None  # the previous shape's weights go first
            g = torch.Generator(device=dev).manual_seed(0)
            w_gu = (torch.randn(e, 2 * i, h, device=dev, generator=g) * h**-0.5).to(dtype)
            w_d = (torch.randn(e, h, i, device=dev, generator=g) * i**-0.5).to(dtype)
            self._moe_weights = (key, w_gu, w_d)
        _, w_gu, w_d = self._moe_weights
        g = torch.Generator(device=dev).manual_seed(t)
        calls = 1 if self.cpu else MOE_CALLS
        inputs = [
            (
                torch.randn(t, h, device=dev, generator=g).to(dtype),
                torch.randn(t, e, device=dev, generator=g).to(dtype),
            )
            for _ in range(calls)
        ]
        routing = MoE.routing_default

        def layer(x, logits):
            w, ids = select_experts(logits, k, True, routing)
            return routed_experts(x, w_gu, w_d, w, ids)

        fn = rotating(inputs, layer)
        return {
            name: measure_graph(fn, dev, calls=calls, repeat=self.repeat, warmup=self.warmup)
            for name in moe.forcing_backends(inputs[0][0], w_gu, t * k)
        }

    def _mla(self, q: dict, decode: bool) -> float:
        """One layer's MLA attention in the absorbed form as the engine runs it (engine/mla.py): decode (the
        work-unit kernel and the combine) or one prompt chunk after `prior` cached tokens (the prompt kernel),
        over random latents in a token pool, replayed from a CUDA graph (the kernels read device metadata
        only). On the CPU the engine's reference path: SDPA over the latents per sequence."""
        from engine import mla
        from engine.attention import MLA_UNIT_HEADS, MLA_UNIT_WAVES, make_layout

        dev = torch.device(self.device)
        dtype = torch.float32 if self.cpu else torch.bfloat16
        h, r, rope = q["heads"], q["rank"], q["rope"]
        if decode:
            q_lens, prior = [1] * len(q["context_lens"]), [c - 1 for c in q["context_lens"]]
        else:
            q_lens, prior = [q["chunk"]], [q["prior"]]
        lay = make_layout(
            q_lens, prior, dev, kv_heads=MLA_UNIT_HEADS, waves=MLA_UNIT_WAVES
        )  # as MLA steps cut
        g = torch.Generator(device=dev).manual_seed(len(q_lens) * 7919 + sum(prior))
        slots = int(lay.cu_k[-1]) + 8
        # as time_attention_decode does: rotate latent pools whose total overflows the L2 1.5 times, since in a
        # step the other layers' weights evict a layer's latents (back-to-back calls on one pool read the L2)
        copies = copies_for_cache(slots * (r + rope) * 2, dev, factor=1.5)
        pools = [torch.randn(slots, 1, r + rope, device=dev, generator=g).to(dtype) for _ in range(copies)]
        pool = pools[0]
        qa = torch.randn(sum(q_lens), h, r + rope, device=dev, generator=g).to(dtype)
        scale = (q["q_head_dim"]) ** -0.5
        out = qa.new_zeros((sum(q_lens), h, r))
        if not self.cpu:

            def one(pool):
                if decode:
                    return mla.mla_decode(qa, pool, lay, r, scale, out=out)
                return mla.mla_prefill(qa, pool, lay, r, scale, out)

            fn = rotating([(p,) for p in pools], one)
            return measure_graph(fn, dev, calls=max(copies, 4), repeat=self.repeat, warmup=self.warmup)
        else:
            starts, lens = lay.k_starts, lay.k_lens

            def fn():
                row = 0
                for s, ql in enumerate(q_lens):
                    c = pool[starts[s] : starts[s] + lens[s], 0]
                    out[row : row + ql] = mla._sdpa(qa[row : row + ql], c[:, None], c[:, None, :r], scale)
                    row += ql
                return out

        return measure_graph(fn, dev, calls=1, repeat=self.repeat, warmup=self.warmup)

    # ------------------------------------------------------------ whole steps
    def _runner_for_steps(self):
        if self._runner is None:
            from engine.model import build_model
            from engine.steps import StepRunner

            model = build_model(self.spec, "bf16", self.device)
            self._runner = StepRunner(
                model,
                max_batch=self.limits.max_batch,
                max_context=self.limits.max_context,
                device=self.device,
                cuda_graphs=not self.cpu,
                kv_tokens=self.limits.max_kv_tokens,
            )
        return self._runner

    def _step(self, p: Point) -> float:
        r = self._runner_for_steps()
        q = p.params
        if p.kind == "step_prefill":
            return r.prefill(list(q["prompt_lens"]), list(q["prior_lens"]))
        if p.kind == "step_decode":
            return r.decode(list(q["context_lens"]))
        if p.kind == "step_mixed":
            return r.mixed([tuple(c) for c in q["chunks"]], list(q["decode_context_lens"]))
        raise ValueError(f"unknown step kind {p.kind!r}")

    def _serving(self) -> dict:
        """One run of the serving loop (calibrate/serving.py) on the steps' model, after the step runner is gone."""
        if self._served is None:
            from calibrate.serving import measure_serving

            model = None
            if (
                self._runner is not None
            ):  # the steps come first in the plan: reuse their model, free their pool
                model, self._runner = self._runner.model, None
            self._served = measure_serving(
                self.spec,
                self.device,
                self._quick,
                model=model,
                log=lambda m: print(m, file=sys.stderr, flush=True),
            )
        return self._served

    def recover(self) -> None:
        """After an out-of-memory point: drop cached blocks so the next point starts clean."""
        release_device_memory()


def release_device_memory() -> None:
    """Collect what reference cycles still hold (a dropped model's graphs and buffers) and hand torch's cached blocks
    back to the GPU, so what is measured or sized next sees the memory as free."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
