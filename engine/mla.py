"""Multi-head latent attention (DeepSeek-V2/V3) over a latent KV cache.

Each token caches one vector per layer: the normalised KV latent (kv_lora_rank) followed by the rotary
key shared by all heads (qk_rope_head_dim), 576 elements for DeepSeek-V2-Lite, which is what the cost
model and the memory plan count (ModelSpec.kv_elems_per_token_per_layer). The layer's pool is
[pool_tokens, 1, rank + rope]; its value pool is the same tensor (the latent is also the value).

Two forms of the same attention, as vLLM and SGLang run them:
- prompt chunks, plain form: the context's latents are expanded through kv_b into per-head keys
  (no-rope part) and values, and each head attends with its 192-wide query (128 + 64 rope);
- decodes, absorbed form: W_UK (kv_b's key half) is folded into the query, so each head's query
  is a rank + rope vector scored straight against the cached latents, the attention output stays
  in latent space, and W_UV (kv_b's value half) maps it to the heads' values afterwards. All heads
  share one cached vector per token: the decode kernel reads the 576-element latents once for the
  16 heads (multi-query attention with 576-wide keys and 512-wide values).
The two give the same result (tests/engine/test_mla.py). On CUDA the decode is a Triton
flash-decoding kernel over the engine's work units (engine.attention.plan_decode_units), merged by
the engine's combine kernel; on the CPU a per-sequence torch path. The kernel reads only device
tensors, so decode steps capture in CUDA graphs. Steps of up to ABSORBED_PROMPT_TOKENS run their prompt
chunks absorbed too (one Triton kernel, graph-safe); larger steps run them plain, eagerly, from the step's
host lists, batched: one gather, one kv_b GEMM and one varlen flash call for all the step's chunks.
DeepSeek's YaRN rope scaling enters the softmax scale (mscale²) only: the rope tables are the plain
ones (weights are random, so the rotation's frequencies change no timing).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

from core.cost_model import MLA_ABSORBED_STEP_TOKENS, MLA_PREFILL_ROWS
from core.model_spec import ModelSpec
from engine.fused import rope_ref

try:  # Triton ships with CUDA builds of torch; CPU-only installs run the torch paths
    import triton
    import triton.language as tl

    from engine.fused import _decode_combine_kernel
except ImportError:  # pragma: no cover - depends on the install
    triton = None


def softmax_scale(spec: ModelSpec) -> float:
    """1/sqrt(q head dim), times YaRN's mscale² when the config scales rope that way (DeepSeek)."""
    cfg = spec.config.get("text_config", spec.config)
    scale = spec.q_head_dim**-0.5
    rs = cfg.get("rope_scaling") or {}
    if rs.get("type", rs.get("rope_type")) == "yarn" and rs.get("mscale_all_dim"):
        m = 0.1 * float(rs["mscale_all_dim"]) * math.log(float(rs.get("factor", 1.0))) + 1.0
        scale *= m * m
    return scale


