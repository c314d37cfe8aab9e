"""Does a prompt step run slower when such steps come back to back than between decode steps? (GPU clocks under
sustained tensor-core load.)

    python benchmarks/step_duty_gpu.py --out $OUT/duty              # on the GPU (about 2 minutes on an H200)
    python benchmarks/step_duty_gpu.py --out /tmp/duty --cpu --tiny  # the same code on a toy config (CPU)

Calibration times each whole step repeated back to back; a serving loop runs a prompt step between decode
steps, which keep the tensor cores far less busy. benchmarks/gemm_clocks.py measured a dense GEMM at 0.86x its
burst rate once it had run back to back for ~0.1 s, and at full rate when it took half the time or less. This
measures the same thing on whole serving steps of Llama-3.1-8B (bf16, random weights, engine/serving.py's
executor and its CUDA graphs): a mixed step (one prompt chunk of `chunk` tokens beside 16 decodes of ~900-token
contexts) or a 4,096-token prompt step, each timed by CUDA events under four patterns for --seconds each:

- back to back: the step repeated (calibration's pattern);
- 1:4 and 1:8: the step, then 4 (8) decode steps of the same 16 sequences (a serving loop at moderate load);
- after a pause: the step, then 30 ms with nothing on the GPU.

Per pattern: the step's median GPU ms over the pattern's second half, against back to back, and the SM clock and
power (pynvml) sampled after each of its steps. Writes step_duty.json and step_duty.md under --out.
"""

from __future__ import annotations

import os
import sys

if "--cpu" in sys.argv:  # the Triton kernels run in Triton's interpreter on the CPU (set before importing it)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import _checkout  # noqa: E402,F401  (the checkout's root on sys.path)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _gpu_cli import command_line, device_args, pick_device, write_report  # noqa: E402

from core.model_spec import load_model, spec_from_config  # noqa: E402
from engine.model import build_model  # noqa: E402
from engine.serving import Executor  # noqa: E402

DECODES, CONTEXT, PAUSE_S = 16, 900, 0.03
PATTERNS = (("back to back", 0, 0.0), ("1:4", 4, 0.0), ("1:8", 8, 0.0), ("after a pause", 0, PAUSE_S))
TINY = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 96, "vocab_size": 97,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0}  # fmt: skip


class Clock:
    """SM clock (MHz) and power (W) of GPU 0 through pynvml; NaN where it is missing (the CPU)."""

    def __init__(self, cuda: bool) -> None:
        self.h = None
        if cuda:
            try:
                import pynvml

                pynvml.nvmlInit()
                self.nv, self.h = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
            except Exception:  # noqa: BLE001 (no NVML: the timings stand alone)
                self.h = None

    def read(self) -> tuple[float, float]:
        if self.h is None:
            return float("nan"), float("nan")
        nv = self.nv
        return float(nv.nvmlDeviceGetClockInfo(self.h, nv.NVML_CLOCK_SM)), nv.nvmlDeviceGetPowerUsage(
            self.h
        ) / 1e3


def steps(ex: Executor, chunk: int, decodes: int, beside: bool) -> tuple:
    """(the prompt step's arguments, the decode step's: `decodes` sequences, beside the prompt chunk too when
    `beside`) on regions placed at the start of the pool."""
    rng = np.random.default_rng(0)
    ex.reset(decodes + 1)
    start = ex.place(0, chunk + 1)
    ctx = np.full(decodes, CONTEXT, dtype=np.int64)
    starts = np.array([ex.place(1 + i, CONTEXT + 8) for i in range(decodes)], dtype=np.int64)
    toks = rng.integers(1, ex.vocab, size=decodes, dtype=np.int64)
    prompt = rng.integers(1, ex.vocab, size=chunk, dtype=np.int64)
    dec = (starts, ctx, toks) if beside else None
    return ([(start, 0, chunk, prompt, True)], dec), ([], (starts, ctx, toks))


