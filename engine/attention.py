"""Variable-length attention over a token-pool KV cache, for prefill, decode and mixed batches.

The KV cache of one layer is a pool of token slots [pool_tokens, kv_heads, head_dim]; each
sequence of a step owns a contiguous region of it (its cached prefix, then its new tokens).
One call serves every kind of step: sequence i has q_i new tokens and attends causally to the
first k_i = prior_i + q_i tokens of its region, so a decode is q_i = 1 and a chunked prefill
attends to its cached prefix plus itself.

On CUDA this is FlashAttention-2's varlen kernel as torch ships it (`_flash_attention_forward`
with `seqused_k`): it reads exactly k_i keys per sequence (what the cost model's KV-read bytes
assume), takes grouped KV heads natively, aligns the causal mask bottom-right, handles sliding
windows, and its arguments are device tensors of fixed shape, so a decode step can be captured
in a CUDA graph and replayed with other context lengths. We chose it over flex_attention (a
block mask rebuilt per batch, compile time) and over a gather of padded contexts plus SDPA
(reads max-context bytes for every sequence). Decode-only steps (one query per sequence) use our
own Triton flash-decoding kernel instead (engine.fused.decode_attention): FA2's varlen kernel gives
one CTA per (sequence, query head), so it re-reads each KV head for every query head of its group
and leaves most SMs idle at small batch (measured on an H100 at batch 1, context 512: 22 µs a
layer for 2 MB of KV). Whole fresh prompts of equal length go through SDPA's cuDNN backend, faster
than FA2 on Hopper for long causal prefills. Elsewhere a per-sequence masked SDPA serves as the reference and the CPU path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.fused import decode_attention, decode_attention_supported


@dataclass(slots=True)
class StepLayout:
    """Where each sequence of one step lives: host lists plus the device tensors the kernels read.

    q_lens/k_lens/k_starts per sequence; positions and slots per new token (its position in the
    sequence and its slot in the pool).
    """

    q_lens: list[int]
    k_lens: list[int]
    k_starts: list[int]
    cu_q: torch.Tensor  # int32 [S+1]
    cu_k: torch.Tensor  # int32 [S+1], region starts (cu_k[i] = k_starts[i])
    seqused_k: torch.Tensor  # int32 [S]
    positions: torch.Tensor  # int64 [T]
    slots: torch.Tensor  # int64 [T]
    max_q: int
    max_k: int

    @property
    def num_tokens(self) -> int:
        return sum(self.q_lens)


def plan_layout(q_lens: list[int], prior_lens: list[int], base: int = 0, starts: list | None = None) -> dict:
    """Host-side layout: regions laid end to end from slot `base` (or at `starts`), new tokens after each prefix."""
    k_lens = [p + q for p, q in zip(prior_lens, q_lens, strict=True)]
    k_starts, positions, slots = [], [], []
    off = base
    for i, (q, p, k) in enumerate(zip(q_lens, prior_lens, k_lens, strict=True)):
        start = off if starts is None or starts[i] is None else starts[i]
        k_starts.append(start)
        positions.extend(range(p, p + q))
        slots.extend(range(start + p, start + p + q))
        off = max(off, start + k)
    cu_q = [0]
    for q in q_lens:
        cu_q.append(cu_q[-1] + q)
    return {
        "q_lens": list(q_lens), "k_lens": k_lens, "k_starts": k_starts, "cu_q": cu_q,
        "cu_k": k_starts + [max(off, k_starts[-1] if k_starts else 0)], "positions": positions, "slots": slots, "end": off,
    }


def make_layout(q_lens: list[int], prior_lens: list[int], device, base: int = 0, starts: list[int] | None = None,
                max_q: int | None = None, max_k: int | None = None) -> StepLayout:
    """A StepLayout with fresh device tensors (eager steps and tests); `starts` pins each region's first slot."""
    p = plan_layout(q_lens, prior_lens, base, starts)

    def i32(v):
        return torch.tensor(v, dtype=torch.int32, device=device)

    def i64(v):
        return torch.tensor(v, dtype=torch.int64, device=device)

    return StepLayout(
        p["q_lens"], p["k_lens"], p["k_starts"], i32(p["cu_q"]), i32(p["cu_k"]), i32(p["k_lens"]),
        i64(p["positions"]), i64(p["slots"]),
        max_q if max_q is not None else max(q_lens), max_k if max_k is not None else max(p["k_lens"]),
    )