class MLAttention(nn.Module):
    """DeepSeek-V2 attention; `forward(x, lay, rope, k_pool, v_pool)` like engine.model.Attention."""

    def __init__(self, spec: ModelSpec, rope_base: float) -> None:
        super().__init__()
        from engine.model import Dense, RMSNorm  # the model's layers (engine.model imports this module)

        cfg = spec.config.get("text_config", spec.config)
        eps = float(cfg.get("rms_norm_eps", 1e-6))
        h = spec.hidden_size
        self.nh, self.rank = spec.num_heads, spec.kv_lora_rank
        self.nope, self.rope_dim, self.vd = spec.qk_nope_head_dim, spec.qk_rope_head_dim, spec.v_head_dim
        self.qd = self.nope + self.rope_dim
        self.q_lora = spec.q_lora_rank or 0
        if self.q_lora:
            self.q_a = Dense(h, self.q_lora, bias=False)
            self.q_a_norm = RMSNorm(self.q_lora, eps, 0.0)
            self.q_b = Dense(self.q_lora, self.nh * self.qd, bias=False)
        else:
            self.wq = Dense(h, self.nh * self.qd, bias=False)
        self.kv_a = Dense(h, self.rank + self.rope_dim, bias=False)
        self.kv_norm = RMSNorm(self.rank, eps, 0.0)
        self.kv_b = Dense(self.rank, self.nh * (self.nope + self.vd), bias=False)
        self.wo = Dense(self.nh * self.vd, h, bias=False)
        self.scale = softmax_scale(spec)
        self.rope_base = rope_base
        self.window = 0

    def _wkv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """kv_b's weight split per head: W_UK [nh, nope, rank], W_UV [nh, vd, rank]."""
        w = self.kv_b.weight.view(self.nh, self.nope + self.vd, self.rank)
        return w[:, : self.nope], w[:, self.nope :]

    def forward(self, x, lay, rope, k_pool, v_pool):
        t = x.shape[0]
        q = self.q_b(self.q_a_norm(self.q_a(x))[0]) if self.q_lora else self.wq(x)
        q = q.view(t, self.nh, self.qd)
        kv = self.kv_a(x)
        if use_kernel(q):  # one kernel: q's rope part rotated in place
            mla_rope_cache(q, kv, self.kv_norm, rope, lay.positions, lay.slots, k_pool, self.nope, self.rank)
        else:  # the torch ops return the rotated rope query: written back, so q holds it either way
            q[..., self.nope :] = mla_rope_cache_ref(
                q, kv, self.kv_norm, rope, lay.positions, lay.slots, k_pool, self.nope, self.rank
            )
        if use_kernel(q) and (not lay.n_prefill or t <= ABSORBED_PROMPT_TOKENS):  # every row absorbed
            qa = self.absorbed_query(q)  # (device metadata only: graph-safe)
            o_lat = qa.new_zeros((t, self.nh, self.rank))
            if lay.n_prefill:
                mla_prefill(qa, k_pool, lay, self.rank, self.scale, o_lat)
            if lay.n_prefill < len(lay.q_lens):
                mla_decode(qa, k_pool, lay, self.rank, self.scale, out=o_lat)
            out = x.new_empty((t, self.nh, self.vd))
            self.latent_values(o_lat, out)
            return self.wo(out.view(t, self.nh * self.vd))
        out = x.new_zeros((t, self.nh, self.vd))
        if lay.n_prefill:
            self._plain(q, k_pool, lay, out)
        if lay.n_prefill < len(lay.q_lens):
            self._absorbed(q, k_pool, lay, out)
        return self.wo(out.view(t, self.nh * self.vd))

    def _plain(self, q, k_pool, lay, out) -> None:
        """Prompt chunks, batched over sequences (host lists, eager). The chunks' cached latents (context and
        chunk) are gathered in one index, up-projected through kv_b in one GEMM into per-head keys
        [k_nope, k_pe] and values, in the activation dtype, the values zero-padded to the 192-wide q/k head so
        that flash attention takes them (it needs one head dim for q, k and v); then one varlen flash call over
        every chunk (causal, bottom-right aligned: a chunk after cached context sees all of it). Chunks are
        grouped up to PLAIN_CONTEXT_TOKENS of gathered context, so the expanded keys and values take no more
        memory than one long sequence did; a step of a few chunks is one group. The gather's plan is made once
        a step (plain_plan, one copy to the device without a sync) and shared by the layers. On the CPU, the
        same gathered tensors go to SDPA one chunk at a time."""
        dt = q.dtype  # (the chunks' rows lead q, its rope part rotated: taken as it is, no concatenation)
        plan = shared_plain_plan(lay, q.device)
        nope, qd, vd = self.nope, self.qd, self.vd
        for g in plan:
            if not g.seqs:
                continue
            c = k_pool.index_select(0, g.index)[:, 0].to(dt)
            kv = self.kv_b(c[:, : self.rank]).view(c.shape[0], self.nh, nope + vd)
            # keys [k_nope | k_pe] and values [v | 0] side by side in one buffer: copies, not torch.cat, whose
            # kernel moved these strided pieces at ~135 GB/s on an H200 (6 ms of a 2 x 1,600-token step)
            kvp = torch.empty((c.shape[0], self.nh, 2 * qd), dtype=dt, device=c.device)
            kvp[..., :nope] = kv[..., :nope]
            kvp[..., nope:qd] = c[:, None, self.rank :]
            kvp[..., qd : qd + vd] = kv[..., nope:]
            kvp[..., qd + vd :] = 0
            k, v = kvp[..., :qd], kvp[..., qd:]
            qg = q[g.row : g.row + g.rows]
            if qg.is_cuda:
                o = torch.ops.aten._flash_attention_forward(
                    qg, k, v, g.cu_q, g.cu_k, g.max_q, g.max_k, 0.0, True, False, scale=self.scale
                )[0]
            else:
                o = torch.cat([
                    plain_attention(qg[a:b], k[c0:c1], v[c0:c1], self.scale)
                    for a, b, c0, c1 in zip(g.host_q[:-1], g.host_q[1:], g.host_k[:-1], g.host_k[1:], strict=True)
                ])  # fmt: skip
            out[g.row : g.row + g.rows] = o[..., :vd]

    def absorbed_query(self, q: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        """[T, nh, rank + rope] from q [T, nh, nope + rope] (its rope part rotated): W_UK folded into the no-rope
        query, the rope query after it, in one buffer. The per-head GEMM writes the rank part in place and the rope
        part is copied beside it: no concatenation, whose kernel read these strided pieces slowly (27 µs a layer
        at 680 tokens on an H200, 4.5 ms of a 2 x 1,600-token eager step). Only `rows` are set (an eager step's
        decode rows: the decode kernel reads no others)."""
        w_uk, _ = self._wkv()
        qa = q.new_empty((q.shape[0], self.nh, self.rank + self.rope_dim))
        qa[rows, :, self.rank :] = q[rows, :, self.nope :]
        torch.bmm(
            q[rows, :, : self.nope].transpose(0, 1), w_uk, out=qa[rows].transpose(0, 1)[..., : self.rank]
        )
        return qa

    def latent_values(self, o_lat: torch.Tensor, out: torch.Tensor) -> None:
        """W_UV applied to the latent-space output [T, nh, rank], written into `out` [T, nh, vd] (one per-head
        GEMM into the heads' layout: no copy to make the result contiguous)."""
        _, w_uv = self._wkv()
        torch.bmm(o_lat.transpose(0, 1), w_uv.transpose(1, 2), out=out.transpose(0, 1))

    def _absorbed(self, q, k_pool, lay, out) -> None:
        """Decodes of an eager step: scores against the cached latents, output in latent space, then W_UV; only
        the decode rows (those after the prompt chunks') are computed."""
        dec = slice(int(sum(lay.q_lens[: lay.n_prefill])), None)
        qa = self.absorbed_query(q, dec)
        if use_kernel(qa):
            o_lat = qa.new_empty((qa.shape[0], self.nh, self.rank))  # (the kernel sets the decode rows)
            mla_decode(qa, k_pool, lay, self.rank, self.scale, out=o_lat)
        else:
            o_lat = qa.new_zeros((qa.shape[0], self.nh, self.rank))
            row = dec.start
            for s in range(lay.n_prefill, len(lay.q_lens)):
                kl, ks, ql = lay.k_lens[s], lay.k_starts[s], lay.q_lens[s]
                if not ql:  # an empty slot of a graph's padding
                    continue
                c = k_pool[ks : ks + kl, 0]
                o_lat[row : row + 1] = _sdpa(
                    qa[row : row + 1], c[:, None], c[:, None, : self.rank], self.scale
                )
                row += 1
        self.latent_values(o_lat[dec], out[dec])


# the plain form's gathered context a group at most (tokens): the per-head keys and values it expands to take about
# 21 KB a token for DeepSeek-V2-Lite, 170 MB for 8,192, what one sequence of that context took when the chunks
# ran one by one; a longer sequence is a group of its own.
PLAIN_CONTEXT_TOKENS = 8192


@dataclass(slots=True)
class PlainGroup:
    """One varlen flash call of the plain form: output rows [row, row + rows), the chunks `seqs` (those with
    rows), their cumulative query and key offsets (host lists, and device int32 tensors) and gather index
    (device tensors None for a group of empty slots only)."""

    row: int
    rows: int
    seqs: list[int]
    host_q: list[int]
    host_k: list[int]
    cu_q: torch.Tensor | None
    cu_k: torch.Tensor | None
    index: torch.Tensor | None

    @property
    def max_q(self) -> int:
        return max(b - a for a, b in zip(self.host_q, self.host_q[1:], strict=False))

    @property
    def max_k(self) -> int:
        return max(b - a for a, b in zip(self.host_k, self.host_k[1:], strict=False))


def plain_plan(lay, cap: int, device) -> list[PlainGroup]:
    """The plain form's groups for a step's prompt chunks (plain_groups), their offsets and gather index copied to
    the device in one go: pinned and asynchronous on CUDA (a pageable copy would make the host wait for the
    GPU at every layer)."""
    specs, parts, row = [], [], 0
    for group in plain_groups(lay.q_lens[: lay.n_prefill], lay.k_lens, cap):
        seqs = [s for s in group if lay.q_lens[s]]  # (an unused chunk slot of a mixed-step graph has no rows)
        host_q = np.cumsum([0, *(lay.q_lens[s] for s in seqs)]).tolist()
        host_k = np.cumsum([0, *(lay.k_lens[s] for s in seqs)]).tolist()
        if seqs:
            parts += [host_q, host_k]
            parts += [np.arange(lay.k_starts[s], lay.k_starts[s] + lay.k_lens[s]) for s in seqs]
        rows = sum(lay.q_lens[s] for s in group)
        specs.append((row, rows, seqs, host_q, host_k))
        row += rows
    meta = None
    if parts:
        host = torch.from_numpy(np.concatenate(parts).astype(np.int32))
        dev = torch.device(device)
        meta = host.pin_memory().to(dev, non_blocking=True) if dev.type == "cuda" else host
    groups, o = [], 0
    for row, rows, seqs, host_q, host_k in specs:
        views = (None, None, None)
        if seqs:
            nq, nk = len(host_q), host_k[-1]
            views = (meta[o : o + nq], meta[o + nq : o + 2 * nq], meta[o + 2 * nq : o + 2 * nq + nk])
            o += 2 * nq + nk
        groups.append(PlainGroup(row, rows, seqs, host_q, host_k, *views))
    return groups


def shared_plain_plan(lay, device) -> list[PlainGroup]:
    """The step's plain_plan, made by the first layer and kept in the layout for the others. A static graph
    layout is refilled step after step, so the plan is kept with the chunks it was made for and made again
    when they differ."""
    npf = lay.n_prefill
    key = (PLAIN_CONTEXT_TOKENS, tuple(lay.q_lens[:npf]), tuple(lay.k_lens[:npf]), tuple(lay.k_starts[:npf]))
    kept = lay.shared.get("mla_plain")
    if kept is None or kept[0] != key:
        kept = lay.shared["mla_plain"] = (key, plain_plan(lay, PLAIN_CONTEXT_TOKENS, device))
    return kept[1]


def plain_groups(q_lens: list[int], k_lens: list[int], cap: int) -> list[list[int]]:
    """Consecutive runs of the prompt chunks 0..len(q_lens) whose contexts (k_lens) add up to at most `cap`
    tokens (a chunk whose context alone is longer is a run of its own)."""
    groups: list[list[int]] = []
    total = 0
    for s in range(len(q_lens)):
        if groups and total + k_lens[s] <= cap:
            groups[-1].append(s)
            total += k_lens[s]
        else:
            groups.append([s])
            total = k_lens[s]
    return groups


def _sdpa(q, k, v, scale: float) -> torch.Tensor:
    """q [Q, hq, d], k [K, hk, d], v [K, hk, dv] (hk 1 or hq), the queries the last Q of the K positions."""
    nq, nk = q.shape[0], k.shape[0]
    if k.shape[1] != q.shape[1]:
        k, v = k.expand(nk, q.shape[1], -1), v.expand(nk, q.shape[1], -1)
    # a whole fresh prompt: plain causal (SDPA's fused kernels); else the bottom-right aligned mask
    mask = None if nq == nk else torch.ones(nq, nk, dtype=torch.bool, device=q.device).tril(nk - nq)
    o = F.scaled_dot_product_attention(
        q.transpose(0, 1),
        k.transpose(0, 1).to(q.dtype),
        v.transpose(0, 1).to(q.dtype),
        attn_mask=mask,
        is_causal=mask is None,
        scale=scale,
    )
    return o.transpose(0, 1)


# SDPA's backends for plain_attention: flash first, never cuDNN. cuDNN builds an execution plan per new shape, and
# a serving loop meets a new prompt length nearly every step: on an H200, DeepSeek-V2-Lite's eager steps of 1.1-4.1k
# prompt tokens took 99-4,994 ms on a shape's first step against 48-64 ms when repeated (session 9). The plain form
# now calls FA2's varlen kernel itself on CUDA (MLAttention._plain), which has no plans: with the batched form,
# 54-74 ms on a shape's first step and 52-68 ms repeated (benchmarks/mla_eager_shapes.py, session 12,
# benchmarks/results/engine_kernels_h200/mla_eager_shapes.log; its cudnn_sdp pass runs first and carries the
# process's own warm-up).
PLAIN_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def plain_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, bias: bool | None = None
) -> torch.Tensor:
    """Causal attention of q [Q, h, d] over k, v [K, h, d] (the queries the last Q of the K positions) in
    q's dtype: plain causal when Q == K, else the bottom-right aligned causal mask, as a CausalBias (`bias`,
    the default on CUDA: no materialised mask, so SDPA's flash/memory-efficient kernels run it fused) or a
    boolean mask (the CPU's math path; a CausalBias cannot be made under a dispatch mode such as the FLOP
    counter's)."""
    nq, nk = q.shape[0], k.shape[0]
    mask = None
    if nq != nk:
        if q.is_cuda if bias is None else bias:
            mask = causal_lower_right(nq, nk)
        else:
            mask = torch.ones(nq, nk, dtype=torch.bool, device=q.device).tril(nk - nq)
    with sdpa_kernel(PLAIN_BACKENDS) if q.is_cuda else nullcontext():  # (the CPU: SDPA's own choice)
        o = F.scaled_dot_product_attention(  # 4-D [1, h, L, d]: SDPA's fused kernels take nothing else
            q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], attn_mask=mask,
            is_causal=mask is None, scale=scale,
        )  # fmt: skip
    return o[0].transpose(0, 1)


