"""The sweep plan: which microbenchmarks and whole steps to time, and which are held out.

A point's role (fit or held out) is a property of the point, fixed by its place in the full grid,
so the quick plan is a subset of the full one with the same roles. The CPU plan is a tiny grid for
tests and for trying the tool without a GPU.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from core.model_spec import ModelSpec
from core.provenance import engine_code, model_features

Mode = Literal["quick", "full", "cpu"]

# Token counts for GEMMs and element-wise kernels, 1..16k, roughly ×1.5 apart. Every 4th from
# index 2 is held out of the fit (interior points, so held-out error measures interpolation).
TOKENS_FULL = [
    1,
    2,
    4,
    8,
    16,
    32,
    48,
    64,
    96,
    128,
    192,
    256,
    384,
    512,
    768,
    1024,
    1536,
    2048,
    3072,
    4096,
    6144,
    8192,
    12288,
    16384,
]
TOKENS_CPU = [1, 2, 4, 8, 16, 32, 64, 128]
# Token counts off the powers of two, as real batches have them: cuBLAS tiles and waves make
# these slower than their round neighbours (seen on an H100: a 700-token prefill step took 1.7x
# a 512-token one). Full plan only, all fitted.
TOKENS_ODD = [3, 24, 80, 160, 300, 700, 1200, 2500, 5000, 10000]

PREFILL_CHUNKS = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
PREFILL_PRIORS = [0, 1024, 4096, 16384]
DECODE_BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
DECODE_CONTEXTS = [128, 512, 2048, 8192, 32768]

# every kind of point a plan can hold (python -m calibrate --redo takes these)
KINDS = frozenset({"copy", "ceiling_gemm", "gemm", "gemv", "attention_prefill", "attention_decode", "elementwise", "allreduce",
                   "moe", "mla_decode", "mla_prefill", "step_prefill", "step_decode", "step_mixed",
                   "serving"})  # fmt: skip
# the engine's feature files (core.provenance.FEATURE_FILES) each kind's points run beyond the sweep model's own:
# MoE layers (engine/moe.py), MLA attention (engine/mla.py), and the serving run's eager MLA steps
# (calibrate.serving.measure_mla_eager: DeepSeek-V2-Lite, MLA with MoE layers). Whole steps and the serving run also
# run the sweep model's own features; every other kind times the engine's kernels alone.
KIND_FEATURES = {"moe": ("is_moe",), "mla_decode": ("is_mla",), "mla_prefill": ("is_mla",),
                 "serving": ("is_mla", "is_moe")}  # fmt: skip
MODEL_KINDS = frozenset({"step_prefill", "step_decode", "step_mixed", "serving"})


def kind_engine_code(kind: str, spec: ModelSpec, root: Path | None = None) -> str:
    """The engine code (core.provenance.engine_code) a point of `kind` runs with `spec` as the sweep model: the
    feature files of KIND_FEATURES, and the model's own for whole steps and the serving run."""
    feats = (model_features(spec) if kind in MODEL_KINDS else {}) | dict.fromkeys(
        KIND_FEATURES.get(kind, ()), True
    )
    return engine_code(root, feats)


# (K, N) of the `gemv` points: 32 KiB to 16 MiB of bf16 weights, none of a catalogue model's own shapes
GEMV_SHAPES = ((4096, 16), (1024, 1024), (2048, 1024), (4096, 1024), (2048, 4096), (8192, 1024))
FRESH_CHUNKS = [
    2176,
    2600,
    3000,
    5000,
    6144,
    7000,
    10000,
    12000,
]  # with prior 0 (PREFILL_CHUNKS has 4k, 8k, 16k)
STEP_DECODE_BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
STEP_DECODE_CONTEXTS = [256, 1024, 4096]
STEP_PREFILL = [
    [128],
    [512],
    [1024],
    [2048],
    [4096],
    [8192],
    [16384],
    [256] * 4,
    [512] * 8,
    [2048] * 2,
    [1024] * 4,
    [384],
    [1280],
    [2600],
    [5600],
    [10000],
    [320] * 5,
]
STEP_CHUNKED = [(2048, 2048), (1024, 8192), (4096, 4096)]  # (chunk, prior) prefill after a cached prefix
STEP_MIXED = [(256, 8), (1024, 8), (2048, 8), (256, 32), (1024, 32), (2048, 32), (512, 128), (2048, 128)]
MIXED_DECODE_CONTEXT = 1024


