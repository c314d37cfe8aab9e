"""GPUs we cannot run here, against published measurements: what each profile was fitted to, and the held-out checks.

    python benchmarks/gpu_published.py     # prints the table, writes benchmarks/results/gpu_published.md

Two kinds of rows. **fit**: a published ceiling a profile takes as its sustained rate (`sustained` in the
profile, its source cited there); these are inputs, never reported as checks. **check**: a published
measurement no profile was fitted to, with our forecast of the same work and the error
(forecast / published − 1). Each row names its engine; our forecasts are for our own engine's kernels
(CUDA graphs, fused GEMMs), so a published run of another engine differs by that engine's overheads too,
and the row says so.
"""

from __future__ import annotations

import argparse
import functools
from dataclasses import dataclass
from pathlib import Path

import _checkout  # noqa: F401  (first: the checkout's root on sys.path)
import numpy as np

from core.cost_model import BatchShape, CostModel
from core.engine_profile import load_engine_profile
from core.hardware import load_profile
from core.model_spec import load_model

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30
T4_GEMV = (
    "https://github.com/pytorch/pytorch/issues/195716 (table 'fp16, [M,896] @ [896,4864]', Tesla T4 column)"
)
T4_HF = "https://kd.iw.mk/dohu012/llm-quantization-benchmark (table: Qwen2.5-0.5B-Instruct on a Colab T4, FP16 row)"
T4_COPY = (
    "github.com/router-gao/cuda-demo at 8e2367b, cuda-samples/02-cuda-bandwidth.md ('T4 bandwidth output': CUDA samples "
    "bandwidthTest, Device to Device, 32,000,000 bytes)"
)
T4_COPY_GBPS = 239.6  # T4_COPY's figure, GB/s (bytes read + written)
CHSASANK = (
    "github.com/chsasank/device-benchmarks at 06f4d7e, README.md 'Matrix Multiplication FLOPS and BW' table "
    "(benchmark.py at 89a1dae: torch.matmul timed per call with a synchronize; a.copy_(b), 2 x bytes / time)"
)
AZURE_MI300X = (
    "github.com/samuel-bohman/AI-benchmarking-guide at 3de0c29, Azure_Results/ND_MI300X_v5_results.md "
    "(Azure ND MI300X v5, ROCm 6.2, 10,000 warm-ups)"
)
T4_AWQ = (
    "github.com/casper-hansen/AutoAWQ/pull/92 (casper-hansen's comment: 'GPU: Tesla T4, Model: "
    "TheBloke/Mistral-7B-OpenOrca-AWQ, Version: GEMM' table, row batch 1, prefill 128, decode 128)"
)
A100_VLLM = (
    "https://johnmusgrave.com/p/vllm-throughput-latency-sweep-on ('decode at one request per time runs at about 75 "
    "tokens/sec'; vLLM 0.23.0, vllm bench serve, random 1024 in / 128 out, --ignore-eos, max concurrency 1)"
)


@dataclass
class Row:
    gpu: str
    what: str
    engine: str
    source: str
    published: float  # in `unit`
    unit: str
    forecast: float | None = None  # filled for checks
    role: str = "check"
    note: str = ""
    stand_in: bool = False  # no engine profile matches the row's engine: ours forecasts it (said in the note)


def gemm_seconds(gpu: str, m: int, k: int, n: int) -> float:
    """Our cost model's time for one [m, k] @ [k, n] 16-bit GEMM on the GPU (the fitted GEMM curve)."""
    spec = load_model("qwen2.5-0.5b")  # any model: _weight_gemm uses only the profile and the shape
    return CostModel(load_profile(gpu), spec, "fp16", serving_host=False)._weight_gemm(m, k, n)


def decode_tokens_per_s(
    gpu: str, model: str, context: int, dtype: str = "fp16", engine: str | None = None
) -> float:
    """Batch-1 decode steps on the GPU profile with an engine profile (None: ours, CUDA graphs), as the simulator
    builds its cost model for a scenario naming that engine (eager launches where the engine has no graphs)."""
    eng = load_engine_profile(engine) if engine else None
    eager = eng is not None and eng.scheduling.cuda_graphs == "none"
    cm = CostModel(
        load_profile(gpu), load_model(model), dtype, eager_prefill=eager, engine=eng, eager_decode=eager
    )
    return 1.0 / cm.step_time(BatchShape.of([], [context]))


KAGGLE = (
    "github.com/kaggle-vllm/kaggle-vllm at 39f194e, research/tables/m4_crossover_cells.csv (tp1_ttft_ms, tp1_tpot_ms: "
    "means of 5 fresh-server repetitions, closed loop of C users, max(20, 3C) requests after C warm-ups, exact token "
    "lengths, ignore_eos); engine from artifacts/kaggle-2026-09-08-milestone-4/compatibility/qwen25_3b/"
    "qwen25_3b-short-r00-tp1-c01.json: 'vllm serve --dtype float16 --enforce-eager --max-num-seqs 64 --max-model-len "
    "4096 --no-enable-prefix-caching', vLLM 0.18.2.dev0 built for sm75 (TRITON_ATTN backend), one Kaggle Tesla T4"
)
DATA = (
    ROOT / "benchmarks" / "data"
)  # the two models' config.json (the planner's parameter counts match the study's)
KAGGLE_WORKLOADS = {"short": (128, 64), "balanced": (512, 256), "prefill_heavy": (2048, 128)}
T4_ENGINE = "vllm-t4"  # engine_profiles/vllm-t4.yaml: fitted to the Qwen cells, the Llama cells held out
T4_FIT_MODEL, T4_HELD_MODEL = "qwen2.5-3b-instruct", "llama-3.2-3b-instruct"


