"""A model's architecture, read from a Hugging Face `config.json`, and what follows from it.

Parameter counts, weight bytes per dtype, FLOPs per token, KV bytes per token (GQA, MLA,
sliding-window layers) and the GEMM shapes a forward pass runs. Field names are the ones
Hugging Face writes; multimodal configs use their `text_config`.

Two readers of a config give the same ModelSpec: the hand-written one below (always there, no dependency) and,
when a caller asks for it (`via_transformers=True`) and transformers is installed, transformers' own config class
for the model_type, which fills every field the file leaves out with that class's default. The simulator never
asks: importing transformers' AutoConfig imports torch (2.0 s cumulative by `python -X importtime -c "from
transformers import AutoConfig"`, transformers 5.24 on a shared 2-core machine), and the simulator imports
neither (DESIGN.md). tests/core/test_model_spec_transformers.py
reads every catalogue model both ways and checks every derived number is equal.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import math
import os
import warnings
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

from core.errors import ConfigError, cut
from core.resources import shipped

CATALOGUE_DIR = shipped("catalogue")

# Bytes per element of each storage dtype. int4 carries one 16-bit scale per group of 128
# weights (GPTQ/AWQ default group size), hence 0.5 + 2/128.
DTYPE_BYTES: dict[str, float] = {
    "fp32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5 + 2.0 / 128,
}


def dtype_bytes(dtype: str) -> float:
    """Bytes per element for a dtype name, with a clear error for unknown names."""
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ConfigError(f"dtype {dtype!r} is unknown; use one of {', '.join(DTYPE_BYTES)}") from None


@dataclass(frozen=True, slots=True)
class Gemm:
    """One weight matrix applied to every token: y[T, n] = x[T, k] @ W[k, n], present in `layers` layers."""

    name: str
    k: int
    n: int
    layers: int


@dataclass(frozen=True)
class ModelSpec:
    """The architecture numbers the planner needs, derived from a Hugging Face config."""

    name: str
    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_embeddings: bool = False
    qkv_bias: bool = False
    norms_per_layer: int = 2
    qk_norm: bool = False
    # MoE (0 experts = dense). Layers before `first_dense_layers` use a dense MLP.
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    num_shared_experts: int = 0
    shared_expert_intermediate_size: int = 0
    first_dense_layers: int = 0
    # MLA (DeepSeek-V2/V3): kv_lora_rank > 0 switches it on.
    kv_lora_rank: int = 0
    q_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    qk_nope_head_dim: int = 0
    v_head_dim: int = 0
    # Sliding-window layers: window in tokens and which layers use it.
    sliding_window: int = 0
    sliding_layers: int = 0
    max_position_embeddings: int = 0
    # Qwen2-MoE gates its shared expert's output with a (hidden -> 1) projection per MoE layer.
    shared_expert_gate: bool = False
    config: dict = field(default_factory=dict, repr=False, compare=False, hash=False)
    # which reader filled the fields the config leaves out: "hand-written", or "transformers X.Y <ConfigClass>"
    read_by: str = field(default="hand-written", compare=False, hash=False)

    # ---------------------------------------------------------------- structure
    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def moe_layers(self) -> int:
        return self.num_layers - self.first_dense_layers if self.is_moe else 0

    @property
    def dense_mlp_layers(self) -> int:
        return self.num_layers - self.moe_layers

    @property
    def full_attention_layers(self) -> int:
        return self.num_layers - self.sliding_layers

    @property
    def q_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim if self.is_mla else self.head_dim

    @cached_property
    def attention_gemms(self) -> list[Gemm]:
        h, L = self.hidden_size, self.num_layers
        if self.is_mla:
            nq, qd = self.num_heads, self.q_head_dim
            g = []
            if self.q_lora_rank:
                g += [Gemm("q_a", h, self.q_lora_rank, L), Gemm("q_b", self.q_lora_rank, nq * qd, L)]
            else:
                g += [Gemm("q", h, nq * qd, L)]
            g += [
                Gemm("kv_a", h, self.kv_lora_rank + self.qk_rope_head_dim, L),
                Gemm("kv_b", self.kv_lora_rank, nq * (self.qk_nope_head_dim + self.v_head_dim), L),
                Gemm("o", nq * self.v_head_dim, h, L),
            ]
            return g
        qkv = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        return [Gemm("qkv", h, qkv, L), Gemm("o", self.num_heads * self.head_dim, h, L)]

    @cached_property
    def dense_gemms(self) -> list[Gemm]:
        """GEMMs every token runs through (attention projections, dense MLPs, shared experts, router)."""
        h = self.hidden_size
        g = list(self.attention_gemms)
        if self.dense_mlp_layers:
            g += [
                Gemm("gate_up", h, 2 * self.intermediate_size, self.dense_mlp_layers),
                Gemm("down", self.intermediate_size, h, self.dense_mlp_layers),
            ]
        if self.is_moe:
            g.append(Gemm("router", h, self.num_experts, self.moe_layers))
            if self.num_shared_experts:
                si = (
                    self.shared_expert_intermediate_size
                    or self.moe_intermediate_size * self.num_shared_experts
                )
                g += [
                    Gemm("shared_gate_up", h, 2 * si, self.moe_layers),
                    Gemm("shared_down", si, h, self.moe_layers),
                ]
                if self.shared_expert_gate:
                    g.append(Gemm("shared_expert_gate", h, 1, self.moe_layers))
        return g

    @cached_property
    def expert_gemms(self) -> list[Gemm]:
        """One routed expert's GEMMs (per MoE layer); each token visits `experts_per_token` of them."""
        if not self.is_moe:
            return []
        h, i = self.hidden_size, self.moe_intermediate_size
        return [Gemm("expert_gate_up", h, 2 * i, self.moe_layers), Gemm("expert_down", i, h, self.moe_layers)]

    @property
    def lm_head(self) -> Gemm:
        return Gemm("lm_head", self.hidden_size, self.vocab_size, 1)

    # ---------------------------------------------------------------- counts
    @staticmethod
    def _params(gemms: list[Gemm]) -> int:
        return sum(g.k * g.n * g.layers for g in gemms)

    @cached_property
    def linear_params(self) -> int:
        """Weights of the per-layer matrices (all experts), excluding embeddings and LM head."""
        return self._params(self.dense_gemms) + self.num_experts * self._params(self.expert_gemms)

    @cached_property
    def other_params(self) -> int:
        """Embeddings, LM head, norms, biases: kept in 16-bit even when linear weights are quantized."""
        h, L = self.hidden_size, self.num_layers
        n = self.vocab_size * h * (1 if self.tie_embeddings else 2)
        n += L * self.norms_per_layer * h + h
        if self.qk_norm:
            n += L * 2 * self.head_dim
        if self.qkv_bias:
            n += L * (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        if self.is_mla:
            n += L * (self.kv_lora_rank + (self.q_lora_rank or 0))  # the latent norms
        return n

    @property
    def param_count(self) -> int:
        return self.linear_params + self.other_params

    @cached_property
    def active_param_count(self) -> int:
        """Parameters one token touches (MoE: top-k routed experts instead of all of them)."""
        inactive = (self.num_experts - self.experts_per_token) * self._params(self.expert_gemms)
        return self.param_count - inactive

    def weight_bytes(self, dtype: str = "bf16") -> float:
        """Bytes of all weights with linear layers stored in `dtype` (embeddings, norms in 16-bit)."""
        return self.linear_params * dtype_bytes(dtype) + self.other_params * 2.0

    # ---------------------------------------------------------------- KV cache
    def kv_bytes_per_token(self, dtype: str = "bf16") -> float:
        """KV bytes one token adds, summed over full-attention layers (sliding layers: see below)."""
        return self.kv_elems_per_token_per_layer * self.full_attention_layers * dtype_bytes(dtype)

    def sliding_kv_bytes_per_token(self, dtype: str = "bf16") -> float:
        """KV bytes per token in the sliding-window layers; a sequence keeps at most `sliding_window` of these."""
        return self.kv_elems_per_token_per_layer * self.sliding_layers * dtype_bytes(dtype)

    @property
    def kv_elems_per_token_per_layer(self) -> int:
        if self.is_mla:  # the compressed latent plus the shared rope key
            return self.kv_lora_rank + self.qk_rope_head_dim
        return 2 * self.num_kv_heads * self.head_dim

    # ---------------------------------------------------------------- FLOPs
    @property
    def attn_flops_per_pair(self) -> float:
        """FLOPs of one (query token, key token) pair in one layer: QK^T and PV over all heads."""
        if self.is_mla:  # absorbed form, as decode kernels (FlashMLA) run it
            return 2.0 * self.num_heads * (2 * self.kv_lora_rank + self.qk_rope_head_dim)
        return 2.0 * self.num_heads * self.head_dim * 2

    def flops_per_token(self, context: int = 0) -> float:
        """Forward FLOPs for one token attending to `context` earlier tokens (2 per MAC)."""
        linear = 2.0 * (
            self._params(self.dense_gemms) + self.experts_per_token * self._params(self.expert_gemms)
        )
        linear += 2.0 * self.hidden_size * self.vocab_size
        attn_ctx = self.full_attention_layers * context + self.sliding_layers * min(
            context, self.sliding_window
        )
        return linear + self.attn_flops_per_pair * attn_ctx


# Fields a published config.json may leave to the defaults of transformers' config class, which
# then fill them in: google/gemma-3-{4b,12b,27b}-it ship a text_config without head_dim or
# vocab_size (and 4b without its head counts). Keyed by model_type less "_text"; values are the
# defaults of transformers' config classes (5.x: Gemma3TextConfig, Gemma2Config, GemmaConfig,
# Qwen3Config, MistralConfig) where the planner's generic rule (head_dim = hidden / heads, no window) would differ.
# This is the reader without transformers; with it, the class itself fills them (`via_transformers`).
_HF_DEFAULTS: dict[str, dict] = {
    "gemma3": {
        "vocab_size": 262_208,
        "hidden_size": 2304,
        "intermediate_size": 9216,
        "num_hidden_layers": 26,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "max_position_embeddings": 131_072,
        "sliding_window": 4096,
    },
    "gemma2": {"head_dim": 256, "sliding_window": 4096},
    "gemma": {"head_dim": 256},
    "qwen3": {"head_dim": 128},
    "mistral": {"sliding_window": 4096},  # all layers; Mistral-7B-v0.3 writes `null` to turn it off
}
# Every p-th layer is global, the others slide: transformers' default patterns (Gemma3TextConfig
# sliding_window_pattern 6, Gemma2Config alternating), used where the config writes neither
# `layer_types` nor a pattern.
_DEFAULT_SLIDING_PATTERN = {"gemma3": 6, "gemma2": 2}


def _text_config(cfg: dict, hand_defaults: bool = True) -> dict:
    """The text model's fields (a multimodal config's `text_config`), with _HF_DEFAULTS under them."""
    inner = cfg.get("text_config")
    c = cfg
    if isinstance(inner, dict):
        c = {**inner}
        for k in ("tie_word_embeddings", "architectures", "model_type"):
            if k in cfg and k not in c:
                c[k] = cfg[k]
    defaults = _HF_DEFAULTS.get(str(c.get("model_type", "")).removesuffix("_text")) if hand_defaults else None
    return {**defaults, **c} if defaults else c


# Families that are not decoder-only attention stacks: their layers (state-space scans, linear attention,
# recurrences) have costs and state this planner does not model, so they are refused, not run as dense.
_UNMODELLED_TYPES = {
    "mamba": "state-space (Mamba) layers",
    "mamba2": "state-space (Mamba-2) layers",
    "falcon_mamba": "state-space (Mamba) layers",
    "nemotron_h": "hybrid Mamba-attention layers",
    "jamba": "hybrid Mamba-attention layers",
    "bamba": "hybrid Mamba-attention layers",
    "zamba": "hybrid Mamba-attention layers",
    "zamba2": "hybrid Mamba-attention layers",
    "falcon_h1": "hybrid Mamba-attention layers",
    "granitemoehybrid": "hybrid Mamba-attention layers",
    "plamo2": "hybrid Mamba-attention layers",
    "lfm2": "hybrid convolution-attention layers",
    "qwen3_next": "hybrid linear-attention layers",
    "minimax": "hybrid linear-attention layers",
    "minimax_m1": "hybrid linear-attention layers",
    "recurrent_gemma": "recurrent (Griffin) layers",
    "rwkv": "recurrent (RWKV) layers",
    "rwkv5": "recurrent (RWKV) layers",
    "rwkv6": "recurrent (RWKV) layers",
    "xlstm": "recurrent (xLSTM) layers",
    # encoder-decoders: an encoder pass and cross-attention per layer, which the cost model does not price
    "t5": "encoder-decoder layers",
    "mt5": "encoder-decoder layers",
    "umt5": "encoder-decoder layers",
    "switch_transformers": "encoder-decoder layers",
    "bart": "encoder-decoder layers",
    "mbart": "encoder-decoder layers",
    "pegasus": "encoder-decoder layers",
    "marian": "encoder-decoder layers",
    "whisper": "encoder-decoder layers",
    "encoder-decoder": "encoder-decoder layers",
}
# Fields only state-space / hybrid configs carry (Nemotron-H, Jamba, Falcon-H1, Zamba, Bamba, Mamba).
_SSM_FIELDS = (
    "hybrid_override_pattern",
    "layers_block_type",
    "ssm_cfg",
    "ssm_state_size",
    "mamba_d_state",
    "mamba_d_ssm",
    "mamba_n_heads",
    "state_size",
    "time_step_rank",
    "attn_layer_period",
)
_ATTENTION_LAYER_TYPES = {"full_attention", "sliding_attention"}
_SUPPORTED = (
    "decoder-only transformers: dense, GQA, sliding-window, MoE and MLA "
    "(llama, mistral, mixtral, qwen2/3, gemma3, deepseek_v2/v3 and configs like them)"
)
_MAX_FIELD = 2**31  # above every size in a published config; keeps parameter counts exact in float64


def _refuse_unmodelled(c: dict, source: str) -> None:
    mt = c.get("model_type")
    what = _UNMODELLED_TYPES.get(mt) if isinstance(mt, str) else None
    if what is None:
        marker = next((k for k in _SSM_FIELDS if c.get(k) is not None), None)
        types = c.get("layer_types")
        other = sorted({str(t) for t in types} - _ATTENTION_LAYER_TYPES) if isinstance(types, list) else []
        if c.get("is_encoder_decoder") is True:  # any family: T5, BART, Whisper and their kin set it
            what = "encoder-decoder layers (`is_encoder_decoder`)"
        elif marker:
            what = f"state-space layers (`{marker}`)"
        elif other:
            what = f"layer types {', '.join(other)}"
        else:
            return
    raise ConfigError(
        f"{source}: model_type: architecture {mt!r} with {what} is not modelled; supported: {_SUPPORTED}"
    )


def _int(c: dict, key: str, source: str, *, required: bool = False, minimum: int = 0) -> int | None:
    """An integer field of the config: None when absent or null (and not required), else checked."""
    value = c.get(key)
    if value is None:
        if not required:
            return None
        if key in c:
            raise ConfigError(
                f"{source}: `{key}` is null; set it to a positive integer (Hugging Face config.json field)"
            )
        raise ConfigError(
            f"{source}: `{key}` is missing from the model config; add it (Hugging Face config.json field)"
        )
    integral = isinstance(value, int) or (
        isinstance(value, float) and math.isfinite(value) and value.is_integer()
    )
    if isinstance(value, bool) or not integral:
        raise ConfigError(
            f"{source}: `{key}` is {cut(repr(value), 40)}, not an integer; write a whole number"
        )
    value = int(value)
    if value < minimum:
        rule = "positive" if minimum == 1 else f"at least {minimum}"
        raise ConfigError(f"{source}: `{key}` must be {rule} (got {value}); fix the config.json field")
    if value > _MAX_FIELD:
        raise ConfigError(
            f"{source}: `{key}` is {value:,}, larger than any model's; fix the config.json field"
        )
    return value


def _flag(c: dict, key: str, default: bool, source: str) -> bool:
    value = c.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"{source}: `{key}` is {value!r}, not true or false; write true or false")
    return value