@dataclass(slots=True)
class Point:
    """One thing to time: a kind (`gemm`, `attention_decode`, `step_mixed`, ...) and its parameters."""

    kind: str
    params: dict
    holdout: bool = False
    key: str = field(init=False)

    def __post_init__(self) -> None:
        self.key = point_key(self.kind, self.params)


def point_key(kind: str, params: dict) -> str:
    return kind + ":" + json.dumps(params, sort_keys=True, separators=(",", ":"))


def mixed_lengths(n: int, mean: int, seed: int, spread: float = 0.8) -> list[int]:
    """n context lengths, lognormal around `mean` (deterministic for the seed), at least 16."""
    rng = np.random.default_rng(seed)
    x = rng.lognormal(0.0, spread, n)
    x = x / x.mean() * mean
    return [int(max(16, round(v))) for v in x]


@dataclass(frozen=True)
class Limits:
    """What the device can hold: KV tokens the step runner may keep, the largest single batch."""

    max_kv_tokens: int = 400_000
    max_batch: int = 256
    max_context: int = 32_768


def _grid_points(values: list[int], quick: bool) -> list[tuple[int, bool]]:
    """(value, holdout) pairs; quick keeps three values in four, roles unchanged."""
    out = []
    for i, v in enumerate(values):
        if quick and i % 4 == 3:
            continue
        out.append((v, i % 4 == 2))
    return out


def microbench_plan(model: ModelSpec, mode: Mode, gemm_dtypes: list[str], n_gpus: int = 1) -> list[Point]:
    quick = mode == "quick"
    cpu = mode == "cpu"
    pts: list[Point] = []

    # ceilings first: the fit reports efficiencies against them and the CPU base profile is built from them
    big = 512 if cpu else 8192
    pts.append(Point("copy", {"nbytes": (16 if cpu else 2048) * 2**20}))
    for d in gemm_dtypes:
        pts.append(Point("ceiling_gemm", {"m": big, "k": big, "n": big, "dtype": d}))

    tokens = _grid_points(TOKENS_CPU if cpu else TOKENS_FULL, quick)
    if mode == "full":
        tokens += [(t, False) for t in TOKENS_ODD]
    shapes = {(g.k, g.n) for g in model.dense_gemms} | {(model.lm_head.k, model.lm_head.n)}
    for d in gemm_dtypes:
        for k, n in sorted(shapes):
            if d != "bf16" and (k, n) == (model.lm_head.k, model.lm_head.n):
                continue  # the LM head stays in 16-bit
            for m, hold in tokens:
                if d != "bf16" and hold and quick:
                    continue
                pts.append(Point("gemm", {"m": m, "k": k, "n": n, "dtype": d}, hold))
    # one-row bf16 GEMMs of weights smaller than the sweep model's: the GEMV curve's launch-bound end (a router's
    # few rows, MLA's and small models' projections; calibrate.fit.fit_gemv), one in three held out
    if mode == "full" and "bf16" in gemm_dtypes:
        for i, (k, n) in enumerate(GEMV_SHAPES):
            pts.append(Point("gemv", {"m": 1, "k": k, "n": n, "dtype": "bf16"}, i % 3 == 2))

    heads = {"num_heads": model.num_heads, "num_kv_heads": model.num_kv_heads, "head_dim": model.head_dim}
    chunks = [c for c in PREFILL_CHUNKS if c <= 64] if cpu else PREFILL_CHUNKS
    priors = [0, 64] if cpu else PREFILL_PRIORS
    for ci, c in enumerate(chunks):
        for pi, p in enumerate(priors):
            if c + p > 2 * max(chunks) or (quick and (ci % 2 or pi % 2)):
                continue
            pts.append(Point("attention_prefill", {"chunk": c, "prior": p, **heads}, (ci + pi) % 3 == 2))
    # whole fresh prompts above the engine's fresh-prompt threshold (their own kernel and group), lengths
    # off the 128-token bucket among them so that the padding is measured too
    for i, c in enumerate([] if cpu else FRESH_CHUNKS):
        if not (quick and i % 2):
            pts.append(Point("attention_prefill", {"chunk": c, "prior": 0, **heads}, i % 3 == 1))

    pts += attention_variant_points(model, mode)

    batches = [1, 2, 4, 8] if cpu else DECODE_BATCHES
    contexts = [16, 64, 256] if cpu else DECODE_CONTEXTS
    max_tokens = 4096 if cpu else 2**20
    for bi, b in enumerate(batches):
        for ci, c in enumerate(contexts):
            if b * c > max_tokens or (quick and (bi % 2 or ci % 2)):
                continue
            hold = (bi + ci) % 4 == 3
            pts.append(Point("attention_decode", {"context_lens": [c] * b, **heads}, hold))
            if b >= 4 and ci % 2 == 0:  # ragged batch: same mean context, lognormal spread
                lens = mixed_lengths(b, c, seed=1000 * b + c)
                pts.append(Point("attention_decode", {"context_lens": lens, **heads}, not hold))

    for t, hold in tokens:
        pts.append(
            Point(
                "elementwise",
                {"tokens": t, "hidden": model.hidden_size, "intermediate": model.intermediate_size},
                hold,
            )
        )

    pts += moe_points(mode)
    pts += mla_points(mode)

    if n_gpus > 1:
        for mib in [1, 16, 256] if quick else [0.0625, 1, 4, 16, 64, 256]:
            pts.append(Point("allreduce", {"nbytes": int(mib * 2**20), "world": n_gpus}))
    return pts


