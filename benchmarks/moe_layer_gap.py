"""One MoE layer timed alone (calibration's `moe` points) beside the same layer inside a model step.

    python benchmarks/moe_layer_gap.py --out $OUT/gap           # on the GPU (about 3 min on an H200)
    python benchmarks/moe_layer_gap.py --out /tmp/g --cpu --tiny  # the same code on a toy Mixtral (CPU)

Mixtral-8x7B's prefill-size steps are priced above what they take: a served 879-token step's expert GEMMs ran
1.02 ms a layer (kernel_profile_2026-12-03c) where calibration's points put the whole layer at 1.1-1.6 ms
(512-1,024 tokens). This times, at each token count, one layer several ways, so the difference has a name:

- **point**: `calibrate.bench.Bench.moe_times`, each backend on its own (its own weights and random inputs,
  MOE_CALLS layers a CUDA-graph replay), and the faster one, what the sweep records (`Bench._moe`);
- **in step**: the first `--layers` layers of the model (random weights, as served) run one eager prefill step of
  T tokens (engine.steps.StepRunner); every MoE layer's device time between CUDA events recorded by forward
  hooks, the median over layers and repeats;
- **alone**: that model's first MoE layer (router included) on the input it had in the step, replayed from a
  CUDA graph as the point is (`engine.timing.measure_graph`, MOE_CALLS calls);
- **alone, random input**: the same layer on N(0, 1) rows, as the point's inputs are.

Beside each: the routed rows an expert gets (mean and max, from the layer's own routing of that input), the
backend the engine's rule or tuning picks, and the median SM clock (NVML) while it ran. Writes
moe_layer_gap.json and moe_layer_gap.md under --out, rewritten after each token count.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import _checkout  # noqa: F401  (the checkout's root on sys.path)
import torch
from _gpu_cli import command_line, device_args, log, pick_device, write_report
from gemm_clocks import Sampler
from moe_mla_gpu import TINY_MIXTRAL

from calibrate import bench as cbench
from calibrate.plan import Limits
from core.errors import ConfigError
from core.model_spec import load_model, spec_from_config
from engine import moe
from engine.model import MoE, build_model
from engine.steps import StepRunner
from engine.timing import measure_graph

TOKENS = (256, 512, 880, 1024, 2048, 4096)
TINY_TOKENS = (8, 32)


class LayerEvents:
    """Forward hooks on every MoE layer: CUDA events around each call (device time in the step), and the first
    layer's input of the last call kept (`first_input`)."""

    def __init__(self, model, cuda: bool) -> None:
        self.cuda, self.pairs, self.first_input = cuda, [], None
        self.layers = [m for m in model.modules() if isinstance(m, MoE)]
        self.hooks = []
        for i, m in enumerate(self.layers):
            self.hooks.append(m.register_forward_pre_hook(lambda mod, args, i=i: self._start(i, args)))
            self.hooks.append(m.register_forward_hook(lambda mod, args, out: self._end()))
        self._open = None

    def _start(self, i: int, args) -> None:
        if i == 0:
            self.first_input = args[0].detach().clone()
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self._open = ev
        else:
            self._open = time.perf_counter()

    def _end(self) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.pairs.append((self._open, ev))
        else:
            self.pairs.append((self._open, time.perf_counter()))

    def median_s(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return statistics.median(a.elapsed_time(b) / 1e3 for a, b in self.pairs)
        return statistics.median(b - a for a, b in self.pairs)

    def close(self) -> None:
        for h in self.hooks:
            h.remove()


def routing_rows(layer: MoE, x: torch.Tensor) -> dict:
    """Rows each expert gets from `layer`'s own routing of `x`: mean, max, experts touched."""
    _, ids = layer.select(x)
    counts = torch.bincount(ids.reshape(-1), minlength=layer.num_experts).float()
    return {"mean": float(counts.mean()), "max": float(counts.max()), "touched": int((counts > 0).sum())}


def one_count(t: int, model, runner: StepRunner, b: cbench.Bench, dims: dict, dev: str, sampler) -> dict:
    """Every timing of one token count (module docstring), with the clock while each ran."""
    cuda = dev == "cuda"
    reps = {"warmup": 1, "repeat": 2} if not cuda else {"warmup": 3, "repeat": 10}
    rec: dict = {"tokens": t}

    def clocked(name: str, fn):
        t0 = time.perf_counter() - sampler.t0
        value = fn()
        rec[name + "_mhz"] = sampler.between(t0, time.perf_counter() - sampler.t0)[0]
        return value

    q = {"tokens": t, **dims}
    times = clocked("point", lambda: b.moe_times(q))  # the point is the faster backend (Bench._moe)
    rec.update(times, point=min(times.values()))
    ev = LayerEvents(model, cuda)
    try:
        rec["step_s"] = clocked("step", lambda: runner.prefill([t], **reps))
        rec["in_step"] = ev.median_s()
        x = ev.first_input
    finally:
        ev.close()
    layer = ev.layers[0]
    rec["routing_step_input"] = routing_rows(layer, x)
    xr = torch.randn(x.shape, device=x.device, generator=torch.Generator(device=x.device).manual_seed(t))
    xr = xr.to(x.dtype)
    rec["routing_random_input"] = routing_rows(layer, xr)
    rec["backend"] = moe.moe_backend(x, t * layer.top_k, layer.w_gate_up)
    calls = 1 if not cuda else cbench.MOE_CALLS
    timing = {"calls": calls, "repeat": b.repeat, "warmup": b.warmup}
    with torch.no_grad():
        rec["alone"] = clocked("alone", lambda: measure_graph(lambda: layer(x), dev, **timing))
        rec["alone_random"] = clocked("alone_random", lambda: measure_graph(lambda: layer(xr), dev, **timing))
    return rec


def table(raw: dict) -> str:
    lines = [
        f"# One MoE layer alone and in a step ({raw['device']}, {raw['model']})",
        "",
        f"`{raw['command']}`; ms a layer. point: calibration's `moe` point (calibrate.bench.Bench._moe, the faster "
        "backend) and each backend; in step: the model's MoE layers between CUDA events in an eager prefill step "
        f"of its first {raw['layers']} layers (median over layers and repeats); alone: the model's first MoE layer "
        "on its step input, and on N(0,1) rows, from a CUDA graph as the point is. rows: routed rows an expert "
        "gets from the step input (mean / max); MHz: median SM clock while it ran.",
        "",
        "| tokens | point | triton | grouped_mm | in step | alone | alone, random | point / in step | rows | "
        "backend | MHz point / step / alone |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in raw["rows"]:
        ms = {k: r.get(k) for k in ("point", "triton", "grouped_mm", "in_step", "alone", "alone_random")}
        cells = [f"{v * 1e3:.3f}" if v else "-" for v in ms.values()]
        rows = r["routing_step_input"]
        mhz = " / ".join(
            f"{r[k + '_mhz']:.0f}" if r.get(k + "_mhz") else "-" for k in ("point", "step", "alone")
        )
        lines.append(
            f"| {r['tokens']} | " + " | ".join(cells) + f" | {r['point'] / r['in_step']:.2f} | "
            f"{rows['mean']:.0f} / {rows['max']:.0f} | {r['backend']} | {mhz} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--model", default="mixtral-8x7b", help="a catalogue MoE model (default mixtral-8x7b)")
    ap.add_argument("--layers", type=int, default=4, help="the model's first N layers are built (default 4)")
    ap.add_argument(
        "--tokens", type=int, nargs="*", help=f"token counts (default {' '.join(map(str, TOKENS))})"
    )
    device_args(ap, "a toy Mixtral (2 layers, 4 experts) instead of the catalogue model")
    args = ap.parse_args(argv)
    try:
        spec = spec_from_config(TINY_MIXTRAL, name="tiny-mixtral") if args.tiny else load_model(args.model)
    except ConfigError as e:
        print(f"error: --model: {e}", file=sys.stderr)
        return 2
    if not spec.is_moe:
        print(
            f"error: --model {args.model} has no MoE layers; pick one that has (mixtral-8x7b)",
            file=sys.stderr,
        )
        return 2
    dev = pick_device(args, paired=True)
    if dev is None:
        return 2
    tokens = args.tokens or (TINY_TOKENS if args.tiny else TOKENS)
    args.out.mkdir(parents=True, exist_ok=True)
    args.layers = min(args.layers, spec.num_layers)
    model = build_model(spec, dtype="fp32" if dev == "cpu" else "bf16", device=dev, num_layers=args.layers)
    runner = StepRunner(model, 1, max(tokens) + 8, device=dev, cuda_graphs=False, serving=False)
    b = cbench.Bench(spec, dev, Limits())
    layer = next(m for m in model.modules() if isinstance(m, MoE))
    e, i, h = layer.w_gate_up.shape[0], layer.w_gate_up.shape[1] // 2, layer.w_gate_up.shape[2]
    dims = {"experts": e, "top_k": layer.top_k, "hidden": h, "inter": i}
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    raw = {"device": name, "torch": torch.__version__, "model": spec.name, "layers": args.layers,
           "command": command_line("moe_layer_gap.py", argv), "rows": []}  # fmt: skip
    with Sampler() as sampler:
        for t in tokens:
            raw["rows"].append(one_count(t, model, runner, b, dims, dev, sampler))
            r = raw["rows"][-1]
            log(f"{t} tokens: point {r['point'] * 1e3:.3f} ms, in step {r['in_step'] * 1e3:.3f}, "
                f"alone {r['alone'] * 1e3:.3f}, alone random {r['alone_random'] * 1e3:.3f}")  # fmt: skip
            write_report(args.out, "moe_layer_gap", raw, table(raw))
    print(table(raw))
    return 0


if __name__ == "__main__":
    sys.exit(main())
