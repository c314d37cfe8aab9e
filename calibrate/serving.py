"""The serving loop's own costs: host time per step outside the GPU's work, and the eager launch time.

Calibration's step sweep times the GPU (CUDA events around captured steps); a serving loop also spends
host time every step: the scheduler, the step's inputs, the sampled ids back, the records. This runs
the real loop (engine/serving.py) on a fixed synthetic workload with per-step tracing and fits

    host seconds of a step = serving_step_s + serving_per_sequence_s · sequences (+ serving_prompt_step_s
                             when the step has prompt tokens)

where host = the loop's whole iteration less the step's GPU span (on the CPU: less the executor's
compute). It also records the executor's measured host time to issue an eager step, per layer, and
(measure_mla_eager) the same for an MLA model's eager steps, which launch two and a half times the kernels a layer.
The workload is fixed (seed 0), so the fit does not depend on any trace it is later validated on.
"""

from __future__ import annotations

import gc

import numpy as np

from core.kv_cache import BlockPool
from core.model_spec import ModelSpec
from core.requests import Requests

QUANTITIES = (
    "serving_step_s",
    "serving_per_sequence_s",
    "serving_prompt_step_s",
    "eager_launch_s_per_layer",
    "eager_launch_mla_s_per_layer",
)
# quantities a store from before they existed may lack (calibrate.group_from_run then keeps the profile's value)
OPTIONAL = ("eager_launch_mla_s_per_layer",)
WORKLOAD = "poisson-v1"  # names the synthetic workload below (part of the sweep points' keys)
SERVING_REPEATS = 3  # runs of the workload on the GPU, their steps fitted together (the CPU: one)
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
    traces = []
    for r in range(1 if cpu else SERVING_REPEATS):
        run = serve(ex, reqs, BlockPool(blocks, 16), max_seqs, budget, True, trace=True, log=log)
        traces.append(run.step_trace)
        if log and not cpu:
            one = fit_host(run.step_trace, gpu=True)
            log(f"serving run {r + 1}: host {one['serving_step_s'] * 1e6:.0f} µs a step + "
                f"{one['serving_per_sequence_s'] * 1e6:.1f} µs a sequence (+{one['serving_prompt_step_s'] * 1e6:.0f} µs)")  # fmt: skip
    # the runs' steps pooled into one fit: the host's speed drifts while a run lasts and between runs (on an H200's
    # host the per-step term of single runs read 161-409 µs the same day, calibration_runs/h200_session16_serving)
    out = fit_host({k: np.concatenate([t[k] for t in traces]) for k in traces[0]}, gpu=not cpu)
    steps = sum(len(t["gpu_s"]) for t in traces)
    out["eager_launch_s_per_layer"] = ex.eager_launch_s / model.num_layers
    del ex, run, traces
    model.kv = []
    gc.collect()
    if not cpu:
        torch.cuda.empty_cache()
    out["eager_launch_mla_s_per_layer"] = measure_mla_eager(device, log=log)["per_layer_s"]
    if log:
        log(f"serving loop: host {out['serving_step_s'] * 1e6:.0f} µs a step + {out['serving_per_sequence_s'] * 1e6:.1f} "
            f"µs a sequence (+{out['serving_prompt_step_s'] * 1e6:.0f} µs with prompt tokens) over {steps} steps; "
            f"eager launch {out['eager_launch_s_per_layer'] * 1e6:.0f} µs a layer, MLA "
            f"{out['eager_launch_mla_s_per_layer'] * 1e6:.0f} µs a layer")  # fmt: skip
    return out


# measure_mla_eager: the MLA model (the catalogue's DeepSeek-V2-Lite, whatever model the sweep calibrates; a toy of
# its architecture on the CPU), two depths (per layer = the slope, so the embedding and logits drop out), and the
# serving loop's rhythm: each eager step comes after DECODES_BETWEEN decode-graph steps, a fresh prompt chunk
# longer than the absorbed form's limit (engine.mla.ABSORBED_PROMPT_TOKENS: the plain form, which the serving loop
# runs eagerly) of a length not seen before, beside the decodes
MLA_EAGER_DEPTHS = (2, 6)
# Where the GPU holds them (MLA_DEEP_MIN_BYTES: 20 layers of DeepSeek-V2-Lite, about 23 GB of bf16 weights, with room
# for their pools), 6 and 14 layers: the 2-layer build's step ran slower a layer than the deeper ones'. On an H200
# (benchmarks/mla_eager_depths.py, benchmarks/results/engine_kernels_h200/mla_eager_depths.md) the launch slope read
# 1.76 ms a layer from 2 to 6 layers, 1.45 from 6 to 14 and 1.49 from 14 to 27 (the model's own depth).
MLA_EAGER_DEEP_DEPTHS = (6, 14)
MLA_DEEP_MIN_BYTES = 40 * 2**30
MLA_EAGER_STEPS = 16
DECODES_BETWEEN = 20
TINY_MLA_CONFIG = {
    "model_type": "deepseek_v2", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 4, "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 16,
    "v_head_dim": 16, "q_lora_rank": None, "intermediate_size": 96, "moe_intermediate_size": 32,
    "n_routed_experts": 4, "num_experts_per_tok": 2, "n_shared_experts": 1, "first_k_dense_replace": 1,
    "norm_topk_prob": False, "vocab_size": 97, "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
}  # fmt: skip


