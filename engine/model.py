"""A decoder-only transformer built from a ModelSpec with random weights (gpt-fast style).

Covers Llama / Qwen2 (qkv bias) / Mistral, Gemma 3 (sliding and global layers, qk-norm, four
norms per layer, √h embedding scale, tanh-GELU), MoE MLPs (Mixtral, Qwen-MoE shared experts; engine.moe) and DeepSeek's multi-head latent attention
(engine.mla).
Projections are fused as the cost model lists them: qkv, o, gate_up, down, experts, lm_head.
Values are random but never zero: timings do not depend on them, and tests compare paths.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from core.model_spec import ModelSpec
from engine.attention import StepLayout, varlen_attention
from engine.fused import act_mul, add_rmsnorm, gemv, rope_and_cache, use_triton
from engine.mla import MLAttention
from engine.moe import check_routing, routed_experts, select_experts
from engine.quant import Int4Linear
from engine.quantize import quantize_linears

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class Dense(nn.Linear):
    """nn.Linear that streams its weight through a Triton GEMV for a single row when `gemv` is on."""

    gemv = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gemv and x.shape[0] == 1 and use_triton(x):
            return gemv(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, offset: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim))
        self.eps, self.offset = eps, offset  # Gemma scales by (1 + w)

    def forward(self, x, residual=None):
        return add_rmsnorm(x, residual, self.weight, self.eps, self.offset)


def is_gemma(spec: ModelSpec) -> bool:
    return spec.model_type.startswith("gemma")


def sliding_layer_ids(spec: ModelSpec) -> set[int]:
    """Which layers use the sliding window (config `layer_types`, else all, else Gemma's every-p-th global)."""
    if not spec.sliding_layers:
        return set()
    types = spec.config.get("text_config", spec.config).get("layer_types")
    if isinstance(types, list) and len(types) == spec.num_layers:
        return {i for i, t in enumerate(types) if t == "sliding_attention"}
    if spec.sliding_layers >= spec.num_layers:
        return set(range(spec.num_layers))
    period = round(spec.num_layers / max(1, spec.num_layers - spec.sliding_layers))
    return {i for i in range(spec.num_layers) if (i + 1) % period}


def rope_tables(head_dim: int, base: float, max_pos: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    ang = torch.outer(torch.arange(max_pos, device=device, dtype=torch.float32), inv)
    return ang.cos().contiguous(), ang.sin().contiguous()


class Attention(nn.Module):
    def __init__(self, spec: ModelSpec, window: int, rope_base: float) -> None:
        super().__init__()
        self.nh, self.nkv, self.hd = spec.num_heads, spec.num_kv_heads, spec.head_dim
        self.wqkv = Dense(spec.hidden_size, (self.nh + 2 * self.nkv) * self.hd, bias=spec.qkv_bias)
        self.wo = Dense(self.nh * self.hd, spec.hidden_size, bias=False)
        self.window, self.rope_base = window, rope_base
        cfg = spec.config.get("text_config", spec.config)
        self.scale = float(cfg.get("query_pre_attn_scalar") or self.hd) ** -0.5
        self.qk_norm = spec.qk_norm
        if spec.qk_norm:
            off = 1.0 if is_gemma(spec) else 0.0
            eps = float(cfg.get("rms_norm_eps", 1e-6))
            self.q_norm, self.k_norm = RMSNorm(self.hd, eps, off), RMSNorm(self.hd, eps, off)

    def forward(self, x, lay: StepLayout, rope, k_pool, v_pool):
        t = x.shape[0]
        qkv = self.wqkv(x).view(t, self.nh + 2 * self.nkv, self.hd)
        q, k, v = qkv[:, : self.nh], qkv[:, self.nh : self.nh + self.nkv], qkv[:, self.nh + self.nkv :]
        if self.qk_norm:
            q = self.q_norm(q.reshape(-1, self.hd))[0].view(t, self.nh, self.hd)
            k = self.k_norm(k.reshape(-1, self.hd))[0].view(t, self.nkv, self.hd)
        cos, sin = rope
        q = rope_and_cache(q, k, v, cos, sin, lay.positions, lay.slots, k_pool, v_pool)
        o = varlen_attention(q, k_pool, v_pool, lay, self.scale, self.window)
        return self.wo(o.reshape(t, self.nh * self.hd))


class MLP(nn.Module):
    def __init__(self, hidden: int, inter: int, act: str) -> None:
        super().__init__()
        self.gate_up = Dense(hidden, 2 * inter, bias=False)
        self.down = Dense(inter, hidden, bias=False)
        self.act = act

    def forward(self, x):
        return self.down(act_mul(self.gate_up(x), self.act))


class MoE(nn.Module):
    """Top-k routed experts: tokens sorted by expert, one Triton grouped GEMM per projection on CUDA
    (engine.moe), the loop over experts elsewhere."""

    # engine.moe.ROUTINGS: random weights do not route like a trained router (calibrate.bench times this one)
    routing_default = "uniform"

    def __init__(self, spec: ModelSpec, act: str) -> None:
        super().__init__()
        h, i, e = spec.hidden_size, spec.moe_intermediate_size, spec.num_experts
        self.router = Dense(h, e, bias=False)
        self.w_gate_up = nn.Parameter(torch.empty(e, 2 * i, h))  # [E, N, K] like a linear weight
        self.w_down = nn.Parameter(torch.empty(e, h, i))
        self.top_k, self.act, self.num_experts = spec.experts_per_token, act, e
        # Mixtral renormalises the top-k weights; DeepSeek-V2 and Qwen-MoE configs say norm_topk_prob
        self.renormalize = bool(spec.config.get("text_config", spec.config).get("norm_topk_prob", True))
        self.routing = self.routing_default
        self.shared = None
        if spec.num_shared_experts:
            si = spec.shared_expert_intermediate_size or spec.moe_intermediate_size * spec.num_shared_experts
            self.shared = MLP(h, si, act)

    def select(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        """(gate weights, expert ids) of the tokens `x`, by `routing`."""
        return select_experts(self.router(x), self.top_k, self.renormalize, self.routing)

    def forward(self, x):
        weights, ids = self.select(x)
        out = routed_experts(x, self.w_gate_up, self.w_down, weights, ids, self.act)
        if self.shared is not None:
            out = out + self.shared(x)
        return out


class Block(nn.Module):
    def __init__(self, spec: ModelSpec, layer: int, window: int, rope_base: float) -> None:
        super().__init__()
        cfg = spec.config.get("text_config", spec.config)
        eps = float(cfg.get("rms_norm_eps", 1e-5))
        gemma = is_gemma(spec)
        off = 1.0 if gemma else 0.0
        act = "gelu_tanh" if gemma else "silu"
        self.attn = MLAttention(spec, rope_base) if spec.is_mla else Attention(spec, window, rope_base)
        self.attn_norm = RMSNorm(spec.hidden_size, eps, off)
        self.mlp_norm = RMSNorm(spec.hidden_size, eps, off)
        # Gemma 3 also normalises each sub-layer's output before the residual add
        self.post_norms = gemma
        if gemma:
            self.post_attn_norm = RMSNorm(spec.hidden_size, eps, off)
            self.post_mlp_norm = RMSNorm(spec.hidden_size, eps, off)
        moe = spec.is_moe and layer >= spec.first_dense_layers
        self.mlp = MoE(spec, act) if moe else MLP(spec.hidden_size, spec.intermediate_size, act)

    def forward(self, x, residual, lay, ropes, k_pool, v_pool):
        """Pre-norm block with the residual add fused into the next norm; returns (out, residual)."""
        hn, residual = self.attn_norm(x, residual)
        a = self.attn(hn, lay, ropes[self.attn.rope_base], k_pool, v_pool)
        if self.post_norms:
            a = self.post_attn_norm(a)[0]
        hn, residual = self.mlp_norm(a, residual)
        m = self.mlp(hn)
        if self.post_norms:
            m = self.post_mlp_norm(m)[0]
        return m, residual


class Transformer(nn.Module):
    """The model; `forward(tokens, layout, logits_index)` runs one engine step over the KV pools."""

    def __init__(self, spec: ModelSpec, num_layers: int) -> None:
        super().__init__()
        cfg = spec.config.get("text_config", spec.config)
        self.spec, self.num_layers = spec, num_layers
        h = spec.hidden_size
        self.embed = nn.Embedding(spec.vocab_size, h)
        theta = float(cfg.get("rope_theta", 10000.0))
        local_theta = float(cfg.get("rope_local_base_freq", theta))
        sliding = sliding_layer_ids(spec)
        self.layers = nn.ModuleList(
            Block(spec, i, spec.sliding_window if i in sliding else 0, local_theta if i in sliding else theta)
            for i in range(num_layers)
        )
        self.norm = RMSNorm(h, float(cfg.get("rms_norm_eps", 1e-5)), 1.0 if is_gemma(spec) else 0.0)
        self.lm_head = Dense(h, spec.vocab_size, bias=False)
        self.embed_scale = math.sqrt(h) if is_gemma(spec) else 1.0
        self.rope_bases = sorted({blk.attn.rope_base for blk in self.layers})
        self.ropes: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] = []

    def setup_rope(self, max_pos: int) -> None:
        dev = self.embed.weight.device
        dim = self.spec.qk_rope_head_dim if self.spec.is_mla else self.spec.head_dim
        self.ropes = {b: rope_tables(dim, b, max_pos, dev) for b in self.rope_bases}

    def allocate_kv(self, pool_tokens: int, dtype: torch.dtype | None = None, seed: int = 0) -> None:
        """One K and one V pool per layer, [pool_tokens, kv_heads, head_dim], filled with random data."""
        dev = self.embed.weight.device
        dtype = dtype or self.embed.weight.dtype
        g = torch.Generator(device=dev).manual_seed(seed + 1)
        shape = (pool_tokens, self.spec.num_kv_heads, self.spec.head_dim)
        self.kv = []
        if self.spec.is_mla:  # one latent + rope-key vector per token, which is also the value (engine.mla)
            shape = (pool_tokens, 1, self.spec.kv_elems_per_token_per_layer)
            self.kv = [
                (c, c)
                for c in (torch.randn(shape, device=dev, dtype=dtype, generator=g) for _ in self.layers)
            ]
            return
        for _ in self.layers:
            k = torch.randn(shape, device=dev, dtype=dtype, generator=g)
            v = torch.randn(shape, device=dev, dtype=dtype, generator=g)
            self.kv.append((k, v))

    def set_moe_routing(self, routing: str) -> None:
        """How every MoE layer picks its experts (engine.moe.ROUTINGS; "uniform" by default)."""
        check_routing(routing)
        for m in self.modules():
            if isinstance(m, MoE):
                m.routing = routing

    def set_gemv(self, on: bool) -> None:
        for m in self.modules():
            if isinstance(m, Dense):
                m.gemv = on

    def gemv_weights(self) -> list[torch.Tensor]:
        """The weights a batch-1 step streams through the Triton GEMV (Dense layers with `gemv` on)."""
        return [m.weight for m in self.modules() if isinstance(m, Dense) and m.gemv]

    def forward(self, tokens: torch.Tensor, lay: StepLayout, logits_index: torch.Tensor | None = None):
        x, residual = self.hidden(tokens, lay)
        return self.logits(x, residual, logits_index)

    def hidden(self, tokens: torch.Tensor, lay: StepLayout) -> tuple[torch.Tensor, torch.Tensor]:
        """Every layer over the step's tokens: (last block's output, residual stream), [T, hidden] each."""
        x = self.embed(tokens)
        if self.embed_scale != 1.0:
            x = x * self.embed_scale
        residual = None
        for blk, (k_pool, v_pool) in zip(self.layers, self.kv, strict=True):
            x, residual = blk(x, residual, lay, self.ropes, k_pool, v_pool)
        return x, residual

    def logits(
        self, x: torch.Tensor, residual: torch.Tensor, index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Final norm and LM head over the rows `index` of the hidden states (all rows if None)."""
        if index is not None:
            x, residual = x.index_select(0, index), residual.index_select(0, index)
        return self.lm_head(self.norm(x, residual)[0])


def _init_weights(model: Transformer, seed: int) -> None:
    """Random non-zero weights: N(0, 1/K) for matrices (keeps activations O(1)), norms near their identity."""
    g = torch.Generator(device=model.embed.weight.device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            init_parameter(name, p, model.spec, g)


def init_parameter(name: str, p: torch.Tensor, spec: ModelSpec, g: torch.Generator) -> None:
    """Draw one parameter in place, as `_init_weights` does in parameter order (engine.parallel draws each
    full tensor this way and keeps its rank's shard, so a sharded model holds the one-process weights)."""
    if name.endswith("norm.weight"):
        p.normal_(0.0, 0.1, generator=g).add_(0.0 if is_gemma(spec) else 1.0)
    elif name == "embed.weight":
        p.normal_(0.0, 1.0, generator=g)
    elif p.dim() == 1:  # biases
        p.normal_(0.0, 0.02, generator=g)
    else:
        p.normal_(0.0, p.shape[-1] ** -0.5, generator=g)


def build_model(
    spec: ModelSpec,
    dtype: str = "bf16",
    device: str = "cuda",
    num_layers: int | None = None,
    seed: int = 0,
    max_position: int | None = None,
) -> Transformer:
    """The first `num_layers` layers (all by default) of `spec` with random weights, ready for steps.

    dtype: 'bf16', 'fp16', 'fp32' for all weights, or 'fp8'/'int8'/'int4' for the layers' linear weights
    (embeddings, norms and lm_head stay bf16; int4 is weight-only, engine/quant.py). Call `model.allocate_kv(tokens)` before running.
    """
    n, quant, tdtype, device, seed, max_position = build_options(
        spec, dtype, device, num_layers, seed, max_position
    )
    with torch.device("meta"):  # no host or fp32 copy of the weights: allocate once, in place
        model = Transformer(spec, n).to(tdtype)
    model = model.to_empty(device=device)
    if spec.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    _init_weights(model, seed)
    finish_model(model, quant, max_position)
    return model.eval().requires_grad_(False)


def build_options(
    spec: ModelSpec,
    dtype: str = "bf16",
    device: str = "cuda",
    num_layers: int | None = None,
    seed: int = 0,
    max_position: int | None = None,
) -> tuple:
    """build_model's keywords, checked: (layers, quantized dtype or None, torch dtype, device, seed,
    max_position); the tensor- and pipeline-parallel builders (engine/parallel.py) take the same."""
    n = spec.num_layers if num_layers is None else int(num_layers)
    if not 1 <= n <= spec.num_layers:
        raise ValueError(f"num_layers must be in 1..{spec.num_layers} for {spec.name} (got {num_layers})")
    quant = dtype if dtype in ("fp8", "int8", "int4") else None
    return n, quant, DTYPES["bf16" if quant else dtype], device, seed, max_position


def finish_model(model: nn.Module, quant: str | None, max_position: int | None) -> None:
    """The last steps of building a model: its RoPE tables, and its layers' linear weights quantized."""
    spec = model.spec
    model.setup_rope(max_position or max(spec.max_position_embeddings, 8192) or 8192)
    if quant == "int4":
        quantize_linears(model.layers, quant, cls=Int4Linear)
    elif quant:
        quantize_linears(model.layers, quant)
