"""How evenly the engine's random-weight routers spread a step's tokens over the experts, layer by layer.

    python benchmarks/moe_routing_balance.py --model mixtral-8x7b --layers 6 --inter 512    # CPU, about a minute
    python benchmarks/moe_routing_balance.py --model deepseek-v2-lite --layers 6 --inter 256

Calibration times MoE layers with uniform routing on average (random logits, calibrate.bench.Bench._moe), but the
served model routes with its own random router over hidden states that are alike from token to token, more so in
deeper layers. This builds the model (engine.model.build_model, the serving engine's initialisation) cut to
`--layers` layers and `--inter` expert width (the routing depends on the router and the hidden states; the expert
width changes the experts' output little in scale), runs one eager step of a `--tokens`-token prompt chunk plus
one decode (engine.steps.StepRunner) and records each MoE layer's routed rows per expert. Printed per layer: the
coefficient of variation of the rows per expert beside the uniform routing's (binomial), the busiest and idlest
expert against the mean, and the row blocks of the engine's grouped GEMMs (engine.moe.kernel_config's BM) beside
their uniform expectation (a binomial sum). Writes moe_routing_balance.json under --out.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import _checkout  # noqa: F401  (the checkout's root on sys.path)
import numpy as np
import torch
from _gpu_cli import log
from scipy.stats import binom

from core.model_spec import load_model, spec_from_config
from engine.model import MoE, build_model
from engine.moe import kernel_config, route
from engine.steps import StepRunner


def cut_config(config: dict, layers: int, inter: int) -> dict:
    """The model's config with `layers` layers and experts `inter` wide (the first layer stays dense where the model
    has dense first layers)."""
    cfg = dict(config, num_hidden_layers=layers)
    key = "moe_intermediate_size" if "moe_intermediate_size" in cfg else "intermediate_size"
    cfg[key] = inter
    if "first_k_dense_replace" in cfg:
        cfg["first_k_dense_replace"] = min(cfg["first_k_dense_replace"], 1)
    return cfg


def uniform_blocks(tokens: int, top_k: int, experts: int, block: int) -> float:
    """Expected row blocks over the experts when each token picks top_k of them uniformly."""
    n = np.arange(tokens + 1)
    return experts * float(binom.pmf(n, tokens, top_k / experts) @ np.ceil(n / block))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="mixtral-8x7b", help="a catalogue MoE model")
    ap.add_argument("--config", type=Path, help="a config.json instead of --model (the tests' toy model)")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--inter", type=int, default=512, help="expert width of the cut model")
    ap.add_argument(
        "--tokens", type=int, default=880, help="prompt tokens of the step (one decode beside them)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("."))
    args = ap.parse_args(argv)
    spec = (
        spec_from_config(json.loads(args.config.read_text()), "toy")
        if args.config
        else load_model(args.model)
    )
    if not spec.is_moe:
        print(
            f"--model {spec.name}: not an MoE model; pick one with routed experts (mixtral-8x7b, deepseek-v2-lite)"
        )
        return 2
    small = spec_from_config(cut_config(spec.config, args.layers, args.inter), name=f"{spec.name}-cut")
    torch.manual_seed(args.seed)
    model = build_model(small, dtype="fp32", device="cpu", seed=args.seed)
    counts: list[list[int]] = []

    def hook(mod: MoE, inputs) -> None:
        _, ids = route(mod.router(inputs[0]), mod.top_k, mod.renormalize)
        counts.append(torch.bincount(ids.reshape(-1), minlength=mod.num_experts).tolist())

    moes = [m for m in model.modules() if isinstance(m, MoE)]
    for m in moes:
        m.register_forward_pre_hook(hook)
    StepRunner(model, 4, args.tokens + 64, device="cpu").mixed([(args.tokens, 0)], [32], warmup=0, repeat=1)
    e, k = moes[0].num_experts, moes[0].top_k
    tokens = args.tokens + 1
    mean = tokens * k / e
    uniform_cv = math.sqrt(tokens * (k / e) * (1 - k / e)) / mean
    bm = kernel_config(tokens * k, 2 * args.inter, e, small.hidden_size)["BM"]
    want = uniform_blocks(tokens, k, e, bm)
    rows = []
    for i, c in enumerate(np.array(counts)):
        blocks = int(np.ceil(c / bm).sum())
        rows.append({"moe_layer": i, "cv": float(c.std() / c.mean()), "max_over_mean": float(c.max() / c.mean()),
                     "min_over_mean": float(c.min() / c.mean()), "row_blocks": blocks})  # fmt: skip
        log(f"MoE layer {i}: rows per expert cv {rows[-1]['cv']:.2f} (uniform {uniform_cv:.2f}), busiest "
            f"{rows[-1]['max_over_mean']:.2f}x the mean, idlest {rows[-1]['min_over_mean']:.2f}x; {blocks} row blocks "
            f"of {bm} (uniform {want:.1f})")  # fmt: skip
    rec = {"model": spec.name, "layers": args.layers, "inter": args.inter, "tokens": tokens, "experts": e,
           "top_k": k, "uniform_cv": uniform_cv, "block": bm, "uniform_blocks": want, "rows": rows}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "moe_routing_balance.json").write_text(json.dumps(rec, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