def kaggle_cells() -> dict[tuple[str, str, int], tuple[float, float]]:
    """(model, workload, concurrency) -> published (TTFT ms, TPOT ms), from the table's run files' source
    (benchmarks/published_kaggle_t4_runs.py holds the table's figures)."""
    from published_kaggle_t4_runs import ROWS

    return {k: (v[1], v[2]) for k, v in ROWS.items()}


def closed_loop_ms(
    gpu: str, model: str, isl: int, osl: int, dtype: str = "fp16", users: int = 1, engine: str | None = None,
    requests: int = 20, stat: str = "mean",
) -> tuple[float, float]:  # fmt: skip
    """(TTFT, TPOT) in ms (`stat`: mean or median) of our simulator for `users` users each sending fixed-length
    requests back to back, with the serving settings of the Kaggle runs (eager launches, 64 sequences, a 2,048-token
    budget, no prefix caching) and an engine profile (None: ours)."""
    from simulator.scenario import parse_scenario
    from simulator.simulation import simulate

    data = {
        "name": f"closed-{gpu}-{isl}-{osl}-c{users}",
        "seed": 0,
        "model": model,
        "hardware": {"gpu": gpu},
        "serving": {
            "batching": {"max_num_seqs": 64, "max_num_batched_tokens": 2048},
            "memory": {"max_model_len": 4096, "gpu_memory_utilization": 0.9},
            "precision": {"weight_dtype": dtype, "kv_dtype": dtype},
            "caching": {"prefix_caching": False},
            "cuda_graphs": "none",
        },
        "workload": {
            "arrival": {"process": "closed_loop", "concurrency": users},
            "prompt_tokens": {"dist": "fixed", "value": isl},
            "output_tokens": {"dist": "fixed", "value": osl},
            "num_requests": requests,
        },
    }
    if engine:
        data["engine"] = engine
    s = simulate(parse_scenario(data)).summary
    return s[f"{stat}_ttft_ms"], s[f"{stat}_tpot_ms"]


def kaggle_rows() -> list[Row]:
    """vLLM 0.18 (eager) on a Kaggle T4: TTFT and TPOT of two 3B models at three fixed shapes and six closed-loop
    concurrencies, forecast with the vLLM-on-Turing engine profile. Its terms were fitted to the Qwen cells (shown
    as fit rows at one user, their residuals; every cell in benchmarks/results/from_benchmark_vllm-t4.md); the
    Llama cells were never fitted and are the checks."""
    out = []
    for (name, workload, users), (ttft, tpot) in kaggle_cells().items():
        held = name == T4_HELD_MODEL
        if not held and users != 1:
            continue
        isl, osl = KAGGLE_WORKLOADS[workload]
        from published_kaggle_t4_runs import requests

        f_ttft, f_tpot = closed_loop_ms(
            "t4",
            str(DATA / f"{name}.json"),
            isl,
            osl,
            users=users,
            engine=T4_ENGINE,
            requests=requests(users),
        )
        for what, pub, fc in (("TTFT", ttft, f_ttft), ("TPOT", tpot, f_tpot)):
            out.append(
                Row("t4", f"{name} fp16 {what}, {users} user{'s' if users > 1 else ''}, {isl} in / {osl} out",
                    "vLLM 0.18 --enforce-eager", KAGGLE, pub, "ms", fc, role="check" if held else "fit",
                    note=f"engine profile {T4_ENGINE} (engine_profiles/{T4_ENGINE}.yaml)" + (
                        "" if held else ": fitted to this model's 18 cells, the row's residual shown")))  # fmt: skip
    return out


def prefill_split(ttft_ms: dict[int, float], model: str) -> tuple[float, float, float]:
    """Fit TTFT(n) = a + b·n + c·n² through three prompt lengths: (a ms, the linear layers' TFLOP/s from b, the
    attention's TFLOP/s from c), with the model's FLOPs per prompt token and per causal token pair."""
    from core.model_spec import load_model

    n = sorted(ttft_ms)
    a, b, c = np.linalg.solve(np.array([[1.0, x, x * x] for x in n]), np.array([ttft_ms[x] for x in n]))
    spec = load_model(model)
    linear = 2.0 * sum(
        g.k * g.n * g.layers for g in spec.dense_gemms
    )  # per prompt token (LM head: last only)
    pair = spec.attn_flops_per_pair * spec.num_layers / 2.0  # causal: half the pairs
    return a, linear / (b * 1e-3) / 1e12, pair / (c * 1e-3) / 1e12


