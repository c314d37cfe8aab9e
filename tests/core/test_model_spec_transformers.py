"""The hand-written config reader against transformers' own config classes and models, on every catalogue model.

transformers is the reference for its architectures: read through its config class (`via_transformers=True`),
every field of ModelSpec and every number derived from it (parameter counts, KV bytes, FLOPs, GEMM shapes) must
be the one the hand-written reader gives, and the parameter count must be that of the model transformers builds
from the same config (on the meta device: no memory, no weights). CI installs transformers (the `calibrate`
extra), so there these tests run; on a machine without it they skip, and the fallback test still runs.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from core.errors import ConfigError
from core.model_spec import CATALOGUE_DIR, ModelSpec, catalogue_names, load_model, spec_from_config

if os.environ.get("CI"):  # the calibrate extra is installed in CI: a missing transformers is a failure there
    transformers = importlib.import_module("transformers")
else:
    transformers = pytest.importorskip("transformers")

NAMES = catalogue_names()
DTYPES = ("bf16", "fp8", "int4")
CONTEXTS = (0, 512, 4096, 100_000)


def catalogue_config(name: str) -> dict:
    return json.loads((CATALOGUE_DIR / f"{name}.json").read_text())


def transformers_config(cfg: dict):
    """transformers' text config for a config dict, built offline from the dict alone."""
    return transformers.AutoConfig.for_model(**json.loads(json.dumps(cfg))).get_text_config()


def derived(m: ModelSpec) -> dict:
    """Every number the planner takes from a ModelSpec, beyond its fields."""
    out = {
        "param_count": m.param_count,
        "active_param_count": m.active_param_count,
        "linear_params": m.linear_params,
        "other_params": m.other_params,
        "gemms": (m.attention_gemms, m.dense_gemms, m.expert_gemms, m.lm_head),
        "layers": (m.moe_layers, m.dense_mlp_layers, m.full_attention_layers, m.q_head_dim),
        "kv_elems_per_token_per_layer": m.kv_elems_per_token_per_layer,
        "attn_flops_per_pair": m.attn_flops_per_pair,
    }
    for d in DTYPES:
        out[f"weight_bytes[{d}]"] = m.weight_bytes(d)
        out[f"kv_bytes_per_token[{d}]"] = m.kv_bytes_per_token(d)
        out[f"sliding_kv_bytes_per_token[{d}]"] = m.sliding_kv_bytes_per_token(d)
    for ctx in CONTEXTS:
        out[f"flops_per_token[{ctx}]"] = m.flops_per_token(ctx)
    return out


def both_readers(cfg: dict) -> tuple[ModelSpec, ModelSpec]:
    hand = spec_from_config(cfg, name="m")
    via = spec_from_config(cfg, name="m", via_transformers=True)
    assert hand.read_by == "hand-written"
    assert via.read_by.startswith(f"transformers {transformers.__version__} "), via.read_by
    return hand, via


def meta_model_params(cfg: dict) -> tuple[int, int]:
    """(all parameters, routed-expert parameters) of the model transformers builds from `cfg`, on the meta device."""
    torch = pytest.importorskip("torch") if not os.environ.get("CI") else importlib.import_module("torch")
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(transformers_config(cfg))
    params = dict(model.named_parameters())  # tied embeddings appear once
    experts = sum(p.numel() for n, p in params.items() if ".mlp.experts." in n)
    return sum(p.numel() for p in params.values()), experts


# ---------------------------------------------------------------- every catalogue model, both readers
@pytest.mark.parametrize("name", NAMES)
def test_both_readers_give_the_same_spec_and_numbers(name):
    hand = load_model(name)
    via = load_model(name, via_transformers=True)
    assert via.read_by.startswith("transformers ")
    assert via == hand  # every field (the raw config and the reader's label aside)
    assert derived(via) == derived(hand)


