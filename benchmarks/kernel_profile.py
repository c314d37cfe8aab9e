"""Where a step's GPU time goes: per-kernel device time of whole engine steps, for the steps whose bars are missed.

    python benchmarks/kernel_profile.py --out $OUT              # on the GPU (about 3 minutes on an H200)
    python benchmarks/kernel_profile.py --out /tmp/kp --cpu --tiny   # the same code on toy configs (CPU)
    python benchmarks/kernel_profile.py --out $OUT --only deepseek_eager_2x1600_45 --host   # and the host's time

Each case builds a catalogue model (random weights) and runs one step shape eagerly (engine.steps.StepRunner
without the serving executor or CUDA graphs, so every kernel is launched and named), first timed, then under
torch.profiler for `--repeat` steps. Writes per case `<case>.txt` (the profiler's table: kernels by device
time, per step) and one `kernel_profile.json` with each case's top kernels and its eager and graphed step
times. The cases are the steps of issues 13 and 19 that are furthest from their bars: Mixtral decode at
batch 1 and a 4,096-token prefill, DeepSeek-V2-Lite prompt steps above the graph cap, Qwen2.5-7B decode at
batch 256 with 1k contexts, and Llama-3.1-8B int4 decode at batch 1.
"""

from __future__ import annotations

import os
import sys

if "--cpu" in sys.argv:  # Triton kernels through its interpreter on the CPU (set before importing it)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import _checkout  # noqa: E402,F401  (the checkout's root on sys.path)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from core.model_spec import load_model, spec_from_config  # noqa: E402
from engine.model import build_model  # noqa: E402
from engine.steps import StepRunner  # noqa: E402


def ragged(n: int, seed: int, mean: int = 900) -> list[tuple[int, int]]:
    """n decodes of a mixed shape with lognormal contexts of about `mean` tokens (sigma 0.8, the longest 2-13x the
    mean, as calibration's and validation's mixed steps have: calibrate.plan), seeded."""
    ctx = np.random.default_rng(seed).lognormal(np.log(mean) - 0.32, 0.8, n)
    return [(1, int(c)) for c in np.clip(np.round(ctx), 16, 16_000)]


