"""Our engine's CUDA-graph sizes: core/graphs.py is what the engine captures, and the cost model's graph_padding
prices the padded rows in the GEMM, MoE and element-wise groups only, where the engine replays a graph."""

import bisect

import numpy as np
import pytest

from core.cost_model import BatchShape, CostModel
from core.graphs import (
    MIXED_GRAPH_TOKENS,
    MIXED_PREFILL_SEQS,
    SERVING_GRAPHS,
    STEP_RUNNER_GRAPHS,
    padded_decode_batch,
    padded_graph_tokens,
)
from core.hardware import load_profile
from core.model_spec import load_model


def test_padded_sizes_are_the_engines_graphs():
    from engine import serving, steps

    assert serving.MIXED_GRAPH_TOKENS == MIXED_GRAPH_TOKENS == 2048 and serving.MIXED_PREFILL_SEQS == 8
    decode = steps.capture_sizes(512)
    assert decode[:6] == [1, 2, 4, 8, 16, 24]
    for n in range(1, 513):
        assert padded_decode_batch(n) == decode[bisect.bisect_left(decode, n)]
    mixed = serving.mixed_sizes(MIXED_GRAPH_TOKENS)
    assert mixed[-1] == 2048 and 576 in mixed and 520 not in mixed
    for t in range(1, 2049):
        assert padded_graph_tokens(t) == mixed[bisect.bisect_left(mixed, t)]
    assert padded_graph_tokens(2049) == 2049 and padded_graph_tokens(600) == 640
    assert padded_graph_tokens(100, top=64) == 100 and padded_graph_tokens(40, top=64) == 40


def both(model: str = "llama-3.1-8b", **kw) -> tuple[CostModel, CostModel]:
    p, m = load_profile("h100-sxm"), load_model(model)
    return CostModel(p, m, **kw), CostModel(p, m, graph_padding=SERVING_GRAPHS, **kw)


def test_a_600_token_mixed_step_costs_the_gemms_of_640_tokens():
    plain, padded = both()
    b = BatchShape.of([(580, 0)], [900] * 20, fresh=plain.fresh)  # 600 tokens, 21 logits
    got, ref = padded.breakdown(b), plain.breakdown(b)
    assert got["gemm"] == plain.gemm_time(640, 21) > ref["gemm"]
    assert got["elementwise"] == plain.elementwise_time(640) > ref["elementwise"]
    for k in ("attention_prefill", "attention_decode", "communication", "overhead"):
        assert got[k] == ref[k]  # attention, collectives and the fixed terms keep the real counts
    assert padded.step_split(b)[0] == pytest.approx(padded.step_time(b), rel=1e-12)


def test_collectives_and_experts_under_tensor_parallelism():
    plain, padded = both("mixtral-8x7b", tp=2)
    b = BatchShape.of([(300, 0)], [500] * 3, fresh=plain.fresh)  # 303 tokens: the 304 graph
    got, ref = padded.breakdown(b), plain.breakdown(b)
    assert got["gemm"] == plain.gemm_time(304, 4)  # the routed experts run the padding rows too
    assert got["communication"] == ref["communication"] == plain.communication_time(303, 4)


@pytest.mark.parametrize(
    "shape, kw",
    [
        (BatchShape.of([(600, 0)], [800] * 4), {"eager_prefill": True}),  # graphs for decode only
        (BatchShape.of([(600, 0)], [800] * 4), {"eager_prefill": True, "eager_decode": True}),  # none
        (BatchShape.of([], [800] * 37), {"eager_prefill": True, "eager_decode": True}),
        (BatchShape.of([(60, 0)] * (MIXED_PREFILL_SEQS + 1)), {}),  # 9 prompt chunks: eager
        (BatchShape.of([(1500, 0), (500, 0)], [800] * 60), {}),  # 2,060 tokens: eager
        (BatchShape.of([(640, 0)]), {}),  # exactly a graph's size
        (BatchShape.of([], [800] * 40), {}),
    ],
)
def test_steps_without_padding_cost_what_they_did(shape, kw):
    plain, padded = both(**kw)
    got, ref = padded.breakdown(shape), plain.breakdown(shape)
    wait = got.pop("launch_wait", 0.0)  # an eager step under a graph rule waits for its launches
    assert wait == ref.pop("launch_wait", 0.0) or (not kw and wait > 0.0)
    assert got == ref
    total = padded.step_split(shape)[0]
    assert total == pytest.approx(sum(got.values()) + wait, rel=1e-12)


