"""How evenly the engine's random-weight routers spread a step's tokens over the experts, layer by layer, and what
that costs the MoE layers against uniform routing.

    python benchmarks/moe_routing_balance.py --model mixtral-8x7b --layers 6 --inter 512    # CPU, about a minute
    python benchmarks/moe_routing_balance.py --model deepseek-v2-lite --layers 6 --inter 256
    python benchmarks/moe_routing_balance.py --model mixtral-8x7b --tokens 2048 --time 128,256,512,1024,2048 \
        --out $OUT/routing                                                                 # GPU: timings

Calibration times MoE layers with uniform routing on average (random logits, calibrate.bench.Bench._moe), but the
model's random router routes over hidden states that are alike from token to token, more so in
deeper layers. This builds the model (engine.model.build_model, the serving engine's initialisation), cut to
`--layers` layers and `--inter` expert width where given (the routing depends on the router and the hidden states;
the expert width changes the experts' output little in scale), runs one eager step of a `--tokens`-token prompt
chunk plus one decode (engine.steps.StepRunner) and records each MoE layer's input and routing. Printed per layer:
the coefficient of variation of the rows per expert beside the uniform routing's (binomial), the busiest and
idlest expert against the mean, and the row blocks of the engine's grouped GEMMs (engine.moe.kernel_config's BM)
beside their uniform expectation (a binomial sum).

The engine serves with uniform routing (engine.moe.ROUTINGS, why there); this measures the router's own picks,
`route`. With `--time`, each MoE layer's routed experts (engine.moe.routed_experts, on each expert backend that runs
here) are timed from a CUDA graph on the first t tokens of the step for each t listed, once with the router's picks
and once with the engine's uniform routing of the same rows, and the sums over the layers printed: what the random
router's imbalance would cost a step. Writes moe_routing_balance.json under --out (after every timed
token count).
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
from scipy.optimize import minimize_scalar
from scipy.stats import binom

import engine.moe as moe
from core.model_spec import load_model, spec_from_config
from core.parallelism import expert_inclusion
from engine.model import MoE, build_model
from engine.steps import StepRunner
from engine.timing import measure_graph


def cut_config(config: dict, layers: int, inter: int) -> dict:
    """The model's config with `layers` layers and experts `inter` wide (the first layer stays dense where the model
    has dense first layers); 0 keeps the model's own."""
    cfg = dict(config)
    if layers:
        cfg["num_hidden_layers"] = layers
        if "first_k_dense_replace" in cfg:
            cfg["first_k_dense_replace"] = min(cfg["first_k_dense_replace"], 1)
    if inter:
        cfg["moe_intermediate_size" if "moe_intermediate_size" in cfg else "intermediate_size"] = inter
    return cfg


def uniform_blocks(tokens: int, top_k: int, experts: int, block: int) -> float:
    """Expected row blocks over the experts when each token picks top_k of them uniformly."""
    n = np.arange(tokens + 1)
    return experts * float(binom.pmf(n, tokens, top_k / experts) @ np.ceil(n / block))


def record_routing(model, tokens: int, dev: str) -> tuple[list[MoE], list[tuple]]:
    """The MoE layers of `model` and, per layer, (input, routing weights, expert ids) of one eager step of a
    `tokens`-token prompt chunk plus one decode."""
    seen: list[tuple] = []

    def hook(mod: MoE, inputs) -> None:
        x = inputs[0].detach()
        w, ids = moe.route(mod.router(x), mod.top_k, mod.renormalize)  # the random router's own picks
        seen.append((x.clone(), w.clone(), ids.clone()))

    moes = [m for m in model.modules() if isinstance(m, MoE)]
    hooks = [m.register_forward_pre_hook(hook) for m in moes]
    runner = StepRunner(model, 4, tokens + 64, device=dev, cuda_graphs=False)
    runner.mixed([(tokens, 0)], [32], warmup=0, repeat=1)
    for h in hooks:
        h.remove()
    return moes, seen


def zipf_skew(counts: np.ndarray, top_k: int) -> float:
    """The Zipf exponent of expert popularity (the scenario's `workload.moe_routing_skew`, core.parallelism.
    expert_inclusion) whose shares, hottest first, are nearest (least squares) to these rows per expert."""
    share = np.sort(counts)[::-1] / counts.sum()
    e = len(counts)

    def err(s: float) -> float:
        return float(((expert_inclusion(e, top_k, s) / top_k - share) ** 2).sum())

    return float(minimize_scalar(err, bounds=(0.0, 4.0), method="bounded").x)


def balance_rows(counts: np.ndarray, bm: int, top_k: int) -> list[dict]:
    """Per MoE layer: cv of the rows per expert, busiest and idlest against the mean, row blocks of `bm`, and
    the Zipf exponent nearest the layer's expert shares."""
    rows = []
    for i, c in enumerate(counts):
        rows.append({"moe_layer": i, "cv": float(c.std() / c.mean()), "max_over_mean": float(c.max() / c.mean()),
                     "min_over_mean": float(c.min() / c.mean()), "row_blocks": int(np.ceil(c / bm).sum()),
                     "zipf_skew": zipf_skew(c, top_k)})  # fmt: skip
    return rows


