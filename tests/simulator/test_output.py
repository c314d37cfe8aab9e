"""Result folders: replaced whole, never mixed, one writer at a time; searches that keep what they finished."""

import csv
import errno
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import simulator.search as search_mod
from core.errors import ConfigError
from simulator.cli import main
from simulator.journal import JOURNAL, Journal, read_journal, search_key
from simulator.output import ResultFolder
from simulator.search import ConfigResult, parse_spec, run_search

ROOT = Path(__file__).resolve().parents[2]
RUN = ["run", "--requests", "40", "--no-capacity"]  # (file handling only: no capacity search)


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def _no_leftovers(d: Path) -> None:
    """Nothing of a run's machinery beside the folder: no work folder, lock or old copy."""
    assert sorted(p.name for p in d.parent.iterdir() if p.name.startswith(f".{d.name}.")) == []


# ---------------------------------------------------------------- stale files never survive
@pytest.mark.parametrize(
    "rerun,gone",
    [
        (["--set", "model=llama-3.1-70b"], {"requests.csv", "timeline.csv"}),  # does not fit
        (["--set", "output.per_request_csv=false"], {"requests.csv"}),
    ],
)
def test_a_rerun_leaves_only_its_own_files(tmp_path, capsys, rerun, gone):
    out = tmp_path / "out"
    assert main([*RUN, "--out", str(out)]) == 0
    assert {"requests.csv", "timeline.csv"} <= set(_files(out))
    capsys.readouterr()
    main([*RUN, "--out", str(out), *rerun])
    wrote = capsys.readouterr().out.splitlines()[-1]
    left = set(_files(out))
    assert not (gone & left), f"stale {gone & left} beside the new summary"
    assert wrote == f"wrote {out}/: " + ", ".join(sorted(left))  # the CLI names exactly what is there
    _no_leftovers(out)


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left on device")])
def test_a_write_cut_short_keeps_the_previous_results(tmp_path, capsys, monkeypatch, stop):
    out = tmp_path / "out"
    assert main([*RUN, "--out", str(out)]) == 0
    before = _files(out)
    calls = []

    def cut(path, cols):  # the second CSV (timeline.csv) fails after requests.csv was written
        calls.append(path)
        if len(calls) == 2:
            raise stop
        real(path, cols)

    import simulator.results as results

    real = results._write_csv
    monkeypatch.setattr(results, "_write_csv", cut)
    rc = main([*RUN, "--out", str(out), "--set", "seed=7"])
    err = capsys.readouterr().err
    assert rc == (130 if isinstance(stop, KeyboardInterrupt) else 2) and err.count("\n") == 1
    assert _files(out) == before  # the previous run, whole
    _no_leftovers(out)


