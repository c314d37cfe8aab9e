"""benchmarks/fidelity_replicates.py: runs of one row grouped by experiment, the engine's spread between them."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import fidelity_replicates as fr  # noqa: E402


def test_the_committed_table_is_rebuilt_from_the_stored_runs():
    text = fr.report(fr.groups(fr.RESULTS, "h200"), "h200", fr.RESULTS)
    assert text == (fr.RESULTS / "fidelity_replicates_h200.md").read_text()


def _run(root, folder: str, row: str, ttft90: float, rate: float = 10.0, sim: float = 0.05) -> None:
    d = root / folder / "fidelity" / "h200" / row
    d.mkdir(parents=True)
    engine = {
        "ttft_p50": 0.02,
        "ttft_p90": ttft90,
        "tpot_p50": 0.01,
        "tpot_p90": 0.012,
        "output_tokens_per_s": 2000.0,
    }
    steps = [{"kind": "decode (CUDA graph)", "steps": 100, "loop_ms": 5.0 + ttft90, "gpu_ms": 4.5, "launch_ms": 0.2,
              "model_ms": 4.9}, {"kind": "mixed (eager)", "steps": 3, "loop_ms": 50.0, "gpu_ms": 49.0,
              "launch_ms": 30.0, "model_ms": 52.0}]  # fmt: skip
    rec = {"row": row, "rate_per_s": rate, "requests": 200, "duration_s": 20.0, "engine": engine,
           "simulator": dict(engine, ttft_p90=sim), "engine_steps": steps}  # fmt: skip
    (d / "row.json").write_text(json.dumps(rec))


def test_replicates_of_a_row_and_their_spread(tmp_path):
    _run(tmp_path, "a", "r1", 0.040)
    _run(tmp_path, "b", "r1", 0.050)  # the same experiment on another run: 25% apart at TTFT p90
    _run(tmp_path, "c", "r1", 0.090, rate=12.0)  # another rate: another experiment
    _run(tmp_path, "a", "r2", 0.030)  # run once: not a replicate
    grouped = fr.groups(tmp_path, "h200")
    assert sorted(len(v) for v in grouped.values()) == [1, 1, 2]
    text = fr.report(grouped, "h200", tmp_path)
    line = next(ln for ln in text.splitlines() if ln.startswith("| r1"))
    assert "40.0 / 50.0 (25.0%)" in line and line.endswith("| yes |") and "| 2 |" in line
    assert "| **median spread** | | 0.0% | 25.0% |" in text and "r2" not in text
    # the steps each run took: the decode steps compared (host 0.54 / 0.55 ms), the 3 eager steps too few
    assert (
        "| r1 | decode (CUDA graph) | 5.04 / 5.05 | 4.50 / 4.50 | 0.54 / 0.55 | 0.20 / 0.20 | 4.90 |" in text
    )
    assert "mixed (eager)" not in text
    _run(tmp_path, "d", "r2", 0.030, sim=0.07)  # a second run whose simulator side differs: said so
    assert next(ln for ln in fr.report(fr.groups(tmp_path, "h200"), "h200", tmp_path).splitlines()
                if ln.startswith("| r2")).endswith("| no |")  # fmt: skip
    assert "No row has been run more than once" in fr.report(
        fr.groups(tmp_path, "h100-sxm"), "h100-sxm", tmp_path
    )
