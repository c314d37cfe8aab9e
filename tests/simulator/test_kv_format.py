"""A KV-cache format the GPU has no units for: stored through the engines' fallback and said so, or refused."""

import pytest

from core.errors import ConfigError
from core.hardware import kv_format, load_profile
from simulator import api

SCENARIO = {
    "model": "qwen2.5-0.5b",
    "workload": {"arrival": {"process": "poisson", "rate_per_s": 2}, "num_requests": 20},
}


def _forecast(gpu: str, kv: str):
    return api.forecast(SCENARIO | {"hardware": {"gpu": gpu}, "serving": {"precision": {"kv_dtype": kv}}})


def test_fp8_kv_on_a_t4_is_refused_in_one_line_naming_the_field():
    with pytest.raises(ConfigError) as err:
        _forecast("t4", "fp8")
    msg = str(err.value)
    assert msg.startswith("serving.precision.kv_dtype: fp8 on NVIDIA T4") and msg.endswith("use fp16")
    assert "\n" not in msg and "compute capability 7.5" in msg


def test_fp8_kv_on_an_a100_runs_the_fallback_and_says_so():
    f8, f16 = _forecast("a100-80gb-sxm", "fp8"), _forecast("a100-80gb-sxm", "bf16")
    note = f8.summary["hardware"]["kv_format_note"]
    assert note.startswith("fp8 KV cache on NVIDIA A100") and "16-bit" in note
    assert "kv_format_note" not in f16.summary["hardware"]
    # priced as the fallback stores it: half the bytes per token, so twice the tokens in the same room
    assert f8.summary["memory"]["kv_tokens"] > 1.9 * f16.summary["memory"]["kv_tokens"]


@pytest.mark.parametrize("gpu", ["h100-sxm", "h200", "l4", "b200", "mi300x"])
def test_gpus_with_fp8_units_store_an_fp8_kv_cache_without_a_note(gpu):
    assert kv_format(load_profile(gpu), "fp8") is None


def test_sixteen_bit_kv_is_never_refused():
    for gpu in ("t4", "a100-40gb", "a10g"):
        assert kv_format(load_profile(gpu), "fp16") is None
