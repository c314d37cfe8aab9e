"""Tiny model configs for CPU tests of the engine."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from core.model_spec import load_model, spec_from_config  # noqa: E402


def tiny_config(**over) -> dict:
    cfg = {
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "intermediate_size": 96,
        "vocab_size": 97,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
    }
    cfg.update(over)
    return cfg


def shrink(name: str, layers: int = 2):
    """A catalogue architecture at a toy size: same structure flags, tiny widths."""
    spec = load_model(name)
    cfg = dict(spec.config.get("text_config", spec.config))
    heads = 4
    kv = 4 if spec.num_kv_heads == spec.num_heads else 2
    cfg.update(
        hidden_size=64,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=16,
        intermediate_size=96,
        vocab_size=101,
        max_position_embeddings=512,
    )
    if spec.sliding_window:
        cfg["sliding_window"] = 8
        if "layer_types" in cfg:
            cfg["layer_types"] = ["sliding_attention", "full_attention"][:layers]
    if spec.is_moe:
        cfg.update(num_local_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
        for k in ("n_routed_experts", "num_experts"):
            cfg.pop(k, None)
    return spec_from_config(cfg, name=f"tiny-{name}")


@pytest.fixture
def tiny_spec():
    return spec_from_config(tiny_config(), name="tiny-llama")