# (case, model, weight dtype, step kind, shape): decode shape = context per sequence × batch; prefill = tokens
CASES = [
    ("mixtral_decode_b1", "mixtral-8x7b", "bf16", "decode", [512]),
    ("mixtral_decode_b8", "mixtral-8x7b", "bf16", "decode", [512] * 8),
    ("mixtral_prefill_4096", "mixtral-8x7b", "bf16", "prefill", [4096]),
    # the Mixtral fidelity row's small prompt steps, priced 10-15% under (session 11)
    ("mixtral_mixed_91_2", "mixtral-8x7b", "bf16", "mixed", [(91, 0)] + [(1, 600)] * 2),
    ("mixtral_mixed_879_1", "mixtral-8x7b", "bf16", "mixed", [(879, 0), (1, 600)]),
    ("deepseek_prefill_2048", "deepseek-v2-lite", "bf16", "prefill", [2048]),
    ("deepseek_prefill_4096", "deepseek-v2-lite", "bf16", "prefill", [4096]),
    ("deepseek_decode_b32", "deepseek-v2-lite", "bf16", "decode", [1024] * 32),
    # the fidelity row's steps priced furthest off (session 11): a graphed mixed step (a 640-token chunk after
    # 512 cached + 40 decodes, as the row's mean mixed step), and an eager one (2 chunks of 1,600 after 800 + 45
    # decodes: the plain prompt form). Mixed shapes are (chunk or 1, tokens cached before it) per sequence.
    ("deepseek_mixed_640_40", "deepseek-v2-lite", "bf16", "mixed", [(640, 512)] + [(1, 1000)] * 40),
    ("deepseek_eager_2x1600_45", "deepseek-v2-lite", "bf16", "mixed", [(1600, 800)] * 2 + [(1, 1000)] * 45),
    # session 12's rows: DeepSeek's fresh 200-500-token prompts (20.0 ms for 374 tokens, 14.3 priced) and
    # Mixtral's 1-2k-token mixed steps (13-14% over their price)
    ("deepseek_mixed_374_12", "deepseek-v2-lite", "bf16", "mixed", [(374, 0)] + [(1, 700)] * 12),
    ("mixtral_mixed_1500_50", "mixtral-8x7b", "bf16", "mixed", [(1500, 500)] + [(1, 800)] * 50),
    ("qwen7b_decode_b64", "qwen2.5-7b", "bf16", "decode", [1088] * 64),
    ("qwen7b_decode_b256", "qwen2.5-7b", "bf16", "decode", [1088] * 256),
    ("gemma3_12b_decode_b1", "gemma-3-12b", "bf16", "decode", [700]),  # the fidelity row's decode gap (-11%)
    ("gemma3_12b_decode_b8", "gemma-3-12b", "bf16", "decode", [700] * 8),
    ("qwen7b_decode_b8", "qwen2.5-7b", "bf16", "decode", [700] * 8),  # the same shape where the model holds
    # the per-step GPU time outside the kernels (graph replay gaps), bf16 beside int4 at one sequence (session 17)
    ("llama8b_decode_b1", "llama-3.1-8b", "bf16", "decode", [1024]),
    ("llama8b_decode_b64", "llama-3.1-8b", "bf16", "decode", [1088] * 64),
    ("llama8b_decode_b256", "llama-3.1-8b", "bf16", "decode", [1088] * 256),
    # validation shapes whose back-to-back step time (calibration_runs/h200_session17_validate) is above the groups
    ("llama8b_decode_b192_700", "llama-3.1-8b", "bf16", "decode", [700] * 192),
    ("llama8b_decode_b3_700", "llama-3.1-8b", "bf16", "decode", [700] * 3),
    # session 18: the served step's own kernels (graphed, under the profiler) beside its span, for the
    # steps whose prices are furthest off: validation's mixed shapes (priced 1.5-4 ms under), Qwen's large batches
    ("llama8b_mixed_96_40", "llama-3.1-8b", "bf16", "mixed", [(96, 0)] + [(1, 700)] * 40),
    ("llama8b_mixed_384_16", "llama-3.1-8b", "bf16", "mixed", [(384, 0)] + [(1, 700)] * 16),
    ("llama8b_mixed_1200_200", "llama-3.1-8b", "bf16", "mixed", [(1200, 0)] + [(1, 700)] * 200),
    ("llama8b_mixed_768_48", "llama-3.1-8b", "bf16", "mixed", [(768, 500)] + [(1, 700)] * 48),
    ("qwen7b_decode_b128", "qwen2.5-7b", "bf16", "decode", [1088] * 128),
    # the same mixed shapes with uneven decode contexts, as validation's are (--mixed-units whole: the rule before)
    ("llama8b_mixed_96_40_ragged", "llama-3.1-8b", "bf16", "mixed", [(96, 0)] + ragged(40, 1)),
    ("llama8b_mixed_384_16_ragged", "llama-3.1-8b", "bf16", "mixed", [(384, 0)] + ragged(16, 2)),
    ("llama8b_mixed_768_48_ragged", "llama-3.1-8b", "bf16", "mixed", [(768, 0)] + ragged(48, 3)),
    ("llama8b_mixed_1200_200_ragged", "llama-3.1-8b", "bf16", "mixed", [(1200, 0)] + ragged(200, 4)),
    ("llama8b_int4_decode_b1", "llama-3.1-8b", "int4", "decode", [1024]),
    ("llama8b_int4_prefill_2048", "llama-3.1-8b", "int4", "prefill", [2048]),
    # session 19's H200 fidelity rows: DeepSeek's small decode batches priced 13-27% over, Mixtral's decode steps
    # and 128-512-token mixed steps 9-25% over, Gemma's 256-2,048-token mixed steps 7-11% over
    ("deepseek_decode_b1", "deepseek-v2-lite", "bf16", "decode", [700]),
    ("deepseek_decode_b4", "deepseek-v2-lite", "bf16", "decode", [700] * 4),
    ("deepseek_decode_b8", "deepseek-v2-lite", "bf16", "decode", [700] * 8),
    ("mixtral_decode_b1_700", "mixtral-8x7b", "bf16", "decode", [700]),
    ("mixtral_decode_b64", "mixtral-8x7b", "bf16", "decode", [700] * 64),
    ("mixtral_mixed_256_24", "mixtral-8x7b", "bf16", "mixed", [(256, 0)] + [(1, 700)] * 24),
    ("gemma3_12b_mixed_512_4", "gemma-3-12b", "bf16", "mixed", [(512, 0)] + [(1, 700)] * 4),
    ("gemma3_12b_prefill_1024", "gemma-3-12b", "bf16", "prefill", [1024]),
    # session 21: a speculative round's verification (k + 1 query tokens after the context) is priced 15-27% under
    # what the round takes from 2k tokens of context (benchmarks/spec_round_steps.py): the same shapes as steps
    ("llama8b_verify_3_256", "llama-3.1-8b", "bf16", "mixed", [(3, 256)]),
    ("llama8b_verify_3_1024", "llama-3.1-8b", "bf16", "mixed", [(3, 1024)]),
    ("llama8b_verify_3_4096", "llama-3.1-8b", "bf16", "mixed", [(3, 4096)]),
    ("llama8b_verify_5_4096", "llama-3.1-8b", "bf16", "mixed", [(5, 4096)]),
]
TINY = {
    "model_type": "llama", "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 64, "intermediate_size": 512, "vocab_size": 128,
    "max_position_embeddings": 1024, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
}  # fmt: skip


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _device_us(evt, cpu: bool) -> float:
    """Self device time of a profiler row in µs (the attribute's name changed across torch versions); on the
    CPU its self CPU time."""
    names = ("self_cpu_time_total",) if cpu else ("self_device_time_total", "self_cuda_time_total")
    for name in names:
        if hasattr(evt, name):
            return float(getattr(evt, name))
    return 0.0


