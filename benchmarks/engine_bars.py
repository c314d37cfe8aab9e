"""The engine's quality bars on one GPU (DESIGN.md, "Quality bars": Engine), plus the figures behind them.

    python benchmarks/engine_bars.py [--model llama-3.1-8b] [--out results.md] [--quick]

Decode: a batch-1 step under CUDA graphs against the weight-read floor (weight bytes ÷ measured
copy bandwidth); bar ≤ 1.25×. Prefill: an 8k-token prompt's model FLOPs (linear layers and causal
attention) per second against the measured dense bf16 GEMM rate (8192³); bar ≥ 70%. Also: the
batch-1 GEMV choice (Triton vs cuBLAS), decode at other batch sizes, fp8/int8 GEMMs, and the
layer-scaling check used for models too large for one GPU. Writes a markdown table to --out
(default $OUT/engine_bars.md, else benchmarks/results/engine_bars.md) and prints it.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import time
import traceback
from pathlib import Path

import _checkout  # noqa: F401  (first: the checkout's root on sys.path)
import torch

from core.cost_model import chunk_pairs
from core.model_spec import load_model
from engine import attention, kernels
from engine.model import build_model
from engine.steps import StepRunner, extrapolate_layers

ROWS: list[tuple[str, str, str]] = []
RAW: dict[str, float] = {}


def row(what: str, value: str, note: str = "") -> None:
    ROWS.append((what, value, note))
    print(f"{what:58s} {value:>16s}  {note}", flush=True)


def section(fn):
    """Run one part; a failure is reported in the table instead of ending the run."""

    def wrapped(*a, **k):
        try:
            return fn(*a, **k)
        except Exception as e:  # noqa: BLE001 - keep the other figures
            traceback.print_exc()
            row(f"{fn.__name__} failed", type(e).__name__, str(e).splitlines()[0][:100] if str(e) else "")
        finally:
            gc.collect()
            torch.cuda.empty_cache()

    return wrapped


@section
def ceilings(dev):
    s, b = kernels.time_copy(4 << 30, dev)
    RAW["copy_Bps"] = b / s
    row("device copy (bytes read + written)", f"{b / s / 1e12:.2f} TB/s", "4 GiB, median of 20")
    s = kernels.time_gemm(8192, 8192, 8192, "bf16", dev, repeat=10)
    RAW["gemm_flops"] = 2 * 8192**3 / s
    row("bf16 GEMM 8192x8192x8192", f"{RAW['gemm_flops'] / 1e12:.0f} TFLOP/s", "random data, median of 10")


@section
def gemm_table(dev, spec):
    h, i = spec.hidden_size, spec.intermediate_size
    qkv = (spec.num_heads + 2 * spec.num_kv_heads) * spec.head_dim
    for name, k, n in (("qkv", h, qkv), ("o", h, h), ("gate_up", h, 2 * i), ("down", i, h)):
        wb = k * n * 2
        t_cub = kernels.time_gemm(1, k, n, "bf16", dev)
        t_tri = kernels.time_gemm(1, k, n, "bf16", dev, kernel="triton_gemv")
        row(
            f"GEMV M=1 {name} {k}x{n}: cuBLAS / Triton",
            f"{t_cub * 1e6:.1f} / {t_tri * 1e6:.1f} µs",
            f"{wb / t_cub / 1e12:.2f} / {wb / t_tri / 1e12:.2f} TB/s weight read",
        )
    for m in (1, 16, 128, 2048, 8192):
        parts = []
        for dt in ("bf16", "fp8", "int8"):
            try:
                t = kernels.time_gemm(m, h, 2 * i, dt, dev)
                parts.append(f"{dt} {2 * m * h * 2 * i / t / 1e12:.0f}")
            except Exception as e:  # noqa: BLE001
                parts.append(f"{dt} n/a ({type(e).__name__})")
        row(f"GEMM gate_up M={m} TFLOP/s", " · ".join(parts), "")


@section
def attention_table(dev, spec):
    nh, nkv, hd = spec.num_heads, spec.num_kv_heads, spec.head_dim
    f = chunk_pairs(0, 8192) * spec.attn_flops_per_pair
    t = kernels.time_attention_prefill(8192, 0, nh, nkv, hd, dev)
    row("attention prefill 8192 fresh, cuDNN (one layer)", f"{t * 1e3:.2f} ms", f"{f / t / 1e12:.0f} TFLOP/s")
    with fresh_path_off():
        t = kernels.time_attention_prefill(8192, 0, nh, nkv, hd, dev)
    row(
        "attention prefill 8192 fresh, FA2 varlen (one layer)",
        f"{t * 1e3:.2f} ms",
        f"{f / t / 1e12:.0f} TFLOP/s",
    )
    t = kernels.time_attention_prefill(2048, 6144, nh, nkv, hd, dev)
    f = chunk_pairs(6144, 2048) * spec.attn_flops_per_pair
    row(
        "attention prefill chunk 2048 after 6144, FA2 varlen",
        f"{t * 1e3:.2f} ms",
        f"{f / t / 1e12:.0f} TFLOP/s",
    )
    for b, c in ((1, 512), (1, 8192), (32, 1024), (64, 4096)):
        t = kernels.time_attention_decode(b, c, nh, nkv, hd, dev)
        kv = b * c * 2 * nkv * hd * 2
        row(
            f"attention decode B={b} ctx={c} (one layer, in graph)",
            f"{t * 1e6:.1f} µs",
            f"{kv / t / 1e12:.2f} TB/s KV read",
        )
    mixed = [64, 4096, 256, 2048, 1024, 128, 8000, 16]
    t = kernels.time_attention_decode(len(mixed), mixed, nh, nkv, hd, dev)
    kv = sum(mixed) * 2 * nkv * hd * 2
    row(
        "attention decode 8 seqs, contexts 16..8000", f"{t * 1e6:.1f} µs", f"{kv / t / 1e12:.2f} TB/s KV read"
    )
    for tok in (1, 4096):
        s, b = kernels.time_elementwise(tok, spec.hidden_size, dev, spec.intermediate_size, hd)
        row(f"element-wise set, {tok} tokens (one layer)", f"{s * 1e6:.1f} µs", f"{b / s / 1e12:.2f} TB/s")


@contextlib.contextmanager
def fresh_path_off():
    """Run whole fresh prompts through FA2 like every other chunk (for comparison with the engine's cuDNN path)."""
    saved = attention.FRESH_MIN_TOKENS
    attention.FRESH_MIN_TOKENS = 1 << 30
    try:
        yield
    finally:
        attention.FRESH_MIN_TOKENS = saved


def prefill_flops(spec, tokens: int) -> float:
    linear = 2.0 * tokens * sum(g.k * g.n * g.layers for g in spec.dense_gemms)
    linear += 2.0 * tokens * spec.experts_per_token * sum(g.k * g.n * g.layers for g in spec.expert_gemms)
    lm = 2.0 * spec.hidden_size * spec.vocab_size  # logits of the last token only
    attn = spec.attn_flops_per_pair * chunk_pairs(0, tokens) * spec.num_layers
    return linear + lm + attn


@section
def model_bars(dev, spec, quick):
    model = build_model(spec, "bf16", dev)
    r = StepRunner(model, max_batch=64, max_context=8192 + 512, device=dev, kv_tokens=160_000)
    floor = spec.weight_bytes("bf16") / RAW["copy_Bps"]
    t1 = r.decode([512], repeat=50)
    RAW["decode_b1"] = t1
    row(
        "weight-read floor (weight bytes / copy BW)",
        f"{floor * 1e3:.2f} ms",
        f"{spec.weight_bytes() / 1e9:.2f} GB",
    )
    row(
        "BAR decode B=1 ctx 512, CUDA graph, Triton GEMV",
        f"{t1 * 1e3:.2f} ms",
        f"{t1 / floor:.3f}x floor (bar <= 1.25x) {'PASS' if t1 / floor <= 1.25 else 'FAIL'}",
    )
    model.set_gemv(False)
    r.reset_graphs()
    t1c = r.decode([512], repeat=30)
    row("decode B=1 ctx 512, CUDA graph, cuBLAS GEMV", f"{t1c * 1e3:.2f} ms", f"{t1c / floor:.3f}x floor")
    model.set_gemv(True)
    r.reset_graphs()
    for ctx in (8192,):
        t = r.decode([ctx])
        row(f"decode B=1 ctx {ctx}", f"{t * 1e3:.2f} ms", f"{t / floor:.3f}x floor")
    for b in (8, 32, 64) if not quick else (32,):
        t = r.decode([1024] * b)
        row(f"decode B={b} ctx 1024", f"{t * 1e3:.2f} ms", f"{b / t:.0f} tok/s")
    t = r.decode([100, 3000, 800, 8000, 17, 2500, 64, 4096])
    row("decode B=8 mixed contexts 17..8000", f"{t * 1e3:.2f} ms", "")
    t = r.mixed([(256, 1024)], [1024] * 31)
    row("mixed: chunk 256 after 1024 + 31 decodes (graph)", f"{t * 1e3:.2f} ms", "")
    r.reset_graphs()
    torch.cuda.empty_cache()
    tp = r.prefill([8192], repeat=5)
    f = prefill_flops(spec, 8192)
    RAW["prefill_8k"] = tp
    frac = f / tp / RAW["gemm_flops"]
    row(
        "BAR prefill 8192 tokens (eager, cuDNN attention)",
        f"{tp * 1e3:.1f} ms",
        f"{f / tp / 1e12:.0f} TFLOP/s = {frac:.1%} of GEMM rate (bar >= 70%) {'PASS' if frac >= 0.7 else 'FAIL'}",
    )
    with fresh_path_off():
        t = r.prefill([8192], repeat=5)
    row(
        "prefill 8192 tokens, FA2 attention",
        f"{t * 1e3:.1f} ms",
        f"{f / t / RAW['gemm_flops']:.1%} of GEMM rate",
    )
    t = r.prefill([2048] * 4)
    row("prefill 4 x 2048", f"{t * 1e3:.1f} ms", f"{4 * prefill_flops(spec, 2048) / t / 1e12:.0f} TFLOP/s")
    t = r.prefill([2048], [6144])
    row("prefill chunk 2048 after 6144 cached", f"{t * 1e3:.1f} ms", "")
    RAW["decode_b1_full"], RAW["prefill_2k_full"] = t1, r.prefill([2048])
    del r, model


@section
def layer_scaling(dev, spec):
    """Partial builds (4 and 8 layers) extrapolated to the full depth vs the full model measured above."""
    got = {}
    for n in (4, 8):
        model = build_model(spec, "bf16", dev, num_layers=n)
        # the same runner settings as the full model above (GEMV kernel, graph sizes), or the check compares
        # two configurations: benchmarks/engine_layer_scaling.py shows +0.1% when they match
        r = StepRunner(model, max_batch=64, max_context=8192 + 512, device=dev, kv_tokens=160_000, gemv=True)
        got[n] = (r.decode([512], repeat=30), r.prefill([2048]))
        del r, model
        gc.collect()
        torch.cuda.empty_cache()
    L = spec.num_layers
    for i, (label, key) in enumerate(
        (("decode B=1 ctx 512", "decode_b1_full"), ("prefill 2048", "prefill_2k_full"))
    ):
        est = extrapolate_layers(got[4][i], 4, got[8][i], 8, L)
        meas = RAW[key]
        row(
            f"layer scaling {label}: 4,8 layers -> {L}",
            f"{est * 1e3:.2f} ms",
            f"measured {meas * 1e3:.2f} ms, error {(est - meas) / meas:+.1%}",
        )


@section
def fp8_decode(dev, spec):
    model = build_model(spec, "fp8", dev)
    r = StepRunner(model, max_batch=8, max_context=8192 + 512, device=dev, kv_tokens=10_000)
    floor = spec.weight_bytes("fp8") / RAW["copy_Bps"]
    t = r.decode([512], repeat=30)
    row(
        "fp8 weights: decode B=1 ctx 512",
        f"{t * 1e3:.2f} ms",
        f"{t / floor:.3f}x fp8 floor ({floor * 1e3:.2f} ms)",
    )
    t = r.prefill([8192], repeat=3)
    row(
        "fp8 weights: prefill 8192",
        f"{t * 1e3:.1f} ms",
        f"{prefill_flops(spec, 8192) / t / 1e12:.0f} TFLOP/s",
    )
    del r, model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--out", default=None, help="markdown file to write (default $OUT/engine_bars.md)")
    ap.add_argument("--quick", action="store_true", help="bars only, fewer extras")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("engine_bars needs a CUDA GPU")
    dev = "cuda"
    spec = load_model(a.model)
    t0 = time.time()
    head = f"{torch.cuda.get_device_name()} · torch {torch.__version__} · CUDA {torch.version.cuda} · {a.model} bf16"
    print(head, flush=True)
    ceilings(dev)
    model_bars(dev, spec, a.quick)
    if not a.quick:
        layer_scaling(dev, spec)
        gemm_table(dev, spec)
        attention_table(dev, spec)
        fp8_decode(dev, spec)
    out = (
        Path(a.out)
        if a.out
        else (Path(os.environ["OUT"]) if os.environ.get("OUT") else Path(__file__).parent / "results")
        / "engine_bars.md"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# Engine bars: {head}", "", "| what | figure | note |", "|---|---|---|"]
    lines += [f"| {w} | {v} | {n} |" for w, v, n in ROWS]
    lines += ["", f"({time.time() - t0:.0f} s)"]
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(RAW, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
