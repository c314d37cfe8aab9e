"""benchmarks/moe_knee.py's CPU path: the toy MoE layer timed at each token count beside the profile's curve."""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_cpu_toy_shape(tmp_path, run_benchmark):
    r = run_benchmark("moe_knee.py", "--out", tmp_path, "--cpu", "--tokens", "4,64")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads((tmp_path / "moe_knee.json").read_text())["rows"]
    assert [row["tokens"] for row in rows] == [4, 64]
    for row in rows:
        assert row["measured_us"] > 0 and row["priced_us"] > 0
        assert abs(row["error_pct"] - (row["priced_us"] / row["measured_us"] - 1) * 100) < 1e-6
    assert rows[1]["rows_per_expert"] == 64 * 2 / 4


def test_reprice_keeps_the_measurements_and_prices_them_again(tmp_path, run_benchmark):
    """--reprice: the stored H200 points priced again with a profile's curves (measurements kept, each error the
    price over the measurement); pricing the result again changes nothing; a profile without MoE curves is refused
    in one line."""
    stored = ROOT / "benchmarks" / "results" / "engine_kernels_h200" / "moe_knee_session14.json"
    before = json.loads(stored.read_text())["rows"]

    def run(src, profile, out):
        return run_benchmark("moe_knee.py", "--reprice", src, "--profile", profile, "--out", out)

    r = run(stored, "h200", tmp_path / "a")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "median |error|" in r.stdout + r.stderr
    rows = json.loads((tmp_path / "a" / "moe_knee.json").read_text())["rows"]
    assert [x["measured_us"] for x in rows] == [x["measured_us"] for x in before]
    for x in rows:
        assert (
            x["priced_us"] > 0 and abs(x["error_pct"] - (x["priced_us"] / x["measured_us"] - 1) * 100) < 1e-9
        )
    assert run(tmp_path / "a" / "moe_knee.json", "h200", tmp_path / "b").returncode == 0
    again = json.loads((tmp_path / "b" / "moe_knee.json").read_text())["rows"]
    assert [x["priced_us"] for x in again] == [x["priced_us"] for x in rows]
    r = run(stored, "h100-sxm", tmp_path / "c")
    assert r.returncode == 2 and "no fitted MoE curves" in r.stdout and "Traceback" not in r.stderr
