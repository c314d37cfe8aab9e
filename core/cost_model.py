"""Step time of one model step from a roofline cost model (DESIGN.md, "Modelling rules").

For a batch of prefill chunks and decode sequences, the step time is the sum over operation
groups (GEMMs per weight matrix, routed experts, LM head, attention prefill, attention decode,
element-wise kernels) of max(FLOPs / (η_c · peak), bytes / (η_m · bandwidth)) with size-dependent
efficiencies from the hardware profile, plus fixed overheads. `step_time(profile, model, batch)` is
the one function both the simulator and calibration use.

An engine profile (core/engine_profile.py, `CostModel(..., engine=)`) changes a step as its docstring says:
each group times its kernel factor, the engine's host terms added to the fixed overheads (in place of the
GPU profile's serving-loop terms unless `gpu_profile_loop`), and with `attention_layout: packed` one masked
attention over the step's packed queries and keys (`packed_attention_time`) in place of the per-sequence
kernels. Everything is folded into constants at construction; `ours` (factors 1.0, host terms 0, the GPU
profile's loop) gives exactly the arithmetic of a cost model without an engine.

`graph_padding` prices a runner's CUDA graphs (core/graphs.py's GraphRule: SERVING_GRAPHS for our engine's
serving loop): a step replayed on a graph captured at a padded size runs the padding rows through every linear
layer, MoE layer and element-wise kernel, so those groups take the padded row count (logits, attention and
collectives keep the real ones). It is for forecasts of our engine and fits of its measured steps (by the rule
they ran under) only; other engines' forecasts and fits leave it off (None).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from core.graphs import GraphRule, padded_decode_batch
from core.hardware import HardwareProfile, OpEfficiency
from core.kv_cache import padded
from core.model_spec import ModelSpec, dtype_bytes
from core.parallelism import (
    Parallelism,
    all_to_all_time,
    allgather_time,
    allreduce_time,
    expected_touched,
    expert_inclusion,
    experts_by_gpu,
    kv_bytes_per_token_per_gpu,
    send_time,
    shard,
    weight_bytes_per_gpu,
)

if TYPE_CHECKING:
    from core.engine_profile import EngineProfile

ACT_BYTES = 2.0  # activations stay in 16-bit in every engine we model
# Weight-only kernels (int4, and 8-bit weights on GPUs without 8-bit matrix units) dequantize each
# weight to 16-bit on the CUDA cores before the tensor-core MMA, once per tile of tokens. Marlin
# (IST-DASLab/marlin, the W4A16 kernel vLLM uses) takes at most 64 token rows per pass and re-runs the
# weights for each further 64; its dequant() turns 4 weights into 16-bit with 2 LOP3 + 1 HSUB2 + 1
# HFMA2, plus a shift and a half2 scale multiply: about 1.5 instructions per weight. The issue rate is
# one instruction per FP32 lane per clock, half the datasheet FP32 FLOP/s (which counts an FMA as 2).
# The work competes with the MMAs for issue slots, so it adds to compute time and hides under memory
# time: free at batch 1, about +10-25% at large batch (T4: +11%, H100: +26%). Measured int4 kernels show
# the same direction, larger for older kernels: AWQ's GEMM at batch 256 ran at 50% of FP16 on
# Llama-2-13B (github.com/casper-hansen/AutoAWQ/issues/106); Marlin keeps ~4x up to 16-32 tokens.
DEQUANT_TILE_TOKENS = 64
DEQUANT_INSTR_PER_WEIGHT = 1.5


@dataclass(slots=True)
class BatchShape:
    """What one step computes, summarised so that the cost is O(1) in the batch size.

    prefill_pairs: causal (query, key) pairs over all prefill chunks, for full-attention layers;
    a chunk of c new tokens after p cached ones has c·p + c·(c+1)/2. sliding_prefill_pairs: the same
    with keys limited to the window. prefill_context_tokens: cached tokens the chunks attend to
    (read from the KV cache). decode_context_tokens: sum over decode sequences of their context.
    fresh_*: the chunks among the prefills that are whole fresh prompts long enough for the profile's
    fresh-prompt attention kernel (`add_chunk`): how many, their tokens, their causal pairs, and their
    pairs at the padded length that kernel runs (all also counted in the prefill_* fields).
    """

    prefill_tokens: int = 0
    prefill_seqs: int = 0
    prefill_pairs: float = 0.0
    sliding_prefill_pairs: float = 0.0
    prefill_context_tokens: int = 0
    decode_seqs: int = 0
    decode_context_tokens: int = 0
    logits_tokens: int = -1  # tokens that need logits; default: decodes + prefills
    fresh_seqs: int = 0
    fresh_tokens: int = 0
    fresh_pairs: float = 0.0
    fresh_padded_pairs: float = 0.0

    @property
    def tokens(self) -> int:
        return self.prefill_tokens + self.decode_seqs

    def add_fresh(self, chunk: int, bucket: int) -> None:
        """Count a whole fresh prompt of `chunk` tokens as one the fresh-prompt kernel runs (padded to `bucket`)."""
        t = padded(chunk, bucket)
        self.fresh_seqs += 1
        self.fresh_tokens += chunk
        self.fresh_pairs += chunk * (chunk + 1) / 2
        self.fresh_padded_pairs += t * (t + 1) / 2

    @classmethod
    def of(
        cls,
        chunks: list[tuple[int, int]],
        decode_contexts: list[int] = (),
        window: int = 0,
        fresh: tuple[int, int] | None = None,
        logits_tokens: int = -1,
    ) -> BatchShape:
        """The shape of a step of prompt chunks (chunk, prior) and decodes (their context lengths, the new
        token included); `fresh` is the cost model's (min tokens, bucket) rule (CostModel.fresh)."""
        b = cls(
            prefill_tokens=sum(c for c, _ in chunks),
            prefill_seqs=len(chunks),
            prefill_pairs=float(sum(chunk_pairs(p, c) for c, p in chunks)),
            sliding_prefill_pairs=float(sum(chunk_pairs(p, c, window) for c, p in chunks)) if window else 0.0,
            prefill_context_tokens=sum(p for _, p in chunks),
            decode_seqs=len(decode_contexts),
            decode_context_tokens=sum(decode_contexts),
            logits_tokens=logits_tokens,
        )
        if fresh is not None:
            for c, p in chunks:
                if p == 0 and c >= fresh[0]:
                    b.add_fresh(c, fresh[1])
        return b


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
    t_c = (flops + eff.compute_ramp_flops) / (eff.compute * peak_flops) + eff.compute_ramp_s
    t_m = (nbytes + eff.memory_ramp_bytes) / (eff.memory * bandwidth) + eff.memory_ramp_s
    if eff.blend:
        return blend_terms(t_c + eff.launch_s, t_m + eff.launch_s, eff.blend)
    return (t_c if t_c > t_m else t_m) + eff.launch_s


def blend_terms(a, b, q: float):
    """(a^q + b^q)^(1/q) of two positive times (floats or arrays), scaled by their max so that no power underflows."""
    top = np.maximum(a, b) if isinstance(a, np.ndarray) or isinstance(b, np.ndarray) else max(a, b)
    return top * ((a / top) ** q + (b / top) ** q) ** (1.0 / q)


def op_times(
    eff: OpEfficiency, flops: np.ndarray, nbytes: np.ndarray, peak_flops: float, bandwidth: float
) -> np.ndarray:
    """Roofline time of one kernel over arrays of problem sizes."""
    t_c = (flops + eff.compute_ramp_flops) / (eff.compute * peak_flops) + eff.compute_ramp_s
    t_m = (nbytes + eff.memory_ramp_bytes) / (eff.memory * bandwidth) + eff.memory_ramp_s
    if eff.blend:
        return blend_terms(t_c + eff.launch_s, t_m + eff.launch_s, eff.blend)
    return np.maximum(t_c, t_m) + eff.launch_s


