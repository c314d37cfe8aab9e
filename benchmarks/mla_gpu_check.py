"""DeepSeek-V2-Lite (MLA) prompt steps on the GPU: correctness of both attention forms and their step times.

    python benchmarks/mla_gpu_check.py --out $OUT/mla                 # on the GPU (about 90 s on an H200)
    python benchmarks/mla_gpu_check.py --out /tmp/mla --cpu --tiny    # the same code on a toy config (CPU)

1. checks: the absorbed decode and prompt kernels against per-sequence attention (benchmarks/moe_mla_gpu.py's
   check_mla / check_mla_prefill); one MLA layer's plain form (bf16, flash) and absorbed form (bf16, Triton)
   against the fp32 plain form for a fresh prompt, a chunk after cached context and a mixed step (chunk +
   decodes), with the output dtype; which SDPA backends take the plain form's shapes (q/k 192 wide, v 128
   or padded to 192; causal, or bottom-right causal after context).
2. steps: whole DeepSeek-V2-Lite steps (random weights) through the serving loop's executor
   (engine.steps.StepRunner), each prompt step both ways: "absorbed" (engine.mla.ABSORBED_PROMPT_TOKENS
   above the step: every row absorbed, replayed as a mixed-step CUDA graph up to 2,048 tokens) and "plain"
   (threshold 0: prompt chunks plain, eager), beside the cost model's h200 prediction of the form it prices.
3. tiles: the absorbed prompt kernel's tile configurations at 2,048 fresh tokens and 512 after 4,096.

Writes `mla_gpu_check.json` (everything) and `mla_gpu_check.md` (the step table) under --out.
"""

from __future__ import annotations

import os
import sys

if "--cpu" in sys.argv:  # the Triton kernels run in Triton's interpreter on the CPU (set before importing it)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

import _checkout  # noqa: E402,F401  (the checkout's root on sys.path)
import torch  # noqa: E402
from moe_mla_gpu import TINY_DEEPSEEK, check_mla, check_mla_prefill, rel_err  # noqa: E402

from core import cost_model  # noqa: E402
from core.hardware import load_profile  # noqa: E402
from core.model_spec import load_model, spec_from_config  # noqa: E402
from engine import mla  # noqa: E402
from engine.attention import make_layout  # noqa: E402
from engine.model import build_model  # noqa: E402
from engine.serving import MIXED_GRAPH_TOKENS  # noqa: E402
from engine.steps import StepRunner  # noqa: E402

# (label, prompt chunks as (tokens, cached before)); each timed in both forms where the absorbed one is served
STEPS = [
    ("fresh 256", [(256, 0)]),
    ("fresh 512", [(512, 0)]),
    ("fresh 1024", [(1024, 0)]),
    ("fresh 2048", [(2048, 0)]),
    ("512 after 4096", [(512, 4096)]),
    ("2048 after 4096", [(2048, 4096)]),
    ("fresh 4096", [(4096, 0)]),
    ("fresh 8192", [(8192, 0)]),
]
ABSORBED_ALL = 1 << 30  # a threshold above every step: all rows absorbed
TILES = [
    {"rows": 32, "block_n": 32, "num_warps": 8, "num_stages": 2},
    {"rows": 32, "block_n": 64, "num_warps": 8, "num_stages": 2},
    {"rows": 64, "block_n": 32, "num_warps": 8, "num_stages": 2},
    {"rows": 64, "block_n": 64, "num_warps": 8, "num_stages": 2},
    {"rows": 64, "block_n": 32, "num_warps": 4, "num_stages": 2},
    {"rows": 16, "block_n": 64, "num_warps": 4, "num_stages": 2},
    {"rows": 32, "block_n": 32, "num_warps": 4, "num_stages": 3},
    {"rows": 128, "block_n": 32, "num_warps": 8, "num_stages": 1},
]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@contextmanager
def threshold(tokens: int):
    """engine.mla.ABSORBED_PROMPT_TOKENS for the block (the forward reads it at call time, Executor when built)."""
    old = mla.ABSORBED_PROMPT_TOKENS
    mla.ABSORBED_PROMPT_TOKENS = tokens
    try:
        yield
    finally:
        mla.ABSORBED_PROMPT_TOKENS = old


