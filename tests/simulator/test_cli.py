"""The command line: runs, files written, help, and one-line errors with no traceback."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from simulator.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_run_default_writes_summary_and_requests(tmp_path, capsys):
    rc = main(["run", "--requests", "300", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    for word in ("TTFT", "TPOT", "ITL", "end-to-end", "throughput", "KV cache", "per 1M input tokens"):
        assert word in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["requests"]["total"] == 300 and summary["requests"]["finished"] == 300
    assert summary["latency_s"]["ttft"]["p50"] > 0
    rows = list(csv.DictReader((tmp_path / "requests.csv").open()))
    assert len(rows) == 300 and float(rows[0]["ttft_s"]) > 0
    assert (tmp_path / "timeline.csv").exists() and (tmp_path / "scenario.yaml").exists()


def test_overrides_change_the_forecast(tmp_path, capsys):
    main(["run", "--requests", "200", "--out", str(tmp_path / "a")])
    main(["run", "--requests", "200", "--out", str(tmp_path / "b"), "--set", "hardware.gpu=a100-80gb-sxm"])
    a = json.loads((tmp_path / "a" / "summary.json").read_text())
    b = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert b["hardware"]["gpu"] == "a100-80gb-sxm"
    assert b["latency_s"]["tpot"]["p50"] > a["latency_s"]["tpot"]["p50"]


@pytest.mark.parametrize(
    "content,expect",
    [
        (
            "serving: {batching: {max_num_seqs: -1}}\nworkload: {arrival: {process: poisson, rate_per_s: 1}}\n",
            "serving.batching.max_num_seqs",
        ),
        ("model: llama-9\nworkload: {arrival: {process: poisson, rate_per_s: 1}}\n", "not in the catalogue"),
        ("hardware: {gpu: v100}\nworkload: {arrival: {process: poisson, rate_per_s: 1}}\n", "has no profile"),
        ("workload: {trace: missing.csv, arrival: {process: trace}}\n", "not found"),
        ("[1, 2", "not valid YAML"),
    ],
)
def test_bad_scenarios_exit_2_with_one_line(tmp_path, capsys, content, expect):
    f = tmp_path / "s.yaml"
    f.write_text(content)
    rc = main(["run", str(f), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and expect in err


def test_unwritable_output_dir(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    rc = main(["run", "--requests", "50", "--out", str(blocker / "sub")])
    assert rc == 2 and "--out" in capsys.readouterr().err


def test_model_that_does_not_fit_exits_3_with_numbers(tmp_path, capsys):
    rc = main(["run", "--requests", "50", "--out", str(tmp_path), "--set", "model=llama-3.1-70b"])
    out = capsys.readouterr().out
    assert rc == 3 and "DOES NOT FIT" in out and "weights 131.4 GiB" in out


def test_lists_and_help(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "llama-3.1-8b" in out and "MLA" in out and "MoE" in out
    assert main(["gpus"]) == 0
    assert "h100-sxm" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    helptext = capsys.readouterr().out
    assert "serving.memory.gpu_memory_utilization" in helptext and "{dist: lognormal" in helptext


def test_no_traceback_from_the_real_entry_point(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(
        "serving: {memory: {block_size: 0}}\nworkload: {arrival: {process: poisson, rate_per_s: 1}}\n"
    )
    p = subprocess.run(
        [sys.executable, "-m", "simulator", "run", str(f)], capture_output=True, text=True, cwd=ROOT
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr and "serving.memory.block_size" in p.stderr


def test_compare_prints_side_by_side_and_writes_files(tmp_path, capsys):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    base = "workload: {arrival: {process: poisson, rate_per_s: 2}, num_requests: 100}\n"
    a.write_text(base)
    b.write_text(base + "hardware: {gpu: a100-80gb-sxm}\n")
    rc = main(["compare", str(a), str(b), "--out", str(tmp_path / "cmp")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "TTFT p99 (ms)" in out and "B vs A" in out and "best TPOT p99" in out
    rows = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert rows["TPOT p50 (ms)"]["b"] > rows["TPOT p50 (ms)"]["a"]  # an A100 decodes slower than an H100
    assert main(["compare", str(a)]) == 2


# ---------------------------------------------------------------- issue 15: #7 and #8 for `run`
def test_run_with_set_and_no_out_keeps_the_unchanged_runs_results(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # (output.dir stays inside the working folder)
    s = tmp_path / "s.yaml"
    s.write_text(
        "output: {dir: res}\nworkload: {arrival: {process: poisson, rate_per_s: 2}, num_requests: 40}\n"
    )
    assert main(["run", str(s)]) == 0
    plain = (tmp_path / "res" / "summary.json").read_text()
    assert main(["run", str(s), "--set", "hardware.gpu=a100-80gb-sxm"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "res" / "summary.json").read_text() == plain  # not replaced
    (changed,) = [p for p in tmp_path.iterdir() if p.name.startswith("res-set-")]
    assert json.loads((changed / "summary.json").read_text())["hardware"]["gpu"] == "a100-80gb-sxm"
    assert f"wrote {changed.name}/" in out
    assert main(["run", str(s), "--set", "hardware.gpu=l4"]) == 0  # other overrides, another folder
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("res-set-")]) == 2


def test_run_help_states_where_overridden_runs_go(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "output.dir-set-HASH" in " ".join(capsys.readouterr().out.split())


class _Terminal:
    """A stderr that says it is a terminal, keeping what was written."""

    def __init__(self) -> None:
        self.text = ""

    def write(self, s: str) -> int:
        self.text += s
        return len(s)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True


def test_run_shows_progress_with_time_left_on_a_terminal(tmp_path, monkeypatch, capsys):
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert main(["run", "--requests", "2000", "--out", str(tmp_path)]) == 0
    assert "simulating" in term.text and "100%" in term.text
    assert "simulating" not in capsys.readouterr().out  # the bar is on stderr only


def test_engines_lists_every_profile_with_where_it_was_measured_and_its_held_out_error(
    tmp_path, monkeypatch, capsys
):
    import yaml

    from core.engine_profile import ENGINE_DIR

    monkeypatch.chdir(tmp_path)  # a profile of the user's in ./engine_profiles is listed too
    mine = yaml.safe_load((ENGINE_DIR / "transformers.yaml").read_text())
    mine.update(name="my-engine", gpu="h100-sxm", validation=None)
    (tmp_path / "engine_profiles").mkdir()
    (tmp_path / "engine_profiles" / "my-engine.yaml").write_text(yaml.safe_dump(mine))
    assert main(["engines"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:-1]}
    assert (
        set(rows) == {*(p.stem for p in ENGINE_DIR.glob("*.yaml")), "my-engine"} >= {"ours", "transformers"}
    )
    assert "published on h100-sxm" in rows["tensorrt-llm-h100-sxm"]
    from core.engine_profile import load_engine_profile

    loads = load_engine_profile("vllm-h100-sxm").validation.loads  # the loads its checks ran at
    assert loads and ", ".join(f"{b:.3g}" for b in sorted(c.batch for c in loads)) in rows["vllm-h100-sxm"]
    assert "measured on h200" in rows["transformers"] and "over" in rows["transformers"]
    assert "static" in rows["transformers-generate"]
    assert "measured on h100-sxm" in rows["my-engine"] and "unvalidated" in rows["my-engine"]