# The MoE group's shapes, whatever model is calibrated: one layer's routed experts (routing, the sort by expert,
# both grouped GEMMs, the combine: engine.moe) of Mixtral-8x7B and DeepSeek-V2-Lite, (experts, top-k, hidden,
# expert intermediate); --quick keeps Mixtral's. Token counts from a decode step's to a long prefill's.
MOE_SHAPES = [(8, 2, 4096, 14336), (64, 6, 2048, 1408)]
MOE_SHAPES_CPU = [(4, 2, 64, 96)]
MOE_TOKENS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
MOE_TOKENS_CPU = [1, 4, 16, 64, 256]

# MLA attention in the absorbed form (engine/mla.py's Triton decode and prompt kernels) at DeepSeek-V2-Lite's
# shape, whatever model the sweep calibrates: (heads, kv_lora_rank, rope dims, q head dim, v head dim); decode
# points (batch, context) and prompt points (chunk, prior) as the absorbed form runs them (up to 2,048 tokens)
MLA_SHAPE = {"heads": 16, "rank": 512, "rope": 64, "q_head_dim": 192, "v_head_dim": 128}
MLA_SHAPE_CPU = {"heads": 4, "rank": 32, "rope": 16, "q_head_dim": 32, "v_head_dim": 16}
MLA_DECODE = [(1, 512), (1, 4096), (8, 1024), (8, 8192), (32, 1024), (32, 4096), (64, 1024), (128, 1024),
              (128, 2048), (256, 1024), (16, 2048), (4, 16384)]  # fmt: skip
MLA_PREFILL = [(128, 0), (256, 0), (512, 0), (1024, 0), (2048, 0), (512, 4096), (1024, 2048), (256, 8192),
               (2048, 4096), (64, 1024), (768, 512), (128, 16384)]  # fmt: skip
MLA_DECODE_CPU = [(1, 40), (2, 70), (3, 30), (4, 50)]
MLA_PREFILL_CPU = [(8, 0), (16, 0), (8, 32), (24, 16)]


# Attention of other heads than the calibrated model's, in the same fitted groups (the groups' curves then
# hold across the catalogue's shapes): Qwen2.5's 7:1 GQA (28 query heads over 4 KV heads of 128) and Gemma 3's
# 256-wide heads (16 over 8); the CPU plan a toy 4:1 and 64-wide pair.
ATTENTION_VARIANTS = [(28, 4, 128), (16, 8, 256)]
ATTENTION_VARIANTS_CPU = [(8, 2, 16)]
VARIANT_PREFILL = [(256, 0), (1024, 0), (512, 4096), (2048, 1024), (4096, 0)]  # (chunk, prior)
VARIANT_DECODE = [(1, 2048), (8, 512), (32, 2048), (64, 8192), (256, 1024)]  # (batch, context)


