"""`python -m calibrate --engine transformers`: one line and exit 2 without the package or a GPU; with both, the
GPU harness then the fit, on the detected GPU's folder (the stages are stubbed: no GPU in CI)."""

from __future__ import annotations

from pathlib import Path

import pytest

from calibrate import engine_calibration
from calibrate.__main__ import main
from calibrate.detect import GpuInfo


def test_without_transformers_it_says_so_in_one_line(monkeypatch, capsys):
    real = engine_calibration.importlib.util.find_spec
    monkeypatch.setattr(
        engine_calibration.importlib.util, "find_spec", lambda n: None if n == "transformers" else real(n)
    )
    assert main(["--engine", "transformers"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: transformers is not installed here")


def test_without_a_gpu_it_says_so_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(engine_calibration.importlib.util, "find_spec", lambda n: object())
    monkeypatch.setattr("calibrate.detect.detect", lambda: None)
    assert main(["--engine", "transformers"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no GPU found" in err


def test_an_engine_without_a_harness_is_one_line(capsys):
    assert main(["--engine", "vllm"]) == 2
    assert "no harness for it; calibrate one of transformers" in capsys.readouterr().err


@pytest.mark.parametrize("work_dir", [None, "elsewhere"])
def test_it_runs_the_harness_then_the_fit_for_the_detected_gpu(monkeypatch, tmp_path, work_dir):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(engine_calibration.importlib.util, "find_spec", lambda n: object())
    monkeypatch.setattr("calibrate.detect.detect", lambda: GpuInfo(name="NVIDIA H200"))
    calls = []
    monkeypatch.setattr("calibrate.transformers_runs.main", lambda argv: calls.append(("runs", argv)) or 0)
    monkeypatch.setattr("calibrate.engine_fit.main", lambda argv: calls.append(("fit", argv)) or 0)
    argv = ["--engine", "transformers", "--model", "qwen2.5-7b", "--budget-s", "300"]
    assert main(argv + (["--work-dir", work_dir] if work_dir else [])) == 0
    (_, runs), (_, fit) = calls
    out = Path(runs[runs.index("--out") + 1])
    assert runs[runs.index("--gpu-tag") + 1] == "h200" and runs[runs.index("--budget-s") + 1] == "300.0"
    assert runs[runs.index("--models") + 1] == "qwen2.5-7b"
    if work_dir is None:  # a dated session under the GPU's folder; the fit reads every session there
        assert out.parent == Path("calibration_runs/transformers_h200") and fit[0] == str(out.parent)
    else:
        assert out == Path(work_dir) and fit[0] == work_dir
    assert fit[1:] == ["--gpu", "h200", "--out", "engine_profiles", "--train", "qwen2.5-7b"]


def test_a_failed_harness_stops_before_the_fit(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(engine_calibration.importlib.util, "find_spec", lambda n: object())
    monkeypatch.setattr("calibrate.detect.detect", lambda: GpuInfo(name="NVIDIA H100 80GB HBM3"))
    monkeypatch.setattr("calibrate.transformers_runs.main", lambda argv: 130)
    monkeypatch.setattr("calibrate.engine_fit.main", lambda argv: pytest.fail("fit after a failed run"))
    assert main(["--engine", "transformers"]) == 130


def test_a_profile_of_another_gpu_is_not_replaced_unless_forced(monkeypatch, tmp_path, capsys):
    import shutil

    from core.engine_profile import ENGINE_DIR

    monkeypatch.chdir(tmp_path)
    (tmp_path / "engine_profiles").mkdir()
    shutil.copy(ENGINE_DIR / "transformers.yaml", tmp_path / "engine_profiles")  # measured on the H200
    monkeypatch.setattr(engine_calibration.importlib.util, "find_spec", lambda n: object())
    monkeypatch.setattr("calibrate.detect.detect", lambda: GpuInfo(name="NVIDIA H100 80GB HBM3"))
    monkeypatch.setattr("calibrate.transformers_runs.main", lambda argv: pytest.fail("GPU time spent"))
    assert main(["--engine", "transformers"]) == 2
    err = capsys.readouterr().err
    assert "is measured on h200 and this GPU is h100-sxm" in err and "--force" in err
    monkeypatch.setattr("calibrate.transformers_runs.main", lambda argv: 0)
    monkeypatch.setattr("calibrate.engine_fit.main", lambda argv: 0)
    assert main(["--engine", "transformers", "--force"]) == 0
    assert main(["--engine", "transformers", "--out-dir", "h100_profiles"]) == 0
