"""benchmarks/transformers_repeats.py: transformers' committed runs compared with each other (no device)."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_the_committed_repeats_are_paired_and_their_medians_are_the_rows(tmp_path):
    import transformers_repeats as tr

    out = tmp_path / "repeats.md"
    assert tr.main(["--out", str(out)]) == 0
    pairs = tr.replay_pairs(*(tr.load_runs(p) for p in tr.RUNS))
    assert {(p["model"], p["replay"]) for p in pairs} >= {("llama-3.1-8b", "conv_trace_rate"),
                                                          ("qwen2.5-7b", "code_moderate")}  # fmt: skip
    changes = [abs(tr.change_pct(p["first"]["tpot_p50_s"], p["second"]["tpot_p50_s"])) for p in pairs]
    median_row = next(ln for ln in out.read_text().splitlines() if ln.startswith("| **median"))
    cells = median_row.replace("\\|", "/").split("|")  # (the label's escaped bars)
    assert f"{statistics.median(changes):.1f}%" in cells[5]  # the TPOT p50 column
    assert "Batch-1 generate" in out.read_text()


def test_runs_without_shared_replays_are_one_line(tmp_path, capsys):
    import transformers_repeats as tr

    assert (
        tr.main(["--first", str(tmp_path), "--second", str(tmp_path), "--out", str(tmp_path / "x.md")]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --first") and "\n" not in err
