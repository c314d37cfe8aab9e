"""Low-load checks of the published vLLM engine profiles against vLLM's own CI latency runs (issue 12).

    python benchmarks/published_low_load_checks.py           # the run files and benchmarks/results/published_low_load_checks.md
    python benchmarks/published_low_load_checks.py --write   # also each profile's validation.loads (after a refit)

Source: vLLM's "Performance Benchmark" Buildkite pipeline, the builds of vllm-project/vllm PR #9768
("[perf bench] H200 development", October-November 2024, vLLM 0.6.3-0.6.4 development builds), table
"Latency tests", row `latency_llama8B_tp1`: `benchmark_latency.py` with Llama-3.1-8B-Instruct (bf16, TP 1,
`load_format dummy`: random weights, the same speed), one batch of 8 prompts of 32 tokens, 128 output tokens each
(every output generated to its length), the mean, median and P99 of 15 timed iterations of the whole batch after 5
warm-up ones (`num_iters 15`, `num_iters_warmup 5`: vLLM's .buildkite/nightly-benchmarks README, latency test):

- H200: https://buildkite.com/vllm/performance-benchmark/builds/9515 (833.421 / 833.53 / 834.167 ms)
- H100 SXM ("8xH100" node, TP 1): https://buildkite.com/vllm/performance-benchmark/builds/9555 (997.542 / 997.365 / 999.409 ms)
- A100-SXM4-80GB: https://buildkite.com/vllm/performance-benchmark/builds/9523 (1579.27 / 1579.34 / 1579.87 ms)

Each row becomes a vLLM-style result: 8 requests of 32/128 tokens sent at once (concurrency 8), the batch's
latency as every request's end-to-end latency (the batch finishes together) and as the run's duration, and the
throughputs that duration implies. No TTFT or TPOT was published. These runs were never fitted: each published
profile forecasts them on its own GPU, and the table lists the error. The engine versions differ from the
profiles' (vLLM 0.6.x V0 offline `LLM.generate` here; the profiles were fitted to vLLM 0.11.0 and 0.8.4 API
servers) and so does the model (the profiles were fitted to Qwen3-14B and DeepSeek-R1): a check of how the
fitted terms transfer to a light, decode-bound load, not of the fit itself.

With `--write` each row also goes into its profile's `validation.loads` (the run, the mean sequences a step of
its forecast, its errors): a forecast at about that load then takes its band from this check rather than from the
full-load held-out rows (simulator/expected_error.py). `calibrate from-benchmark` rewrites a profile's loads with
its own held-out runs, so run this after a refit.
"""

from __future__ import annotations

import argparse
import json
from itertools import takewhile
from pathlib import Path

import _checkout  # noqa: F401  (first: the checkout's root on sys.path)

from core.engine_profile import LoadCheck, load_engine_profile, write_engine_profile
from simulator.measured import read_measured
from simulator.validation import run_workload, validate

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "published_runs" / "vllm_ci_latency_llama8b"
TABLE = ROOT / "benchmarks" / "results" / "published_low_load_checks.md"
BUILD = "https://buildkite.com/vllm/performance-benchmark/builds/"
BATCH, ISL, OSL = 8, 32, 128
# GPU profile: (build, mean, median, P99 batch latency in ms, the published profile checked on that GPU)
ROWS = {
    "h200": (9515, 833.421, 833.53, 834.167, "vllm-h200"),
    "h100-sxm": (9555, 997.542, 997.365, 999.409, "vllm-h100-sxm"),
    "a100-80gb-sxm": (9523, 1579.27, 1579.34, 1579.87, "vllm-a100-80gb-sxm"),
}


def run_file(gpu: str, build: int, mean: float, median: float, p99: float) -> dict:
    duration = mean / 1000.0
    return {
        "date": "published",
        "backend": "vllm 0.6.x (benchmark_latency.py, PR #9768 builds, offline LLM.generate)",
        "model_id": "meta-llama/Meta-Llama-3.1-8B-Instruct",
        "tokenizer_id": "meta-llama/Meta-Llama-3.1-8B-Instruct",
        "num_prompts": BATCH,
        "request_rate": "inf",
        "burstiness": 1.0,
        "max_concurrency": BATCH,
        "ignore_eos": True,
        "source": f"{BUILD}{build} (Latency tests, latency_llama8B_tp1: batch {BATCH}, {ISL} in / {OSL} out)",
        "gpu": gpu,
        "tensor_parallel_size": 1,
        "duration": duration,
        "completed": BATCH,
        "total_input_tokens": BATCH * ISL,
        "total_output_tokens": BATCH * OSL,
        "request_throughput": BATCH / duration,
        "output_throughput": BATCH * OSL / duration,
        "total_token_throughput": BATCH * (ISL + OSL) / duration,
        "mean_e2el_ms": mean,
        "median_e2el_ms": median,
        "p99_e2el_ms": p99,
    }


