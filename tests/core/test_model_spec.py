"""The model catalogue against published sizes, and ModelSpec's derived numbers against hand calculations."""

from __future__ import annotations

import json

import pytest

from core.errors import ConfigError
from core.model_spec import CATALOGUE_DIR, catalogue_names, load_model, spec_from_config

# Published total parameter counts, and where each comes from. "model page" is the safetensors
# parameter count Hugging Face shows on the repo page; the others are the model card's or the
# technical report's own figure.
PUBLISHED_TOTAL: dict[str, tuple[float, str]] = {
    "llama-3.1-8b": (8.03e9, "meta-llama/Llama-3.1-8B model page, 8.03B"),
    "llama-3.1-70b": (70.6e9, "meta-llama/Llama-3.1-70B model page, 70.6B"),
    "qwen2.5-0.5b": (0.49e9, "Qwen2.5-0.5B-Instruct model card, 'Number of Parameters: 0.49B'"),
    "qwen2.5-7b": (7.61e9, "Qwen2.5-7B-Instruct model card, 'Number of Parameters: 7.61B'"),
    "qwen2.5-32b": (32.5e9, "Qwen2.5-32B-Instruct model card, 'Number of Parameters: 32.5B'"),
    "qwen3-14b": (14.8e9, "Qwen3-14B model card, 'Number of Parameters: 14.8B'"),
    "mistral-7b": (7.25e9, "mistralai/Mistral-7B-Instruct-v0.3 model page, 7.25B"),
    "mixtral-8x7b": (46.7e9, "Mistral AI, 'Mixtral of experts': 46.7B total parameters"),
    # Gemma 3 Technical Report (arXiv 2503.19786), Table 1, 12B: 1,012M embedding + 10,759M
    # non-embedding parameters, listed apart from the 417M vision encoder. The planner counts the
    # text model: the SigLIP tower runs once per image, not per token.
    "gemma-3-12b": (1_012e6 + 10_759e6, "Gemma 3 Technical Report, Table 1 (text model)"),
    "deepseek-v2-lite": (15.7e9, "DeepSeek-V2-Lite model card, '15.7B parameters'"),
    # The model card: 685B on the Hub = 671B main model + 14B Multi-Token Prediction module.
    "deepseek-v3": (671e9, "DeepSeek-V3 model card, 671B main model excluding the MTP module"),
}

# Published activated parameters per token. Mistral counts the embedding table in (12.9B);
# DeepSeek leaves it out (a token reads one row of it), so for DeepSeek we compare
# active_param_count less vocab_size * hidden_size.
PUBLISHED_ACTIVE: dict[str, tuple[float, bool]] = {
    "mixtral-8x7b": (12.9e9, True),  # Mistral AI, 'Mixtral of experts': 12.9B per token
    "deepseek-v2-lite": (2.4e9, False),  # model card: 'activates 2.4B parameters for each token'
    "deepseek-v3": (37e9, False),  # model card: '671B total parameters with 37B activated'
}


def write_config(tmp_path, cfg, name="config.json"):
    p = tmp_path / name
    p.write_text(json.dumps(cfg))
    return p


def llama_like(**overrides) -> dict:
    cfg = json.loads((CATALOGUE_DIR / "llama-3.1-8b.json").read_text())
    cfg.update(overrides)
    return cfg


# ---------------------------------------------------------------- the catalogue
def test_catalogue_holds_the_documented_models():
    assert set(catalogue_names()) == set(PUBLISHED_TOTAL)
    readme = (CATALOGUE_DIR / "README.md").read_text()
    for name in catalogue_names():
        assert f"`{name}`" in readme


@pytest.mark.parametrize("name", sorted(PUBLISHED_TOTAL))
def test_param_count_matches_published(name):
    published, source = PUBLISHED_TOTAL[name]
    got = load_model(name).param_count
    assert got == pytest.approx(published, rel=0.01), f"{name}: {got / 1e9:.3f}B vs {source}"