def _opt(c: dict, key: str, source: str) -> int:
    """An optional integer field of the config, 0 when absent or null."""
    return _int(c, key, source) or 0


def _model_type(cfg: dict, c: dict, source: str) -> str:
    mt = c.get("model_type") or cfg.get("model_type") or "llama"
    if not isinstance(mt, str):
        raise ConfigError(f"{source}: `model_type` is {mt!r}, not a name; write the Hugging Face model_type")
    return mt


def _shape(c: dict, source: str) -> dict:
    """Width, depth, heads and vocabulary: the fields every decoder config must give."""

    def need(key: str) -> int:
        return _int(c, key, source, required=True, minimum=1)

    h, L, nh = need("hidden_size"), need("num_hidden_layers"), need("num_attention_heads")
    nkv = _int(c, "num_key_value_heads", source, minimum=1) or nh
    hd = _int(c, "head_dim", source, minimum=1)
    if hd is None:
        if h % nh:
            raise ConfigError(
                f"{source}: `hidden_size` ({h}) is not a multiple of num_attention_heads ({nh}) and there is "
                "no head_dim; add head_dim or fix the head count"
            )
        hd = h // nh
    inter = need("intermediate_size")
    vocab = need("vocab_size")
    if nh % nkv:
        raise ConfigError(
            f"{source}: num_attention_heads ({nh}) must be a multiple of num_key_value_heads ({nkv})"
        )
    return dict(
        hidden_size=h,
        num_layers=L,
        num_heads=nh,
        num_kv_heads=nkv,
        head_dim=hd,
        intermediate_size=inter,
        vocab_size=vocab,
    )