# ---------------------------------------------------------------------------------------------- 1. checks
def check_layer(spec, dev: str) -> list[dict]:
    """One MLA layer: plain and absorbed forms (activation dtype) against the fp32 plain form."""
    dtype = torch.float32 if dev == "cpu" else torch.bfloat16
    one = spec_from_config({**spec.config, "num_hidden_layers": 1}, f"{spec.name}-1layer")  # its dense layer
    m = build_model(one, dtype="fp32" if dev == "cpu" else "bf16", device=dev, seed=5)
    attns = {"ref": copy.deepcopy(m.layers[0].attn).float(), "plain": m.layers[0].attn}
    attns["absorbed"] = attns["plain"]
    rope = m.ropes[attns["plain"].rope_base]
    small = dev == "cpu"
    cases = {  # (chunks (tokens, prior), decodes' contexts)
        "fresh": ([(40 if small else 1500, 0)], []),
        "after context": ([(7 if small else 300, 30 if small else 2000)], []),
        "mixed": ([(9 if small else 200, 0), (5 if small else 100, 20 if small else 700)], [13, 40] if small else
                  [600, 3000]),
    }  # fmt: skip
    out = []
    for name, (chunks, dec) in cases.items():
        q_lens = [c for c, _ in chunks] + [1] * len(dec)
        prior = [p for _, p in chunks] + [c - 1 for c in dec]
        lay = make_layout(q_lens, prior, dev, kv_heads=1)
        lay.n_prefill = len(chunks)
        g = torch.Generator(device=dev).manual_seed(7)
        n_pool = int(lay.cu_k[-1]) + 8
        pool = torch.randn(n_pool, 1, spec.kv_lora_rank + spec.qk_rope_head_dim, device=dev, generator=g)
        x = torch.randn(sum(q_lens), spec.hidden_size, device=dev, generator=g)
        res = {}
        for form, thr in (("ref", 0), ("plain", 0), ("absorbed", ABSORBED_ALL)):
            attn = attns[form]
            p = pool.to(torch.float32 if form == "ref" else dtype).clone()
            with threshold(thr), torch.no_grad():
                res[form] = attn(x.to(p.dtype), lay, rope, p, p)
        for form in ("plain", "absorbed"):
            err = rel_err(res[form], res["ref"])
            tol = 1e-4 if dtype == torch.float32 else 5e-2
            ok = err < tol and res[form].dtype == dtype
            out.append({"check": f"layer {form}", "case": name, "rel_err": err, "tol": tol,
                        "dtype": str(res[form].dtype), "ok": ok})  # fmt: skip
            log(f"check layer {form} {name}: max rel error {err:.2e} ({res[form].dtype})")
    return out


