"""The serving loop's host costs: the fit recovers known coefficients; the cost model adds them to serving
steps only (calibration compares GPU-only steps without them)."""

import numpy as np
import pytest

from calibrate.serving import fit_host, synthetic_requests
from core.cost_model import BatchShape, CostModel
from core.hardware import load_profile
from core.model_spec import load_model


def trace_of(n: np.ndarray, prompt: np.ndarray, host: np.ndarray, gpu: np.ndarray) -> dict:
    z = np.zeros(len(n))
    return {"schedule_s": host * 0.2, "prepare_s": host * 0.3, "record_s": host * 0.5, "execute_s": gpu,
            "gpu_s": gpu, "decode_seqs": n - prompt, "prefill_seqs": prompt, "prefill_tokens": prompt * 100.0,
            "launch_s": z}  # fmt: skip


def test_fit_host_recovers_known_costs_and_ignores_spikes():
    rng = np.random.default_rng(1)
    n = rng.integers(1, 128, 2000).astype(float)
    prompt = (rng.random(2000) < 0.2).astype(float)
    host = 300e-6 + 2e-6 * n + 500e-6 * prompt + rng.normal(0, 5e-6, 2000)
    host[::100] += 0.02  # garbage-collector pauses
    fit = fit_host(trace_of(n, prompt, host, rng.uniform(5e-3, 30e-3, 2000)), gpu=True)
    assert fit["serving_step_s"] == pytest.approx(300e-6, rel=0.05)
    assert fit["serving_per_sequence_s"] == pytest.approx(2e-6, rel=0.05)
    assert fit["serving_prompt_step_s"] == pytest.approx(500e-6, rel=0.05)


def test_synthetic_workload_is_fixed():
    a, b = synthetic_requests(False, False)[0], synthetic_requests(False, False)[0]
    assert (a.prompt_tokens == b.prompt_tokens).all() and (a.arrival_s == b.arrival_s).all()
    assert len(a) == 150 and a.arrival_s.max() < 10


def test_cost_model_adds_host_costs_to_serving_steps_only():
    base = load_profile("h100-sxm")
    eff = base.efficiency.model_copy(update={"serving_step_s": 400e-6, "serving_per_sequence_s": 3e-6,
                                             "serving_prompt_step_s": 1e-3})  # fmt: skip
    prof = base.model_copy(update={"efficiency": eff})
    spec = load_model("llama-3.1-8b")
    serving, gpu = CostModel(prof, spec), CostModel(prof, spec, serving_host=False)
    dec = BatchShape(decode_seqs=10, decode_context_tokens=10_000)
    assert serving.step_time(dec) - gpu.step_time(dec) == pytest.approx(400e-6 + 10 * 3e-6)
    mixed = BatchShape(prefill_tokens=100, prefill_seqs=1, prefill_pairs=5050.0, decode_seqs=9,
                       decode_context_tokens=9000)  # fmt: skip
    assert serving.step_time(mixed) - gpu.step_time(mixed) == pytest.approx(400e-6 + 10 * 3e-6 + 1e-3)
    assert serving.step_split(mixed)[0] == pytest.approx(serving.step_time(mixed))
    # closed-form decode runs carry the same host cost per step
    a, _ = serving.decode_step_line(10, 10_000, 5)
    assert a == pytest.approx(serving.step_time(dec))


def test_mla_eager_floor_takes_the_measured_figure_for_mla_models_only():
    """An MLA model's eager launch floor is the profile's eager_launch_mla_s_per_layer x its layers where measured,
    the launch-count scaling of eager_launch_s_per_layer where not; other models never take it."""
    base = load_profile("h200")
    eff0 = base.efficiency.model_copy(update={"eager_launch_mla_s_per_layer": 0.0})
    eff1 = base.efficiency.model_copy(update={"eager_launch_mla_s_per_layer": 5e-3})
    p0, p1 = (base.model_copy(update={"efficiency": e}) for e in (eff0, eff1))
    ds, llama = load_model("deepseek-v2-lite"), load_model("llama-3.1-8b")

    def floor(prof, spec):
        return CostModel(prof, spec, eager_prefill=True).eager_floor

    assert floor(p1, ds) == pytest.approx(5e-3 * ds.num_layers)
    assert floor(p0, ds) not in (0.0, pytest.approx(5e-3 * ds.num_layers))
    assert floor(p1, llama) == floor(p0, llama) > 0


def test_mla_eager_measurement_runs_its_steps_on_the_cpu():
    """measure_mla_eager's CPU path: the same steps at both depths (plain-form prompt chunks beside decodes after
    decode steps) on a toy MLA model; a launch floor of 0 on the CPU, where ops run as issued."""
    from calibrate.serving import MLA_EAGER_DEPTHS, measure_mla_eager, mla_eager_shapes

    got = measure_mla_eager("cpu")
    assert got["per_layer_s"] == 0.0 and got["steps"] == sum(len(per) for per in mla_eager_shapes(True)) == 8
    assert set(got["median_s"]) == set(MLA_EAGER_DEPTHS) and all(v > 0 for v in got["median_s"].values())
    chunks = [c for per in mla_eager_shapes(False) for c, _ in per]  # every length new
    from engine import mla

    assert len(set(chunks)) == len(chunks) and min(chunks) > mla.ABSORBED_PROMPT_TOKENS
    chunks = [c for per in mla_eager_shapes(False, 4) for c, _ in per]  # four depths, still every length new
    assert len(set(chunks)) == len(chunks) == 4 * len(mla_eager_shapes(False)[0])


def test_mla_eager_depths_by_device():
    """Deep builds where the GPU holds them, the shallow pair on the CPU (and small GPUs)."""
    from calibrate.serving import MLA_EAGER_DEEP_DEPTHS, MLA_EAGER_DEPTHS, mla_eager_depths

    assert mla_eager_depths("cpu") == MLA_EAGER_DEPTHS
    assert (
        MLA_EAGER_DEEP_DEPTHS[0] > MLA_EAGER_DEPTHS[0] and MLA_EAGER_DEEP_DEPTHS[1] > MLA_EAGER_DEEP_DEPTHS[0]
    )
