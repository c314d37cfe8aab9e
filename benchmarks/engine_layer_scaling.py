"""Layer-by-layer measurement check: decode and prefill step times of partial builds (2..32 layers).

Models too large for one GPU are timed with a few layers and extrapolated; this prints how a linear
fit over partial builds compares with the full model on a model that fits.

    python benchmarks/engine_layer_scaling.py --out benchmarks/results/engine_layer_scaling.md
"""

from __future__ import annotations

import argparse
import gc
import os
from pathlib import Path

import _checkout  # noqa: F401  (first: the checkout's root on sys.path)
import torch

from core.model_spec import load_model  # noqa: E402
from engine.model import build_model  # noqa: E402
from engine.steps import StepRunner, extrapolate_layers  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    spec = load_model(a.model)
    L = spec.num_layers
    depths = [2, 4, 8, 16, L]
    rows = {}
    for n in depths:
        for gemv in (True, False):
            model = build_model(spec, "bf16", "cuda", num_layers=n)
            r = StepRunner(model, max_batch=8, max_context=4096, device="cuda", kv_tokens=16384, gemv=gemv)
            rows[(n, gemv)] = (r.decode([512], repeat=50), r.decode([512] * 8, repeat=50), r.prefill([2048]))
            del r, model
            gc.collect()
            torch.cuda.empty_cache()
            print(n, gemv, [f"{x * 1e3:.3f}" for x in rows[(n, gemv)]], flush=True)
    lines = [
        f"{torch.cuda.get_device_name()} · torch {torch.__version__} · {a.model} bf16; step times in ms",
        "",
        "| layers | GEMV kernel | decode B=1 | decode B=8 | prefill 2048 |",
        "|---|---|---|---|---|",
    ]
    for (n, gemv), (d1, d8, p) in rows.items():
        lines.append(
            f"| {n} | {'triton' if gemv else 'cublas'} | {d1 * 1e3:.3f} | {d8 * 1e3:.3f} | {p * 1e3:.2f} |"
        )
    lines += [
        "",
        "| from layers | GEMV | decode B=1 error | decode B=8 error | prefill error |",
        "|---|---|---|---|---|",
    ]
    for a_, b_ in ((2, 4), (4, 8), (8, 16)):
        for gemv in (True, False):
            errs = []
            for i in range(3):
                est = extrapolate_layers(rows[(a_, gemv)][i], a_, rows[(b_, gemv)][i], b_, L)
                errs.append(est / rows[(L, gemv)][i] - 1)
            lines.append(
                f"| {a_},{b_} | {'triton' if gemv else 'cublas'} | "
                + " | ".join(f"{e:+.1%}" for e in errs)
                + " |"
            )
    text = "\n".join(lines)
    print(text)
    out = a.out or (
        os.path.join(os.environ["OUT"], "engine_layer_scaling.md") if os.environ.get("OUT") else None
    )
    if out:
        Path(out).write_text(
            "# Layer-by-layer scaling\n\n`python benchmarks/engine_layer_scaling.py`\n\n" + text + "\n"
        )


if __name__ == "__main__":
    main()