def use_kernel(q: torch.Tensor) -> bool:
    return triton is not None and q.is_cuda


def mla_rope_cache(q, kv, norm, rope, positions, slots, k_pool, nope: int, rank: int) -> None:
    """The glue between MLA's projections and its attention in one kernel: q [T, nh, nope + rope]'s rope part
    rotated in place, and each token's pool slot given its normalised latent (`norm`: kv_norm, an RMSNorm) and
    rotated rope key from kv [T, rank + rope] (kv_a's output). The same arithmetic as the torch ops
    (`mla_rope_cache_ref`), which took 26 kernels a layer."""
    t, nh, qd = q.shape
    half = (qd - nope) // 2
    _mla_rope_cache_kernel[(t, nh + 1)](
        q, kv, norm.weight, k_pool, rope[0], rope[1], positions, slots, q.stride(0), kv.stride(0), norm.eps, norm.offset,
        NH=nh, NOPE=nope, RANK=rank, RANK_P2=triton.next_power_of_2(rank), HALF=half, num_warps=1,
    )  # fmt: skip


def mla_rope_cache_ref(q, kv, norm, rope, positions, slots, k_pool, nope: int, rank: int) -> torch.Tensor:
    """`mla_rope_cache` in torch ops: returns the rotated rope query (q is left as it was)."""
    latent = norm(kv[:, :rank].contiguous())[0]
    cos, sin = rope[0][positions], rope[1][positions]
    q_pe = rope_ref(q[..., nope:], cos, sin)
    k_pe = rope_ref(kv[:, None, rank:], cos, sin)
    k_pool[slots, 0] = torch.cat([latent, k_pe[:, 0]], -1).to(k_pool.dtype)
    return q_pe