def prefill_lines() -> str:
    """The published and forecast TTFTs of the Kaggle rows at one user split into a fixed part, a per-token part
    (the linear layers) and a per-token-pair part (attention): our engine launched eagerly, and the vLLM-on-Turing
    engine profile."""
    lines = []
    cells = kaggle_cells()
    for name in (T4_FIT_MODEL, T4_HELD_MODEL):
        model = str(DATA / f"{name}.json")
        pub = {KAGGLE_WORKLOADS[w][0]: v[0] for (m, w, u), v in cells.items() if m == name and u == 1}
        (pa, pl, pt) = prefill_split(pub, model)
        parts = [
            f"- {name}: published TTFT = {pa:.0f} ms + linear layers at {pl:.1f} TFLOP/s + attention at {pt:.2f} TFLOP/s"
        ]
        for label, eng in (("our engine, eager", None), (f"{T4_ENGINE} profile", T4_ENGINE)):
            ours = {
                isl: closed_loop_ms("t4", model, isl, osl, engine=eng)[0]
                for isl, osl in KAGGLE_WORKLOADS.values()
            }
            oa, ol, ot = prefill_split(ours, model)
            parts.append(f"{label} = {oa:.0f} ms + {ol:.1f} TFLOP/s + {ot:.2f} TFLOP/s")
        lines.append("; ".join(parts))  # fmt: skip
    return "\n".join(lines)


def host_seconds(gpu: str, model: str, engine: str) -> float:
    """The engine profile's host seconds of a batch-1 decode step (per step and per sequence)."""
    cm = CostModel(
        load_profile(gpu), load_model(model), "fp16", engine=load_engine_profile(engine), eager_decode=True
    )
    return cm.host_step + cm.host_seq


TRTLLM = (
    "TensorRT-LLM perf overview, v0.14.0 data (github.com/NVIDIA/TensorRT-LLM docs/source/performance/perf-overview.md "
    "at v0.14/v0.15, 'LLaMA v3.1 8B', TP 1): trtllm-bench throughput, offline, requests at an infinite rate, "
    "fixed lengths, total output tokens/s"
)
# (ISL, OSL): output tokens/s of Llama-3.1-8B at TP 1 on H100 80GB HBM3 FP16, A100-SXM4-80GB FP16, H100 FP8, H200 FP8
TRTLLM_8B = {
    (128, 128): (15571.6549, 6701.7958, 26933.1886, 27778.8885),
    (128, 2048): (9150.7477, 4963.4443, 18995.2523, 22948.5383),
    (128, 4096): (5368.9227, 3011.3335, 11815.449, 15583.3035),
    (500, 2000): (7498.3331, 3945.1912, 14993.328, 19510.4015),
    (1000, 1000): (7054.5156, 3634.3886, 14108.0361, 16414.6988),
    (2048, 128): (1904.3259, 795.389, 3460.3545, 3619.4309),
    (2048, 2048): (4159.6857, 2264.9513, 8777.6623, 11032.9729),
    (5000, 500): (1708.0353, 790.6631, 3258.2001, 3787.6721),
}


def offline_output_tps(gpu: str, isl: int, osl: int, dtype: str, requests: int = 600) -> float:
    """Output tokens/s of our simulator for an offline run as trtllm-bench's: every request at once, fixed lengths,
    Llama-3.1-8B, up to 256 sequences a step (both GPUs alike; KV room limits them where it is smaller)."""
    from simulator.scenario import parse_scenario
    from simulator.simulation import simulate

    kv = "fp8" if dtype == "fp8" else "bf16"  # trtllm-bench's FP8 engines store the KV cache in FP8 too
    sc = parse_scenario(
        {
            "name": f"trtllm-{gpu}-{isl}-{osl}",
            "seed": 0,
            "model": "llama-3.1-8b",
            "hardware": {"gpu": gpu},
            "serving": {
                "batching": {"max_num_seqs": 256, "max_num_batched_tokens": 8192},
                "precision": {"weight_dtype": dtype, "kv_dtype": kv},
            },
            "workload": {
                "arrival": {"process": "constant", "rate_per_s": 1e6},
                "prompt_tokens": {"dist": "fixed", "value": isl},
                "output_tokens": {"dist": "fixed", "value": osl},
                "num_requests": requests,
            },
        }
    )
    return simulate(sc).summary["throughput"]["output_tokens_per_s"]


def ratio_rows() -> list[Row]:
    """Cross-GPU ratios of one engine's published runs against ours: the engine's own overheads mostly cancel, so
    the ratio checks what the GPU profiles say about one GPU against another (A100 transferred; H200 measured)."""
    out = []
    for (isl, osl), (h100_16, a100_16, _, _) in TRTLLM_8B.items():
        ours = offline_output_tps("a100-80gb-sxm", isl, osl, "bf16") / offline_output_tps(
            "h100-sxm", isl, osl, "bf16"
        )
        out.append(Row("a100-80gb-sxm", f"Llama-3.1-8B 16-bit {isl}/{osl}, A100 / H100 output tokens/s", "TensorRT-LLM 0.14",
                       TRTLLM, a100_16 / h100_16, "×", ours, role="check",
                       note="ratio of two runs of one engine; ours: our engine on both (bf16 = FP16's bytes and rate)"))  # fmt: skip
    for (isl, osl), (_, _, h100_8, h200_8) in TRTLLM_8B.items():
        ours = offline_output_tps("h200", isl, osl, "fp8") / offline_output_tps("h100-sxm", isl, osl, "fp8")
        out.append(Row("h200", f"Llama-3.1-8B FP8 {isl}/{osl}, H200 / H100 output tokens/s", "TensorRT-LLM 0.14",
                       TRTLLM, h200_8 / h100_8, "×", ours, role="check",
                       note="both GPUs measured here: checks the measured profiles the transfer rule starts from"))  # fmt: skip
    return out


