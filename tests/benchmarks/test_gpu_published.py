"""The published-anchors table: its model files, its TTFT split, and that rows set as ceilings are never checks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_published as gp  # noqa: E402

from core.model_spec import load_model  # noqa: E402


@pytest.mark.parametrize(
    "name, params",  # kaggle-vllm research/tables/m4_principal_model_metadata.csv, column `parameters`
    [("qwen2.5-3b-instruct", 3_085_938_688), ("llama-3.2-3b-instruct", 3_212_749_824)],
)
def test_the_kaggle_models_are_the_ones_the_study_ran(name, params):
    assert load_model(str(gp.DATA / f"{name}.json")).param_count == params


def test_prefill_split_recovers_the_rates_it_was_built_from():
    model = str(gp.DATA / "qwen2.5-3b-instruct.json")
    spec = load_model(model)
    linear = 2.0 * sum(g.k * g.n * g.layers for g in spec.dense_gemms)
    pair = spec.attn_flops_per_pair * spec.num_layers / 2.0
    # a TTFT of 40 ms + linear layers at 20 TFLOP/s + attention at 1 TFLOP/s, at the three Kaggle prompt lengths
    ttft = {n: 40.0 + n * linear / 20e12 * 1e3 + n * n * pair / 1e12 * 1e3 for n in (128, 512, 2048)}
    a, lin, att = gp.prefill_split(ttft, model)
    assert a == pytest.approx(40.0) and lin == pytest.approx(20.0) and att == pytest.approx(1.0)


def test_the_t4_memory_ceiling_is_the_published_copy_figure_not_an_assumption():
    from core.hardware import load_profile

    t4 = load_profile("t4")
    assert t4.sustained.memory_bandwidth_gbps == pytest.approx(gp.T4_COPY_GBPS, rel=0.01)
    assert "memory_bandwidth_gbps" not in t4.sustained.assumed