def profile_case(
    runner: StepRunner, kind: str, shape: list[int], repeat: int, cpu: bool, host: bool = False
) -> dict:
    """The eager step's time, its kernels under torch.profiler and, with `host`, where its host time goes: the
    seconds to issue a step (`issue_s`: the calls not waited for, the device running behind them), its operators
    by host time (`cpu_table`) and cProfile's functions (`host_table`)."""
    if kind == "decode":
        q, prior = [1] * len(shape), [c - 1 for c in shape]
    elif kind == "mixed":
        q, prior = [a for a, _ in shape], [b for _, b in shape]
    else:
        q, prior = list(shape), [0] * len(shape)
    fn, _ = runner._prepare(q, prior)
    for _ in range(3):
        fn()
    if not cpu:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    if not cpu:
        torch.cuda.synchronize()
    eager_s = (time.perf_counter() - t0) / repeat
    prof = _profiled(lambda: [fn() for _ in range(repeat)], cpu)
    rows = _device_rows(prof, repeat, cpu)
    sort = "self_cuda_time_total" if not cpu else "self_cpu_time_total"
    try:
        table = prof.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=100)
    except Exception:  # noqa: BLE001 - the sort key's name differs across versions
        table = prof.key_averages().table(sort_by="self_device_time_total", row_limit=40)
    out = {"eager_step_s": eager_s, "kernel_sum_us": sum(r["us_per_step"] for r in rows), "top": rows[:40],
           "launches_per_step": sum(r["calls_per_step"] for r in rows), "table": table}  # fmt: skip
    if host:
        out["issue_s"] = _issue_s(fn, repeat, cpu)
        out["cpu_table"] = prof.key_averages().table(
            sort_by="self_cpu_time_total", row_limit=60, max_name_column_width=100
        )
        out["host_table"] = host_hotspots(fn, repeat, cpu)
    return out


def _issue_s(fn, repeat: int, cpu: bool) -> float:
    """Host seconds to issue one step: `repeat` calls not waited for (on the GPU the device runs behind them)."""
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    issue = (time.perf_counter() - t0) / repeat
    if not cpu:
        torch.cuda.synchronize()
    return issue


def host_hotspots(fn, repeat: int, cpu: bool) -> str:
    """cProfile over `repeat` steps (not waited for): the host's functions by their own time, then by cumulative
    time, 40 of each, per the whole run."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(repeat):
        fn()
    prof.disable()
    if not cpu:
        torch.cuda.synchronize()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf).strip_dirs()
    stats.sort_stats("tottime").print_stats(40)
    stats.sort_stats("cumulative").print_stats(40)
    return buf.getvalue()


def _profiled(run, cpu: bool):
    """torch.profiler over `run()` (CUDA activity too on the GPU, synchronised before it stops)."""
    acts = [torch.profiler.ProfilerActivity.CPU]
    if not cpu:
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        run()
        if not cpu:
            torch.cuda.synchronize()
    return prof


def _device_rows(prof, repeat: int, cpu: bool) -> list[dict]:
    """The profiler's device rows (kernels, copies, memsets), per step, longest first."""
    rows = []
    for evt in prof.key_averages():
        us = _device_us(evt, cpu)
        if us <= 0 or (not cpu and getattr(evt, "device_type", None) != torch.autograd.DeviceType.CUDA):
            continue
        rows.append(
            {"kernel": evt.key[:160], "us_per_step": us / repeat, "calls_per_step": evt.count / repeat}
        )
    rows.sort(key=lambda r: -r["us_per_step"])
    return rows


def served_kernels(step, repeat: int, cpu: bool) -> dict:
    """The served step's own device work: `step(repeat)` (the graphed runner's timed call, its graphs already
    captured) under the profiler; a CUDA graph's kernels are recorded one by one. Beside the step's span this
    splits its time into kernels and the GPU's idle time between them."""
    rows = _device_rows(_profiled(lambda: step(repeat), cpu), repeat, cpu)
    return {"served_kernel_sum_us": sum(r["us_per_step"] for r in rows), "served_top": rows[:25],
            "served_launches_per_step": sum(r["calls_per_step"] for r in rows)}  # fmt: skip


