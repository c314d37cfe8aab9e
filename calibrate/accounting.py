"""FLOPs and bytes of each microbenchmark, counted the way `core.cost_model` counts them.

Each group's efficiency is fitted to kernels timed alone, so their work must be counted with the
cost model's own constants (a `CostModel` instance supplies them); `tests/calibrate` checks that
these counts, summed over a model step, give back `CostModel.breakdown` group by group.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.cost_model import (
    ACT_BYTES,
    BatchShape,
    CostModel,
    absorbed_prefill_share,
    chunk_pairs,
    kv_walk_ratio,
    walk_ratio,
)
from core.kv_cache import padded
from core.model_spec import dtype_bytes

GROUPS = (
    "gemm",
    "attention_prefill",
    "attention_decode",
    "elementwise",
    "attention_fresh",
    "moe",
    "moe_large",
    "attention_mla_decode",
    "attention_mla_prefill",
)
STEP_KINDS = ("step_prefill", "step_decode", "step_mixed")


@dataclass(slots=True)
class Work:
    """Per-kernel work of a set of measured points of one group, as arrays."""

    flops: np.ndarray
    nbytes: np.ndarray
    peak: np.ndarray
    label: list[str]


def gemm_work(cm: CostModel, p: dict) -> tuple[float, float, float]:
    d = p.get("dtype", "bf16")
    flops = 2.0 * p["m"] * p["k"] * p["n"]
    nbytes = p["k"] * p["n"] * dtype_bytes(d) + p["m"] * (p["k"] + p["n"]) * ACT_BYTES
    return flops, nbytes, cm.profile.peak_flops(d)


def _per_layer(cm: CostModel) -> tuple[float, float]:
    """KV bytes per token and attention q/o bytes per token, for one full-attention layer."""
    m = cm.model
    return cm.kv_tok_bytes / max(m.full_attention_layers, 1), cm._attn_io_per_token


def _heads_terms(cm: CostModel, p: dict) -> tuple[float, float, float]:
    """(FLOPs per query-key pair, KV bytes per token, q/o bytes per token) of one layer for an attention
    point: the calibrated model's own, or, for a point of other heads (calibrate.plan.ATTENTION_VARIANTS:
    another GQA ratio or head width), those heads' (bf16 KV, q and o of head_dim per head)."""
    m = cm.model
    own = (p.get("num_heads"), p.get("num_kv_heads"), p.get("head_dim")) in (
        (None, None, None),
        (m.num_heads, m.num_kv_heads, m.head_dim),
    )
    if own:
        kv, io = _per_layer(cm)
        return cm.pair_flops, kv, io
    nh, nkv, hd = p["num_heads"], p["num_kv_heads"], p["head_dim"]
    return 4.0 * nh * hd, 2.0 * nkv * hd * 2, ACT_BYTES * 2.0 * nh * hd


def attention_prefill_work(cm: CostModel, p: dict) -> tuple[float, float, float]:
    """The chunked kernel's FLOPs, and its walk over the context and chunk priced as the sweep model's KV bytes a
    token whatever the point's heads (core.cost_model.WALK_KV_ELEMS), plus the chunk's q and o."""
    pair, kv, io = _heads_terms(cm, p)
    heads = (p.get("num_kv_heads"), p.get("head_dim"))  # (a point of the model's own heads says so too)
    walk = kv * (walk_ratio(*heads) if all(heads) else kv_walk_ratio(cm.model))
    c, prior = p["chunk"], p["prior"]
    flops = pair * chunk_pairs(prior, c)
    nbytes = prior * walk + c * walk + c * io
    return flops, nbytes, cm.attn_peak


def is_fresh(cm: CostModel, p: dict) -> bool:
    """An attention_prefill point the engine runs through its fresh-prompt kernel (group attention_fresh)."""
    return p["prior"] == 0 and p["chunk"] >= cm.profile.efficiency.fresh_prefill_min_tokens


def attention_fresh_work(cm: CostModel, p: dict) -> tuple[float, float, float]:
    """A whole fresh prompt, computed at its padded length (as CostModel.attention_prefill_time counts it)."""
    pair, kv, io = _heads_terms(cm, p)
    c, bucket = p["chunk"], cm.profile.efficiency.fresh_prefill_bucket
    t = padded(c, bucket)
    return pair * t * (t + 1) / 2, c * (kv + io), cm.attn_peak


