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


def test_deepseek_h200_runs_are_what_the_script_writes_with_the_published_setup(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(
        str(ROOT / "benchmarks")
    )  # (it imports published_gpustack_runs, as a script does)
    mod = _script("published_vllm_h200_runs")
    monkeypatch.setattr(mod, "OUT", tmp_path)
    mod.main()
    committed = RUNS / "deepseek_r1_h200"
    written = sorted(p.name for p in tmp_path.glob("*.json"))
    assert written == sorted(p.name for p in committed.glob("*.json")) and len(written) == 13
    for name in written:
        assert json.loads((tmp_path / name).read_text()) == json.loads((committed / name).read_text())
    for (n, isl, osl), _ in mod.ROWS.items():  # llm-ie: Poisson at 10/s, exact lengths, TP 8
        run = one_run(committed / f"vllm_h200x8_{isl}_{osl}_n{n}.json")
        assert run.rate_per_s == 10.0 and run.concurrency is None and run.completed == n
        assert (run.mean_prompt_tokens, run.mean_output_tokens) == (isl, osl)
        assert run.metrics["output_throughput"] == pytest.approx(n * osl / run.metrics["duration"])
    low = one_run(committed / "gpustack_vllm_h200x8_sharegpt_c4.json")  # the concurrency-4 row
    assert low.concurrency == 4 and low.rate_per_s is None and low.completed == 100


def test_low_load_checks_are_what_the_script_computes(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # (its `import _checkout`, as when run as a script)
    mod = _script("published_low_load_checks")
    monkeypatch.setattr(mod, "OUT", tmp_path)
    monkeypatch.setattr(mod, "TABLE", tmp_path / "table.md")
    mod.main([])
    committed = RUNS / "vllm_ci_latency_llama8b"
    for gpu in mod.ROWS:
        name = f"latency_llama8b_tp1_{gpu}.json"
        assert json.loads((tmp_path / name).read_text()) == json.loads((committed / name).read_text())
        run = one_run(committed / name)
        assert (
            run.concurrency == 8
            and run.completed == 8
            and (run.mean_prompt_tokens, run.mean_output_tokens) == (32, 128)
        )
    table = (tmp_path / "table.md").read_text()
    assert table == (ROOT / "benchmarks" / "results" / "published_low_load_checks.md").read_text()
    assert table.count("| h200 | vllm-h200 |") == 1 and "| a100-80gb-sxm | vllm-a100-80gb-sxm |" in table
    # --write put each row into its profile's validation.loads: the committed profiles hold what it computes
    from core.engine_profile import load_engine_profile

    for gpu, path in mod.write_runs().items():
        r = mod.check(gpu, path)
        (load,) = [c for c in load_engine_profile(r["profile"]).validation.loads if c.run.endswith(path.name)]
        assert load.batch == pytest.approx(r["batch"], abs=1e-3) and load.errors_pct == r["errors_pct"]
        assert 7.0 < load.batch <= 8.0 and load.errors_pct["output_throughput"] < 0  # forecast too slow
