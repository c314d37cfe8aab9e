"""Small measured-run files written to the published schemas, for the tests.

- vLLM: benchmarks/benchmark_serving.py (vllm-project/vllm) `main` writes date, backend, model_id,
  tokenizer_id, num_prompts, request_rate ("inf" when unbounded), burstiness, max_concurrency, then the
  `benchmark` result: duration, completed, total_input_tokens, total_output_tokens, request_throughput,
  request_goodput, output_throughput, total_token_throughput, input_lens, output_lens, ttfts, itls,
  generated_texts, errors (the last six only with --save-detailed), and mean/median/std/pNN of ttft, tpot,
  itl, e2el in ms. https://github.com/vllm-project/vllm/blob/main/benchmarks/benchmark_serving.py
- GuideLLM: src/guidellm/benchmark/benchmark.py (vllm-project/guidellm, v0.2): a report's `benchmarks[]`,
  each with args.strategy {type_, streams | rate}, worker.backend_model and requests.successful[] of
  GenerativeTextResponseStats (prompt_tokens, output_tokens, start_time, end_time, first_token_time,
  last_token_time). https://github.com/vllm-project/guidellm/blob/main/src/guidellm/benchmark/benchmark.py
- AIPerf: profile_export.jsonl, one record per request: metadata {request_start_ns, request_end_ns,
  benchmark_phase, was_cancelled}, metrics {input_sequence_length, output_sequence_length,
  time_to_first_token, request_latency, inter_token_latency} as {value, unit}, error
  (https://github.com/ai-dynamo/aiperf, docs/tutorials/working-with-profile-exports.md); and the summary
  profile_export_aiperf.json: metrics as {unit, avg, p50, p90, p99, ...}, input_config.loadgen.concurrency.
"""

from __future__ import annotations

import json

import numpy as np


def vllm_result(
    prompt: list[int],
    output: list[int],
    ttft_s: list[float],
    itl_s: list[list[float]],
    duration_s: float,
    rate="inf",
    burstiness: float = 1.0,
    max_concurrency: int | None = None,
    detailed: bool = True,
    model: str = "meta-llama/Llama-3.1-8B-Instruct",
) -> dict:
    """A vLLM bench serve result for these requests, its summary computed as benchmark_serving.py does."""
    p, o, ttft = np.array(prompt), np.array(output), np.array(ttft_s)
    dec = np.array([sum(g) for g in itl_s])
    tpot = dec[o > 1] / (o[o > 1] - 1)
    itl = np.concatenate([np.array(g) for g in itl_s]) if itl_s else np.zeros(0)
    e2el = ttft + dec
    out = {
        "date": "20261202-120000",
        "backend": "vllm",
        "model_id": model,
        "tokenizer_id": model,
        "num_prompts": len(p),
        "request_rate": rate,
        "burstiness": burstiness,
        "max_concurrency": max_concurrency,
        "duration": duration_s,
        "completed": len(p),
        "total_input_tokens": int(p.sum()),
        "total_output_tokens": int(o.sum()),
        "request_throughput": len(p) / duration_s,
        "request_goodput": None,
        "output_throughput": o.sum() / duration_s,
        "total_token_throughput": (p.sum() + o.sum()) / duration_s,
    }
    if detailed:
        out |= {
            "input_lens": p.tolist(),
            "output_lens": o.tolist(),
            "ttfts": ttft.tolist(),
            "itls": [list(g) for g in itl_s],
            "generated_texts": ["x" * int(n) for n in o],
            "errors": [""] * len(p),
        }
    for name, x in (("ttft", ttft), ("tpot", tpot), ("itl", itl), ("e2el", e2el)):
        x = x * 1000
        out[f"mean_{name}_ms"] = float(np.mean(x))
        out[f"median_{name}_ms"] = float(np.median(x))
        out[f"std_{name}_ms"] = float(np.std(x))
        out[f"p99_{name}_ms"] = float(np.percentile(x, 99))
    return out


