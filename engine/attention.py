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
layer for 2 MB of KV). Prompt chunks take the FA2 kernel, with one exception: a whole fresh prompt
(nothing cached before it) longer than FRESH_MIN_TOKENS runs through SDPA's cuDNN backend, which runs
long causal prefills at about twice FA2's rate on an H100 (8k tokens: 1.7 ms a layer with FA2, 0.9
with cuDNN). cuDNN builds an execution plan for every new shape (60-100 ms of host time), so such a
prompt runs padded to a multiple of FRESH_BUCKET tokens (padding rows come after the real ones, so the
causal mask keeps them out of every real row; their outputs are dropped) and a serving loop builds the
plans of all bucket lengths at warm-up (`prebuild_fresh`). The threshold keeps the second kernel out of
the CUDA-graph steps (at most 2,048 tokens, whose sequence boundaries are not fixed at capture). The
cost model follows the same rule with its own fitted term for these prompts (`attention_fresh` in a
profile; core.cost_model). Elsewhere a per-sequence masked SDPA serves as the reference and the
CPU path.

A mixed step (prefill chunks, then decodes) makes two calls per layer, as vLLM's FlashInfer backend
does: the chunks through the prefill path, the decodes through the decode kernel, writing into the
same output. The decode kernel's work is split into units of at most `chunk` keys, `chunk` chosen
from the step's total context (`plan_decode_units`), so its time follows total KV bytes rather than
the longest context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend

from core.hardware import FRESH_PREFILL_BUCKET, FRESH_PREFILL_MIN_TOKENS
from core.kv_cache import padded
from engine.fused import decode_attention, decode_attention_supported

FRESH_MIN_TOKENS = FRESH_PREFILL_MIN_TOKENS  # whole fresh prompts of at least this many tokens: cuDNN
FRESH_BUCKET = FRESH_PREFILL_BUCKET  # ... padded to a multiple of this many tokens


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
    # sequences [0, n_prefill) take the prefill path, [n_prefill, S) are single-query decodes;
    # sequences from n_real on are CUDA-graph padding, whose outputs nobody reads
    n_prefill: int = -1
    n_real: int = -1
    units: dict = field(
        default_factory=dict
    )  # the decode group's work units (device tensors): plan_decode_units
    # one unit per decode sequence (whole_units): the decode kernel writes the output, no combine kernel
    whole_units: bool = False
    # what the layers work out once a step and share (engine.mla's plain-form gather plan, by name)
    shared: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n_prefill < 0:
            self.n_prefill = prefill_count(self.q_lens)
        if self.n_real < 0:
            self.n_real = len(self.q_lens)


