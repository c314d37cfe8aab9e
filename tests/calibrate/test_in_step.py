"""Curves fitted on kernels timed alone take the profile's in-step compute factor (calibrate.fit.in_step):
group_from_run and int4_from_run write them so, --in-step-factor derives the factor from the profile's own run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from calibrate import group_from_run, int4_from_run
from calibrate.fit import in_step, in_step_factor
from core.errors import ConfigError
from core.hardware import OpEfficiency, read_profile

ROOT = Path(__file__).resolve().parents[2]
H200 = ROOT / "hardware_profiles" / "h200.yaml"


def without_factor(src: Path, dst: Path) -> Path:
    """A copy of the profile without calibration.in_step_compute_factor (and its source)."""
    lines = src.read_text().splitlines(keepends=True)
    out, skip = [], False
    for ln in lines:
        if ln.startswith("  in_step_compute_factor:") or ln == "  in_step_source:\n":
            skip = ln == "  in_step_source:\n"
            continue
        if skip and ln.startswith("    "):
            continue
        skip = False
        out.append(ln)
    dst.write_text("".join(out))
    assert in_step_factor(read_profile(dst)) is None
    return dst


def test_in_step_scales_the_compute_side_only():
    e = OpEfficiency(compute=0.8, memory=0.9, compute_ramp_s=1e-5, launch_s=2e-6)
    s = in_step(e, 0.9)
    assert s.compute == pytest.approx(0.72)
    assert (s.memory, s.compute_ramp_s, s.launch_s) == (e.memory, e.compute_ramp_s, e.launch_s)
    assert in_step(e, 1.5).compute == 1.0  # an efficiency stays a share of the peak


def own_run() -> Path:
    """The work dir the committed h200 profile was fitted on (its calibration.measurements.file)."""
    return ROOT / Path(read_profile(H200).calibration.measurements["file"]).parent


def test_the_h200_profile_carries_its_factor_from_its_own_run():
    f = in_step_factor(read_profile(H200))
    assert f is not None and 0.8 < f < 1.0
    factor, fit, _ = group_from_run.in_step_from_run(own_run(), H200)
    assert factor == pytest.approx(f, rel=1e-4)
    assert fit.eff.compute * factor == pytest.approx(read_profile(H200).efficiency.gemm.compute)


def _fit_both(tmp_path, run: Path, group: str) -> tuple[Path, Path]:
    """`group` fitted from `run` into a copy of the H200 profile without its in-step factor and one with it."""
    plain = without_factor(H200, tmp_path / "plain.yaml")
    factored = tmp_path / "factored.yaml"
    shutil.copy(H200, factored)
    for p in (plain, factored):
        argv = [
            str(run),
            "--group",
            group,
            "--profile",
            str(p),
            "--date",
            "2026-12-03",
            "--replace",
            "--write",
        ]
        assert group_from_run.main(argv) == 0
    return plain, factored


def test_group_from_run_applies_the_factor_where_the_profile_has_one(tmp_path):
    group = "attention_mla_prefill"
    plain, factored = _fit_both(tmp_path, ROOT / "calibration_runs" / "h200_session11", group)
    a, b = getattr(read_profile(plain).efficiency, group), getattr(read_profile(factored).efficiency, group)
    f = in_step_factor(read_profile(factored))
    assert b.compute == pytest.approx(a.compute * f) and b.memory == a.memory
    src = yaml.safe_load(factored.read_text())["calibration"][f"{group}_source"]
    assert src["in_step_compute_factor"] == pytest.approx(f) and src["fitted_compute"] == pytest.approx(
        a.compute
    )
    assert "in_step_compute_factor" not in yaml.safe_load(plain.read_text())["calibration"][f"{group}_source"]


def test_moe_points_ran_under_sustained_load_and_keep_their_fit(tmp_path):
    """A `moe` point replays MOE_CALLS layers a launch, at a step's clocks already (calibrate.fit.SUSTAINED): its
    curve is written as fitted, with a note saying why, whatever the profile's factor."""
    plain, factored = _fit_both(tmp_path, ROOT / "calibration_runs" / "h200_session20_moe", "moe")
    assert read_profile(plain).efficiency.moe == read_profile(factored).efficiency.moe
    src = yaml.safe_load(factored.read_text())["calibration"]["moe_source"]
    assert "in_step_compute_factor" not in src and "SUSTAINED" in src["in_step"]


