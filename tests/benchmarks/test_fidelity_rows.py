"""benchmarks/fidelity.py's --row: a row named on the command line, and a bad one refused in one line."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from core.model_spec import load_model

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_row_defaults_and_parts():
    import fidelity

    assert fidelity.parse_row("qwen2.5-7b").name == "qwen2.5-7b-bf16-conversation-80pct-chunked"
    r = fidelity.parse_row("gemma-3-12b:fp8:code:0.5")
    assert (r.model, r.weight_dtype, r.trace, r.load) == ("gemma-3-12b", "fp8", "code", 0.5)


@pytest.mark.parametrize("bad", ["", "m:bf16:chat", "m:bf16:code:lots", "m:bf16:code:0", "a:b:c:0.5:e"])
def test_bad_row_is_one_line(bad, capsys):
    import fidelity

    assert fidelity.main(["--device", "cpu", "--row", bad, "--out-dir", "/nonexistent/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --row") and "\n" not in err


def test_resimulate_without_stored_rows_is_one_line(tmp_path, capsys):
    import fidelity

    assert fidelity.main(["--resimulate", "--profile", "h200", "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--resimulate found no stored rows" in err and "\n" not in err


def test_perturbed_profile_moves_the_flop_and_byte_terms_only(tmp_path):
    import fidelity

    from core.cost_model import BatchShape, CostModel
    from core.hardware import load_profile
    from core.model_spec import load_model

    base = load_profile("h200")
    path = fidelity.perturbed_profile("h200", 0.01, tmp_path)
    moved = load_profile(path)
    assert moved.memory_bandwidth_gbps == pytest.approx(base.memory_bandwidth_gbps * 1.01)
    assert moved.peak_tflops.bf16 == pytest.approx(base.peak_tflops.bf16 * 1.01)
    assert moved.efficiency == base.efficiency and moved.calibration == base.calibration
    # a long prompt step is FLOP-bound: priced almost exactly 1 / 1.01 as long
    spec = load_model("llama-3.1-8b")
    shape = BatchShape(prefill_tokens=8192, prefill_seqs=1, prefill_pairs=8192 * 8193 / 2)
    t0 = CostModel(base, spec, serving_host=False).step_time(shape)
    t1 = CostModel(moved, spec, serving_host=False).step_time(shape)
    assert t1 / t0 == pytest.approx(1 / 1.01, rel=2e-3)


def test_host_band_scales_the_host_terms_only(tmp_path):
    import fidelity

    from core.hardware import load_profile

    base = load_profile("h200")
    lo, hi = fidelity.HOST_SPREAD
    moved = load_profile(fidelity.host_profile("h200", hi, tmp_path))
    for term in fidelity.HOST_TERMS:
        assert getattr(moved.efficiency, term) == pytest.approx(getattr(base.efficiency, term) * hi)
    assert moved.efficiency.gemm == base.efficiency.gemm  # the GPU's curves as they are
    assert moved.memory_bandwidth_gbps == base.memory_bandwidth_gbps
    keys = ["ttft_p50", "tpot_p50"]
    rec = {"row": "r", "engine": {"ttft_p50": 1.0, "tpot_p50": 1.0}, "simulator": {"ttft_p50": 1.1, "tpot_p50": 1.0},
           "host_band": {lo: {"ttft_p50": 0.9, "tpot_p50": 1.0}, hi: {"ttft_p50": 1.5, "tpot_p50": 1.02}}}  # fmt: skip
    lines = fidelity.host_band_table([rec], keys)
    assert lines[0] == "## How far the host moves them"
    assert "| r | +10.0% (-10.0% … +50.0%) | +0.0% (+0.0% … +2.0%) |" in lines
    assert fidelity.host_band_table([dict(rec, host_band={})], keys) == []


def test_the_engine_replay_admits_against_the_simulators_sliding_window_blocks(monkeypatch):
    # the engine's scheduler gets the sliding-window terms the simulator's gets (core.scheduler.sliding_terms):
    # without them the engine held 62 Gemma-3-12B sequences where the simulator held 33 (H200, session 19)
    from types import SimpleNamespace

    import fidelity
    import numpy as np

    import engine.serving
    from core.model_spec import load_model
    from core.scheduler import sliding_terms
    from simulator.scenario import Serving

    seen = {}

    def fake_serve(executor, reqs, pool, *args, **kw):
        seen.update(kw, blocks=pool.num_blocks)
        sched = SimpleNamespace(pool=SimpleNamespace(used=0))
        return SimpleNamespace(scheduler=sched, unfinished=[], step_trace={"compiles": np.zeros(3)})

    monkeypatch.setattr(engine.serving, "serve", fake_serve)
    monkeypatch.setattr(fidelity, "alloc_retries", lambda device: 0)
    gemma = load_model("gemma-3-12b")
    reqs = SimpleNamespace(segments=None)
    run, compiled = fidelity.engine_replay(
        SimpleNamespace(executor=None), reqs, Serving(), gemma, 100, 1.0, "cpu", print
    )
    assert (seen["sliding_window"], seen["sliding_ratio"]) == sliding_terms(gemma) and seen[
        "sliding_ratio"
    ] > 0
    assert seen["blocks"] == 100 and compiled == 0


def test_engine_code_names_rows_run_on_other_engine_code(tmp_path, monkeypatch):
    """A row records the engine's source hash; the table names the rows whose hash is not this checkout's (or
    that have none), and the hash follows the engine files' bytes."""
    import fidelity

    now = fidelity.engine_code()
    assert len(now) == 12 and now == fidelity.engine_code()
    rows = [{"row": "a", "engine_code": now}, {"row": "b"}, {"row": "c", "engine_code": "0123456789ab"}]
    assert fidelity.engine_code_note(rows[:1]).startswith(
        "Engine code: every row ran on this checkout's engine"
    )
    # a catalogue row is compared with the code its model runs: a dense model's leaves out MLA's and MoE's files
    llama, deepseek = load_model("llama-3.1-8b"), load_model("deepseek-v2-lite")
    dense = {"row": "d", "model": "llama-3.1-8b", "engine_code": fidelity.engine_code(llama)}
    assert fidelity.engine_code(llama) != now and fidelity.engine_code(deepseek) == now
    assert "every row ran" in fidelity.engine_code_note([dense, {**rows[0], "model": "deepseek-v2-lite"}])
    assert "1 of 1 rows" in fidelity.engine_code_note([{**dense, "model": "deepseek-v2-lite"}])
    # a model outside the catalogue (the CPU's toy) is compared by the features its row recorded
    features = {"is_mla": False, "is_moe": False}
    toy = {"row": "t", "model": "tiny", "engine_features": features, "engine_code": dense["engine_code"]}
    assert "every row ran" in fidelity.engine_code_note([toy])
    assert "1 of 1 rows" in fidelity.engine_code_note(
        [{**toy, "engine_features": {**features, "is_mla": True}}]
    )
    note = fidelity.engine_code_note(rows)
    assert (
        "2 of 3 rows" in note
        and "b (not recorded)" in note
        and "c (0123456789ab)" in note
        and "a (" not in note
    )
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "x.py").write_text("a = 1\n")
    monkeypatch.setattr(fidelity, "ROOT", tmp_path)
    one = fidelity.engine_code()
    (tmp_path / "engine" / "x.py").write_text("a = 2\n")
    assert fidelity.engine_code() != one
    # a change to MLA's file moves the code of a model with MLA only
    (tmp_path / "engine" / "mla.py").write_text("b = 1\n")
    plain, mla = SimpleNamespace(is_mla=False, is_moe=False), SimpleNamespace(is_mla=True, is_moe=False)
    before = fidelity.engine_code(plain), fidelity.engine_code(mla)
    (tmp_path / "engine" / "mla.py").write_text("b = 2\n")
    assert fidelity.engine_code(plain) == before[0] and fidelity.engine_code(mla) != before[1]


