"""benchmarks/transformers_residuals.py: the committed analysis is rebuilt from the committed raw runs, its step
bookkeeping on a synthetic replay, and its refit of the profile's form gives the committed profile's terms."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import transformers_residuals as tr  # noqa: E402

from core.engine_profile import load_engine_profile  # noqa: E402


def _rec(start, n_decode, prefill, fwd=0.07):
    return {"start_s": start, "forward_start_s": start + 0.001, "forward_end_s": start + 0.001 + fwd,
            "end_s": start + 0.002 + fwd, "n_decode": n_decode, "decode_context_tokens": 100 * n_decode,
            "prefill": prefill, "prefill_tokens": sum(c[1] for c in prefill), "q_tokens": 0, "kv_read_tokens": 0,
            "waiting": 0, "active": n_decode + len(prefill), "free_blocks": 9}  # fmt: skip


def test_recorded_steps_count_who_comes_goes_and_idle_waits():
    steps = [
        _rec(0.0, 0, [["a", 300, 0]]),  # a admitted
        _rec(0.073, 1, [["b", 200, 0], ["c", 256, 0]]),  # b, c admitted (c's prompt split)
        _rec(0.146, 2, [["c", 100, 256]]),  # c's second chunk; b finishes after this step
        _rec(0.219, 2, []),  # a and c decode; both finish
        _rec(5.0, 0, [["d", 10, 0]]),  # after an idle wait
    ]
    out = tr.recorded_steps(Path("x"), "m run", {"steps": steps})
    assert [s.admitted for s in out] == [1, 2, 0, 0, 1]
    assert [s.finished for s in out[:4]] == [0, 0, 1, 2]
    assert [s.after_idle for s in out] == [False, False, False, False, True]
    assert [s.steps_since_idle for s in out] == [1, 2, 3, 4, 1]
    assert out[0].pre_s == pytest.approx(0.001) and out[0].forward_s == pytest.approx(0.07)


def test_levels_cut_where_the_runs_histograms_put_them():
    assert [tr.level_of(ms) for ms in (28.0, 44.9, 45.0, 70.0, 84.9, 85.0, 104.0)] == [0, 0, 1, 1, 1, 2, 2]


def test_the_profile_form_refitted_gives_the_committed_profiles_terms():
    p = load_engine_profile("transformers")
    rows, split, fit = tr.profile_form(p)
    assert len(split.train) == 1590  # the profile's validation: 1590 fitted rows
    h = p.host
    assert fit.host_s[0] == pytest.approx(h.per_step_s.value, rel=1e-3)
    assert fit.host_s[1] == pytest.approx(h.per_sequence_s.value, rel=1e-3)
    assert fit.factors[1] == pytest.approx(p.kernels.attention_prefill, abs=1e-3)


def test_the_committed_analysis_is_rebuilt_from_the_raw_runs():
    assert tr.report() == tr.OUT.read_text()
