"""benchmarks/calibration_eta.py: the committed table is what replaying the committed recordings gives today, each
replayed with the serving point its sweep ran (the recordings predate two additions to it)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_the_committed_table_is_current(tmp_path, monkeypatch):
    import calibration_eta

    committed = calibration_eta.OUT.read_text()
    monkeypatch.setattr(calibration_eta, "OUT", tmp_path / "eta.md")
    calibration_eta.main()
    assert (tmp_path / "eta.md").read_text() == committed


def test_the_serving_point_is_priced_as_the_recorded_sweep_ran_it():
    """Today's serving point (three pooled runs on a GPU and the MLA eager measure) costs more than the one the
    recordings ran; the replay takes the recorded one."""
    import calibration_eta

    from calibrate.plan import Point
    from calibrate.sweep import MLA_EAGER_S, BenchTiming, point_costs, prior_cost_model
    from core.hardware import load_profile
    from core.model_spec import load_model

    cm = prior_cost_model(load_model("llama-3.1-8b"), load_profile("h200"))
    serving = [Point("serving", {"quantity": "serving_step_s", "workload": "poisson-v1"})]
    today = point_costs(serving, cm, BenchTiming(20, 3, cpu=False))[0]
    recorded = point_costs(serving, cm, BenchTiming(20, 3, cpu=False, **calibration_eta.RECORDED))[0]
    assert today.prior_s > recorded.prior_s + MLA_EAGER_S["gpu"]  # the MLA measure and two more runs
