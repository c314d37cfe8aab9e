"""Host time to issue one eager engine step, and where it goes (cProfile of the launches).

An eager step (prefill chunks and decodes without a CUDA graph) is host-bound when its GPU work is
shorter than the time Python takes to issue its kernels. This times that host part for a small mixed
step of the serving executor (engine/serving.py) and prints the functions it spends it in.

    python benchmarks/eager_launch.py                    # Llama-3.1-8B on the GPU
    python benchmarks/eager_launch.py --device cpu       # a tiny model (tests the script)
    python benchmarks/eager_launch.py --model deepseek-v2-lite --chunk 3072   # MLA's plain form (> 2,048 tokens)
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

import _checkout  # noqa: F401  (first: the checkout's root on sys.path)
import numpy as np

ROOT = Path(__file__).resolve().parent.parent

from core.model_spec import load_model, spec_from_config  # noqa: E402

TINY = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 96, "vocab_size": 97,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default="llama-3.1-8b")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--chunk", type=int, default=32, help="prompt tokens in the step (beside 8 decodes)")
    p.add_argument("--out", help="also write the report to this file")
    args = p.parse_args(argv)
    import torch

    from engine.model import build_model
    from engine.serving import Executor

    cpu = args.device == "cpu"
    if not cpu and not torch.cuda.is_available():
        print("error: no CUDA device; pass --device cpu", file=sys.stderr)
        return 2
    spec = spec_from_config(TINY, name="tiny") if cpu else load_model(args.model)
    model = build_model(spec, dtype="fp32" if cpu else "bf16", device=args.device, max_position=8192)
    ex = Executor(model, 8192, 16, device=args.device)
    ex.warmup()
    chunk, n = args.chunk, 8
    toks = np.ones(chunk, dtype=np.int64)
    dec = (chunk + np.arange(n, dtype=np.int64), np.full(n, 1, dtype=np.int64), np.ones(n, dtype=np.int64))

    def one() -> float:
        t0 = time.perf_counter()
        ids = ex._eager([(0, 0, chunk, toks, True)], dec)
        launch = time.perf_counter() - t0
        ids.cpu()
        return launch

    def graphed() -> float:
        ex.step(
            [(0, 0, chunk, toks, True)], dec
        )  # the serving path: a mixed-step graph where there are graphs
        return ex.last_launch_s

    for _ in range(3):
        one()
        graphed()
    launches = [one() for _ in range(args.steps)]
    graph_launches = [graphed() for _ in range(args.steps)]
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for _ in range(args.steps):
        one()
    prof.disable()
    wall = (time.perf_counter() - t0) / args.steps
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(30)
    med = float(np.median(launches))
    report = (
        f"# Eager step launch ({spec.name}, {args.device})\n\n"
        f"A {chunk}-token chunk and {n} decodes: launch median {med * 1e3:.2f} ms "
        f"({med / spec.num_layers * 1e6:.0f} µs a layer over {spec.num_layers} layers) eagerly; "
        f"{float(np.median(graph_launches)) * 1e3:.2f} ms through the executor's step "
        f"({'a mixed-step CUDA graph' if ex.last_path == 2 else 'eager'}); "
        f"eager step under cProfile {wall * 1e3:.2f} ms\n\n```\n{s.getvalue()}```\n"
    )
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
