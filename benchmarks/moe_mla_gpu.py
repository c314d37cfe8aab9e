"""Fused MoE and MLA on one GPU: kernel checks, Mixtral-8x7B step bars, MLA and Mixtral fidelity rows, large-batch decode.

    python benchmarks/moe_mla_gpu.py --out $OUT                 # on an H200 (about 4 minutes)
    python benchmarks/moe_mla_gpu.py --out /tmp/x --cpu --tiny  # the same code on toy configs (CPU, a few minutes)

1. Checks (first; a failure ends the run with one line naming the kernel): the Triton grouped-GEMM MoE
   (engine.moe.fused_moe, its decode tiles at batch 1 included) against the loop over experts, at Mixtral's and
   DeepSeek-V2-Lite's expert shapes and several token counts; the MLA decode and prompt kernels (engine.mla)
   against per-sequence attention.
2. Ceilings: device copy bandwidth (4 GiB) and the dense bf16 GEMM rate (8192³), as engine_bars.py measures.
3. Mixtral-8x7B bf16 (whole model, random weights) through engine.steps.StepRunner: decode steps at batch
   1, 2, 4, 8 (context 512, CUDA graphs) against the floor of reading the dense weights plus the experts
   the step touched (counted per layer in an eager run of the same tokens) at the copy bandwidth, bar 1.3x;
   prefill steps of 4,096 and 8,192 tokens against the dense GEMM rate (model FLOPs: linear layers with the
   top-k experts, causal attention), bar 70%, with the engine's default tiles; the grouped GEMMs of one layer
   alone per tile config at both token counts, and where a config beats the default by over 3%, that
   prefill step again with it (engine.moe.set_tuned: per-shape tuning on this device).
4. Fidelity rows (benchmarks/fidelity.py's run_row): DeepSeek-V2-Lite bf16 and Mixtral-8x7B bf16 on the
   conversation trace at 80% of the simulated capacity (--duration seconds of trace each).
5. Large-batch decode (benchmarks/fidelity.py's decode_check): Qwen2.5-7B bf16, batch 64, 128, 256 of
   1,024-token prompts, serving-loop decode steps against the roofline and the cost model.

Resumable: with an existing $OUT/moe_mla_raw.json, sections already in it are kept (--fresh: start over), so
a second call after a time-out finishes the rest. Writes $OUT/moe_mla_raw.json (everything measured), after
every section, and per fidelity row its engine request and step CSVs (<model>__engine_requests.csv,
<model>__engine_steps.csv). benchmarks/moe_mla_tables.py turns a copy of these files (committed under
benchmarks/results/moe_mla/<profile>/) into benchmarks/results/moe_bars_<profile>.md and the fidelity rows.
"""

from __future__ import annotations

import os
import sys

if "--cpu" in sys.argv:  # the Triton kernels run in Triton's interpreter on the CPU (set before importing it)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

import _checkout  # noqa: E402,F401  (the checkout's root on sys.path)
import torch  # noqa: E402
from _gpu_cli import device_args, pick_device  # noqa: E402

from calibrate.serving import TINY_MLA_CONFIG  # noqa: E402
from core.model_spec import ModelSpec, load_model, spec_from_config  # noqa: E402
from engine import kernels  # noqa: E402
from engine.attention import make_layout  # noqa: E402
from engine.model import MoE, build_model  # noqa: E402
from engine.moe import align, fused_moe, grouped_gemm, moe_reference, route  # noqa: E402
from engine.steps import StepRunner  # noqa: E402

DECODE_BATCHES = (1, 2, 4, 8)
DECODE_CONTEXT = 512
PREFILL_TOKENS = (4096, 8192)
BAR_DECODE, BAR_PREFILL = 1.3, 0.70  # issue 13
FIDELITY_MODELS = ("deepseek-v2-lite", "mixtral-8x7b")
DECODE_MODEL, DECODE_BATCHES_LARGE = "qwen2.5-7b", (64, 128, 256)
TUNE_GAIN = 1.03  # a swept tile config replaces the default for a shape when this much faster
TILE_CONFIGS = [  # the grouped GEMMs at the prefill token counts: the engine's choice (kernel_config) beside these
    {"BM": 64, "BN": 128, "BK": 64, "GROUP": 8, "num_warps": 8, "num_stages": 4},
    {"BM": 128, "BN": 128, "BK": 64, "GROUP": 8, "num_warps": 8, "num_stages": 3},
    {"BM": 128, "BN": 256, "BK": 64, "GROUP": 8, "num_warps": 8, "num_stages": 3},
    {"BM": 128, "BN": 256, "BK": 64, "GROUP": 8, "num_warps": 8, "num_stages": 4},
    {"BM": 256, "BN": 128, "BK": 64, "GROUP": 8, "num_warps": 8, "num_stages": 3},
]