# ---------------------------------------------------------------- L4, H100 PCIe, MI300X, B200: published runs
L4_VLLM = (
    "github.com/ree2raz/inference-bench at 3f89896, results/summary.csv (rows vllm, short; medians of 3 repeats of each "
    "run's p50) and bench_lib.py at 26d88f8 (vllm/vllm-openai:v0.8.5, 'vllm.entrypoints.openai.api_server --model "
    "Qwen/Qwen2.5-7B-Instruct --max-num-seqs 64 --dtype auto --gpu-memory-utilization 0.90', streaming chat "
    "completions, temperature 0, max_tokens 128, C requests in flight, 100 measured after 2C warm-ups), one L4 on Modal"
)
# concurrency -> (TTFT p50 s, TPOT p50 s, output tokens/s), the summary's vllm short rows
L4_CELLS = {1: (0.0695, 0.0583, 17.11), 16: (0.1956, 0.0619, 254.33), 64: (0.5815, 0.0757, 831.3)}
L4_PROMPT = (
    200  # the README's '~200 input tokens' of the short regime (chat template included; not per request)
)
H100P_VLLM = (
    "github.com/VRscience/LLM_ML_benchmarking at cf72718, data/benchmark_results.csv (rows Llama-3.1-8B-Instruct, "
    "vllm, tensor_parallelism 1: AIPerf, fixed 512 in (input_std 0) / 128 out, C concurrent users; columns "
    "ttft_avg_ms, itl_avg_ms, request_count); vLLM version and server flags not in the dataset"
)
# concurrency -> (TTFT avg ms, ITL avg ms, requests) on '8x NVIDIA H100 PCIe' and '8x NVIDIA H200' (one GPU used)
H100P_CELLS = {
    1: (28.2, 9.62, 500),
    10: (120.82, 10.45, 500),
    50: (328.33, 13.97, 500),
    100: (387.62, 16.32, 500),
}
H200_CELLS = {
    1: (19.67, 5.09, 250),
    10: (200.07, 5.77, 250),
    50: (588.06, 10.21, 250),
    100: (687.01, 12.01, 250),
}
MI300X_VLLM = (
    "github.com/samuel-bohman/AI-benchmarking-guide at 3de0c29, Azure_Results/ND_MI300X_v5_results.md ('End-to-End "
    "Inference Workloads - vLLM', LLAMA 3.1 (8B), tp 1) and Benchmarks/AMD/LLMBenchmark.py at c7295cb (rocm/vllm-dev:"
    "20241121-tuned, benchmark_throughput.py --model amd/Meta-Llama-3.1-8B-Instruct-FP8-KV --quantization fp8 "
    "--kv-cache-dtype fp8 --num-scheduler-steps 10 --enable-chunked-prefill false --max-num-batched-tokens 131072 "
    "--max-model-len 8192 --max-num-seqs 3000, 1000 prompts; the figure parsed is the printout's output tokens/s)"
)
MI300X_8B = {(128, 128): 18149, (128, 1024): 19579, (128, 2048): 16394, (500, 2000): 13559, (1024, 1024): 10995, (2048, 2048): 7356}  # fmt: skip
ZZC = (
    "github.com/zzc0721/torch-performance-test-data at bbb8e24, database.md, and test.py at 6a6d5ce (torch.mm of "
    "square matrices 1024-10240, 30 back to back after 6 warm-ups, best size)"
)
# GPU -> (row, dtype, TFLOP/s) of that table
ZZC_ROWS = {
    "t4": ("NVIDIA Tesla T4 16GB (Google Colab, PyTorch 2.8.0)", "fp16", 41.91),
    "a100-40gb": ("NVIDIA A100 40GB (container cloud, PyTorch 2.2.0)", "bf16", 246.33),
    "a100-80gb-sxm": ("NVIDIA A100 SXM4 80GB (container cloud, PyTorch 2.8.0)", "bf16", 264.53),
    "b200": ("NVIDIA B200 180GB (GCP a4-highgpu-8g, PyTorch 2.8.0)", "bf16", 1696.03),
}


def serving_ms(gpu: str, model: str, isl: int, osl: int, users: int, requests: int, dtype: str = "bf16",
               max_num_seqs: int = 256, budget: int = 8192) -> dict[str, float]:  # fmt: skip
    """Our simulator's summary of a closed loop of `users` users sending fixed-length requests (our engine: CUDA
    graphs, chunked prefill), the published run's batching limits."""
    from simulator.scenario import parse_scenario
    from simulator.simulation import simulate

    sc = parse_scenario(
        {
            "name": f"closed-{gpu}-{isl}-{osl}-c{users}",
            "seed": 0,
            "model": model,
            "hardware": {"gpu": gpu},
            "serving": {
                "batching": {"max_num_seqs": max_num_seqs, "max_num_batched_tokens": budget},
                "precision": {"weight_dtype": dtype, "kv_dtype": dtype},
            },
            "workload": {
                "arrival": {"process": "closed_loop", "concurrency": users},
                "prompt_tokens": {"dist": "fixed", "value": isl},
                "output_tokens": {"dist": "fixed", "value": osl},
                "num_requests": requests,
            },
        }
    )
    return simulate(sc).summary


