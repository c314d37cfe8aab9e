"""Run a sweep plan point by point, appending each result to the store as it is measured.

Points already in the store (measured, or recorded as out of memory) are skipped, so a rerun
after an interruption measures only what is missing. An out-of-memory point is recorded as
`oom`, the allocator's cache is emptied, and the sweep goes on.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

from calibrate.accounting import MLA_GROUPS, WORK, is_fresh, label, step_shape
from calibrate.measurements import Record, Store
from calibrate.plan import Point
from calibrate.progress import Item, Progress
from core.cost_model import CostModel
from core.model_spec import dtype_bytes


def is_oom(exc: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError (or an allocator's 'out of memory' RuntimeError), without importing torch."""
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


@dataclass
class SweepReport:
    measured: int = 0
    skipped: int = 0
    oom: int = 0
    errors: int = 0


def run_sweep(
    points: list[Point],
    store: Store,
    measure: Callable[[Point], float],
    recover: Callable[[], None] = lambda: None,
    label_text: str = "sweep",
    stream=None,
    prior: Callable[[list[Point]], list[Item]] | None = None,
    clock: Callable[[], float] | None = None,
) -> SweepReport:
    """Measure every point not yet in `store`; `recover()` runs after an out-of-memory point.

    `prior` predicts the cost of the points left to measure (e.g. `point_costs`), for the time left."""
    rep = SweepReport()
    todo = []
    for p in points:
        r = store.records.get(p.key)
        if r is not None and r.status in ("ok", "oom"):
            rep.skipped += 1
        else:
            todo.append(p)
    # priors of the points left only: a resumed sweep's time left is theirs, and the first of them pays
    # the one-off work (the model's build) wherever the interruption left it
    bar = Progress(prior(todo) if prior else len(todo), label_text, stream=stream, clock=clock)
    if rep.skipped:
        (stream or sys.stderr).write(
            f"{label_text}: {rep.skipped} points already measured, {len(todo)} to go\n"
        )
    try:
        for p in todo:
            bar.show(f"{p.kind} {label(p.kind, p.params)}")
            try:
                s = float(measure(p))
                store.add(Record(p.key, p.kind, p.params, s, "ok", p.holdout))
                rep.measured += 1
            except Exception as e:  # noqa: BLE001 - one bad point must not lose the sweep
                if is_oom(e):
                    recover()
                    store.add(
                        Record(
                            p.key, p.kind, p.params, None, "oom", p.holdout, note=str(e).splitlines()[0][:200]
                        )
                    )
                    rep.oom += 1
                else:
                    msg = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                    store.add(Record(p.key, p.kind, p.params, None, "error", p.holdout, note=msg))
                    rep.errors += 1
                    (stream or sys.stderr).write(
                        f"\nwarning: {p.kind} {label(p.kind, p.params)} failed ({msg})\n"
                    )
            bar.advance(f"{p.kind} {label(p.kind, p.params)}")
    finally:
        bar.show("done" if bar.done == bar.total else "interrupted")
        bar.close()
    return rep


# ------------------------------------------------------------------ what each point costs, before it runs
# Set from per-point wall times of real sweeps (benchmarks/results/calibration_eta/walls_*.jsonl:
# llama-3.1-8b on an H200; qwen2.5-0.5b and two small llama-shaped models on a 2-core Xeon); `Eta`
# corrects them as points finish.
POINT_OVERHEAD_S = {"gpu": 0.01, "cpu": 0.005}  # buffers, events, graph capture, the store's fsync
# random inputs made per second (engine.timing.random_like_nonzero, engine.model's weights and KV pool:
# several passes each), and the fixed part of building the model and its step runner: the H200 built
# llama-3.1-8b with an 810k-token pool in about 5 s; the CPU qwen2.5-0.5b in 11 s, a 0.6 GB model in
# 2.3 s and the tests' tiny one in 0.8 s
FILL_BYTES_PER_S = {"gpu": 200e9, "cpu": 0.1e9}
BUILD_BYTES_PER_S = {"gpu": 24e9, "cpu": 0.15e9}
BUILD_S = {"gpu": 0.5, "cpu": 0.8}
# the serving loop's warm-up (a graph per batch size, cuDNN plans; eager on a CPU) besides its workload:
# a run took 17-20 s on the H200, 0.7 s with the tiny model on the CPU
SERVING_WARMUP_S = {"gpu": 8.0, "cpu": 0.5}
# calibrate.serving.measure_mla_eager after the serving run: two small DeepSeek-V2-Lite builds, their decode graphs and
# their steps (a guess until a GPU run times it; the CPU's toy took 3.5 s)
MLA_EAGER_S = {"gpu": 30.0, "cpu": 3.5}
L2_BYTES = 50 * 2**20  # engine.timing.copies_for_cache's default when the device does not say
GRAPH_MAX_TOKENS = 512  # engine.kernels.GRAPH_STEP_TOKENS, calibrate.bench.GRAPH_GEMM_MAX_M, StepRunner's
# StepRunner's warm-up + repeat per step kind
STEP_CALLS = {"step_prefill": 3 + 10, "step_decode": 3 + 20, "step_mixed": 3 + 10}