# toy configs of the same architectures for --tiny (CPU)
TINY_MIXTRAL = {
    "model_type": "mixtral", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 64, "num_local_experts": 4,
    "num_experts_per_tok": 2, "vocab_size": 97, "max_position_embeddings": 512, "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
}  # fmt: skip
TINY_DEEPSEEK = TINY_MLA_CONFIG  # calibrate.serving's toy DeepSeek-V2 (its MLA eager measurement's CPU model)


def log(msg: str) -> None:
    print(msg, flush=True)


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------- 1. checks
def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).abs().max() / want.float().abs().max().clamp_min(1e-6))


def check_moe(dev: str, tiny: bool) -> list[dict]:
    """fused_moe against the loop over experts (bf16 on the GPU, fp32 interpreted on the CPU)."""
    dtype = torch.float32 if dev == "cpu" else torch.bfloat16
    shapes = (
        [(4, 2, 32, 48, t) for t in (1, 9)] + [(8, 3, 64, 32, 40)]
        if tiny
        else [(8, 2, 4096, 14336, t) for t in (1, 8, 300, 4096)]
        + [(64, 6, 2048, 1408, t) for t in (1, 8, 2048)]
    )
    g = torch.Generator(device=dev).manual_seed(0)
    out = []
    for e, k, h, i, t in shapes:
        x = torch.randn(t, h, device=dev, generator=g).to(dtype)
        wgu = (torch.randn(e, 2 * i, h, device=dev, generator=g) * h**-0.5).to(dtype)
        wd = (torch.randn(e, h, i, device=dev, generator=g) * i**-0.5).to(dtype)
        w, ids = route(torch.randn(t, e, device=dev, generator=g), k, True)
        err = rel_err(fused_moe(x, wgu, wd, w, ids), moe_reference(x, wgu, wd, w, ids))
        tol = 1e-4 if dtype == torch.float32 else 5e-2  # bf16: a few ulps of the largest output
        out.append({"kernel": "fused_moe", "experts": e, "top_k": k, "hidden": h, "inter": i, "tokens": t,
                    "rel_err": err, "tol": tol, "ok": err < tol})  # fmt: skip
        log(f"check fused_moe E={e} k={k} H={h} I={i} T={t}: max rel error {err:.2e} (tolerance {tol:g})")
        del x, wgu, wd
        free()
    return out


def check_mla(dev: str, tiny: bool) -> list[dict]:
    """The absorbed decode kernel against per-sequence attention over the same latents."""
    from engine.mla import _sdpa, mla_decode, mla_decode_units

    nh, rank, rope = (4, 32, 16) if tiny else (16, 512, 64)
    prior = [3, 300, 7] if tiny else [5, 700, 4000, 31, 129]
    dtype = torch.float32 if dev == "cpu" else torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(1)
    lay = make_layout([2] + [1] * len(prior), [0] + prior, dev, kv_heads=1)
    pool = torch.randn(int(lay.cu_k[-1]) + 4, 1, rank + rope, device=dev, generator=g).to(dtype)
    qa = torch.randn(2 + len(prior), nh, rank + rope, device=dev, generator=g).to(dtype)
    scale = (128 + 64) ** -0.5
    if (
        dev == "cpu"
    ):  # the interpreter runs the unit kernel; its units merged here (the combine kernel is GPU-only)
        op, lp = mla_decode_units(qa, pool, lay, rank, scale)
        su = lay.units["seq_units"].tolist()
        got = [
            (torch.softmax(lp[su[j] : su[j + 1]], 0)[:, :, None] * op[su[j] : su[j + 1]]).sum(0)
            for j in range(len(prior))
        ]
    else:
        o = mla_decode(qa, pool, lay, rank, scale)
        got = [o[2 + j] for j in range(len(prior))]
    out = []
    tol = 1e-4 if dtype == torch.float32 else 5e-2  # bf16: a few ulps of the largest output
    for j, (kl, ks) in enumerate(zip(lay.k_lens[1:], lay.k_starts[1:], strict=True)):
        c = pool[ks : ks + kl, 0].float()
        want = _sdpa(qa[2 + j : 3 + j].float(), c[:, None], c[:, None, :rank], scale)[0]
        err = rel_err(got[j], want)
        out.append({"kernel": "mla_decode", "heads": nh, "rank": rank, "rope": rope, "context": kl, "rel_err": err,
                    "tol": tol, "ok": err < tol})  # fmt: skip
        log(f"check mla_decode heads={nh} rank={rank}+{rope} context {kl}: max rel error {err:.2e}")
    return out