# ---------------------------------------------------------------- one writer at a time
def test_a_second_process_on_a_locked_folder_is_one_line(tmp_path):
    out = tmp_path / "out"
    with ResultFolder(out):
        p = subprocess.run(
            [sys.executable, "-m", "simulator", *RUN, "--out", str(out)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            timeout=60,
        )
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr == (
        f"error: --out {str(out)!r}: another run (pid {os.getpid()}) is writing results there; "
        "wait for it to finish or choose another folder\n"
    )
    assert not out.exists()  # the second run wrote nothing


def test_a_killed_runs_lock_does_not_block(tmp_path, capsys):
    out = tmp_path / "out"
    code = (
        "import os, sys; from simulator.output import ResultFolder; "
        f"f = ResultFolder({str(out)!r}).__enter__(); (f.work / 'summary.json').write_text('half'); "
        "os.kill(os.getpid(), 9)"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == -signal.SIGKILL
    assert (tmp_path / ".out.lock").exists() and (tmp_path / ".out.writing").exists()
    assert main([*RUN, "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["requests"]["total"] == 40
    _no_leftovers(out)


def test_a_folder_of_the_users_files_is_refused_not_emptied(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main([*RUN, "--out", str(tmp_path)]) == 2
    assert "holds 'notes.txt'" in capsys.readouterr().err
    assert _files(tmp_path) == {"notes.txt": b"mine"}


def test_a_report_inside_a_runs_folder_survives_its_rerun(tmp_path):
    out = tmp_path / "out"
    assert main([*RUN, "--out", str(out)]) == 0
    (out / "report").mkdir()
    (out / "report" / "report.md").write_text("# kept")
    assert main([*RUN, "--out", str(out), "--set", "output.per_request_csv=false"]) == 0
    assert (out / "report" / "report.md").read_text() == "# kept"
    assert not (out / "requests.csv").exists()


def test_the_two_rename_swap_where_folders_cannot_be_exchanged(tmp_path, monkeypatch):
    import simulator.output as output

    monkeypatch.setattr(output, "_exchange", lambda a, b: False)  # a file system without renameat2
    out = tmp_path / "out"
    assert main([*RUN, "--out", str(out)]) == 0
    (out / "report").mkdir()
    assert main([*RUN, "--out", str(out), "--set", "output.per_request_csv=false"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "report",
        "scenario.yaml",
        "summary.json",
        "timeline.csv",
    ]
    _no_leftovers(out)
    # killed between its two renames: the folder is away as .out.old; the next run puts it back first
    out.rename(tmp_path / ".out.old")
    with ResultFolder(out) as folder:
        assert (out / "summary.json").exists() and folder.previous("summary.json") == [out / "summary.json"]


def test_the_root_is_never_swapped(tmp_path, monkeypatch):
    import simulator.output as output

    # through a symlink or '..', a folder can resolve to '/': refused before anything is written
    monkeypatch.setattr(output.os.path, "realpath", lambda p: "/")
    with pytest.raises(ConfigError, match="is the file system's root; choose a folder for the results"):
        ResultFolder(tmp_path / "link").__enter__()
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- searches keep what they finished
BASE = {
    "model": "llama-3.1-8b",
    "hardware": {"gpu": "h100-sxm"},
    "workload": {
        "arrival": {"process": "poisson", "rate_per_s": 1.0},
        "prompt_tokens": {"dist": "fixed", "value": 200},
        "output_tokens": {"dist": "fixed", "value": 50},
        "num_requests": 60,
    },
    "slo": {"ttft_s": 0.5, "tpot_s": 0.05},
}
SWEEP = {"serving.batching.max_num_seqs": [8, 16, 32, 64, 128]}


def _spec_file(tmp_path: Path, **kw) -> Path:
    f = tmp_path / "spec.yaml"
    f.write_text(yaml.safe_dump({"name": "t", "base": BASE, "sweep": SWEEP, "rate": {"rel_tol": 0.2}} | kw))
    return f


def _fake_evaluate(calls: list, stop_after: int | None = None):
    """A quick stand-in for a configuration's evaluation that counts its calls (and can press Ctrl-C)."""

    def evaluate(base, overrides, index, slo_attainment, rate, fields=None):
        if stop_after is not None and len(calls) == stop_after:
            raise KeyboardInterrupt
        calls.append(index)
        return ConfigResult(
            index,
            overrides,
            "ok",
            max_rate_per_s=1.0 + index,
            usd_per_hour=1.0,
            usd_per_1m_tokens=2.0,
            fields=fields,
        )

    return evaluate


def test_one_configuration_raising_does_not_end_the_search(monkeypatch):
    def rate(data, *a, **k):
        if data["serving"]["batching"]["max_num_seqs"] == 16:
            raise ZeroDivisionError("float division by zero\nsecond line")
        return real(data, *a, **k)

    real = search_mod.max_sustainable_rate
    monkeypatch.setattr(search_mod, "max_sustainable_rate", rate)
    spec = parse_spec(
        {
            "name": "t",
            "base": BASE,
            "sweep": {"serving.batching.max_num_seqs": [8, 16]},
            "rate": {"rel_tol": 0.2},
        }
    )
    result = run_search(spec, "serial")
    ok, bad = result.results
    assert ok.status == "ok" and ok.max_rate_per_s > 0
    assert (bad.status, bad.message) == ("error", "ZeroDivisionError: float division by zero")
    table = search_mod.format_table(result)
    assert "failed (raised an error" in table and "ZeroDivisionError: float division by zero" in table


def test_an_interrupted_search_writes_partial_results_and_resumes(tmp_path, capsys, monkeypatch):
    spec, out = _spec_file(tmp_path), tmp_path / "out"
    calls: list[int] = []
    monkeypatch.setattr(search_mod, "evaluate", _fake_evaluate(calls, stop_after=2))
    rc = main(["search", str(spec), "--out", str(out), "--workers", "1", "--no-curves"])
    captured = capsys.readouterr()
    assert rc == 130 and calls == [0, 1]
    assert "partial: 2 of 5 configurations" in captured.out  # the table's status line
    assert "partial: 2 of 5 configurations; rerun the same command to resume" in captured.err
    rows = list(csv.DictReader((out / "search.csv").open()))
    assert [r["status"] for r in rows] == ["ok", "ok", "not run", "not run", "not run"]
    assert sorted(read_journal(out / JOURNAL, search_key(parse_spec(yaml.safe_load(spec.read_text()))))) == [
        0,
        1,
    ]
    # the same command again: only the three not run are simulated
    calls.clear()
    monkeypatch.setattr(search_mod, "evaluate", _fake_evaluate(calls))
    assert main(["search", str(spec), "--out", str(out), "--workers", "1", "--no-curves"]) == 0
    assert calls == [2, 3, 4] and "resuming: 2 configurations already done" in capsys.readouterr().err
    rows = list(csv.DictReader((out / "search.csv").open()))
    assert [r["status"] for r in rows] == ["ok"] * 5 and [float(r["max_rate_per_s"]) for r in rows] == [
        1,
        2,
        3,
        4,
        5,
    ]


def test_a_killed_search_resumes_from_its_work_folder(tmp_path, capsys, monkeypatch):
    spec_file, out = _spec_file(tmp_path), tmp_path / "out"
    spec = parse_spec(yaml.safe_load(spec_file.read_text()))
    (tmp_path / ".out.writing").mkdir()  # what SIGKILL leaves: the journal in the work folder, no lock held
    j = Journal(tmp_path / ".out.writing" / JOURNAL, search_key(spec))
    for i in (0, 3):
        j.append(
            ConfigResult(
                i,
                {"serving.batching.max_num_seqs": SWEEP["serving.batching.max_num_seqs"][i]},
                "ok",
                max_rate_per_s=9.0,
            )
        )
    j.close()
    calls: list[int] = []
    monkeypatch.setattr(search_mod, "evaluate", _fake_evaluate(calls))
    assert main(["search", str(spec_file), "--out", str(out), "--workers", "1", "--no-curves"]) == 0
    assert calls == [1, 2, 4] and "resuming: 2 configurations already done" in capsys.readouterr().err
    rows = list(csv.DictReader((out / "search.csv").open()))
    assert [float(r["max_rate_per_s"]) for r in rows] == [9, 2, 3, 9, 5]
    _no_leftovers(out)


def test_a_second_ctrl_c_during_the_partial_write_keeps_the_journal(tmp_path, capsys, monkeypatch):
    spec, out = _spec_file(tmp_path), tmp_path / "out"
    calls: list[int] = []
    monkeypatch.setattr(search_mod, "evaluate", _fake_evaluate(calls, stop_after=2))
    monkeypatch.setattr(search_mod, "to_csv", lambda result: (_ for _ in ()).throw(KeyboardInterrupt))
    args = ["search", str(spec), "--out", str(out), "--workers", "1", "--no-curves"]
    assert main(args) == 130 and calls == [0, 1] and not out.exists()
    calls.clear()
    monkeypatch.undo()
    monkeypatch.setattr(search_mod, "evaluate", _fake_evaluate(calls))
    assert main(args) == 0 and calls == [2, 3, 4]


def test_a_changed_spec_starts_the_journal_over(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    calls: list[int] = []
    monkeypatch.setattr(search_mod, "evaluate", _fake_evaluate(calls))
    args = ["--out", str(out), "--workers", "1", "--no-curves"]
    assert main(["search", str(_spec_file(tmp_path)), *args]) == 0
    assert main(["search", str(_spec_file(tmp_path)), *args, "--target", "3"]) == 0  # ranking only: kept
    assert len(calls) == 5
    assert main(["search", str(_spec_file(tmp_path, slo_attainment=0.95)), *args]) == 0
    assert len(calls) == 10


def test_a_journal_reads_back_results_with_fields_it_does_not_know(tmp_path):
    spec = parse_spec({"name": "t", "base": BASE, "sweep": SWEEP})
    key = search_key(spec)
    j = Journal(tmp_path / JOURNAL, key)
    j.append(
        ConfigResult(3, {"serving.batching.max_num_seqs": 64}, "ok", max_rate_per_s=2.5, fields={"a": 1})
    )
    j.append(ConfigResult(4, {"serving.batching.max_num_seqs": 128}, "error", "KeyError: 'x'"))
    j.close()
    lines = (tmp_path / JOURNAL).read_text().splitlines()
    row = json.loads(lines[1]) | {"a_field_from_a_later_version": 1}
    (tmp_path / JOURNAL).write_text(
        "\n".join([lines[0], json.dumps(row), lines[2], '{"index": 5, "overr']) + "\n"
    )
    back = read_journal(tmp_path / JOURNAL, key)
    assert sorted(back) == [3, 4] and back[3].max_rate_per_s == 2.5 and back[3].fields == {"a": 1}
    assert Journal(tmp_path / "again.jsonl", key, [tmp_path / JOURNAL]).done.keys() == {
        3
    }  # errors are retried
    assert read_journal(tmp_path / JOURNAL, "another key") == {}


def test_ctrl_c_stops_a_pool_search_promptly(monkeypatch):
    def evaluate(base, overrides, index, *a):
        time.sleep(0.05 if index == 0 else 60)  # the others would run a minute each
        return ConfigResult(index, overrides, "ok")

    monkeypatch.setattr(search_mod, "evaluate", evaluate)  # the pool's forked workers inherit it

    def progress(done, total):
        raise KeyboardInterrupt

    spec = parse_spec({"name": "t", "base": BASE, "sweep": SWEEP})
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        run_search(spec, "processes", workers=2, progress=progress)
    # the workers' tasks sleep 60 s: stopping well inside that shows they were not waited for (the bound
    # is loose because a loaded 2-core CI machine can take seconds to reap processes)
    while multiprocessing.active_children() and time.perf_counter() - t0 < 20.0:
        time.sleep(0.02)
    assert time.perf_counter() - t0 < 20.0 and multiprocessing.active_children() == []  # workers stopped too


SLOW_SEARCH = """
import sys, time
import simulator.search as s
from simulator.cli import main

def evaluate(base, overrides, index, *a):  # the first configuration is quick, the others take a minute
    time.sleep(0.05 if index == 0 else 60)
    return s.ConfigResult(index, overrides, "ok", max_rate_per_s=1.0, usd_per_hour=1.0, usd_per_1m_tokens=1.0)

s.evaluate = evaluate
sys.exit(main(["search", sys.argv[1], "--out", sys.argv[2], "--workers", "2", "--no-curves"]))
"""


def test_ctrl_c_in_a_terminal_ends_a_pool_search_with_its_partial_results(tmp_path):
    out = tmp_path / "out"
    p = subprocess.Popen(
        [sys.executable, "-c", SLOW_SEARCH, str(_spec_file(tmp_path)), str(out)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    journal = tmp_path / ".out.writing" / JOURNAL
    deadline = time.perf_counter() + 90  # a loaded CI machine starts the pool slowly
    while (
        not (journal.exists() and len(journal.read_text().splitlines()) == 2)
        and time.perf_counter() < deadline
    ):
        time.sleep(0.02)
    assert len(journal.read_text().splitlines()) == 2  # the first configuration is in before the Ctrl-C
    t0 = time.perf_counter()
    os.killpg(p.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the CLI and its pool workers
    _, err = p.communicate(timeout=30)
    assert time.perf_counter() - t0 < 20.0 and p.returncode == 130  # not the 60 s the workers sleep
    assert (
        "partial: 1 of 5 configurations; rerun the same command to resume" in err and "Traceback" not in err
    )
    rows = list(csv.DictReader((out / "search.csv").open()))
    assert [r["status"] for r in rows] == ["ok", "not run", "not run", "not run", "not run"]


# ---------------------------------------------------------------- bad input: one line, exit 2
def _search_spec(tmp_path: Path) -> str:
    return str(_spec_file(tmp_path))


def _file(tmp_path: Path) -> str:
    (tmp_path / "a_file").write_text("")
    return str(tmp_path / "a_file")


def _users_folder(tmp_path: Path) -> str:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("")
    return str(tmp_path / "mine")


EX = str(ROOT / "examples" / "poisson_chat_l4.yaml")
COMMANDS = {  # each command that writes results, with its --out
    "run": lambda t, out: ["run", "--requests", "20", "--out", out],
    "report": lambda t, out: ["report", "--requests", "20", "--out", out],
    "compare": lambda t, out: ["compare", EX, EX, "--requests", "20", "--out", out],
    "search": lambda t, out: ["search", _search_spec(t), "--out", out],
}
IS_A_FILE = "error: --out '{t}/a_file': is a file, not a folder; choose a folder (new or empty)"
UNDER_A_FILE = "error: --out '{t}/a_file/sub': cannot be written ('{t}/a_file' is a file, not a folder); choose another folder"
USERS = (
    "error: --out '{t}/mine': holds 'notes.txt', which inferplan did not write, and results replace the "
    "folder's files; choose a new or empty folder"
)
TARGET = (  # checked by the parser, before the spec is read or the search starts
    "error: python -m simulator search: argument --target: must be a finite rate above 0 req/s (got {v}); "
    "see `python -m simulator search --help`"
)
BAD_INPUT = [  # (what the user typed, as argv from tmp_path) -> the one line printed
    *[
        pytest.param(lambda t, c=c: COMMANDS[c](t, _file(t)), IS_A_FILE, id=f"{c}-out-is-a-file")
        for c in COMMANDS
    ],
    *[
        pytest.param(
            lambda t, c=c: COMMANDS[c](t, _file(t) + "/sub"), UNDER_A_FILE, id=f"{c}-out-under-a-file"
        )
        for c in COMMANDS
    ],
    *[
        pytest.param(lambda t, c=c: COMMANDS[c](t, _users_folder(t)), USERS, id=f"{c}-users-folder")
        for c in COMMANDS
    ],
    *[
        pytest.param(
            lambda t, v=v: ["search", _search_spec(t), f"--target={v}"],
            TARGET.replace("{v}", v),
            id=f"target-{v}",
        )
        for v in ("nan", "inf", "-inf", "-1", "0")
    ],
]


@pytest.mark.parametrize("argv,line", BAD_INPUT)
def test_bad_output_and_target_are_one_line(tmp_path, capsys, monkeypatch, argv, line):
    def never(*a, **k):
        raise AssertionError("the search started")

    monkeypatch.setattr(search_mod, "run_search", never)
    try:
        rc = main(argv(tmp_path))
    except SystemExit as e:  # argparse's own checks exit from the parser
        rc = e.code
    err = capsys.readouterr().err
    assert (rc, err) == (2, line.format(t=tmp_path) + "\n")
