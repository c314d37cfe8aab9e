"""The cost model with an engine profile: ours is exactly no profile; another engine's host terms, kernel factors
and packed attention change a step as core/engine_profile.py says, by the function the engine fit uses; the
closed forms of decode runs equal stepping with them."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from core.cost_model import BatchShape, CostModel, packed_attention_time
from core.engine_profile import ENGINE_DIR, EngineProfile, load_engine_profile
from core.hardware import load_profile
from core.model_spec import load_model

ROOT = Path(__file__).resolve().parents[2]
RAW = ROOT / "calibration_runs" / "transformers_h200" / "session5" / "transformers_llama-3.1-8b_h200.json"


def additive() -> dict:
    """The transformers-generate profile (per-sequence attention) with its host terms added to the GPU's time
    (its host.overlap left out: test_overlapping_host_terms_take_the_longer_of_host_and_gpu checks that)."""
    data = yaml.safe_load((ENGINE_DIR / "transformers-generate.yaml").read_text())
    data["host"].pop("overlap", None)
    return data


def profile_with(**kernels) -> EngineProfile:
    """The additive transformers-generate profile with kernel factors 1.0 but those given."""
    data = additive()
    data["kernels"].update(
        {"gemm": 1.0, "attention_prefill": 1.0, "attention_decode": 1.0, "elementwise": 1.0}
    )
    data["kernels"].update(kernels)
    return EngineProfile.model_validate(data)


def shapes(cm: CostModel, window: int) -> list[BatchShape]:
    return [
        BatchShape.of([(512, 0)], window=window, fresh=cm.fresh),  # a fresh prompt
        BatchShape.of([(3000, 0), (100, 900)], [700, 5000], window=window, fresh=cm.fresh),  # mixed
        BatchShape.of([], [1200] * 37, window=window),  # decode only
        BatchShape.of([(8192, 0)] * 4, window=window, fresh=cm.fresh, logits_tokens=4),  # a static prefill
    ]


@pytest.mark.parametrize("model", ["llama-3.1-8b", "gemma-3-12b", "mixtral-8x7b"])
@pytest.mark.parametrize("eager", [False, True])
def test_ours_is_exactly_no_engine(model, eager):
    p, m = load_profile("h100-sxm"), load_model(model)
    tp = 2 if model == "mixtral-8x7b" else 1
    plain = CostModel(p, m, tp=tp, eager_prefill=eager)
    ours = CostModel(p, m, tp=tp, eager_prefill=eager, engine=load_engine_profile("ours"))
    for b in shapes(plain, m.sliding_window):
        assert ours.breakdown(b) == plain.breakdown(b)  # exact: the same floating-point operations
        assert ours.step_split(b) == plain.step_split(b)
    ctx = 37 * (1200 + np.arange(50))
    np.testing.assert_array_equal(ours.decode_step_times(37, ctx), plain.decode_step_times(37, ctx))
    assert ours.decode_step_line(37, 37 * 1200, 50) == plain.decode_step_line(37, 37 * 1200, 50)


def test_host_terms_add_per_layer_to_the_gpu_time_of_a_step():
    """transformers-generate (factors 1.0, per-sequence attention): a step is the GPU-only cost model's time plus
    (per_step + n · per_sequence + p · per_prompt_token) · layers, the GPU profile's serving loop left out."""
    p, m = load_profile("h200"), load_model("llama-3.1-8b")
    eng = profile_with()
    gpu_only = CostModel(p, m, serving_host=False)
    cm = CostModel(
        p, m, engine=eng, eager_prefill=True, eager_decode=True
    )  # cuda_graphs none: no launch floor
    # the layers the host terms multiply by: Llama's, counted by its operators (host.operators)
    h, L = eng.host, eng.host_layers(m.num_layers, m.model_type)
    one = BatchShape.of([], [2048])  # one decode step of one sequence
    expected = gpu_only.step_time(one) + L * (h.per_step_s.value + h.per_sequence_s.value)
    assert cm.step_time(one) == pytest.approx(expected, rel=1e-12)
    assert cm.step_time(one) == pytest.approx(
        gpu_only.step_time(one) + eng.host_time(m.num_layers, 1, 0, m.model_type), rel=1e-12
    )
    # the host time is most of a transformers step (calibration_runs/transformers_h200: ~20 ms per token)
    assert eng.host_time(m.num_layers, 1, 0, m.model_type) > 2 * gpu_only.step_time(one)
    prompt = BatchShape.of([(1000, 0)] * 3, fresh=cm.fresh, logits_tokens=3)
    assert cm.step_time(prompt) == pytest.approx(
        gpu_only.step_time(prompt) + eng.host_time(m.num_layers, 3, 3000, m.model_type), rel=1e-12
    )
    assert "launch_wait" not in cm.breakdown(prompt)
    # the decode-run closed form and the static loop's per-step times agree with one step
    assert cm.decode_step_times(1, np.array([2048]))[0] == pytest.approx(cm.step_time(one), rel=1e-12)
    a, _ = cm.decode_step_line(1, 2048, 10)
    assert a == pytest.approx(cm.step_time(one), rel=1e-12)