def test_a_step_no_graph_takes_lasts_at_least_its_launches():
    """Nine short prompt chunks run eagerly: with a graph rule the step lasts at least the launch floor (the
    fitted launch time a layer, scaled by the kernels a layer launches); a graphed step of the same tokens
    does not wait. DeepSeek-V2-Lite launches about two and a half times Llama's kernels a layer (five before its MLA
    glue was one kernel, engine.mla.mla_rope_cache)."""
    from core.cost_model import LAUNCHES_SWEEP_MODEL, launches_per_layer

    plain, padded = both()
    eager, graphed = BatchShape.of([(60, 0)] * 9), BatchShape.of([(540, 0)])
    floor = padded.ungraphed_floor
    assert floor == pytest.approx(32 * padded.eff.eager_launch_s_per_layer)
    assert padded.step_time(eager) == pytest.approx(max(floor, plain.step_time(eager)))
    assert padded.step_time(eager) > plain.step_time(
        eager
    )  # 540 tokens of GPU work launch slower than they run
    assert "launch_wait" not in padded.breakdown(graphed) and plain.ungraphed_floor == 0.0
    assert launches_per_layer(load_model("llama-3.1-8b")) == LAUNCHES_SWEEP_MODEL
    assert 2.0 < launches_per_layer(load_model("deepseek-v2-lite")) / LAUNCHES_SWEEP_MODEL < 3.0


def test_the_shared_cache_tells_eight_chunks_from_nine():
    """Same tokens, logits and sequences: 8 chunks and a decode replay the 640 graph, 9 chunks run eagerly."""
    plain, padded = both()
    graphed = BatchShape.of([(75, 0)] * 8, [900])
    eager = BatchShape.of([(67, 0)] * 8 + [(65, 0)])
    assert (graphed.tokens, graphed.prefill_seqs + graphed.decode_seqs) == (eager.tokens, 9) == (601, 9)
    for b, rows in ((graphed, 640), (eager, 601), (graphed, 640)):
        assert padded.breakdown(b)["gemm"] == plain.gemm_time(rows, 9)
        assert padded.step_split(b)[0] == pytest.approx(padded.step_time(b), rel=1e-12)


def test_decode_runs_price_the_padded_batch():
    plain, padded = both()
    n, ctx = 37, 37 * (1200 + np.arange(50))
    steps = [padded.step_time(BatchShape(decode_seqs=n, decode_context_tokens=int(c))) for c in ctx]
    np.testing.assert_allclose(padded.decode_step_times(n, ctx), steps, rtol=1e-12)
    assert padded.breakdown(BatchShape(decode_seqs=n, decode_context_tokens=int(ctx[0])))["gemm"] == (
        plain.gemm_time(40, 37)
    )
    a, b = padded.decode_step_line(n, int(ctx[0]), 50)
    np.testing.assert_allclose(a + b * np.arange(50), steps, rtol=1e-9)
    assert (padded.decode_step_times(n, ctx) > plain.decode_step_times(n, ctx)).all()


def test_the_step_runners_graphs_pad_to_512_tokens_for_any_number_of_sequences():
    """engine/steps.py's own graphs (StepRunner(serving=False), which timed the stored calibration sweeps)
    against the serving loop's: a 1,032-token mixed step ran eagerly there, on the 1,088 graph here; ten
    300-token prompt chunks on the 304 graph there, eagerly here."""
    import inspect

    from engine.steps import StepRunner

    assert (
        inspect.signature(StepRunner).parameters["graph_max_tokens"].default
        == STEP_RUNNER_GRAPHS.mixed_tokens
    )
    assert (STEP_RUNNER_GRAPHS.rows(1032, 1024, 1), SERVING_GRAPHS.rows(1032, 1024, 1)) == (1032, 1088)
    assert (STEP_RUNNER_GRAPHS.rows(301, 301, 10), SERVING_GRAPHS.rows(301, 301, 10)) == (304, 301)
    for n in (3, 12, 37, 256):  # decode-only steps: the same graph under both
        assert STEP_RUNNER_GRAPHS.rows(n, 0, 0) == SERVING_GRAPHS.rows(n, 0, 0) == padded_decode_batch(n)
    p, m = load_profile("h100-sxm"), load_model("llama-3.1-8b")
    old = CostModel(p, m, graph_padding=STEP_RUNNER_GRAPHS)
    b = BatchShape.of([(1000, 0)], [900] * 32)
    assert old.breakdown(b)["gemm"] == CostModel(p, m).breakdown(b)["gemm"]


def test_padding_rows_are_one_dummy_token_to_the_experts():
    """The serving loop's padding rows are one dummy token repeated (engine/serving.py: token 1 at position 0),
    so a MoE layer routes them to one token's experts: a decode of 5 on the graph of 8 touches the experts of 6
    tokens and computes 8 rows (the old StepRunner's random padding tokens are routed each on its own)."""
    p, m = load_profile("h200"), load_model("mixtral-8x7b")
    alike = CostModel(p, m, graph_padding=SERVING_GRAPHS)
    apart = CostModel(p, m, graph_padding=STEP_RUNNER_GRAPHS)
    plain = CostModel(p, m)
    assert plain.expert_time(5) < alike.expert_time(5, 8) < apart.expert_time(5, 8) == plain.expert_time(8)
    assert alike.expert_time(3, 4) == plain.expert_time(4)  # one padding row: one more token either way
    b = BatchShape(decode_seqs=5, decode_context_tokens=5000)
    assert alike.breakdown(b)["gemm"] < apart.breakdown(b)["gemm"]
    assert alike.decode_step_times(5, np.array([5000]))[0] == pytest.approx(alike.step_time(b), rel=1e-12)