def flash_available(device) -> bool:
    return torch.device(device).type == "cuda"


def varlen_attention(q, k_pool, v_pool, lay: StepLayout, scale: float, window: int = 0) -> torch.Tensor:
    """Causal attention of each sequence's new queries over its region; q [T, H, d] → [T, H, d]."""
    if lay.max_q == 1 and decode_attention_supported(q, k_pool):
        return decode_attention(q, k_pool, v_pool, lay.cu_k, lay.seqused_k, scale, window, lay.max_k)
    if flash_available(q.device) and _cudnn_state["ok"] is not False and _uniform_fresh_prompts(lay, window):
        out = _cudnn_prefill(q, k_pool, v_pool, lay, scale)
        if out is not None:
            return out
    if flash_available(q.device):
        out = torch.ops.aten._flash_attention_forward(
            q, k_pool, v_pool, lay.cu_q, lay.cu_k, lay.max_q, lay.max_k, 0.0, True, False,
            scale=scale, window_size_left=window - 1 if window else -1, window_size_right=0,
            seqused_k=lay.seqused_k,
        )[0]
        return out
    return reference_attention(q, k_pool, v_pool, lay, scale, window)


_cudnn_state: dict[str, bool | None] = {"ok": None, "gqa": True}


def _uniform_fresh_prompts(lay: StepLayout, window: int) -> bool:
    """Equal-length prompts with no cached prefix, laid back to back: a dense causal batch."""
    q0 = lay.q_lens[0]
    return (not window and q0 > 1 and all(q == q0 for q in lay.q_lens) and lay.k_lens == lay.q_lens
            and all(s == lay.k_starts[0] + i * q0 for i, s in enumerate(lay.k_starts)))


def _cudnn_prefill(q, k_pool, v_pool, lay: StepLayout, scale: float):
    """Whole prompts through SDPA's cuDNN backend (about 1.5x FA2's rate on Hopper); None if unavailable."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    n, t = len(lay.q_lens), lay.q_lens[0]
    nh, nkv, d = q.shape[1], k_pool.shape[1], q.shape[2]
    s0 = lay.k_starts[0]
    qb = q.view(n, t, nh, d).transpose(1, 2)
    kb = k_pool[s0:s0 + n * t].view(n, t, nkv, d).transpose(1, 2)
    vb = v_pool[s0:s0 + n * t].view(n, t, nkv, d).transpose(1, 2)
    try:
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            if _cudnn_state["gqa"]:
                try:
                    o = F.scaled_dot_product_attention(qb, kb, vb, is_causal=True, scale=scale, enable_gqa=nkv != nh)
                except RuntimeError:
                    _cudnn_state["gqa"] = False
            if not _cudnn_state["gqa"]:
                rep = nh // nkv
                o = F.scaled_dot_product_attention(qb, kb.repeat_interleave(rep, 1), vb.repeat_interleave(rep, 1),
                                                   is_causal=True, scale=scale)
    except RuntimeError:
        _cudnn_state["ok"] = False
        return None
    _cudnn_state["ok"] = True
    return o.transpose(1, 2).reshape(n * t, nh, d)


def reference_attention(q, k_pool, v_pool, lay: StepLayout, scale: float, window: int = 0) -> torch.Tensor:
    """Per-sequence masked SDPA in float32: the definition the fast path must match."""
    t, nh, d = q.shape
    nkv = k_pool.shape[1]
    out = torch.zeros((t, nh, v_pool.shape[-1]), dtype=q.dtype, device=q.device)
    q0 = 0
    for ql, kl, ks in zip(lay.q_lens, lay.k_lens, lay.k_starts, strict=True):
        if ql == 0:
            continue
        qs = q[q0:q0 + ql].float().transpose(0, 1)  # [H, q, d]
        ks_ = k_pool[ks:ks + kl].float().transpose(0, 1).repeat_interleave(nh // nkv, dim=0)
        vs_ = v_pool[ks:ks + kl].float().transpose(0, 1).repeat_interleave(nh // nkv, dim=0)
        qpos = torch.arange(kl - ql, kl, device=q.device)[:, None]
        kpos = torch.arange(kl, device=q.device)[None, :]
        mask = kpos <= qpos
        if window:
            mask &= kpos > qpos - window
        o = F.scaled_dot_product_attention(qs, ks_, vs_, attn_mask=mask, scale=scale)
        out[q0:q0 + ql] = o.transpose(0, 1).to(q.dtype)
        q0 += ql
    return out