@pytest.mark.parametrize("name", NAMES)
def test_fields_are_transformers_own_attributes(name):
    """The spec's fields against the attributes of transformers' config object itself (not its dict)."""
    m, c = load_model(name), transformers_config(catalogue_config(name))
    assert (m.hidden_size, m.num_layers, m.num_heads) == (
        c.hidden_size,
        c.num_hidden_layers,
        c.num_attention_heads,
    )
    assert (m.num_kv_heads, m.intermediate_size, m.vocab_size) == (
        c.num_key_value_heads,
        c.intermediate_size,
        c.vocab_size,
    )
    assert m.tie_embeddings == c.tie_word_embeddings
    assert m.max_position_embeddings == c.max_position_embeddings
    types = getattr(c, "layer_types", None)
    sliding = sum(t == "sliding_attention" for t in types) if types else 0
    if types is None and getattr(c, "sliding_window", None):  # Mistral: the window on every layer
        sliding = c.num_hidden_layers
    assert m.sliding_layers == sliding
    assert m.sliding_window == (c.sliding_window if sliding else 0)
    if m.is_mla:
        # DeepseekV2/V3Config.head_dim is the rotary dim; the MLA terms are these
        assert (m.kv_lora_rank, m.q_lora_rank or None) == (c.kv_lora_rank, c.q_lora_rank)
        assert (m.qk_rope_head_dim, m.qk_nope_head_dim, m.v_head_dim) == (
            c.qk_rope_head_dim,
            c.qk_nope_head_dim,
            c.v_head_dim,
        )
        assert m.q_head_dim == c.qk_head_dim
    else:
        assert m.head_dim == (getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads)
    experts = next(
        (getattr(c, k) for k in ("num_local_experts", "n_routed_experts", "num_experts") if hasattr(c, k)), 0
    )
    assert m.num_experts == experts
    if m.is_moe:
        assert m.experts_per_token == c.num_experts_per_tok
        assert m.moe_intermediate_size == getattr(c, "moe_intermediate_size", c.intermediate_size)
        assert m.first_dense_layers == getattr(c, "first_k_dense_replace", 0)
        assert m.num_shared_experts == getattr(c, "n_shared_experts", 0)


