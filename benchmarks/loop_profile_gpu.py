"""The serving loop's own decode step, kernel by kernel, beside the step the shared runner times.

    python benchmarks/loop_profile_gpu.py --out $OUT/lp                # on the GPU (about 2 minutes on an H200)
    python benchmarks/loop_profile_gpu.py --out /tmp/lp --cpu --tiny   # the same code on a toy config (CPU)

benchmarks/kernel_profile.py times a decode step through engine.steps.StepRunner's CUDA graph; the large-batch
decode check (benchmarks/async_decode_gpu.py) times the serving loop's (engine.serving.serve), and at batch 256
the loop's GPU span has been 0.3-0.4 ms longer than the runner's step of the same shape. Here the loop itself
runs under torch.profiler: B requests (prompt 1,024) arrive together, once with SHORT and once with LONG output
tokens, and the difference of the two runs' per-kernel device time over the LONG − SHORT extra decode steps is
one decode step's kernels (the prompts' steps, the warm-up and the first decode steps cancel). Beside it, the
loop's median GPU span per decode step (its CUDA events, outside the profiler). Writes loop_profile.json and
loop_profile.md; resumable per (model, batch, loop) unless --fresh.
"""

from __future__ import annotations

import os
import sys

if "--cpu" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import _checkout  # noqa: E402,F401  (the checkout's root on sys.path)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _gpu_cli import device_args, log, open_report, pick_device, write_report  # noqa: E402
from kernel_profile import _device_rows, _profiled  # noqa: E402
from moe_mla_gpu import free  # noqa: E402

from core.model_spec import load_model  # noqa: E402

CASES = (("qwen2.5-7b", 256), ("qwen2.5-7b", 128), ("llama-3.1-8b", 256))
# SHORT outlasts the prompts' steps (256 x 1,024 tokens at 8,192 a step: 32), so no request ends among them and
# the two runs differ only by LONG - SHORT decode steps of the whole batch
PROMPT, SHORT, LONG = 1024, 48, 112


def loop_run(ex, b: int, prompt: int, output: int, overlap: bool, profile: bool, cpu: bool):
    """One serve() of b requests arriving together: (its step trace, the profiler or None)."""
    from core.kv_cache import BlockPool, blocks_for
    from core.requests import Requests
    from engine.serving import serve

    reqs = Requests(np.zeros(b), np.full(b, prompt), np.full(b, output))
    pool = BlockPool(b * blocks_for(prompt + output, 16), 16)

    def go():
        return serve(ex, reqs, pool, b, 8192, True, trace=True, async_scheduling=overlap)

    if not profile:
        return go().step_trace, None
    box = {}
    prof = _profiled(lambda: box.setdefault("run", go()), cpu)
    return box["run"].step_trace, prof


def per_step_kernels(ex, b: int, prompt: int, short: int, long: int, overlap: bool, cpu: bool) -> dict:
    """One decode step's kernels (the LONG − SHORT runs' difference per extra step) and the loop's GPU span."""
    tr, _ = loop_run(ex, b, prompt, long, overlap, False, cpu)
    m = (tr["prefill_tokens"] == 0) & (tr["decode_seqs"] == b)
    gpu_ms = float(np.median(tr["gpu_s"][m][2:])) * 1e3 if m.sum() > 4 else float("nan")
    _, p_short = loop_run(ex, b, prompt, short, overlap, True, cpu)
    _, p_long = loop_run(ex, b, prompt, long, overlap, True, cpu)
    n = long - short
    a = {r["kernel"]: r for r in _device_rows(p_short, 1, cpu)}
    rows = []
    for r in _device_rows(p_long, 1, cpu):
        s = a.get(r["kernel"], {"us_per_step": 0.0, "calls_per_step": 0.0})
        us, calls = (r["us_per_step"] - s["us_per_step"]) / n, (r["calls_per_step"] - s["calls_per_step"]) / n
        if us > 0.05:
            rows.append({"kernel": r["kernel"], "us_per_step": us, "calls_per_step": calls})
    rows.sort(key=lambda r: -r["us_per_step"])
    return {"gpu_ms": gpu_ms, "kernel_sum_us": sum(r["us_per_step"] for r in rows), "top": rows[:30]}


def case_key(model: str, batch: int, overlap: bool) -> str:
    """A case's name in the record: model, batch and loop."""
    return f"{model} b{batch} {'async' if overlap else 'waits'}"


def report(raw: dict) -> str:
    lines = [f"# The serving loop's decode step, kernel by kernel ({raw.get('device')}, torch {raw.get('torch')})",
             "", f"`{raw.get('command')}`. Per case: the loop's median GPU span per decode step, the sum of one "
             f"step's kernels (runs of {raw.get('short')} and {raw.get('long')} output tokens differenced), then the "
             "kernels.", ""]  # fmt: skip
    for key, c in raw.get("cases", {}).items():
        lines += [f"## {key}: GPU span {c['gpu_ms']:.2f} ms, kernels {c['kernel_sum_us'] / 1e3:.2f} ms", "",
                  "| µs / step | calls / step | kernel |", "|---|---|---|"]  # fmt: skip
        lines += [
            f"| {r['us_per_step']:.1f} | {r['calls_per_step']:.1f} | `{r['kernel'][:90]}` |" for r in c["top"]
        ]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--fresh", action="store_true", help="ignore an existing loop_profile.json in --out")
    p.add_argument(
        "--cases",
        help="comma-separated MODEL:BATCH (default: " + ",".join(f"{m}:{b}" for m, b in CASES) + ")",
    )
    p.add_argument(
        "--loops", choices=("waits", "async", "both"), default="both", help="which loops to profile"
    )
    device_args(p, "a toy config")
    args = p.parse_args(argv)
    dev = pick_device(args, paired=True)
    if dev is None:
        return 2
    from engine.model import build_model
    from engine.serving import Executor

    out, raw = open_report(args.out, "loop_profile", "loop_profile_gpu.py", argv, dev, args.fresh)
    cases, prompt, short, long = CASES, PROMPT, SHORT, LONG
    if args.cases:
        cases = tuple((c.rsplit(":", 1)[0], int(c.rsplit(":", 1)[1])) for c in args.cases.split(","))
    loops = {"waits": (False,), "async": (True,), "both": (False, True)}[args.loops]
    if args.cpu:
        import fidelity

        torch.set_num_threads(1)
        ref, _ = fidelity.cpu_setup(Path(tempfile.mkdtemp(prefix="loop_profile_cpu_")))
        cases, prompt, short, long = ((ref, 4),), 32, 4, 8
    raw.update(short=short, long=long, prompt=prompt)
    done = raw.setdefault("cases", {})
    for model, b in cases:
        spec = load_model(model)
        todo = [o for o in loops if case_key(spec.name, b, o) not in done]
        if not todo:
            continue
        net = build_model(spec, dtype="fp32" if args.cpu else "bf16", device=dev)
        ex = Executor(net, b * (prompt + long + 16), b, device=dev, mixed_graph_tokens=0)
        ex.warmup(log)
        for overlap in todo:
            key = case_key(spec.name, b, overlap)
            done[key] = per_step_kernels(ex, b, prompt, short, long, overlap, args.cpu)
            log(f"{key}: GPU {done[key]['gpu_ms']:.2f} ms, kernels {done[key]['kernel_sum_us'] / 1e3:.2f} ms")
            write_report(out, "loop_profile", raw, report(raw))
        ex = net = None
        free()
    write_report(out, "loop_profile", raw, report(raw))
    return 0


if __name__ == "__main__":
    sys.exit(main())