def gemm_rate(profile: HardwareProfile, dtype: str) -> tuple[OpEfficiency, float, bool]:
    """(efficiency, peak FLOP/s, dequantizes?) of weight GEMMs with `dtype` weights on this GPU.

    fp8 and int8 are W8A8: they run at the 8-bit rate where the matrix units have it, with the
    calibrated efficiency of that dtype when the profile has one; elsewhere the 8-bit weights are
    dequantized to 16-bit (vLLM's FP8-Marlin weight-only path on GPUs without FP8). int4 is always
    weight-only: 16-bit compute plus dequantization, or the int4 GEMM group calibration fitted on the
    engine's W4A16 kernel (its dequantization inside the fitted curve).
    """
    e = profile.efficiency.gemm
    fitted_int4 = (
        (getattr(profile.calibration, "gemm_by_dtype", None) or {}).get("int4") if dtype == "int4" else None
    )
    if fitted_int4:
        return OpEfficiency.model_validate(fitted_int4), profile.peak_flops("bf16"), False
    if dtype in ("fp8", "int8") and profile.native_dtype(dtype):
        fitted = getattr(profile.calibration, "gemm_by_dtype", None) or {}
        if dtype in fitted:
            e = OpEfficiency.model_validate(fitted[dtype])
        return e, profile.peak_flops(dtype), False
    sixteen = profile.peak_flops("bf16")
    return e, sixteen, dtype in ("fp8", "int8", "int4")


