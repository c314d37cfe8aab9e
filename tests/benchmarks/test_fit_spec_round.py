"""Writing efficiency.spec_round_s into a profile: one line and its source, every other line kept."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_write_keeps_other_lines_and_replaces_its_own(tmp_path):
    import fit_spec_round

    from core.hardware import read_profile

    prof = tmp_path / "p.yaml"
    shutil.copy(ROOT / "hardware_profiles/h100-sxm.yaml", prof)
    before = prof.read_text().splitlines()
    fit_spec_round.write_profile(prof, 1e-3, {"date": "2026-12-02", "fit_rows": ["a"]})
    fit_spec_round.write_profile(prof, 2e-3, {"date": "2026-12-02", "fit_rows": ["b"]})  # a rerun replaces
    after = prof.read_text().splitlines()
    assert [ln for ln in after if ln in before] == before
    assert len(after) == len(before) + 1 + 4  # the value; the source block: key, date, fit_rows, its one row
    p = read_profile(prof)
    assert p.efficiency.spec_round_s == 2e-3 and p.calibration.spec_round_source["fit_rows"] == ["b"]
