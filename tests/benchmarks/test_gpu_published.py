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


def test_the_kaggle_run_files_replay_the_studys_closed_loop(tmp_path):
    """A written cell is read back as its table row: C users, max(20, 3C) requests, the fixed lengths."""
    import json

    import published_kaggle_t4_runs as kr

    from simulator.measured import read_measured
    from simulator.validation import run_workload

    (model, workload, users), row = next((k, v) for k, v in kr.ROWS.items() if k[2] == 16)
    data = kr.run_file(model, workload, users, row)
    path = tmp_path / "cell.json"
    path.write_text(json.dumps(data))
    run = read_measured(str(path))[0]
    w, _ = run_workload(run)
    assert w["arrival"] == {"process": "closed_loop", "concurrency": 16} and w["num_requests"] == 48
    assert w["prompt_tokens"]["value"] == kr.WORKLOADS[workload][0]
    assert run.metrics["mean_ttft_ms"] == row[1] and run.metrics["output_throughput"] == row[0]


def test_the_t4_engine_profile_was_fitted_on_one_model_and_checked_on_the_other():
    from core.engine_profile import load_engine_profile

    p = load_engine_profile(gp.T4_ENGINE)
    assert p.gpu == "t4" and p.scheduling.cuda_graphs == "none" and p.validation is not None
    assert gp.T4_HELD_MODEL.replace("-instruct", "") in p.validation.held_out
    fitted_on = p.validation.held_out.split("fitted on")[1]
    assert gp.T4_FIT_MODEL in fitted_on and gp.T4_HELD_MODEL not in fitted_on


@pytest.mark.parametrize(
    "gpu, bf16, copy",  # the fit rows' figures (benchmarks/gpu_published.py rows())
    [("h100-pcie", 449.0, 1630.0), ("mi300x", 668.4, 4110.0)],
)
def test_profiles_take_the_published_ceilings_of_their_fit_rows(gpu, bf16, copy):
    from core.hardware import load_profile

    s = load_profile(gpu).sustained
    assert s.tflops["bf16"] == bf16 and s.memory_bandwidth_gbps == copy
    assert "bf16" not in s.assumed and "memory_bandwidth_gbps" not in s.assumed