def test_memory_only_groups_are_left_as_fitted(tmp_path):
    run = ROOT / "calibration_runs" / "h200_session15_units"
    plain = without_factor(H200, tmp_path / "plain.yaml")
    fit_plain, _ = group_from_run.fit_run(run, "attention_decode", plain)
    fit, _ = group_from_run.fit_run(run, "attention_decode", H200)
    assert fit.alone is None and fit.eff == fit_plain.eff


def test_in_step_factor_needs_the_profiles_own_run(tmp_path, capsys):
    p = tmp_path / "h200.yaml"
    shutil.copy(H200, p)
    other = ROOT / "calibration_runs" / "h200"  # not the profile's own run (h200_session16_serving)
    assert (
        group_from_run.main([str(other), "--in-step-factor", "--profile", str(p), "--date", "2026-12-03"])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not the run" in err
    with pytest.raises(SystemExit):  # a group and the factor at once: argparse's usage error
        group_from_run.main(
            [str(other), "--group", "moe", "--in-step-factor", "--profile", str(p), "--date", "x"]
        )


def test_in_step_factor_is_written_once(tmp_path):
    p = without_factor(H200, tmp_path / "h200.yaml")
    argv = [
        str(own_run()),
        "--in-step-factor",
        "--profile",
        str(p),
        "--date",
        "2026-11-23",
    ]
    assert group_from_run.main(argv + ["--write"]) == 0
    assert group_from_run.main(argv + ["--write"]) == 0  # again: replaced, not added
    text = p.read_text()
    assert text.count("\n  in_step_compute_factor:") == 1 and text.count("\n  in_step_source:") == 1
    assert in_step_factor(read_profile(p)) == pytest.approx(in_step_factor(read_profile(H200)), rel=1e-4)
    with pytest.raises(ConfigError, match="calibration"):
        bare = tmp_path / "bare.yaml"
        bare.write_text("name: x\n")
        group_from_run.write_in_step(bare, 0.9, {})


def test_int4_curves_take_the_factor(tmp_path):
    from tests.calibrate.test_int4_from_run import _run

    run = _run()
    plain = without_factor(H200, tmp_path / "plain.yaml")
    fits_plain, *_ = int4_from_run.fit_run(run, plain)
    fits, *_ = int4_from_run.fit_run(run, H200)
    f = in_step_factor(read_profile(H200))
    for fam, g in fits.items():
        assert g.eff.compute == pytest.approx(fits_plain[fam].eff.compute * f)
        assert g.alone.eff == fits_plain[fam].eff


def test_fit_all_gives_the_groups_its_steps_cannot_refine_the_factor():
    """A Llama sweep's MoE and MLA points are fitted alone (stage 2 has no such layers to refine them on); the
    fit writes the MLA curves with the in-step factor the bf16 GEMM curve learnt, and the MoE curve, whose points
    ran under sustained load, as fitted, as group_from_run would."""
    from calibrate.fit import fit_all
    from calibrate.measurements import Store, step_graphs
    from core.model_spec import load_model

    store = Store.open(ROOT / "calibration_runs" / "h200_session16_serving" / "measurements.jsonl")
    records = list(store.records.values())
    base, spec, graphs = read_profile(H200), load_model("llama-3.1-8b"), step_graphs(store.meta)
    alone = fit_all(base, spec, records, refine=False, graphs=graphs)
    assert alone.in_step_compute is None
    refined = fit_all(base, spec, records, graphs=graphs)
    kc = refined.in_step_compute
    assert kc is not None and 0.5 < kc < 1.0
    for g in ("attention_mla_decode", "attention_mla_prefill"):
        a, r = getattr(alone.efficiency, g), getattr(refined.efficiency, g)
        assert r.compute == pytest.approx(a.compute * kc) and r.memory == a.memory
    assert refined.efficiency.moe == alone.efficiency.moe  # its points ran under sustained load (SUSTAINED)