def l4_rows() -> list[Row]:
    """vLLM 0.8.5 on one L4 (Modal), Qwen2.5-7B bf16, short chat requests: our engine stands in (both CUDA graphs)."""
    out = []
    for users, (ttft, tpot, tps) in L4_CELLS.items():
        s = serving_ms("l4", "qwen2.5-7b", L4_PROMPT, 128, users, 100, max_num_seqs=64, budget=2048)
        note = ("no vLLM engine profile for this GPU: ours stands in (both run decode under CUDA graphs); prompts "
                f"taken as {L4_PROMPT} tokens; vLLM's token budget taken as 2,048 (its API-server default below 70 GiB)")  # fmt: skip
        if users == 1:
            out.append(Row("l4", "Qwen2.5-7B bf16 TTFT p50, 1 user, ~200 in / 128 out", "vLLM 0.8.5", L4_VLLM,
                           ttft * 1e3, "ms", s["median_ttft_ms"], stand_in=True, note=note))  # fmt: skip
        out.append(Row("l4", f"Qwen2.5-7B bf16 TPOT p50, {users} user{'s' if users > 1 else ''}, ~200 in / 128 out",
                       "vLLM 0.8.5", L4_VLLM, tpot * 1e3, "ms", s["median_tpot_ms"], stand_in=True, note=note))  # fmt: skip
        if users == 64:
            out.append(Row("l4", "Qwen2.5-7B bf16 output tokens/s, 64 users, ~200 in / 128 out", "vLLM 0.8.5", L4_VLLM,
                           tps, "tokens/s", s["throughput"]["output_tokens_per_s"], stand_in=True, note=note))  # fmt: skip
    return out


def h100_pcie_rows() -> list[Row]:
    """vLLM on one H100 PCIe (Llama-3.1-8B, 512/128, AIPerf): TTFT and ITL at 1-100 users with our engine standing
    in, and the ITL's ratio to the same pipeline's H200 runs (the engine's own overheads mostly cancel)."""
    out = []
    for users, (ttft, itl, n) in H100P_CELLS.items():
        s = serving_ms("h100-pcie", "llama-3.1-8b", 512, 128, users, n)
        h200 = serving_ms("h200", "llama-3.1-8b", 512, 128, users, H200_CELLS[users][2])
        who = f"{users} user{'s' if users > 1 else ''}"
        note = "no vLLM engine profile for this GPU: ours stands in (bf16; vLLM's defaults for the batching)"
        out.append(Row("h100-pcie", f"Llama-3.1-8B TTFT mean, {who}, 512 in / 128 out", "vLLM (AIPerf)", H100P_VLLM,
                       ttft, "ms", s["mean_ttft_ms"], stand_in=True, note=note))  # fmt: skip
        out.append(Row("h100-pcie", f"Llama-3.1-8B ITL mean, {who}, 512 in / 128 out", "vLLM (AIPerf)", H100P_VLLM,
                       itl, "ms", s["mean_itl_ms"], stand_in=True, note=note))  # fmt: skip
        out.append(Row("h100-pcie", f"Llama-3.1-8B ITL mean, {who}, H100 PCIe / H200", "vLLM (AIPerf)", H100P_VLLM,
                       itl / H200_CELLS[users][1], "×", s["mean_itl_ms"] / h200["mean_itl_ms"],
                       note="ratio of two runs of one pipeline and engine; ours: our engine on both (H200: measured "
                       "here)"))  # fmt: skip
    return out


def mi300x_rows() -> list[Row]:
    """vLLM (ROCm) offline on one MI300X, Llama-3.1-8B FP8 weights and KV: output tokens/s, our engine standing in."""
    from simulator.scenario import parse_scenario
    from simulator.simulation import simulate

    out = []
    for (isl, osl), tps in MI300X_8B.items():
        sc = parse_scenario(
            {
                "name": f"mi300x-offline-{isl}-{osl}",
                "seed": 0,
                "model": "llama-3.1-8b",
                "hardware": {"gpu": "mi300x"},
                "serving": {
                    "batching": {
                        "max_num_seqs": 3000,
                        "max_num_batched_tokens": 131072,
                        "chunked_prefill": False,
                    },
                    "memory": {"max_model_len": 8192, "gpu_memory_utilization": 0.9},
                    "precision": {"weight_dtype": "fp8", "kv_dtype": "fp8"},
                },
                "workload": {
                    "arrival": {"process": "constant", "rate_per_s": 1e6},
                    "prompt_tokens": {"dist": "fixed", "value": isl},
                    "output_tokens": {"dist": "fixed", "value": osl},
                    "num_requests": 1000,
                },
            }
        )
        ours = simulate(sc).summary["throughput"]["output_tokens_per_s"]
        out.append(Row("mi300x", f"Llama-3.1-8B FP8 offline {isl}/{osl}, output tokens/s", "vLLM (ROCm, Nov 2024)",
                       MI300X_VLLM, float(tps), "tokens/s", ours, stand_in=True,
                       note="no vLLM-on-ROCm engine profile: ours stands in (CUDA-graph-like decode; vLLM ran 10 "
                       "scheduler steps per sync); every request at once, fp8 KV, prompts-first batching"))  # fmt: skip
    return out