def _sliding(c: dict, mt: str, L: int, source: str) -> dict:
    """The sliding window and how many layers use it: Mistral/Qwen2 apply it to all layers when used;
    Gemma 2 and 3 interleave."""
    window = _opt(c, "sliding_window", source)
    sliding = 0
    if window:
        if isinstance(c.get("layer_types"), list):
            sliding = sum(1 for t in c["layer_types"] if t == "sliding_attention")
        elif c.get("sliding_window_pattern"):
            p = _int(c, "sliding_window_pattern", source, minimum=1)
            sliding = L - L // p  # every p-th layer is global
        elif family := next((f for f in _DEFAULT_SLIDING_PATTERN if mt.startswith(f)), None):
            sliding = L - L // _DEFAULT_SLIDING_PATTERN[family]
        elif _flag(c, "use_sliding_window", True, source):
            # Known gap: transformers' Qwen2/Qwen3 slide only layers >= max_window_layers (default 28); here every
            # layer does, as engine/model.py's sliding_layer_ids assumes. via_transformers counts them as
            # transformers does (from its layer_types); the engine's choice of layers does not follow yet.
            sliding = L
        if window >= _opt(c, "max_position_embeddings", source) > 0:
            sliding = 0  # a window as long as the context is no window
    return dict(sliding_window=window if sliding else 0, sliding_layers=sliding)


