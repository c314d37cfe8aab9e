"""Why DeepSeek-V2-Lite's eager serving steps take 100-230 ms where the same tokens take ~45 ms in a benchmark.

    python benchmarks/mla_eager_shapes.py --out $OUT/eager        # on the GPU (about a minute on an H200)
    python benchmarks/mla_eager_shapes.py --out /tmp/e --cpu --tiny # the same code on a toy config (CPU)

In the H200 fidelity run (benchmarks/moe_mla_gpu.py, session 9) the serving loop's eager mixed steps of
DeepSeek-V2-Lite (prompt chunks above engine.mla.ABSORBED_PROMPT_TOKENS, plain form) took 100-230 ms with the
host's launch time about equal to the step, while benchmarks/mla_gpu_check.py's plain steps of the same size,
repeated on one shape, took 41-57 ms. A serving loop meets a new step shape almost every step. This times eager
mixed steps (one prompt chunk + a few decodes, engine.steps.StepRunner with every prompt chunk plain) on
shapes never seen before and again on the same shape, with SDPA's backends as PyTorch picks them and with the
cuDNN backend off; then profiles one new-shape step (the host ops with the most self CPU time).
Writes eager_shapes.json and prints one line a case.
"""

from __future__ import annotations

import os
import sys

if "--cpu" in sys.argv:  # Triton kernels through its interpreter on the CPU (set before importing it)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import _checkout  # noqa: E402,F401  (the checkout's root on sys.path)
import torch  # noqa: E402
from _gpu_cli import device_args, pick_device  # noqa: E402
from moe_mla_gpu import TINY_DEEPSEEK  # noqa: E402  (the MoE/MLA checks' toy DeepSeek-V2)

from core.model_spec import load_model, spec_from_config  # noqa: E402
from engine import mla  # noqa: E402
from engine.attention import make_layout  # noqa: E402
from engine.model import build_model  # noqa: E402
from engine.steps import StepRunner  # noqa: E402

# prompt chunk lengths as the fidelity run's eager steps had them (1,029-4,094 tokens), 8 decodes of 600
CHUNKS = [1313, 1315, 2221, 1353, 2584, 1087, 1437, 4085]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def one_step(runner: StepRunner, chunk: int, decodes: list[int], dev: str) -> tuple[float, float]:
    """(wall seconds of the step including its host work, GPU span) of one eager mixed step, not warmed up."""
    if dev == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    gpu = runner.mixed([(chunk, 0)], decodes, warmup=0, repeat=1)
    if dev == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, gpu


def profile_totals(events) -> dict:
    """An eager step's host and device totals from the profiler's averages: host self CPU ms over every op, device
    ms over every kernel and copy (the GPU's busy time, against the step's span), and the kernels launched."""
    dev_ms = sum(float(getattr(e, "self_device_time_total", 0.0)) for e in events) / 1e3
    launches = sum(
        int(e.count) for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernelEx", "cuLaunchKernel")
    )
    return {"host_self_cpu_ms": sum(float(e.self_cpu_time_total) for e in events) / 1e3, "device_busy_ms": dev_ms,
            "launches": launches}  # fmt: skip


