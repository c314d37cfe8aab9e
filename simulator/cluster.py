"""The deployment: pools of replicas behind a router, and what they add up to.

A scenario without a `cluster` or `disaggregation` section is one replica of `hardware` and
`serving`. `cluster.replicas: N` makes N copies; `cluster.groups` lists replica groups with their
own GPU, GPUs per replica, count and serving settings (heterogeneous replicas). A replica with
pipeline_parallel = pp > 1 runs as pp virtual engines (vLLM's micro-batches in flight; see the note
at the top of core/parallelism.py), each with 1/pp of its sequences and KV blocks.

Every `Replica` (a replica, or one virtual engine of a pipeline) is one SimPy process. It may cost a
run of decode steps ahead of time only up to the next moment something could join it: the next
arrival it could be sent (its own, when the router decides without looking at load, else the next
arrival into the system), or a KV transfer landing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from core.cost_model import CostModel
from core.engine_profile import EngineProfile, load_engine_profile
from core.errors import ConfigError
from core.graphs import SERVING_GRAPHS, GraphRule
from core.hardware import HardwareProfile, kv_format, load_profile, weight_format
from core.kv_cache import blocks_for
from core.model_spec import ModelSpec
from core.parallelism import Parallelism, virtual_engines
from core.records import StepStats
from core.scheduler import sliding_terms
from simulator.memory import MemoryPlan, plan_memory
from simulator.replica import Replica, ReplicaHooks
from simulator.scenario import Hardware, ReplicaGroup, Scenario, Serving


@dataclass
class Group:
    """Replicas of one kind: GPU profile, parallelism, serving settings, memory plan, price."""

    name: str
    role: str  # colocated, prefill, decode
    count: int
    profile: HardwareProfile
    hardware: Hardware
    serving: Serving
    par: Parallelism
    mem: MemoryPlan
    usd_per_gpu_hour: float
    engines: list[tuple[int, int]] = field(default_factory=list)  # (max_num_seqs, blocks) per virtual engine
    engine: EngineProfile | None = None  # the serving engine's profile (scenario.engine); None: ours

    @property
    def gpus(self) -> int:
        return self.par.gpus * self.count

    @property
    def ours(self) -> bool:
        """Whether the replicas run our engine (no engine profile, or one of the `ours` family), whose CUDA
        graphs pad a step's rows (CostModel's graph_padding)."""
        return self.engine is None or self.engine.engine == "ours"

    @property
    def graphs(self) -> GraphRule | None:
        """The CUDA graphs whose padding the replicas' steps pay: our engine's serving loop's; None for others."""
        return SERVING_GRAPHS if self.ours else None

    def cost_model(self, model: ModelSpec, moe_routing_skew: float) -> CostModel:
        sv, p = self.serving, self.par
        return CostModel(
            self.profile,
            model,
            sv.precision.weight_dtype,
            sv.precision.kv_dtype,
            p.tp,
            p.pp,
            p.ep,
            moe_routing_skew,
            sv.cuda_graphs != "full",
            engine=self.engine,
            eager_decode=sv.cuda_graphs == "none",
            graph_padding=self.graphs,
            async_decode=sv.async_scheduling,
        )


def _merged_serving(base: Serving, over: Serving) -> Serving:
    return base.merged(over)


def _group(scenario: Scenario, model: ModelSpec, g: ReplicaGroup | None, role: str, name: str) -> Group:
    hw = scenario.hardware
    if g is not None:
        update = {
            k: v for k, v in (("gpu", g.gpu), ("gpus_per_replica", g.gpus_per_replica)) if v is not None
        }
        if g.price_per_gpu_hour_usd is not None:
            update["price_per_gpu_hour_usd"] = g.price_per_gpu_hour_usd
        hw = Hardware.model_validate(hw.model_dump() | update)
        serving = _merged_serving(scenario.serving, g.serving)
        count = g.count
    else:
        serving, count = scenario.serving, 1
    profile = load_profile(hw.gpu)
    weight_format(profile, serving.precision.weight_dtype)  # refuses a format this GPU's engines cannot run
    kv_format(profile, serving.precision.kv_dtype)  # the same for the KV cache
    par = Parallelism.of(hw)
    par.check(model)
    mem = plan_memory(profile, model, serving, par.tp, par.pp, par.ep)
    price = hw.price_per_gpu_hour_usd if hw.price_per_gpu_hour_usd is not None else profile.price.usd_per_hour
    engines = (
        virtual_engines(par.pp, serving.batching.max_num_seqs, mem.num_blocks)
        if par.pp > 1
        else [(serving.batching.max_num_seqs, mem.num_blocks)]
    )
    engine = load_engine_profile(scenario.engine)
    return Group(name, role, count, profile, hw, serving, par, mem, price, engines, engine)


