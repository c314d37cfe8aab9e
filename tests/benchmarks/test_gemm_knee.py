"""benchmarks/gemm_knee.py: a run's bf16 GEMM points fitted in the max and the blended form, errors by rows band."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_both_forms_are_fitted_and_the_blend_takes_the_ridge(tmp_path, run_benchmark):
    out = tmp_path / "knee.md"
    r = run_benchmark("gemm_knee.py", str(ROOT / "calibration_runs/h200"), "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [ln.split("|") for ln in out.read_text().splitlines() if "calibration_runs/h200 |" in ln]
    assert [c[2].strip() for c in rows] == ["max", "blended"]
    q = float(rows[1][3])
    assert 1.0 < q <= 20.0
    ridge = [float(c[7].strip().rstrip("%")) for c in rows]  # median signed error at 128-256 rows
    assert abs(ridge[1]) < abs(ridge[0])  # the knee: the max form prices it low, the blend does not


def test_a_folder_without_measurements_is_one_line(tmp_path, run_benchmark):
    r = run_benchmark("gemm_knee.py", str(tmp_path), "--out", tmp_path / "x.md")
    assert r.returncode == 2 and "no measurements" in r.stderr and "Traceback" not in r.stderr
