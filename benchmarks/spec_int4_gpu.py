"""Speculative decoding and int4 weights in our engine, measured in one run (issue 19); raw runs for the comparison.

One command on the GPU, within --budget-s (default 290 s: a part or row that would not fit is skipped and listed
under "skipped"; run it again with the same --out and it keeps what is there and measures only the rest), in order:

(a) the int4 weight-only GEMM (engine/quant.py) on Llama-3.1-8B's weight shapes at 1, 4, 16, 512, 2,048 and
    8,192 tokens: every candidate kernel's time (the layer's own tuner: the plane-at-a-time kernel, the I2F
    GEMV, tiles, torch's int4 kernel, dequantize-then-cuBLAS; each checked against the reference first and
    dropped with the reason when it fails), the one the layer picks, its error on the full output, against the
    4-bit weight-read floor (packed weights + scales at the measured copy bandwidth; up to 16 tokens) and the
    bf16 GEMM (cuBLAS) at the same size;
(b) an int4 Llama-3.1-8B row on the conversation trace through the real serving loop (engine/serving.py,
    benchmarks/fidelity.py's machinery; every int4 rows bucket tuned at warm-up, before the replay);
(c) the seed experiment's shape with int4 weights at batch 1: each prompt length 128 … 8,192 alone, its
    TTFT and decode tokens/s;
(b) then speculative decoding of Llama-3.1-8B with a draft made of its own config cut to DRAFT_LAYERS
    layers, α ∈ {0.6, 0.8} × k ∈ {2, 4}, at high load (more than SPEC_MAX_BATCH decoding: off) and then at low
    load (on; each low-load trace made longer, at the same rate, until it holds MIN_LOW_REQUESTS requests);
    rounds replay one CUDA graph each where they can (engine/speculative.py's RoundGraph), and each row records
    where a round's time went ("rounds").

Everything goes into one JSON under --out (plus the log); benchmarks/compare_spec_int4.py then simulates the
same requests and writes benchmarks/results/fidelity_spec_int4_<profile>.md. Acceptance of drafts is a
seeded draw at rate α per position (the weights are random; engine/speculative.py).

    python benchmarks/spec_int4_gpu.py --out DIR                 # the GPU run (H200 profile: h200), <= 290 s
    cp OLD/spec_int4_h200.json DIR/ && python benchmarks/spec_int4_gpu.py --out DIR   # resume: only what is missing
    python benchmarks/spec_int4_gpu.py --cpu --tiny --out DIR    # the same code on tiny models (< 1 minute)
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import _checkout  # noqa: F401  (first: the checkout's root on sys.path)
import fidelity as fd
import numpy as np

from core.errors import ConfigError
from core.hardware import load_profile
from core.kv_cache import BlockPool
from core.model_spec import load_model
from core.requests import Requests
from simulator.memory import activation_bytes, plan_memory
from simulator.metrics import RunRecord, SchedulerCounts, Setup, summarize
from simulator.scenario import Scenario, Speculative
from simulator.speculative import with_draft_memory
from simulator.workload import generate

DRAFT_LAYERS = 4  # the draft: the target's config with this many layers (Llama-3.2-1B's weight reads, about)
# speculation switches off above this many decoding sequences (both sides); the first H200 run's 8 was never
# exceeded at 80% load (at most 8 decoding), so its high-load rows speculated on 99% of steps: 4 makes them switch
SPEC_MAX_BATCH = 4
ALPHAS, KS = (0.6, 0.8), (2, 4)
LOW_LOAD, HIGH_LOAD = 0.2, 0.8  # shares of the simulator's capacity without speculation
MIN_LOW_REQUESTS = 16  # requests a low-load row replays at least (GPU; its trace grows until it holds them)
MAX_LOW_DURATION_S = 20.0  # ... up to this long by default (--max-low-duration; the run fits --budget-s)
BUDGET_S = 290.0  # default --budget-s: the lead's slot for this script on the H200 is about 300 s
CPU_LOW_LOAD = 0.3  # the tiny CPU rows replay 1.5 s: a few requests at low load
SEED_PROMPTS = (128, 256, 512, 1024, 2048, 4096, 8192)
SEED_OUTPUT = 128
GEMM_SHAPES = {"qkv": (4096, 6144), "o": (4096, 4096), "gate_up": (4096, 28672), "down": (14336, 4096)}
GEMM_ROWS = (1, 4, 16, 512, 2048, 8192)  # decode batches (against the read floor) and prefill chunks
CPU_GEMM_ROWS = (1, 4, 64)
# tiny CPU stand-ins: K a multiple of int4's group (128)
TINY_INT4 = dict(fd.TINY_CONFIG, hidden_size=128, intermediate_size=256, head_dim=32)
CPU_GEMM_SHAPES = {"qkv": (128, 256), "down": (256, 128)}


@dataclass(frozen=True)
class SpecRow:
    alpha: float
    k: int
    load: float

    @property
    def name(self) -> str:
        return f"spec-a{round(self.alpha * 100)}-k{self.k}-{round(self.load * 100)}pct"


def draft_config(target_ref: str, layers: int, folder: Path) -> str:
    """A draft model's config.json: the target's config with `layers` layers (same vocabulary); its path."""
    cfg = dict(load_model(target_ref).config)
    text = cfg.get("text_config")
    if isinstance(text, dict):
        cfg["text_config"] = dict(text, num_hidden_layers=layers)
    cfg["num_hidden_layers"] = layers
    path = folder / f"draft_{layers}_layers.json"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg))
    return str(path)


def spec_scenario(
    base: Scenario, row: SpecRow, draft_ref: str, max_batch: int = SPEC_MAX_BATCH, graphed: bool = True
) -> Scenario:
    """The fidelity scenario with speculative decoding on (draft model, k, α, max batch; rounds in one graph as
    the engine runs them, unless `graphed` is off: the first H200 run's step-by-step rounds)."""
    spec = Speculative(method="draft", draft_model=draft_ref, num_speculative_tokens=row.k,
                       acceptance_rate=row.alpha, max_batch_size=max_batch, graphed_rounds=graphed)  # fmt: skip
    return base.model_copy(update={"serving": base.serving.model_copy(update={"speculative": spec})})


# ---------------------------------------------------------------------------------------------- (a) GEMMs
def gemm_table(cpu: bool, log) -> list[dict]:
    """int4 GEMM per weight shape and token count: every candidate kernel's time (engine/quant.py's tuner: each
    checked against the reference first, dropped with the reason if it fails), the chosen one, its error on the
    full output, against the 4-bit read floor (batch <= 16) and the bf16 GEMM (cuBLAS) at the same size."""
    import torch

    from engine import quant
    from engine.kernels import time_copy, time_gemm
    from engine.timing import measure

    dev = "cpu" if cpu else "cuda"
    secs, nbytes = time_copy((16 if cpu else 2048) * 2**20, dev)
    bw = nbytes / secs
    log(f"copy bandwidth {bw / 1e9:.0f} GB/s")
    out = []
    shapes = CPU_GEMM_SHAPES if cpu else GEMM_SHAPES
    for name, (k, n) in shapes.items():
        g = torch.Generator(device=dev).manual_seed(0)
        w = (torch.randn((n, k), device=dev, generator=g) * k**-0.5).to(torch.bfloat16)
        qw, sc = quant.quantize_int4(w)
        del w
        tg = quant.tinygemm_pack(qw, sc)
        wref = quant.dequantize(qw, sc, torch.float32)  # [N, K]: the reference's weight
        rec = {"shape": name, "k": k, "n": n, "tinygemm": tg is not None, "rows": [], "prefill": []}
        for m in GEMM_ROWS if not cpu else CPU_GEMM_ROWS:
            x = torch.randn((m, k), device=dev, generator=g).to(torch.bfloat16)
            y = quant.w4a16(
                x, qw, sc, tg
            ).float()  # on the GPU: tunes this bucket (checks, times every candidate)
            ref = x[:256].float() @ wref.t()
            err = float((y[:256] - ref).abs().max() / ref.abs().max())
            times = quant.tuning_times(m, n, k, tinygemm=tg is not None)
            if not times:  # the CPU: its one candidate, timed here
                times = {quant.cand_name(quant.candidates(m, x, tg)[0]):
                         measure(lambda a=(x, qw, sc, tg): quant.w4a16(*a), dev, warmup=1, repeat=3)}  # fmt: skip
            ok = {c: t for c, t in times.items() if isinstance(t, float)}
            chosen = min(ok, key=ok.__getitem__)
            t4, t16 = ok[chosen], time_gemm(m, k, n, "bf16", dev)
            floor = (qw.numel() * 4 + sc.numel() * 2 + 2 * m * (k + n)) / bw
            row = {"m": m, "chosen": chosen, "int4_s": t4, "bf16_s": t16, "max_rel_error": err, "floor_s": floor,
                   "over_floor": t4 / floor, "int4_tflops": 2 * m * k * n / t4 / 1e12,
                   "bf16_tflops": 2 * m * k * n / t16 / 1e12, "candidates": times}  # fmt: skip
            rec["rows"].append(row)
            if m > 16:
                rec["prefill"].append(row)
            cells = ", ".join(
                f"{c} {t * 1e6:.1f}" if isinstance(t, float) else f"{c} {t}" for c, t in times.items()
            )
            log(f"int4 {name} [{k}x{n}] m={m}: chosen {chosen} {t4 * 1e6:.1f} µs (error {err:.1e}); bf16 "
                f"{t16 * 1e6:.1f} µs; " + (f"floor {floor * 1e6:.1f} µs ({t4 / floor:.2f}x)" if m <= 16 else
                f"{row['int4_tflops']:.0f} vs bf16 {row['bf16_tflops']:.0f} TFLOP/s"))  # fmt: skip
            log(f"    candidates (µs): {cells}")
            del x, y, ref
        one = rec["rows"][0]
        rec.update(max_rel_error=max(r["max_rel_error"] for r in rec["rows"]), batch1_s=one["int4_s"],
                   floor_s=one["floor_s"], batch1_over_floor=one["over_floor"], bf16_batch1_s=one["bf16_s"])  # fmt: skip
        out.append(rec)
        del qw, sc, tg, wref
        if not cpu:
            torch.cuda.empty_cache()
    return out


# ---------------------------------------------------------------------------------------------- (b) speculation
class SpecHost:
    """Target and draft models on the device, each with its executor over pools of the same token count."""

    def __init__(
        self, spec, draft_spec, device: str, max_batch: int, max_prompt: int, reserve: float, log
    ) -> None:
        import torch

        from engine.model import build_model
        from engine.serving import Executor

        t0 = time.perf_counter()
        dtype = "fp32" if device == "cpu" else "bf16"
        ctx = min(spec.max_position_embeddings or 32768, 32768)
        self.target = build_model(spec, dtype=dtype, device=device, max_position=ctx)
        self.draft = build_model(draft_spec, dtype=dtype, device=device, max_position=ctx, seed=1)
        if device == "cpu":
            pool_tokens = max_batch * 400
        else:
            torch.cuda.empty_cache()
            free = torch.cuda.mem_get_info()[0]
            per_token = sum(m.num_layers * 2 * m.num_kv_heads * m.head_dim * 2 for m in (spec, draft_spec))
            pool_tokens = int((free - reserve) // per_token) - max_batch
        kw = {"device": device, "max_context": ctx, "mixed_seqs": 8 + SPEC_MAX_BATCH}
        if device == "cpu":  # the graphs' static buffers, run eagerly: the round graphs' path on the CPU too
            kw.update(static_decode=True, static_mixed=True, mixed_graph_tokens=256)
        self.executor = Executor(self.target, pool_tokens, max_batch, **kw)
        self.draft_executor = Executor(self.draft, pool_tokens, SPEC_MAX_BATCH, **kw)
        self.executor.warmup(log, max_prompt=max_prompt)
        self.draft_executor.warmup(log, max_prompt=max_prompt)
        from engine.speculative import SpecRun

        self.round_graphs = {}  # k -> the round graphs of every padded batch size (engine/speculative.py)
        for k in KS:
            sr = SpecRun(self.draft_executor, k, SPEC_MAX_BATCH)
            sr.warmup(self.executor, log)
            self.round_graphs[k] = sr.graphs
        self.pool_tokens = pool_tokens
        log(f"{spec.name} + {DRAFT_LAYERS}-layer draft ({dtype}): built and warmed up in "
            f"{time.perf_counter() - t0:.0f} s, KV pools of {pool_tokens} tokens each")  # fmt: skip


def engine_figures(sc: Scenario, spec, profile, mem, run) -> dict:
    setup = Setup(sc, spec, profile, mem)
    return fd.figures(
        summarize(setup, RunRecord(run.table, run.stats, SchedulerCounts.of([run.scheduler]), run.wall_s))
    )


def run_spec_row(row: SpecRow, args, ctx: dict, host: SpecHost, log) -> dict:
    """One speculation row on the engine (the simulator's side: compare_spec_int4.py)."""
    from engine.serving import region_headroom, serve
    from engine.speculative import SpecRun

    base_row, profile = ctx["row"], load_profile(ctx["profile"])
    spec, draft_ref = load_model(ctx["model_ref"]), ctx["draft_ref"]
    rate = row.load * ctx["capacity"]
    duration = args.duration * (1.0 if row.load < 0.5 else 0.7)
    draft = load_model(draft_ref)
    if row.load < 0.5:  # low load: a longer trace (same rate) until it holds enough requests for percentiles
        while duration < args.max_low_duration and len(generate(fd.scenario_for(
                base_row, rate, duration, ctx["profile"], ctx["model_ref"], args.utilization).workload, 0)
        ) < args.min_low_requests:  # fmt: skip
            duration *= 1.04

    def setup(util: float):
        sc = fd.scenario_for(base_row, rate, duration, ctx["profile"], ctx["model_ref"], util)
        sc = spec_scenario(sc, row, draft_ref)
        return sc, with_draft_memory(plan_memory(profile, spec, sc.serving), draft, sc.serving)

    util = args.utilization
    sc, mem = setup(util)
    reqs = generate(sc.workload, sc.seed)
    sv = sc.serving
    # the engine's regions hold final lengths: keep the scheduler's blocks within its pool (both sides)
    room = max(
        1, (host.pool_tokens - region_headroom(reqs, sv.batching.max_num_seqs, row.k)) // sv.memory.block_size
    )
    for _ in range(4):
        if mem.num_blocks <= room:
            break
        util *= (mem.usable_bytes - (mem.num_blocks - room) * mem.block_bytes) / mem.usable_bytes
        sc, mem = setup(util)
    blocks = min(mem.num_blocks, room)
    if blocks < mem.num_blocks:  # noted in the raw run (sim_kv_blocks); the comparison simulates the plan's
        log(f"  warning: the simulator plans {mem.num_blocks} KV blocks, the engine's pool holds {room}")
    log(f"{row.name}: {len(reqs)} requests at {rate:.2f} req/s ({duration:.0f} s), {blocks} KV blocks")
    deadline = min(duration * 1.5 + (5 if args.cpu else 20), max(duration, ctx["left"]() - 5))
    sr = SpecRun(host.draft_executor, row.k, SPEC_MAX_BATCH, row.alpha, "draw", host.round_graphs[row.k])
    run = serve(host.executor, reqs, BlockPool(blocks, sv.memory.block_size), sv.batching.max_num_seqs,
                sv.batching.max_num_batched_tokens, sv.batching.chunked_prefill, seed=sc.seed, deadline_s=deadline,
                log=log, trace=True, spec=sr)  # fmt: skip
    tr = run.step_trace
    write_trace(Path(args.out) / f"steps_{row.name}.csv", tr)  # every step, for pricing them one by one later
    sp = tr["spec_seqs"] > 0
    # where a round's time goes (means over speculative steps): the round as one graph (share), drafting of the
    # step-by-step rounds on the host clock, then the verification step or the round's graph (host until
    # launched, GPU span between CUDA events)
    rounds = {"steps": int(sp.sum()), "mean_seqs": float(tr["spec_seqs"][sp].mean()) if sp.any() else 0.0,
              "execute_ms": float(tr["execute_s"][sp].mean() * 1e3) if sp.any() else float("nan"),
              "draft_ms": run.spec["draft_s"] / max(int(sp.sum()) - run.spec["graph_rounds"], 1) * 1e3,
              "launch_ms": _mean_ms(tr["launch_s"][sp]), "gpu_ms": _mean_ms(tr["gpu_s"][sp]),
              "graph_rounds": run.spec["graph_rounds"],
              "round_graph": float((tr["graph"][sp] == 3).mean()) if sp.any() else float("nan")}  # fmt: skip
    eng = engine_figures(sc, spec, profile, mem, run)
    log(f"  TTFT p50 {fd.ms(eng['ttft_p50'])} ms, TPOT p50 {fd.ms(eng['tpot_p50'])} ms, out tok/s "
        f"{eng['output_tokens_per_s']:.0f}; rounds {run.spec['rounds']}, acceptance {run.spec['acceptance']:.2f}, "
        f"{int((tr['spec_seqs'] > 0).sum())} of {run.steps} steps speculative")  # fmt: skip
    log(f"  a round: {rounds['execute_ms']:.2f} ms ({rounds['mean_seqs']:.1f} seqs), {rounds['round_graph']:.0%} as one "
        f"graph; the rest's drafting {rounds['draft_ms']:.2f} ms a round; the verification (or the round's graph) "
        f"launched in {rounds['launch_ms']:.2f} ms, GPU {rounds['gpu_ms']:.2f} ms")  # fmt: skip
    return {"row": row.name, "kind": "spec", "alpha": row.alpha, "k": row.k, "load": row.load, "rate_per_s": rate,
            "capacity_requests_per_s": ctx["capacity"], "duration_s": duration, "deadline_s": deadline,
            "kv_blocks": blocks, "sim_kv_blocks": mem.num_blocks, "gpu_memory_utilization": util, "requests": requests_dict(reqs),
            "engine": eng, "engine_requests": table_dict(run.table), "spec_stats": run.spec,
            "engine_run": run_stats(run), "spec_steps": int((tr["spec_seqs"] > 0).sum()), "rounds": rounds,
            "spec_seqs_max": int(tr["spec_seqs"].max(initial=0)),
            "decode_seqs_max": int(tr["decode_seqs"].max(initial=0))}  # fmt: skip


def write_trace(path: Path, trace: dict[str, np.ndarray]) -> None:
    """The serving loop's step trace (engine.serving.serve(trace=True)) as CSV: a column per field, a row per step."""
    cols = list(trace)
    lines = [",".join(cols)] + [
        ",".join(f"{trace[c][i]:.6g}" for c in cols) for i in range(len(trace[cols[0]]))
    ]
    path.write_text("\n".join(lines) + "\n")


def _mean_ms(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean() * 1e3) if len(x) else float("nan")


def requests_dict(reqs: Requests) -> dict:
    return {"arrival_s": reqs.arrival_s.tolist(), "prompt_tokens": reqs.prompt_tokens.tolist(),
            "output_tokens": reqs.output_tokens.tolist()}  # fmt: skip


def table_dict(t) -> dict:
    return {k: np.asarray(getattr(t, k)).tolist() for k in ("scheduled_s", "first_token_s", "finish_s", "preemptions",
                                                                "generated")}  # fmt: skip


def run_stats(run) -> dict:
    return {"wall_s": run.wall_s, "steps": run.steps, "decode_graph_steps": run.decode_graph_steps,
            "host_s": run.host_s, "idle_s": run.idle_s, "unfinished": len(run.unfinished)}  # fmt: skip


# ---------------------------------------------------------------------------------------------- (c) seed shape
def seed_shape(host, args, log) -> list[dict]:
    """Each prompt length alone at batch 1 on the int4 model (twice: the second run counts)."""
    from engine.serving import serve

    prompts = SEED_PROMPTS if not args.cpu else (16, 64, 128)
    out_tokens = SEED_OUTPUT if not args.cpu else 16
    budget = max(8192, max(prompts))
    rows = []
    for p in prompts:
        reqs = Requests(np.zeros(1), np.array([p]), np.array([out_tokens]))
        blocks = -(-(p + out_tokens) // 16) + 1
        for _ in range(2):
            run = serve(host.executor, reqs, BlockPool(blocks, 16), 1, budget, True)
        t = run.table
        ttft = float(t.first_token_s[0] - t.arrival_s[0])
        tpot = float((t.finish_s[0] - t.first_token_s[0]) / (out_tokens - 1))
        rows.append({"prompt_tokens": p, "output_tokens": out_tokens, "ttft_s": ttft, "tpot_s": tpot,
                     "decode_tokens_per_s": 1.0 / tpot, "max_num_batched_tokens": budget})  # fmt: skip
        log(
            f"seed shape, prompt {p}: TTFT {ttft * 1e3:.1f} ms, TPOT {tpot * 1e3:.2f} ms ({1 / tpot:.0f} tok/s)"
        )
    return rows


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--out", required=True, help="folder for the raw runs (spec_int4_<profile>.json) and the log"
    )
    p.add_argument("--cpu", action="store_true", help="run on the CPU (with --tiny: tiny models, < 1 minute)")
    p.add_argument("--tiny", action="store_true", help="tiny model configs (the CPU pipeline check)")
    p.add_argument("--profile", default="h200", help="the GPU's calibrated profile (default h200)")
    p.add_argument("--duration", type=float, help="seconds of trace per low-load row (default 12; cpu 1.5)")
    p.add_argument("--utilization", type=float, default=0.9, help="gpu_memory_utilization (default 0.9)")
    p.add_argument(
        "--only", default="abc", help="parts to run: a GEMMs, b fidelity rows, c seed shape (default abc)"
    )
    p.add_argument("--budget-s", type=float, default=BUDGET_S, help=f"seconds the whole run may take (default "
                   f"{BUDGET_S:.0f}): a part or row that would not fit is skipped and listed under 'skipped'")  # fmt: skip
    p.add_argument("--min-low-requests", type=int, help=f"requests per low-load row, at least (default "
                   f"{MIN_LOW_REQUESTS}; cpu 0): its trace is made longer, not denser")  # fmt: skip
    p.add_argument("--max-low-duration", type=float, default=MAX_LOW_DURATION_S, help="seconds a low-load row's "
                   f"trace may grow to while it holds fewer than --min-low-requests (default {MAX_LOW_DURATION_S:g})")  # fmt: skip
    args = p.parse_args(argv)
    if args.min_low_requests is None:
        args.min_low_requests = 0 if args.cpu else MIN_LOW_REQUESTS
    if args.cpu != args.tiny:
        p.error("--cpu and --tiny go together (the GPU run uses the real models)")
    args.duration = args.duration or (1.5 if args.cpu else 12.0)
    args.device, args.reserve_gib = ("cpu" if args.cpu else "cuda"), None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logf = (out / "spec_int4.log").open("a")

    def log(msg: str) -> None:
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    import torch

    if not args.cpu and not torch.cuda.is_available():
        print("error: no CUDA device; pass --cpu --tiny for the CPU pipeline check", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="spec_int4_"))
    if args.cpu:
        torch.set_num_threads(1)
        model_ref, profile_name = fd.cpu_setup(work)
        int4_ref = str(work / "tiny_int4_config.json")
        Path(int4_ref).write_text(json.dumps(TINY_INT4))
        target, int4_model = "tiny", "tiny"
    else:
        model_ref = int4_ref = "llama-3.1-8b"
        profile_name = args.profile
        load_profile(profile_name)
        target = int4_model = "llama-3.1-8b"
    result = {"profile": args.profile if not args.cpu else "cpu", "device": args.device, "command":
              "python benchmarks/spec_int4_gpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "draft_layers": DRAFT_LAYERS, "spec_max_batch": SPEC_MAX_BATCH, "duration_s": args.duration,
              "round_graphs": True}  # fmt: skip
    if not args.cpu:
        result["gpu"] = torch.cuda.get_device_name()
        result["torch"] = torch.__version__
    path = out / f"spec_int4_{result['profile']}.json"
    done: dict = {}
    if path.exists():  # resume: keep what an earlier run under --out measured, run only the rest
        done = json.loads(path.read_text())
        if done.get("spec_max_batch") != SPEC_MAX_BATCH or done.get("device") != result["device"]:
            done = {}
        for key in ("gemm", "int4_rows", "seed_shape", "spec_rows", "spec_capacity_requests_per_s", "loads"):
            if key in done:
                result[key] = done[key]
        log(f"resuming {path}: kept {', '.join(k for k in ('gemm', 'int4_rows', 'seed_shape') if k in done) or 'no part'}"
            f" and {len(done.get('spec_rows', []))} speculation rows")  # fmt: skip
    result["skipped"] = []

    def left() -> float:
        return args.budget_s - (time.perf_counter() - t0)

    def fits(part: str, need_s: float) -> bool:
        """Whether `part` (about need_s seconds) fits the budget left; if not, it is listed as skipped."""
        if left() >= need_s:
            return True
        result["skipped"].append(part)
        log(f"skipped {part}: about {need_s:.0f} s needed, {left():.0f} s of --budget-s left")
        return False

    refs = {"model": model_ref, "int4": int4_ref, "profile": profile_name}
    result["refs"], result["files"] = {}, {}

    def keep_refs() -> None:
        """Model and profile references for the comparison: names, or files whose text travels in the JSON."""
        for key, ref in refs.items():
            f = Path(ref)
            if f.suffix in (".json", ".yaml") and f.exists():
                result["files"][f.name] = f.read_text()
                ref = f.name
            result["refs"][key] = ref

    def save() -> None:
        from engine.quant import tuned_configs, tuning_record

        keep_refs()
        result["int4_launch_configs"] = (
            tuned_configs()
        )  # per rows bucket and shape: the kernel the layer runs
        result["int4_tuning"] = tuning_record()  # and every candidate's time there (the engine's buckets too)
        path.write_text(json.dumps(result, indent=1))

    try:
        if "a" in args.only and "gemm" not in result and fits("a (GEMMs)", 60):
            result["gemm"] = gemm_table(args.cpu, log)
            save()
        # the int4 model first (its row, then the seed shape), the speculation rows last: the long low-load rows
        # end the run, so a run cut short by its time limit loses the fewest rows (each is saved as it ends)
        hosts: dict = {}
        int4_row = fd.Row(int4_model, "int4", "conversation", 0.8)
        if "b" in args.only and "int4_rows" not in result and fits("b (int4 row)", 90):
            # the int4 row: benchmarks/fidelity.py's own row runner, int4 weights
            rec = fd.run_row(int4_row, args, profile_name, int4_ref, hosts, work / "fidelity", log)
            rec["kind"] = "int4"
            rec["engine_requests_csv"] = (
                work / "fidelity" / int4_row.name / "engine_requests.csv"
            ).read_text()
            result["int4_rows"] = [rec]
            save()
            log(f"  [{time.perf_counter() - t0:.0f} s]")
        if "c" in args.only and "seed_shape" not in result and fits("c (seed shape)", 30 if hosts else 75):
            host = hosts.get(int4_row.model) or fd.EngineHost(
                int4_row,
                load_model(int4_ref),
                args.device,
                4096,
                256,
                8192 + 256,
                fd.ENGINE_RESERVE_BYTES,
                log,
                8192,
            )
            result["seed_shape"] = {
                "model": int4_model,
                "weight_dtype": "int4",
                "rows": seed_shape(host, args, log),
            }
            save()
            log(f"  [{time.perf_counter() - t0:.0f} s]")
            del host
        hosts.clear()
        gc.collect()
        if not args.cpu:
            torch.cuda.empty_cache()
        draft_ref = refs["draft"] = draft_config(model_ref, 1 if args.cpu else DRAFT_LAYERS, work)
        names = [SpecRow(a, k, ld).name for ld in (HIGH_LOAD, LOW_LOAD) for a in ALPHAS for k in KS]
        have = {r["row"] for r in result.get("spec_rows", [])}
        if "b" in args.only and not args.cpu and not set(names) <= have and not fits("speculation rows", 40):
            pass
        elif "b" in args.only and (args.cpu or not set(names) <= have):
            base = fd.Row(target, "fp32" if args.cpu else "bf16", "conversation", LOW_LOAD)
            cap = fd.capacity(
                base, args.duration, profile_name, model_ref, args.utilization, 20.0 if args.cpu else 5.0
            )
            log(f"capacity without speculation: {cap:.2f} req/s [{time.perf_counter() - t0:.0f} s]")
            ctx = {"row": base, "profile": profile_name, "model_ref": model_ref, "draft_ref": draft_ref,
                   "capacity": cap}  # fmt: skip
            spec, draft_spec = load_model(model_ref), load_model(draft_ref)
            sv = fd.scenario_for(base, 1.0, args.duration, profile_name, model_ref, args.utilization).serving
            reserve = activation_bytes(spec, sv) + fd.ENGINE_RESERVE_BYTES + 2**30
            host = SpecHost(spec, draft_spec, args.device, sv.batching.max_num_seqs, sv.batching.max_num_batched_tokens,
                            reserve, log)  # fmt: skip
            ctx["left"] = left
            result.setdefault("spec_rows", [])
            result["spec_capacity_requests_per_s"] = cap
            result["loads"] = loads = [CPU_LOW_LOAD if args.cpu else LOW_LOAD, HIGH_LOAD]
            for load in reversed(loads):  # high load first (short), then the long low-load rows
                for alpha in ALPHAS:
                    for k in KS:
                        row = SpecRow(alpha, k, load)
                        need = (
                            args.duration * 0.7 if load >= 0.5 else max(args.max_low_duration, args.duration)
                        ) + 6
                        if row.name in have or not fits(row.name, need if not args.cpu else 0):
                            continue
                        rec = run_spec_row(row, args, ctx, host, log)
                        result["spec_rows"].append(rec)
                        save()
                        log(f"  [{time.perf_counter() - t0:.0f} s]")
            del host
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result["wall_s"] = time.perf_counter() - t0
    save()
    log(f"wrote {path} in {result['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