@dataclass(frozen=True, slots=True)
class BenchTiming:
    """How the bench times a point (calibrate.bench.Bench's repeat and warm-up) and where."""

    repeat: int
    warmup: int
    cpu: bool
    quick: bool = False
    kv_tokens: int = 0  # the step runner's KV pool, filled once with the model
    # what the serving point runs (calibrate.serving.measure_serving): its workload's runs (0: this sweep's,
    # SERVING_REPEATS on a GPU, one on a CPU) and the MLA eager measure after them; a replay of a sweep recorded
    # before either (benchmarks/calibration_eta.py) says what that sweep ran
    serving_runs: int = 0
    mla_eager: bool = True


def _copies(one_bytes: float, cpu: bool, factor: float) -> int:
    """engine.timing.copies_for_cache: input sets rotated so that they overflow L2 `factor` times."""
    return 1 if cpu else max(1, min(64, int(factor * L2_BYTES // max(one_bytes, 1)) + 1))


def _kernel_point(cm: CostModel, p: Point, t: BenchTiming) -> tuple[float, float]:
    """(seconds of kernels run, bytes of inputs filled) for a microbenchmark point."""
    q, m = p.params, cm.model
    kv_tok_bytes = 2 * m.num_kv_heads * m.head_dim * 2
    if p.kind == "copy":
        return (t.warmup + t.repeat) * 2 * q["nbytes"] / cm.bw, q["nbytes"]
    if p.kind == "allreduce":
        return (t.warmup + t.repeat) * q["nbytes"] / (cm.ic.bandwidth_gbps * 1e9), q["nbytes"]
    if p.kind in ("gemm", "ceiling_gemm", "gemv"):
        flops, nbytes, peak = WORK["gemm"](cm, q)
        one = q["k"] * q["n"] * dtype_bytes(q.get("dtype", "bf16")) + q["m"] * q["k"] * 2
        copies, graph, least = _copies(one, t.cpu, 3.0), q["m"] <= GRAPH_MAX_TOKENS, 4
    elif p.kind == "attention_prefill":
        group = "attention_fresh" if is_fresh(cm, q) else "attention_prefill"
        flops, nbytes, peak = WORK[group](cm, q)
        one = (q["prior"] + q["chunk"]) * kv_tok_bytes
        copies, graph, least = _copies(one, t.cpu, 1.5), q["chunk"] <= GRAPH_MAX_TOKENS, 4
    elif p.kind == "attention_decode":
        flops, nbytes, peak = WORK["attention_decode"](cm, q)
        one = sum(q["context_lens"]) * kv_tok_bytes
        copies, graph, least = _copies(one, t.cpu, 1.5), True, 8
    elif p.kind == "elementwise":
        flops, nbytes, peak = WORK["elementwise"](cm, q)
        one = nbytes
        copies, graph, least = _copies(one, t.cpu, 1.5), True, 4
    elif p.kind == "moe" or p.kind in MLA_GROUPS:
        # one MoE layer's experts or one MLA layer's attention, replayed from a graph of one call
        # (calibrate.bench.Bench._moe / _mla)
        flops, nbytes, peak = WORK[MLA_GROUPS.get(p.kind, p.kind)](cm, q)
        one = nbytes
        copies, graph, least = 1, True, 1
    else:  # a kind this does not know: its overhead alone, until its own timings correct it
        return 0.0, 0.0
    kernel_s = max(flops / peak, nbytes / cm.bw)
    # engine.timing.measure_graph: warm-up calls, then (2 + repeat) replays of a graph of `calls` calls
    calls = t.warmup + (2 + t.repeat) * max(copies, least) if graph and not t.cpu else t.warmup + t.repeat
    return calls * kernel_s, copies * one


def point_costs(points: list[Point], cm: CostModel, t: BenchTiming) -> list[Item]:
    """Each point's predicted seconds, in order: the roofline time of the kernels or steps it runs
    (warm-ups and repeats included), the inputs it fills, a fixed overhead, and the one-off work the first
    point of its sort pays for the rest (building the model, the serving loop's one run)."""
    where = "cpu" if t.cpu else "gpu"
    fill, overhead = FILL_BYTES_PER_S[where], POINT_OVERHEAD_S[where]
    out: list[Item] = []
    model_built = served = False
    for p in points:
        if p.kind in STEP_CALLS:
            step_s = cm.step_time(step_shape(cm, p.kind, p.params))
            # calibrate.bench builds the model and fills its KV pool for the first step
            one_off = 0.0 if model_built else _build_s(cm, where, t.kv_tokens)
            model_built = True
            out.append(Item(p.kind, one_off + overhead + STEP_CALLS[p.kind] * step_s, one_off, "step"))
        elif p.kind == "serving":  # one run of the serving loop answers all four quantities
            # it runs model steps: the steps' correction applies to it (its own comes too late)
            build = 0.0 if model_built else _build_s(cm, where, 0)
            run_s = 0.0 if served else _serving_s(cm, t)
            model_built = served = True
            out.append(Item(p.kind, build + run_s, build, "step"))
        else:
            run_s, filled = _kernel_point(cm, p, t)
            out.append(Item(p.kind, overhead + run_s + filled / fill))
    return out


def _build_s(cm: CostModel, where: str, kv_tokens: int) -> float:
    """Building the model (random weights) and a KV pool of `kv_tokens` (random too)."""
    built = cm.model.weight_bytes("bf16") + kv_tokens * cm.model.kv_bytes_per_token("bf16")
    return BUILD_S[where] + built / BUILD_BYTES_PER_S[where]


def _serving_s(cm: CostModel, t: BenchTiming) -> float:
    """calibrate.serving's synthetic workload: its arrivals' span then its longest output at a full batch, or
    all its steps back to back when they take longer (a CPU's)."""
    from calibrate.serving import SERVING_REPEATS, synthetic_requests
    from core.cost_model import BatchShape

    reqs, max_seqs, budget = synthetic_requests(t.cpu, t.quick)
    span_s = float(reqs.arrival_s.max()) if len(reqs.arrival_s) else 0.0
    ctx = int(reqs.prompt_tokens.mean() + reqs.output_tokens.mean())
    decode_s = cm.step_time(BatchShape.of([], [ctx] * min(max_seqs, len(reqs.arrival_s)), 0, cm.fresh))
    steps = reqs.output_tokens.sum() / max_seqs + reqs.prompt_tokens.sum() / budget
    tail_s = span_s + float(reqs.output_tokens.max()) * decode_s
    where = "cpu" if t.cpu else "gpu"
    runs = t.serving_runs or (1 if t.cpu else SERVING_REPEATS)
    mla = MLA_EAGER_S[where] if t.mla_eager else 0.0
    return SERVING_WARMUP_S[where] + runs * max(tail_s, float(steps) * decode_s) + mla


# A CPU's ceilings before the sweep measures them, for the priors only: a 2-core Xeon's bf16 GEMM
# (walls_cpu_qwen.jsonl's ceiling point) and the rate its qwen2.5-0.5b decode steps streamed the weights
# (1 GB in 0.08 s); each kind's own timings correct them as the sweep goes.
CPU_GUESS_BYTES_PER_S, CPU_GUESS_FLOPS = 12e9, 1e12
RAMPS = ("compute_ramp_flops", "memory_ramp_bytes", "compute_ramp_s", "memory_ramp_s")


def prior_cost_model(spec, base=None) -> CostModel:
    """The cost model the priors use: the base profile's (datasheet and efficiencies), or a CPU guess
    with the h100-sxm efficiencies (the CPU fit's starting values) less their GPU-sized ramps."""
    from calibrate import profile

    if base is None:
        template = profile.read("h100-sxm").efficiency
        flat = {
            name: op.model_copy(update={r: 0.0 for r in RAMPS if hasattr(op, r)})
            for name, op in template
            if any(hasattr(op, r) for r in RAMPS)
        }
        base = profile.cpu_base(
            CPU_GUESS_BYTES_PER_S, CPU_GUESS_FLOPS, template.model_copy(update=flat), 8 * 2**30
        )
    return CostModel(base, spec, serving_host=False)