def gemm_tflops(gpu: str, n: int) -> float:
    """Our cost model's rate for one n×n×n 16-bit GEMM on the GPU, TFLOP/s."""
    return 2.0 * n**3 / gemm_seconds(gpu, n, n, n) / 1e12


def gemm_check_rows() -> list[Row]:
    """A second published matmul figure per GPU, held out: our GEMM curve's best rate over the same sizes."""
    out = []
    for gpu, (label, dtype, tflops) in ZZC_ROWS.items():
        ours = max(gemm_tflops(gpu, n) for n in (1024, 2048, 4096, 8192, 10240))
        note = f"row {label}; a burst of 30 matmuls (well under a second), not a sustained run"
        if gpu == "t4":
            note += (": the T4's fit row is 24 TFLOP/s back to back under its 70 W cap; a burst runs at boost clock "
                     "before the cap pulls it down")  # fmt: skip
        out.append(Row(gpu, f"{dtype} matmul, best of n = 1024-10240", "torch.mm (cuBLAS)", ZZC, tflops, "TFLOP/s",
                       ours, note=note))  # fmt: skip
    return out


@functools.lru_cache(maxsize=1)
def rows() -> list[Row]:
    out = [
        Row("t4", "fp16 GEMM 4096³ back to back", "cuBLAS", "https://forums.developer.nvidia.com/t/about-gpu-peak-performance/264462",
            24.0, "TFLOP/s", role="fit", note="the T4's sustained fp16 rate (70 W power cap)"),
        Row("t4", "device-to-device copy, bytes read + written", "CUDA samples bandwidthTest", T4_COPY, T4_COPY_GBPS, "GB/s",
            role="fit", note="the T4's sustained memory bandwidth (0.75 of the 320 GB/s datasheet)"),
        Row("a100-40gb / a100-80gb-sxm", "bf16 matmul, best shape", "torch.matmul (mamf-finder)",
            "github.com/stas00/ml-engineering compute/accelerator README, MAMF table", 271.2, "TFLOP/s", role="fit"),
        Row("a100-40gb", "device memcopy", "CUDA", "github.com/PTsolvers/gpu-workshop-JuliaCon23/issues/7", 1355.0, "GB/s", role="fit"),
        Row("a100-80gb-sxm", "DRAM read kernel", "CUDA (Nsight Compute)",
            "forums.developer.nvidia.com/t/trouble-to-reach-peak-bandwidth-of-a100/339083", 1800.0, "GB/s", role="fit"),
        Row("b200", "bf16 / fp8 matmul, best shape", "torch.matmul (mamf-finder)",
            "github.com/stas00/ml-engineering compute/accelerator README, MAMF table", 1745.0, "TFLOP/s (bf16)", role="fit",
            note="fp8 3,432.5"),
        Row("mi300x", "bf16 matmul, best shape", "torch.matmul (mamf-finder, TunableOp)",
            "github.com/stas00/ml-engineering compute/accelerator README, MAMF table", 668.4, "TFLOP/s", role="fit"),
        Row("mi300x", "fp8 GEMM 6144x12288x12288", "hipBLASLt", AZURE_MI300X, 1159.54, "TFLOP/s", role="fit",
            note="the suite's best fp8 row; on an H100 SXM the same suite reads 1,382.2 (ND_H100_v5_results.md), "
            "our H100 calibration 1,523"),
        Row("mi300x", "HBM copy, bytes read + written", "BabelStream (HIP)", AZURE_MI300X, 4110.0, "GB/s", role="fit",
            note="replaces a secondary source's 81% of datasheet (4,293); on an H100 SXM the same suite reads 2,900 GB/s, "
            "our H100 calibration 3,025"),
        Row("h100-pcie", "bf16 matmul, square up to 6888, one call timed", "torch.matmul", CHSASANK, 449.0, "TFLOP/s",
            role="fit", note="a single timed call per size: a lower bound on the sustained rate; fp8 stays an "
            "assumption (scaled by this bf16 fraction)"),
        Row("h100-pcie", "device copy, bytes read + written", "torch copy_", CHSASANK, 1630.0, "GB/s", role="fit",
            note="the same script's T4 copy (240 GB/s) matches bandwidthTest's 239.6"),
        Row("a10g", "device copy, bytes read + written (an A10, not an A10G)", "torch copy_", CHSASANK, 469.0, "GB/s",
            role="fit", note="measured on an A10: same GA102 memory system (24 GB GDDR6, 384-bit, 600 GB/s), so taken "
            "as the A10G's copy ceiling; the A10's matmul rate is not (the A10G's tensor rate differs)"),
    ]  # fmt: skip
    # held-out: the T4's small-M GEMM of Qwen2.5-0.5B's gate/up shape, as effective GiB/s of the fp16 weights
    weight_bytes = 896 * 4864 * 2
    for m, gib_s in ((1, 106.7), (2, 88.1), (4, 90.1), (8, 88.5)):
        t = gemm_seconds("t4", m, 896, 4864)
        out.append(
            Row("t4", f"fp16 GEMM [{m},896]@[896,4864]", "PyTorch eager matmul (cuBLAS)", T4_GEMV, weight_bytes / (gib_s * GIB) * 1e6,
                "µs", t * 1e6, note="published as effective GiB/s of the weights; timed from Python, launch overhead included"))  # fmt: skip
    hf = decode_tokens_per_s("t4", "qwen2.5-0.5b", 200, engine="transformers-generate")
    host = host_seconds("t4", "qwen2.5-0.5b", "transformers-generate")
    out.append(
        Row("t4", "Qwen2.5-0.5B fp16 decode, batch 1, 128 new tokens", "transformers generate (eager)", T4_HF, 24.4, "tokens/s",
            hf, note=f"forecast with the transformers-generate engine profile: {host * 1e3:.1f} of its {1e3 / hf:.1f} ms "
            f"per token are the engine's host time, measured on the H200's host, not a Colab CPU; the published "
            f"{1e3 / 24.4:.0f} ms would need a host {(1 / 24.4 - 1 / hf + host) / host:.1f}x slower with the GPU's share "
            "as forecast. The run's transformers version is not stated"))  # fmt: skip
    out.append(
        Row("t4", "(same, our engine: CUDA graphs)", "ours", T4_HF, 24.4, "tokens/s",
            decode_tokens_per_s("t4", "qwen2.5-0.5b", 200), role="context",
            note="engine mismatch on purpose: what the T4 does without eager launches, not a check of the row"))  # fmt: skip
    out.append(
        Row("t4", "Mistral-7B AWQ int4 decode, batch 1, 128 in / 128 out", "AutoAWQ GEMM (transformers generate, fused layers)",
            T4_AWQ, 33.94, "tokens/s", decode_tokens_per_s("t4", "mistral-7b", 192, "int4"), role="context",
            note="no engine profile matches (AutoAWQ: eager, its own W4A16 kernels, Turing through two m16n8k8 MMAs; "
            "transformers-generate has no int4 kernels): forecast with ours (CUDA graphs, int4), so not a check"))  # fmt: skip
    out.append(
        Row("a100-40gb", "Llama-3.1-8B bf16 decode, concurrency 1, 1024 in / 128 out", "vLLM 0.23.0", A100_VLLM, 75.0,
            "tokens/s", decode_tokens_per_s("a100-40gb", "llama-3.1-8b", 1088, "bf16"), stand_in=True,
            note="published as 'about 75'; no vLLM engine profile: ours stands in (both run decode under CUDA graphs); "
            "forecast at the mid-output context"))  # fmt: skip
    return (
        out + kaggle_rows() + ratio_rows() + l4_rows() + h100_pcie_rows() + mi300x_rows() + gemm_check_rows()
    )