def layer_seconds(m: MoE, x, w, ids, dev: str, repeat: int) -> dict:
    """{backend: seconds} of one layer's routed experts on these rows, from a CUDA graph."""
    return {
        backend: measure_graph(
            lambda: moe.routed_experts(x, m.w_gate_up, m.w_down, w, ids, m.act),
            dev,
            calls=2,
            repeat=repeat,
            warmup=2,
        )
        for backend in moe.forcing_backends(x, m.w_gate_up, ids.numel())
    }


def time_count(moes: list[MoE], seen: list[tuple], t: int, dev: str, repeat: int) -> dict:
    """Every MoE layer on the step's first `t` tokens under its router's own picks and under the engine's uniform
    routing of the same rows (engine.moe.uniform_route, what it serves with)."""
    _, n, h = moes[0].w_gate_up.shape
    point: dict = {"tokens": t, "layers": []}
    for m, (x, w, ids) in zip(moes, seen, strict=True):
        xs = x[:t].contiguous()
        uw, uids = moe.uniform_route(m.router(xs), m.top_k, m.renormalize)
        rec = {}
        for name, (ww, ii) in (("router", (w[:t], ids[:t])), ("uniform", (uw, uids))):
            counts = torch.bincount(ii.reshape(-1), minlength=m.num_experts).cpu().numpy()
            bm = moe.kernel_config(ii.numel(), n, m.num_experts, h)["BM"]
            rec[name] = {"seconds": layer_seconds(m, xs, ww.contiguous(), ii.contiguous(), dev, repeat),
                         "cv": float(counts.std() / counts.mean()), "row_blocks": int(np.ceil(counts / bm).sum())}  # fmt: skip
        point["layers"].append(rec)
    for name in ("router", "uniform"):  # the faster backend a layer, as the warm-up tuner picks
        point[name + "_s"] = sum(min(r[name]["seconds"].values()) for r in point["layers"])
    return point


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="mixtral-8x7b", help="a catalogue MoE model")
    ap.add_argument("--config", type=Path, help="a config.json instead of --model (the tests' toy model)")
    ap.add_argument("--layers", type=int, default=0, help="cut the model to this many layers (0: all)")
    ap.add_argument("--inter", type=int, default=0, help="expert width of the cut model (0: the model's)")
    ap.add_argument(
        "--tokens", type=int, default=880, help="prompt tokens of the step (one decode beside them)"
    )
    ap.add_argument("--time", help="comma-separated token counts to time each MoE layer at")
    ap.add_argument(
        "--cpu", action="store_true", help="run on the CPU (the reference expert loop where timed)"
    )
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="the model's weights")
    ap.add_argument("--out", type=Path, default=Path("."))
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
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
    counts_t = [int(t) for t in args.time.split(",")] if args.time else []
    if any(not 0 < t <= args.tokens + 1 for t in counts_t):
        print(f"--time: token counts must lie in 1..{args.tokens + 1} (the step's tokens); raise --tokens")
        return 2
    dev = "cpu" if args.cpu or not torch.cuda.is_available() else "cuda"
    small = spec_from_config(cut_config(spec.config, args.layers, args.inter), name=f"{spec.name}-cut")
    torch.manual_seed(args.seed)
    model = build_model(small, dtype="fp32" if dev == "cpu" else "bf16", device=dev, seed=args.seed)
    moes, seen = record_routing(model, args.tokens, dev)
    e, k = moes[0].num_experts, moes[0].top_k
    tokens = args.tokens + 1
    uniform_cv = math.sqrt(tokens * (k / e) * (1 - k / e)) / (tokens * k / e)
    bm = moe.kernel_config(tokens * k, moes[0].w_gate_up.shape[1], e, small.hidden_size)["BM"]
    want = uniform_blocks(tokens, k, e, bm)
    counts = np.array([torch.bincount(ids.reshape(-1), minlength=e).cpu().numpy() for _, _, ids in seen])
    rows = balance_rows(counts, bm, k)
    for r in rows:
        log(f"MoE layer {r['moe_layer']}: rows per expert cv {r['cv']:.2f} (uniform {uniform_cv:.2f}), busiest "
            f"{r['max_over_mean']:.2f}x the mean, idlest {r['min_over_mean']:.2f}x; {r['row_blocks']} row blocks "
            f"of {bm} (uniform {want:.1f}); Zipf exponent {r['zipf_skew']:.2f}")  # fmt: skip
    skew = float(np.mean([r["zipf_skew"] for r in rows]))
    log(f"mean Zipf exponent over the MoE layers {skew:.3f} (workload.moe_routing_skew)")
    rec = {"model": spec.name, "layers": len(moes), "inter": int(moes[0].w_down.shape[2]), "tokens": tokens,
           "experts": e, "top_k": k, "uniform_cv": uniform_cv, "block": bm, "uniform_blocks": want, "rows": rows,
           "zipf_skew": skew,
           "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "timed": []}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "moe_routing_balance.json"
    out.write_text(json.dumps(rec, indent=1))
    for t in counts_t:
        p = time_count(moes, seen, t, dev, 1 if dev == "cpu" else args.repeat)
        rec["timed"].append(p)
        out.write_text(json.dumps(rec, indent=1))
        log(f"{t:5d} tokens, {len(moes)} MoE layers: the router's picks {p['router_s'] * 1e3:.2f} ms, uniform "
            f"{p['uniform_s'] * 1e3:.2f} ms ({p['router_s'] / p['uniform_s'] - 1:+.1%})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