def attention_decode_work(cm: CostModel, p: dict) -> tuple[float, float, float]:
    pair, kv, io = _heads_terms(cm, p)
    lens = p["context_lens"]
    ctx = float(sum(lens))
    flops = pair * ctx
    nbytes = ctx * kv + len(lens) * io
    return flops, nbytes, cm.attn_peak


def elementwise_work(cm: CostModel, p: dict) -> tuple[float, float, float]:
    """One decoder layer's element-wise kernels for `tokens` tokens (the engine times them as a set)."""
    return 0.0, p["tokens"] * cm._elementwise_bytes_per_token, cm.attn_peak


def is_moe_large(cm: CostModel, p: dict) -> bool:
    """A `moe` point whose routed rows average moe_large_min_rows an expert or more (group moe_large: expert
    GEMMs past the weight-streaming plateau, core.hardware.MOE_LARGE_MIN_ROWS)."""
    return p["tokens"] * p["top_k"] >= cm.profile.efficiency.moe_large_min_rows * p["experts"]


def group_of(cm: CostModel, kind: str, p: dict) -> str:
    """The fitted group a measured point of `kind` belongs to (the kinds a second kernel splits)."""
    if kind == "attention_prefill" and is_fresh(cm, p):
        return "attention_fresh"
    if kind == "moe" and cm.profile.efficiency.moe_large is not None and is_moe_large(cm, p):
        return "moe_large"  # (a profile with one blended `moe` curve, OpEfficiency.blend, has no split)
    return MLA_GROUPS.get(kind, kind)


# the MLA kernels' point kinds and the groups they are fitted in
MLA_GROUPS = {"mla_decode": "attention_mla_decode", "mla_prefill": "attention_mla_prefill"}
# the point kind each group that group_of files apart is measured as (python -m calibrate --redo takes kinds)
KIND_OF = {
    "attention_fresh": "attention_prefill",
    "moe_large": "moe",
    "gemv": "gemm:m=1:dtype=bf16,gemv",  # the gemm points of one row and the smaller-weight gemv ones
    **{g: k for k, g in MLA_GROUPS.items()},
}


def _mla_terms(p: dict) -> tuple[float, float, float]:
    """(FLOPs a pair, latent bytes a token, q-in/out bytes a token) of one absorbed-form MLA layer at a point's
    shape, as core.cost_model counts them for an MLA model (pair_flops, kv bytes per token and layer,
    _attn_io_per_token): scores over rank + rope and values over rank for every head; one bf16 latent +
    rope key per token; q of q_head_dim and an output of v_head_dim per head."""
    h, r, rope = p["heads"], p["rank"], p["rope"]
    return (
        2.0 * h * (2 * r + rope),
        (r + rope) * ACT_BYTES,
        ACT_BYTES * h * (p["q_head_dim"] + p["v_head_dim"]),
    )


def mla_decode_work(cm: CostModel, p: dict) -> tuple[float, float, float]:
    """One layer's absorbed decode attention: every sequence's latents read once, each pair scored."""
    pair, kv, io = _mla_terms(p)
    ctx = sum(p["context_lens"])
    return pair * ctx, ctx * kv + len(p["context_lens"]) * io, cm.attn_peak


def mla_prefill_work(cm: CostModel, p: dict) -> tuple[float, float, float]:
    """One layer's absorbed prompt attention: a chunk after `prior` cached tokens (causal pairs), the context's
    latents read, the chunk's written (CostModel._chunked_prefill_time's absorbed branch)."""
    pair, kv, io = _mla_terms(p)
    c, prior = p["chunk"], p["prior"]
    share = absorbed_prefill_share(c, p["heads"], cm.profile.sm_count)  # as the cost model prices it
    return pair * (c * prior + c * (c + 1) / 2) / share, prior * kv + c * (kv + io), cm.attn_peak


def moe_touched(tokens: int, experts: int, top_k: int) -> float:
    """Expected distinct experts hit by `tokens` tokens routed uniformly to top_k of `experts`."""
    return experts * (1.0 - (1.0 - top_k / experts) ** tokens)