def check_errors(gpu: str) -> list[float]:
    """Held-out errors (%) of one GPU's checks (what `python -m simulator gpus` shows)."""
    return [
        (r.forecast / r.published - 1.0) * 100.0
        for r in rows()
        if r.role == "check" and r.gpu == gpu and r.forecast is not None
    ]


def _value(x: float, unit: str) -> str:
    return f"{x:.3f}{unit}" if unit == "×" else f"{x:,.1f} {unit}"


# GPUs without a held-out check: why, in a line (what was looked for and not found, or found and not usable)
SEARCHED = (
    "searched (search tool: issues, pages, docs, code; find_string): vLLM/SGLang issues with bench-serve printouts "
    "naming the GPU, AWS g5/g6, Modal, RunPod, Lambda, Baseten, Databricks and NVIDIA pages, MAMF tables "
    "(stas00/ml-engineering), gpu-benchmark repositories (chsasank/device-benchmarks, zzc0721/torch-performance-"
    "test-data, samuel-bohman/AI-benchmarking-guide), nvbandwidth / bandwidthTest / BabelStream outputs"
)
# GPUs without a held-out check: why, in a line (what was looked for and not found, or found and not usable)
NO_CHECK = {
    "l4": "no GEMM or copy microbenchmark of an L4 was found (" + SEARCHED + "): its sustained ceilings stay "
    "assumptions; the checks are one vLLM 0.8.5 study's runs with our engine standing in",
    "a10g": "no published run naming engine, model, dtype, concurrency and lengths on an A10G was found, nor an "
    "A10G matmul ("
    + SEARCHED
    + "). Found and not usable: github.com/vllm-project/vllm/issues/4030 (a g5 run of DeepSeek-Coder-1.3B, a model the "
    "planner has no config for, ShareGPT lengths as totals only), github.com/arc53/llm-price-compass/issues/6 (two "
    "A10Gs at TP 2, ShareGPT totals, its median TTFT printed as 0.00), Ollama/llama.cpp runs without engine settings. "
    "Copy ceiling from an A10 (fit row), GEMM rate assumed",
    "h100-pcie": "checks: one pipeline's vLLM runs (version not stated), our engine standing in, and their ITL ratio to "
    "the same pipeline's H200 runs. They point to faster ceilings than the fit rows: the one-user ITL (weight reads) is "
    "below ours and the ratio to the H200 is below ours at every concurrency, most where prompts share steps with "
    "decodes (GEMM-rate bound); both fit rows time single calls from Python, lower bounds on what the GPU sustains",
    "b200": "TensorRT-LLM's performance overview runs B200 dense models with FP4 weights only, a format the planner "
    "does not model; no configured serving run of a B200 and no copy measurement was found ("
    + SEARCHED
    + "; "
    "Azure's GB200 results are a different board, its nvbandwidth figure a GPU-to-GPU read): memory assumed; the "
    "GEMM ceiling (MAMF fit row) checked against a second matmul figure",
    "mi300x": "checks: Azure's vLLM-on-ROCm offline runs of Llama-3.1-8B FP8 (our engine standing in). A single-GPU "
    "MI300X-vs-H200 vLLM 0.26 study (github.com/alpharomercoma/MI300X-vs-H200, REPORT.md) was readable only as a "
    "summary without lengths or values: not used",
}
NO_CHECK["t4"] = (
    "the vLLM rows use the vLLM-on-Turing engine profile (engine_profiles/vllm-t4.yaml: fitted to the Qwen cells, "
    "the Llama cells held out); the GEMM rows are single eager PyTorch calls timed from Python; the transformers row "
    "is mostly host time (its note); the burst matmul row runs above the power-capped sustained rate; AutoAWQ has no "
    "engine profile (context row)"
)
GPUS = ("t4", "l4", "a10g", "a100-40gb", "a100-80gb-sxm", "h100-pcie", "h200", "b200", "mi300x")


