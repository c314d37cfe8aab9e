"""Step time of one model step from a roofline cost model (DESIGN.md, "Modelling rules").

For a batch of prefill chunks and decode sequences, the step time is the sum over operation
groups (GEMMs per weight matrix, routed experts, LM head, attention prefill, attention decode,
element-wise kernels) of max(FLOPs / (η_c · peak), bytes / (η_m · bandwidth)) with size-dependent
efficiencies from the hardware profile, plus fixed overheads. `step_time(profile, model, batch)` is
the one function both the simulator and calibration use.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.hardware import HardwareProfile, OpEfficiency
from simulator.model_spec import ModelSpec, dtype_bytes

ACT_BYTES = 2.0  # activations stay in 16-bit in every engine we model
# Kernels per layer in a fused engine step: norm, qkv, rope, attention, o, norm, gate_up, act, down.
KERNELS_PER_LAYER = 9


@dataclass(slots=True)
class BatchShape:
    """What one step computes, summarised so that the cost is O(1) in the batch size.

    prefill_pairs: causal (query, key) pairs over all prefill chunks, for full-attention layers;
    a chunk of c new tokens after p cached ones has c·p + c·(c+1)/2. sliding_prefill_pairs: the same
    with keys limited to the window. prefill_context_tokens: cached tokens the chunks attend to
    (read from the KV cache). decode_context_tokens: sum over decode sequences of their context.
    """

    prefill_tokens: int = 0
    prefill_seqs: int = 0
    prefill_pairs: float = 0.0
    sliding_prefill_pairs: float = 0.0
    prefill_context_tokens: int = 0
    decode_seqs: int = 0
    decode_context_tokens: int = 0
    logits_tokens: int = -1  # tokens that need logits; default: decodes + prefills

    @property
    def tokens(self) -> int:
        return self.prefill_tokens + self.decode_seqs


def chunk_pairs(prior: int, chunk: int, window: int = 0) -> float:
    """Causal attention pairs of `chunk` new tokens after `prior` cached ones (keys within `window` if set)."""
    full = chunk * prior + chunk * (chunk + 1) / 2
    if not window or prior + chunk <= window:
        return full
    # token at position t (1-based) sees min(t, window) keys
    lo, hi = prior + 1, prior + chunk
    below = max(0, min(hi, window) - lo + 1)
    first = lo if below else 0
    s_below = below * (first + first + below - 1) / 2 if below else 0.0
    return s_below + (chunk - below) * window


def op_time(eff: OpEfficiency, flops: float, nbytes: float, peak_flops: float, bandwidth: float) -> float:
    """Roofline time of one kernel."""
    t_c = (flops + eff.compute_ramp_flops) / (eff.compute * peak_flops)
    t_m = (nbytes + eff.memory_ramp_bytes) / (eff.memory * bandwidth)
    return (t_c if t_c > t_m else t_m) + eff.launch_s


def op_times(
    eff: OpEfficiency, flops: np.ndarray, nbytes: np.ndarray, peak_flops: float, bandwidth: float
) -> np.ndarray:
    """Roofline time of one kernel over arrays of problem sizes."""
    t_c = (flops + eff.compute_ramp_flops) / (eff.compute * peak_flops)
    t_m = (nbytes + eff.memory_ramp_bytes) / (eff.memory * bandwidth)
    return np.maximum(t_c, t_m) + eff.launch_s


class CostModel:
    """Per-(profile, model, dtypes) constants, cached so a step costs a few dozen float operations."""

    def __init__(
        self,
        profile: HardwareProfile,
        model: ModelSpec,
        weight_dtype: str = "bf16",
        kv_dtype: str = "bf16",
    ) -> None:
        self.profile, self.model = profile, model
        self.weight_dtype, self.kv_dtype = weight_dtype, kv_dtype
        e = profile.efficiency
        self.eff = e
        self.bw = profile.memory_bandwidth
        self.gemm_peak = profile.peak_flops(weight_dtype)
        self.attn_peak = profile.peak_flops("bf16")
        self.wbytes = dtype_bytes(weight_dtype)
        self.kv_tok_bytes = model.kv_bytes_per_token(kv_dtype)  # full-attention layers, all of them
        self.kv_sliding_tok_bytes = model.sliding_kv_bytes_per_token(kv_dtype)
        self.pair_flops = model.attn_flops_per_pair
        self._gemm_cache: dict[int, float] = {}
        self._fixed_cache: dict[int, float] = {}
        self._coeff_cache: dict[int, tuple] = {}
        m = model
        q_width = m.num_heads * m.q_head_dim
        # per token per layer, bytes of q in / o out of attention kernels
        self._attn_io_per_token = ACT_BYTES * (q_width + m.num_heads * (m.v_head_dim or m.head_dim))
        mlp_i = m.intermediate_size if not m.is_moe else m.moe_intermediate_size * m.experts_per_token
        # element-wise traffic per token per layer: 2 norms, 2 residual adds, rope, activation (read 2I, write I)
        self._elementwise_bytes_per_token = ACT_BYTES * (10 * m.hidden_size + 3 * mlp_i + 2 * q_width)

    # ------------------------------------------------------------------ groups
    def gemm_time(self, tokens: int, logits_tokens: int) -> float:
        """Dense GEMMs (per weight matrix), routed experts and LM head for `tokens` tokens."""
        key = tokens * 65536 + logits_tokens
        t = self._gemm_cache.get(key)
        if t is not None:
            return t
        e, peak, bw, wb = self.eff.gemm, self.gemm_peak, self.bw, self.wbytes
        m = self.model
        t = 0.0
        if tokens:
            for g in m.dense_gemms:
                f = 2.0 * tokens * g.k * g.n
                b = g.k * g.n * wb + tokens * (g.k + g.n) * ACT_BYTES
                t += g.layers * op_time(e, f, b, peak, bw)
            if m.is_moe:
                touched = self.experts_touched(tokens)
                for g in m.expert_gemms:
                    f = 2.0 * tokens * m.experts_per_token * g.k * g.n
                    b = touched * g.k * g.n * wb + tokens * m.experts_per_token * (g.k + g.n) * ACT_BYTES
                    t += g.layers * op_time(e, f, b, peak, bw)
        if logits_tokens:
            g = m.lm_head  # stays in 16-bit
            f = 2.0 * logits_tokens * g.k * g.n
            b = g.k * g.n * 2.0 + logits_tokens * (g.k + g.n) * ACT_BYTES
            t += op_time(e, f, b, self.attn_peak, bw)
        if len(self._gemm_cache) < 200_000:
            self._gemm_cache[key] = t
        return t

    def experts_touched(self, tokens: int) -> float:
        """Expected distinct experts per MoE layer hit by `tokens` tokens with uniform top-k routing."""
        m = self.model
        return m.num_experts * (1.0 - (1.0 - m.experts_per_token / m.num_experts) ** tokens)

    def attention_prefill_time(self, b: BatchShape) -> float:
        if not b.prefill_tokens:
            return 0.0
        m = self.model
        flops = self.pair_flops * (
            b.prefill_pairs * m.full_attention_layers + b.sliding_prefill_pairs * m.sliding_layers
        )
        kv_read = b.prefill_context_tokens * (self.kv_tok_bytes + self.kv_sliding_tok_bytes)
        kv_write = b.prefill_tokens * (self.kv_tok_bytes + self.kv_sliding_tok_bytes)
        io = b.prefill_tokens * self._attn_io_per_token * m.num_layers
        # one kernel per layer: divide the work evenly over layers for the efficiency curve
        L = m.num_layers
        return L * op_time(
            self.eff.attention_prefill, flops / L, (kv_read + kv_write + io) / L, self.attn_peak, self.bw
        )

    def _decode_attn_work(self, n: int, ctx_tokens):
        """Per-layer FLOPs and bytes of decode attention for n sequences with `ctx_tokens` in total."""
        m = self.model
        L = m.num_layers
        ctx_sliding = np.minimum(ctx_tokens, n * m.sliding_window) if m.sliding_layers else 0.0
        flops = self.pair_flops * (ctx_tokens * m.full_attention_layers + ctx_sliding * m.sliding_layers) / L
        nbytes = (ctx_tokens * self.kv_tok_bytes + ctx_sliding * self.kv_sliding_tok_bytes) / L
        return flops, nbytes + n * self._attn_io_per_token

    def attention_decode_time(self, n: int, ctx_tokens: float) -> float:
        """Decode attention for n sequences with `ctx_tokens` context in total."""
        if not n:
            return 0.0
        f, b = self._decode_attn_work(n, float(ctx_tokens))
        return self.model.num_layers * op_time(
            self.eff.attention_decode, float(f), float(b), self.attn_peak, self.bw
        )

    def elementwise_time(self, tokens: int) -> float:
        if not tokens:
            return 0.0
        L = self.model.num_layers
        return L * op_time(
            self.eff.elementwise, 0.0, tokens * self._elementwise_bytes_per_token, self.attn_peak, self.bw
        )

    def overhead_time(self, seqs: int) -> float:
        return self.eff.step_overhead_s + seqs * self.eff.per_sequence_s

    # ------------------------------------------------------------------ steps
    def breakdown(self, b: BatchShape) -> dict[str, float]:
        """Seconds per operation group for one step."""
        logits = b.logits_tokens if b.logits_tokens >= 0 else b.decode_seqs + b.prefill_seqs
        tokens = b.tokens
        return {
            "gemm": self.gemm_time(tokens, logits),
            "attention_prefill": self.attention_prefill_time(b),
            "attention_decode": self.attention_decode_time(b.decode_seqs, b.decode_context_tokens),
            "elementwise": self.elementwise_time(tokens),
            "overhead": self.overhead_time(b.decode_seqs + b.prefill_seqs) if tokens else 0.0,
        }

    def step_time(self, b: BatchShape) -> float:
        """Seconds for one step of the batch."""
        return sum(self.breakdown(b).values())

    def step_split(self, b: BatchShape) -> tuple[float, float]:
        """(step seconds, the part spent on prompt tokens): attention by kind, the rest by token share."""
        p = self.breakdown(b)
        shared = p["gemm"] + p["elementwise"] + p["overhead"]
        frac = b.prefill_tokens / b.tokens if b.tokens else 0.0
        total = shared + p["attention_prefill"] + p["attention_decode"]
        return total, shared * frac + p["attention_prefill"]

    def _decode_fixed(self, n: int) -> float:
        """The part of a decode-only step of n sequences that does not depend on context."""
        t = self._fixed_cache.get(n)
        if t is None:
            t = self.gemm_time(n, n) + self.elementwise_time(n) + self.overhead_time(n)
            self._fixed_cache[n] = t
        return t

    def decode_step_times(self, n: int, ctx_tokens: np.ndarray) -> np.ndarray:
        """Times of consecutive decode-only steps of n sequences whose total context is `ctx_tokens[i]`."""
        f, b = self._decode_attn_work(n, np.asarray(ctx_tokens, dtype=float))
        attn = self.model.num_layers * op_times(self.eff.attention_decode, f, b, self.attn_peak, self.bw)
        return self._decode_fixed(n) + attn

    def _decode_coeffs(self, n: int) -> tuple[float, float, float, float, float]:
        """For n decode sequences without sliding layers: per-layer attention compute and memory times
        as c0 + c1·ctx and m0 + m1·ctx, and the context-free rest of the step."""
        co = self._coeff_cache.get(n)
        if co is None:
            e, m = self.eff.attention_decode, self.model
            L = m.num_layers
            rc, rm = e.compute * self.attn_peak, e.memory * self.bw
            c1 = self.pair_flops * m.full_attention_layers / L / rc
            m1 = self.kv_tok_bytes / L / rm
            c0 = e.compute_ramp_flops / rc
            m0 = (n * self._attn_io_per_token + e.memory_ramp_bytes) / rm
            co = (c0, c1, m0, m1, self._decode_fixed(n) + L * e.launch_s)
            self._coeff_cache[n] = co
        return co

    def decode_step_line(self, n: int, ctx0: float, k: int) -> tuple[float, float] | None:
        """(a, b) with step j of k consecutive decode-only steps taking exactly a + b·j seconds, or None.

        The context grows by n tokens a step, so each roofline term is linear in j; the step time is
        linear over the run when the same term dominates at both ends (no kink inside).
        """
        m = self.model
        ctx1 = ctx0 + n * (k - 1)
        if m.sliding_layers:
            if (ctx0 < n * m.sliding_window) != (ctx1 < n * m.sliding_window):
                return None
            e, L = self.eff.attention_decode, m.num_layers
            rc, rm = e.compute * self.attn_peak, e.memory * self.bw
            f0, b0 = self._decode_attn_work(n, float(ctx0))
            f1, b1 = self._decode_attn_work(n, float(ctx1))
            c0, m0 = (f0 + e.compute_ramp_flops) / rc, (b0 + e.memory_ramp_bytes) / rm
            c1, m1 = (f1 + e.compute_ramp_flops) / rc, (b1 + e.memory_ramp_bytes) / rm
            fixed = self._decode_fixed(n) + L * e.launch_s
        else:
            ca, cb, ma, mb, fixed = self._decode_coeffs(n)
            c0, c1, m0, m1 = ca + cb * ctx0, ca + cb * ctx1, ma + mb * ctx0, ma + mb * ctx1
            L = m.num_layers
        if (c0 >= m0) != (c1 >= m1):
            return None
        t0 = c0 if c0 > m0 else m0
        t1 = c1 if c1 > m1 else m1
        return fixed + L * t0, (L * (t1 - t0) / (k - 1) if k > 1 else 0.0)

    def weight_read_floor(self) -> float:
        """Seconds to read every weight once at datasheet bandwidth (the decode floor at batch 1)."""
        return self.model.weight_bytes(self.weight_dtype) / self.bw


def step_time(
    profile: HardwareProfile,
    model: ModelSpec,
    batch: BatchShape,
    weight_dtype: str = "bf16",
    kv_dtype: str = "bf16",
) -> float:
    """The cost model as one function of (profile, model, batch)."""
    return CostModel(profile, model, weight_dtype, kv_dtype).step_time(batch)