@pytest.mark.parametrize("name", NAMES)
def test_parameter_counts_are_those_of_transformers_model(name):
    m = load_model(name)
    total, routed = meta_model_params(catalogue_config(name))
    assert m.param_count == total
    assert m.num_experts * m._params(m.expert_gemms) == routed
    # one token runs through top-k of the routed experts
    assert m.active_param_count == total - routed + (routed // max(m.num_experts, 1)) * m.experts_per_token


@pytest.mark.parametrize("name", [n for n in NAMES if not load_model(n).is_mla])
def test_kv_bytes_per_token_from_transformers_layers(name):
    """K and V of every layer, bf16: full-attention layers grow with the context, sliding ones stop at the window.
    (MLA is left out: transformers caches per-head K and V, the planner the latent, as MLA kernels do.)"""
    m, c = load_model(name), transformers_config(catalogue_config(name))
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    per_layer = 2 * c.num_key_value_heads * head_dim * 2
    types = getattr(c, "layer_types", None) or ["full_attention"] * c.num_hidden_layers
    if getattr(c, "sliding_window", None) and not getattr(c, "layer_types", None):
        types = ["sliding_attention"] * c.num_hidden_layers
    assert m.kv_bytes_per_token("bf16") == per_layer * types.count("full_attention")
    assert m.sliding_kv_bytes_per_token("bf16") == per_layer * types.count("sliding_attention")


@pytest.mark.parametrize("name", NAMES)
def test_rope_bases_the_engine_reads_are_transformers(name):
    """engine/model.py reads `rope_theta` (default 10,000) and Gemma's `rope_local_base_freq` from the file;
    transformers 5 moved them into rope_parameters: the file's values must be the ones transformers uses."""
    raw = catalogue_config(name)
    text = raw.get("text_config", raw)
    rope = transformers_config(raw).rope_parameters
    theta = float(text.get("rope_theta", 10000.0))
    if "full_attention" in rope:  # per layer type (Gemma 3)
        assert theta == rope["full_attention"]["rope_theta"]
        assert float(text.get("rope_local_base_freq", theta)) == rope["sliding_attention"]["rope_theta"]
    else:
        assert theta == rope["rope_theta"]


# ---------------------------------------------------------------- configs that leave fields to the class
# Minimal configs of families outside the catalogue, each leaving out a field whose default in transformers'
# config class differs from the generic rule. Before this test the hand-written reader got each of them wrong.
BASE = dict(
    hidden_size=256,
    num_hidden_layers=6,
    num_attention_heads=8,
    num_key_value_heads=2,
    intermediate_size=512,
    vocab_size=1000,
    max_position_embeddings=8192,
)
LEFT_TO_THE_CLASS = {
    "mistral: no sliding_window (class default 4096, every layer)": {"model_type": "mistral"},
    "qwen3: no head_dim (class default 128, not hidden/heads)": {"model_type": "qwen3"},
    "gemma2: no head_dim, no pattern (256; alternating local/global)": {"model_type": "gemma2"},
    "gemma: no head_dim (256), two norms per layer": {"model_type": "gemma"},
    "qwen2_moe: the shared expert's gate": {
        "model_type": "qwen2_moe",
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 128,
        "shared_expert_intermediate_size": 256,
    },
    "gemma3 as published (text_config without head_dim, vocab_size, pattern)": {
        "model_type": "gemma3",
        "text_config": {"model_type": "gemma3_text", **BASE, "sliding_window": 1024, "vocab_size": None},
    },
}


def _variant(extra: dict) -> dict:
    cfg = {**BASE, **extra}
    if "text_config" in cfg:  # a multimodal wrapper: the sizes live in text_config only
        cfg = {"model_type": cfg["model_type"], "text_config": cfg["text_config"]}
        cfg["text_config"] = {k: v for k, v in cfg["text_config"].items() if v is not None}
    return cfg


@pytest.mark.parametrize("case", list(LEFT_TO_THE_CLASS))
def test_fields_left_to_the_class_read_as_transformers_reads_them(case):
    cfg = _variant(LEFT_TO_THE_CLASS[case])
    hand, via = both_readers(cfg)
    assert via == hand and derived(via) == derived(hand)
    assert hand.param_count == meta_model_params(cfg)[0]


def test_catalogue_gemma3_and_its_published_minimal_form_agree_through_transformers():
    full = catalogue_config("gemma-3-12b")
    minimal = json.loads(json.dumps(full))
    for k in ("head_dim", "vocab_size", "sliding_window_pattern", "rope_theta", "tie_word_embeddings"):
        minimal["text_config"].pop(k, None)
    via = spec_from_config(minimal, name="gemma-3-12b", via_transformers=True)
    assert via.read_by.startswith("transformers ") and via == load_model("gemma-3-12b")


# ---------------------------------------------------------------- falling back, and staying out of the way
def test_without_transformers_the_hand_written_reader_answers(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "transformers" else real(n, *a)
    )
    m = load_model("gemma-3-12b", via_transformers=True)
    assert m.read_by == "hand-written" and m == load_model("gemma-3-12b")


def test_a_model_type_transformers_does_not_know_uses_the_hand_written_reader():
    m = spec_from_config({**BASE, "model_type": "my_own_llama"}, via_transformers=True)
    assert m.read_by == "hand-written" and m.head_dim == 32


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"hidden_size": "4096"}, r"`hidden_size` is '4096', not an integer"),
        ({"vocab_size": None}, r"`vocab_size` is null; set it"),
        ({"num_attention_heads": 0}, r"`num_attention_heads` must be positive"),
        ({"hidden_size": 500}, r"`hidden_size` \(500\) is not a multiple of num_attention_heads"),
    ],
)
def test_a_bad_field_gives_the_same_one_line_error_either_way(bad, message):
    cfg = {"model_type": "llama", **BASE, **bad}
    for via in (False, True):
        with pytest.raises(ConfigError, match=message):
            spec_from_config(cfg, via_transformers=via)


def test_the_config_dict_is_left_as_it_was():
    cfg = catalogue_config("llama-3.1-8b")
    before = json.dumps(cfg, sort_keys=True)
    spec_from_config(cfg, via_transformers=True)  # transformers rewrites rope_scaling in place if given it
    assert json.dumps(cfg, sort_keys=True) == before


def test_the_default_reader_imports_neither_transformers_nor_torch(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(catalogue_config("qwen2.5-7b")))
    code = (
        "import sys; from core.model_spec import load_model; "
        f"load_model('llama-3.1-8b'); load_model({str(tmp_path / 'config.json')!r}); "
        "print([m for m in ('torch', 'transformers') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