def write_runs() -> dict[str, Path]:
    OUT.mkdir(parents=True, exist_ok=True)
    paths = {}
    for gpu, (build, mean, median, p99, _) in ROWS.items():
        paths[gpu] = OUT / f"latency_llama8b_tp1_{gpu}.json"
        paths[gpu].write_text(json.dumps(run_file(gpu, build, mean, median, p99), indent=1) + "\n")
    return paths


def check(gpu: str, path: Path) -> dict:
    """The profile's forecast of one published run, the way `python -m simulator validate` makes it."""
    profile = ROWS[gpu][4]
    run = read_measured(str(path))[0]
    scenario = {"name": f"low-load-{gpu}", "model": "llama-3.1-8b", "hardware": {"gpu": gpu}, "engine": profile,
                "workload": run_workload(run)[0]}  # fmt: skip
    v = validate(run, scenario, f"{profile} on {gpu}")
    rows = {r.metric: r for r in v.rows}
    return {
        "gpu": gpu,
        "profile": profile,
        "measured_ms": rows["mean_e2el_ms"].measured,
        "forecast_ms": rows["mean_e2el_ms"].forecast,
        "e2el_pct": rows["mean_e2el_ms"].error_pct,
        "out_tok_s_pct": rows["output_throughput"].error_pct,
        "ttft_ms": rows["mean_ttft_ms"].forecast,
        "tpot_ms": rows["mean_tpot_ms"].forecast,
        "batch": v.forecast.summary["utilisation"]["mean_batch_seqs"],
        "errors_pct": {k: round(rows[k].error_pct, 2) for k in COMPARED},
        "run": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
        "notes": v.notes,
    }


COMPARED = ("mean_e2el_ms", "request_throughput", "output_throughput")  # what the published row gives


def write_loads(r: dict) -> Path:
    """Put the row into its profile's validation.loads (replacing an earlier one of the same run); the file's
    comment header (the command that fitted it) is kept."""
    profile = load_engine_profile(r["profile"])
    path = ROOT / "engine_profiles" / f"{r['profile']}.yaml"
    if profile.validation is None:
        raise SystemExit(f"{path}: no validation to add a load check to; fit it with held-out runs first")
    text = path.read_text().splitlines()
    header = "\n".join(
        ln[2:] for ln in takewhile(lambda ln: ln.startswith("# "), text)
    )  # (its comment lines)
    check = LoadCheck(run=r["run"], batch=round(r["batch"], 3), errors_pct=r["errors_pct"], table=str(TABLE.relative_to(ROOT)),
                      note="vLLM 0.6.x CI latency run of Llama-3.1-8B, batch 8 (never fitted): "
                      "python benchmarks/published_low_load_checks.py --write")  # fmt: skip
    loads = [c for c in profile.validation.loads if c.run != check.run] + [check]
    v = profile.validation.model_copy(update={"loads": loads})
    write_engine_profile(profile.model_copy(update={"validation": v}), path, header=header)
    return path


def markdown(results: list[dict]) -> str:
    lines = [
        "# Low-load checks of the published vLLM profiles (vLLM CI latency runs, never fitted)",
        "",
        "`python benchmarks/published_low_load_checks.py` — Llama-3.1-8B-Instruct bf16, TP 1, one batch of 8",
        "prompts of 32 tokens and 128 output tokens (vLLM's `latency_llama8B_tp1`), the published mean batch",
        "latency against each profile's forecast of the same 8 requests sent at once on its own GPU. Sources and",
        "caveats: the docstring of benchmarks/published_low_load_checks.py (vLLM 0.6.x offline runs; the profiles",
        "were fitted to other vLLM versions and models).",
        "",
        "| GPU | profile | published batch latency (ms) | forecast (ms) | error | output tok/s error | forecast TTFT (ms) | forecast TPOT (ms) | mean sequences a step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['gpu']} | {r['profile']} | {r['measured_ms']:.1f} | {r['forecast_ms']:.1f} | "
            f"{r['e2el_pct']:+.1f}% | {r['out_tok_s_pct']:+.1f}% | {r['ttft_ms']:.1f} | {r['tpot_ms']:.2f} | "
            f"{r['batch']:.3g} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="low-load checks of the published vLLM profiles")
    p.add_argument(
        "--write", action="store_true", help="also put each row into its profile's validation.loads"
    )
    a = p.parse_args(argv)
    paths = write_runs()
    results = [check(gpu, path) for gpu, path in paths.items()]
    TABLE.write_text(markdown(results))
    print(TABLE.read_text())
    if a.write:
        for r in results:
            print(f"wrote the check into {write_loads(r).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
