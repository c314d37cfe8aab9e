"""Scenario parsing: defaults, overrides, and one clear line for every bad input."""

import pytest

from core.errors import ConfigError
from simulator.scenario import DEFAULT_SCENARIO, apply_overrides, field_help, load_scenario, parse_scenario

BASE = {"workload": {"arrival": {"process": "poisson", "rate_per_s": 2.0}}}


def test_default_scenario_parses():
    sc = load_scenario(None)
    assert sc.model == "llama-3.1-8b" and sc.hardware.gpu == "h100-sxm"
    assert sc.workload.trace == "conversation" and sc.workload.arrival.process == "trace"


def test_minimal_scenario_gets_defaults():
    sc = parse_scenario(BASE)
    assert sc.serving.batching.mode == "continuous" and sc.serving.memory.block_size == 16
    assert sc.workload.prompt_tokens.dist == "fixed"


@pytest.mark.parametrize(
    "patch,expect",
    [
        (
            {"serving": {"batching": {"max_num_seqs": 0}}},
            "serving.batching.max_num_seqs: Input should be greater than or equal to 1 (got 0)",
        ),
        (
            {"serving": {"batching": {"mode": "dynamic"}}},
            "serving.batching.mode: Input should be 'continuous' or 'static'",
        ),
        ({"serving": {"max_num_sequences": 8}}, "serving.max_num_sequences: unknown field"),
        ({"serving": {"memory": {"gpu_memory_utilization": 1.5}}}, "serving.memory.gpu_memory_utilization"),
        ({"serving": {"precision": {"weight_dtype": "int3"}}}, "serving.precision.weight_dtype"),
        ({"workload": {"arrival": {"process": "poisson"}}}, "needs arrival.rate_per_s"),
        ({"workload": {"arrival": {"process": "trace"}}}, "needs `trace`"),
        (
            {
                "workload": {
                    "arrival": {"process": "poisson", "rate_per_s": 1},
                    "prompt_tokens": {"dist": "zipf"},
                }
            },
            "prompt_tokens",
        ),
        (
            {
                "workload": {
                    "arrival": {"process": "poisson", "rate_per_s": 1},
                    "prompt_tokens": {"dist": "uniform", "min": 9, "max": 3},
                }
            },
            "max (3) must be >= min (9)",
        ),
        (
            {
                "workload": {
                    "arrival": {"process": "poisson", "rate_per_s": 1},
                    "output_tokens": {"dist": "fixed"},
                }
            },
            "output_tokens.fixed.value: missing",
        ),
        ({"seed": "abc"}, "seed: Input should be a valid integer"),
    ],
)
def test_bad_fields_give_one_line_naming_the_field(patch, expect):
    data = {**BASE, **patch}
    with pytest.raises(ConfigError) as e:
        parse_scenario(data, "s.yaml")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("s.yaml: ")
    assert expect in msg


def test_missing_workload_and_not_a_mapping():
    with pytest.raises(ConfigError, match="workload: missing"):
        parse_scenario({})
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        parse_scenario(["a"])


def test_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_scenario(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("serving: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_scenario(bad)
    good = tmp_path / "good.yaml"
    good.write_text("workload:\n  arrival: {process: constant, rate_per_s: 3}\n  num_requests: 5\n")
    assert load_scenario(good).workload.num_requests == 5


def test_overrides():
    data = apply_overrides(
        {"serving": {}}, ["serving.batching.max_num_seqs=64", "hardware.gpu=a100-80gb-sxm", "seed=7"]
    )
    assert data == {
        "serving": {"batching": {"max_num_seqs": 64}},
        "hardware": {"gpu": "a100-80gb-sxm"},
        "seed": 7,
    }
    with pytest.raises(ConfigError, match="must look like field.path=value"):
        apply_overrides({}, ["serving.batching.max_num_seqs"])


def test_help_lists_every_field():
    text = "\n".join(field_help())
    for field in (
        "serving.batching.max_num_seqs",
        "serving.memory.gpu_memory_utilization",
        "workload.arrival.cv",
        "hardware.gpu",
        "slo.ttft_s",
        "seed",
    ):
        assert field in text
    assert all(line.split(":", 1)[1].strip() for line in field_help()), "every field has a description"


def test_default_dict_unchanged_by_parse():
    before = repr(DEFAULT_SCENARIO)
    load_scenario(None)
    assert repr(DEFAULT_SCENARIO) == before