def test_a_host_term_per_prompt_token_counts_in_the_step_and_its_prompt_part():
    data = additive()
    data["host"]["per_prompt_token_s"]["value"] = 1e-7
    eng = EngineProfile.model_validate(data)
    p, m = load_profile("h200"), load_model("llama-3.1-8b")
    data["host"]["per_prompt_token_s"]["value"] = 0.0
    base = CostModel(p, m, engine=EngineProfile.model_validate(data))
    cm = CostModel(p, m, engine=eng)
    b = BatchShape.of([(1000, 0)], [500, 600], fresh=cm.fresh)
    extra = eng.host_layers(m.num_layers, m.model_type) * 1e-7 * 1000
    assert cm.step_time(b) == pytest.approx(base.step_time(b) + extra, rel=1e-12)
    (t, pre), (t0, pre0) = cm.step_split(b), base.step_split(b)
    assert t == pytest.approx(t0 + extra, rel=1e-12) and pre == pytest.approx(pre0 + extra, rel=1e-12)


def test_kernel_factors_scale_their_groups_and_the_decode_closed_forms_follow():
    p, m = load_profile("h100-sxm"), load_model("llama-3.1-8b")
    one = CostModel(p, m, engine=profile_with())
    k = {"gemm": 1.3, "attention_prefill": 1.7, "attention_decode": 2.5, "elementwise": 0.8}
    cm = CostModel(p, m, engine=profile_with(**k))
    for b in shapes(one, 0):
        got, ref = cm.breakdown(b), one.breakdown(b)
        for group, f in k.items():
            assert got[group] == pytest.approx(f * ref[group], rel=1e-12)
        assert got["overhead"] == ref["overhead"] and got["communication"] == ref["communication"]
        assert sum(cm.step_split(b)[:1]) == pytest.approx(cm.step_time(b), rel=1e-12)
    # the decode-run shortcut (folded coefficients) equals stepping, with a factor on decode attention
    for n, ctx0, steps in [(1, 100, 40), (64, 64 * 3000, 200), (256, 256 * 20000, 30)]:
        line = cm.decode_step_line(n, ctx0, steps)
        times = cm.decode_step_times(n, ctx0 + n * np.arange(steps))
        if line is not None:
            np.testing.assert_allclose(line[0] + line[1] * np.arange(steps), times, rtol=1e-9)
        assert times[0] == pytest.approx(
            cm.step_time(BatchShape(decode_seqs=n, decode_context_tokens=ctx0)), rel=1e-12
        )


def test_sliding_window_decode_line_with_a_decode_factor_equals_stepping():
    p, m = load_profile("h100-sxm"), load_model("gemma-3-12b")
    cm = CostModel(p, m, engine=profile_with(attention_decode=3.0))
    for n, ctx0, steps in [(4, 4 * 200, 50), (32, 32 * 9000, 40)]:
        line = cm.decode_step_line(n, ctx0, steps)
        times = cm.decode_step_times(n, ctx0 + n * np.arange(steps))
        assert line is not None
        np.testing.assert_allclose(line[0] + line[1] * np.arange(steps), times, rtol=1e-9)