def _experts(c: dict, inter: int, L: int, source: str) -> dict:
    """Mixture-of-experts fields (all 0 for a dense model), checked against each other."""
    n_exp = _opt(c, "num_local_experts", source) or _opt(c, "n_routed_experts", source)
    n_exp = n_exp or _opt(c, "num_experts", source)
    topk = _opt(c, "num_experts_per_tok", source) if n_exp else 0
    moe_i = _opt(c, "moe_intermediate_size", source) or (inter if n_exp else 0)
    n_shared = _opt(c, "n_shared_experts", source)
    shared_i = _opt(c, "shared_expert_intermediate_size", source)
    if shared_i and not n_shared:
        n_shared = 1
    first_dense = _opt(c, "first_k_dense_replace", source) if n_exp else 0
    if n_exp and not 1 <= topk <= n_exp:
        raise ConfigError(
            f"{source}: `num_experts_per_tok` is {topk or 'missing'}; an MoE config of {n_exp} experts needs "
            f"1 to {n_exp} experts per token"
        )
    if first_dense > L:
        raise ConfigError(
            f"{source}: `first_k_dense_replace` ({first_dense}) is more than num_hidden_layers ({L}); fix it"
        )
    return dict(
        num_experts=n_exp,
        experts_per_token=topk,
        moe_intermediate_size=moe_i,
        num_shared_experts=n_shared,
        shared_expert_intermediate_size=shared_i,
        first_dense_layers=first_dense,
    )