def _served(graphed: StepRunner, kind: str, shape: list) -> tuple[float, object]:
    """(the graphed runner's median step seconds, a callable timing `repeat` more steps of the same shape)."""
    if kind == "decode":
        return graphed.decode(shape), lambda n: graphed.decode(shape, warmup=0, repeat=n)
    if kind == "mixed":
        chunks = [(a, b) for a, b in shape if a > 1]
        dec = [b + 1 for a, b in shape if a == 1]
        return graphed.mixed(chunks, dec, warmup=2, repeat=5), lambda n: graphed.mixed(
            chunks, dec, warmup=0, repeat=n
        )
    return graphed.prefill(shape, warmup=2, repeat=5), lambda n: graphed.prefill(shape, warmup=0, repeat=n)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="one toy model for every case (with --cpu)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--only", default="", help="comma-separated case names")
    ap.add_argument(
        "--host",
        action="store_true",
        help="also where the eager step's host time goes: <case>_cpu.txt "
        "(operators by host time), <case>_host.txt (cProfile) and issue_s (seconds to issue a step)",
    )
    ap.add_argument(
        "--mixed-units",
        choices=("split", "whole"),
        default="split",
        help="whole: mixed steps' decodes one unit each whatever their contexts (engine.serving.SPLIT_MIXED off)",
    )
    ap.add_argument(
        "--max-context",
        type=int,
        default=0,
        help="the graphed runner's max_context (what a mixed graph's attention is captured for; "
        "calibration's runner has 32,768); default: the case's longest sequence",
    )
    args = ap.parse_args(argv)
    if args.mixed_units == "whole":
        from engine import serving

        serving.SPLIT_MIXED = False
    args.out.mkdir(parents=True, exist_ok=True)
    dev = "cpu" if args.cpu else "cuda"
    res_path = args.out / "kernel_profile.json"
    res = json.loads(res_path.read_text()) if res_path.exists() else {}
    res.setdefault("device", torch.cuda.get_device_name() if not args.cpu else "cpu")
    res.setdefault("torch", torch.__version__)
    only = {c for c in args.only.split(",") if c}
    built: tuple = (None, None, None)
    for case, name, dtype, kind, shape in CASES:
        if (only and case not in only) or case in res.get("cases", {}):
            continue
        spec = spec_from_config(TINY, "tiny") if args.tiny else load_model(name)
        if args.tiny:
            shape = [tuple(min(x, 64) for x in s) if kind == "mixed" else min(s, 64) for s in shape][:4]
        lens = [a + b for a, b in shape] if kind == "mixed" else shape
        t0 = time.perf_counter()
        try:
            if built[0] != (name, dtype):
                built = (None, None, None)
                gc.collect()
                if not args.cpu:
                    torch.cuda.empty_cache()
                model = build_model(spec, dtype="fp32" if args.cpu else dtype, device=dev)
                if dtype == "int4" and not args.cpu:
                    from engine.quant import tune_model

                    tune_model(model, 16, log=log)
                built = ((name, dtype), model, None)
            model = built[1]
            ctx = max(lens) + 8
            runner = StepRunner(model, len(shape), ctx, device=dev, cuda_graphs=False, serving=False,
                                kv_tokens=sum(lens) + 64)  # fmt: skip
            rec = profile_case(runner, kind, shape, args.repeat, args.cpu, args.host)
            graphed = StepRunner(model, len(shape), max(ctx, args.max_context), device=dev, cuda_graphs=not args.cpu,
                                 kv_tokens=sum(lens) + 64)  # fmt: skip
            rec["served_step_s"], again = _served(graphed, kind, shape)
            rec.update(served_kernels(again, args.repeat, args.cpu))
            graphed = runner = None
        except Exception as exc:  # noqa: BLE001 - one case failing does not lose the others
            rec = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            log(f"{case}: {rec['error']}")
        rec.update(model=name, dtype=dtype, kind=kind, batch=len(shape), length=lens[0],
                   wall_s=time.perf_counter() - t0)  # fmt: skip
        for key, suffix in (("cpu_table", "_cpu"), ("host_table", "_host")):
            if key in rec:
                (args.out / f"{case}{suffix}.txt").write_text(rec.pop(key))
        if "table" in rec:
            (args.out / f"{case}.txt").write_text(rec.pop("table"))
            log(f"{case}: eager {rec['eager_step_s'] * 1e3:.2f} ms, served {rec['served_step_s'] * 1e3:.2f} ms, "
                f"kernels {rec['kernel_sum_us'] / 1e3:.2f} ms (served: {rec['served_kernel_sum_us'] / 1e3:.2f}); top: "
                + "; ".join(f"{r['kernel'][:50]} {r['us_per_step']:.0f}us" for r in rec["top"][:4]))  # fmt: skip
        res.setdefault("cases", {})[case] = rec
        res_path.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