def test_packed_attention_is_one_attention_over_the_steps_queries_and_keys():
    p, m = load_profile("h200"), load_model("llama-3.1-8b")
    eng = load_engine_profile("transformers")
    cm = CostModel(p, m, engine=eng)
    b = BatchShape.of([(3000, 0), (200, 1000)], [20000, 1000])  # 3,202 queries over 25,200 keys
    bd = cm.breakdown(b)
    assert bd["attention_decode"] == 0.0
    assert bd["attention_prefill"] == eng.kernels.attention_prefill * packed_attention_time(cm, 3202, 25200)
    decode = BatchShape.of([], [1000, 3000])  # decode-only steps attend packed too
    assert cm.attention_prefill_time(decode) == eng.kernels.attention_prefill * packed_attention_time(
        cm, 2, 4000
    )
    times = cm.decode_step_times(2, np.array([4000, 4002]))
    assert times[0] == pytest.approx(cm.step_time(decode), rel=1e-12) and times[1] > times[0]
    data = yaml.safe_load((ENGINE_DIR / "transformers.yaml").read_text())
    data["kernels"].update(q_padding_tokens=64, kv_padding_tokens=16384)
    padded = CostModel(p, m, engine=EngineProfile.model_validate(data))
    assert padded.packed_sizes(decode) == (64, 16384)


def test_packed_step_cost_equals_the_engine_fits_prediction_for_recorded_steps():
    """The fit (calibrate/engine_fit.py's rows and predict) and the forecast (CostModel with the profile) cost
    every recorded step of a measured transformers run the same: one function, one set of terms."""
    from calibrate.engine_fit import HostFit, Layout, _recorded, predict, recorded_steps, step_rows

    block = json.loads(RAW.read_text())["replays"]["conv_trace_rate"]
    steps = recorded_steps(_recorded(block))
    p, m = load_profile("h200"), load_model("llama-3.1-8b")
    eng = load_engine_profile("transformers")
    rows = step_rows(
        m.name, CostModel(p, m, serving_host=False), steps, "replay", Layout.of(block["settings"])
    )
    for r in rows:  # the layers the fit multiplies its host terms by (read_runs sets them the same way)
        r.layers = eng.host_layers(m.num_layers, m.model_type)
    h, k = eng.host, eng.kernels
    fit = HostFit(
        np.array([h.per_step_s.value, h.per_sequence_s.value, h.per_prompt_token_s.value]),
        np.array([k.gemm, k.attention_prefill, k.attention_decode, k.elementwise]),
        h.per_layer,
        train_rows=0,
    )
    cm = CostModel(p, m, engine=eng)
    mine = [cm.step_time(BatchShape.of(s.chunks, s.decode_contexts, fresh=cm.fresh)) for s in steps]
    assert len(steps) == len(rows) > 500
    np.testing.assert_allclose(mine, predict(rows, fit), rtol=1e-12)


def test_cuda_graphs_none_on_our_engine_waits_for_every_steps_launches():
    p, m = load_profile("h100-sxm"), load_model("llama-3.1-8b")
    graphs = CostModel(p, m, eager_prefill=True)
    eager = CostModel(p, m, eager_prefill=True, eager_decode=True, engine=load_engine_profile("ours"))
    floor = m.num_layers * p.efficiency.eager_launch_s_per_layer
    small = BatchShape(decode_seqs=1, decode_context_tokens=100)
    assert graphs.step_time(small) < floor  # a batch-1 decode step is shorter than launching it eagerly
    assert eager.step_time(small) == floor and eager.breakdown(small)["launch_wait"] > 0
    assert eager.step_split(small) == (floor, 0.0)
    # the decode-run shortcut keeps the floor: constant below it, None across it, the line above it
    assert eager.decode_step_line(1, 100, 20) == (floor, 0.0)
    times = eager.decode_step_times(1, 100 + np.arange(20))
    assert np.all(times == floor)
    for n, ctx0, k in [(1, 100, 20), (200, 200 * 4000, 50), (8, 8 * 100, 3000)]:
        line = eager.decode_step_line(n, ctx0, k)
        times = eager.decode_step_times(n, ctx0 + n * np.arange(k))
        assert np.all(times >= floor)
        if line is not None:
            np.testing.assert_allclose(line[0] + line[1] * np.arange(k), times, rtol=1e-9)
    # an engine with its own host terms has its launches in them: no floor
    own = CostModel(p, m, eager_prefill=True, eager_decode=True, engine=load_engine_profile("transformers"))
    assert "launch_wait" not in own.breakdown(small)


