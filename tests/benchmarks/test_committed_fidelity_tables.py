"""The committed fidelity tables are what today's code makes of the stored rows: `--resimulate` into a copy of the
rows gives the same table, the same row records and the same per-step prices. A change to the simulator, the cost
model or a profile that moves them fails here until the tables are regenerated (`python benchmarks/fidelity.py
--profile P --resimulate [--out-dir ...]`, the command each table names); so does an engine change, since a table
names the rows that ran other engine code."""

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import fidelity  # noqa: E402

# (profile, results folder holding fidelity/<profile>/ and the table)
TABLES = [
    ("h200", "benchmarks/results"),
    ("h200", "benchmarks/results/fidelity_async"),
    ("h100-sxm", "benchmarks/results"),
]


def _without_command(text: str) -> str:
    """The table without its command line (the copy's --out-dir differs)."""
    return re.sub(r"`python benchmarks/fidelity\.py [^`]*`", "`COMMAND`", text)


@pytest.mark.parametrize("profile, folder", TABLES)
def test_resimulating_the_stored_rows_gives_the_committed_table(tmp_path, profile, folder):
    src = ROOT / folder
    rows = src / "fidelity" / profile
    shutil.copytree(rows, tmp_path / "fidelity" / profile)
    assert fidelity.main(["--profile", profile, "--resimulate", "--out-dir", str(tmp_path)]) == 0
    table = f"fidelity_{profile}.md"
    assert _without_command((tmp_path / table).read_text()) == _without_command((src / table).read_text())
    for row in sorted(rows.glob("*/row.json")):
        copy = tmp_path / "fidelity" / profile / row.parent.name
        assert json.loads((copy / "row.json").read_text()) == json.loads(row.read_text()), row.parent.name
        steps = row.parent / "engine_steps.csv"
        if steps.exists():  # the cost model's price of every step the engine ran (its model_s column)
            assert (copy / "engine_steps.csv").read_text() == steps.read_text(), row.parent.name