# Published activated counts carry two or three significant figures (2.4B, 37B, 12.9B);
# 2.5% covers that rounding (DeepSeek-V2-Lite's count is 2.451B).
@pytest.mark.parametrize("name", sorted(PUBLISHED_ACTIVE))
def test_active_param_count_matches_published(name):
    published, with_embedding = PUBLISHED_ACTIVE[name]
    m = load_model(name)
    got = m.active_param_count - (0 if with_embedding else m.vocab_size * m.hidden_size)
    assert got == pytest.approx(published, rel=0.025), f"{name}: {got / 1e9:.3f}B vs {published / 1e9}B"
    assert m.active_param_count < m.param_count


def test_exact_counts_of_dense_models():
    # Hugging Face's safetensors totals: the derivation is exact for these architectures.
    assert load_model("llama-3.1-8b").param_count == 8_030_261_248
    assert load_model("mistral-7b").param_count == 7_248_023_552
    assert load_model("qwen2.5-7b").param_count == 7_615_616_512
    assert load_model("qwen2.5-0.5b").param_count == 494_032_768
    assert load_model("mixtral-8x7b").param_count == 46_702_792_704


def test_dense_models_have_no_inactive_params():
    for name in ("llama-3.1-8b", "qwen2.5-7b", "gemma-3-12b", "qwen2.5-0.5b"):
        m = load_model(name)
        assert not m.is_moe and m.expert_gemms == []
        assert m.active_param_count == m.param_count


def test_moe_and_mla_structure():
    v3 = load_model("deepseek-v3")
    assert v3.is_moe and v3.is_mla
    assert (v3.num_experts, v3.experts_per_token, v3.num_shared_experts) == (256, 8, 1)
    assert (v3.first_dense_layers, v3.moe_layers, v3.dense_mlp_layers) == (3, 58, 3)
    assert v3.q_head_dim == 128 + 64
    lite = load_model("deepseek-v2-lite")
    assert lite.q_lora_rank == 0  # `"q_lora_rank": null`: queries projected directly
    assert [g.name for g in lite.attention_gemms] == ["q", "kv_a", "kv_b", "o"]
    assert (lite.num_experts, lite.experts_per_token, lite.num_shared_experts, lite.moe_layers) == (
        64,
        6,
        2,
        26,
    )
    mixtral = load_model("mixtral-8x7b")
    assert (mixtral.num_experts, mixtral.experts_per_token, mixtral.moe_layers) == (8, 2, 32)
    assert not mixtral.is_mla and mixtral.sliding_layers == 0  # `"sliding_window": null`


def test_qwen_sliding_window_field_is_off_and_bias_on():
    # Qwen2.5 writes sliding_window=131072 but use_sliding_window=false: all layers are full.
    m = load_model("qwen2.5-7b")
    assert m.sliding_layers == 0 and m.sliding_window == 0
    assert m.qkv_bias
    assert load_model("qwen2.5-0.5b").tie_embeddings


# ---------------------------------------------------------------- KV cache
def test_kv_bytes_gqa_llama_8b():
    m = load_model("llama-3.1-8b")
    assert m.kv_bytes_per_token("bf16") == 2 * 8 * 128 * 32 * 2 == 131_072  # K and V, 8 heads, 32 layers
    assert m.kv_bytes_per_token("fp8") == 131_072 / 2
    assert m.sliding_kv_bytes_per_token() == 0


def test_kv_bytes_other_gqa_models():
    assert load_model("llama-3.1-70b").kv_bytes_per_token() == 2 * 8 * 128 * 80 * 2
    assert load_model("qwen2.5-7b").kv_bytes_per_token() == 2 * 4 * 128 * 28 * 2
    assert load_model("qwen2.5-0.5b").kv_bytes_per_token() == 2 * 2 * 64 * 24 * 2


def test_kv_bytes_mla():
    # MLA caches the 512-wide latent plus the 64-wide shared rope key per layer, not per head.
    v3 = load_model("deepseek-v3")
    assert v3.kv_bytes_per_token("bf16") == (512 + 64) * 61 * 2 == 70_272
    assert v3.kv_bytes_per_token("fp8") == (512 + 64) * 61
    assert load_model("deepseek-v2-lite").kv_bytes_per_token() == (512 + 64) * 27 * 2