def attention_variant_points(model: ModelSpec, mode: Mode) -> list[Point]:
    """attention_prefill / attention_decode points of ATTENTION_VARIANTS' heads (those unlike the model's);
    every third held out; --quick keeps the first variant."""
    cpu, quick = mode == "cpu", mode == "quick"
    own = (model.num_heads, model.num_kv_heads, model.head_dim)
    variants = [v for v in (ATTENTION_VARIANTS_CPU if cpu else ATTENTION_VARIANTS) if v != own]
    prefill = [(16, 0), (32, 64)] if cpu else VARIANT_PREFILL
    decode = [(1, 64), (4, 256)] if cpu else VARIANT_DECODE
    pts = []
    for nh, nkv, hd in variants[:1] if quick else variants:
        heads = {"num_heads": nh, "num_kv_heads": nkv, "head_dim": hd}
        for j, (c, prior) in enumerate(prefill):  # roles by place in the full list; quick keeps every other
            if not (quick and j % 2):
                pts.append(Point("attention_prefill", {"chunk": c, "prior": prior, **heads}, j % 3 == 2))
        for j, (b, ctx) in enumerate(decode):
            if not (quick and j % 2):
                pts.append(Point("attention_decode", {"context_lens": [ctx] * b, **heads}, (j + 1) % 3 == 2))
    return pts


def moe_points(mode: Mode) -> list[Point]:
    """`moe` points: each shape at each token count, every fourth held out (quick: fewer of both)."""
    cpu, quick = mode == "cpu", mode == "quick"
    shapes = MOE_SHAPES_CPU if cpu else MOE_SHAPES[:1] if quick else MOE_SHAPES
    pts = []
    for e, k, h, i in shapes:
        for t, hold in _grid_points(MOE_TOKENS_CPU if cpu else MOE_TOKENS, quick):
            pts.append(Point("moe", {"tokens": t, "experts": e, "top_k": k, "hidden": h, "inter": i}, hold))
    return pts


def mla_points(mode: Mode) -> list[Point]:
    """`mla_decode` and `mla_prefill` points at MLA_SHAPE, every fourth held out (quick: every other point, half
    of them held out)."""
    cpu, quick = mode == "cpu", mode == "quick"
    shape = MLA_SHAPE_CPU if cpu else MLA_SHAPE
    pts = []
    for i, (b, ctx) in enumerate(MLA_DECODE_CPU if cpu else MLA_DECODE):
        if not (quick and i % 2):
            pts.append(Point("mla_decode", {"context_lens": [ctx] * b, **shape}, i % 4 == 2))
    for i, (chunk, prior) in enumerate(MLA_PREFILL_CPU if cpu else MLA_PREFILL):
        if not (quick and i % 2):
            pts.append(Point("mla_prefill", {"chunk": chunk, "prior": prior, **shape}, i % 4 == 2))
    return pts