def _record(row: str, model: str, **errors: float) -> dict:
    """A stored row whose simulator side is off by `errors` (column -> share) and exact elsewhere."""
    import fidelity

    engine = dict.fromkeys(fidelity.ROW_FIGURES, 100.0)
    return {"row": row, "model": model, "engine": engine,
            "simulator": {k: 100.0 * (1 + errors.get(k, 0.0)) for k in engine}}  # fmt: skip


def test_cell_bar_names_each_cell_and_median_outside_it():
    import fidelity

    rows = [
        _record("a", "llama-3.1-8b", ttft_p90=0.104),
        _record("b", "qwen2.5-7b", output_tokens_per_s=-0.051),
    ]
    med = {k: 0.0 for k in fidelity.ROW_FIGURES} | {"ttft_p50": 0.052}
    note = fidelity.cell_bar_note(rows, med)
    assert "within 5%): missed." in note
    assert (
        "a TTFT p90 +10.4%" in note
        and "b out tok/s -5.1%" in note
        and "Medians outside: TTFT p50 5.2%" in note
    )
    inside = [_record("a", "llama-3.1-8b", ttft_p90=0.099, output_tokens_per_s=0.049)]
    assert fidelity.cell_bar_note(inside, dict.fromkeys(fidelity.ROW_FIGURES, 0.05)).endswith(": met.")