def _mla_heads(c: dict, source: str) -> dict:
    """MLA's per-head dims, each required positive when the config has a latent KV (kv_lora_rank)."""
    mla = {k: _opt(c, k, source) for k in ("qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")}
    if _opt(c, "kv_lora_rank", source) and not all(mla.values()):
        missing = next(k for k, v in mla.items() if not v)
        raise ConfigError(
            f"{source}: `{missing}` is missing or 0; an MLA config (kv_lora_rank) needs it positive"
        )
    return mla


def _derive(cfg: dict, c: dict, name: str, source: str) -> ModelSpec:
    """The ModelSpec of a text config `c` (fields checked, one line for the first bad one); `cfg` is the file."""
    _refuse_unmodelled(c, source)
    mt = _model_type(cfg, c, source)
    # the stages run in this order so that, of several bad fields, the same one is reported first
    shape = _shape(c, source)
    sliding = _sliding(c, mt, shape["num_layers"], source)
    experts = _experts(c, shape["intermediate_size"], shape["num_layers"], source)
    mla = _mla_heads(c, source)
    gemma = mt.startswith("gemma")
    return ModelSpec(
        name=name,
        model_type=mt,
        **shape,
        tie_embeddings=_flag(c, "tie_word_embeddings", gemma, source),
        qkv_bias=_flag(c, "attention_bias", mt.startswith("qwen2"), source),
        norms_per_layer=4 if mt.startswith(("gemma2", "gemma3")) else 2,  # Gemma 1 has no post-norms
        qk_norm=mt.startswith(("gemma3", "qwen3")),
        **experts,
        kv_lora_rank=_opt(c, "kv_lora_rank", source),
        q_lora_rank=_opt(c, "q_lora_rank", source),
        **mla,
        **sliding,
        max_position_embeddings=_opt(c, "max_position_embeddings", source),
        shared_expert_gate=mt.startswith("qwen2_moe") and experts["num_shared_experts"] > 0,
        config=cfg,
    )