def test_kv_bytes_gemma3_sliding_split():
    # 48 layers, 5 local (1024-token window) : 1 global -> 40 sliding, 8 full; 8 KV heads of 256.
    m = load_model("gemma-3-12b")
    assert (m.sliding_layers, m.full_attention_layers, m.sliding_window) == (40, 8, 1024)
    per_layer = 2 * 8 * 256 * 2
    assert m.kv_bytes_per_token("bf16") == per_layer * 8 == 65_536
    assert m.sliding_kv_bytes_per_token("bf16") == per_layer * 40 == 327_680
    assert m.kv_bytes_per_token("fp8") == 65_536 / 2
    assert m.sliding_kv_bytes_per_token("fp8") == 327_680 / 2


def test_gemma3_layer_types_list_is_read():
    # Newer transformers write `layer_types` instead of a pattern; it must give the same split.
    cfg = json.loads((CATALOGUE_DIR / "gemma-3-12b.json").read_text())
    cfg["text_config"].pop("sliding_window_pattern")
    cfg["text_config"]["layer_types"] = (["sliding_attention"] * 5 + ["full_attention"]) * 8
    m = spec_from_config(cfg)
    assert (m.sliding_layers, m.full_attention_layers) == (40, 8)


def test_gemma3_published_minimal_config_gets_transformers_defaults():
    # google/gemma-3-12b-it's config.json as published: text_config has no head_dim or vocab_size
    # (transformers fills 256 and 262208). head_dim is not hidden_size / heads (3840 / 16 = 240).
    published = {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "model_type": "gemma3",
        "text_config": {
            "hidden_size": 3840,
            "intermediate_size": 15360,
            "model_type": "gemma3_text",
            "num_attention_heads": 16,
            "num_hidden_layers": 48,
            "num_key_value_heads": 8,
            "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
            "sliding_window": 1024,
        },
        "torch_dtype": "bfloat16",
        "vision_config": {"hidden_size": 1152, "model_type": "siglip_vision_model", "num_hidden_layers": 27},
    }
    minimal = spec_from_config(published, name="g")
    assert minimal.head_dim == 256 and minimal.vocab_size == 262_208 and minimal.tie_embeddings
    full = spec_from_config(json.loads((CATALOGUE_DIR / "gemma-3-12b.json").read_text()), name="g")
    assert minimal == full


def test_unknown_dtype_is_a_config_error():
    with pytest.raises(ConfigError, match="fp6.*bf16"):
        load_model("llama-3.1-8b").kv_bytes_per_token("fp6")


# ---------------------------------------------------------------- weights and FLOPs
@pytest.mark.parametrize("name", sorted(PUBLISHED_TOTAL))
def test_weight_bytes_follow_param_counts(name):
    m = load_model(name)
    bf16, fp8, int4 = m.weight_bytes("bf16"), m.weight_bytes("fp8"), m.weight_bytes("int4")
    assert bf16 == 2 * m.param_count
    # Linear weights shrink; embeddings and norms stay 16-bit.
    assert fp8 == m.linear_params * 1 + m.other_params * 2
    assert int4 == pytest.approx(m.linear_params * (0.5 + 2 / 128) + m.other_params * 2)
    assert m.param_count <= fp8 < bf16
    assert 0.5 * m.param_count < int4 < fp8


def test_weight_bytes_llama_8b_in_gib():
    m = load_model("llama-3.1-8b")
    assert m.weight_bytes("bf16") / 2**30 == pytest.approx(14.96, abs=0.01)  # the familiar "15 GiB"


@pytest.mark.parametrize("name", sorted(PUBLISHED_TOTAL))
def test_flops_per_token_is_twice_the_active_matmul_params(name):
    # 2 FLOPs per weight a token multiplies by. The input embedding is a lookup, not a matmul, so
    # an untied model's table is not in it; literally 2 x active_param_count would be 6.5% high
    # for Llama-3.1-8B (a 0.5B table in 8.0B).
    m = load_model(name)
    lookup = 0 if m.tie_embeddings else m.vocab_size * m.hidden_size
    assert m.flops_per_token(0) == pytest.approx(2 * (m.active_param_count - lookup), rel=0.02)
    if m.tie_embeddings:
        assert m.flops_per_token(0) == pytest.approx(2 * m.active_param_count, rel=0.02)


def test_flops_grow_with_context():
    m = load_model("llama-3.1-8b")
    f0, f1k, f8k = m.flops_per_token(0), m.flops_per_token(1024), m.flops_per_token(8192)
    assert f0 < f1k < f8k
    # QK^T and PV: 2 FLOPs x 32 heads x 128 dims x 2 matmuls, per key, per layer.
    assert f1k - f0 == 2 * 32 * 128 * 2 * 32 * 1024