def per_gpu(rs: list[Row]) -> str:
    """One row per GPU: its status in `python -m simulator gpus`, the published rows it was fitted to, its held-out
    checks with their median and worst |error| (all, and those whose engine has a profile here), or why it has none."""
    from core.hardware import load_profile, provenance

    lines = [
        "| GPU | status (`simulator gpus`) | fit rows | held-out checks (ours standing in) | median \\|error\\| "
        "| worst | median, matching engine only | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for gpu in GPUS:
        status, _ = provenance(load_profile(gpu))
        fits = sum(1 for r in rs if r.role == "fit" and gpu in r.gpu.split(" / "))
        checks = [r for r in rs if r.role == "check" and r.gpu == gpu]
        e = [abs(r.forecast / r.published - 1.0) * 100.0 for r in checks]
        m = [abs(r.forecast / r.published - 1.0) * 100.0 for r in checks if not r.stand_in]
        med, worst = (f"{np.median(e):.0f}%", f"{max(e):.0f}%") if e else ("—", "—")
        matched = f"{np.median(m):.0f}% ({len(m)})" if m else "—"
        stand = sum(r.stand_in for r in checks)
        lines.append(
            f"| {gpu} | {status} | {fits} | {len(e)} ({stand}) | {med} | {worst} | {matched} | {NO_CHECK.get(gpu, '')} |"
        )
    return "\n".join(lines)


def table(rs: list[Row]) -> tuple[str, list[float]]:
    lines = [
        "| GPU | role | what | engine | published | our forecast | error | source / note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    errs = []
    for r in rs:
        if r.forecast is None:
            fc, err = "—", "(fitted to it)"
        else:
            e = (r.forecast / r.published - 1.0) * 100.0
            if r.role == "check":
                errs.append(e)
            fc, err = (
                _value(r.forecast, r.unit),
                (f"{e:+.0f}%" if r.role != "fit" else f"(fit residual {e:+.0f}%)"),
            )
        note = r.source + (f"; {r.note}" if r.note else "")
        lines.append(
            f"| {r.gpu} | {r.role} | {r.what} | {r.engine} | {_value(r.published, r.unit)} | {fc} | {err} | {note} |"
        )
    return "\n".join(lines), errs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_published.md")
    args = ap.parse_args()
    rs = rows()
    body, errs = table(rs)
    checks = [r for r in rs if r.role == "check"]
    text = (
        "# GPUs we cannot run here, against published measurements\n\n"
        "`python benchmarks/gpu_published.py`. fit rows are the sustained ceilings the profiles take (inputs); "
        "fit rows with a forecast are runs an engine profile was fitted to (their residual shown, never counted); "
        'check rows are held out: our forecast of the same work, error = forecast / published − 1. "ours stands in": '
        "no engine profile matches the run's engine, our engine's forecast is shown.\n\n"
        f"{body}\n\n"
        f"{len(checks)} held-out rows (context rows are not checks); median |error| {np.median(np.abs(errs)):.0f}%:\n\n"
        f"{per_gpu(rs)}\n\n"
        "The Kaggle T4 TTFTs at one user and 128, 512 and 2048 prompt tokens, split as TTFT = a + b·n + c·n² (b: the "
        "linear layers' rate, c: attention's; `prefill_split`), published and forecast by our engine launched eagerly "
        "and by the vLLM-on-Turing profile:\n\n"
        f"{prefill_lines()}\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text, end="")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