def mla_eager_depths(device: str) -> tuple[int, int]:
    """The two depths `measure_mla_eager` builds on `device`: MLA_EAGER_DEEP_DEPTHS where its memory holds them,
    else MLA_EAGER_DEPTHS (and on the CPU)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.get_device_properties(dev).total_memory >= MLA_DEEP_MIN_BYTES:
        return MLA_EAGER_DEEP_DEPTHS
    return MLA_EAGER_DEPTHS


def mla_eager_shapes(cpu: bool, depths: int = len(MLA_EAGER_DEPTHS)) -> list[list[tuple[int, int]]]:
    """Per depth, (prompt chunk, decodes) of each measured eager step: chunks between the absorbed form's limit
    and twice it, every length seen once over all depths (a new shape, as serving meets), 8-64 decodes (the
    CPU: four steps of 20-60 tokens and 2-16 decodes)."""
    from engine import mla

    lo = 20 if cpu else mla.ABSORBED_PROMPT_TOKENS + 1
    span = 40 if cpu else mla.ABSORBED_PROMPT_TOKENS
    steps = 4 if cpu else MLA_EAGER_STEPS
    return [
        [
            (lo + ((i * depths + d) * 97) % span, (8, 16, 32, 64)[i % 4] // (4 if cpu else 1))
            for i in range(steps)
        ]
        for d in range(depths)
    ]


def measure_mla_eager(device: str, log=None, depths: tuple[int, ...] | None = None) -> dict:
    """Host seconds a layer to issue an MLA model's eager step in the serving loop's rhythm: {"per_layer_s",
    "median_s" {depth: seconds}, "gpu_s" {depth: seconds}, "steps"}. Every depth is built first and they take
    their steps in turns (so that none meets warmer caches than the others); median launch time (and GPU time) of
    MLA_EAGER_STEPS eager steps at each depth (default `mla_eager_depths`), per layer the slope between the first
    and last depth. On the CPU, where ops run as they are issued, the steps run the same code and per_layer_s is 0
    (as Executor.measure_launch)."""
    import torch

    from core.model_spec import load_model, spec_from_config
    from engine.model import build_model
    from engine.serving import Executor

    cpu = torch.device(device).type == "cpu"
    depths = depths or mla_eager_depths(device)
    base = spec_from_config(TINY_MLA_CONFIG, name="tiny-mla") if cpu else load_model("deepseek-v2-lite")
    shapes = mla_eager_shapes(cpu, len(depths))
    ctx = 40 if cpu else 1024
    most = max(n for per in shapes for _, n in per)
    top = max(c for per in shapes for c, _ in per) + most * (ctx + 1)
    rng = np.random.default_rng(0)
    runs = []
    for depth in depths:
        spec = spec_from_config(
            dict(base.config, num_hidden_layers=depth), name=f"{base.name}-{depth}-layers"
        )
        model = build_model(spec, "fp32" if cpu else "bf16", device, max_position=2 * top)
        ex = Executor(model, top, most, device=device, static_mixed=False)
        ex.warmup()
        ex.time_gpu = not cpu
        runs.append((ex, [], []))
    vocab = base.vocab_size
    for i in range(len(shapes[0])):
        for k in range(len(runs)) if i % 2 == 0 else reversed(range(len(runs))):
            ex, times, gpu = runs[k]
            chunk, n = shapes[k][i]
            starts = chunk + np.arange(n, dtype=np.int64) * (ctx + 1)
            lens = np.full(n, ctx // 2, dtype=np.int64)
            for _ in range(3 if cpu else DECODES_BETWEEN):
                lens += 1
                ex.step([], (starts, lens, rng.integers(0, vocab, n)))
            ex.step(
                [(0, 0, chunk, rng.integers(0, vocab, chunk), True)],
                (starts, lens + 1, rng.integers(0, vocab, n)),
            )
            times.append(ex.last_launch_s)
            gpu.append(ex.last_gpu_s)
    medians = {d: float(np.median(t)) for d, (_, t, _) in zip(depths, runs, strict=True)}
    gpu_s = {d: float(np.median(g)) for d, (_, _, g) in zip(depths, runs, strict=True)}
    del runs, ex
    if not cpu:
        torch.cuda.empty_cache()
    d0, d1 = depths[0], depths[-1]
    per_layer = 0.0 if cpu else max(0.0, (medians[d1] - medians[d0]) / (d1 - d0))
    if log:
        log(f"MLA eager steps ({base.name}): median launch {', '.join(f'{medians[d] * 1e3:.1f} ms at {d} layers' for d in medians)}: "
            f"{per_layer * 1e6:.0f} µs a layer")  # fmt: skip
    return {
        "per_layer_s": per_layer,
        "median_s": medians,
        "gpu_s": gpu_s,
        "steps": sum(len(per) for per in shapes),
    }
