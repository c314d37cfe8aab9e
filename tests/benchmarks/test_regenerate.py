"""benchmarks/regenerate.py: its steps run commands of this repository, cover the tables the "is current" tests check,
and a bad --from or a --resume with nothing to resume is one line."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import regenerate as rg  # noqa: E402

# the committed files that tests require to be what today's code writes from the stored runs
CHECKED = [
    "validate_h200.md", "validate_h100.md", "fidelity_h200.md", "fidelity_async/fidelity_h200.md",
    "fidelity_h100-sxm.md", "fidelity_transformers_h200.md", "transformers_residuals.md", "transformers_repeats.md",
    "fidelity_replicates_h200.md", "decode_residuals_h200.md", "decode_residuals_h200_shapes.md",
    "decode_balance_h200.md", "moe_bars_h200.md", "spec_rounds_h200.md", "gpu_transfer.md", "calibration_eta.md",
    "gemm_shape_holdout.md", "published_profiles_current.md", "fidelity_spec_int4_h200.md",
    "spec_int4/session23/fidelity_spec_int4_h200.md",
]  # fmt: skip


def test_every_step_runs_a_script_or_module_of_this_checkout():
    assert len(set(rg.NAMES)) == len(rg.NAMES)
    for step in rg.STEPS:
        if step.argv == ("refit-stale",):
            continue
        assert step.argv[0] == rg.PY
        target = step.argv[1:3] if step.argv[1] == "-m" else step.argv[1:2]
        if target[0] == "-m":
            assert (ROOT / target[1].replace(".", "/")).with_suffix(".py").exists() or (
                ROOT / target[1] / "__main__.py"
            ).exists(), step.name
        else:
            assert (ROOT / target[0]).exists(), step.name
        for arg in step.argv[2:]:  # every stored input it names is committed
            if arg.endswith(".json") or arg.startswith("calibration_runs/"):
                assert (ROOT / arg).exists(), (step.name, arg)


def test_the_steps_write_every_table_the_currency_tests_check():
    written = " ".join(s.writes for s in rg.STEPS)
    for table in CHECKED:
        assert f"benchmarks/results/{table}" in written.replace("{md,csv,json}", "md"), table


def test_the_engine_profiles_are_refitted_before_the_tables_that_forecast_through_them():
    order = rg.NAMES
    for late in ("published_low_load", "gpu_published", "fidelity_transformers", "published_current"):
        assert order.index("transformers_profile") < order.index(late)
        assert order.index("published_profiles") < order.index(late)
    assert order[-1] == "published_current"


def test_list_prints_each_step(capsys):
    assert rg.main(["--list"]) == 0
    out = capsys.readouterr().out
    for step in rg.STEPS:
        assert f". {step.name}: {shlex.join(step.argv)}" in out


def test_a_bad_from_and_a_resume_without_a_run_are_one_line(capsys, tmp_path, monkeypatch):
    assert rg.main(["--from", "nonsense"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: --from nonsense") and "validate_h200" in err
    monkeypatch.setattr(rg, "STATE", tmp_path / "build" / "regenerate.json")
    monkeypatch.setattr(rg, "ROOT", tmp_path)
    assert rg.main(["--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no unfinished run" in err


def test_resume_starts_at_the_step_that_did_not_finish(tmp_path, monkeypatch):
    ran, failed = [], []

    def run_step(step, log):  # spec_rounds fails the first time
        ran.append(step.name)
        if step.name == "spec_rounds" and not failed:
            failed.append(step.name)
            return 1, "boom"
        return 0, ""

    monkeypatch.setattr(rg, "STATE", tmp_path / "regenerate.json")
    monkeypatch.setattr(rg, "run_step", run_step)
    monkeypatch.setattr(rg.subprocess, "run", lambda *a, **k: type("R", (), {"stdout": ""})())
    assert rg.main([]) == 1
    assert ran[-1] == "spec_rounds" and (tmp_path / "regenerate.json").exists()
    ran.clear()
    assert rg.main(["--resume"]) == 0
    assert ran[0] == "spec_rounds" and ran[-1] == rg.NAMES[-1] and not (tmp_path / "regenerate.json").exists()