class CostModel:
    """Per-(profile, model, dtypes, parallelism) constants, cached so a step costs a few dozen float operations.

    With tp, pp, ep > 1 the times are those of one GPU's share of the work (the slowest GPU for
    experts), summed over the pp stages a micro-batch passes through, plus the collectives.
    """

    def __init__(
        self,
        profile: HardwareProfile,
        model: ModelSpec,
        weight_dtype: str = "bf16",
        kv_dtype: str = "bf16",
        tp: int = 1,
        pp: int = 1,
        ep: int = 1,
        routing_skew: float = 0.0,
        eager_prefill: bool = False,
        serving_host: bool = True,
        engine: EngineProfile | None = None,
        eager_decode: bool = False,
        graph_padding: GraphRule | None = None,
        async_decode: bool = False,
    ) -> None:
        self.profile, self.model = profile, model
        # a runner's CUDA graphs pad a step's rows (`graph_rows`); eager steps run unpadded
        self.graph_rule = graph_padding
        self.pad_decode = graph_padding is not None and not eager_decode
        self.pad_mixed = graph_padding is not None and not (eager_prefill or eager_decode)
        self.graph_padding = self.pad_decode or self.pad_mixed
        self.weight_dtype, self.kv_dtype = weight_dtype, kv_dtype
        self.par = Parallelism(tp, pp, ep)
        self.par.check(model)
        e = profile.efficiency
        self.eff = e
        self.engine = engine
        self.gemm_eff, self.gemm_peak, self.dequant = gemm_rate(profile, weight_dtype)
        # one-row GEMMs on the profile's GEMV curve where it has one: the engine streams a single row's weights
        # through its Triton GEMV (16-bit weights; the LM head stays 16-bit whatever the weights)
        self.gemv_eff = e.gemv
        self.gemv_dense = e.gemv is not None and weight_dtype in ("bf16", "fp16")
        # routed experts priced on the profile's fitted MoE curve (its points time routing with them)
        self.moe_curve = e.moe is not None and not self.dequant
        self._loop_terms(engine, serving_host, eager_prefill, eager_decode, async_decode)
        self.bw = profile.memory_bandwidth
        self.ic = profile.interconnect
        self.attn_peak = profile.peak_flops("bf16")
        self.wbytes = dtype_bytes(weight_dtype)
        # a fitted int4 group may come with the curves of the engine's other W4A16 kernels (one per kernel
        # family, calibrate/int4_from_run.py): a GEMM takes the fastest, as the engine's tuner picks per size
        more = (
            (getattr(profile.calibration, "int4_kernel_curves", None) or {}) if weight_dtype == "int4" else {}
        )
        self.gemm_alt = [OpEfficiency.model_validate(c) for c in more.values()] if not self.dequant else []
        fp32 = profile.peak_tflops.fp32
        # CUDA-core instruction rate (see DEQUANT_INSTR_PER_WEIGHT); without an FP32 figure, the 16-bit
        # tensor rate / 16 (the A100's ratio: 312 vs 19.5 TFLOP/s).
        self.alu_rate = (fp32 * 1e12 if fp32 else self.attn_peak / 16) / 2
        self._attention_terms(kv_dtype, tp, ep)
        self._gemm_cache: dict[int, float] = {}
        self._comm_cache: dict[int, float] = {}
        self._fixed_cache: dict[int, float] = {}
        self._shared_cache: dict[tuple, float] = {}
        self._coeff_cache: dict[int, tuple] = {}
        m = model
        q_width = m.num_heads * m.q_head_dim
        mlp_i = m.intermediate_size if not m.is_moe else m.moe_intermediate_size * m.experts_per_token
        # element-wise traffic per token per layer: 2 norms, 2 residual adds, rope, activation (read 2I,
        # write I); norms and residuals run on the whole hidden state on every tensor-parallel rank
        self._elementwise_bytes_per_token = ACT_BYTES * (10 * m.hidden_size + (3 * mlp_i + 2 * q_width) / tp)
        if weight_dtype in (
            "fp8",
            "int8",
        ):  # W8A8: every linear's input is cast to 8 bits first (a pass apiece)
            self._elementwise_bytes_per_token += self._act_quant_bytes(m, tp, ep)
        # per-GPU weight shards
        self._dense = [(*shard(m, g, tp), g.layers) for g in m.dense_gemms]
        self._lm = shard(m, m.lm_head, tp)
        self._experts = [(*shard(m, g, 1 if ep > 1 else tp), g.layers) for g in m.expert_gemms]
        self.expert_q = (
            expert_inclusion(m.num_experts, m.experts_per_token, routing_skew) if m.is_moe else None
        )
        self._expert_q_gpu = experts_by_gpu(self.expert_q, ep) if m.is_moe else []

    def _attention_terms(self, kv_dtype: str, tp: int, ep: int) -> None:
        """The attention kernels' curves, per-GPU KV bytes, FLOPs a pair and q/o traffic of this model."""
        m, e = self.model, self.eff
        # an MLA model's absorbed-form kernels have their own curves where the profile measured them
        self.dec_eff = e.attention_mla_decode if m.is_mla and e.attention_mla_decode else e.attention_decode
        self.absorbed_eff = (
            e.attention_mla_prefill if m.is_mla and e.attention_mla_prefill else e.attention_prefill
        )
        # heads split tp ways; per-GPU KV over all layers (a micro-batch visits every stage)
        all_stages = Parallelism(tp, 1, ep)
        self.kv_tok_bytes, self.kv_sliding_tok_bytes = kv_bytes_per_token_per_gpu(m, kv_dtype, all_stages)
        # the chunked-prefill kernel's walk over the context, priced per token as the sweep model's KV (WALK_KV_ELEMS)
        walk = kv_walk_ratio(m)
        self.walk_tok_bytes, self.walk_sliding_tok_bytes = (
            self.kv_tok_bytes * walk,
            self.kv_sliding_tok_bytes * walk,
        )
        self.pair_flops = m.attn_flops_per_pair / tp
        self.prefill_pair_flops, self.prefill_ctx_flops = mla_prefill_flops(m, tp)
        # MLA steps of up to MLA_ABSORBED_STEP_TOKENS tokens run their prompt chunks absorbed (engine.mla)
        self.absorbed_pair_flops = mla_prefill_flops(m, tp, absorbed=True)[0] if m.is_mla else 0.0
        # whole fresh prompts of at least fresh[0] tokens take the profile's fresh-prompt kernel, padded to
        # a multiple of fresh[1] (None: the profile has no such kernel; BatchShape.add_fresh)
        self.fresh = (
            (e.fresh_prefill_min_tokens, e.fresh_prefill_bucket)
            if e.attention_fresh is not None and m.full_attention_layers and not m.is_mla
            else None
        )  # (MLA prompts never take the fresh-prompt kernel: engine.mla runs them itself)
        # per token per layer, bytes of q in / o out of attention kernels
        self._attn_io_per_token = (
            ACT_BYTES * (m.num_heads * m.q_head_dim + m.num_heads * (m.v_head_dim or m.head_dim)) / tp
        )

    def _loop_terms(
        self,
        engine: EngineProfile | None,
        serving_host: bool,
        eager_prefill: bool,
        eager_decode: bool,
        async_decode: bool = False,
    ) -> None:
        """The serving loop's host terms, eager-launch floors and kernel factors of a step."""
        e, model = self.eff, self.model
        # the GPU profile's serving-loop terms are our engine's loop: an engine with its own host terms
        # (gpu_profile_loop false) pays those instead, its eager launches included (no launch floor)
        own_loop = engine is None or engine.host.gpu_profile_loop
        serving_host = serving_host and own_loop
        # steps with prompt tokens launched eagerly (serving.cuda_graphs = decode_only; none: every step,
        # `eager_decode`) last at least as long as the host takes to issue their kernels
        eager = (eager_prefill or eager_decode) and own_loop
        # an eager step's host launches a layer, fitted on the sweep model's layers (LAUNCHES_SWEEP_MODEL kernels),
        # scale with the kernels a layer of this model launches
        # (an MLA model's where the profile measured its own eager steps, calibrate.serving.measure_mla_eager)
        if model.is_mla and e.eager_launch_mla_s_per_layer:
            per_layer = e.eager_launch_mla_s_per_layer
        else:
            per_layer = e.eager_launch_s_per_layer * launches_per_layer(model) / LAUNCHES_SWEEP_MODEL
        floor = model.num_layers * per_layer
        self.eager_floor = floor if eager else 0.0
        # with CUDA graphs, the steps a graph does not take (GraphRule.graphed) launch eagerly: the same floor
        self.ungraphed_floor = floor if own_loop and self.graph_rule is not None and not eager else 0.0
        # our engine's small kernels a layer beyond the set calibration's `elementwise` group times: each costs
        # that group's fixed part over its ELEMENTWISE_SET kernels. Our engine's steps are the ones priced with
        # its graph rule; another engine's kernels are in its fitted factors (and a GPU-only price of its steps,
        # as calibrate/engine_fit.py takes, has no rule)
        ours = own_loop and self.graph_rule is not None
        kernels = small_kernels_per_layer(model)
        # an MoE layer's routing kernels are inside the profile's fitted MoE curve where it has one (its points
        # time route, align, both expert GEMMs and combine: calibrate.bench.Bench._moe), so not counted twice
        if self.moe_curve:
            kernels -= routing_kernels_per_layer(model)
        extra = kernels / ELEMENTWISE_SET - 1.0 if ours else 0.0
        self.small_kernels_s = model.num_layers * e.elementwise.launch_s * extra
        self.eager_decode = self.eager_floor if eager_decode else 0.0
        # a serving loop's host time per step outside the GPU's work (off for calibration, which times the GPU)
        self.host_step = e.serving_step_s if serving_host else 0.0
        self.host_seq = e.serving_per_sequence_s if serving_host else 0.0
        self.host_prompt = e.serving_prompt_step_s if serving_host else 0.0
        self.host_token = 0.0  # the engine's host seconds per prompt token in a step
        self.host_serial: float | None = None  # HostOverlap: seconds of host_step that overlap nothing
        # kernel factors per group (EngineProfile.kernels), and the packed attention layout with its paddings
        self.k_gemm = self.k_prefill = self.k_decode = self.k_elementwise = 1.0
        self.packed, self.q_pad, self.kv_pad = False, 1, 1
        if engine is not None:
            self._apply_engine(engine, model.num_layers)
        # async scheduling (serving.async_scheduling, engine.serving._Loop): our loop prepares a decode-only step
        # while the GPU runs the one before, so such a step takes the longer of its GPU work and its host terms
        self.decode_overlap = (
            async_decode
            and bool(self.host_step or self.host_seq)
            and not eager_decode
            and self.host_serial is None
        )

    def _apply_engine(self, engine: EngineProfile, num_layers: int) -> None:
        """Fold an engine profile's host terms and kernel factors into the constants (terms that are 0 and
        factors that are 1.0 leave them as they are)."""
        h, k = engine.host, engine.kernels
        # per layer: the model's layers, or (host.operators) its operators per forward in layers of the fitted one
        per = engine.host_layers(num_layers, self.model.model_type) if h.per_layer else 1
        if h.per_step_s.value:
            self.host_step += per * h.per_step_s.value
        if h.per_sequence_s.value:
            self.host_seq += per * h.per_sequence_s.value
        self.host_token = per * h.per_prompt_token_s.value
        if h.overlap is not None:  # launches overlap the GPU: a step is max(GPU, host terms) + serial
            self.host_serial = h.overlap.serial_s.value
            self.host_step += self.host_serial
        self.k_gemm, self.k_prefill = k.gemm, k.attention_prefill
        self.k_decode, self.k_elementwise = k.attention_decode, k.elementwise
        self.packed = k.attention_layout == "packed"
        self.q_pad, self.kv_pad = k.q_padding_tokens, k.kv_padding_tokens

    @staticmethod
    def _act_quant_bytes(m: ModelSpec, tp: int, ep: int) -> float:
        """Bytes per token per layer of casting the linear layers' inputs to 8 bits: read 16-bit, write 8-bit,
        a pass per GEMM input, as vLLM's per-tensor W8A8 paths and the engine's fp8 layers run it (the scales
        are applied in the GEMM's epilogue; the engine's int8 layer, a plain torch reference, runs more passes)."""
        per_in = ACT_BYTES + 1
        total = 0.0
        for g in m.dense_gemms:
            total += shard(m, g, tp)[0] * per_in * g.layers
        for g in m.expert_gemms:
            total += shard(m, g, 1 if ep > 1 else tp)[0] * per_in * g.layers * m.experts_per_token
        return total / m.num_layers

    # ------------------------------------------------------------------ groups
    def graph_rows(self, tokens: int, prefill_tokens: int, prefill_seqs: int) -> int:
        """Token rows a step's GEMMs, MoE and element-wise kernels run: `tokens`, or with graph_padding the size
        of the CUDA graph the runner replays the step on (GraphRule.rows: decode-only, the next decode size;
        with prompt tokens, the next mixed size within the rule's limits, eager beyond)."""
        if prefill_tokens:
            return self.graph_rule.rows(tokens, prefill_tokens, prefill_seqs) if self.pad_mixed else tokens
        return padded_decode_batch(tokens) if self.pad_decode else tokens

    def _weight_gemm(self, slots: float, k: int, n: int, copies: float = 1.0) -> float:
        """One [k, n] weight GEMM over `slots` token rows, spread over `copies` matrices (touched experts)."""
        if slots == 1 and copies == 1 and self.gemv_dense:
            return self._weight_gemm_with(self.gemv_eff, 1, k, n, 1)
        t = self._weight_gemm_with(self.gemm_eff, slots, k, n, copies)
        for e in self.gemm_alt:
            t = min(t, self._weight_gemm_with(e, slots, k, n, copies))
        return t

    def _weight_gemm_with(self, e: OpEfficiency, slots: float, k: int, n: int, copies: float) -> float:
        t_c = (2.0 * slots * k * n + e.compute_ramp_flops) / (e.compute * self.gemm_peak) + e.compute_ramp_s
        if self.dequant:
            rows = slots / copies if copies else 0.0
            t_c += (
                copies
                * k
                * n
                * math.ceil(rows / DEQUANT_TILE_TOKENS)
                * DEQUANT_INSTR_PER_WEIGHT
                / self.alu_rate
            )
        t_m = (copies * k * n * self.wbytes + slots * (k + n) * ACT_BYTES + e.memory_ramp_bytes) / (
            e.memory * self.bw
        ) + e.memory_ramp_s
        if e.blend:  # streams the weights and computes at once: slower than either near the ridge
            return blend_terms(t_c + e.launch_s, t_m + e.launch_s, e.blend)
        return (t_c if t_c > t_m else t_m) + e.launch_s

    def gemm_time(self, tokens: int, logits_tokens: int, rows: int = 0) -> float:
        """Dense GEMMs (per weight matrix) and routed experts for `tokens` tokens run as `rows` token rows (a
        CUDA graph's padded size, `graph_rows`; 0: `tokens`), LM head for `logits_tokens`, on one GPU."""
        pad = rows - tokens if rows > tokens else 0
        key = (
            tokens * 65536 + logits_tokens
        ) * 1024 + pad  # a graph pads fewer than 1,024 rows (core/graphs)
        t = self._gemm_cache.get(key)
        if t is not None:
            return t
        t = 0.0
        if tokens:
            for k, n, layers in self._dense:
                t += layers * self._weight_gemm(tokens + pad, k, n)
            if self.model.is_moe:
                t += self.expert_time(tokens, tokens + pad)
        if logits_tokens:
            k, n = self._lm  # stays in 16-bit
            f = 2.0 * logits_tokens * k * n
            b = k * n * 2.0 + logits_tokens * (k + n) * ACT_BYTES
            one = logits_tokens == 1 and self.gemv_eff is not None
            t += op_time(self.gemv_eff if one else self.eff.gemm, f, b, self.attn_peak, self.bw)
        if self.k_gemm != 1.0:
            t *= self.k_gemm
        if len(self._gemm_cache) < 200_000:
            self._gemm_cache[key] = t
        return t

    def expert_time(self, tokens: int, rows: int = 0) -> float:
        """Routed experts of all MoE layers for `tokens` tokens run as `rows` rows (0: `tokens`): each GPU reads
        the experts it holds that the batch touched and computes the rows routed to them; the slowest GPU sets
        the time. A graph's padding rows are routed too: like one more token when they are one dummy repeated
        (GraphRule.alike_padding, the serving loop's), else each like a token of its own."""
        rows = max(rows, tokens)
        routed = (
            rows if rows == tokens or not self.graph_rule or not self.graph_rule.alike_padding else tokens + 1
        )
        worst = 0.0
        for q in self._expert_q_gpu:
            touched = expected_touched(q, routed)
            slots = rows * float(q.sum())  # (row, expert) pairs landing on this GPU
            if slots <= 0:
                continue
            if self.par.ep > 1:
                # the step waits for the busiest GPU, which is busy: its work given that any of its
                # experts is touched (at batch 1 a GPU that is hit reads at least one whole expert)
                busy = 1.0 - float(np.prod((1.0 - q) ** routed))
                touched, slots = touched / busy, slots / busy
            if self.moe_curve:  # the fitted MoE group: one layer's experts
                t = self._experts[0][2] * moe_layer_time(self, slots, touched, len(q))
            else:
                t = sum(layers * self._weight_gemm(slots, k, n, touched) for k, n, layers in self._experts)
            worst = max(worst, t)
        return worst

    def experts_touched(self, tokens: int) -> float:
        """Expected distinct experts per MoE layer hit by `tokens` tokens under top-k routing with the skew."""
        return expected_touched(self.expert_q, tokens)

    def communication_time(self, tokens: int, logits_tokens: int = 0) -> float:
        """Collectives of one step: tensor-parallel all-reduces (or expert all-to-alls), pipeline sends."""
        if self.par.gpus == 1 or not tokens:
            return 0.0
        key = tokens * 65536 + logits_tokens
        t = self._comm_cache.get(key)
        if t is not None:
            return t
        m, ic, (tp, pp, ep) = self.model, self.ic, (self.par.tp, self.par.pp, self.par.ep)
        hidden = tokens * m.hidden_size * ACT_BYTES
        t = 0.0
        if tp > 1:
            # after attention's row-parallel O projection, and below after the MLP's down projection
            t += m.num_layers * allreduce_time(hidden, tp, ic)
            if ep > 1:  # MoE layers: dispatch and combine (each GPU scatters its tokens/ep to k experts)
                a2a = all_to_all_time(hidden / ep * m.experts_per_token, ep, ic)
                t += m.moe_layers * (2 * a2a + allgather_time(hidden, ep, ic))
                t += m.dense_mlp_layers * allreduce_time(hidden, tp, ic)
            else:
                t += m.num_layers * allreduce_time(hidden, tp, ic)
            if logits_tokens:  # vocabulary-parallel logits gathered for sampling
                t += allgather_time(logits_tokens * m.vocab_size * ACT_BYTES, tp, ic)
        if pp > 1:  # hidden states and residual to the next stage (vLLM's IntermediateTensors)
            t += (pp - 1) * send_time(2 * hidden, ic)
        if len(self._comm_cache) < 200_000:
            self._comm_cache[key] = t
        return t

    def attention_prefill_time(self, b: BatchShape) -> float:
        """Prompt attention of a step (with the packed layout: the whole step's attention), times its factor."""
        if self.packed:
            return self.k_prefill * packed_attention_time(self, *self.packed_sizes(b))
        if not b.prefill_tokens:
            return 0.0
        if self.k_prefill != 1.0:
            return self.k_prefill * self._gpu_prefill_time(b)
        return self._gpu_prefill_time(b)

    def packed_sizes(self, b: BatchShape) -> tuple[int, int]:
        """(queries, keys) of a step's packed attention: every new token, over every sequence's context plus
        its new tokens, each padded (Kernels.packed_sizes)."""
        q = b.prefill_tokens + b.decode_seqs
        kv = b.decode_context_tokens + b.prefill_context_tokens + b.prefill_tokens
        return padded(q, self.q_pad), padded(kv, self.kv_pad)

    def _gpu_prefill_time(self, b: BatchShape) -> float:
        """Per-sequence prompt attention on the GPU profile's kernels (fresh-prompt and chunked)."""
        if not b.fresh_seqs or self.fresh is None:
            return self._chunked_prefill_time(b, b.prefill_pairs, b.prefill_tokens)
        # whole fresh prompts: one call of the fresh-prompt kernel per prompt per full-attention layer, at
        # its padded length (the prompts of a step share the work evenly for the efficiency curve)
        Lf = self.model.full_attention_layers
        n = b.fresh_seqs * Lf
        flops = self.prefill_pair_flops * b.fresh_padded_pairs * Lf
        nbytes = b.fresh_tokens * (self.kv_tok_bytes + self._attn_io_per_token * Lf)
        t = n * op_time(self.eff.attention_fresh, flops / n, nbytes / n, self.attn_peak, self.bw)
        return t + self._chunked_prefill_time(
            b, b.prefill_pairs - b.fresh_pairs, b.prefill_tokens - b.fresh_tokens
        )

    def _chunked_prefill_time(self, b: BatchShape, pairs: float, tokens: int, walk: bool = True) -> float:
        """The chunked-prefill kernel over `tokens` new tokens with `pairs` causal pairs in the full-attention
        layers (all of the step's prompt tokens in sliding-window layers): one call per layer that has any,
        the work divided evenly over them for the efficiency curve. The context is priced as the varlen kernel's
        walk over it (WALK_KV_ELEMS), or, `walk` off, as the model's own KV bytes (a packed masked attention,
        `packed_attention_time`, reads every key of every head)."""
        m = self.model
        Lf, Ls = m.full_attention_layers, m.sliding_layers
        L = (Lf if tokens else 0) + Ls
        if not L:
            return 0.0
        eff = self.eff.attention_prefill
        if self.absorbed_pair_flops and b.prefill_tokens + b.decode_seqs <= MLA_ABSORBED_STEP_TOKENS:
            flops = self.absorbed_pair_flops * pairs * Lf  # MLA, absorbed: latents scored directly
            flops /= absorbed_prefill_share(tokens, m.num_heads // self.par.tp, self.profile.sm_count)
            eff = self.absorbed_eff
        else:
            flops = self.prefill_pair_flops * (pairs * Lf + b.sliding_prefill_pairs * Ls)
            if self.prefill_ctx_flops:  # MLA, plain: the cached context's latents expanded through kv_b first
                flops += self.prefill_ctx_flops * b.prefill_context_tokens * Lf
        full, sliding = (
            (self.walk_tok_bytes, self.walk_sliding_tok_bytes)
            if walk
            else (self.kv_tok_bytes, self.kv_sliding_tok_bytes)
        )
        kv_read = b.prefill_context_tokens * (full + sliding)
        kv_write = tokens * full + b.prefill_tokens * sliding
        io = (tokens * Lf + b.prefill_tokens * Ls) * self._attn_io_per_token
        return L * op_time(eff, flops / L, (kv_read + kv_write + io) / L, self.attn_peak, self.bw)

    def _decode_attn_work(self, n: int, ctx_tokens):
        """Per-layer FLOPs and bytes of decode attention for n sequences with `ctx_tokens` in total."""
        m = self.model
        L = m.num_layers
        ctx_sliding = np.minimum(ctx_tokens, n * m.sliding_window) if m.sliding_layers else 0.0
        flops = self.pair_flops * (ctx_tokens * m.full_attention_layers + ctx_sliding * m.sliding_layers) / L
        nbytes = (ctx_tokens * self.kv_tok_bytes + ctx_sliding * self.kv_sliding_tok_bytes) / L
        return flops, nbytes + n * self._attn_io_per_token

    def attention_decode_time(self, n: int, ctx_tokens: float) -> float:
        """Decode attention for n sequences with `ctx_tokens` context in total (0 with the packed layout, whose
        one attention is in `attention_prefill_time`)."""
        if not n or self.packed:
            return 0.0
        f, b = self._decode_attn_work(n, float(ctx_tokens))
        t = self.model.num_layers * op_time(self.dec_eff, float(f), float(b), self.attn_peak, self.bw)
        return t * self.k_decode if self.k_decode != 1.0 else t

    def elementwise_time(self, tokens: int) -> float:
        if not tokens:
            return 0.0
        L = self.model.num_layers
        t = L * op_time(
            self.eff.elementwise, 0.0, tokens * self._elementwise_bytes_per_token, self.attn_peak, self.bw
        )
        t += self.small_kernels_s
        return t * self.k_elementwise if self.k_elementwise != 1.0 else t

    def overhead_time(self, seqs: int, prompt: bool = False) -> float:
        """Fixed time per step and per sequence: the GPU side fitted by calibration, plus the serving loop's host
        time (with prompt tokens in the step, `prompt`, its larger layout)."""
        t = self.eff.step_overhead_s + self.host_step + seqs * (self.eff.per_sequence_s + self.host_seq)
        return t + self.host_prompt if prompt else t

    def host_time(self, b: BatchShape) -> float:
        """The serving loop's host seconds in one step of `b` (what an engine's host phases scale)."""
        t = (
            self.host_step
            + (b.decode_seqs + b.prefill_seqs) * self.host_seq
            + self.host_token * b.prefill_tokens
        )
        return t + self.host_prompt if b.prefill_tokens else t

    def scaled(self, compute: float = 1.0, memory: float = 1.0) -> CostModel:
        """This cost model on a GPU `compute`× faster at arithmetic and `memory`× at memory bandwidth
        (simulator/breakdown.py asks which of the two would shorten a group: what bounds it)."""
        c = copy.copy(self)
        c.attn_peak, c.gemm_peak, c.alu_rate = (
            self.attn_peak * compute,
            self.gemm_peak * compute,
            self.alu_rate * compute,
        )
        c.bw = self.bw * memory
        c._gemm_cache, c._comm_cache, c._fixed_cache, c._shared_cache, c._coeff_cache = {}, {}, {}, {}, {}
        return c

    # ------------------------------------------------------------------ steps
    def breakdown(self, b: BatchShape) -> dict[str, float]:
        """Seconds per operation group for one step."""
        logits = b.logits_tokens if b.logits_tokens >= 0 else b.decode_seqs + b.prefill_seqs
        tokens = b.tokens
        rows = self.graph_rows(tokens, b.prefill_tokens, b.prefill_seqs)
        out = {
            "gemm": self.gemm_time(tokens, logits, rows),
            "attention_prefill": self.attention_prefill_time(b),
            "attention_decode": self.attention_decode_time(b.decode_seqs, b.decode_context_tokens),
            "elementwise": self.elementwise_time(rows),
            "communication": self.communication_time(tokens, logits),
            "overhead": self.overhead_time(b.decode_seqs + b.prefill_seqs, b.prefill_tokens > 0)
            if tokens
            else 0.0,
        }
        if self.host_token:
            out["overhead"] += self.host_token * b.prefill_tokens
        floor = self._floor(b)
        if floor:
            out["launch_wait"] = max(0.0, floor - sum(out.values()))
        if self.host_serial is not None and tokens:
            out["host_overlapped"] = -self._overlapped(sum(out.values()), b)
        elif self.decode_overlap and tokens and not b.prefill_tokens:
            out["host_overlapped"] = -self._decode_hidden(sum(out.values()), b.decode_seqs)
        return out

    def _floor(self, b: BatchShape) -> float:
        """The eager launch floor of a step of `b` (0: it replays a CUDA graph, or launches are not priced)."""
        if self.eager_floor and (b.prefill_tokens or (self.eager_decode and b.tokens)):
            return self.eager_floor
        # (ungraphed_floor is set only with a graph rule; the rule is asked only where a floor could apply)
        if self.ungraphed_floor and b.prefill_tokens:
            return (
                0.0
                if self.graph_rule.graphed(b.tokens, b.prefill_tokens, b.prefill_seqs)
                else self.ungraphed_floor
            )
        return 0.0

    def _overlapped(self, total: float, b: BatchShape) -> float:
        """HostOverlap: the seconds of a step of `total` seconds (GPU + host summed) that its host terms and its
        GPU work run side by side: the shorter of the two."""
        h = self.host_time(b) - self.host_serial
        return max(0.0, min(total - h - self.host_serial, h))

    def _decode_hidden(self, total: float, n: int) -> float:
        """Async scheduling: the seconds of a decode-only step of n sequences and `total` seconds (GPU + host
        summed) that its host terms hide under the GPU work of the step before: the shorter of the two."""
        h = self._decode_host(n)
        return max(0.0, min(total - h, h))

    def _decode_host(self, n: int) -> float:
        """The serving loop's host terms of a decode-only step of n sequences."""
        return self.host_step + n * self.host_seq

    def decode_hidden(self, b: BatchShape) -> float:
        """Async scheduling: the host seconds a decode-only step of `b` hides under the GPU work of the step before
        (0 where it hides none). A decode step right after a step the loop waited for has nothing to hide them
        under and pays them (simulator/replica.py)."""
        if not (self.decode_overlap and b.tokens and not b.prefill_tokens):
            return 0.0
        return -self.breakdown(b)["host_overlapped"]

    def step_time(self, b: BatchShape) -> float:
        """Seconds for one step of the batch."""
        return sum(self.breakdown(b).values())

    def step_split(self, b: BatchShape) -> tuple[float, float]:
        """(step seconds, the part spent on prompt tokens): attention by kind, the rest by token share.

        Equal to summing `breakdown`; the context-free groups are cached per (tokens, logits, sequences, graph
        rows): the rows, with graph_padding, also depend on the prompt chunks' count.
        """
        tokens = b.prefill_tokens + b.decode_seqs
        logits = b.logits_tokens if b.logits_tokens >= 0 else b.decode_seqs + b.prefill_seqs
        seqs = b.decode_seqs + b.prefill_seqs
        rows = self.graph_rows(tokens, b.prefill_tokens, b.prefill_seqs) if self.graph_padding else tokens
        key = (tokens, logits, seqs, b.prefill_tokens > 0, rows)
        shared = self._shared_cache.get(key)
        if shared is None:
            shared = self.gemm_time(tokens, logits, rows) + self.elementwise_time(rows)
            shared += self.communication_time(tokens, logits)
            shared += self.overhead_time(seqs, b.prefill_tokens > 0) if tokens else 0.0
            if len(self._shared_cache) < 200_000:
                self._shared_cache[key] = shared
        pre = self.attention_prefill_time(b)
        dec = self.attention_decode_time(b.decode_seqs, b.decode_context_tokens)
        frac = b.prefill_tokens / tokens if tokens else 0.0
        if self.packed:  # one attention for prompts and decodes alike: split by token share too
            shared, pre = shared + pre, 0.0
        if self.host_token:
            pre += self.host_token * b.prefill_tokens
        total, prompt = shared + pre + dec, shared * frac + pre
        floor = self._floor(b)
        if floor > total:  # the host is still launching: split the wait too
            prompt += (floor - total) * frac
            total = floor
        if self.host_serial is not None and tokens:
            hidden = self._overlapped(total, b)
            prompt, total = prompt * (1.0 - hidden / total), total - hidden
        elif self.decode_overlap and tokens and not b.prefill_tokens:
            total -= self._decode_hidden(total, b.decode_seqs)
        return total, prompt

    def _decode_fixed(self, n: int) -> float:
        """The part of a decode-only step of n sequences that does not depend on context."""
        t = self._fixed_cache.get(n)
        if t is None:
            rows = self.graph_rows(n, 0, 0)
            t = (
                self.gemm_time(n, n, rows)
                + self.elementwise_time(rows)
                + self.communication_time(n, n)
                + self.overhead_time(n)
            )
            self._fixed_cache[n] = t
        return t

    def decode_step_times(self, n: int, ctx_tokens: np.ndarray) -> np.ndarray:
        """Times of consecutive decode-only steps of n sequences whose total context is `ctx_tokens[i]`."""
        if self.packed:  # the packed attention step by step (the one function the engine fit uses)
            q = padded(n, self.q_pad)
            attn = np.array(
                [packed_attention_time(self, q, padded(int(c), self.kv_pad)) for c in np.asarray(ctx_tokens)]
            )
            attn = attn * self.k_prefill
        else:
            f, b = self._decode_attn_work(n, np.asarray(ctx_tokens, dtype=float))
            attn = self.model.num_layers * op_times(self.dec_eff, f, b, self.attn_peak, self.bw)
            if self.k_decode != 1.0:
                attn = attn * self.k_decode
        t = self._decode_fixed(n) + attn
        if self.host_serial is not None:  # HostOverlap: less the shorter of host terms and GPU work
            h = self.host_step + n * self.host_seq - self.host_serial
            t = t - np.maximum(np.minimum(t - h - self.host_serial, h), 0.0)
        elif self.decode_overlap:  # async scheduling: the longer of the GPU work and the host terms
            h = self._decode_host(n)
            t = np.maximum(t - h, h)
        return np.maximum(t, self.eager_decode) if self.eager_decode else t

    def _decode_coeffs(self, n: int) -> tuple[float, float, float, float, float, int]:
        """For n decode sequences (without sliding layers, or packed): per-layer attention compute and memory
        times as c0 + c1·ctx and m0 + m1·ctx with the kernel factor in, the context-free rest of the step
        (launches included) and the layers the attention runs in."""
        co = self._coeff_cache.get(n)
        if co is None:
            co = self._packed_coeffs(n) if self.packed else self._attention_coeffs(n)
            self._coeff_cache[n] = co
        return co

    def _attention_coeffs(self, n: int) -> tuple[float, float, float, float, float, int]:
        e, m, k = self.dec_eff, self.model, self.k_decode
        L = m.num_layers
        rc, rm = e.compute * self.attn_peak, e.memory * self.bw
        c1 = self.pair_flops * m.full_attention_layers / L / rc
        m1 = self.kv_tok_bytes / L / rm
        c0 = e.compute_ramp_flops / rc + e.compute_ramp_s
        m0 = (n * self._attn_io_per_token + e.memory_ramp_bytes) / rm + e.memory_ramp_s
        # the factor scales the whole group, both roofline terms and the launches (x 1.0 is exact: ours)
        return c0 * k, c1 * k, m0 * k, m1 * k, self._decode_fixed(n) + L * e.launch_s * k, L

    def _packed_coeffs(self, n: int) -> tuple[float, float, float, float, float, int]:
        """packed_attention_time of a decode step (q = n padded, kv = the context) as linear terms in kv: the
        prefill curve's arithmetic (_chunked_prefill_time) with the pairs q·kv; checked against stepping in
        tests/core/test_cost_model_engine.py::test_packed_decode_line_equals_stepping."""
        e, m, k = self.eff.attention_prefill, self.model, self.k_prefill
        L = m.full_attention_layers + m.sliding_layers
        q = padded(n, self.q_pad)
        rc, rm = e.compute * self.attn_peak, e.memory * self.bw
        kv_bytes = self.kv_tok_bytes + self.kv_sliding_tok_bytes
        c0, c1 = e.compute_ramp_flops / rc + e.compute_ramp_s, self.pair_flops * q / rc
        m0 = (
            (q * kv_bytes + q * L * self._attn_io_per_token) / L + e.memory_ramp_bytes
        ) / rm + e.memory_ramp_s
        m1 = kv_bytes / L / rm
        return c0 * k, c1 * k, m0 * k, m1 * k, self._decode_fixed(n) + L * e.launch_s * k, L

    def decode_step_line(self, n: int, ctx0: float, k: int) -> tuple[float, float] | None:
        """(a, b) with step j of k consecutive decode-only steps taking exactly a + b·j seconds, or None.

        The context grows by n tokens a step, so each roofline term is linear in j; the step time is
        linear over the run when the same term dominates at both ends (no kink inside).
        """
        m = self.model
        if self.packed and self.kv_pad != 1:  # keys padded: a staircase, costed step by step
            return None
        if self.host_serial is not None:  # HostOverlap's max: costed step by step
            return None
        ctx1 = ctx0 + n * (k - 1)
        if m.sliding_layers and not self.packed:
            if (ctx0 < n * m.sliding_window) != (ctx1 < n * m.sliding_window):
                return None
            e, L, kd = self.dec_eff, m.num_layers, self.k_decode
            rc, rm = e.compute * self.attn_peak, e.memory * self.bw
            f0, b0 = self._decode_attn_work(n, float(ctx0))
            f1, b1 = self._decode_attn_work(n, float(ctx1))
            c0 = ((f0 + e.compute_ramp_flops) / rc + e.compute_ramp_s) * kd
            m0 = ((b0 + e.memory_ramp_bytes) / rm + e.memory_ramp_s) * kd
            c1 = ((f1 + e.compute_ramp_flops) / rc + e.compute_ramp_s) * kd
            m1 = ((b1 + e.memory_ramp_bytes) / rm + e.memory_ramp_s) * kd
            fixed = self._decode_fixed(n) + L * e.launch_s * kd
        else:
            ca, cb, ma, mb, fixed, L = self._decode_coeffs(n)
            c0, c1, m0, m1 = ca + cb * ctx0, ca + cb * ctx1, ma + mb * ctx0, ma + mb * ctx1
        if (c0 >= m0) != (c1 >= m1):
            return None
        t0 = c0 if c0 > m0 else m0
        t1 = c1 if c1 > m1 else m1
        a, b = fixed + L * t0, (L * (t1 - t0) / (k - 1) if k > 1 else 0.0)
        if (
            self.decode_overlap
        ):  # async scheduling: max(GPU work, host terms), a line where one side wins throughout
            h = self._decode_host(n)
            a -= h
            if a >= h and a + b * (k - 1) >= h:
                return a, b
            return (h, 0.0) if a <= h and a + b * (k - 1) <= h else None
        floor = self.eager_decode  # steps launched eagerly last at least the launch floor
        if not floor or (a >= floor and a + b * (k - 1) >= floor):
            return a, b
        return (floor, 0.0) if a <= floor and a + b * (k - 1) <= floor else None

    def weight_read_floor(self) -> float:
        """Seconds for one GPU to read its weights of every stage once at datasheet bandwidth (the decode
        floor at batch 1)."""
        par = Parallelism(self.par.tp, 1, self.par.ep)
        return weight_bytes_per_gpu(self.model, self.weight_dtype, par) / self.bw


# The small kernels our engine (engine/model.py, engine/moe.py, engine/mla.py) launches a layer beside its GEMMs
# and attention kernels, counted in torch.profiler traces of decode steps on an H200 (benchmarks/kernel_profile.py;
# benchmarks/results/engine_kernels_h200/kernel_profile_2026-12-03.json): Qwen2.5-7B 4 (two add+RMSNorm, rope
# with the KV write, act-mul: the set calibration's `elementwise` group times, ELEMENTWISE_SET); Gemma-3-12B 10
# (four norms, the q and k norms, the residual adds after its two post-norms); Mixtral-8x7B 10 (ROUTING_KERNELS:
# the router's softmax, top-k, sort, align, copy and weighted sum; one fewer since the engine's uniform routing,
# engine.moe.uniform_route, picks and weighs the experts in one kernel); DeepSeek-V2-Lite 14 (MLA_KERNELS in
# place of rope: engine.mla.mla_rope_cache, the latent norm, rope on q and k and the latent write in one kernel
# since session 20, where torch ops took 26 of the 29 it counted before; the absorbed query's concatenation and
# the output's casts and copies; the shared expert's act-mul and add). Each count beyond the set costs that
# group's fixed part over its kernels (1.7 us on the H200, 0.07 ms a DeepSeek-V2-Lite decode step per extra kernel a layer). MLA_KERNELS was counted on the one
# MLA model the engine runs; a model with features none of these has is counted by the features it shares. Where the
# profile has a fitted MoE curve, whose points time the routing kernels with the experts (calibrate.bench.Bench._moe),
# those are not priced again as small kernels (CostModel._loop_terms; before session 19 they were priced twice:
# H200 served decode steps, benchmarks/results/step_gap_h200_session19.md, DeepSeek-V2-Lite at 1 / 4 / 8 sequences
# +13.4 / +6.0 / +5.2% -> +9.2 / +2.9 / +2.6%, Mixtral-8x7B at 1 / 64 +2.0 / +8.4% -> -1.1 / +7.3%).
ELEMENTWISE_SET = 4
ROUTING_KERNELS = 5
SHARED_EXPERT_KERNELS = 2
MLA_KERNELS = 4


# The chunked-prefill attention kernel (varlen flash attention over cached context) runs one program per query block
# and head, each walking its sequence's keys block by block; with a short chunk after a long context the programs do
# not fill the GPU and the step takes the walk, flat in the chunk (H200, Llama-3.1-8B's heads: 475-482 µs for
# 16-512 new tokens after 16,384 cached). That walk does not grow with the KV heads or their width: 512 new tokens
# after 4,096 took 134.9 µs with Llama's 8 x 128 KV elements a token, 134.7 with Qwen2.5-7B's 4 x 128, 143.6 with
# Gemma-3-12B's 8 x 256 (calibration_runs/h200_session16_serving). The curve's byte term stands for it, so a token of
# context is priced as the sweep model's (Llama-3.1-8B: 8 KV heads x 128 = WALK_KV_ELEMS) whatever the heads:
# priced on the model's own KV bytes it had Gemma's 256-wide heads +48…+127% and Qwen's 4 KV heads −19…−22%.
WALK_KV_ELEMS = 1024


def walk_ratio(num_kv_heads: int, head_dim: int) -> float:
    """The chunked-prefill walk's bytes a context token over the KV bytes a token of these heads."""
    elems = num_kv_heads * head_dim
    return WALK_KV_ELEMS / elems if elems else 1.0


def kv_walk_ratio(m: ModelSpec) -> float:
    """`walk_ratio` of the model's own heads (1 for the sweep model's; MLA's latent cache is walked by its own
    kernels: 1)."""
    return 1.0 if m.is_mla else walk_ratio(m.num_kv_heads, m.head_dim)


def small_kernels_per_layer(m: ModelSpec) -> float:
    """Mean small kernels a layer of `m` launches in our engine (norms, post-norm adds, act-mul, rope or MLA's
    glue, MoE routing), as counted above."""
    n = m.norms_per_layer + (2 if m.qk_norm else 0) + max(0, m.norms_per_layer - 2) + 1
    n += MLA_KERNELS + (1 if m.q_lora_rank else 0) if m.is_mla else 1
    if m.is_moe:
        shared = SHARED_EXPERT_KERNELS if m.num_shared_experts else 0
        n += routing_kernels_per_layer(m) + shared * m.moe_layers / m.num_layers
    return float(n)


def routing_kernels_per_layer(m: ModelSpec) -> float:
    """Mean MoE routing kernels a layer of `m` launches (ROUTING_KERNELS in each MoE layer; 0 for a dense model)."""
    return ROUTING_KERNELS * m.moe_layers / m.num_layers if m.is_moe else 0.0


def launches_per_layer(m: ModelSpec) -> float:
    """Mean kernels a layer of `m` launches in our engine: its GEMMs (expert GEMMs one launch each), the attention
    kernel and its combine, and the small kernels above. The calibration sweep model (Llama-3.1-8B) launches
    LAUNCHES_SWEEP_MODEL = 10; the eager launch floor scales by the ratio where the profile has no measured MLA
    term (DeepSeek-V2-Lite: 24.6, 2.5x since its MLA glue is one kernel; 50.6 before, when its eager steps in the
    H200 fidelity run took a median 85 ms to launch, against 12 ms at Llama's rate a layer, and 62 ms by the
    ratio; the ratio is a compromise between its prompt path, which launches more, and its decode path)."""
    gemms = sum(g.layers for g in m.dense_gemms) + sum(g.layers for g in m.expert_gemms)
    return small_kernels_per_layer(m) + gemms / m.num_layers + 2.0


LAUNCHES_SWEEP_MODEL = 10.0


# MLA steps of up to this many tokens run every row absorbed on the GPU (engine.mla.ABSORBED_PROMPT_TOKENS):
# one kernel over device metadata, so they replay as CUDA graphs; larger steps run prompt chunks plain (flash
# attention over the kv_b-expanded context, eagerly), a third of the absorbed form's FLOPs a pair but an eager
# step's host launches. On an H200 (DeepSeek-V2-Lite) the absorbed graphs take 26 / 41 ms at 1,024 / 2,048 fresh
# tokens and 68 ms for 2,048 after 4,096 (benchmarks/mla_gpu_check.py, 64x64 tiles); the plain form, repeated
# on one shape, 47 / 41-54 / 52-54 ms, but the serving loop's eager steps of 1,029-2,584 tokens took 97-150 ms
# (benchmarks/moe_mla_gpu.py's fidelity run; benchmarks/mla_eager_shapes.py looks at why): every step up to the
# mixed graphs' 2,048 tokens stays absorbed.
MLA_ABSORBED_STEP_TOKENS = 2048

# The absorbed prompt kernel's grid (engine.mla.mla_prefill): a program takes MLA_PREFILL_ROWS query rows, that is
# MLA_PREFILL_ROWS // (heads padded to a power of two) tokens with all their heads, and walks every key before them
# itself (keys are not split across programs); one program fits an SM (about 220 KB of shared memory). A short
# chunk after a long context keeps few SMs busy: calibration's mla_prefill points on an H200 (DeepSeek-V2-Lite,
# calibration_runs/h200_session11) took 1,144 µs for 128 tokens after 16,384 (32 programs on 132 SMs) and 344 µs
# for 2,048 fresh tokens, about the same FLOPs. One roofline over the 12 points missed by a median 50% (fitted)
# / 17% (held out); with the FLOPs divided by `absorbed_prefill_share`, 4.9% / 4.4% (python -m
# calibrate.group_from_run calibration_runs/h200_session11 --group attention_mla_prefill ...).
MLA_PREFILL_ROWS = 64


def absorbed_prefill_share(tokens: float, heads: int, sm_count: int | None) -> float:
    """The share of the SMs the absorbed prompt kernel keeps busy over its waves, for `tokens` prompt tokens of
    `heads` heads a GPU: programs / (waves x SMs) (1.0 where the profile gives no SM count)."""
    if not sm_count or tokens <= 0:
        return 1.0
    h_pad = max(2, 1 << (max(int(heads), 1) - 1).bit_length())
    programs = math.ceil(tokens / max(1, MLA_PREFILL_ROWS // h_pad))
    return programs / (math.ceil(programs / sm_count) * sm_count)


def mla_prefill_flops(m: ModelSpec, tp: int, absorbed: bool = False) -> tuple[float, float]:
    """Prompt attention's (FLOPs per query-key pair, FLOPs per cached context token) in one layer, per GPU.

    MLA prompt chunks of large steps run in the plain form, as vLLM runs them: each pair costs the
    per-head score over the no-rope + rope query (q_head_dim) and the value product, the values zero-padded
    to q_head_dim as the engine pads them for the flash kernel (192, not v_head_dim's 128, for DeepSeek), and
    the cached context's latents are expanded through kv_b (rank x heads x (nope + v)) before attending; the
    new tokens' kv_b is the dense GEMM already counted. `absorbed`: the form of decodes and of the engine's
    steps of up to MLA_ABSORBED_STEP_TOKENS tokens (pair_flops: scores over rank + rope, values over rank;
    no expansion). Other models: the pair FLOPs of ModelSpec.attn_flops_per_pair and no expansion.
    """
    if not m.is_mla:
        return m.attn_flops_per_pair / tp, 0.0
    if absorbed:
        return m.attn_flops_per_pair / tp, 0.0
    pair = 2.0 * m.num_heads * (m.q_head_dim + max(m.v_head_dim, m.q_head_dim))
    expand = 2.0 * m.kv_lora_rank * m.num_heads * (m.qk_nope_head_dim + m.v_head_dim)
    return pair / tp, expand / tp


def moe_layer_work(cm: CostModel, slots: float, touched: float) -> tuple[float, float]:
    """(FLOPs, bytes) of one MoE layer's routed experts on one GPU: `slots` (token, expert) rows through every
    expert GEMM, the `touched` experts' weights read once, each row's input and output moved once per GEMM."""
    flops = sum(2.0 * slots * k * n for k, n, _ in cm._experts)
    nbytes = sum(touched * k * n * cm.wbytes + slots * (k + n) * ACT_BYTES for k, n, _ in cm._experts)
    return flops, nbytes


def moe_layer_time(cm: CostModel, slots: float, touched: float, experts: int) -> float:
    """One MoE layer's routed experts on the profile's fitted MoE curve (Efficiencies.moe), one call per layer:
    what calibrate's `moe` points time (routing, sort, both grouped GEMMs, combine). Layers whose `slots` average
    at least moe_large_min_rows an expert (of the `experts` on this GPU) take the moe_large curve where the
    profile has one (core.hardware.MOE_LARGE_MIN_ROWS: where the expert GEMMs turn compute-bound)."""
    flops, nbytes = moe_layer_work(cm, slots, touched)
    eff = cm.eff.moe
    if cm.eff.moe_large is not None and slots >= cm.eff.moe_large_min_rows * experts:
        eff = cm.eff.moe_large
    return op_time(eff, flops, nbytes, cm.gemm_peak, cm.bw)


def packed_attention_time(cm: CostModel, q_tokens: int, kv_tokens: int) -> float:
    """One masked dense attention of `q_tokens` queries over `kv_tokens` keys (both padded already) in every layer,
    on the GPU profile's prefill-attention curve (Kernels.attention_layout = packed), before the engine's factor.
    The simulator (CostModel.attention_prefill_time) and the engine fit (calibrate/engine_fit.py) both cost a
    packed step with it."""
    if not q_tokens:
        return 0.0
    pairs = float(q_tokens) * kv_tokens
    shape = BatchShape(
        prefill_tokens=q_tokens,
        prefill_seqs=1,
        prefill_pairs=pairs,
        sliding_prefill_pairs=pairs if cm.model.sliding_layers else 0.0,
        prefill_context_tokens=kv_tokens,
    )
    return cm._chunked_prefill_time(shape, pairs, q_tokens, walk=False)


def step_time(
    profile: HardwareProfile,
    model: ModelSpec,
    batch: BatchShape,
    weight_dtype: str = "bf16",
    kv_dtype: str = "bf16",
) -> float:
    """The cost model as one function of (profile, model, batch)."""
    return CostModel(profile, model, weight_dtype, kv_dtype).step_time(batch)
