"""The serving loop's own costs: host time per step outside the GPU's work, and the eager launch time.

Calibration's step sweep times the GPU (CUDA events around captured steps); a serving loop also spends
host time every step: the scheduler, the step's inputs, the sampled ids back, the records. This runs
the real loop (engine/serving.py) on a fixed synthetic workload with per-step tracing and fits

    host seconds of a step = serving_step_s + serving_per_sequence_s · sequences (+ serving_prompt_step_s
                             when the step has prompt tokens)

where host = the loop's whole iteration less the step's GPU span (on the CPU: less the executor's
compute). It also records the executor's measured host time to issue an eager step, per layer.
The workload is fixed (seed 0), so the fit does not depend on any trace it is later validated on.
"""

from __future__ import annotations

import gc

import numpy as np

from core.kv_cache import BlockPool
from core.model_spec import ModelSpec
from core.requests import Requests

QUANTITIES = ("serving_step_s", "serving_per_sequence_s", "serving_prompt_step_s", "eager_launch_s_per_layer")
WORKLOAD = "poisson-v1"  # names the synthetic workload below (part of the sweep points' keys)
GPU_RESERVE_BYTES = 6 * 2**30  # graph pools, activations of the largest eager step, cuBLAS workspaces


def synthetic_requests(cpu: bool, quick: bool) -> tuple[Requests, int, int]:
    """(requests, max_num_seqs, max_num_batched_tokens): Poisson arrivals, lognormal prompts and outputs."""
    rng = np.random.default_rng(0)
    if cpu:
        n, span, p_med, p_max, o_med, o_max, seqs, budget = 40, 0.5, 24, 64, 6, 16, 8, 64
    else:
        n, span = (80, 5.0) if quick else (150, 10.0)
        p_med, p_max, o_med, o_max, seqs, budget = 300, 3000, 96, 384, 128, 4096
    arrivals = np.sort(rng.uniform(0.0, span, n))
    prompt = np.clip(np.round(rng.lognormal(np.log(p_med), 0.8, n)), 8, p_max).astype(np.int64)
    output = np.clip(np.round(rng.lognormal(np.log(o_med), 0.7, n)), 2, o_max).astype(np.int64)
    return Requests(arrivals, prompt, output), seqs, budget


def fit_host(trace: dict[str, np.ndarray], gpu: bool) -> dict[str, float]:
    """Least squares of the per-step host seconds on (1, sequences, has prompt tokens), GC spikes (the top
    2%) left out; negative coefficients clipped to zero."""
    loop = trace["schedule_s"] + trace["prepare_s"] + trace["execute_s"] + trace["record_s"]
    host = loop - (trace["gpu_s"] if gpu else trace["execute_s"])
    n = trace["decode_seqs"] + trace["prefill_seqs"]
    prompt = (trace["prefill_tokens"] > 0).astype(float)
    keep = host <= np.quantile(host, 0.98)
    x = np.column_stack([np.ones(keep.sum()), n[keep], prompt[keep]])
    if np.linalg.matrix_rank(x) < 3:  # e.g. no step with prompt tokens in the kept ones
        x = x[:, :2]
    coef = np.linalg.lstsq(x, host[keep], rcond=None)[0]
    coef = np.append(coef, 0.0) if len(coef) == 2 else coef
    a, b, c = (max(float(v), 0.0) for v in coef)
    return {"serving_step_s": a, "serving_per_sequence_s": b, "serving_prompt_step_s": c}


def measure_serving(
    spec: ModelSpec, device: str, quick: bool = False, model=None, log=None
) -> dict[str, float]:
    """Run the synthetic workload through the serving loop on `device`; returns QUANTITIES (seconds)."""
    import torch

    from engine.model import build_model
    from engine.serving import Executor, region_headroom, serve

    cpu = torch.device(device).type == "cpu"
    reqs, max_seqs, budget = synthetic_requests(cpu, quick)
    longest = int((reqs.prompt_tokens + reqs.output_tokens).max())
    if model is None:
        model = build_model(spec, "fp32" if cpu else "bf16", device, max_position=max(4096, longest + 1))
    model.kv = []
    gc.collect()
    if cpu:
        pool_tokens = max_seqs * longest
    else:
        torch.cuda.empty_cache()
        free = torch.cuda.mem_get_info()[0]
        pool_tokens = int(min(400_000, (free - GPU_RESERVE_BYTES) // spec.kv_bytes_per_token("bf16")))
    ex = Executor(model, pool_tokens, max_seqs, device=device, max_context=max(4096, longest + 1))
    ex.warmup(log, max_prompt=budget)
    blocks = (pool_tokens - region_headroom(reqs, max_seqs)) // 16
    run = serve(ex, reqs, BlockPool(blocks, 16), max_seqs, budget, True, trace=True, log=log)
    out = fit_host(run.step_trace, gpu=not cpu)
    out["eager_launch_s_per_layer"] = ex.eager_launch_s / model.num_layers
    if log:
        log(f"serving loop: host {out['serving_step_s'] * 1e6:.0f} µs a step + {out['serving_per_sequence_s'] * 1e6:.1f} "
            f"µs a sequence (+{out['serving_prompt_step_s'] * 1e6:.0f} µs with prompt tokens) over {run.steps} steps; "
            f"eager launch {out['eager_launch_s_per_layer'] * 1e6:.0f} µs a layer")  # fmt: skip
    del ex, run
    model.kv = []
    gc.collect()
    if not cpu:
        torch.cuda.empty_cache()
    return out
