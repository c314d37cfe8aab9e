"""Uploads: a client's file name never leaves the upload folder; an uploaded scenario is read as a file is."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from app_pages import common  # noqa: E402

W = "workload: {arrival: {process: poisson, rate_per_s: 1}, num_requests: 20}\n"
# nine levels of nine: about 4.9e8 strings once expanded, from a file of about 400 bytes
LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)


class Upload:
    """What st.file_uploader hands over: a client-chosen name and the bytes."""

    def __init__(self, name: str, data: bytes) -> None:
        self.name, self._data = name, data

    def getvalue(self) -> bytes:
        return self._data


@pytest.mark.parametrize(
    "name,saved",
    [
        ("../../../etc/cron.d/x.csv", "x.csv"),
        ("..\\..\\windows\\trace.csv", "trace.csv"),
        ("/abs/path/t.jsonl", "t.jsonl"),
        ("..", "upload.csv"),
        (".csv", "csv.csv"),
        ("my trace (1);rm -rf.csv", "my_trace__1__rm_-rf.csv"),
        ("config.json", "config.json.csv"),
    ],
)
def test_upload_names_stay_inside_their_folder(tmp_path, monkeypatch, name, saved):
    monkeypatch.setattr(common, "UPLOADS", tmp_path / "uploads")
    suffix = ".jsonl" if name.endswith(".jsonl") else ".csv"
    path = Path(common.save_upload(Upload(name, b"arrived_at,num_prefill_tokens\n"), suffix))
    assert path.name == saved
    assert path.resolve().parent.parent == (tmp_path / "uploads").resolve()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [path]


@pytest.mark.parametrize(
    "data,message",
    [
        ((LAUGHS + W).encode(), r"^s\.yaml: YAML aliases: about 490,329,036 nodes .+"),
        ((W + "serving: {}\nserving: {}\n").encode(), r"^s\.yaml:3:1: duplicate key 'serving' .+"),
        (b"\x00\x01binary", r"^s\.yaml: is a binary file, not a scenario file; .+"),
        (b"- just\n- a list\n", r"^s\.yaml: a scenario must be a YAML mapping$"),
        (
            W.encode() + b"name: !!python/object/apply:os.getcwd []\n",
            r"^s\.yaml:2:7: YAML tag .+ not allowed",
        ),
    ],
)
def test_an_uploaded_scenario_is_read_as_a_file_is(monkeypatch, data, message):
    shown = []
    monkeypatch.setattr(common.st, "error", shown.append)
    assert common.read_yaml_upload(Upload("s.yaml", data)) is None
    assert len(shown) == 1 and re.match(message, shown[0]), shown


def test_an_uploaded_scenario_is_data(monkeypatch):
    monkeypatch.setattr(common.st, "error", pytest.fail)
    assert common.read_yaml_upload(Upload("../s.yaml", W.encode()))["workload"]["num_requests"] == 20