# Decode work units: UNIT_MIN_KEYS keys below which a unit is not split further (a unit loads its
# queries and writes a partial result; four 64-key blocks amortise that), and the CTAs per SM the
# units are sized for. 2 as the first kernel (fixed splits) used: 4 made a batch-1, 8k-context
# layer take 33 µs instead of 18 on an H100 (twice the units to merge, half the keys per unit).
UNIT_BLOCK = 64
UNIT_MIN_KEYS = 256
UNIT_CTAS_PER_SM = 2
# From this many decode sequences per unit of the target (sequences x KV heads >= UNIT_CTAS_PER_SM per SM), the
# sequences alone fill the GPU: one unit each, whose normalised output is the sequence's (no partial results
# in fp32, no combine kernel). A step's size decides it (a graph's grid and buffers are fixed by its size).
# 0.9: on an H200 (benchmarks/moe_gpu_check.py, Qwen2.5-7B, 1,088-token contexts, target 66) whole units beat
# the split at every batch measured, 64 (fill 0.97) / 128 / 256: 5.62 / 6.76 / 10.80 ms against 6.02 / 7.18 /
# 11.41 ms; fills below 0.97 are not measured, so the rule stays near 1.
WHOLE_UNITS_MIN_FILL = 0.9
# ... and only when no sequence is longer than this many times the split plan's share (total keys / target). On
# an H200 (benchmarks/moe_gpu_check.py, Qwen2.5-7B, mean context 1,088, target 66) one unit each took 5.66 / 6.75 /
# 10.63 ms at batch 64 / 128 / 256 of equal contexts against 6.04 / 7.20 / 11.30 split, and 11.36 / 10.33 / 20.30
# against 6.11 / 7.76 / 12.53 with lognormal contexts (longest 9.4 / 6.1 / 16 times the mean): the longest
# sequence's program set the step. Equal contexts at batch 64 have a longest of 1.03 shares; 1.1 leaves them whole.
WHOLE_MAX_SHARE = 1.1
# ... and only when no sequence is longer than WHOLE_MAX_OVER_MEAN times the mean context. On an H200
# (benchmarks/decode_units.py, session 15) one unit each against the best split plan at 32-256 sequences: equal
# contexts 0.87-1.05x; lognormal contexts with the longest 2.1x the mean 1.04x, 2.3-3.4x the mean 1.07-1.73x,
# 4-9x the mean 1.2-2.8x (short 128-key contexts aside, where one unit each won up to 3.4x).
WHOLE_MAX_OVER_MEAN = 1.5
# Split plans aim at target x waves units, waves the smallest power of two from 2 to SPLIT_WAVES_MAX holding the
# sequences per unit of the target (`split_waves`): at large batches a unit is then about the mean context, so
# the longest unit is a small share of what each SM runs and the step does not wait on one program. On an H200
# (benchmarks/decode_units.py, session 15; Llama-3.1-8B's and Qwen2.5-7B's heads, lognormal contexts of mean
# 512-4,096, 64-256 sequences) one wave (units up to total / target keys, the rule before) took 1.1-1.45x the
# best cut; the best was 2 waves at about target sequences, 4 at twice, 4-8 at 4-8 times.
SPLIT_WAVES_MAX = 8


def prefill_count(q_lens: list[int]) -> int:
    """Sequences before the trailing run of single-query ones (the decodes): the prefill group."""
    n = len(q_lens)
    while n and q_lens[n - 1] == 1:
        n -= 1
    return n


