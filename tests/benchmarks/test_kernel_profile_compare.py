"""benchmarks/kernel_profile_compare.py: two kernel profiles of the same steps, before and after an engine change."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import kernel_profile_compare as kc  # noqa: E402

SESSION25 = Path(__file__).resolve().parents[2] / "benchmarks/results/engine_kernels_h200/session25"


def test_session_25s_before_and_after_read_as_its_readme_says():
    """The stored before/after of session 25's MLA change: the served eager step 96.94 -> 51.68 ms, its kernels
    52.76 -> 47.21 ms, and the concatenation kernel gone from it."""
    text = kc.report(kc.load(SESSION25 / "kp_before"), kc.load(SESSION25 / "kp_after"), ("b", "a"))
    row = next(line for line in text.splitlines() if line.startswith("| deepseek_eager_2x1600_45 |"))
    assert "96.94 → 51.68 (-46.7%) ms" in row and "52.76 → 47.21 (-10.5%) ms" in row
    moved = kc.moved_kernels(kc.load(SESSION25 / "kp_before")["deepseek_eager_2x1600_45"],
                             kc.load(SESSION25 / "kp_after")["deepseek_eager_2x1600_45"])  # fmt: skip
    assert (
        moved[0][0].startswith("void at::native::(anonymous namespace)::CatArrayBatchedCopy")
        and moved[0][2] is None
    )


def test_only_kernels_that_moved_enough_are_listed():
    def case(top, **kw):
        return {"top": [{"kernel": k, "us_per_step": us} for k, us in top], **kw}

    before = case(
        [("a", 100.0), ("b", 100.0), ("c", 1000.0), ("d", 3.0)], launches_per_step=40.0, served_step_s=0.01
    )
    after = case(
        [("a", 104.0), ("b", 90.0), ("c", 1010.0), ("e", 2.0)], launches_per_step=31.0, served_step_s=0.009
    )
    moved = {k: (x, y) for k, x, y in kc.moved_kernels(before, after)}
    # a: 4 µs (under 5); b: 10 µs and 10%; c: 10 µs but 1%; d gone, e new
    assert moved == {"b": (100.0, 90.0), "d": (3.0, None), "e": (None, 2.0)}
    text = kc.report({"x": before, "only_before": before}, {"x": after}, ("b", "a"))
    assert "40.00 → 31.00 (-22.5%)" in text and "10.00 → 9.00 (-10.0%) ms" in text
    assert "In one run only: only_before." in text


def test_a_missing_profile_is_one_line_naming_it(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "kernel_profile.json").write_text(json.dumps({"cases": {}}))
    assert kc.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(tmp_path / "b") in err and "kernel_profile.json" in err
