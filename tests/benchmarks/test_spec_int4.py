"""The issue-19 GPU script's CPU mode end to end (tiny models): the int4 GEMM table, speculation rows at low
load (speculating) and high load (switched off above max_batch), the int4 row and the seed shape, then the
comparison script's table from the raw JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


def test_cpu_run_and_comparison(tmp_path):
    import compare_spec_int4
    import spec_int4_gpu

    assert spec_int4_gpu.main(["--cpu", "--tiny", "--out", str(tmp_path)]) == 0
    raw = json.loads((tmp_path / "spec_int4_cpu.json").read_text())
    assert [g["shape"] for g in raw["gemm"]] == ["qkv", "down"] and all(
        g["max_rel_error"] < 1e-2 for g in raw["gemm"]
    )
    for g in raw["gemm"]:  # each token count: its candidates' times (the CPU's one) and the chosen one
        assert [r["m"] for r in g["rows"]] == [1, 4, 64] and [p["m"] for p in g["prefill"]] == [64]
        for r in g["rows"]:
            assert r["chosen"] in r["candidates"] and r["int4_s"] == min(
                t for t in r["candidates"].values() if isinstance(t, float)
            )
            assert r["int4_s"] > 0 and r["max_rel_error"] < 1e-2
    rows = raw["spec_rows"]
    low, high_load = raw["loads"]
    assert len(rows) == 8 and {(r["alpha"], r["k"], r["load"]) for r in rows} == {
        (a, k, lo) for a in (0.6, 0.8) for k in (2, 4) for lo in (low, high_load)
    }
    for r in rows:
        assert r["engine"]["finished"] == len(r["requests"]["arrival_s"]) > 0
        steps = (
            (tmp_path / f"steps_{r['row']}.csv").read_text().splitlines()
        )  # the row's step trace, a line a step
        assert len(steps) == r["engine_run"]["steps"] + 1 and "spec_seqs" in steps[0].split(",")
        assert r["spec_seqs_max"] <= raw["spec_max_batch"]
    high = [r for r in rows if r["load"] == high_load]
    # (whether a real-time CPU run's batches pass max_batch varies with the machine's load: the switch-off
    # itself is tested deterministically in tests/engine/test_spec_decode.py. At high load a run may have only a
    # few rounds, 7 in one run here, so the drafts are counted at low load, where a run has 100-200 rounds)
    lows = [r for r in rows if r["load"] == low]
    for r in lows:
        assert r["spec_steps"] > 0 and 0 < r["spec_stats"]["accepted"] < r["spec_stats"]["drafted"]
    assert all(len(r["requests"]["arrival_s"]) > len(lows[0]["requests"]["arrival_s"]) for r in high)
    assert raw["int4_rows"][0]["engine"]["finished"] > 0 and len(raw["seed_shape"]["rows"]) == 3

    assert compare_spec_int4.main([str(tmp_path / "spec_int4_cpu.json"), "--out-dir", str(tmp_path)]) == 0
    md = (tmp_path / "fidelity_spec_int4_cpu.md").read_text()
    assert (
        "spec-a80-k4-30pct" in md
        and "spec-a60-k2-80pct" in md
        and "tiny-int4-conversation-80pct-chunked" in md
    )
    assert "## Seed experiment's shape" in md and "## int4 weight-only GEMM" in md and "median" in md
    assert "| qkv | 4 | dequant_mm |" in md  # the per-candidate table
    for r in rows:  # where a round's time went, for the GPU run's look at the gap; rounds as one graph
        assert r["rounds"]["steps"] == r["spec_steps"] and 0 <= r["rounds"]["graph_rounds"] <= r["spec_steps"]
    # how many rounds run as one graph (those without prompt chunks beside them) follows the machine's speed in a
    # real-time CPU run: a high-load run once had 3 rounds, all beside prompt chunks, a loaded machine a low-load
    # row under 0.3 graphed, and a CI run one low-load row with none; the run as a whole has graphed rounds (the
    # graphed round itself is tested deterministically in tests/engine/test_spec_decode.py)
    assert raw["round_graphs"] and any(
        r["rounds"]["graph_rounds"] > 0 and r["rounds"]["round_graph"] > 0 for r in lows
    )
    assert max(r["rounds"]["round_graph"] for r in lows) > 0.3
    import fit_spec_round  # the round's own cost: engine's mean round vs the simulator's, α = 0.6 rows only

    gaps = fit_spec_round.round_gaps(raw)
    assert [g["row"] for g in gaps] == [r["row"] for r in rows if r["alpha"] == 0.6]
    assert all(g["engine_s"] > 0 and g["sim_s"] > 0 and g["sim_steps"] > 0 for g in gaps)

    # resumable: a second run under the same --out keeps every part and row and measures nothing again
    assert spec_int4_gpu.main(["--cpu", "--tiny", "--out", str(tmp_path)]) == 0
    again = json.loads((tmp_path / "spec_int4_cpu.json").read_text())
    assert (
        again["spec_rows"] == rows
        and again["gemm"] == raw["gemm"]
        and again["seed_shape"] == raw["seed_shape"]
    )
    assert "resuming" in (tmp_path / "spec_int4.log").read_text()


def test_budget_skips_what_does_not_fit(tmp_path):
    import spec_int4_gpu

    assert spec_int4_gpu.main(["--cpu", "--tiny", "--out", str(tmp_path), "--budget-s", "0"]) == 0
    raw = json.loads((tmp_path / "spec_int4_cpu.json").read_text())
    assert raw["skipped"][:3] == ["a (GEMMs)", "b (int4 row)", "c (seed shape)"] and len(raw["skipped"]) == 11
    assert "gemm" not in raw and raw["spec_rows"] == [] and "draft" in raw["refs"]