def unit_target(sms: int, kv_heads: int) -> int:
    """How many decode work units a step aims for: UNIT_CTAS_PER_SM CTAs per SM over the KV heads."""
    return max(1, UNIT_CTAS_PER_SM * sms // max(kv_heads, 1))


# MLA's decode units (engine.mla's kernel): every head of a unit in one program over the shared latent, and one wave
# of units (its kernel and tiles were tuned on one wave, benchmarks/mla_decode_tiles.py)
MLA_UNIT_HEADS = 1
MLA_UNIT_WAVES = 1


def unit_heads(spec) -> int:
    """What a step's unit target divides the GPU's programs by: the model's KV heads (one program a unit and KV
    head), or MLA_UNIT_HEADS. The serving executor and the calibration runner both plan with it, so they cut a
    step the same way."""
    return MLA_UNIT_HEADS if spec.is_mla else spec.num_kv_heads


def unit_waves(spec) -> int | None:
    """The `waves` a model's decode steps plan with: MLA_UNIT_WAVES, else None (`split_waves` of the step's size)."""
    return MLA_UNIT_WAVES if spec.is_mla else None


def whole_units(n_decode: int, target: int) -> bool:
    """Whether a decode group of `n_decode` sequence slots may run one unit per sequence (no split, no combine):
    enough of them to fill the GPU (balanced_units then asks whether their lengths allow it)."""
    return n_decode > 0 and n_decode >= WHOLE_UNITS_MIN_FILL * max(target, 1)


def split_waves(n_decode: int, target: int) -> int:
    """Units a split plan of `n_decode` sequences aims at, per unit of the target: the smallest power of two from 2
    to SPLIT_WAVES_MAX that is at least n_decode / target."""
    w = 2
    while w < SPLIT_WAVES_MAX and w * max(target, 1) < n_decode:
        w *= 2
    return w


def balanced_units(k_lens, target: int) -> bool:
    """Whether the decode group with contexts `k_lens` runs one unit per sequence: whole_units by count, and no
    sequence longer than WHOLE_MAX_SHARE of the keys one of `target` units would take in a split plan, nor than
    WHOLE_MAX_OVER_MEAN times the mean. With one unit each, the longest sequence's program sets the step's time; a
    split plan cuts every unit to a share of the keys and pays for a combine kernel and fp32 partials."""
    k = np.asarray(k_lens, dtype=np.int64).reshape(-1)
    if not whole_units(len(k), target):
        return False
    top, total = int(k.max()), int(k.sum())
    return top <= WHOLE_MAX_SHARE * total / max(target, 1) and top * len(k) <= WHOLE_MAX_OVER_MEAN * total


def plan_decode_units(
    k_lens,
    target: int,
    seq0: int = 0,
    cap: int | None = None,
    arrays: bool = False,
    whole: bool | None = None,
    waves: int | None = None,
) -> dict:
    """Split each decode sequence's keys [0, k) into units of at most `chunk` keys.

    chunk = max(UNIT_MIN_KEYS, total keys / (target · waves)) rounded up to the kernel's block (waves: default
    `split_waves`; MLA's kernel plans with 1), so the units number at most target · waves + len(k_lens) and no
    unit is longer than a share of what one SM runs: the kernel's time follows the total KV bytes, not the
    longest context. Units are laid out sequence by sequence; `seq_units[j]:seq_units[j+1]` are sequence j's. `seq` holds global sequence indices
    (seq0 + j); with `cap`, the tables are padded to `cap` units with seq = -1 (idle programs of a
    CUDA graph's fixed grid). Vectorised (no per-sequence Python): the serving loop plans every decode
    step with it. Lists, or int64 numpy arrays with `arrays`. With `whole` (default: `balanced_units` of
    k_lens)), chunk covers the longest sequence: one unit per sequence with keys ("whole" in the result).
    """
    k = np.asarray(k_lens, dtype=np.int64).reshape(-1)
    total = int(k.sum())
    whole = balanced_units(k, target) if whole is None else whole
    waves = split_waves(len(k), target) if waves is None else waves
    share = int(k.max()) if whole and len(k) else math.ceil(total / max(target * waves, 1))
    chunk = max(UNIT_MIN_KEYS, math.ceil(share / UNIT_BLOCK) * UNIT_BLOCK)
    per = -(-k // chunk)  # units per sequence (0 for an empty one)
    seq_units = np.zeros(len(k) + 1, dtype=np.int64)
    np.cumsum(per, out=seq_units[1:])
    n = int(seq_units[-1])
    owner = np.repeat(np.arange(len(k), dtype=np.int64), per)
    lo = (np.arange(n, dtype=np.int64) - seq_units[:-1][owner]) * chunk
    hi = np.minimum(lo + chunk, k[owner])
    seq = owner + seq0
    if cap is not None:
        if n > cap:
            raise ValueError(f"{n} decode units exceed the capacity {cap}")
        pad = cap - n
        seq = np.concatenate([seq, np.full(pad, -1, dtype=np.int64)])
        lo = np.concatenate([lo, np.zeros(pad, dtype=np.int64)])
        hi = np.concatenate([hi, np.zeros(pad, dtype=np.int64)])
    if not arrays:
        seq, lo, hi, seq_units = seq.tolist(), lo.tolist(), hi.tolist(), seq_units.tolist()
    return {
        "seq": seq,
        "lo": lo,
        "hi": hi,
        "seq_units": seq_units,
        "count": n,
        "chunk": chunk,
        "whole": whole,
    }


def unit_capacity(target: int, n_decode: int, whole: bool | None = None, waves: int | None = None) -> int:
    """An upper bound of plan_decode_units' count for up to n_decode sequences (the fixed grid of a graph), one
    unit each when `whole` (default: whole_units by count); `waves` as plan_decode_units takes it."""
    whole = whole_units(n_decode, target) if whole is None else whole
    if whole:
        return n_decode
    return target * (split_waves(n_decode, target) if waves is None else waves) + n_decode


def plan_layout(
    q_lens: list[int],
    prior_lens: list[int],
    base: int = 0,
    starts: list | None = None,
    n_prefill: int | None = None,
    target: int = 64,
    cap: int | None = None,
    whole: bool | None = None,
    waves: int | None = None,
) -> dict:
    """Host-side layout: regions laid end to end from slot `base` (or at `starts`), new tokens after each prefix.

    Sequences from `n_prefill` on (default: the trailing single-query ones) are decodes, split into
    work units for `target` (see plan_decode_units).
    """
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
    n_pre = prefill_count(list(q_lens)) if n_prefill is None else n_prefill
    units = plan_decode_units(k_lens[n_pre:], target, seq0=n_pre, cap=cap, whole=whole, waves=waves)
    return {
        "q_lens": list(q_lens),
        "k_lens": k_lens,
        "k_starts": k_starts,
        "cu_q": cu_q,
        "cu_k": k_starts + [max(off, k_starts[-1] if k_starts else 0)],
        "positions": positions,
        "slots": slots,
        "end": off,
        "n_prefill": n_pre,
        "units": units,
    }


_SMS: dict[int, int] = {}


def device_sms(device, off_cuda: int = 16) -> int:
    """The device's SM count (cached per CUDA device); `off_cuda` elsewhere, the CPU paths' stand-in."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return off_cuda
    i = dev.index if dev.index is not None else torch.cuda.current_device()
    if i not in _SMS:
        _SMS[i] = torch.cuda.get_device_properties(i).multi_processor_count
    return _SMS[i]


def unit_tensors(units: dict, device) -> dict:
    """The decode unit tables as int32 device tensors (what the decode kernel reads)."""
    return {
        k: torch.tensor(units[k], dtype=torch.int32, device=device) for k in ("seq", "lo", "hi", "seq_units")
    }


def make_layout(
    q_lens: list[int],
    prior_lens: list[int],
    device,
    base: int = 0,
    starts: list[int] | None = None,
    max_q: int | None = None,
    max_k: int | None = None,
    kv_heads: int = 8,
    waves: int | None = None,
) -> StepLayout:
    """A StepLayout with new device tensors (eager steps and tests); `starts` pins each region's first slot;
    `waves` as plan_decode_units takes it (1 for MLA's kernel)."""
    p = plan_layout(
        q_lens, prior_lens, base, starts, target=unit_target(device_sms(device), kv_heads), waves=waves
    )

    def i32(v):
        return torch.tensor(v, dtype=torch.int32, device=device)

    def i64(v):
        return torch.tensor(v, dtype=torch.int64, device=device)

    return StepLayout(
        p["q_lens"],
        p["k_lens"],
        p["k_starts"],
        i32(p["cu_q"]),
        i32(p["cu_k"]),
        i32(p["k_lens"]),
        i64(p["positions"]),
        i64(p["slots"]),
        max_q if max_q is not None else max(q_lens),
        max_k if max_k is not None else max(p["k_lens"]),
        p["n_prefill"],
        len(q_lens),
        unit_tensors(p["units"], device),
        p["units"]["whole"],
    )


def flash_available(device) -> bool:
    return torch.device(device).type == "cuda"


def varlen_attention(q, k_pool, v_pool, lay: StepLayout, scale: float, window: int = 0) -> torch.Tensor:
    """Causal attention of each sequence's new queries over its region; q [T, H, d] → [T, H, d]."""
    if not flash_available(q.device):
        return reference_attention(q, k_pool, v_pool, lay, scale, window)
    n_seqs = len(lay.q_lens)
    fast_decode = decode_attention_supported(q, k_pool) and bool(lay.units)
    if lay.n_prefill == 0 and fast_decode:
        return decode_attention(q, k_pool, v_pool, lay, scale, window)
    n_pre = lay.n_prefill if fast_decode else n_seqs
    out = _prefill_group(q, k_pool, v_pool, lay, scale, window, n_pre)
    if n_pre < n_seqs:  # the decodes of a mixed step, written into the same output rows
        decode_attention(q, k_pool, v_pool, lay, scale, window, out=out)
    return out


def _prefill_group(q, k_pool, v_pool, lay: StepLayout, scale: float, window: int, n_pre: int) -> torch.Tensor:
    """Attention of sequences [0, n_pre) into a [T, H, d] output; rows of later sequences are left for the decodes.

    Whole fresh prompts of at least FRESH_MIN_TOKENS go through cuDNN one by one; the runs of other
    sequences between them through FA2's varlen kernel."""
    fresh = fresh_sequences(lay, window, n_pre)
    if not fresh:
        return _flash(
            q, k_pool, v_pool, lay.cu_q, lay.cu_k, lay.seqused_k, lay.max_q, lay.max_k, scale, window, n_pre
        )
    rows = [0]
    for ql in lay.q_lens[:n_pre]:
        rows.append(rows[-1] + ql)
    out = None
    a = 0
    for i in [*fresh, n_pre]:
        if i > a:  # FA2 over sequences [a, i)
            r0, r1 = rows[a], rows[i]
            seg = _flash(q[r0:r1], k_pool, v_pool, lay.cu_q[a : i + 1] - r0, lay.cu_k[a : i + 1],
                         lay.seqused_k[a:i], max(lay.q_lens[a:i]), max(lay.k_lens[a:i]), scale, window, i - a)  # fmt: skip
            out = _into(out, q, r0, seg)
        if i < n_pre:
            o = _cudnn_prefill(q[rows[i] : rows[i + 1]], k_pool, v_pool, lay.k_starts[i], scale)
            if o is None:  # cuDNN unavailable (now marked so): the whole group through FA2 after all
                return _prefill_group(q, k_pool, v_pool, lay, scale, window, n_pre)
            out = _into(out, q, rows[i], o)
        a = i + 1
    return out


def _into(out, q, row: int, part: torch.Tensor) -> torch.Tensor:
    """Write `part` at `row` of the step's output (allocated on first use; a part covering every row is it)."""
    if out is None:
        if row == 0 and part.shape[0] == q.shape[0]:
            return part
        out = torch.empty((q.shape[0], q.shape[1], part.shape[-1]), dtype=q.dtype, device=q.device)
    out[row : row + part.shape[0]] = part
    return out


def _flash(q, k_pool, v_pool, cu_q, cu_k, used, max_q: int, max_k: int, scale: float, window: int, n: int):
    """FA2 varlen over the first n sequences of the tables (the rest of the rows are left alone)."""
    if cu_q.shape[0] > n + 1:
        cu_q, cu_k, used = cu_q[: n + 1], cu_k[: n + 1], used[:n]
    return torch.ops.aten._flash_attention_forward(
        q,
        k_pool,
        v_pool,
        cu_q,
        cu_k,
        max_q,
        max_k,
        0.0,
        True,
        False,
        scale=scale,
        window_size_left=window - 1 if window else -1,
        window_size_right=0,
        seqused_k=used,
    )[0]


_cudnn_state: dict[str, bool | None] = {"ok": None, "gqa": True}
# SDPA's backend for whole fresh prompts (the tests swap in MATH, on the CPU)
FRESH_BACKENDS = [SDPBackend.CUDNN_ATTENTION]


def fresh_sequences(lay: StepLayout, window: int, n_pre: int) -> list[int]:
    """The sequences of the prefill group that take the fresh-prompt path (cuDNN): whole fresh prompts of at
    least FRESH_MIN_TOKENS in a layer without a sliding window, where cuDNN runs."""
    if window or _cudnn_state["ok"] is False:
        return []
    return [
        i
        for i in range(min(n_pre, lay.n_real))
        if lay.q_lens[i] >= FRESH_MIN_TOKENS and lay.k_lens[i] == lay.q_lens[i]
    ]


def fresh_rule(device) -> tuple[int, int] | None:
    """(min tokens, bucket) of the fresh-prompt path on `device` (what CostModel.fresh describes), or None
    where it does not run (the CPU, or cuDNN failed here)."""
    if torch.device(device).type != "cuda" or _cudnn_state["ok"] is False:
        return None
    return FRESH_MIN_TOKENS, FRESH_BUCKET


def _cudnn_prefill(q, k_pool, v_pool, s0: int, scale: float, bucket: int | None = None):
    """One whole fresh prompt (q [t, H, d], its keys at pool slots s0...) through SDPA's cuDNN backend, padded
    to a multiple of `bucket` (default FRESH_BUCKET; exact where the pool ends first); None if unavailable."""
    from torch.nn.attention import sdpa_kernel

    real, nh, d = q.shape
    nkv = k_pool.shape[1]
    bucket = FRESH_BUCKET if bucket is None else bucket
    t = padded(real, bucket)
    if s0 + t > k_pool.shape[0]:
        t = real
    if t != real:  # padding keys are whatever the pool holds past the prompt: no real row attends to them
        q = F.pad(q, (0, 0, 0, 0, 0, t - real))
    qb = q.reshape(1, t, nh, d).transpose(1, 2)
    kb = k_pool[s0 : s0 + t].unsqueeze(0).transpose(1, 2)
    vb = v_pool[s0 : s0 + t].unsqueeze(0).transpose(1, 2)
    try:
        with sdpa_kernel(FRESH_BACKENDS):
            o = None
            if _cudnn_state["gqa"]:
                try:
                    o = F.scaled_dot_product_attention(
                        qb, kb, vb, is_causal=True, scale=scale, enable_gqa=nkv != nh
                    )
                except RuntimeError:
                    _cudnn_state["gqa"] = False
            if o is None:  # this cuDNN build refused grouped heads: give each query head its KV copy
                kb, vb = _repeat_heads(kb, nh // nkv), _repeat_heads(vb, nh // nkv)
                o = F.scaled_dot_product_attention(qb, kb, vb, is_causal=True, scale=scale)
    except RuntimeError:
        _cudnn_state["ok"] = False
        return None
    _cudnn_state["ok"] = True
    return o.transpose(1, 2).reshape(t, nh, o.shape[-1])[:real]


def _repeat_heads(x: torch.Tensor, rep: int) -> torch.Tensor:
    """[B, kv_heads, T, d] -> [B, kv_heads * rep, T, d], each KV head repeated for its query heads (one
    copy through a broadcast view, sizes known on the host)."""
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, rep, t, d).reshape(b, h * rep, t, d)


def prebuild_fresh(k_pool: torch.Tensor, v_pool: torch.Tensor, num_heads: int, max_tokens: int) -> int:
    """Run the fresh-prompt path once at every bucket length from FRESH_MIN_TOKENS up to `max_tokens` (within
    the pool), so that no cuDNN plan is built while requests wait, and check that padding leaves the real
    rows as an exact-length run gives them. Returns how many lengths ran (0 on the CPU or without cuDNN)."""
    if k_pool.device.type != "cuda" or _cudnn_state["ok"] is False:
        return 0
    d = k_pool.shape[-1]
    scale = 1.0 / math.sqrt(d)
    first = padded(FRESH_MIN_TOKENS, FRESH_BUCKET)
    n = 0
    for t in range(first, min(max_tokens, k_pool.shape[0]) + 1, FRESH_BUCKET):
        q = torch.randn((t, num_heads, d), dtype=k_pool.dtype, device=k_pool.device)
        if _cudnn_prefill(q, k_pool, v_pool, 0, scale) is None:
            return 0
        n += 1
    t = first + 37
    if n and t + FRESH_BUCKET <= k_pool.shape[0]:
        q = torch.randn((t, num_heads, d), dtype=k_pool.dtype, device=k_pool.device)
        bucketed = _cudnn_prefill(q, k_pool, v_pool, 0, scale)
        exact = _cudnn_prefill(q, k_pool, v_pool, 0, scale, bucket=1)
        err = float((bucketed.float() - exact.float()).abs().max())
        if err > 2e-2:
            raise RuntimeError(
                f"cuDNN prefill padded to {FRESH_BUCKET}-token buckets differs from exact lengths by {err}"
            )
    return n


def reference_attention(q, k_pool, v_pool, lay: StepLayout, scale: float, window: int = 0) -> torch.Tensor:
    """Per-sequence masked SDPA in float32: the definition the fast path must match."""
    t, nh, d = q.shape
    nkv = k_pool.shape[1]
    out = torch.zeros((t, nh, v_pool.shape[-1]), dtype=q.dtype, device=q.device)
    q0 = 0
    for ql, kl, ks in zip(lay.q_lens, lay.k_lens, lay.k_starts, strict=True):
        if ql == 0:
            continue
        qs = q[q0 : q0 + ql].float().transpose(0, 1)  # [H, q, d]
        ks_ = k_pool[ks : ks + kl].float().transpose(0, 1).repeat_interleave(nh // nkv, dim=0)
        vs_ = v_pool[ks : ks + kl].float().transpose(0, 1).repeat_interleave(nh // nkv, dim=0)
        qpos = torch.arange(kl - ql, kl, device=q.device)[:, None]
        kpos = torch.arange(kl, device=q.device)[None, :]
        mask = kpos <= qpos
        if window:
            mask &= kpos > qpos - window
        o = F.scaled_dot_product_attention(qs, ks_, vs_, attn_mask=mask, scale=scale)
        out[q0 : q0 + ql] = o.transpose(0, 1).to(q.dtype)
        q0 += ql
    return out


def split_reference(q, k_pool, v_pool, lay: StepLayout, scale: float, window: int = 0) -> torch.Tensor:
    """The CUDA mixed-step path in plain torch (tests): prefill group by the reference, decodes unit by unit.

    Each decode work unit gives a partial softmax over its keys and its log-sum-exp, merged per
    sequence as the combine kernel does, so the partition and the merge are checked on the CPU.
    """
    n_pre = lay.n_prefill
    out = reference_attention(q, k_pool, v_pool, lay, scale, window)
    out[lay.cu_q[n_pre] :] = 0  # rows the decode units must fill
    nh, nkv = q.shape[1], k_pool.shape[1]
    u = {k: v.tolist() for k, v in lay.units.items()}
    parts: dict[int, list] = {}
    for s, lo, hi in zip(u["seq"], u["lo"], u["hi"], strict=True):
        if s < 0:
            continue
        k_len, start = lay.k_lens[s], lay.k_starts[s]
        lo = max(lo, k_len - window) if window else lo
        if hi <= lo:
            continue
        row = int(lay.cu_q[s])
        ks = k_pool[start + lo : start + hi].float().repeat_interleave(nh // nkv, dim=1)  # [n, H, d]
        vs = v_pool[start + lo : start + hi].float().repeat_interleave(nh // nkv, dim=1)
        sc = torch.einsum("hd,nhd->hn", q[row].float(), ks) * scale
        lse = torch.logsumexp(sc, dim=1)  # [H]
        o = torch.einsum("hn,nhd->hd", torch.softmax(sc, dim=1), vs)
        parts.setdefault(s, []).append((lse, o))
    for s, ps in parts.items():
        lse = torch.stack([p[0] for p in ps])  # [U, H]
        w = torch.softmax(lse, dim=0)
        o = (w[:, :, None] * torch.stack([p[1] for p in ps])).sum(0)
        if lay.q_lens[s]:
            out[int(lay.cu_q[s])] = o.to(out.dtype)
    return out
