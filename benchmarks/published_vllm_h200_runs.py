"""Published vLLM serving runs on H200 GPUs (DeepSeek-R1, vLLM 0.8.4, 8 x H200), written as measured-run files.

    python benchmarks/published_vllm_h200_runs.py   # writes benchmarks/results/published_runs/deepseek_r1_h200/*.json

Source: the SkyPilot team's "llm-ie-benchmarks" repository (the vLLM numbers SGLang's issue #5514 and
Michaelvll/llm-ie-benchmarks#3 compare against), raw `sglang.bench_serving` printouts of vLLM in its logs:

- 50 prompts: https://github.com/Michaelvll/llm-ie-benchmarks/blob/decfb3815be6f61a6752241dbe4863d2884e534a/sgl/logs/vllm-deepseek-r1.log
- 200 prompts: https://github.com/Michaelvll/llm-ie-benchmarks/blob/d553e2aa5dd1dc2ed9cd2ab7a0a87f6dda8fdc9d/sgl/logs/vllm-deepseek-r1-200.log
- serving and client commands: https://github.com/Michaelvll/llm-ie-benchmarks/blob/decfb3815be6f61a6752241dbe4863d2884e534a/sgl/benchmark.yaml
  (`resources: accelerators: H200:8`; `uv pip install vllm==0.8.4`; `VLLM_USE_FLASHINFER_SAMPLER=1 vllm serve
  deepseek-ai/DeepSeek-R1 --tensor-parallel-size 8 --trust-remote-code --no-enable-prefix-caching
  --disable-log-requests`; client `python -m sglang.bench_serving --backend vllm --num-prompts N --request-rate 10
  --dataset-name random --random-input-len ISL --random-output-len OSL --random-range-ratio 1`).

Every run: DeepSeek-R1 (its published FP8 block-quantized weights; the DeepSeek-V3 architecture, the catalogue's
deepseek-v3) with tensor parallelism 8 on one 8 x H200 node, Poisson arrivals at 10 requests/s (seed 1), every
prompt exactly ISL tokens and every output exactly OSL tokens (range ratio 1; the client's ignore_eos is on, as
the printed totals show: N x ISL input and N x OSL generated tokens). The pairs are 1000/2000, 5000/1000,
10000/500 and 30000/100, with 50 and with 200 prompts. The client prints no TPOT: each file holds the printout's
figures under vLLM's result keys (mean, median, P95, P99 ITL; mean, median, P99 TTFT; mean and median E2E);
nothing else is added.

Second source, GPUStack's performance lab, "Optimizing DeepSeek-R1 Throughput on NVIDIA H200 GPUs"
(https://github.com/gpustack/gpustack/blob/a5c9fafc3022e81779c2c5ade32c5b703ce2248c/docs/performance-lab/deepseek-r1/h200.md,
section "Other Benchmark Cases", "Baseline benchmark results" of `vllm serve deepseek-ai/DeepSeek-R1-0528 -tp 8`,
vLLM v0.11.0, "NVIDIA H200 GPUs", one node): `vllm bench serve --backend openai-chat --dataset-name random` at
32000/100 (100 requests), 4000/200 (500), 2000/100 (500) and 128/4 (1,000), every request sent at once, no
--ignore-eos (the printed totals are N x OSL generated tokens), written the way benchmarks/published_gpustack_runs.py
writes the Qwen3-14B rows; and "ShareGPT batch size 4": 100 ShareGPT requests at most 4 at a time (22,836 input
and 21,338 generated tokens in all; the page gives no per-request lengths, so a replay uses the means, 228 and
213 tokens: a low-load decode check, its TTFT only roughly comparable).
"""

from __future__ import annotations

import json
from pathlib import Path

from published_gpustack_runs import latencies, totals

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "published_runs" / "deepseek_r1_h200"
REPO = "https://github.com/Michaelvll/llm-ie-benchmarks/blob/"
LOG = {
    50: REPO + "decfb3815be6f61a6752241dbe4863d2884e534a/sgl/logs/vllm-deepseek-r1.log",
    200: REPO + "d553e2aa5dd1dc2ed9cd2ab7a0a87f6dda8fdc9d/sgl/logs/vllm-deepseek-r1-200.log",
}
# (prompts, ISL, OSL): duration s, then mean / median / P99 TTFT, mean / median / P95 / P99 ITL and mean / median
# E2E latency (ms), as printed
ROWS = {
    (50, 1000, 2000): (95.04, 328.06, 314.12, 662.89, 46.12, 45.14, 45.94, 46.87, 92212.10, 92201.92),
    (50, 5000, 1000): (62.53, 5793.65, 5924.34, 10211.59, 54.32, 47.88, 48.55, 485.29, 59895.99, 60022.97),
    (50, 10000, 500): (57.25, 14620.56, 14881.48, 27253.65, 79.45, 51.01, 520.39, 538.48, 54001.24, 54146.39),
    (50, 30000, 100): (132.22, 62988.26, 63173.23, 122054.24, 371.47, 495.43, 782.85, 822.89, 99548.06, 106739.05),
    (200, 1000, 2000): (149.07, 343.04, 326.31, 666.24, 67.17, 63.21, 66.29, 223.22, 134241.80, 134390.65),
    (200, 5000, 1000): (178.91, 47140.98, 20816.75, 101685.87, 83.32, 58.91, 274.55, 499.72, 130106.83, 123673.43),
    (200, 10000, 500): (287.54, 114520.34, 104144.38, 245243.21, 145.26, 53.16, 536.45, 544.57, 186732.71, 179254.59),
    (200, 30000, 100): (594.30, 284684.26, 286814.85, 566028.74, 527.34, 616.68, 814.72, 823.03, 336627.43, 341268.37),
}  # fmt: skip


