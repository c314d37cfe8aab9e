"""`python -m calibrate from-benchmark`: an engine profile fitted to measured runs by simulating them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from calibrate.__main__ import main
from calibrate.from_benchmark import Settings, profile_of
from core.engine_profile import Estimated, read_engine_profile, write_engine_profile
from simulator.scenario import parse_scenario
from simulator.simulation import simulate
from simulator.validation import vllm_result

TRUTH = {"per_step_s": 3e-3, "per_sequence_s": 4e-5, "gemm": 1.2, "attention": 1.5}


def _runs(tmp_path: Path) -> list[str]:
    """vLLM results of three closed-loop runs simulated with a known engine profile."""
    s = Settings("known", "vllm", "0", "h100-sxm", None, "chunked", 256, 8192, {}, tuple(TRUTH))
    src = Estimated(kind="estimated", why="the test's known profile")
    known = tmp_path / "known.yaml"
    write_engine_profile(profile_of(TRUTH, s, {"start": src, "scheduling": src}), known)
    paths = []
    for i, (users, n, pin, pout) in enumerate([(1, 6, 2000, 24), (16, 32, 512, 48), (8, 16, 1024, 32)]):
        sc = {"name": f"r{i}", "model": "llama-3.1-8b", "hardware": {"gpu": "h100-sxm"}, "engine": str(known),
              "seed": 0, "workload": {"arrival": {"process": "closed_loop", "concurrency": users},
                                      "prompt_tokens": {"dist": "fixed", "value": pin},
                                      "output_tokens": {"dist": "fixed", "value": pout}, "num_requests": n}}  # fmt: skip
        data = vllm_result(simulate(parse_scenario(sc))) | {"model_id": "meta-llama/Llama-3.1-8B-Instruct"}
        paths.append(tmp_path / f"run{i}.json")
        paths[-1].write_text(json.dumps(data))
    return [str(p) for p in paths]


def test_runs_simulated_from_a_known_profile_give_back_its_terms(tmp_path, capsys):
    train0, train1, held = _runs(tmp_path)
    out = tmp_path / "fitted.yaml"
    argv = ["from-benchmark", train0, train1, "--hold-out", held, "--gpu", "h100-sxm", "--engine", "fitted",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    p = read_engine_profile(out)
    got = {"per_step_s": p.host.per_step_s.value, "per_sequence_s": p.host.per_sequence_s.value,
           "gemm": p.kernels.gemm, "attention": p.kernels.attention_prefill}  # fmt: skip
    for k, v in TRUTH.items():
        assert got[k] == pytest.approx(v, rel=0.05), k
    assert p.validation is not None and "run2.json" in p.validation.held_out
    assert all(m.median_abs_pct < 1.0 for m in p.validation.metrics)  # the held-out run, predicted
    # its load: 8 closed-loop users, so at most 8 sequences a step (prompt steps run fewer), and its errors
    (load,) = p.validation.loads
    assert load.run == held and 1.0 < load.batch <= 8.0
    assert set(load.errors_pct) >= {"mean_ttft_ms", "output_throughput"}
    assert all(abs(e) < 2.0 for e in load.errors_pct.values())
    assert p.sources["fit"].raw == [train0, train1, held]
    assert "Held-out runs (never fitted)" in capsys.readouterr().out


def test_from_benchmark_never_imports_torch():
    code = "import sys, calibrate.__main__, calibrate.from_benchmark; print('torch' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2]
    )
    assert done.stdout.strip() == "False", done.stderr


def test_bad_terms_and_a_model_outside_the_catalogue_are_one_line(tmp_path, capsys):
    run = _runs(tmp_path)[0]
    assert main(["from-benchmark", run, "--gpu", "h100-sxm", "--engine", "x", "--terms", "speed"]) == 2
    assert "--terms: speed" in capsys.readouterr().err
    d = json.loads(Path(run).read_text()) | {"model_id": "acme/NotAModel-3B"}
    Path(run).write_text(json.dumps(d))
    assert (
        main(["from-benchmark", run, "--gpu", "h100-sxm", "--engine", "x", "--out", str(tmp_path / "x.yaml")])
        == 2
    )
    err = capsys.readouterr().err
    assert "NotAModel-3B is not in the catalogue; give --model" in err and err.count("\n") == 1


def test_an_eager_engine_profile_takes_its_launch_mode_layers_formats_and_two_attention_factors(tmp_path):
    """--cuda-graphs, --per-layer, --weights and separate attention terms reach the written profile."""
    values = {"per_step_s": 1.5e-4, "per_sequence_s": 0.0, "attention_prefill": 8.0, "attention_decode": 6.0}
    s = Settings("eager", "vllm", "0", "t4", None, "chunked", 64, 2048, {}, tuple(values), "none", True, None,
                 ("bf16", "fp16"))  # fmt: skip
    src = Estimated(kind="estimated", why="the test's profile")
    p = profile_of(values, s, {"start": src, "scheduling": src})
    assert p.scheduling.cuda_graphs == "none" and p.host.per_layer
    assert p.kernels.attention_prefill == 8.0 and p.kernels.attention_decode == 6.0 and p.kernels.gemm == 1.0
    assert p.kernels.quantized_weights == ["bf16", "fp16"]
    # per layer: a 36-layer model pays 36 x the per-step term per step
    assert p.host_time(36, 1, 0) == pytest.approx(36 * 1.5e-4)


def test_a_model_outside_the_catalogue_is_found_by_name_in_model_dir(tmp_path):
    from calibrate.from_benchmark import catalogue_model
    from simulator.measured import read_measured

    run = read_measured(
        str(Path(__file__).parents[2] / "benchmarks/results/published_runs/kaggle_t4/"
            "vllm_t4_llama-3.2-3b-instruct_short_c01.json")
    )[0]  # fmt: skip
    assert catalogue_model(run, None, str(Path(__file__).parents[2] / "benchmarks/data")).endswith(
        "benchmarks/data/llama-3.2-3b-instruct.json"
    )


def test_attention_with_its_parts_and_unknown_weights_are_one_line(tmp_path, capsys):
    run = _runs(tmp_path)[0]
    argv = ["from-benchmark", run, "--gpu", "h100-sxm", "--engine", "x", "--out", str(tmp_path / "x.yaml")]
    assert main([*argv, "--terms", "attention,attention_prefill"]) == 2
    assert "give it or them, not both" in capsys.readouterr().err
    assert main([*argv, "--weights", "fp16,fp4"]) == 2
    err = capsys.readouterr().err
    assert "--weights 'fp16,fp4'" in err and err.count("\n") == 1
