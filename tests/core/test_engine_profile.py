"""Engine profiles: the shipped ones validate, `ours` is exactly today's serving defaults, bad input fails in
one line naming the field and the fix, lookups by name list the known names, transfers are said."""

from __future__ import annotations

import operator
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
import yaml

from core.engine_profile import (
    ENGINE_DIR,
    EngineProfile,
    WeightFormat,
    engine_names,
    load_engine_profile,
    transferred,
)
from core.errors import ConfigError
from core.hardware import profile_names
from simulator.scenario import Dtype, Serving

SHIPPED = sorted(p.stem for p in ENGINE_DIR.glob("*.yaml"))


def template() -> dict:
    return yaml.safe_load((ENGINE_DIR / "transformers.yaml").read_text())


def load(tmp_path: Path, data: dict) -> EngineProfile:
    path = tmp_path / "engine.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_engine_profile(str(path))


def test_every_shipped_profile_loads_and_names_its_file():
    assert {"ours", "transformers", "transformers-generate"} <= set(SHIPPED)
    for name in SHIPPED:
        p = load_engine_profile(name)
        assert p.name == name
        if p.gpu is not None:  # measured on a GPU we have a profile of
            assert p.gpu in profile_names()
        if p.status == "measured" and p.engine != "ours":
            assert p.validation is not None and p.validation.metrics, name


def test_ours_is_todays_serving_defaults_and_adds_nothing():
    ours = load_engine_profile("ours")
    serving = Serving()
    at = {k: operator.attrgetter(k)(serving) for k in ours.serving_defaults()}
    assert ours.serving_defaults() == at
    assert ours.host.gpu_profile_loop and ours.host_time(num_layers=80, seqs=256, prompt_tokens=8192) == 0.0
    k = ours.kernels
    assert (k.gemm, k.attention_prefill, k.attention_decode, k.elementwise) == (1.0, 1.0, 1.0, 1.0)
    # every weight format a scenario accepts today has kernels in our engine's profile
    assert set(k.quantized_weights) == set(get_args(Dtype)) == set(get_args(WeightFormat))
    assert transferred(ours, "t4") is None  # GPU-independent: its GPU terms live in each GPU profile


def test_transformers_profiles_are_eager_engines_with_their_own_host_time():
    for name in ("transformers", "transformers-generate"):
        p = load_engine_profile(name)
        assert p.engine == "transformers" and not p.host.gpu_profile_loop
        assert p.scheduling.cuda_graphs == "none"
        assert (
            p.host_time(32, 1, 0, "llama") > 0.005
        )  # an eager python loop: milliseconds per step, not microseconds
    assert load_engine_profile("transformers-generate").serving_defaults()["batching.mode"] == "static"
    assert load_engine_profile("transformers").serving_defaults()["batching.chunked_prefill"] is True


def test_packed_attention_pads_queries_and_keys_up_to_their_multiples():
    data = template()
    data["kernels"].update(attention_layout="packed", q_padding_tokens=64, kv_padding_tokens=16384)
    k = EngineProfile.model_validate(data).kernels
    assert k.packed_sizes(1, 1) == (64, 16384)
    assert k.packed_sizes(64, 16384) == (64, 16384)
    assert k.packed_sizes(65, 16385) == (128, 32768)
    assert load_engine_profile("ours").kernels.packed_sizes(65, 16385) == (65, 16385)  # padding 1: as is


def test_host_time_per_layer_multiplies_every_term():
    data = template()
    data["host"]["per_step_s"]["value"] = 1e-3
    data["host"]["per_sequence_s"]["value"] = 1e-4
    data["host"]["per_prompt_token_s"]["value"] = 1e-6
    data["host"]["per_layer"] = True
    data["host"].pop(
        "operators", None
    )  # layers by num_layers (tests/core/test_engine_operators.py: by operators)
    p = EngineProfile.model_validate(data)
    assert p.host_time(10, 3, 100) == pytest.approx(10 * (1e-3 + 3e-4 + 1e-4))
    data["host"]["per_layer"] = False
    assert EngineProfile.model_validate(data).host_time(10, 3, 100) == pytest.approx(1e-3 + 3e-4 + 1e-4)


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        (lambda d: d["host"].pop("per_sequence_s"), ["host.per_sequence_s", "missing; add it"]),
        (
            lambda d: d["host"].update(per_token_s={"value": 0, "source": "fit"}),
            ["host.per_token_s", "unknown field"],
        ),
        (
            lambda d: d["scheduling"].update(policy="continuous"),
            ["scheduling.policy", "two policies", "chunked"],
        ),
        (
            lambda d: d["scheduling"].update(policy="paged"),
            ["scheduling.policy", "'prefill_first'", "'paged'"],
        ),
        (
            lambda d: d["host"]["per_step_s"].update(value=-1),
            ["host.per_step_s.value", "greater than or equal to 0"],
        ),
        (lambda d: d["kernels"].update(gemm=0), ["kernels.gemm", "greater than 0"]),
        (lambda d: d["kernels"].pop("attention_layout"), ["kernels.attention_layout", "missing; add it"]),
        (lambda d: d.update(engine="ollama"), ["engine", "'vllm'"]),
        (lambda d: d["sources"]["fit"].pop("raw"), ["sources.fit.measured.raw", "missing"]),
        (
            lambda d: d["host"]["per_step_s"].update(source="nowhere"),
            ["host.per_step_s.source", "'nowhere'", "add a"],
        ),
        (
            lambda d: d["host"]["phases"].update(correlation_s=0),
            ["host.phases.correlation_s", "greater than 0"],
        ),
        (
            lambda d: d["host"]["phases"].update(log_std=-0.1),
            ["host.phases.log_std", "greater than or equal"],
        ),
        (lambda d: d["host"]["phases"].pop("stall_s"), ["host.phases.stall_s", "missing; add it"]),
        (
            lambda d: d["host"]["phases"].update(source="nowhere"),
            ["host.phases.source", "'nowhere'", "add a"],
        ),
    ],
)
def test_bad_profile_is_one_line_naming_the_field_and_the_fix(tmp_path, edit, needles):
    data = template()
    edit(data)
    with pytest.raises(ConfigError) as e:
        load(tmp_path, data)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(tmp_path / "engine.yaml"))
    for n in needles:
        assert n in msg, msg


def test_unknown_name_lists_the_known_ones_and_a_missing_path_says_so(tmp_path):
    with pytest.raises(ConfigError, match="engine 'vllm-9' has no profile; use one of .*ours.*transformers"):
        load_engine_profile("vllm-9")
    with pytest.raises(ConfigError, match="does not exist"):
        load_engine_profile(str(tmp_path / "nope.yaml"))


def test_a_profile_in_the_working_directory_is_found_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = template()
    data["name"] = "lab-engine"
    (tmp_path / "engine_profiles").mkdir()
    (tmp_path / "engine_profiles" / "lab-engine.yaml").write_text(yaml.safe_dump(data))
    assert "lab-engine" in engine_names() and "ours" in engine_names()
    assert load_engine_profile("lab-engine").name == "lab-engine"


def test_transferred_says_measured_where_and_used_where():
    p = load_engine_profile("transformers")
    assert transferred(p, p.gpu) is None and transferred(p, p.gpu.upper()) is None
    line = transferred(p, "h100-sxm")
    assert line is not None and "\n" not in line
    assert f"on {p.gpu}, used on h100-sxm: transferred" in line


def test_the_profile_module_imports_neither_torch_nor_transformers():
    code = (
        "import sys, core.engine_profile as e; e.load_engine_profile('transformers'); "
        "print([m for m in ('torch', 'transformers') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