def step_plan(mode: Mode, limits: Limits) -> list[Point]:
    """Whole model steps: prefill (single, batched, chunked after a prefix), decode, mixed."""
    quick, cpu = mode == "quick", mode == "cpu"
    pts: list[Point] = []

    def fits(ctx_lens: list[int]) -> bool:
        return (
            len(ctx_lens) <= limits.max_batch
            and sum(ctx_lens) <= limits.max_kv_tokens
            and max(ctx_lens) <= limits.max_context
        )

    def add(kind: str, params: dict, ctx: list[int]) -> None:
        if fits(ctx):
            pts.append(Point(kind, params))

    if cpu:
        for lens in ([8], [32], [16, 16], [64]):
            add("step_prefill", {"prompt_lens": lens, "prior_lens": [0] * len(lens)}, lens)
        for b in (1, 2, 4):
            for c in (16, 64):
                add("step_decode", {"context_lens": [c] * b}, [c] * b)
        for chunk, b in ((16, 2), (32, 4)):
            dec = [32] * b
            add("step_mixed", {"chunks": [[chunk, 0]], "decode_context_lens": dec}, dec + [chunk])
    else:
        prefill = STEP_PREFILL[::2] if quick else STEP_PREFILL
        for lens in prefill:
            add("step_prefill", {"prompt_lens": lens, "prior_lens": [0] * len(lens)}, lens)
        for chunk, prior in STEP_CHUNKED[:1] if quick else STEP_CHUNKED:
            add("step_prefill", {"prompt_lens": [chunk], "prior_lens": [prior]}, [chunk + prior])
        batches = STEP_DECODE_BATCHES[::2] if quick else STEP_DECODE_BATCHES
        contexts = STEP_DECODE_CONTEXTS[::2] if quick else STEP_DECODE_CONTEXTS
        for b in batches:
            for c in contexts:
                add("step_decode", {"context_lens": [c] * b}, [c] * b)
            # continuous batching runs ragged batches: as many of those as uniform ones
            for c in contexts if b >= 4 else []:
                lens = mixed_lengths(b, c, seed=7 * b + c)
                add("step_decode", {"context_lens": lens}, lens)
        for chunk, b in STEP_MIXED[::2] if quick else STEP_MIXED:
            dec = mixed_lengths(b, MIXED_DECODE_CONTEXT, seed=11 * b + chunk)
            add("step_mixed", {"chunks": [[chunk, 0]], "decode_context_lens": dec}, dec + [chunk])
    # hold out about one step in four, chosen by the point itself so quick and full plans agree
    for p in pts:
        p.holdout = zlib.crc32(p.key.encode()) % 4 == 3
    return pts


def serving_plan() -> list[Point]:
    """The serving loop's host costs (calibrate/serving.py): one run of its synthetic workload gives all four."""
    from calibrate.serving import QUANTITIES, WORKLOAD

    return [Point("serving", {"quantity": q, "workload": WORKLOAD}) for q in QUANTITIES]


def make_plan(
    model: ModelSpec, mode: Mode, gemm_dtypes: list[str], limits: Limits, n_gpus: int = 1
) -> list[Point]:
    """The whole sweep in the order it runs: ceilings, microbenchmarks, then whole steps."""
    pts = microbench_plan(model, mode, gemm_dtypes, n_gpus) + step_plan(mode, limits) + serving_plan()
    seen: set[str] = set()
    out = []
    for p in pts:
        if p.key not in seen:
            seen.add(p.key)
            out.append(p)
    return out


def sweep_ranges(points: list[Point]) -> dict:
    """A summary of what the plan covers, for the profile's provenance block."""

    def span(vals):
        return [min(vals), max(vals)] if vals else []

    by = {}
    for p in points:
        by.setdefault(p.kind, []).append(p.params)
    out: dict = {k: {"points": len(v)} for k, v in by.items()}
    if "gemm" in by:
        out["gemm"].update(
            tokens=span([q["m"] for q in by["gemm"]]), dtypes=sorted({q["dtype"] for q in by["gemm"]})
        )
    if "attention_prefill" in by:
        out["attention_prefill"].update(
            chunk=span([q["chunk"] for q in by["attention_prefill"]]),
            prior=span([q["prior"] for q in by["attention_prefill"]]),
        )
    if "attention_decode" in by:
        out["attention_decode"].update(
            batch=span([len(q["context_lens"]) for q in by["attention_decode"]]),
            context=span([c for q in by["attention_decode"] for c in q["context_lens"]]),
        )
    if "elementwise" in by:
        out["elementwise"].update(tokens=span([q["tokens"] for q in by["elementwise"]]))
    for k in ("step_decode", "step_prefill", "step_mixed"):
        if k in by:
            seqs = [
                len(q.get("context_lens", q.get("prompt_lens", [])))
                + len(q.get("chunks", []))
                + len(q.get("decode_context_lens", []))
                for q in by[k]
            ]
            out[k].update(seqs=span(seqs))
    return out


def kv_token_budget(free_bytes: float, kv_bytes_per_token: float, reserve: float = 0.85) -> int:
    """KV tokens that fit in `reserve` of the free memory left after weights and activations."""
    if kv_bytes_per_token <= 0:
        return 0
    return int(math.floor(free_bytes * reserve / kv_bytes_per_token))