def check_mla_prefill(dev: str, tiny: bool) -> list[dict]:
    """The absorbed prompt kernel (chunks after cached context) against per-sequence attention."""
    from engine.mla import _sdpa, mla_prefill

    nh, rank, rope = (4, 32, 16) if tiny else (16, 512, 64)
    chunks = [(5, 0), (7, 40)] if tiny else [(300, 0), (200, 700), (1, 4000), (1500, 0)]
    dtype = torch.float32 if dev == "cpu" else torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(2)
    lay = make_layout([q for q, _ in chunks], [p for _, p in chunks], dev, kv_heads=1)
    lay.n_prefill = len(chunks)
    pool = torch.randn(int(lay.cu_k[-1]) + 4, 1, rank + rope, device=dev, generator=g).to(dtype)
    t = sum(q for q, _ in chunks)
    qa = torch.randn(t, nh, rank + rope, device=dev, generator=g).to(dtype)
    scale = (128 + 64) ** -0.5
    got = mla_prefill(qa, pool, lay, rank, scale, qa.new_zeros((t, nh, rank)))
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    out, row = [], 0
    for (q, prior), kl, ks in zip(chunks, lay.k_lens, lay.k_starts, strict=True):
        c = pool[ks : ks + kl, 0].float()
        want = _sdpa(qa[row : row + q].float(), c[:, None], c[:, None, :rank], scale)
        err = rel_err(got[row : row + q], want)
        row += q
        out.append({"kernel": "mla_prefill", "heads": nh, "rank": rank, "rope": rope, "context": kl, "chunk": q,
                    "rel_err": err, "tol": tol, "ok": err < tol})  # fmt: skip
        log(f"check mla_prefill heads={nh} chunk {q} after {prior}: max rel error {err:.2e}")
    return out


# ---------------------------------------------------------------------------------------------- 2-3. bars
def ceilings(dev: str) -> dict:
    if dev == "cpu":
        s, b = kernels.time_copy(16 << 20, dev, warmup=1, repeat=3)
        gemm_s, n = kernels.time_gemm(512, 512, 512, "fp32", dev, repeat=3), 512
    else:
        s, b = kernels.time_copy(4 << 30, dev)
        gemm_s, n = kernels.time_gemm(8192, 8192, 8192, "bf16", dev, repeat=10), 8192
    c = {"copy_bytes_per_s": b / s, "gemm_flops_per_s": 2.0 * n**3 / gemm_s}
    log(
        f"ceilings: copy {c['copy_bytes_per_s'] / 1e9:.0f} GB/s, dense GEMM {c['gemm_flops_per_s'] / 1e12:.1f} TFLOP/s"
    )
    return c


def _touched_counter(model) -> tuple[list[int], list]:
    """Forward pre-hooks on the MoE layers that record how many distinct experts each layer's routing picked (the
    layer's own `select`: the engine's routing, uniform by default)."""
    seen: list[int] = []

    def hook(mod: MoE, args) -> None:
        _, ids = mod.select(args[0])
        seen.append(int(ids.unique().numel()))

    hooks = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, MoE)]
    return seen, hooks


