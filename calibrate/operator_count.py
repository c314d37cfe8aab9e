"""Count the operators transformers dispatches in one decode forward of each catalogue architecture (issue 11).

`python -m calibrate.operator_count --out calibration_runs/transformers_operators.json`

An eager engine's host time per step is mostly the launching of its operators from Python, one after
another: a model whose layer runs more operators takes longer per layer (Gemma 3's layer has six RMSNorms
where Llama's has two). This counts them where they come from, transformers' own modelling code: each
catalogue config shrunk to a tiny width (the architecture's flags kept: norms, biases, q/k norms, sliding
layers, experts, MLA), built with random weights on the CPU, prefilled 8 tokens, then one decode token
profiled (torch.profiler); the count is the top-level `aten::` operators of that forward (an operator's own
sub-operators not counted again). Two depths give the count per layer and the rest (embedding, final norm,
LM head, rotary tables, masks): ops(L) = per_layer * L + per_forward. Needs torch and transformers (CPU is
enough, seconds per model); calibrate.engine_fit reads the written file and puts the counts in the profile.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path

from core.errors import ConfigError
from core.model_spec import CATALOGUE_DIR, load_model

# the tiny width every config is shrunk to: operator counts do not depend on the width (a GEMM is one
# operator at any size), only on the architecture's flags, which are kept
TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "head_dim": 16,
    "vocab_size": 256,
}
TINY_MOE = {"moe_intermediate_size": 32, "n_routed_experts": 8, "num_local_experts": 8}
TINY_MLA = {"kv_lora_rank": 32, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16}
PREFILL_TOKENS = 8


def _tiny(cfg: dict, layers: int) -> dict:
    """The config at a tiny width and `layers` layers, its architecture's flags kept."""
    c = dict(cfg.get("text_config") or cfg)
    c.setdefault("model_type", cfg.get("model_type"))
    mha = c.get("num_key_value_heads") in (None, c.get("num_attention_heads"))
    c.update(TINY)
    c["num_key_value_heads"] = 4 if mha else 2
    for k, v in TINY_MOE.items():
        if c.get(k):
            c[k] = v
    if c.get("num_experts_per_tok"):
        c["num_experts_per_tok"] = min(int(c["num_experts_per_tok"]), 2)
    if c.get("kv_lora_rank"):
        c.update(TINY_MLA)
        c["head_dim"] = TINY_MLA["qk_rope_head_dim"]  # the rotary part (DeepseekV3Config.head_dim)
        if c.get("q_lora_rank"):
            c["q_lora_rank"] = 32
    for k in ("n_group", "topk_group"):
        if c.get(k):
            c[k] = 1
    c["num_hidden_layers"] = layers
    if isinstance(c.get("layer_types"), list):
        c["layer_types"] = c["layer_types"][:layers]
    c.pop("quantization_config", None)
    return c


def count_operators(cfg: dict, layers: int) -> int:
    """Top-level aten operators of one decode forward (after an 8-token prefill) of `cfg` at `layers` layers."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoConfig, AutoModelForCausalLM

    c = _tiny(cfg, layers)
    config = AutoConfig.for_model(**c)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    ids = torch.randint(0, TINY["vocab_size"], (1, PREFILL_TOKENS))
    with torch.no_grad():
        out = model(ids, use_cache=True)
        nxt = torch.randint(0, TINY["vocab_size"], (1, 1))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(nxt, past_key_values=out.past_key_values, use_cache=True)
    top = [
        e
        for e in prof.events()
        if e.name.startswith("aten::")
        and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
    ]
    return len(top)


def count_model(name: str) -> dict:
    """One catalogue model's counts: per layer (from two depths past its dense layers) and per forward."""
    spec = load_model(name)
    cfg = json.loads((CATALOGUE_DIR / f"{name}.json").read_text())
    a = spec.first_dense_layers + 1
    b = a + 2
    na, nb = count_operators(cfg, a), count_operators(cfg, b)
    per_layer = (nb - na) / (b - a)
    return {
        "model_type": spec.model_type,
        "per_layer": per_layer,
        "per_forward": na - per_layer * a,
        "counted_at_layers": [a, b],
        "operators": [na, nb],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m calibrate.operator_count", description=__doc__.splitlines()[0]
    )
    p.add_argument("--out", default="calibration_runs/transformers_operators.json")
    p.add_argument("--models", default="", help="catalogue models, comma-separated (default: all)")
    args = p.parse_args(argv)
    try:
        import torch
        import transformers
    except ImportError as e:
        print(
            f"error: counting operators needs torch and transformers ({e}); pip install transformers",
            file=sys.stderr,
        )
        return 2
    names = [m for m in args.models.split(",") if m] or sorted(f.stem for f in CATALOGUE_DIR.glob("*.json"))
    models, failed = {}, {}
    for name in names:
        try:
            models[name] = count_model(name)
        except (ConfigError, ValueError, TypeError, KeyError, RuntimeError, AttributeError) as e:
            failed[name] = f"{type(e).__name__}: {e}"[:300]
        print(name, models.get(name) or failed[name], flush=True)
    data = {
        "header": {
            "what": "top-level aten operators of one decode forward (1 token after an 8-token prefill), sdpa, "
            "eager, CPU, tiny width; ops(L) = per_layer * L + per_forward",
            "command": "python -m calibrate.operator_count "
            + " ".join(argv if argv is not None else sys.argv[1:]),
            "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        },
        "models": models,
        "failed": failed,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