def plain_check(spec, dev: str, dtype: str, tiny: bool) -> dict:
    """The plain prompt form batched over a step's chunks (engine.mla: one gather, one kv_b GEMM, one varlen
    flash call) against each chunk alone and, on the GPU, against the absorbed form of the same attention (the
    Triton prompt kernel): max |difference| over max |value| of one layer's output."""
    one = spec_from_config(dict(spec.config, num_hidden_layers=1), name=f"{spec.name}-1-layer")
    m = build_model(one, dtype=dtype, device=dev, seed=5)
    attn = m.layers[0].attn
    q, prior, starts = ([20, 14, 6], [0, 30, 80], [0, 22, 68]) if tiny else ([1000, 700, 300], [0, 1500, 4000],
                                                                            [0, 1100, 3400])  # fmt: skip
    m.allocate_kv(starts[-1] + prior[-1] + q[-1] + 8, seed=7)
    pool, rope = m.kv[0][0], m.ropes[attn.rope_base]
    g = torch.Generator(device=dev).manual_seed(3)
    x = torch.randn(sum(q), one.hidden_size, device=dev, generator=g, dtype=pool.dtype)
    old = mla.ABSORBED_PROMPT_TOKENS

    def run(rows, qs, ps, ss):
        return attn(rows, make_layout(qs, ps, dev, starts=ss, kv_heads=1), rope, pool, pool).float()

    try:
        mla.ABSORBED_PROMPT_TOKENS = 0
        batched = run(x, q, prior, starts)
        alone = torch.cat(
            [run(x[sum(q[:i]) : sum(q[: i + 1])], [q[i]], [prior[i]], [starts[i]]) for i in range(3)]
        )
        mla.ABSORBED_PROMPT_TOKENS = 1 << 30
        absorbed = run(x, q, prior, starts) if dev == "cuda" else None
    finally:
        mla.ABSORBED_PROMPT_TOKENS = old
    top = alone.abs().max().item()
    rec = {"chunks": q, "cached_before": prior, "vs_alone": (batched - alone).abs().max().item() / top}
    if absorbed is not None:
        rec["vs_absorbed"] = (batched - absorbed).abs().max().item() / top
    log(
        "batched plain form, one layer: "
        + ", ".join(f"{k} {v:.2e}" for k, v in rec.items() if k.startswith("vs"))
    )
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    device_args(ap, "a toy config of the same architecture")
    args = ap.parse_args(argv)
    dev = pick_device(args)
    if dev is None:
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    spec = (
        spec_from_config(TINY_DEEPSEEK, name="tiny-deepseek") if args.tiny else load_model("deepseek-v2-lite")
    )
    chunks = [c % 40 + 8 for c in CHUNKS] if args.tiny else CHUNKS
    decodes = [20] * 2 if args.tiny else [600] * 8
    rec_check = plain_check(spec, dev, "fp32" if args.cpu else "bf16", args.tiny)
    model = build_model(spec, dtype="fp32" if args.cpu else "bf16", device=dev)
    old = mla.ABSORBED_PROMPT_TOKENS
    mla.ABSORBED_PROMPT_TOKENS = 0  # every prompt chunk plain, eagerly, as above the threshold
    rec: dict = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__,
                 "plain_check": rec_check, "cases": []}  # fmt: skip
    try:
        runner = StepRunner(model, 16, max(chunks) + 1024, device=dev)
        for cudnn in (True, False):
            if dev == "cuda":
                torch.backends.cuda.enable_cudnn_sdp(cudnn)
            for c in chunks:
                c = c + (0 if cudnn else 7)  # shapes the first pass did not see
                first = one_step(runner, c, decodes, dev)
                again = one_step(runner, c, decodes, dev)
                row = {"cudnn_sdp": cudnn, "chunk": c, "decodes": len(decodes), "first_wall_s": first[0],
                       "first_gpu_s": first[1], "again_wall_s": again[0], "again_gpu_s": again[1]}  # fmt: skip
                rec["cases"].append(row)
                log(f"cudnn_sdp {cudnn} chunk {c} + {len(decodes)} decodes: new shape {first[0] * 1e3:.1f} ms wall "
                    f"({first[1] * 1e3:.1f} GPU span), same shape again {again[0] * 1e3:.1f} ms ({again[1] * 1e3:.1f})")  # fmt: skip
        if dev == "cuda":
            torch.backends.cuda.enable_cudnn_sdp(True)
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev == "cuda" else [])
        with profile(activities=acts) as prof:
            one_step(runner, chunks[0] + 3, decodes, dev)
        top = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:15]
        rec["profile_new_shape"] = [
            {"name": e.key[:120], "self_cpu_us": float(e.self_cpu_time_total), "calls": int(e.count)}
            for e in top
        ]
        for e in rec["profile_new_shape"]:
            log(f"  host {e['self_cpu_us'] / 1e3:8.2f} ms  x{e['calls']:<5d} {e['name']}")
        rec["profile_totals"] = profile_totals(prof.key_averages())
        log("  totals: " + ", ".join(f"{k} {v:.1f}" for k, v in rec["profile_totals"].items()))
    finally:
        mla.ABSORBED_PROMPT_TOKENS = old
    (args.out / "eager_shapes.json").write_text(json.dumps(rec, indent=1))
    log(f"wrote {args.out / 'eager_shapes.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
