"""A deployable answer: the `vllm serve` command of a scenario's configuration."""

import shlex

from simulator import api
from simulator.deploy import vllm_serve
from simulator.results import format_summary
from simulator.scenario import parse_scenario

W = {"arrival": {"process": "poisson", "rate_per_s": 1}, "num_requests": 20}


def _flags(argv: list[str]) -> dict[str, str | None]:
    out, i = {}, 3
    while i < len(argv):
        nxt = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else None
        out[argv[i]] = nxt
        i += 2 if nxt is not None else 1
    return out


def test_every_setting_that_vllm_has_a_flag_for_is_on_the_line():
    sc = parse_scenario(
        {
            "model": "llama-3.1-70b",
            "hardware": {"gpu": "h100-sxm", "gpus_per_replica": 4, "pipeline_parallel": 2},
            "serving": {
                "precision": {"weight_dtype": "fp8", "kv_dtype": "fp8"},
                "batching": {"max_num_seqs": 64, "max_num_batched_tokens": 4096, "chunked_prefill": False},
                "memory": {"gpu_memory_utilization": 0.85, "max_model_len": 16384, "block_size": 32},
                "caching": {"prefix_caching": True},
            },  # fmt: skip
            "workload": W,
        }
    )
    cmd = vllm_serve(sc)
    assert cmd.argv[:3] == ["vllm", "serve", "meta-llama/Llama-3.1-70B"]
    assert shlex.split(cmd.line) == cmd.argv
    assert _flags(cmd.argv) == {
        "--tensor-parallel-size": "2", "--pipeline-parallel-size": "2", "--quantization": "fp8",
        "--kv-cache-dtype": "fp8", "--max-num-seqs": "64", "--max-num-batched-tokens": "4096",
        "--gpu-memory-utilization": "0.85", "--no-enable-chunked-prefill": None,
        "--enable-prefix-caching": None, "--block-size": "32", "--max-model-len": "16384",
    }  # fmt: skip
    assert cmd.notes == []


def test_checkpoint_formats_and_replicas_are_notes():
    sc = parse_scenario(
        {
            "model": "llama-3.1-8b",
            "hardware": {"gpu": "l4"},
            "serving": {"precision": {"weight_dtype": "int4"}},
            "cluster": {"replicas": 3},
            "workload": W,
        }  # fmt: skip
    )
    cmd = vllm_serve(sc)
    assert "--quantization" not in cmd.argv and "--no-enable-prefix-caching" in cmd.argv
    assert any("AWQ or GPTQ" in n for n in cmd.notes) and any("run 3 such servers" in n for n in cmd.notes)


def test_the_command_is_in_the_terminal_summary():
    f = api.forecast({"model": "qwen2.5-0.5b", "hardware": {"gpu": "t4"}, "workload": W})
    assert vllm_serve(f.scenario).line in format_summary(f)  # (the report: tests/simulator/test_report.py)


def test_async_scheduling_is_on_the_line_only_when_asked():
    base = {"model": "llama-3.1-8b", "hardware": {"gpu": "h100-sxm"}, "workload": W}
    on = vllm_serve(parse_scenario(base | {"serving": {"async_scheduling": True}}))
    off = vllm_serve(parse_scenario(base))
    assert "--async-scheduling" in on.argv and "--async-scheduling" not in off.argv