def plan_groups(scenario: Scenario, model: ModelSpec) -> list[Group]:
    """The replica groups of a scenario, each with its memory plan."""
    cl, dg = scenario.cluster, scenario.disaggregation
    if dg is not None:
        if cl.groups or cl.replicas != 1 or cl.autoscaling is not None:
            raise ConfigError(
                "with disaggregation, give the replica counts in disaggregation.prefill/decode "
                "(cluster.autoscaling scales colocated replicas only)"
            )
        groups = [_group(scenario, model, dg.prefill, "prefill", "prefill"),
                  _group(scenario, model, dg.decode, "decode", "decode")]  # fmt: skip
        if any(g.serving.batching.mode == "static" for g in groups):
            raise ConfigError("disaggregation needs continuous batching in both pools")
        return groups
    if cl.groups:
        return [_group(scenario, model, g, "colocated", f"group{i}") for i, g in enumerate(cl.groups)]
    g = _group(scenario, model, None, "colocated", "replica")
    g.count = cl.autoscaling.max_replicas if cl.autoscaling is not None else cl.replicas  # engines built
    return [g]


# ---------------------------------------------------------------- which requests a replica can take
def window_blocks(model: ModelSpec, tokens: np.ndarray, block_size: int) -> np.ndarray | int:
    """Scheduler.window_blocks over an array: sliding-window layers' blocks for sequences of `tokens`."""
    window, ratio = sliding_terms(model)
    if not ratio:
        return 0
    w = np.floor(np.minimum(tokens, window) * ratio).astype(np.int64)
    return blocks_for(w, block_size)


def cannot_serve(g: Group, model: ModelSpec, prompt: np.ndarray, output: np.ndarray) -> dict[str, np.ndarray]:
    """Why a replica of group g could never run each request (as masks, by reason)."""
    sv, blocks = g.serving, min(b for _, b in g.engines)
    if g.role == "prefill":
        output = np.ones_like(output)  # the prefill pool keeps the prompt and first token only
    total = prompt + output
    window = window_blocks(model, total, sv.memory.block_size)
    need = blocks_for(total - 1 if sv.batching.mode != "static" else total, sv.memory.block_size)
    return {
        "longer_than_max_model_len": total > g.mem.max_model_len,
        "larger_than_kv_pool": need + window > blocks,
        "prompt_over_token_budget_without_chunking": (~np.asarray(sv.batching.chunked_prefill))
        & (prompt > sv.batching.max_num_batched_tokens),
    }


def first_reasons(masks: dict[str, np.ndarray], rejected: np.ndarray) -> dict[str, int]:
    """Counts per reason of the rejected requests, each under its first reason."""
    out, left = {}, rejected.copy()
    for k, m in masks.items():
        out[k] = int((m & left).sum())
        left &= ~m
    return out


# ---------------------------------------------------------------- looking ahead
class OwnArrivals:
    """The next arrival a given replica could receive: its own when routing is decided in advance."""

    __slots__ = ("source", "pos", "k")

    def __init__(self, source, positions: list[int]) -> None:
        self.source, self.pos, self.k = source, positions, 0

    def __call__(self) -> float:
        src, pos, k = self.source, self.pos, self.k
        n = src.next
        while k < len(pos) and pos[k] < n:
            k += 1
        self.k = k
        t = src.times[pos[k]] if k < len(pos) else math.inf
        return min(t, src.pending[0][0]) if src.pending else t


def look_ahead(replicas: list[Replica], source, targets: np.ndarray | None, order_rids: np.ndarray) -> None:
    """Give each replica its `next_arrival`. `targets` (per request id, −1: decided on arrival) lets a
    replica skip arrivals that will go elsewhere."""
    if targets is None or len(replicas) == 1:
        for r in replicas:
            r.connect(ReplicaHooks(next_arrival=source.next_arrival))
        return
    t = targets[order_rids]
    for i, r in enumerate(replicas):
        r.connect(
            ReplicaHooks(next_arrival=OwnArrivals(source, np.flatnonzero((t == i) | (t == -1)).tolist()))
        )