def pattern(
    ex: Executor, clock: Clock, step: tuple, decode: tuple, between: int, pause: float, seconds: float
):
    """Run the pattern for `seconds`; the prompt step's GPU seconds, SM MHz and W over its second half."""
    t0, rows = time.perf_counter(), []
    while (t := time.perf_counter() - t0) < seconds:
        ex.step(*step)
        gpu = ex.last_gpu_s  # (the CPU has no events: the step's wall time)
        rows.append((t, gpu if np.isfinite(gpu) else time.perf_counter() - t0 - t, *clock.read()))
        for _ in range(between):
            ex.step(*decode)
        if pause:
            time.sleep(pause)
    a = np.array(rows)
    late = a[a[:, 0] >= seconds / 2]
    late = late if len(late) else a
    return {"steps": len(a), "gpu_ms": float(np.median(late[:, 1])) * 1e3,
            "sm_mhz": float(np.median(late[:, 2])), "watts": float(np.median(late[:, 3]))}  # fmt: skip


def tables(raw: dict) -> str:
    out = [f"# Prompt steps back to back and between decode steps ({raw['device']}, torch {raw['torch']})", "",
           f"`{raw['command']}`; {raw['model']}, the prompt step beside {DECODES} decodes of {CONTEXT}-token "
           "contexts (the 4,096-token step alone); each pattern for its seconds, medians over its second half.", "",
           "| step | pattern | steps | GPU ms | vs back to back | SM MHz | W |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for case in raw["cases"]:
        base = case["patterns"]["back to back"]["gpu_ms"]
        for name, r in case["patterns"].items():
            out.append(f"| {case['name']} | {name} | {r['steps']} | {r['gpu_ms']:.2f} | {r['gpu_ms'] / base:.3f} | "
                       f"{r['sm_mhz']:.0f} | {r['watts']:.0f} |")  # fmt: skip
    return "\n".join(out + [""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the results (the device's $OUT)")
    device_args(p, "a toy Llama config")
    p.add_argument("--seconds", type=float, help="seconds per pattern (default 3; --cpu 0.2)")
    args = p.parse_args(argv)
    dev = pick_device(args, paired=True)
    if dev is None:
        return 2
    seconds = args.seconds or (0.2 if args.cpu else 3.0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = spec_from_config(TINY, name="tiny-llama") if args.tiny else load_model("llama-3.1-8b")
    model = build_model(spec, dtype="fp32" if args.cpu else "bf16", device=dev)
    n = 4 if args.cpu else DECODES
    cases = [("mixed 1,024 + 16", 1024, True), ("mixed 256 + 16", 256, True), ("prompt 4,096", 4096, False)]
    if args.cpu:
        torch.set_num_threads(1)
        cases = [("mixed 64 + 4", 64, True), ("prompt 128", 128, False)]
    ex = Executor(model, 8192 + DECODES * (CONTEXT + 8), DECODES, device=dev)
    ex.warmup()
    ex.time_gpu = True
    clock = Clock(dev == "cuda")
    raw = {"command": command_line("step_duty_gpu.py", argv), "torch": torch.__version__, "model": spec.name,
           "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "cases": []}  # fmt: skip
    for name, chunk, beside in cases:
        step, decode = steps(ex, chunk, n, beside)
        ex.step(*step)  # compiles / warms what this shape launches
        case = {"name": name, "chunk": chunk, "decodes": n if beside else 0, "patterns": {}}
        for pname, between, pause in PATTERNS:
            time.sleep(0.5 if dev == "cuda" else 0.0)  # every pattern from the same rest
            case["patterns"][pname] = pattern(ex, clock, step, decode, between, pause, seconds)
            print(f"{name}, {pname}: {case['patterns'][pname]}", flush=True)
        raw["cases"].append(case)
        write_report(out, "step_duty", raw, tables(raw))
    return 0


if __name__ == "__main__":
    sys.exit(main())