def moe_work(cm: CostModel, p: dict) -> tuple[float, float, float]:
    """One MoE layer's routed experts for a `moe` point's own shape (tokens, experts, top_k, hidden, inter),
    counted as core.cost_model.moe_layer_work counts them: gate_up [hidden, 2 inter] and down [inter, hidden]
    over tokens x top_k rows, the touched experts' bf16 weights read once (uniform routing)."""
    h, i = p["hidden"], p["inter"]
    slots = p["tokens"] * p["top_k"]
    touched = moe_touched(p["tokens"], p["experts"], p["top_k"])
    shapes = ((h, 2 * i), (i, h))
    flops = sum(2.0 * slots * k * n for k, n in shapes)
    nbytes = sum(touched * k * n * 2 + slots * (k + n) * ACT_BYTES for k, n in shapes)
    return flops, nbytes, cm.profile.peak_flops("bf16")


WORK = {
    "gemm": gemm_work,
    "gemv": gemm_work,
    "attention_prefill": attention_prefill_work,
    "attention_decode": attention_decode_work,
    "elementwise": elementwise_work,
    "attention_fresh": attention_fresh_work,
    "moe": moe_work,
    "moe_large": moe_work,
    "attention_mla_decode": mla_decode_work,
    "attention_mla_prefill": mla_prefill_work,
}


def work(cm: CostModel, group: str, params: list[dict]) -> Work:
    rows = [WORK[group](cm, p) for p in params]
    arr = np.array(rows, dtype=float).reshape(-1, 3)
    return Work(arr[:, 0], arr[:, 1], arr[:, 2], [label(group, p) for p in params])


def label(kind: str, p: dict) -> str:
    if kind in ("gemm", "ceiling_gemm", "gemv"):
        return f"{p.get('dtype', 'bf16')} m={p['m']} k={p['k']} n={p['n']}"
    if kind in ("attention_prefill", "attention_fresh"):
        return f"chunk={p['chunk']} prior={p['prior']}"
    if kind in ("mla_decode", "attention_mla_decode"):
        return f"MLA decode batch={len(p['context_lens'])} ctx={p['context_lens'][0]}"
    if kind in ("mla_prefill", "attention_mla_prefill"):
        return f"MLA chunk={p['chunk']} prior={p['prior']}"
    if kind in ("attention_decode", "step_decode"):
        lens = p["context_lens"]
        return f"batch={len(lens)} ctx={sum(lens) // max(len(lens), 1)}"
    if kind == "elementwise":
        return f"tokens={p['tokens']}"
    if kind in ("moe", "moe_large"):
        return f"E={p['experts']} top-{p['top_k']} {p['hidden']}x{p['inter']} tokens={p['tokens']}"
    if kind == "step_prefill":
        return f"prompts={p['prompt_lens'][:3]}{'…' if len(p['prompt_lens']) > 3 else ''} prior={max(p['prior_lens'])}"
    if kind == "step_mixed":
        lens = p["decode_context_lens"]
        return f"chunks={[c for c, _ in p['chunks']]} decodes={len(lens)}"
    return ",".join(f"{k}={v}" for k, v in p.items() if not isinstance(v, list))


# ------------------------------------------------------------------ whole steps
def step_shape(cm: CostModel, kind: str, p: dict, logits: str = "last") -> BatchShape:
    """The BatchShape of a whole step as the engine runs it (logits for each sequence's last token)."""
    m = cm.model
    window = m.sliding_window if m.sliding_layers else 0
    if kind == "step_prefill":
        chunks = list(zip(p["prompt_lens"], p["prior_lens"], strict=True))
        decodes: list[int] = []
    elif kind == "step_decode":
        chunks, decodes = [], list(p["context_lens"])
    elif kind == "step_mixed":
        chunks = [(c, prior) for c, prior in p["chunks"]]
        decodes = list(p["decode_context_lens"])
    else:
        raise ValueError(f"not a step kind: {kind}")
    b = BatchShape.of(chunks, decodes, window, cm.fresh)
    if logits == "all":
        b.logits_tokens = b.tokens
    return b