# ---------------------------------------------------------------- results
MAX_TIMELINE_ROWS = (
    100_000  # of a merged timeline; the grid is horizon/2000, so only a run 50x longer meets it
)


def merge_stats(stats: list[StepStats], interval: float) -> StepStats:
    """Sum of the replicas' statistics; timelines summed on a common grid (each a step function)."""
    if len(stats) == 1:
        return stats[0]
    m = StepStats(interval)
    for s in stats:
        m.add(s)
    ends = [s.timeline[-1][0] for s in stats if len(s.timeline)]  # (a timeline: rows, or an array of them)
    if ends:
        # a run that drains far past its arrivals (a KV link of 1e-300 GB/s) coarsens the grid rather than
        # allocating a row per interval without bound
        step = max(interval, max(ends) / MAX_TIMELINE_ROWS)
        grid = np.arange(0.0, max(ends) + step, step)
        total = np.zeros((len(grid), 4))
        for s in stats:
            if not len(s.timeline):
                continue
            arr = np.asarray(s.timeline, dtype=float)
            i = np.searchsorted(arr[:, 0], grid, side="right") - 1
            vals = np.where(i[:, None] >= 0, arr[np.maximum(i, 0), 1:], 0.0)
            total += vals
        m.timeline = [(float(t), *map(int, row)) for t, row in zip(grid, total, strict=True)]
    return m


def fleet(groups: list[Group]) -> tuple[int, float, int]:
    """(GPUs, USD per hour, engines) of the whole deployment."""
    gpus = sum(g.gpus for g in groups)
    usd = sum(g.gpus * g.usd_per_gpu_hour for g in groups)
    return gpus, usd, sum(g.count * len(g.engines) for g in groups)


def replica_summary(
    groups: list[Group],
    replicas: list[Replica],
    replica_of: list[int],
    table,
    makespan: float,
    served: np.ndarray | None = None,
):
    """Per deployed replica (its `replicas` are its pipeline's virtual engines, `replica_of` says whose):
    group, GPUs, requests served, busy fraction, steps, mean batch, KV peak. `served`: requests finished
    per engine, where there is no table to count them in (a streamed run)."""
    if served is None:
        served = np.bincount(
            np.asarray(table.replica)[np.isfinite(table.finish_s)] + 1, minlength=len(replicas) + 1
        )[1:]
    rows: dict[int, dict] = {}
    for e, rep in zip(replicas, replica_of, strict=True):
        g = e.group
        row = rows.setdefault(
            rep,
            {"replica": rep, "group": g.name, "role": g.role, "gpu": g.profile.name, "gpus": g.par.gpus,
             "requests_served": 0, "busy_s": 0.0, "steps": 0, "seq_steps": 0, "kv_peak_occupancy": 0.0,
             "engines": 0},
        )  # fmt: skip
        row["requests_served"] += int(served[e.index])
        row["busy_s"] += e.stats.busy_s
        row["steps"] += e.stats.steps
        row["seq_steps"] += e.stats.batch_seq_steps
        row["engines"] += 1
        row["kv_peak_occupancy"] = max(row["kv_peak_occupancy"], e.pool.peak_used / max(e.pool.num_blocks, 1))
    out = []
    for row in rows.values():
        row["busy_fraction"] = min(row.pop("busy_s") / max(makespan, 1e-12) / row["engines"], 1.0)
        row["mean_batch_seqs"] = row.pop("seq_steps") / max(row["steps"], 1)
        out.append(row)
    return out


def kv_summary(replicas: list[Replica]) -> dict:
    """KV occupancy over all replicas: mean while busy, and the fullest one's peak."""
    busy_blocks = sum(e.stats.busy_s * e.pool.num_blocks for e in replicas)
    return {
        "blocks": sum(e.pool.num_blocks for e in replicas),
        "mean_occupancy": sum(e.stats.kv_block_seconds for e in replicas) / max(busy_blocks, 1e-12),
        "peak_occupancy": max(e.pool.peak_used / max(e.pool.num_blocks, 1) for e in replicas),
    }