def run_file(n: int, isl: int, osl: int, row: tuple) -> dict:
    duration, ttft_mean, ttft_med, ttft_p99, itl_mean, itl_med, itl_p95, itl_p99, e2e_mean, e2e_med = row
    tin, tout = n * isl, n * osl
    return (
        {
            "date": "published",
            "backend": "vllm 0.8.4 (vllm serve deepseek-ai/DeepSeek-R1 --tensor-parallel-size 8, V1 defaults)",
            "model_id": "deepseek-ai/DeepSeek-R1",
            "tokenizer_id": "deepseek-ai/DeepSeek-R1",
            "num_prompts": n,
            "request_rate": 10.0,
            "burstiness": 1.0,
            "max_concurrency": None,
            "ignore_eos": True,
            "source": f"{LOG[n]} (sglang.bench_serving --backend vllm, random {isl} input / {osl} output)",
            "gpu": "h200",
            "tensor_parallel_size": 8,
        }
        | totals(n, duration, tin, tout)
        | {
            "mean_ttft_ms": ttft_mean,
            "median_ttft_ms": ttft_med,
            "p99_ttft_ms": ttft_p99,
            "mean_itl_ms": itl_mean,
            "median_itl_ms": itl_med,
            "p95_itl_ms": itl_p95,
            "p99_itl_ms": itl_p99,
            "mean_e2el_ms": e2e_mean,
            "median_e2el_ms": e2e_med,
        }
    )


GPUSTACK = (
    "https://github.com/gpustack/gpustack/blob/a5c9fafc3022e81779c2c5ade32c5b703ce2248c/"
    "docs/performance-lab/deepseek-r1/h200.md"
)
# case: requests, max concurrency (None: all at once), duration s, total input, total generated, then mean /
# median / P99 of TTFT, TPOT and ITL (ms), as printed
GPUSTACK_ROWS = {
    "32k": (100, None, 206.90, 3199900, 10000, 101351.99, 101163.80, 200267.68, 365.79, 400.72, 404.78, 362.20, 459.96, 614.75),
    "4k": (500, None, 132.68, 1997530, 100000, 63058.71, 61952.74, 124112.96, 164.23, 177.37, 195.80, 163.74, 57.87, 383.79),
    "2k": (500, None, 59.26, 998393, 50000, 28911.90, 27559.21, 53497.07, 237.02, 276.56, 322.76, 235.10, 357.74, 379.46),
    "128": (1000, None, 22.07, 126882, 4000, 19392.11, 18992.42, 21440.63, 351.83, 389.74, 432.12, 263.87, 368.43, 470.22),
    "sharegpt_c4": (100, 4, 108.42, 22836, 21338, 123.30, 117.53, 258.12, 19.36, 19.13, 22.67, 19.41, 18.84, 48.61),
}  # fmt: skip
GPUSTACK_CASE = {"32k": "random 32000/100", "4k": "random 4000/200", "2k": "random 2000/100",
                 "128": "random 128/4", "sharegpt_c4": "ShareGPT batch size 4"}  # fmt: skip


def gpustack_file(case: str, row: tuple) -> dict:
    n, conc, duration, tin, tout, *lat = row
    out = {
        "date": "published",
        "backend": "vllm v0.11.0 (vllm serve deepseek-ai/DeepSeek-R1-0528 -tp 8, defaults)",
        "model_id": "deepseek-ai/DeepSeek-R1-0528",
        "tokenizer_id": "deepseek-ai/DeepSeek-R1-0528",
        "num_prompts": n,
        "request_rate": "inf",
        "burstiness": 1.0,
        "max_concurrency": conc,
        "ignore_eos": False,
        "source": f"{GPUSTACK} (Other Benchmark Cases, Baseline benchmark results, {GPUSTACK_CASE[case]})",
        "gpu": "h200",
        "tensor_parallel_size": 8,
    }
    return out | totals(n, duration, tin, tout) | latencies(lat)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for (n, isl, osl), row in ROWS.items():
        (OUT / f"vllm_h200x8_{isl}_{osl}_n{n}.json").write_text(
            json.dumps(run_file(n, isl, osl, row), indent=1) + "\n"
        )
    for case, row in GPUSTACK_ROWS.items():
        (OUT / f"gpustack_vllm_h200x8_{case}.json").write_text(
            json.dumps(gpustack_file(case, row), indent=1) + "\n"
        )
    print(f"wrote {len(ROWS) + len(GPUSTACK_ROWS)} runs to {OUT}")


if __name__ == "__main__":
    main()