def small_vllm(detailed: bool = True, **kw) -> dict:
    """Four requests with known times: TTFT 0.1..0.4 s, every gap 10 ms."""
    prompt, output = [100, 200, 300, 400], [5, 5, 9, 9]
    return vllm_result(prompt, output, [0.1, 0.2, 0.3, 0.4], [[0.01] * (n - 1) for n in output], 2.0,
                       detailed=detailed, **kw)  # fmt: skip


def guidellm_report(streams: int = 2) -> dict:
    """A GuideLLM report of one concurrent benchmark of four requests (times in s since the epoch)."""
    t0 = 1_764_000_000.0
    reqs = []
    for i, (p, o) in enumerate([(100, 5), (200, 5), (300, 9), (400, 9)]):
        start = t0 + 0.5 * i
        first = start + 0.1 * (i + 1)
        last = first + 0.01 * (o - 1)
        reqs.append({"type_": "generative_text_response", "request_id": str(i), "request_type": "text_completions",
                     "prompt": "x", "output": "y", "prompt_tokens": p, "output_tokens": o, "start_time": start,
                     "end_time": last, "first_token_time": first, "last_token_time": last})  # fmt: skip
    bench = {
        "type_": "generative_benchmark",
        "args": {"strategy": {"type_": "concurrent", "streams": streams}, "strategy_index": 0},
        "worker": {
            "type_": "generative_requests_worker",
            "backend_model": "meta-llama/Llama-3.1-8B-Instruct",
        },
        "requests": {"successful": reqs, "errored": [], "incomplete": []},
    }
    return {"benchmarks": [bench]}


def aiperf_records() -> str:
    """AIPerf profile_export.jsonl of four requests (one warm-up request, left out)."""
    lines = []
    for i, (p, o) in enumerate([(100, 5), (200, 5), (300, 9), (400, 9), (50, 2)]):
        ttft = 100.0 * (i + 1)
        lat = ttft + 10.0 * (o - 1)
        lines.append({
            "metadata": {"benchmark_phase": "warmup" if i == 4 else "profiling", "was_cancelled": False,
                         "request_start_ns": int(i * 0.5e9), "request_end_ns": int(i * 0.5e9 + lat * 1e6)},
            "metrics": {"input_sequence_length": {"value": p, "unit": "tokens"},
                        "output_sequence_length": {"value": o, "unit": "tokens"},
                        "time_to_first_token": {"value": ttft, "unit": "ms"},
                        "request_latency": {"value": lat, "unit": "ms"},
                        "inter_token_latency": {"value": 10.0, "unit": "ms"}},
            "error": None,
        })  # fmt: skip
    return "".join(json.dumps(r) + "\n" for r in lines)


def aiperf_summary() -> dict:
    """AIPerf's profile_export_aiperf.json for a concurrency-8 run."""
    return {
        "request_count": {"avg": 100, "unit": "requests"},
        "request_throughput": {"avg": 12.5, "unit": "requests/sec"},
        "output_token_throughput": {"avg": 1600.0, "unit": "tokens/sec"},
        "time_to_first_token": {"unit": "ms", "avg": 40.0, "p50": 38.0, "p90": 55.0, "p99": 70.0, "std": 5.0},
        "inter_token_latency": {"unit": "ms", "avg": 7.0, "p50": 6.9, "p90": 7.5, "p99": 8.0, "std": 0.3},
        "request_latency": {"unit": "ms", "avg": 930.0, "p50": 920.0, "p90": 990.0, "p99": 1010.0},
        "input_sequence_length": {"avg": 512, "unit": "tokens"},
        "output_sequence_length": {"avg": 128, "unit": "tokens"},
        "input_config": {
            "loadgen": {"concurrency": 8},
            "endpoint": {"model_names": ["Qwen/Qwen2.5-7B-Instruct"]},
        },
    }