def floor_bytes(model) -> tuple[float, float]:
    """Bytes a decode step reads besides the routed experts (every weight but the embedding table, of which a step
    reads only its tokens' rows, and the routed experts), and one expert's bytes in one layer (0 without MoE)."""
    routed = {id(p) for m in model.modules() if isinstance(m, MoE) for p in (m.w_gate_up, m.w_down)}
    dense = float(sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in routed))
    if model.lm_head.weight is not model.embed.weight:
        dense -= model.embed.weight.numel() * model.embed.weight.element_size()
    m = next((m for m in model.modules() if isinstance(m, MoE)), None)
    expert = (
        0.0 if m is None else float((m.w_gate_up[0].numel() + m.w_down[0].numel()) * m.w_down.element_size())
    )
    return dense, expert


def decode_floor(model, spec, ctx: list[int], dense: float, expert: float, copy: float, dev: str):
    """(floor seconds, experts touched a layer) of a decode step over contexts `ctx`: the dense weights, the experts an
    eager run of random tokens routed to (per layer, the layers' own routing), and the KV, at the copy rate."""
    b = len(ctx)
    seen, hooks = _touched_counter(model)
    tokens = torch.randint(1, spec.vocab_size, (b,), device=dev)
    with torch.no_grad():
        model(tokens, make_layout([1] * b, [c - 1 for c in ctx], dev, kv_heads=spec.num_kv_heads))
    for h in hooks:
        h.remove()
    kv = sum(ctx) * spec.kv_bytes_per_token("bf16") * (2 if dev == "cpu" else 1)  # fp32 on the CPU
    return (dense + sum(seen) * expert + kv) / copy, sum(seen) / len(seen)


def mixtral_steps(spec: ModelSpec, dev: str, ceil: dict, tiny: bool) -> dict:
    """Decode steps against the touched-weights floor, prefill steps against the GEMM rate."""
    dtype = "fp32" if dev == "cpu" else "bf16"
    t0 = time.perf_counter()
    model = build_model(spec, dtype=dtype, device=dev)
    prefills = (64, 128) if tiny else PREFILL_TOKENS
    reps = {"warmup": 1, "repeat": 2} if dev == "cpu" else {}
    pre_reps = reps or {"warmup": 2, "repeat": 5}  # a prefill step of 8k tokens takes ~0.3 s
    runner = StepRunner(model, max(DECODE_BATCHES), max(max(prefills), DECODE_CONTEXT), device=dev)
    log(f"{spec.name}: built in {time.perf_counter() - t0:.0f} s")
    dense, expert = floor_bytes(model)
    rec: dict = {
        "model": spec.name,
        "dense_bytes": dense,
        "expert_bytes": int(expert),  # (an int in the raw file, as before)
        "decode": [],
        "prefill": [],
    }
    for b in DECODE_BATCHES:
        ctx = [DECODE_CONTEXT] * b
        step = runner.decode(ctx, **reps)
        floor, touched = decode_floor(model, spec, ctx, dense, expert, ceil["copy_bytes_per_s"], dev)
        r = {"batch": b, "context": DECODE_CONTEXT, "step_s": step, "experts_touched_per_layer": touched,
             "floor_s": floor, "ratio": step / floor, "bar": BAR_DECODE, "ok": step / floor <= BAR_DECODE}  # fmt: skip
        rec["decode"].append(r)
        log(f"decode batch {b}: {step * 1e3:.2f} ms, {r['experts_touched_per_layer']:.2f} experts/layer touched, "
            f"floor {floor * 1e3:.2f} ms: {r['ratio']:.2f}x (bar {BAR_DECODE}x)")  # fmt: skip
    from engine.moe import set_tuned

    def prefill_row(n: int, tiles: str) -> None:
        step = runner.prefill([n], **pre_reps)
        lin = spec.flops_per_token(0) * n
        attn = spec.attn_flops_per_pair * spec.full_attention_layers * n * (n + 1) / 2
        rate = (lin + attn) / step
        r = {"tokens": n, "tiles": tiles, "step_s": step, "model_flops": lin + attn, "flops_per_s": rate,
             "share_of_gemm_rate": rate / ceil["gemm_flops_per_s"], "bar": BAR_PREFILL,
             "ok": rate / ceil["gemm_flops_per_s"] >= BAR_PREFILL}  # fmt: skip
        rec["prefill"].append(r)
        log(f"prefill {n} tokens ({tiles} tiles): {step * 1e3:.1f} ms, {rate / 1e12:.1f} TFLOP/s = "
            f"{r['share_of_gemm_rate']:.0%} of the dense GEMM rate (bar {BAR_PREFILL:.0%})")  # fmt: skip

    for n in prefills:
        prefill_row(n, "default")
    rec["tiles"] = []
    for n in prefills:
        rows = tile_sweep(model, spec, dev, n)
        rec["tiles"] += rows
        tuned = best_tiles(rows, model)
        if tuned:  # this device's best tiles for this shape, then the step again with them
            set_tuned(tuned)
            prefill_row(n, "tuned")
            set_tuned({})
    runner = model = None  # the whole model's memory back before the next section
    free()
    return rec