def transformers_text_config(cfg: dict) -> tuple[dict, str] | None:
    """The text config as transformers' config class for its model_type fills it (every field the class defines,
    defaults included), and a label naming that class; None when transformers is not installed, does not know
    the model_type, or rejects the config (the hand-written reader then says what is wrong).

    transformers is imported here, lazily, only when installed (it imports torch: seconds), never at module
    import. Nothing is fetched: AutoConfig.for_model builds the class from this dict alone, and HF_HUB_OFFLINE
    is set (unless the caller set it) before the import so that nothing else in it reaches the hub either."""
    try:
        if importlib.util.find_spec("transformers") is None:
            return None
    except ValueError:  # `transformers.__spec__` unset: a stand-in module, treat it as absent
        return None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    mt = cfg.get("model_type")
    try:
        tf = importlib.import_module("transformers")  # optional and lazy (see the module docstring)
        known = isinstance(mt, str) and mt in tf.models.auto.configuration_auto.CONFIG_MAPPING
    except Exception:  # an install that cannot import (no torch, a broken build): the hand-written reader
        return None
    if not known:
        return None
    verbosity = tf.logging.get_verbosity()
    tf.logging.set_verbosity_error()  # its deprecation notes on old configs are not the planner's output
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # a copy: for_model rewrites nested dicts (rope_scaling) in place
            text = tf.AutoConfig.for_model(**copy.deepcopy(cfg)).get_text_config()
            filled = text.to_dict()
    except Exception:  # its validation refused a field: the hand-written reader names it in one line
        return None
    finally:
        tf.logging.set_verbosity(verbosity)
    return filled, f"transformers {tf.__version__} {type(text).__name__}"