@pytest.mark.parametrize("model", ["llama-3.1-8b", "gemma-3-12b"])
def test_packed_decode_line_equals_stepping(model):
    """The closed form of a packed decode run (CostModel._packed_coeffs) against packed_attention_time per step."""
    p, m = load_profile("h200"), load_model(model)
    cm = CostModel(p, m, engine=load_engine_profile("transformers"))
    lines = 0
    for n, ctx0, k in [(1, 300, 100), (7, 7 * 2000, 64), (300, 300 * 1500, 40), (2000, 2000 * 800, 10)]:
        times = cm.decode_step_times(n, ctx0 + n * np.arange(k))
        line = cm.decode_step_line(n, ctx0, k)
        if line is not None:
            lines += 1
            np.testing.assert_allclose(line[0] + line[1] * np.arange(k), times, rtol=1e-9)
        assert times[0] == pytest.approx(
            cm.step_time(BatchShape(decode_seqs=n, decode_context_tokens=ctx0)), rel=1e-12
        )
    assert lines >= 3
    data = yaml.safe_load((ENGINE_DIR / "transformers.yaml").read_text())
    data["kernels"].update(kv_padding_tokens=16384)
    assert CostModel(p, m, engine=EngineProfile.model_validate(data)).decode_step_line(7, 14000, 64) is None


def test_overlapping_host_terms_take_the_longer_of_host_and_gpu():
    """host.overlap (transformers-generate): a step is max(GPU time, host terms) + serial_s, in every path that
    costs a step (breakdown, step_split, the static loop's decode times), and decode runs are costed step by step."""
    p, m = load_profile("h200"), load_model("llama-3.1-8b")
    eng = load_engine_profile("transformers-generate")
    assert eng.host.overlap is not None
    serial = eng.host.overlap.serial_s.value
    data = additive()  # the same kernels, no host terms
    for term in ("per_step_s", "per_sequence_s", "per_prompt_token_s"):
        data["host"][term]["value"] = 0.0
    cm, gpu_only = CostModel(p, m, engine=eng), CostModel(p, m, engine=EngineProfile.model_validate(data))
    L = eng.host_layers(m.num_layers, m.model_type)
    one, long = BatchShape.of([], [2048]), BatchShape.of([(8192, 0)], fresh=cm.fresh, logits_tokens=1)
    for b, host_bound in ((one, True), (long, False)):
        seqs = b.decode_seqs + b.prefill_seqs
        h = eng.host_time(m.num_layers, seqs, b.prefill_tokens, m.model_type)
        g = gpu_only.step_time(b)
        assert (h > g) == host_bound  # batch-1 decode waits on the host, a long prompt on the GPU
        assert cm.step_time(b) == pytest.approx(max(g, h) + serial, rel=1e-12)
        assert cm.step_split(b)[0] == pytest.approx(cm.step_time(b), rel=1e-12)
    assert cm.breakdown(one)["host_overlapped"] < 0
    assert L * eng.host.per_step_s.value + serial == pytest.approx(
        cm.host_time(BatchShape.of([], [1])) - L * eng.host.per_sequence_s.value
    )
    times = cm.decode_step_times(1, np.array([2048, 2049]))
    assert times[0] == pytest.approx(cm.step_time(one), rel=1e-12)
    assert cm.decode_step_line(1, 2048, 10) is None
