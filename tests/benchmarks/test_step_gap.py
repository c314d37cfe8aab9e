"""benchmarks/step_gap.py: the step's GPU time outside its kernels, from a kernel_profile run, into a profile."""

from __future__ import annotations

import difflib
import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
RUN = ROOT / "benchmarks/results/engine_kernels_h200/kernel_profile_2026-12-03c.json"


def test_dense_decode_cases_set_the_line():
    import step_gap

    from core.hardware import read_profile

    rows = step_gap.case_rows(json.loads(RUN.read_text()), read_profile(ROOT / "hardware_profiles/h200.yaml"))
    used = [r for r in rows if r["used"]]
    assert used and all(
        r["kind"] == "decode" and not r["model"].startswith(("mixtral", "deepseek")) for r in used
    )
    assert any(not r["used"] for r in rows)  # MoE / MLA and prompt steps shown, not fitted
    for r in rows:
        assert r["gap_ms"] == pytest.approx(r["served_ms"] - r["kernels_ms"])
    step_s, seq_s = step_gap.fit_gap(rows)
    gaps = [r["gap_ms"] / 1e3 for r in used]
    assert seq_s >= 0 and min(gaps) <= step_s + seq_s * max(r["seqs"] for r in used) <= max(gaps) + 1e-9
    if seq_s == 0:
        assert step_s == pytest.approx(sum(gaps) / len(gaps))


def test_write_changes_two_lines_and_adds_the_source(tmp_path, capsys):
    import step_gap
    import yaml

    prof = tmp_path / "h200.yaml"
    shutil.copy(ROOT / "hardware_profiles/h200.yaml", prof)
    before = prof.read_text().splitlines()
    argv = [
        str(RUN),
        "--profile",
        str(prof),
        "--date",
        "2026-12-03",
        "--write",
        "--out",
        str(tmp_path / "t.md"),
    ]
    assert step_gap.main(argv) == 0
    after = prof.read_text().splitlines()
    changed = [ln for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, before, after, autojunk=False).get_opcodes()
               if op == "replace" for ln in before[i1:i2]]  # fmt: skip
    assert sorted(ln.split(":")[0].strip() for ln in changed) == ["per_sequence_s", "step_overhead_s"]
    cal = yaml.safe_load(prof.read_text())["calibration"]
    assert cal["step_overhead_source"]["cases"] and "step_gap.py" in cal["step_overhead_source"]["command"]
    assert step_gap.main(argv) == 0  # again: the source replaced, not added
    assert prof.read_text().count("step_overhead_source:") == 1
    assert "| llama8b_decode_b256 | 256 | yes |" in (tmp_path / "t.md").read_text()


def test_bad_inputs_are_one_line(tmp_path, capsys):
    import step_gap

    prof = ROOT / "hardware_profiles/h200.yaml"
    assert step_gap.main([str(RUN), "--profile", str(prof), "--write", "--out", str(tmp_path / "t.md")]) == 2
    assert "--date" in capsys.readouterr().err
    other = json.loads(RUN.read_text()) | {"device": "NVIDIA H100 80GB HBM3"}
    (tmp_path / "run.json").write_text(json.dumps(other))
    assert (
        step_gap.main([str(tmp_path / "run.json"), "--profile", str(prof), "--out", str(tmp_path / "t.md")])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "measured on" in err
