"""Engine profiles whose per-layer host terms count a model's layers by the operators its architecture launches."""

from __future__ import annotations

import pytest
import yaml

from core.engine_profile import ENGINE_DIR, EngineProfile, parse_engine_profile
from core.errors import ConfigError

OPERATORS = {
    "reference_per_layer": 55,
    "models": {
        "llama": {"per_layer": 55, "per_forward": 25},
        "gemma3_text": {"per_layer": 101, "per_forward": 29},
    },
    "source": "operators",
}
COUNTED = {"kind": "measured", "command": "python -m calibrate.operator_count", "date": "2026-12-02",
           "gpu": "CPU", "raw": ["calibration_runs/transformers_operators.json"]}  # fmt: skip


def profile(operators: dict | None = OPERATORS, source: bool = True) -> EngineProfile:
    data = yaml.safe_load((ENGINE_DIR / "transformers.yaml").read_text())
    data["host"].update(per_layer=True, operators=operators)
    for k, v in (("per_step_s", 1e-3), ("per_sequence_s", 1e-4), ("per_prompt_token_s", 0.0)):
        data["host"][k]["value"] = v
    if source:
        data["sources"]["operators"] = COUNTED
    return parse_engine_profile(data, "test.yaml")


def test_layers_count_by_operators():
    p = profile()
    # llama: (55 * 32 + 25) / 55 fitted layers; gemma 3: (101 * 48 + 29) / 55
    assert p.host_layers(32, "llama") == pytest.approx((55 * 32 + 25) / 55)
    assert p.host_time(32, 2, 0, "llama") == pytest.approx((1e-3 + 2e-4) * (55 * 32 + 25) / 55)
    assert p.host_time(48, 2, 0, "gemma3_text") / p.host_time(48, 2, 0, "llama") == pytest.approx(
        (101 * 48 + 29) / (55 * 48 + 25)
    )
    without = profile(operators=None, source=False)
    assert without.host_layers(32, "anything") == 32.0
    assert without.host_time(32, 2, 0) == pytest.approx(32 * (1e-3 + 2e-4))


def test_unknown_architecture_and_missing_source_are_one_line():
    p = profile()
    with pytest.raises(
        ConfigError, match="no operator count for model_type 'phi3'.*calibrate.operator_count"
    ):
        p.host_time(32, 1, 0, "phi3")
    with pytest.raises(ConfigError, match="give the model's model_type"):
        p.host_time(32, 1, 0)
    with pytest.raises(ConfigError, match=r"host.operators.source: 'operators' is not in `sources`"):
        profile(source=False)
