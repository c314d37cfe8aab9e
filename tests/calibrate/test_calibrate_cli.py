"""The command line on the CPU: bad inputs give one line and exit 2; a tiny end-to-end run works."""

import subprocess
import sys
from pathlib import Path

import pytest

from calibrate.__main__ import main
from calibrate.measurements import Store
from core.hardware import load_profile

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "calibrate", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def one_clear_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def _has_gpu() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(_has_gpu(), reason="checks the message a machine without a GPU gets")
def test_no_gpu_is_a_clear_message_and_exit_2(tmp_path):
    r = run_cli("--out-dir", str(tmp_path))
    assert r.returncode == 2
    assert "--device cpu" in one_clear_line(r.stderr)


def test_wrong_model_name(tmp_path, capsys):
    assert main(["--model", "llama-9000", "--device", "cpu", "--out-dir", str(tmp_path)]) == 2
    line = one_clear_line(capsys.readouterr().err)
    assert "llama-9000" in line and "catalogue" in line


def test_fresh_is_the_old_name_of_restart(tmp_path, capsys):
    """--fresh is still taken (it means --restart) and says it was renamed; --restart says nothing."""
    bad = ["--model", "llama-9000", "--device", "cpu", "--out-dir", str(tmp_path)]
    assert main([*bad, "--fresh"]) == 2
    err = capsys.readouterr().err
    assert "note: --fresh is now called --restart" in err and "unrecognized" not in err
    assert main([*bad, "--restart"]) == 2
    assert "note:" not in capsys.readouterr().err


def test_unwritable_out_dir(tmp_path, tiny_config, capsys):
    pytest.importorskip("torch")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(
        [
            "--device",
            "cpu",
            "--model",
            str(tiny_config),
            "--out-dir",
            str(blocker / "profiles"),
            "--work-dir",
            str(tmp_path / "run"),
        ]
    )
    assert code == 2
    assert "--out-dir" in one_clear_line(capsys.readouterr().err)


def test_validate_unknown_profile_and_fit_without_measurements(tmp_path, capsys):
    assert main(["validate", "no-such-gpu", "--device", "cpu"]) == 2
    assert "no-such-gpu" in one_clear_line(capsys.readouterr().err)
    assert main(["fit", str(tmp_path / "empty")]) == 2
    assert "does not exist" in one_clear_line(capsys.readouterr().err)


