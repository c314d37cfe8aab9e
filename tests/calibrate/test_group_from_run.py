"""calibrate.group_from_run: one group fitted from a newer run, every other line of the profile kept."""

from __future__ import annotations

import difflib
import json
import shutil
from pathlib import Path

import pytest

from calibrate import group_from_run
from core.errors import ConfigError
from core.hardware import read_profile, write_profile

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "calibration_runs" / "h200_session8"


def bare_h200(path: Path) -> Path:
    """The committed H200 profile without what group_from_run has added to it (the moe groups, the serving
    loop's taken host costs), laid out as core.hardware.write_profile writes a profile."""
    p = read_profile(ROOT / "hardware_profiles/h200.yaml")
    extra = dict(p.calibration.__pydantic_extra__ or {})
    for key in ("moe_source", "moe_large_source", "serving_source"):
        extra.pop(key, None)
    if isinstance(extra.get("fit_errors_pct"), dict):
        extra["fit_errors_pct"] = {
            k: v for k, v in extra["fit_errors_pct"].items() if k not in ("moe", "moe_large")
        }
    cal = p.calibration.model_copy()
    cal.__pydantic_extra__ = extra
    eff = p.efficiency.model_copy(update={"moe": None, "moe_large": None})
    p = p.model_copy(update={"efficiency": eff, "calibration": cal})
    write_profile(p, path)
    return path


def test_adds_the_group_and_keeps_every_other_line(tmp_path):
    prof = bare_h200(tmp_path / "h200.yaml")
    assert read_profile(prof).efficiency.moe is None
    before = prof.read_text().splitlines()
    argv = [str(RUN), "--group", "moe", "--profile", str(prof), "--date", "2026-12-02", "--write"]
    assert group_from_run.main(argv) == 0
    after = prof.read_text().splitlines()
    ops = {op for op, *_ in difflib.SequenceMatcher(None, before, after, autojunk=False).get_opcodes()}
    assert ops == {"equal", "insert"}  # lines only added, none removed or changed
    p = read_profile(prof)
    assert p.efficiency.moe is not None and 0 < p.efficiency.moe.compute <= 1
    assert (
        p.efficiency.moe.blend is not None and p.efficiency.moe.blend >= 1.0
    )  # the blended form (fit.BLENDED)
    assert p.calibration.fit_errors_pct["moe"]["holdout"]["n"] > 0
    # the engine code the group's points ran: this run's points predate the record
    assert p.calibration.moe_source["engine_code"] == ["not recorded"]
    # a second write is refused; --replace refits in place (same lines count, same values)
    with pytest.raises(ConfigError, match="--replace"):
        group_from_run.write_profile(prof, "moe", {}, {}, {}, replace=False)
    assert group_from_run.main(argv + ["--replace"]) == 0
    again = prof.read_text().splitlines()
    assert [ln for ln in again if "command:" not in ln] == [ln for ln in after if "command:" not in ln]
    # the moe points from moe_large_min_rows rows an expert can still fit their own curve, added the same way
    large = [str(RUN), "--group", "moe_large", "--profile", str(prof), "--date", "2026-12-02", "--write"]
    assert group_from_run.main(large) == 0
    p = read_profile(prof)
    assert p.efficiency.moe_large is not None and p.efficiency.moe_large != p.efficiency.moe
    assert p.calibration.fit_errors_pct["moe_large"]["train"]["n"] >= 3


def test_bad_inputs_are_one_line(tmp_path, capsys):
    prof = tmp_path / "h100.yaml"
    shutil.copy(ROOT / "hardware_profiles/h100-sxm.yaml", prof)
    cases = [
        ([str(RUN), "--group", "moe", "--profile", str(prof)], "measured on NVIDIA H200"),
        ([str(tmp_path), "--group", "moe", "--profile", str(prof)], "no measurements"),
        ([str(RUN), "--group", "nope", "--profile", str(prof)], "--group 'nope'"),
    ]
    for argv, msg in cases:
        assert group_from_run.main(argv + ["--date", "2026-12-02"]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and "\n" not in err


def test_serving_host_costs_are_taken_as_measured(tmp_path):
    from calibrate.measurements import Store
    from calibrate.serving import QUANTITIES

    prof = bare_h200(tmp_path / "h200.yaml")
    before = prof.read_text().splitlines()
    argv = [str(RUN), "--group", "serving", "--profile", str(prof), "--date", "2026-12-02", "--write"]
    assert group_from_run.main(argv) == 0
    measured = {
        r.params["quantity"]: r.seconds
        for r in Store.open(RUN / "measurements.jsonl").records.values()
        if r.kind == "serving"
    }
    eff = read_profile(prof).efficiency
    # the session-8 run predates the MLA eager quantity: the profile keeps its own (OPTIONAL)
    assert "eager_launch_mla_s_per_layer" not in measured
    kept = [q for q in QUANTITIES if q in measured]
    assert {q: getattr(eff, q) for q in kept} == {q: measured[q] for q in kept}
    after = prof.read_text().splitlines()
    changed = [a for a, b in zip(after, before, strict=False) if a != b]
    assert len(after) > len(before) and all(ln.split(":")[0].strip() in QUANTITIES for ln in changed[:4])
    assert group_from_run.main(argv) == 0  # a rerun replaces its own source block
    assert prof.read_text().splitlines() == after  # same values, one source block


def test_serving_quantity_a_profile_predates_gets_its_line(tmp_path):
    """A run with the MLA eager quantity written into a profile without that line: the line appears after the
    eager launch's, with the measured value, and the profile reads back."""
    run = tmp_path / "run"
    run.mkdir()
    text = (RUN / "measurements.jsonl").read_text()
    rec = {"key": 'serving:{"quantity":"eager_launch_mla_s_per_layer","workload":"poisson-v1"}', "kind": "serving",
           "params": {"quantity": "eager_launch_mla_s_per_layer", "workload": "poisson-v1"}, "seconds": 0.0031,
           "status": "ok", "holdout": False, "fingerprint": json.loads(text.splitlines()[0])["fingerprint"]}  # fmt: skip
    (run / "measurements.jsonl").write_text(text.rstrip("\n") + "\n" + json.dumps(rec) + "\n")
    prof = bare_h200(tmp_path / "h200.yaml")
    prof.write_text("".join(ln for ln in prof.read_text().splitlines(True) if "eager_launch_mla" not in ln))
    assert "eager_launch_mla_s_per_layer" not in prof.read_text()
    argv = [str(run), "--group", "serving", "--profile", str(prof), "--date", "2026-12-03", "--write"]
    assert group_from_run.main(argv) == 0
    lines = prof.read_text().splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith("  eager_launch_s_per_layer:"))
    assert lines[at + 1] == "  eager_launch_mla_s_per_layer: 0.0031"
    assert read_profile(prof).efficiency.eager_launch_mla_s_per_layer == 0.0031
