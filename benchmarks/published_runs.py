"""Published serving runs written as measured-run files that `python -m calibrate from-benchmark` reads.

    python benchmarks/published_runs.py     # writes benchmarks/results/published_runs/trtllm_perf_overview/*.json

Source: TensorRT-LLM's performance overview, docs/source/performance/perf-overview.md at commit 00f37686
(https://github.com/NVIDIA/TensorRT-LLM/blob/00f37686aa854010d68bcbd0f4ab000221541ca6/docs/source/performance/perf-overview.md),
table "Llama 3.1 8B": Total Output Throughput (tokens/sec) of nvidia/Llama-3.1-8B-Instruct-FP8, TP1, on H200 and
H100 SXM, with `trtllm-bench throughput --backend pytorch` (every request queued at once, CUDA graphs with
padding), each ISL/OSL pair's dataset of `$num_requests` requests of exactly those lengths (the page's
"Reproducing Benchmarked Results" table). Each row becomes a vLLM-style result without per-request data: the
requests and their lengths as published, all sent at once (request_rate inf), output_throughput as published,
the duration it implies (requests x OSL / throughput). Nothing else (TTFT, TPOT) was published for these rows.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "published_runs" / "trtllm_perf_overview"
URL = (
    "https://github.com/NVIDIA/TensorRT-LLM/blob/00f37686aa854010d68bcbd0f4ab000221541ca6/"
    "docs/source/performance/perf-overview.md"
)
# (ISL, OSL): (num_requests, H200 TP1 FP8, H100 TP1 FP8 output tokens/s), as published
ROWS = {
    (128, 128): (30000, 27911, 28312),
    (128, 2048): (3000, 26221, 22714),
    (128, 4096): (1500, 18027, 14325),
    (500, 2000): (3000, 20770, 17660),
    (1000, 1000): (3000, 17744, 15220),
    (1000, 2000): (1500, 16828, 13899),
    (2048, 128): (3000, 3538, 3450),
    (2048, 2048): (1500, 12194, 9305),
    (5000, 500): (1500, 3902, 3459),
    (20000, 2000): (1000, 1804, 1351),
}


def run_file(gpu: str, isl: int, osl: int, n: int, out_tok_s: float) -> dict:
    return {
        "date": "published",
        "backend": "tensorrt-llm (trtllm-bench throughput, pytorch backend)",
        "model_id": "nvidia/Llama-3.1-8B-Instruct-FP8",
        "tokenizer_id": "nvidia/Llama-3.1-8B-Instruct-FP8",
        "num_prompts": n,
        "request_rate": "inf",
        "burstiness": 1.0,
        "max_concurrency": None,
        "source": URL,
        "gpu": gpu,
        "tensor_parallel_size": 1,
        **fixed_length_totals(n, isl, osl, out_tok_s),
    }


def fixed_length_totals(n: int, isl: int, osl: int, out_tok_s: float) -> dict:
    """vLLM's result keys for the counts and rates of `n` requests of fixed lengths at an output rate."""
    duration = n * osl / out_tok_s
    return {
        "duration": duration,
        "completed": n,
        "total_input_tokens": n * isl,
        "total_output_tokens": n * osl,
        "request_throughput": n / duration,
        "output_throughput": out_tok_s,
        "total_token_throughput": n * (isl + osl) / duration,
    }


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for (isl, osl), (n, h200, h100) in ROWS.items():
        for gpu, value in (("h200", h200), ("h100-sxm", h100)):
            (OUT / f"{gpu}_{isl}_{osl}.json").write_text(
                json.dumps(run_file(gpu, isl, osl, n, value), indent=1) + "\n"
            )
    print(f"wrote {2 * len(ROWS)} runs to {OUT}")


if __name__ == "__main__":
    main()