def sdpa_backends(spec, dev: str) -> list[dict]:
    """Which SDPA backends run the plain form's shapes (bf16 on the GPU; CPU: fp32 math only)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    nh, qd, vd = spec.num_heads, spec.q_head_dim, spec.v_head_dim
    dtype = torch.float32 if dev == "cpu" else torch.bfloat16
    out = []
    for vdim in (vd, qd):
        for nq, nk in ((512, 512), (256, 1024)):
            q = torch.randn(nq, nh, qd, device=dev, dtype=dtype)
            k = torch.randn(nk, nh, qd, device=dev, dtype=dtype)
            v = torch.randn(nk, nh, vdim, device=dev, dtype=dtype)
            for b in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                      SDPBackend.MATH):  # fmt: skip
                try:
                    with sdpa_kernel([b]):
                        mla.plain_attention(q, k, v, 0.1, bias=dev != "cpu")
                    ok, err = True, ""
                except Exception as exc:  # noqa: BLE001 - a backend refusing the shape is the answer
                    ok, err = False, str(exc).splitlines()[0][:160]
                out.append({"backend": b.name, "v_dim": vdim, "q": nq, "k": nk, "ok": ok, "error": err})
            log(f"sdpa v={vdim} q={nq} k={nk}: " + ", ".join(
                f"{r['backend']} {'ok' if r['ok'] else 'no'}" for r in out[-4:]))  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------- 2. steps
def time_steps(spec, model, dev: str, tiny: bool, repeat: int) -> list[dict]:
    cm = cost_model.CostModel(load_profile("h200"), spec)
    steps = (
        [(label, [(min(c, 48), min(p, 64)) for c, p in chunks]) for label, chunks in STEPS] if tiny else STEPS
    )
    longest = max(c + p for _, chunks in steps for c, p in chunks)
    kw = {"device": dev, "kv_tokens": 2 * longest + 64}
    runners = {}
    # the runners share the model's KV pool, which each sizes for its own graph padding when built: the
    # absorbed one (mixed-step graphs up to MIXED_GRAPH_TOKENS) last, so the pool holds its padding too
    for form, thr in (("plain", 0), ("absorbed", MIXED_GRAPH_TOKENS)):
        with threshold(thr):
            runners[form] = (StepRunner(model, 32, longest + 8, **kw), thr)
    runners = {form: runners[form] for form in ("absorbed", "plain")}
    rows = []
    for label, chunks in steps:
        q, prior = [c for c, _ in chunks], [p for _, p in chunks]
        tokens = sum(q)
        shape = runners["plain"][0].batch_shape(q, prior, 0)
        row = {"step": label, "tokens": tokens, "prior": prior[0]}
        for form, (runner, thr) in runners.items():
            if form == "absorbed" and tokens > thr:
                continue  # absorbed steps beyond the graphs' cap are not a form the engine serves
            try:
                with threshold(thr):
                    row[f"{form}_ms"] = runner.prefill(q, prior, warmup=2, repeat=repeat) * 1e3
                    row[f"{form}_path"] = runner.executor.last_path
            except Exception as exc:  # noqa: BLE001 - one step failing does not lose the others
                row[f"{form}_error"] = f"{type(exc).__name__}: {exc}"[:300]
                traceback.print_exc()
        row["cost_model_ms"] = cm.step_time(shape) * 1e3
        row["cost_model_form"] = "absorbed" if tokens <= cost_model.MLA_ABSORBED_STEP_TOKENS else "plain"
        flops = model_flops(spec, q, prior)
        row["model_tflop"] = flops / 1e12
        log(f"step {label}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                          for k, v in row.items() if k != "step"))  # fmt: skip
        rows.append(row)
    return rows


def model_flops(spec, q: list[int], prior: list[int]) -> float:
    """Dense FLOPs of the step's tokens plus plain-form attention (v unpadded) and its context expansion."""
    ctx = cost_model.mla_prefill_flops(spec, 1)[1]
    pair = 2.0 * spec.num_heads * (spec.q_head_dim + spec.v_head_dim)
    pairs = sum(c * p + c * (c + 1) / 2 for c, p in zip(q, prior, strict=True))
    head = 2.0 * spec.hidden_size * spec.vocab_size  # logits of each chunk's last token only
    linear = sum(q) * (spec.flops_per_token(0) - head) + len(q) * head
    return linear + spec.num_layers * (pair * pairs + ctx * sum(prior))


# ---------------------------------------------------------------------------------------------- 3. tiles
def tile_sweep(spec, dev: str) -> list[dict]:
    nh, rank, rope = spec.num_heads, spec.kv_lora_rank, spec.qk_rope_head_dim
    out = []
    for chunk, prior in ((2048, 0), (512, 4096)):
        lay = make_layout([chunk], [prior], dev, kv_heads=1)
        lay.n_prefill = 1
        pool = torch.randn(int(lay.cu_k[-1]) + 8, 1, rank + rope, device=dev, dtype=torch.bfloat16)
        qa = torch.randn(chunk, nh, rank + rope, device=dev, dtype=torch.bfloat16)
        o = qa.new_zeros((chunk, nh, rank))
        pairs = chunk * prior + chunk * (chunk + 1) / 2
        ref = mla.mla_prefill(qa, pool, lay, rank, 0.1, o.clone())
        for cfg in TILES:
            rec = {"chunk": chunk, "prior": prior, **cfg}
            try:
                got = mla.mla_prefill(qa, pool, lay, rank, 0.1, o, tiles=cfg)
                rec["rel_err"] = rel_err(got, ref)
                ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
                for _ in range(2):
                    mla.mla_prefill(qa, pool, lay, rank, 0.1, o, tiles=cfg)
                ev[0].record()
                for _ in range(10):
                    mla.mla_prefill(qa, pool, lay, rank, 0.1, o, tiles=cfg)
                ev[1].record()
                torch.cuda.synchronize()
                rec["us"] = ev[0].elapsed_time(ev[1]) * 100
                rec["tflops"] = spec.attn_flops_per_pair * pairs / (rec["us"] * 1e-6) / 1e12
            except Exception as exc:  # noqa: BLE001 - a config out of resources is a row
                rec["error"] = str(exc).splitlines()[0][:200]
            log(f"tiles {rec}")
            out.append(rec)
    return out


