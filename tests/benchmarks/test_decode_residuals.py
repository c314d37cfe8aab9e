"""benchmarks/decode_residuals.py: graphed decode steps' GPU spans against the cost model's GPU price."""

import csv
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import decode_residuals as dr  # noqa: E402

from core.cost_model import BatchShape, CostModel  # noqa: E402
from core.graphs import SERVING_GRAPHS  # noqa: E402
from core.hardware import load_profile  # noqa: E402
from core.model_spec import load_model  # noqa: E402


def test_the_committed_tables_are_rebuilt_from_the_stored_rows():
    shapes = Path("benchmarks/results/engine_kernels_h200/session24/gemm_shapes/gemm_shapes.json")
    for run, name in ((None, "decode_residuals_h200.md"), (shapes, "decode_residuals_h200_shapes.md")):
        command = "python benchmarks/decode_residuals.py" + (f" --gemm-shapes {run}" if run else "")
        text = dr.report(dr.analyse(dr.RESULTS, "h200", dr.ROOT / run if run else None), "h200", command, run)
        assert text == (dr.RESULTS / name).read_text()


def test_residual_line_recovers_a_fixed_and_a_per_sequence_cost(tmp_path):
    """Decode steps whose span is the price plus 100 µs plus 5 µs a sequence: the line reads those back; prompt
    and eager steps are left out."""
    cm = CostModel(load_profile("h200"), load_model("llama-3.1-8b"), "bf16", "bf16", serving_host=False,
                   graph_padding=SERVING_GRAPHS)  # fmt: skip
    d = tmp_path / "fidelity" / "h200" / "r"
    d.mkdir(parents=True)
    (d / "row.json").write_text(json.dumps({"row": "r", "model": "llama-3.1-8b", "weight_dtype": "bf16"}))
    rng = np.random.default_rng(0)
    with (d / "engine_steps.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["end_s", "graph", "prefill_tokens", "spec_seqs", "gpu_s", "decode_seqs", "decode_context_tokens",
                    "logits_tokens"])  # fmt: skip
        for _ in range(200):
            n = int(rng.integers(1, 100))
            ctx = int(n * rng.integers(100, 3000))
            price = cm.step_time(BatchShape(decode_seqs=n, decode_context_tokens=ctx, logits_tokens=n))
            w.writerow([0.0, 1, 0, 0, price + 100e-6 + 5e-6 * n, n, ctx, n])
        w.writerow([0.0, 2, 512, 0, 0.05, 4, 4000, 5])  # a mixed step from a graph: not a decode step
        w.writerow([0.0, 0, 3000, 0, 0.09, 4, 4000, 5])  # an eager step
    (row,) = dr.analyse(tmp_path, "h200", None)
    assert row["steps"] == 200 and row["table"] == "fidelity"
    assert (
        abs(row["per_step_us"] - 100) < 1
        and abs(row["per_seq_us"] - 5) < 0.05
        and abs(row["per_kctx_us"]) < 0.05
    )
    assert abs(row["gemm_us"]) < 1 and row["all_pct"] > 0 and all(v > 0 for v in row["bins"].values())


def test_shape_factors_scale_only_their_shape():
    prof, spec = load_profile("h200"), load_model("llama-3.1-8b")
    plain = CostModel(prof, spec, serving_host=False)
    shaped = dr.ShapedCostModel(prof, spec, factors={}, serving_host=False)
    assert shaped.gemm_time(16, 16) == plain.gemm_time(16, 16)
    k, n = spec.hidden_size, spec.hidden_size  # the o projection
    factors = {(k, n): (np.array([8.0, 64.0]), np.array([1.5, 1.5]))}
    shaped = dr.ShapedCostModel(prof, spec, factors=factors, serving_host=False)
    assert abs(shaped._weight_gemm(16, k, n) / plain._weight_gemm(16, k, n) - 1.5) < 1e-9
    assert shaped._weight_gemm(16, k, 4 * n) == plain._weight_gemm(16, k, 4 * n)  # another shape
    assert shaped._weight_gemm(1, k, n) == plain._weight_gemm(1, k, n)  # one row: the GEMV, unscaled
    assert shaped.gemm_time(16, 16) > plain.gemm_time(16, 16)
