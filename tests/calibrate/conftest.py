import json

import pytest

TINY = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 128,
    "vocab_size": 256,
    "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-5,
}


@pytest.fixture
def tiny_config(tmp_path):
    """A two-layer Llama-shaped config.json small enough for CPU runs in seconds."""
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path
