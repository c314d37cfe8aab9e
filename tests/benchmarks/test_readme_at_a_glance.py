"""The README's "How well forecasts hold, at a glance" figures are the ones their tables hold now.

Each row of our engine's and transformers' end-to-end checks names its table; its five figures (TTFT p50 / p90,
TPOT p50 / p90, throughput) must equal that table's median row, or for the async table's two rows, the median over
its rows with async scheduling on and off (computed from the rows, as the table's single median row pools both).
The transformers row once read 10.5 / 13.2 / 15.7 / 9.6% two table regenerations after its table had moved.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
KEYS = ("ttft_p50", "ttft_p90", "tpot_p50", "tpot_p90", "output_tokens_per_s")
# README row's start -> (table, the median row's label in it) or (async folder, async on?)
ROWS = {
    "| our engine, H100 (": ("fidelity_h100-sxm.md", "**median \\|error\\|**"),
    "| our engine, H200 (": ("fidelity_h200.md", "**median \\|error\\|**"),
    "| our engine, H200, speculation (α 0.8) and int4 rows no fit saw (session 22": (
        "fidelity_spec_int4_h200.md",
        "**median \\|error\\|, rows not fitted**",
    ),
    "| our engine, H200, speculation (α 0.8) and int4 rows no fit saw, session 23": (
        "spec_int4/session23/fidelity_spec_int4_h200.md",
        "**median \\|error\\|, rows not fitted**",
    ),
    "| Hugging Face transformers, H200": (
        "fidelity_transformers_h200.md",
        "**median \\|error\\|, held-out (7 runs)**",
    ),
    "| our engine, H200, async scheduling on": ("fidelity_async", True),
    "| our engine, H200, the same rows waiting": ("fidelity_async", False),
}


def readme_figures(start: str) -> list[float]:
    """The five percentages of the at-a-glance row starting `start`."""
    text = (ROOT / "README.md").read_text()
    glance = text.split("**How well forecasts hold, at a glance**", 1)[1].split("\n\n", 2)[1]
    line = next(ln for ln in glance.splitlines() if ln.startswith(start))
    cells = line.split(" | ")[2:5]  # TTFT p50 / p90, TPOT p50 / p90, throughput
    return [float(x) for c in cells for x in re.findall(r"([\d.]+)%?", c)]


def table_figures(table: str, label: str) -> list[float]:
    for line in (RESULTS / table).read_text().splitlines():
        if line.startswith(f"| {label} |"):
            return [float(c.strip().rstrip("%")) for c in line.split("|")[2:] if c.strip().endswith("%")]
    raise AssertionError(f"{table} has no row {label!r}")


def async_figures(overlap: bool) -> list[float]:
    rows = [
        json.loads(p.read_text())
        for p in (RESULTS / "fidelity_async" / "fidelity" / "h200").glob("*/row.json")
    ]
    rows = [r for r in rows if bool(r.get("async_scheduling")) == overlap]
    return [
        round(100 * statistics.median(abs(r["simulator"][k] / r["engine"][k] - 1) for r in rows), 1)
        for k in KEYS
    ]


@pytest.mark.parametrize("start", list(ROWS))
def test_at_a_glance_row_is_its_tables(start):
    table, which = ROWS[start]
    expected = async_figures(which) if table == "fidelity_async" else table_figures(table, which)
    assert readme_figures(start) == expected


# rows of the README's own section tables that quote a committed table's medians: README row start -> (table, label)
SECTION_ROWS = {
    "| 7 served runs (Llama code ×3, Qwen ×3, Gemma-3-12B ×1), seed 0 |": (
        "fidelity_transformers_h200.md",
        "**median \\|error\\|, held-out (7 runs)**",
    ),
    "| the same, median over seeds 0-4 |": ("fidelity_transformers_h200.md", "**median over seeds**"),
}


@pytest.mark.parametrize("start", list(SECTION_ROWS))
def test_section_rows_are_their_tables(start):
    """The transformers section's two median rows still read 10.5 / 13.2 / 15.7 / 9.6 / 5.3% and 9.9 / 13.2 / 16.9 /
    13.4 / 6.0% sessions after their table had moved (and after the at-a-glance row had been corrected)."""
    line = next(ln for ln in (ROOT / "README.md").read_text().splitlines() if ln.startswith(start))
    figures = [float(c.strip().rstrip("%")) for c in line.split("|")[2:] if c.strip().endswith("%")]
    assert figures == table_figures(*SECTION_ROWS[start])