def test_flops_gemma3_sliding_layers_stop_growing_at_the_window():
    m = load_model("gemma-3-12b")
    per_pair = 2 * 16 * 256 * 2
    assert m.flops_per_token(1024) - m.flops_per_token(0) == per_pair * 48 * 1024
    # Past the window only the 8 global layers see more keys.
    assert m.flops_per_token(2048) - m.flops_per_token(1024) == per_pair * 8 * 1024


def test_flops_mla_grow_with_context():
    m = load_model("deepseek-v3")
    assert m.flops_per_token(4096) > m.flops_per_token(0)


def test_gemm_shapes_cover_the_linear_params():
    m = load_model("mixtral-8x7b")
    names = [g.name for g in m.dense_gemms]
    assert names == ["qkv", "o", "router"]
    assert {g.name for g in m.expert_gemms} == {"expert_gate_up", "expert_down"}
    assert m.lm_head.k == 4096 and m.lm_head.n == 32000
    qkv = m.dense_gemms[0]
    assert (qkv.k, qkv.n, qkv.layers) == (4096, (32 + 2 * 8) * 128, 32)


# ---------------------------------------------------------------- loading
def test_load_by_name_is_case_insensitive():
    assert load_model("Llama-3.1-8B") == load_model("llama-3.1-8b")
    assert load_model("LLAMA-3.1-8B").name == "llama-3.1-8b"


def test_load_by_path_and_by_folder(tmp_path):
    cfg = llama_like()
    p = write_config(tmp_path, cfg, "my-llama.json")
    by_path = load_model(str(p))
    assert by_path.name == "my-llama"
    assert by_path.param_count == load_model("llama-3.1-8b").param_count

    folder = tmp_path / "Some-Model"
    folder.mkdir()
    write_config(folder, cfg)
    by_folder = load_model(str(folder))
    assert by_folder.name == "Some-Model"
    assert load_model(str(folder / "config.json")).name == "Some-Model"
    assert by_folder.kv_bytes_per_token() == 131_072


def test_unknown_catalogue_name_names_the_catalogue_and_suggests():
    with pytest.raises(ConfigError) as e:
        load_model("llama-3-8b")
    msg = str(e.value)
    assert "not in the catalogue" in msg
    assert "did you mean" in msg and "llama-3.1-8b" in msg
    assert "qwen2.5-7b" in msg  # lists what there is
    assert "\n" not in msg


def test_missing_file_path(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_model(str(tmp_path / "nope.json"))


def test_missing_field_names_the_field(tmp_path):
    cfg = llama_like()
    del cfg["intermediate_size"]
    with pytest.raises(ConfigError) as e:
        load_model(str(write_config(tmp_path, cfg)))
    msg = str(e.value)
    assert "`intermediate_size` is missing" in msg and str(tmp_path) in msg
    assert "\n" not in msg


def test_bad_json(tmp_path):
    p = tmp_path / "config.json"
    p.write_text('{"hidden_size": 4096,')
    with pytest.raises(ConfigError) as e:
        load_model(str(p))
    assert "not valid JSON" in str(e.value) and "\n" not in str(e.value)


def test_config_must_be_an_object(tmp_path):
    with pytest.raises(ConfigError, match="JSON object"):
        load_model(str(write_config(tmp_path, [1, 2])))


def test_non_divisible_heads(tmp_path):
    cfg = llama_like(num_key_value_heads=5)
    with pytest.raises(ConfigError) as e:
        load_model(str(write_config(tmp_path, cfg)))
    msg = str(e.value)
    assert "num_attention_heads (32)" in msg and "num_key_value_heads (5)" in msg


def test_non_positive_field():
    with pytest.raises(ConfigError, match="`num_hidden_layers` must be positive"):
        spec_from_config(llama_like(num_hidden_layers=0))


def test_moe_without_top_k():
    cfg = json.loads((CATALOGUE_DIR / "mixtral-8x7b.json").read_text())
    del cfg["num_experts_per_tok"]
    with pytest.raises(ConfigError, match="num_experts_per_tok"):
        spec_from_config(cfg)