if triton is not None:

    @triton.jit
    def _mla_rope_cache_kernel(
        Q, KV, W, KP, COS, SIN, POS, SLOT, q_stride, kv_stride, eps, offset,
        NH: tl.constexpr, NOPE: tl.constexpr, RANK: tl.constexpr, RANK_P2: tl.constexpr, HALF: tl.constexpr,
    ):  # fmt: skip
        """One token's MLA glue (`mla_rope_cache`): programs 0..NH-1 rotate their head's rope query in place;
        program NH normalises the latent, rotates the rope key and writes both to the token's pool slot."""
        t = tl.program_id(0).to(tl.int64)
        h = tl.program_id(1)
        d = tl.arange(0, HALF)
        pos = tl.load(POS + t)
        cos = tl.load(COS + pos * HALF + d)
        sin = tl.load(SIN + pos * HALF + d)
        if h < NH:
            src = Q + t * q_stride + h * (NOPE + 2 * HALF) + NOPE
            x1 = tl.load(src + d).to(tl.float32)
            x2 = tl.load(src + HALF + d).to(tl.float32)
            tl.store(src + d, (x1 * cos - x2 * sin).to(Q.dtype.element_ty))
            tl.store(src + HALF + d, (x2 * cos + x1 * sin).to(Q.dtype.element_ty))
        else:
            slot = tl.load(SLOT + t)
            dst = KP + slot * (RANK + 2 * HALF)
            r = tl.arange(0, RANK_P2)
            rm = r < RANK
            c = tl.load(KV + t * kv_stride + r, mask=rm, other=0.0).to(tl.float32)
            # the latent as RMSNorm's module rounds it (engine.fused.add_rmsnorm: fp32, then the activation dtype)
            lat = (
                c
                * tl.rsqrt(tl.sum(c * c, axis=0) / RANK + eps)
                * (tl.load(W + r, mask=rm, other=0.0).to(tl.float32) + offset)
            )
            tl.store(dst + r, lat.to(KV.dtype.element_ty).to(KP.dtype.element_ty), mask=rm)
            x1 = tl.load(KV + t * kv_stride + RANK + d).to(tl.float32)
            x2 = tl.load(KV + t * kv_stride + RANK + HALF + d).to(tl.float32)
            k1 = (x1 * cos - x2 * sin).to(KV.dtype.element_ty).to(KP.dtype.element_ty)
            k2 = (x2 * cos + x1 * sin).to(KV.dtype.element_ty).to(KP.dtype.element_ty)
            tl.store(dst + RANK + d, k1)
            tl.store(dst + RANK + HALF + d, k2)

    @triton.jit
    def _mla_decode_kernel(
        Q,
        KV,
        OP,
        LP,
        U_SEQ,
        U_LO,
        U_HI,
        CU_Q,
        CU_K,
        SEQUSED,
        scale,
        kv_stride,
        NH: tl.constexpr,
        H_PAD: tl.constexpr,
        R: tl.constexpr,
        P: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        """One work unit (keys [lo, hi) of one decode sequence) for all heads: scores q_lat·latent +
        q_rope·k_rope, values the latents; writes the unit's normalised output and log-sum-exp."""
        u = tl.program_id(0).to(tl.int64)
        s = tl.load(U_SEQ + u)
        live = s >= 0
        s = tl.maximum(s, 0)
        start = tl.load(CU_K + s).to(tl.int64)
        row = tl.load(CU_Q + s).to(tl.int64)
        lo = tl.load(U_LO + u)
        hi = tl.where(live, tl.minimum(tl.load(U_HI + u), tl.load(SEQUSED + s)), lo)
        h = tl.arange(0, H_PAD)
        hm = h < NH
        r = tl.arange(0, R)
        p = tl.arange(0, P)
        qbase = (row * NH + h)[:, None] * (R + P)
        q_l = tl.load(Q + qbase + r[None, :], mask=hm[:, None], other=0.0)
        q_r = tl.load(Q + qbase + R + p[None, :], mask=hm[:, None], other=0.0)
        m_i = tl.full((H_PAD,), float("-inf"), tl.float32)
        l_i = tl.zeros((H_PAD,), tl.float32)
        acc = tl.zeros((H_PAD, R), tl.float32)
        for n0 in range(lo, hi, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            nm = n < hi
            base = (start + n)[:, None] * kv_stride
            c = tl.load(KV + base + r[None, :], mask=nm[:, None], other=0.0)
            kr = tl.load(KV + base + R + p[None, :], mask=nm[:, None], other=0.0)
            sc = (tl.dot(q_l, tl.trans(c)) + tl.dot(q_r, tl.trans(kr))) * scale
            sc = tl.where(nm[None, :], sc, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(sc, 1))
            alpha = tl.exp(m_i - m_new)
            pr = tl.exp(sc - m_new[:, None])
            l_i = l_i * alpha + tl.sum(pr, 1)
            acc = acc * alpha[:, None] + tl.dot(pr.to(c.dtype), c)
            m_i = m_new
        has = l_i > 0
        o = acc / tl.where(has, l_i, 1.0)[:, None]
        lse = tl.where(has, m_i + tl.log(tl.where(has, l_i, 1.0)), float("-inf"))
        ob = u * NH + h
        tl.store(OP + ob[:, None] * R + r[None, :], o, mask=hm[:, None])
        tl.store(LP + ob, lse, mask=hm)


# Steps of up to this many tokens run every row in the absorbed form on CUDA (prompt chunks through
# _mla_prefill_kernel, decodes through _mla_decode_kernel): device metadata only, so they capture in the
# serving loop's mixed-step graphs (engine.serving.Executor caps an MLA model's mixed graphs here). Larger
# steps run prompt chunks in the plain form, eagerly: flash attention at 320 FLOPs a pair and head against the
# absorbed kernel's 1088 (core.cost_model.mla_prefill_flops prices both). Read at call time (and by the
# Executor when built): benchmarks/mla_gpu_check.py sets it to time both forms.
ABSORBED_PROMPT_TOKENS = MLA_ABSORBED_STEP_TOKENS

if triton is not None:

    @triton.jit
    def _mla_prefill_kernel(
        Q,
        KV,
        OUT,
        CU_Q,
        CU_K,
        SEQUSED,
        scale,
        kv_stride,
        NH: tl.constexpr,
        H_PAD: tl.constexpr,
        BT: tl.constexpr,
        R: tl.constexpr,
        P: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        """Absorbed causal attention of one prompt chunk's BT queries (all heads: BT x H_PAD rows) over its
        sequence's latents: keys [0, prior + token + 1) of the region at CU_K[s], seqused = prior + chunk."""
        s = tl.program_id(0)
        qb = tl.program_id(1)
        q0 = tl.load(CU_Q + s)
        ql = tl.load(CU_Q + s + 1) - q0
        if qb * BT >= ql:
            return
        start = tl.load(CU_K + s).to(tl.int64)
        kl = tl.load(SEQUSED + s)
        prior = kl - ql
        m = tl.arange(0, BT * H_PAD)
        tok = qb * BT + m // H_PAD
        h = m % H_PAD
        valid = (tok < ql) & (h < NH)
        row = (q0 + tok).to(tl.int64) * NH + h
        r = tl.arange(0, R)
        p = tl.arange(0, P)
        q_l = tl.load(Q + row[:, None] * (R + P) + r[None, :], mask=valid[:, None], other=0.0)
        q_r = tl.load(Q + row[:, None] * (R + P) + R + p[None, :], mask=valid[:, None], other=0.0)
        limit = prior + tok + 1  # each query's keys: its context and itself (every row has key 0)
        hi = tl.minimum(kl, prior + qb * BT + BT)
        m_i = tl.full((BT * H_PAD,), float("-inf"), tl.float32)
        l_i = tl.zeros((BT * H_PAD,), tl.float32)
        acc = tl.zeros((BT * H_PAD, R), tl.float32)
        for n0 in range(0, hi, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            nm = n < hi
            base = (start + n)[:, None] * kv_stride
            c = tl.load(KV + base + r[None, :], mask=nm[:, None], other=0.0)
            kr = tl.load(KV + base + R + p[None, :], mask=nm[:, None], other=0.0)
            sc = (tl.dot(q_l, tl.trans(c)) + tl.dot(q_r, tl.trans(kr))) * scale
            sc = tl.where(n[None, :] < limit[:, None], sc, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(sc, 1))
            alpha = tl.exp(m_i - m_new)
            pr = tl.exp(sc - m_new[:, None])
            l_i = l_i * alpha + tl.sum(pr, 1)
            acc = acc * alpha[:, None] + tl.dot(pr.to(c.dtype), c)
            m_i = m_new
        o = acc / l_i[:, None]
        tl.store(OUT + row[:, None] * R + r[None, :], o.to(OUT.dtype.element_ty), mask=valid[:, None])


def mla_prefill(
    qa: torch.Tensor,
    kv_pool: torch.Tensor,
    lay,
    rank: int,
    scale: float,
    out: torch.Tensor,
    tiles: dict | None = None,
):
    """Absorbed causal attention (Triton) of the prompt chunks, sequences [0, lay.n_prefill): their rows of
    `out` [T, nh, rank] set to the latent-space output. Reads only the layout's device tensors (cu_q, cu_k,
    seqused_k) and the static lay.max_q: graph-safe. `tiles` overrides PREFILL_TILES (rows: query rows a program,
    tokens x heads; block_n, num_warps, num_stages), as benchmarks/mla_gpu_check.py sweeps them."""
    t, nh, d = qa.shape
    cfg = {**PREFILL_TILES, **(tiles or {})}
    h_pad = max(2, triton.next_power_of_2(nh))
    bt = max(1, cfg["rows"] // h_pad)  # query tokens a program (all heads of each)
    qa = qa.to(kv_pool.dtype).contiguous()
    grid = (lay.n_prefill, triton.cdiv(max(lay.max_q, 1), bt))
    _mla_prefill_kernel[grid](
        qa, kv_pool, out, lay.cu_q, lay.cu_k, lay.seqused_k, scale, kv_pool.stride(0),
        NH=nh, H_PAD=h_pad, BT=bt, R=rank, P=d - rank, BLOCK_N=cfg["block_n"], num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )  # fmt: skip
    return out


# the absorbed prompt kernel's tiles: 64 query rows (4 tokens x 16 heads for DeepSeek), 64 keys a block. The
# best of benchmarks/mla_gpu_check.py's sweep on an H200 at both shapes it times: one layer's prompt attention
# at 2,048 fresh tokens 344 µs (212 TFLOP/s) against 858 µs for 32 x 32; 512 tokens after 4,096: 297 against
# 827 µs (benchmarks/results/engine_kernels_h200/mla_gpu_check.json, "tiles"). About 220 KB of shared memory
# with two stages: sm90 (H100/H200) sized.
PREFILL_TILES = {"rows": MLA_PREFILL_ROWS, "block_n": 64, "num_warps": 8, "num_stages": 2}


# the absorbed decode kernel's tiles: block_n 64, 8 warps, 3 stages. benchmarks/mla_decode_tiles.py --units on an
# H200 (DeepSeek-V2-Lite's shape, graph replays over latents rotated past the L2, the engine's work units;
# benchmarks/results/engine_kernels_h200/mla_decode_tiles.md): 18.1 / 22.4 / 64.2 / 43.1 µs a layer at 1 x 4,096,
# 32 x 1,024, 128 x 1,024 and 8 x 8,192 contexts, against 29.1 / 32.5 / 80.8 / 46.3 for the earlier (32, 8, 2):
# faster at every shape, 0.75x the time (geometric mean). Calibration's mla_decode points and the DeepSeek fidelity
# row were taken again with these tiles (session 12).
DECODE_TILES = {"block_n": 64, "num_warps": 8, "num_stages": 3}
# sized for the sm90's 227 KB of shared memory a block; where a GPU has less, the kernel's first compile fails
# (Triton's OutOfResources) and the decode takes these tiles, the earlier default (74 KB of latents in flight)
SMALL_DECODE_TILES = {"block_n": 32, "num_warps": 8, "num_stages": 2}
_SMALL_TILES_ON: set[int] = set()  # devices whose shared memory took the small tiles


def mla_decode(
    qa: torch.Tensor, kv_pool: torch.Tensor, lay, rank: int, scale: float, out=None, tiles=None
) -> torch.Tensor:
    """Absorbed decode attention (Triton) for sequences lay.n_prefill..: [T, nh, rank] (decode rows set;
    into `out` when given)."""
    t, nh, _ = qa.shape
    if out is None:
        out = qa.new_zeros((t, nh, rank))
    n_dec = lay.units["seq_units"].shape[0] - 1
    if lay.units["seq"].shape[0] == 0 or n_dec == 0:
        return out
    op, lp = mla_decode_units(qa, kv_pool, lay, rank, scale, tiles)
    _decode_combine_kernel[(n_dec * nh,)](
        op, lp, lay.units["seq_units"], lay.cu_q, out, lay.n_prefill, NH=nh, D=rank, UB=16, num_warps=4
    )
    return out


def mla_decode_units(qa: torch.Tensor, kv_pool: torch.Tensor, lay, rank: int, scale: float, tiles=None):
    """Each decode work unit's normalised output [units, nh, rank] and log-sum-exp [units, nh] (Triton);
    `tiles` overrides DECODE_TILES (block_n: keys an iteration; num_warps, num_stages)."""
    t, nh, d = qa.shape
    dev = qa.device.index or 0
    cfg = {**(SMALL_DECODE_TILES if dev in _SMALL_TILES_ON else DECODE_TILES), **(tiles or {})}
    units = lay.units
    n_units = units["seq"].shape[0]
    qa = qa.to(kv_pool.dtype).contiguous()
    op = torch.empty((n_units, nh, rank), dtype=torch.float32, device=qa.device)
    lp = torch.empty((n_units, nh), dtype=torch.float32, device=qa.device)
    args = (qa, kv_pool, op, lp, units["seq"], units["lo"], units["hi"], lay.cu_q, lay.cu_k, lay.seqused_k, scale,
            kv_pool.stride(0))  # fmt: skip
    consts = {"NH": nh, "H_PAD": max(16, triton.next_power_of_2(nh)), "R": rank, "P": d - rank}

    def launch(c: dict) -> None:
        _mla_decode_kernel[(n_units,)](*args, **consts, BLOCK_N=c["block_n"], num_warps=c["num_warps"],
                                       num_stages=c["num_stages"])  # fmt: skip

    try:
        launch(cfg)
    except triton.runtime.errors.OutOfResources:
        if tiles or dev in _SMALL_TILES_ON:
            raise
        _SMALL_TILES_ON.add(dev)  # this GPU takes the small tiles from now on
        launch(SMALL_DECODE_TILES)
    return op, lp