def test_coverage_names_catalogue_models_that_fit_without_a_row():
    import fidelity

    note = fidelity.coverage_note([_record("a", "llama-3.1-8b")], "h200")
    assert "qwen3-14b (bf16)" in note and "llama-3.1-70b (fp8)" in note  # 140 GB of bf16 weights do not fit
    assert "llama-3.1-8b" not in note and "deepseek-v3" not in note  # has a row; fits no single GPU
    assert fidelity.coverage_note([], "cpu-tiny") == ""


def test_a_stored_decode_check_is_priced_by_the_checkouts_profile(tmp_path):
    """--resimulate prices a stored decode check's roofline and cost-model columns again (they were left as the
    profile of the day had them), and says which engine code the engine's columns ran on."""
    import json

    import fidelity

    from core.cost_model import BatchShape
    from core.hardware import load_profile

    spec = load_model("llama-3.1-8b")
    stale = {"batch": 64, "mean_context": 1088.390625, "step_ms": 7.2, "gpu_ms": 7.1, "tokens_per_s": 8889.0,
             "model_tokens_per_s": 1.0, "model_ratio": 99.0, "roofline_tokens_per_s": 1.0, "roofline_ratio": 99.0}  # fmt: skip
    path = tmp_path / "decode_check.json"
    path.write_text(json.dumps([stale, stale | {"engine_code": fidelity.engine_code(spec), "batch": 128}]))
    old, now = fidelity.stored_decode(tmp_path, "cuda", "h200", None)  # the check runs llama-3.1-8b bf16
    price = fidelity.decode_price(load_profile("h200"), spec, 64, 69657)  # 64 x 1,088.39 tokens of context
    assert old["model_ratio"] == pytest.approx(0.0072 / price) and old["model_tokens_per_s"] == pytest.approx(
        64 / price
    )
    roof = fidelity.roofline_s(
        load_profile("h200"), spec, BatchShape(decode_seqs=64, decode_context_tokens=69657), "bf16", "bf16"
    )
    assert old["roofline_ratio"] == pytest.approx(0.0072 / roof)
    assert "engine code not recorded" in fidelity.decode_provenance([old, now])
    assert "(this checkout's)" in fidelity.decode_provenance([now])
    assert fidelity.stored_decode(tmp_path / "none", "cuda", "h200", None) == []