def rate(r: dict) -> str:
    """The model's TFLOP/s at the step's faster form."""
    ms = [r[k] for k in ("absorbed_ms", "plain_ms") if k in r]
    return f"{r['model_tflop'] / min(ms) * 1e3:.0f}" if ms else "-"


def table(rows: list[dict]) -> str:
    lines = ["| step | tokens | absorbed ms (path) | plain ms (path) | cost model ms (form) | model TFLOP | TFLOP/s |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        a = (
            f"{r['absorbed_ms']:.2f} ({r['absorbed_path']})"
            if "absorbed_ms" in r
            else r.get("absorbed_error", "-")
        )
        p = f"{r['plain_ms']:.2f} ({r['plain_path']})" if "plain_ms" in r else r.get("plain_error", "-")
        lines.append(f"| {r['step']} | {r['tokens']} | {a} | {p} | {r['cost_model_ms']:.2f} ({r['cost_model_form']}) "
                     f"| {r['model_tflop']:.3f} | {rate(r)} |")  # fmt: skip
    return (
        "\n".join(lines) + "\n\npath: 0 eager, 2 mixed-step CUDA graph (engine.serving.Executor.last_path)\n"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--cpu", action="store_true", help="run on the CPU (Triton interpreted); with --tiny")
    ap.add_argument("--tiny", action="store_true", help="a toy config of the same architecture")
    ap.add_argument("--repeat", type=int, default=None, help="timed repeats a step (default 8; cpu 1)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    dev = "cpu" if args.cpu else "cuda"
    spec = spec_from_config(TINY_DEEPSEEK, "tiny-deepseek") if args.tiny else load_model("deepseek-v2-lite")
    res: dict = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__,
                 "threshold": cost_model.MLA_ABSORBED_STEP_TOKENS, "tiles_default": mla.PREFILL_TILES}  # fmt: skip
    path = args.out / "mla_gpu_check.json"

    def save() -> None:
        path.write_text(json.dumps(res, indent=1))

    t0 = time.perf_counter()
    sections = [
        ("kernel_checks", lambda: check_mla(dev, args.tiny) + check_mla_prefill(dev, args.tiny)),
        ("layer_checks", lambda: check_layer(spec, dev)),
        ("sdpa_backends", lambda: sdpa_backends(spec, dev)),
        ("tiles", lambda: tile_sweep(spec, dev) if dev == "cuda" else []),
    ]
    for name, fn in sections:
        try:
            res[name] = fn()
        except Exception as exc:  # noqa: BLE001 - later sections still run
            res[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            traceback.print_exc()
        save()
    try:
        model = build_model(spec, dtype="fp32" if args.cpu else "bf16", device=dev)
        res["steps"] = time_steps(spec, model, dev, args.tiny, args.repeat or (1 if args.cpu else 8))
        (args.out / "mla_gpu_check.md").write_text(table(res["steps"]))
        print(table(res["steps"]))
    except Exception as exc:  # noqa: BLE001
        res["steps"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        traceback.print_exc()
    checks = [r for k in ("kernel_checks", "layer_checks") if isinstance(res.get(k), list) for r in res[k]]
    res["checks_ok"] = bool(checks) and all(r["ok"] for r in checks)
    res["wall_s"] = time.perf_counter() - t0
    save()
    log(f"checks {'ok' if res['checks_ok'] else 'FAILED'}; {res['wall_s']:.0f} s; wrote {path}")
    return 0 if res["checks_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
