"""Fidelity against transformers: committed runs replayed with the engine profile, rows marked fitted or held out
as the profile says, the bar over held-out rows only; the seed experiment says which engine each row is."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import fidelity_transformers as ft  # noqa: E402
import seed_experiment as se  # noqa: E402

from core.engine_profile import load_engine_profile  # noqa: E402
from core.errors import ConfigError  # noqa: E402

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


def test_flags_take_other_runs_a_profile_path_and_another_profiles_marking(tmp_path):
    """--runs one session's folder, --profile / --generate-profile as .yaml paths, --held-out-as: the same
    simulation, rows marked as the other profile was fitted (here one fitted on no file of these runs)."""
    served = ROOT / "engine_profiles" / "transformers.yaml"
    gen = ROOT / "engine_profiles" / "transformers-generate.yaml"
    fitted_on = "- calibration_runs/transformers_h200/session5/transformers_llama-3.1-8b_h200.json\n"
    other = {}
    for p in (served, gen):
        text = p.read_text()
        assert fitted_on in text
        other[p] = tmp_path / p.name
        other[p].write_text(text.replace(fitted_on, "- calibration_runs/elsewhere.json\n"))
    out = tmp_path / "out"
    flags = ["--runs", str(ft.RUNS / "session5"), "--profile", str(served), "--generate-profile", str(gen)]
    assert ft.main("cmd", [*flags, "--out", str(out), "--seeds", "0"]) == 0
    rows = json.loads((out / "fidelity_transformers_h200.json").read_text())["rows"]
    assert {r["folder"] for r in rows} == {"session5"} and {r["profile"] for r in rows} == {
        str(served),
        str(gen),
    }
    fitted = {(r["model"], r["run"], r["row"]) for r in rows if r["fitted"]}
    assert ("llama-3.1-8b", "conv_moderate", "70 requests") in fitted
    assert ("llama-3.1-8b", "generate b1", "prompt 128") in fitted
    assert not any(m == "qwen2.5-7b" for m, _, _ in fitted)
    # marked as a profile fitted elsewhere: every row held out, the simulated side unchanged
    marked = ft.collect(
        src=ft.Sources(ft.RUNS / "session5", str(served), str(gen), (str(other[served]), str(other[gen])))
    )
    assert not any(r.fitted for r in marked)
    assert [r.simulated for r in marked] == [r["simulated"] for r in rows]
    assert "marked fitted or held out as" in ft.table(marked, "cmd", src=ft.Sources(held_out_as=("a", "b")))
    with pytest.raises(ConfigError, match="not a folder"):
        ft.main("cmd", ["--runs", str(tmp_path / "none"), "--out", str(out)])
