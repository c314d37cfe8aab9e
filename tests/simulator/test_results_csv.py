"""The per-request CSV is written a chunk of rows at a time, byte-equal to formatting it whole."""

from __future__ import annotations

import numpy as np

from simulator.results import _write_csv


def _whole(path, cols: dict) -> None:
    """The CSV as written before chunking: every row formatted at once, then NaN cells emptied."""
    fmts = ["%d" if np.issubdtype(np.asarray(c).dtype, np.integer) else "%.6f" for c in cols.values()]
    data = np.column_stack([np.asarray(c, dtype=float) for c in cols.values()])
    np.savetxt(path, data, delimiter=",", header=",".join(cols), comments="", fmt=fmts)
    path.write_text(path.read_text().replace(",nan", ",").replace("\nnan,", "\n,"))


def test_chunked_csv_equals_the_whole_one(tmp_path):
    rng = np.random.default_rng(3)
    n = 1001
    first = rng.uniform(0, 9, n)
    first[::7] = np.nan  # a NaN at the start of a row, also at a chunk's first row
    mid = rng.uniform(0, 1e4, n)
    mid[::3] = np.nan
    cols = {"a": first, "id": np.arange(n), "b": mid, "c": rng.integers(-5, 5, n)}
    _whole(tmp_path / "whole.csv", cols)
    for rows in (1, 7, 1000, 5000):
        _write_csv(tmp_path / f"c{rows}.csv", cols, chunk_rows=rows)
        assert (tmp_path / f"c{rows}.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()
    empty = {k: v[:0] for k, v in cols.items()}
    _whole(tmp_path / "e0.csv", empty)
    _write_csv(tmp_path / "e1.csv", empty)
    assert (tmp_path / "e0.csv").read_bytes() == (tmp_path / "e1.csv").read_bytes()
