"""The int4 kernel-family curves fitted from a spec/int4 GPU run, and the cost model's fastest-curve rule."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from calibrate import int4_from_run as fr
from core.cost_model import CostModel
from core.hardware import read_profile
from core.model_spec import load_model

ROOT = Path(__file__).resolve().parents[2]
SHAPES = ((4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096))  # (k, n)
ROWS = (1, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


def _run() -> dict:
    """A synthetic run: a batch-1 kernel reading 4-bit weights at 1 TB/s, a tile kernel at 40 TFLOP/s + 20 µs,
    and dequantize-then-GEMM at 400 TFLOP/s + 50 µs; the tuner keeps the fastest per bucket."""
    tuning, chosen = {}, {}
    for k, n in SHAPES:
        for m in ROWS:
            t = {
                "tinygemm": 3e-6 + k * n * 0.5 / 1e12 + 2 * m * k * n / 5e12,
                "tile(16,128,4,3,2)": 20e-6 + 2 * m * k * n / 40e12,
                "dequant_mm": 50e-6 + 2 * m * k * n / 400e12,
                "gemv(128,8,4)": 1.0,  # never chosen: not a family the engine runs
            }
            key = f"{m}/{n}/{k}/128/0/True"
            tuning[key], chosen[key] = t, min(t, key=t.get)
    return {"int4_tuning": tuning, "int4_launch_configs": chosen, "refs": {"int4": "llama-3.1-8b"}}


def test_families_fit_and_fastest_curve_follows_the_kernel_switch():
    run = _run()
    fits, recs, pred, first = fr.fit_run(run, ROOT / "hardware_profiles/h200.yaml")
    assert first == "tinygemm" and set(fits) == {"tinygemm", "tile", "dequant_mm"}
    errs = fr.errors_of(recs, pred)
    assert errs["holdout"]["n"] == 3 * len(SHAPES)  # rows 8, 128, 1024
    assert errs["holdout"]["median_pct"] < 10.0, errs


def test_a_run_without_tuning_is_one_line(capsys, tmp_path):
    bad = tmp_path / "run.json"
    bad.write_text(json.dumps({"refs": {}}))
    assert (
        fr.main([str(bad), "--profile", str(ROOT / "hardware_profiles/h200.yaml"), "--date", "2026-12-02"])
        == 2
    )
    assert "int4_launch_configs" in capsys.readouterr().out


def test_write_keeps_every_other_line_and_the_cost_model_uses_the_curves(tmp_path):
    src = ROOT / "hardware_profiles/h100-sxm.yaml"  # a calibrated profile with fp8/int8 curves, no int4 yet
    prof = tmp_path / "p.yaml"
    shutil.copy(src, prof)
    assert "  gemm_by_dtype:\n" in prof.read_text() and "    int4:" not in prof.read_text()
    before = prof.read_text().splitlines()
    slow = {"compute": 0.01, "memory": 0.01, "launch_s": 1e-3}
    fast = {"compute": 0.9, "memory": 0.9, "launch_s": 1e-6}
    fr.write_profile(prof, slow, {"fast": fast}, {"date": "2026-12-02"})
    after = prof.read_text().splitlines()
    assert [ln for ln in after if ln in before] == before  # nothing removed or reordered
    model = load_model("llama-3.1-8b")
    p = read_profile(prof)
    t4 = CostModel(p, model, weight_dtype="int4", serving_host=False)._weight_gemm(1, 4096, 4096)
    only_slow = p.model_copy(
        update={
            "calibration": type(p.calibration).model_validate(
                {**p.calibration.model_dump(), "int4_kernel_curves": {}}
            )
        }
    )
    t_slow = CostModel(only_slow, model, weight_dtype="int4", serving_host=False)._weight_gemm(1, 4096, 4096)
    assert t_slow > 1e-3 > t4  # the fast family's curve wins where it is faster
    with pytest.raises(fr.ConfigError, match="already has int4"):
        fr.write_profile(prof, slow, {}, {})


def test_replace_writes_over_the_int4_curve_and_keeps_every_other_line(tmp_path):
    """--replace: a profile that already has an int4 curve (a sweep's own int4 points, or an earlier run) gets the
    new curve, families and source in place of the old ones, once each; every other line stays."""
    prof = tmp_path / "p.yaml"
    shutil.copy(ROOT / "hardware_profiles/h100-sxm.yaml", prof)
    before = prof.read_text().splitlines()
    old = {"compute": 0.01, "memory": 0.01, "launch_s": 1e-3}
    new = {"compute": 0.5, "memory": 0.6, "launch_s": 2e-6}
    fr.write_profile(prof, old, {"a": old}, {"date": "2026-12-02"})
    fr.write_profile(prof, new, {"b": new}, {"date": "2026-12-03"}, replace=True)
    text = prof.read_text()
    for key in ("\n    int4:", "\n  int4_kernel_curves:", "\n  int4_source:"):
        assert text.count(key) == 1, key
    cal = read_profile(prof).calibration
    assert cal.gemm_by_dtype["int4"]["compute"] == 0.5 and set(cal.int4_kernel_curves) == {"b"}
    assert cal.int4_source["date"] == "2026-12-03"
    after = text.splitlines()
    assert [ln for ln in after if ln in before] == before
