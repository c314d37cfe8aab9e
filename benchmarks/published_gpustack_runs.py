"""Published vLLM and TensorRT-LLM serving runs from GPUStack's performance lab, written as measured-run files.

    python benchmarks/published_gpustack_runs.py   # writes benchmarks/results/published_runs/gpustack_qwen3_14b/*.json

Source: the GPUStack repository's "Optimizing Qwen3-14B Throughput" pages, section "Other Benchmark Cases"
(the baseline and optimized "benchmark results" blocks), each a `vllm bench serve` printout:

- H100: https://github.com/gpustack/gpustack/blob/7ae332aaf05783e657560ef927c527b156e2536d/docs/performance-lab/qwen3-14b/h100.md
  ("A single NVIDIA H100 SXM GPU"; baseline `vllm serve Qwen/Qwen3-14B`, vLLM v0.11.0).
- A100: https://github.com/gpustack/gpustack/blob/10e9444a07c73556f2ef0d10d2b2766bbf54c9c0/docs/performance-lab/qwen3-14b/a100.md
  ("NVIDIA A100 GPUs", the memory size not given; baseline `vllm serve Qwen/Qwen3-14B`, vLLM v0.11.0; optimized
  `trtllm-serve Qwen/Qwen3-14B --max_seq_len=40960 --enable_chunked_prefill`, TensorRT-LLM v1.2.0rc1).

Every run: Qwen/Qwen3-14B in bf16 on one GPU (no tensor parallelism in the serving commands), `vllm bench serve
--backend openai-chat --dataset-name random --random-input-len ISL --random-output-len OSL --num-prompts N
--seed 42` (the pages' benchmark script) with the default request rate (inf: every request sent at once), no
--max-concurrency and no --ignore-eos. The random cases are 32000/100 (100 requests), 4000/200 (500), 2000/100
(500) and 128/4 (1000). The ShareGPT rows are left out: they give only total token counts, not the lengths.
Each file holds the printout's figures under vLLM's result keys (the printout has mean, median and P99 of TTFT,
TPOT and ITL); nothing else is added.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "published_runs" / "gpustack_qwen3_14b"
H100 = (
    "https://github.com/gpustack/gpustack/blob/7ae332aaf05783e657560ef927c527b156e2536d/"
    "docs/performance-lab/qwen3-14b/h100.md"
)
A100 = (
    "https://github.com/gpustack/gpustack/blob/10e9444a07c73556f2ef0d10d2b2766bbf54c9c0/"
    "docs/performance-lab/qwen3-14b/a100.md"
)
CASES = {"32k": (32000, 100), "4k": (4000, 200), "2k": (2000, 100), "128": (128, 4)}
# (engine, gpu, case): successful requests, duration s, total input, total generated, then mean / median / P99 of
# TTFT, TPOT and ITL (ms), as printed
ROWS = {
    ("vllm", "h100-sxm", "32k"): (100, 386.80, 3200000, 9855, 191024.43, 191051.49, 380407.97, 277.44, 284.52, 324.14, 274.38, 43.48, 1101.18),
    ("vllm", "h100-sxm", "4k"): (500, 227.57, 1997942, 99803, 112716.92, 110734.54, 219749.74, 132.45, 139.68, 161.93, 132.11, 43.93, 656.79),
    ("vllm", "h100-sxm", "2k"): (500, 98.91, 998175, 50000, 50716.13, 49138.28, 94614.51, 206.51, 231.62, 236.67, 204.84, 46.01, 642.06),
    ("vllm", "h100-sxm", "128"): (1000, 22.72, 127698, 4000, 18282.75, 18061.13, 22564.77, 525.31, 597.29, 610.81, 393.98, 581.28, 633.07),
    ("vllm", "a100-80gb-sxm", "32k"): (100, 724.56, 3200000, 9891, 359648.08, 359424.54, 714338.15, 445.58, 462.54, 463.96, 441.08, 448.05, 594.59),
    ("vllm", "a100-80gb-sxm", "4k"): (500, 407.05, 1997942, 99783, 197625.03, 196621.85, 396056.32, 254.61, 272.93, 283.50, 253.82, 369.00, 377.42),
    ("vllm", "a100-80gb-sxm", "2k"): (500, 175.66, 998175, 50000, 86908.30, 86575.09, 170607.65, 301.73, 334.17, 334.55, 299.28, 333.99, 338.95),
    ("vllm", "a100-80gb-sxm", "128"): (1000, 26.79, 127698, 4000, 19451.46, 19150.52, 26523.59, 233.35, 238.61, 251.05, 175.01, 237.82, 253.18),
    ("tensorrt-llm", "a100-80gb-sxm", "32k"): (100, 727.25, 3200000, 9932, 361107.28, 361543.94, 716851.40, 493.18, 500.49, 590.17, 488.09, 48.22, 2215.91),
    ("tensorrt-llm", "a100-80gb-sxm", "4k"): (500, 326.81, 1997942, 99760, 155664.65, 152609.98, 316584.25, 196.10, 207.95, 218.23, 195.11, 55.84, 1038.71),
    ("tensorrt-llm", "a100-80gb-sxm", "2k"): (500, 140.24, 998175, 50000, 67624.26, 65786.34, 134519.75, 313.69, 351.99, 365.92, 310.55, 63.96, 1002.01),
    ("tensorrt-llm", "a100-80gb-sxm", "128"): (1000, 15.03, 127698, 4000, 8166.48, 7882.94, 14856.34, 715.19, 853.12, 1028.67, 536.38, 638.54, 1280.94),
}  # fmt: skip
BACKEND = {
    "vllm": "vllm v0.11.0 (vllm serve Qwen/Qwen3-14B, defaults)",
    "tensorrt-llm": "tensorrt-llm v1.2.0rc1 (trtllm-serve Qwen/Qwen3-14B --max_seq_len=40960 --enable_chunked_prefill)",
}


def run_file(engine: str, gpu: str, case: str, row: tuple) -> dict:
    n, duration, tin, tout, *lat = row
    isl, osl = CASES[case]
    url = H100 if gpu == "h100-sxm" else A100
    section = (
        "Other Benchmark Cases, " + ("Baseline" if engine == "vllm" else "Optimized") + " benchmark results"
    )
    out = {
        "date": "published",
        "backend": BACKEND[engine],
        "model_id": "Qwen/Qwen3-14B",
        "tokenizer_id": "Qwen/Qwen3-14B",
        "num_prompts": n,
        "request_rate": "inf",
        "burstiness": 1.0,
        "max_concurrency": None,
        "ignore_eos": False,
        "source": f"{url} ({section}, random {isl} input / {osl} output)",
        "gpu": gpu,
        "tensor_parallel_size": 1,
    }
    return out | totals(n, duration, tin, tout) | latencies(lat)


def totals(n: int, duration: float, tin: int, tout: int) -> dict:
    """A printout's counts under vLLM's result keys, with the throughputs they imply."""
    return {
        "duration": duration,
        "completed": n,
        "total_input_tokens": tin,
        "total_output_tokens": tout,
        "request_throughput": n / duration,
        "output_throughput": tout / duration,
        "total_token_throughput": (tin + tout) / duration,
    }


def latencies(lat: list[float]) -> dict:
    """A `vllm bench serve` printout's mean, median and P99 of TTFT, TPOT and ITL (ms), under its result keys."""
    out = {}
    for i, metric in enumerate(("ttft", "tpot", "itl")):
        mean, median, p99 = lat[3 * i : 3 * i + 3]
        out |= {f"mean_{metric}_ms": mean, f"median_{metric}_ms": median, f"p99_{metric}_ms": p99}
    return out


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for (engine, gpu, case), row in ROWS.items():
        (OUT / f"{engine}_{gpu}_{case}.json").write_text(
            json.dumps(run_file(engine, gpu, case, row), indent=1) + "\n"
        )
    print(f"wrote {len(ROWS)} runs to {OUT}")


if __name__ == "__main__":
    main()
