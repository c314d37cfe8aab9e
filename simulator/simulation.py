"""Run a scenario: build the model, profile, memory plan and workload, then the SimPy cluster."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import simpy

from simulator.cost_model import CostModel
from simulator.hardware import HardwareProfile, load_profile
from simulator.kv_cache import BlockPool
from simulator.memory import MemoryPlan, plan_memory
from simulator.metrics import summarize
from simulator.model_spec import ModelSpec, load_model
from simulator.parallelism import Parallelism
from simulator.records import RequestTable, StepStats
from simulator.replica import Replica
from simulator.scenario import Scenario
from simulator.scheduler import Scheduler
from simulator.source import Source
from simulator.speculative import DraftCost, with_draft_memory
from simulator.workload import PrefixKeys, Requests, generate


@dataclass
class Forecast:
    """Everything a run produced: inputs resolved, per-request records, step statistics, summary."""

    scenario: Scenario
    model: ModelSpec
    profile: HardwareProfile
    memory: MemoryPlan
    requests: Requests | None
    table: RequestTable | None
    stats: StepStats | None
    summary: dict
    wall_s: float

    @property
    def fits(self) -> bool:
        return self.memory.fits


def _conversation(env, reqs: Requests, table: RequestTable, source: Source, keys):
    """When a turn finishes, its conversation's next turn arrives after the user's think time."""
    next_turn, think, arrival = reqs.next_turn, reqs.think_s, table.arrival_s

    def on_finish(rid: int, finish_s: float) -> None:
        if keys is not None:
            keys.forget(rid)
        nxt = int(next_turn[rid])
        if nxt >= 0:
            delay = max(0.0, finish_s + float(think[rid]) - env.now)
            arrival[nxt] = env.now + delay
            source.follow_up(nxt, delay)

    return on_finish


def _admission(scenario: Scenario, reqs: Requests, table: RequestTable) -> dict:
    """Priority per request and admission-control limits for the scheduler."""
    sv = scenario.serving
    out: dict = {"max_waiting": sv.max_queue_len, "timeout_s": sv.queue_timeout_s, "arrival_s": table.arrival_s}
    if sv.scheduling_policy == "priority":
        prio = np.zeros(len(reqs), dtype=np.int64)
        for ci, c in enumerate(scenario.workload.classes or []):
            if reqs.class_id is not None:
                prio[reqs.class_id == ci] = c.priority
        out["priority_of"] = prio.tolist()
    return out


def _spec_settings(scenario: Scenario, reqs: Requests):
    """(k, max batch, acceptance rate per request, rng) for the scheduler, or None."""
    spec = scenario.serving.speculative
    if spec is None:
        return None
    alpha = np.full(len(reqs), spec.acceptance_rate)
    classes = scenario.workload.classes or []
    for ci, c in enumerate(classes):
        if c.acceptance_rate is not None and reqs.class_id is not None:
            alpha[reqs.class_id == ci] = c.acceptance_rate
    rng = np.random.default_rng(np.random.SeedSequence(scenario.seed).spawn(5)[4])
    return spec.num_speculative_tokens, spec.max_batch_size, alpha.tolist(), rng


def simulate(scenario: Scenario, requests: Requests | None = None, step_by_step: bool = False) -> Forecast:
    """Forecast one scenario. A model that does not fit is returned unsimulated, with the numbers.

    `step_by_step` turns off costing runs of decode steps together (same results, slower; for checks).
    """
    wall0 = time.perf_counter()
    model = load_model(scenario.model)
    profile = load_profile(scenario.hardware.gpu)
    sv = scenario.serving
    par = Parallelism.of(scenario.hardware)
    par.check(model)
    mem = plan_memory(profile, model, sv, par.tp, par.pp, par.ep)
    spec = sv.speculative
    draft = load_model(spec.draft_model) if spec is not None and spec.method == "draft" else None
    if draft is not None:
        mem = with_draft_memory(mem, draft, sv, par.tp)
    if not mem.fits:
        summary = summarize(scenario, model, profile, mem, None, None, None, 0.0)
        return Forecast(scenario, model, profile, mem, None, None, None, summary, time.perf_counter() - wall0)

    reqs = requests if requests is not None else generate(scenario.workload, scenario.seed)
    table = RequestTable(reqs.arrival_s.copy(), reqs.prompt_tokens, reqs.output_tokens)
    if reqs.class_id is not None:
        table.class_id = reqs.class_id
    horizon = float(np.nanmax(reqs.arrival_s)) if len(reqs) else 1.0
    stats = StepStats(timeline_interval_s=max(horizon / 2000.0, 1e-3))
    cost = CostModel(profile, model, sv.weight_dtype, sv.kv_dtype, par.tp, par.pp, par.ep, sv.moe_routing_skew)
    pool = BlockPool(mem.num_blocks, sv.block_size, prefix_caching=sv.prefix_caching)
    keys = PrefixKeys(reqs, sv.block_size) if sv.prefix_caching and reqs.segments is not None else None
    sched = Scheduler(
        pool,
        sv.max_num_seqs,
        sv.max_num_batched_tokens,
        sv.chunked_prefill,
        sliding_window=model.sliding_window,
        sliding_ratio=model.sliding_kv_bytes_per_token("bf16") / model.kv_bytes_per_token("bf16")
        if model.sliding_layers
        else 0.0,
        block_keys=keys,
        spec=_spec_settings(scenario, reqs),
        **_admission(scenario, reqs, table),
    )
    env = simpy.Environment()
    replica = Replica(env, 0, sched, cost, table, stats, static=sv.batching == "static")
    if spec is not None:
        draft_cost = CostModel(profile, draft, sv.weight_dtype, sv.kv_dtype, par.tp) if draft is not None else None
        replica.draft_time = DraftCost(spec, cost, draft_cost)
    if step_by_step:
        replica.run_cap = 1

    max_len = mem.max_model_len
    total = reqs.prompt_tokens + reqs.output_tokens
    too_long = total > max_len
    # a sequence that needs more blocks than the whole pool can never run
    window = np.array([sched.window_blocks(int(x)) for x in total]) if model.sliding_layers else 0
    too_big = -(-(total - 1) // sv.block_size) + window > pool.num_blocks
    if sv.batching == "static":
        too_big = -(-total // sv.block_size) + window > pool.num_blocks
    no_chunk = (~np.asarray(sv.chunked_prefill)) & (reqs.prompt_tokens > sv.max_num_batched_tokens)
    table.rejected[:] = too_long | too_big | no_chunk
    rejected = table.rejected

    def submit(rid: int) -> None:
        if not rejected[rid]:
            replica.submit(rid)

    first = np.flatnonzero(np.isfinite(reqs.arrival_s))
    source = Source(env, reqs.arrival_s, submit, order=first[np.argsort(reqs.arrival_s[first], kind="stable")])
    replica.next_arrival = source.next_arrival
    if reqs.next_turn is not None and (reqs.next_turn >= 0).any():
        replica.on_finish = _conversation(env, reqs, table, source, keys)
    elif keys is not None:
        replica.on_finish = lambda rid, _t: keys.forget(rid)
    env.run()
    table.freeze()
    dropped = {"queue_full": 0, "timed_out": 0}
    for rid, why in sched.dropped:
        table.rejected[rid] = True
        dropped[why] += 1
    if reqs.next_turn is not None:  # turns after a rejected one never come: the conversation ended
        for rid in np.flatnonzero(table.rejected):
            nxt = int(reqs.next_turn[rid])
            while nxt >= 0 and not np.isfinite(table.arrival_s[nxt]):
                table.rejected[nxt] = True
                nxt = int(reqs.next_turn[nxt])
    wall = time.perf_counter() - wall0
    summary = summarize(scenario, model, profile, mem, table, stats, sched, wall)
    summary["rejected_reasons"] = {
        "longer_than_max_model_len": int(too_long.sum()),
        "larger_than_kv_pool": int((too_big & ~too_long).sum()),
        "prompt_over_token_budget_without_chunking": int((no_chunk & ~too_long & ~too_big).sum()),
        **dropped,
    }
    return Forecast(scenario, model, profile, mem, reqs, table, stats, summary, wall)