def best_tiles(rows: list[dict], model) -> dict:
    """TUNED entries (both grouped GEMMs of the MoE layers) for the fastest swept config when it beats the
    engine's default (the first row) by TUNE_GAIN; {} otherwise."""
    from engine.moe import rows_bucket

    ok = [r for r in rows if "seconds" in r]
    if len(ok) < 2 or "seconds" not in rows[0]:
        return {}
    best = min(ok[1:], key=lambda r: r["seconds"])
    if best["seconds"] * TUNE_GAIN >= rows[0]["seconds"]:
        return {}
    moe = next(m for m in model.modules() if isinstance(m, MoE))
    e, pairs = moe.num_experts, rows[0]["tokens"] * moe.top_k
    cfg = {k: v for k, v in best["config"].items() if k != "SPLIT_K"}
    b = rows_bucket(pairs, e)
    return {(b, w.shape[1], w.shape[2], e): cfg for w in (moe.w_gate_up, moe.w_down)}


def tile_sweep(model, spec: ModelSpec, dev: str, tokens: int) -> list[dict]:
    """The two grouped GEMMs of one MoE layer at `tokens` tokens, per tile config (engine's first)."""
    from engine.fused import act_mul
    from engine.moe import kernel_config

    moe = next(m for m in model.modules() if isinstance(m, MoE))
    x = torch.randn(tokens, spec.hidden_size, device=dev, dtype=moe.w_gate_up.dtype)
    w, ids = moe.select(x)
    pairs = ids.numel()
    flops = 2.0 * pairs * 3 * spec.hidden_size * spec.moe_intermediate_size
    out = []
    default = kernel_config(pairs, moe.w_gate_up.shape[1], moe.num_experts, moe.w_gate_up.shape[2])
    configs = [default] + [dict(c, SPLIT_K=1) for c in TILE_CONFIGS if dict(c, SPLIT_K=1) != default]
    for cfg in configs[: 1 if dev == "cpu" else None]:
        sorted_ids, block_e = align(ids, moe.num_experts, cfg["BM"])
        tw = w.reshape(-1).float()

        def run(cfg=cfg, sorted_ids=sorted_ids, block_e=block_e, tw=tw):
            h1 = grouped_gemm(x, moe.w_gate_up, sorted_ids, block_e, moe.top_k, pairs, cfg)
            return grouped_gemm(
                act_mul(h1, moe.act), moe.w_down, sorted_ids, block_e, 1, pairs, cfg, weights=tw
            )

        try:
            from engine.timing import measure

            s = measure(run, dev, warmup=2 if dev != "cpu" else 0, repeat=5 if dev != "cpu" else 1)
            out.append({"config": cfg, "tokens": tokens, "seconds": s, "flops_per_s": flops / s})
            log(f"grouped GEMMs at {tokens} tokens, {cfg}: {s * 1e3:.2f} ms, {flops / s / 1e12:.1f} TFLOP/s")
        except Exception as e:  # noqa: BLE001 - a config that does not fit (shared memory) is reported, not fatal
            out.append({"config": cfg, "tokens": tokens, "error": f"{type(e).__name__}: {str(e)[:120]}"})
            log(f"grouped GEMMs {cfg}: failed ({type(e).__name__})")
    return out