def test_cpu_quick_end_to_end_then_resume_and_validate(tmp_path, tiny_config, capsys, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("scipy")
    out, work = tmp_path / "profiles", tmp_path / "run"
    args = [
        "--device",
        "cpu",
        "--quick",
        "--model",
        str(tiny_config),
        "--name",
        "cpu-tiny",
        "--out-dir",
        str(out),
        "--work-dir",
        str(work),
    ]
    assert main(args) == 0
    prof = load_profile(str(out / "cpu-tiny.yaml"))
    assert prof.is_calibrated and prof.calibration.model_extra["fit_errors_pct"]["gemm"]["train"]["n"] > 5
    # stage 2 refined the GEMM curve on whole steps: the factor that curves fitted on kernels alone take
    # (calibrate.fit.in_step) is recorded, and is what group_from_run --in-step-factor derives from the run
    from calibrate.group_from_run import in_step_from_run

    f = prof.calibration.model_extra["in_step_compute_factor"]
    assert f > 0 and in_step_from_run(work, out / "cpu-tiny.yaml")[0] == pytest.approx(f, rel=1e-4)
    store = Store.open(work / "measurements.jsonl")
    n = len(store.records)
    assert n > 30 and not store.skipped_lines
    # the serving loop ran its synthetic workload: host time per step measured and written to the profile
    served = {r.params["quantity"]: r.seconds for r in store.records.values() if r.kind == "serving"}
    assert set(served) == {"serving_step_s", "serving_per_sequence_s", "serving_prompt_step_s",
                           "eager_launch_s_per_layer", "eager_launch_mla_s_per_layer"}  # fmt: skip
    # on a loaded CPU the fit may put all host time on the per-sequence term (step 0.0 was seen): the sum is > 0
    assert 0 <= prof.efficiency.serving_step_s == served["serving_step_s"] < 0.05
    assert served["serving_step_s"] + served["serving_per_sequence_s"] > 0

    # a corrupt line (a kill mid-write) is skipped with a warning and that point measured again
    lines = (work / "measurements.jsonl").read_text().splitlines()
    lines[5] = lines[5][:20]
    (work / "measurements.jsonl").write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "corrupt measurement line" in err and f"{n - 1} points already measured" in err
    assert len(Store.open(work / "measurements.jsonl").records) == n

    # --redo takes one kind again and keeps the rest; an unknown kind is one clear line
    assert main([*args, "--redo", "elementwise"]) == 0
    err = "".join(capsys.readouterr())
    redone = sum(r.kind == "elementwise" for r in store.records.values())
    assert (
        f"{redone} stored measurements of elementwise" in err
        and f"{n - redone} points already measured" in err
    )
    assert main([*args, "--redo", "elementwize"]) == 2
    assert "elementwize" in one_clear_line(capsys.readouterr().err)

    monkeypatch.setenv("INFERPLAN_PROFILES", str(out))
    md = tmp_path / "validate.md"
    assert (
        main(
            [
                "validate",
                "cpu-tiny",
                "--device",
                "cpu",
                "--model",
                str(tiny_config),
                "--work-dir",
                str(work),
                "--out",
                str(md),
            ]
        )
        == 0
    )
    text = md.read_text()
    assert "median abs. error" in text and "| decode |" in text
    # --stored re-predicts the stored steps with no device: the same table for the same profile
    again = tmp_path / "again.md"
    assert main(["validate", "cpu-tiny", "--stored", "--model", str(tiny_config), "--work-dir", str(work),
                 "--out", str(again)]) == 0  # fmt: skip
    assert again.read_text().split("\n\n")[2:] == text.split("\n\n")[2:]
    capsys.readouterr()
    assert main(["validate", "cpu-tiny", "--stored", "--work-dir", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in one_clear_line(capsys.readouterr().err)

    # a refit without a device finds the run's model by itself and may write over its own device's profile
    assert all(
        r.fingerprint == store.fingerprint for r in Store.open(work / "measurements.jsonl").records.values()
    )
    assert main(["fit", str(work), "--name", "cpu-tiny", "--out-dir", str(out)]) == 0
    assert load_profile(str(out / "cpu-tiny.yaml")).calibration.gpu == "cpu"

    # --step-overhead holds a measured step term through the fit, --exclude leaves a kind out: both recorded;
    # a bad value or an unknown kind is one clear line
    fit = ["fit", str(work), "--name", "cpu-tiny", "--out-dir", str(out)]
    assert main([*fit, "--step-overhead", "3e-4", "--exclude", "step_mixed"]) == 0
    held = load_profile(str(out / "cpu-tiny.yaml"))
    assert (held.efficiency.step_overhead_s, held.efficiency.per_sequence_s) == (3e-4, 0.0)
    cal = held.calibration.model_extra
    assert cal["excluded_kinds"] == ["step_mixed"] and "--step-overhead 3e-4" in held.calibration.command
    assert cal["held_overheads"] == {"step_overhead_s": 3e-4, "per_sequence_s": 0.0}
    capsys.readouterr()
    assert main([*fit, "--step-overhead", "-1e-4"]) == 2
    assert "--step-overhead" in one_clear_line(capsys.readouterr().err)
    assert main([*fit, "--exclude", "step_mixd"]) == 2
    assert "its kinds" in one_clear_line(capsys.readouterr().err)


@pytest.mark.parametrize("gpu,table", [("h100-sxm", "validate_h100.md"), ("h200", "validate_h200.md")])
def test_the_committed_validation_tables_are_current(gpu, table, tmp_path):
    """benchmarks/results/validate_*.md are what `validate --stored` writes today from the stored steps, but for the
    date it ran (validate_h100.md went stale once: its prefill p90 read 7.9% where the cost model now gives 10.5%)."""
    import re

    committed = (ROOT / "benchmarks" / "results" / table).read_text()
    out = tmp_path / table
    assert main(["validate", gpu, "--stored", "--out", str(out)]) == 0
    undated = lambda text: re.sub(r"\d{4}-\d{2}-\d{2}", "DATE", text, count=1)  # noqa: E731
    body = out.read_text().replace(str(out), f"benchmarks/results/{table}")
    assert undated(body) == undated(committed)