def _filled_by_transformers(cfg: dict, source: str) -> tuple[dict, str] | None:
    """The file's text config with transformers' values over it (keys only the file has are kept); none of the
    hand-written defaults (_HF_DEFAULTS) come in."""
    got = transformers_text_config(cfg)
    if got is None:
        return None
    filled, label = got
    c = _text_config(cfg, hand_defaults=False)
    out = {**c, **filled}
    # the file's name for it where it has one (a text_config without model_type: gemma3, not gemma3_text)
    out["model_type"] = c.get("model_type", filled.get("model_type"))
    if _opt(c, "kv_lora_rank", source):
        # MLA: transformers' DeepseekV2/V3Config set head_dim to the rotary dim (qk_rope_head_dim); the
        # planner's MLA terms use qk_nope/qk_rope/v_head_dim, and head_dim is what the file says, as without it.
        out["head_dim"] = c.get("head_dim")
    return out, label


def spec_from_config(
    cfg: dict, name: str = "custom", source: str = "config.json", *, via_transformers: bool = False
) -> ModelSpec:
    """Build a ModelSpec from a Hugging Face config dict. `via_transformers`: fields the config leaves out take
    the defaults of transformers' config class for its model_type, where transformers is installed and knows it
    (`read_by` says which reader did); the fields it writes are checked first by the hand-written reader, so a
    bad field gives the same one-line error either way."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"{source}: a model config must be a JSON object")
    c = _text_config(cfg)
    spec = _derive(cfg, c, name, source)
    if not via_transformers:
        return spec
    got = _filled_by_transformers(cfg, source)
    if got is None:
        return spec
    filled, label = got
    return replace(_derive(cfg, filled, name, source), read_by=label)


def _read_json(p: Path) -> object:
    """A config file's JSON, or one line saying why it cannot be read."""
    fix = "give a Hugging Face config.json (UTF-8 JSON text)"
    try:
        return json.loads(p.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{p}: model config: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); {fix}"
        ) from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"model config {str(p)!r} is not valid JSON ({e}); {fix}") from None
    except ValueError:  # an integer of more digits than Python converts (4,300)
        raise ConfigError(f"{p}: model config: holds a number too long to read; {fix}") from None
    except (OSError, RecursionError) as e:
        raise ConfigError(
            f"{p}: model config: cannot be read ({getattr(e, 'strerror', None) or e}); {fix}"
        ) from None


def catalogue_names() -> list[str]:
    """Names of the shipped model configs."""
    return sorted(p.stem for p in CATALOGUE_DIR.glob("*.json"))


def load_model(name_or_path: str, *, via_transformers: bool = False) -> ModelSpec:
    """A catalogue name (`llama-3.1-8b`) or a path to a Hugging Face config.json (or its folder).
    `via_transformers`: see spec_from_config (the simulator leaves it off; calibrate, which imports torch
    anyway, may turn it on)."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ConfigError(
                f"{p}: model: a folder with no config.json; give a catalogue name or a config.json path"
            )
        p = p / "config.json"
    if p.suffix == ".json" or p.exists():
        if not p.exists():
            raise ConfigError(
                f"model config {str(p)!r} does not exist; give a catalogue name or a config.json path"
            )
        return spec_from_config(
            _read_json(p),
            name=p.parent.name if p.name == "config.json" else p.stem,
            source=str(p),
            via_transformers=via_transformers,
        )
    key = name_or_path.lower()
    cat = CATALOGUE_DIR / f"{key}.json"
    if not cat.exists():
        names = catalogue_names()
        close = [n for n in names if key.split("-")[0] in n]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(
            f"model {name_or_path!r} is not in the catalogue{hint}; use one of {', '.join(names)} or a config.json path"
        )
    return spec_from_config(
        json.loads(cat.read_text()), name=key, source=str(cat), via_transformers=via_transformers
    )


def human_count(n: float) -> str:
    """12_345_678_901 -> '12.3B'."""
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.{1 if n / div < 100 else 0}f}{unit}"
    return str(int(n)) if math.isfinite(n) else str(n)
