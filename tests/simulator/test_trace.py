"""Trace reading: the chunked reader against a plain row-by-row read, and line numbers across chunks."""

import csv
import json

import numpy as np
import pytest

from core.errors import ConfigError
from simulator import trace as trace_mod
from simulator.trace import read_trace


def _plain(path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[list[int]]]:
    """The obvious reading: every row as Python values, then sorted by time (the reader's twin)."""
    rows = list(csv.DictReader(path.open()))
    t = np.array([float(r["arrived_at"]) for r in rows])
    t = t - t.min()
    order = np.argsort(t, kind="stable")
    prompt = np.array([int(float(r["num_prefill_tokens"])) for r in rows])
    output = np.array([int(float(r["num_decode_tokens"])) for r in rows])
    hashes = [[int(x) for x in r["hash_ids"].split()] for r in rows]
    return t[order], prompt[order], output[order], [hashes[i] for i in order]


def _write(path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with path.open("w") as f:
        f.write("arrived_at,num_prefill_tokens,num_decode_tokens,hash_ids\n")
        for _ in range(n):
            ids = " ".join(str(x) for x in rng.integers(0, 50, size=rng.integers(0, 4)))
            f.write(f"{rng.uniform(5, 100):.6f},{rng.integers(1, 9000)},{rng.integers(1, 500)}.0,{ids}\n")


@pytest.mark.parametrize("chunk_rows", [7, 1 << 16])
def test_chunked_read_equals_the_plain_read(tmp_path, monkeypatch, chunk_rows):
    p = tmp_path / "t.csv"
    _write(p, 500)
    monkeypatch.setattr(trace_mod, "CHUNK_ROWS", chunk_rows)
    t = read_trace(str(p))
    arrival, prompt, output, hashes = _plain(p)
    assert np.array_equal(t.arrival_s, arrival) and t.arrival_s[0] == 0.0
    assert np.array_equal(t.prompt_tokens, prompt) and np.array_equal(t.output_tokens, output)
    assert [t.hash_ids[i] for i in range(len(hashes))] == hashes and len(t.hash_ids) == 500


def test_a_bad_row_in_a_later_chunk_names_its_own_line(tmp_path, monkeypatch):
    p = tmp_path / "t.csv"
    lines = ["arrived_at,num_prefill_tokens,num_decode_tokens"] + [f"{i},10,5" for i in range(100)]
    lines[60] = "59,10,-1"
    lines.insert(30, "")  # a blank line still counts as a line of the file
    p.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(trace_mod, "CHUNK_ROWS", 8)
    with pytest.raises(ConfigError, match=r"line 62: num_decode_tokens: '-1' tokens is outside"):
        read_trace(str(p))


def test_seconds_then_dates_are_refused(tmp_path, monkeypatch):
    p = tmp_path / "t.csv"
    p.write_text("arrival_time,prompt_tokens,output_tokens\n1.5,10,5\n2.5,10,5\n2023-11-16 18:15:46,10,5\n")
    monkeypatch.setattr(trace_mod, "CHUNK_ROWS", 2)
    with pytest.raises(
        ConfigError, match=r"line 4: arrival_time: .* is in dates where earlier rows are in seconds"
    ):
        read_trace(str(p))


def test_mooncake_out_of_order_keeps_each_rows_hash_ids(tmp_path):
    rows = [
        {"timestamp": 3000, "input_length": 30, "output_length": 3, "hash_ids": [3]},
        {"timestamp": 1000, "input_length": 10, "output_length": 1, "hash_ids": [1, 11]},
        {"timestamp": 2000, "input_length": 20, "output_length": 2},
    ]
    p = tmp_path / "m.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    t = read_trace(str(p))
    assert t.arrival_s.tolist() == [0.0, 1.0, 2.0] and t.prompt_tokens.tolist() == [10, 20, 30]
    assert [t.hash_ids[i] for i in range(3)] == [[1, 11], [], [3]]


def test_a_utf8_bom_is_not_part_of_the_first_column(tmp_path):
    p = tmp_path / "t.csv"
    p.write_bytes("\ufeffarrived_at,num_prefill_tokens,num_decode_tokens\n0,10,5\n".encode())
    assert read_trace(str(p)).arrival_s is not None


def test_a_device_is_not_read():
    with pytest.raises(ConfigError, match=r"/dev/zero: workload.trace: is not a regular file; give a CSV"):
        read_trace("/dev/zero")


def test_jsonl_arrival_times_may_be_dates(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text(
        '{"arrival_time": "2023-11-16 18:15:46.5", "input_length": 5, "output_length": 2}\n'
        '{"arrival_time": "2023-11-16 18:15:48", "input_length": 6, "output_length": 3}\n'
    )
    assert read_trace(str(p)).arrival_s.tolist() == [0.0, 1.5]


# ---------------------------------------------------------------- JSON traces (issue 15, #5)
ROWS = [{"timestamp": 1000 * i, "input_length": 100 + i, "output_length": 10 + i} for i in range(50)]


@pytest.mark.parametrize("layout", ["array", "lines"])
def test_a_json_trace_is_read_as_json_array_or_lines(tmp_path, layout):
    p = tmp_path / "t.json"
    text = json.dumps(ROWS, indent=1) if layout == "array" else "\n".join(json.dumps(r) for r in ROWS)
    p.write_text(text)
    t = read_trace(str(p))
    assert t.prompt_tokens.tolist() == [r["input_length"] for r in ROWS]
    assert t.output_tokens.tolist() == [r["output_length"] for r in ROWS]
    assert t.arrival_s.tolist() == pytest.approx([float(i) for i in range(50)])


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("t.json", json.dumps({"rows": ROWS * 200})),  # a JSON object, not an array
        ("t.json", "not json at all " * 1000),
        ("t.csv", json.dumps(ROWS * 200)),  # JSON under a CSV name
    ],
)
def test_a_file_that_is_not_a_trace_is_one_short_line_naming_the_formats(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        read_trace(str(p))
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 300 + len(str(p)), msg
    assert ".json" in msg and ".jsonl" in msg and ".csv" in msg
    assert "input_length" not in msg  # never the file's contents


def test_other_column_names_list_every_accepted_alias(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("when,in,out\n1,2,3\n")
    with pytest.raises(ConfigError) as e:
        read_trace(str(p))
    for alias in trace_mod.PROMPT_COLUMNS + trace_mod.OUTPUT_COLUMNS + trace_mod.ARRIVAL_COLUMNS:
        assert alias in str(e.value)
    assert "found 'when', 'in', 'out'" in str(e.value)
