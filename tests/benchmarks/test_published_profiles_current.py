"""benchmarks/published_profiles_current.py: every engine profile fitted by `calibrate from-benchmark` forecasts its
own runs as its table recorded (a simulator, cost-model or GPU-profile change that moves them fails this until the
profile is fitted again with the command in its header), and a profile whose terms no longer give its table is
named stale."""

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_every_fitted_profile_forecasts_its_table(tmp_path):
    import published_profiles_current as ppc

    out = tmp_path / "t.md"
    assert ppc.main(["--out", str(out)]) == 0
    text = out.read_text()
    assert "Every fitted profile's forecasts are today's." in text
    assert text == (ROOT / "benchmarks" / "results" / "published_profiles_current.md").read_text()
    assert text.count("\n| ") == 8  # the header and seven fitted profiles


def test_a_profile_whose_terms_moved_is_named_stale(tmp_path):
    import published_profiles_current as ppc

    src = ROOT / "engine_profiles" / "tensorrt-llm-h100-sxm.yaml"
    head, body = src.read_text().split("\n", 1)
    data = yaml.safe_load(body)
    data["kernels"]["gemm"] *= 1.1
    (tmp_path / src.name).write_text(head + "\n" + yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "t.md"
    assert ppc.main(["--profiles", str(tmp_path), "--out", str(out)]) == 0
    assert "Stale (a forecast moved): tensorrt-llm-h100-sxm." in out.read_text()
    assert ppc.main(["--profiles", str(tmp_path / "none"), "--out", str(out)]) == 2
