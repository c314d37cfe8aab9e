"""Operator counts of transformers' modelling code: the tiny config keeps the architecture, and (where transformers
is installed) a Gemma 3 layer launches more operators than a Llama layer, counted from transformers itself."""

from __future__ import annotations

import importlib.util
import json

import pytest

from calibrate.operator_count import TINY, _tiny, count_model
from core.model_spec import CATALOGUE_DIR


def test_tiny_config_keeps_the_architecture():
    gemma = json.loads((CATALOGUE_DIR / "gemma-3-12b.json").read_text())
    c = _tiny(gemma, 3)
    assert c["model_type"] == "gemma3_text" and c["num_hidden_layers"] == 3
    assert c["sliding_window"] == gemma["text_config"]["sliding_window"]  # the architecture's flags stay
    assert c["hidden_size"] == TINY["hidden_size"] and c["num_key_value_heads"] == 2
    ds = _tiny(json.loads((CATALOGUE_DIR / "deepseek-v2-lite.json").read_text()), 4)
    assert ds["kv_lora_rank"] and ds["n_routed_experts"] == 8 and ds["num_experts_per_tok"] == 2
    assert ds["num_key_value_heads"] == 4  # MHA stays MHA


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs transformers (optional)")
def test_gemma_layer_launches_more_operators_than_llama():
    llama, gemma = count_model("llama-3.1-8b"), count_model("gemma-3-12b")
    assert llama["model_type"] == "llama" and gemma["model_type"] == "gemma3_text"
    # Gemma 3's layer: four RMSNorms and q/k norms where Llama's has two norms
    assert gemma["per_layer"] > 1.5 * llama["per_layer"] > 0