# ---------------------------------------------------------------------------------------------- 4. fidelity
def fidelity_rows(models: list[str], refs: list[str], args, profile: str, out: Path) -> list[dict]:
    try:
        import fidelity  # benchmarks/fidelity.py (needs the simulator: pydantic, simpy)
    except ImportError as e:  # the step bars are already written; say what the rows need
        log(f"fidelity rows skipped: {e} (the simulator needs pydantic and simpy)")
        return [{"row": m, "model": m, "error": f"ImportError: {e}"} for m in models]
    work = Path(tempfile.mkdtemp(prefix="moe_mla_fid_"))
    ns = argparse.Namespace(device="cpu" if args.cpu else "cuda", utilization=0.9, duration=args.duration,
                            reserve_gib=None)  # fmt: skip
    recs = []
    for model, ref in zip(models, refs, strict=True):
        row = fidelity.Row(model, "fp32" if args.cpu else "bf16", "conversation", 0.8)
        try:
            rec = fidelity.run_row(row, ns, profile, ref, {}, work, log)  # a fresh host per row
        except Exception as e:  # noqa: BLE001 - the other row still runs; the failure is in the raw file
            traceback.print_exc()
            recs.append({"row": row.name, "model": ref, "error": f"{type(e).__name__}: {str(e)[:300]}"})
            free()
            continue
        for f in ("engine_requests.csv", "engine_steps.csv"):
            shutil.copy(work / row.name / f, out / f"{rec['model'].replace('/', '_')}__{f}")
        if args.cpu:  # two toy models share the row name "tiny-...": name them apart
            rec["model_config"] = json.loads(Path(ref).read_text())
            rec["row"] = f"{rec['model']}-{row.name}"
        recs.append(rec)
        e, s = rec["engine"], rec["simulator"]
        log(f"fidelity {row.name} ({rec['model']}): TTFT p50 {e['ttft_p50'] * 1e3:.1f} vs {s['ttft_p50'] * 1e3:.1f} ms, "
            f"TPOT p50 {e['tpot_p50'] * 1e3:.2f} vs {s['tpot_p50'] * 1e3:.2f} ms, out tok/s "
            f"{e['output_tokens_per_s']:.0f} vs {s['output_tokens_per_s']:.0f}")  # fmt: skip
        free()
    return recs


