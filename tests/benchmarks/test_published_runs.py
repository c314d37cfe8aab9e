"""Published runs as measured-run files, and the engine profiles fitted to them: every file reads, the script
writes exactly the committed files, and no profile's held-out rows were among the rows it was fitted to."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from core.engine_profile import ENGINE_DIR, load_engine_profile
from simulator.measured import one_run

ROOT = Path(__file__).resolve().parents[2]

RUNS = ROOT / "benchmarks" / "results" / "published_runs"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpustack_runs_are_what_the_script_writes_and_read_as_vllm_results(tmp_path, monkeypatch):
    mod = _script("published_gpustack_runs")
    monkeypatch.setattr(mod, "OUT", tmp_path)
    mod.main()
    written = sorted(p.name for p in tmp_path.glob("*.json"))
    committed = sorted(p.name for p in (RUNS / "gpustack_qwen3_14b").glob("*.json"))
    assert written == committed and len(written) == 12
    for name in written:
        assert json.loads((tmp_path / name).read_text()) == json.loads(
            (RUNS / "gpustack_qwen3_14b" / name).read_text()
        )
        run = one_run(RUNS / "gpustack_qwen3_14b" / name)
        assert run.model == "Qwen/Qwen3-14B" and run.rate_per_s is None and run.concurrency is None
        # the printout's own throughput, to its two decimals, is the file's requests / duration
        assert run.metrics["request_throughput"] == pytest.approx(run.completed / run.metrics["duration"])


def _runs(text: str) -> set[str]:
    return set(re.findall(r"benchmarks/results/published_runs/[\w./-]+\.json", text))


@pytest.mark.parametrize("name", sorted(p.stem for p in ENGINE_DIR.glob("*.yaml")))
def test_no_profile_is_checked_on_a_row_it_was_fitted_to(name):
    p = load_engine_profile(name)
    fit = p.sources.get("fit")
    if p.status != "published" or p.validation is None:
        return
    held_text, _, fitted_text = p.validation.held_out.partition("; fitted on ")
    held, fitted = _runs(held_text), _runs(fitted_text)
    assert held and fitted and not held & fitted
    # the command that wrote the profile fits exactly those runs and holds out exactly these
    command = fit.table.split("fitted: ", 1)[1]
    positional, _, rest = command.partition("--hold-out")
    assert _runs(positional) == fitted and _runs(rest.split(" --", 1)[0]) == held
    for path in held | fitted:
        assert (ROOT / path).is_file()
