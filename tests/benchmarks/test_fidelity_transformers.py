"""Fidelity against transformers: committed runs replayed with the engine profile, rows marked fitted or held out
as the profile says, the bar over held-out rows only; the seed experiment says which engine each row is."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import fidelity_transformers as ft  # noqa: E402
import seed_experiment as se  # noqa: E402

from core.engine_profile import load_engine_profile  # noqa: E402

LLAMA = ft.RUNS / "session5" / "transformers_llama-3.1-8b_h200.json"


def test_replays_are_marked_as_the_profile_was_fitted():
    data = json.loads(LLAMA.read_text())
    p = load_engine_profile("transformers")
    fitted = ft.served_row(p, LLAMA, "llama-3.1-8b", "conv_moderate", data["replays"]["conv_moderate"])
    held = ft.served_row(p, LLAMA, "llama-3.1-8b", "code_moderate", data["replays"]["code_moderate"])
    assert fitted.fitted and not held.fitted  # the conversation replays were fitted, the code ones held out
    for r in (fitted, held):
        assert set(r.measured) == set(ft.SERVED_KEYS) == set(r.simulated)
        assert all(math.isfinite(e) for e in r.errors().values())
        assert r.detail["finished"][0] == r.detail["finished"][1]  # every request finished on both sides
    # the measured side is the run's own summary
    assert held.measured["ttft_p50_s"] == data["replays"]["code_moderate"]["summary"]["ttft_p50_s"]


def test_generate_rows_fitted_every_other_prompt_length():
    data = json.loads(LLAMA.read_text())
    rows = ft.generate_rows(
        load_engine_profile("transformers-generate"), LLAMA, "llama-3.1-8b", data["generate"]
    )
    lengths = {int(r.label.split()[-1]): r.fitted for r in rows}
    assert lengths == {128: True, 512: False, 1024: True, 2048: False, 4096: True, 8192: False}
    # the simulated TTFT grows with the prompt (one prefill step), the decode per token barely does
    ttft = [r.simulated["ttft_s"] for r in rows]
    assert ttft == sorted(ttft) and ttft[-1] > 5 * ttft[0]


def test_bar_counts_held_out_rows_only():
    def row(fitted: bool, err: float) -> ft.Compared:
        m = dict.fromkeys(ft.SERVED_KEYS, 1.0)
        return ft.Compared("served", "m", "r", "f", "x", fitted, m, {k: 1.0 + err for k in m})

    m, ok = ft.bar([row(False, 0.02), row(False, 0.04), row(True, 0.9)])
    assert ok and math.isclose(m["ttft_p50_s"], 0.03)
    m, ok = ft.bar([row(False, 0.02), row(False, 0.2)])
    assert not ok and math.isclose(m["output_tokens_per_s"], 0.11)


def test_seed_experiment_names_the_engine_and_why_transformers_cannot_run_it():
    rows = se.sweep((1024,))
    ours = [r for r in rows if r["engine"].startswith("ours")]
    assert len(ours) == 1 and ours[0]["weights"] == "int4" and 10 < ours[0]["decode_tokens_per_s"] < 60
    other = {
        (r["engine"].split()[0], r["weights"]): r["note"] for r in rows if not r["engine"].startswith("ours")
    }
    assert "no kernels for int4" in other[("transformers-generate", "int4")]
    assert other[("transformers", "fp16")].startswith("does not fit: weights")
    assert "(below)" in se.table(rows)