# ---------------------------------------------------------------------------------------------- 5. decode
def large_decode(
    args,
    profile: str,
    ref: str,
    cpu: bool,
    sizes: list[int] | None = None,
    overlaps: tuple[bool, ...] = (False,),
) -> list[dict]:
    """Decode-only serving steps at large batch (fidelity.decode_check) for DECODE_MODEL: the model on an
    executor whose pool holds every sequence's region, its decode graphs captured (no mixed-step graphs:
    the prompts' steps are not what is measured, and capturing them would take a fifth of the budget); once
    per entry of `overlaps` (the loop's async scheduling off / on) on the same executor."""
    import types

    import fidelity

    from core.hardware import load_profile
    from engine.model import build_model
    from engine.serving import Executor

    t0 = time.perf_counter()
    dev = "cpu" if cpu else "cuda"
    spec = load_model(ref)
    sizes = sizes or ([8, 16] if cpu else list(DECODE_BATCHES_LARGE))
    prompt, output = (64, 16) if cpu else (fidelity.DECODE_PROMPT, fidelity.DECODE_OUTPUT)
    model = build_model(spec, dtype="fp32" if cpu else "bf16", device=dev)
    ex = Executor(model, max(sizes) * (prompt + output + 16), max(sizes), device=dev, mixed_graph_tokens=0)
    ex.warmup(log)
    log(f"{spec.name}: built and warmed up in {time.perf_counter() - t0:.0f} s")
    recs = [r for overlap in overlaps
            for r in fidelity.decode_check(types.SimpleNamespace(executor=ex), spec, load_profile(profile), sizes,
                                           "fp32" if cpu else "bf16", 16, log, overlap)]  # fmt: skip
    ex = model = None
    free()
    return [dict(r, model=spec.name) for r in recs]


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the raw results (the device's $OUT)")
    device_args(p, "toy configs of the same architectures")
    p.add_argument("--profile", default="h200", help="the GPU's calibrated profile for the fidelity rows")
    p.add_argument("--duration", type=float, help="seconds of trace per fidelity row (default 20; cpu 2)")
    p.add_argument("--skip-fidelity", action="store_true", help="kernel checks and step bars only")
    p.add_argument("--skip-decode", action="store_true", help="no large-batch decode section")
    p.add_argument("--fresh", action="store_true", help="ignore an existing moe_mla_raw.json in --out")
    args = p.parse_args(argv)
    dev = pick_device(args, paired=True)
    if dev is None:
        return 2
    if args.duration is None:
        args.duration = 2.0 if args.cpu else 20.0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "moe_mla_raw.json"
    raw: dict = {}
    if path.exists() and not args.fresh:  # resume: keep what an earlier call measured
        raw = json.loads(path.read_text())
        if raw.get("tiny") != args.tiny:
            print(f"error: --out {out} holds a {'tiny' if raw.get('tiny') else 'full'} run; pass --fresh or another "
                  "folder", file=sys.stderr)  # fmt: skip
            return 2
        log(f"resuming {path}: kept {', '.join(k for k in SECTIONS if k in raw) or 'nothing'}")
    raw.update({"command": "python benchmarks/moe_mla_gpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__,
                "profile": args.profile, "tiny": args.tiny})  # fmt: skip
    t0 = time.perf_counter()
    if args.cpu:
        torch.set_num_threads(1)  # a toy's kernels: threads only add contention
    if "checks" not in raw:
        raw["checks"] = (
            check_moe(dev, args.tiny) + check_mla(dev, args.tiny) + check_mla_prefill(dev, args.tiny)
        )
        path.write_text(json.dumps(raw, indent=1))
    bad = [c for c in raw["checks"] if not c["ok"]]
    if bad:
        print(f"error: {len(bad)} kernel check(s) failed, first: {bad[0]['kernel']} {bad[0]} — the Triton "
              "kernel disagrees with its torch reference; no timings taken", file=sys.stderr)  # fmt: skip
        return 1
    if "ceilings" not in raw:
        raw["ceilings"] = ceilings(dev)
    if "mixtral_steps" not in raw:
        mixtral = (
            spec_from_config(TINY_MIXTRAL, name="tiny-mixtral") if args.tiny else load_model("mixtral-8x7b")
        )
        raw["mixtral_steps"] = mixtral_steps(mixtral, dev, raw["ceilings"], args.tiny)
        path.write_text(json.dumps(raw, indent=1))
    log(f"[{time.perf_counter() - t0:.0f} s]")
    profile, refs, models = args.profile, list(FIDELITY_MODELS), list(FIDELITY_MODELS)
    if args.cpu and not (args.skip_fidelity and args.skip_decode):
        import fidelity

        refs = []
        for name, cfg in (("tiny-deepseek", TINY_DEEPSEEK), ("tiny-mixtral", TINY_MIXTRAL)):
            f = Path(tempfile.mkdtemp(prefix="moe_mla_cfg_")) / f"{name}.json"
            f.write_text(json.dumps(cfg))
            refs.append(str(f))
        tiny_llama, profile = fidelity.cpu_setup(Path(tempfile.mkdtemp(prefix="moe_mla_cpu_")))
        models = ["tiny", "tiny"]
    if not args.skip_fidelity:
        done = [r for r in raw.get("fidelity", []) if "error" not in r]
        have = {r.get("model_config", {}).get("model_type") if args.cpu else r["model"] for r in done}
        todo = [(m, r) for m, r in zip(models, refs, strict=True)
                if (json.loads(Path(r).read_text())["model_type"] if args.cpu else r) not in have]  # fmt: skip
        for m, r in todo:  # written after each row: a time-out keeps the rows already run
            done += fidelity_rows([m], [r], args, profile, out)
            raw["fidelity"] = done
            path.write_text(json.dumps(raw, indent=1))
        log(f"[{time.perf_counter() - t0:.0f} s]")
    if not args.skip_decode and not raw.get("decode_large"):
        try:
            raw["decode_large"] = large_decode(
                args, profile, tiny_llama if args.cpu else DECODE_MODEL, args.cpu
            )
        except Exception as e:  # noqa: BLE001 - the rest is written; the failure is in the raw file
            traceback.print_exc()
            raw["decode_large_error"] = f"{type(e).__name__}: {str(e)[:300]}"
        path.write_text(json.dumps(raw, indent=1))
    raw["wall_s"] = raw.get("wall_s", 0.0) + time.perf_counter() - t0
    path.write_text(json.dumps(raw, indent=1))
    log(f"wrote {path} in {time.perf_counter() - t0:.0f} s")
    return 0


SECTIONS = ("checks", "ceilings", "mixtral_steps", "fidelity", "decode_large")

if __name__ == "__main__":
    sys.exit(main())
