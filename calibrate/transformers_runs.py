"""Raw timings of Hugging Face transformers' own serving paths on catalogue models with random weights.

`python -m calibrate.transformers_runs --out DIR --models llama-3.1-8b --budget-s 540` times, per model:
  * `generate` (static batches, the stack most users start with): a batch-1 sweep of prompt lengths (TTFT =
    T(1 new token), decode time per output token) and a few batch sizes at two prompt lengths;
  * its continuous-batching manager replaying the conversation and code traces, requests submitted at their
    (optionally time-stretched) arrival times from a feeder thread, with every token's timestamp and a record
    of every manager step (its duration, decode sequences, prefill chunks).
It writes one JSON per model after every measured point and replay, continues an existing file of the same
plan (so a run cut by the device's time limit loses only what was in flight), and prints a Markdown summary.
Nothing is fitted here: a later step turns these runs into an engine profile and checks the simulator (issue 11).
Only the standard library is imported at the top; torch and transformers come in when a run starts, and
nothing here imports the simulator (the GPU machine has no pydantic or simpy).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import gc
import inspect
import json
import os
import platform
import shlex
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
CATALOGUE_DIR = REPO_ROOT / "core" / "catalogue"
CONVERSATION_TRACE = "simulator/traces/splitwise_conv.csv"
CODE_TRACE = "simulator/traces/splitwise_code.csv"

DEFAULT_MODELS = ("llama-3.1-8b", "qwen2.5-7b")
PHASES = ("generate", "replays")
# Manager start, its warm-up requests and its teardown, on top of a replay's own expected time (H200, 2026-12-02:
# init + stop took about 2 s).
REPLAY_OVERHEAD_S = 5.0
# A replay is stopped at this multiple of its expected time (or the budget's end, if sooner), and marked partial.
REPLAY_LIMIT_FACTOR = 1.5


@dataclass(slots=True)
class ReplaySpec:
    """One continuous-batching replay: the first `requests` rows of a trace, outputs capped, arrivals x time_scale."""

    name: str
    trace: str  # path relative to the repository root
    requests: int
    output_cap_tokens: (
        int  # output tokens per request = min(trace, cap): whole outputs would not fit the time
    )
    time_scale: float  # arrival times are multiplied by this: 1.0 = the trace's own rate, 2.5 = 2.5x slower
    expected_s: float  # planned duration (budgeting: skipped if it does not fit, stopped at 1.5x)
    prompt_cap_tokens: int | None = None  # only the CPU smoke test shortens prompts
    seed: int = 7  # of the random prompt ids


@dataclass(slots=True)
class SweepPlan:
    """What one run measures; `full()` is the H200 plan of issue 11, `quick()` a CPU smoke test."""

    batch1_prompt_tokens: tuple[int, ...]  # the batch-1 sweep (fidelity rows and TTFT curve)
    batch_sizes: tuple[int, ...]  # static batches > 1, each at every batch_prompt_tokens
    batch_prompt_tokens: tuple[int, ...]
    decode_tokens: int  # N in (T(N+1) - T(1)) / N
    repeats: int  # timed runs per point after one warm-up run of the same length; medians are reported
    replays: tuple[ReplaySpec, ...]
    # None = the manager sizes its paged cache from free GPU memory (what a user gets); the CPU smoke test must
    # name them, since the manager cannot read free memory on the CPU.
    cb_num_blocks: int | None = None
    cb_max_batch_tokens: int | None = None

    def points(self) -> list[tuple[int, int]]:
        """(batch, prompt) in the order measured: the batch-1 sweep first, then larger batches from short to long
        prompts, so that a time budget cuts the least needed points."""
        b1 = [(1, p) for p in self.batch1_prompt_tokens]
        rest = [(b, p) for p in self.batch_prompt_tokens for b in self.batch_sizes if (b, p) not in b1]
        return b1 + rest

    @staticmethod
    def full() -> SweepPlan:
        # Sized from the Llama-3.1-8B runs of 2026-12-02 (calibration_runs/transformers_h200): a manager step took
        # about 125 ms up to ~45 sequences, then +2.5 ms per sequence, +0.1 ms per prompt token, and the replay of
        # 200 conversation requests (outputs <= 256) at the trace's rate 128 s with TPOT p50 304 ms (saturated).
        # Outputs capped at 128 here. At the trace's rate, 170 conversation requests keep the manager near
        # saturation for about 90 s; stretched 2.5x, 70 requests keep about 20 in flight, on the flat part of the
        # step-time curve (TPOT near the bare step). The code trace's first 63 requests arrive within 39 s (its
        # next row is at 183 s): prompt-heavy bursts at its own rate, moderate stretched 2.5x.
        return SweepPlan(
            batch1_prompt_tokens=(128, 512, 1024, 2048, 4096, 8192),
            batch_sizes=(4, 16, 64),
            batch_prompt_tokens=(512, 2048),
            decode_tokens=32,
            repeats=3,
            replays=(
                ReplaySpec("conv_trace_rate", CONVERSATION_TRACE, 170, 128, 1.0, 90.0),
                ReplaySpec("code_trace_rate", CODE_TRACE, 63, 128, 1.0, 65.0, seed=8),
                ReplaySpec("conv_moderate", CONVERSATION_TRACE, 70, 128, 2.5, 105.0, seed=9),
                ReplaySpec("code_moderate", CODE_TRACE, 63, 128, 2.5, 110.0, seed=10),
            ),
        )

    @staticmethod
    def quick() -> SweepPlan:
        return SweepPlan(
            batch1_prompt_tokens=(8, 32),
            batch_sizes=(2,),
            batch_prompt_tokens=(8,),
            decode_tokens=4,
            repeats=2,
            replays=(
                ReplaySpec("conv_trace_rate", CONVERSATION_TRACE, 5, 6, 0.01, 20.0, prompt_cap_tokens=48),
                ReplaySpec("code_trace_rate", CODE_TRACE, 3, 4, 0.01, 20.0, prompt_cap_tokens=200, seed=8),
            ),
            cb_num_blocks=16,
            cb_max_batch_tokens=128,
        )


def plan_as_json(plan: SweepPlan) -> dict:
    """The plan as stored in a result's header (tuples become lists), to compare with a file being continued."""
    return json.loads(json.dumps(asdict(plan)))


# ---------------------------------------------------------------------------------------------------------------
# Rows and summaries: plain data, no torch, so they are tested on synthetic timings without a GPU.


@dataclass(slots=True)
class GenerateRow:
    """One (batch size, prompt length) point of the `generate` sweep; times in seconds, raw runs kept."""

    batch_size: int
    prompt_tokens: int
    status: str  # "ok", "oom", "skipped: <why>"
    new_tokens: int = 0
    ttft_runs_s: list[float] = field(default_factory=list)  # generate(max_new_tokens=1)
    full_runs_s: list[float] = field(default_factory=list)  # generate(max_new_tokens=N+1)
    ttft_s: float | None = None
    decode_s_per_token: float | None = None
    peak_memory_bytes: int | None = None
    cache_class: str | None = None
    warmup_s: float | None = None  # the one untimed T(N+1) run before the timed ones


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def generate_row(
    batch_size: int, prompt_tokens: int, new_tokens: int, ttft_runs_s: list[float], full_runs_s: list[float]
) -> GenerateRow:
    """A measured row: TTFT = median T(1); decode per token = (median T(N+1) - median T(1)) / N."""
    ttft = median(ttft_runs_s)
    return GenerateRow(
        batch_size=batch_size,
        prompt_tokens=prompt_tokens,
        status="ok",
        new_tokens=new_tokens,
        ttft_runs_s=ttft_runs_s,
        full_runs_s=full_runs_s,
        ttft_s=ttft,
        decode_s_per_token=(median(full_runs_s) - ttft) / new_tokens,
    )


@dataclass(slots=True)
class ServedRequest:
    """One request served by continuous batching; times in seconds from the start of the run."""

    index: int
    arrival_s: float  # when the trace says it arrives (scaled)
    submitted_s: float | None  # when the feeder thread actually called add_request (None: never submitted)
    first_token_s: float | None
    finish_s: float | None
    prompt_tokens: int
    requested_output_tokens: int
    output_tokens: int
    token_times_s: list[float] = field(default_factory=list)
    error: str | None = None
    scheduled_s: float | None = None  # when the manager first scheduled it (its lifespan's start)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]; None for no values."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def served_summary(requests: Sequence[dict]) -> dict[str, float | int | None]:
    """TTFT (first token - arrival), TPOT ((finish - first token) / (tokens - 1)) p50/p90, and output tok/s
    over the span from the first arrival to the last finish, over the finished requests; `requests` counts all."""
    done = [
        r
        for r in requests
        if r["error"] is None and r["finish_s"] is not None and r["first_token_s"] is not None
    ]
    ttft = [r["first_token_s"] - r["arrival_s"] for r in done]
    tpot = [
        (r["finish_s"] - r["first_token_s"]) / (r["output_tokens"] - 1)
        for r in done
        if r["output_tokens"] > 1
    ]
    out_tokens = sum(r["output_tokens"] for r in done)
    span = max((r["finish_s"] for r in done), default=0.0) - min(
        (r["arrival_s"] for r in requests), default=0.0
    )
    return {
        "requests": len(requests),
        "finished": len(done),
        "output_tokens": out_tokens,
        "span_s": span,
        "output_tokens_per_s": out_tokens / span if span > 0 else None,
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p90_s": percentile(ttft, 90),
        "tpot_p50_s": percentile(tpot, 50),
        "tpot_p90_s": percentile(tpot, 90),
    }


def _ms(x: float | None) -> str:
    return "—" if x is None else f"{x * 1e3:.1f}"


def _generate_tables(res: dict) -> list[str]:
    """Batch-1 TTFT by prompt length, and decode ms per output token by batch size (one row per prompt length)."""
    rows = res.get("generate", [])
    ok = [r for r in rows if r["status"] == "ok"]
    prompts = sorted({r["prompt_tokens"] for r in rows})
    batches = sorted({r["batch_size"] for r in rows})
    lines = [
        f"### {res['header']['model']} — `generate` ({res['header']['settings'].get('attn_implementation')})"
    ]
    lines.append("")
    lines.append("| prompt tokens | " + " | ".join(str(p) for p in prompts) + " |")
    lines.append("|---|" + "---:|" * len(prompts))
    b1 = {r["prompt_tokens"]: r["ttft_s"] for r in ok if r["batch_size"] == 1}
    lines.append("| TTFT at batch 1, ms | " + " | ".join(_ms(b1.get(p)) for p in prompts) + " |")
    lines.append("")
    lines.append("| decode ms/token at prompt \\ batch | " + " | ".join(str(b) for b in batches) + " |")
    lines.append("|---|" + "---:|" * len(batches))
    by_point = {(r["batch_size"], r["prompt_tokens"]): r for r in rows}
    for p in prompts:
        cells = []
        for b in batches:
            r = by_point.get((b, p))
            # The table says only "oom" or "skipped"; the row in the JSON says why.
            cells.append(
                _ms(r["decode_s_per_token"])
                if r and r["status"] == "ok"
                else (r or {}).get("status", "—").split(":")[0]
            )
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def _served_row(name: str, requests: Sequence[dict], extra: str = "") -> str:
    # Recomputed from the raw requests, so a stored file's summary can be rebuilt (--summarize).
    s = served_summary(requests)
    tps = s["output_tokens_per_s"]
    # A run stopped early reports only the requests that finished, which are biased towards early arrivals.
    done = f"{s['finished']}/{s['requests']}" + ("" if s["finished"] == s["requests"] else " (partial)")
    return (
        f"| {name} | {done} | {_ms(s['ttft_p50_s'])} / {_ms(s['ttft_p90_s'])} "
        f"| {_ms(s['tpot_p50_s'])} / {_ms(s['tpot_p90_s'])} | {'—' if tps is None else f'{tps:.0f}'} |{extra}"
    )


def _replay_tables(res: dict) -> list[str]:
    """Continuous batching: TTFT/TPOT and throughput per run; for this version's replays also the load and steps."""
    lines: list[str] = []
    # Files of 2026-12-02 (before step records): one conversation replay and one all-at-once generate_batch.
    old = [(name, res[name]) for name in ("replay", "generate_batch") if res.get(name)]
    if old:
        lines.append(
            "| continuous batching | requests done | TTFT p50/p90 ms | TPOT p50/p90 ms | output tok/s |"
        )
        lines.append("|---|---:|---:|---:|---:|")
        lines += [_served_row(name, run["requests"]) for name, run in old]
        lines.append("")
    runs = res.get("replays") or {}
    if runs:
        lines.append(
            "| replay | requests done | TTFT p50/p90 ms | TPOT p50/p90 ms | output tok/s "
            "| arrivals x | steps | step p50 ms |"
        )
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for name, run in runs.items():
            spec = run["spec"]
            if "requests" not in run:
                lines.append(
                    f"| {name} | {run['status'].split(':')[0]} | — | — | — | {spec['time_scale']:g} | — | — |"
                )
                continue
            steps = run.get("steps") or []
            step_ms = _ms(median([s["end_s"] - s["start_s"] for s in steps])) if steps else "—"
            lines.append(
                _served_row(name, run["requests"], f" {spec['time_scale']:g} | {len(steps)} | {step_ms} |")
            )
        lines.append("")
    return lines


def markdown_summary(results: Sequence[dict]) -> str:
    """Per model: batch-1 TTFT by prompt length, decode ms per output token by batch size, and the
    continuous-batching runs (TTFT/TPOT p50/p90, output tokens/s; for replays the load and the manager's steps)."""
    lines: list[str] = []
    for res in results:
        lines += _generate_tables(res)
        lines += _replay_tables(res)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Inputs: catalogue configs and the traces.


def config_json_path(model: str) -> Path:
    """A catalogue short name (llama-3.1-8b) or a path to a config.json / a folder holding one."""
    p = Path(model)
    if p.is_dir():
        p = p / "config.json"
    if p.is_file():
        return p
    cat = CATALOGUE_DIR / f"{model.lower()}.json"
    if cat.is_file():
        return cat
    names = ", ".join(sorted(f.stem for f in CATALOGUE_DIR.glob("*.json")))
    raise ValueError(
        f"--models: unknown model {model!r}; give a catalogue name ({names}) or a config.json path"
    )


def model_label(model: str) -> str:
    p = Path(model)
    return p.parent.name if p.name == "config.json" else p.stem if p.suffix == ".json" else model


def trace_requests(spec: ReplaySpec) -> list[tuple[float, int, int]]:
    """(arrival_s from the first request, prompt tokens, output tokens) of the trace's first `spec.requests`
    rows, outputs capped and arrivals scaled by the spec."""
    rows: list[tuple[float, int, int]] = []
    with (REPO_ROOT / spec.trace).open() as f:
        for rec in csv.DictReader(f):
            if len(rows) == spec.requests:
                break
            prompt = int(rec["num_prefill_tokens"])
            if spec.prompt_cap_tokens is not None:
                prompt = min(prompt, spec.prompt_cap_tokens)
            output = max(1, min(int(rec["num_decode_tokens"]), spec.output_cap_tokens))
            rows.append((float(rec["arrived_at"]), max(1, prompt), output))
    t0 = rows[0][0] if rows else 0.0
    return [((a - t0) * spec.time_scale, p, o) for a, p, o in rows]


# ---------------------------------------------------------------------------------------------------------------
# The budget: which points and replays run, given what is already measured and the time left. Plain Python over
# injected measuring functions, so the skip and resume rules are tested without a GPU.


class OutOfMemory(RuntimeError):
    """A `generate` point did not fit the device's memory."""


def run_generate_sweep(
    measure: Callable[[int, int], GenerateRow],
    plan: SweepPlan,
    deadline: float,
    log: Callable[[str], None],
    done: dict[tuple[int, int], dict] | None = None,
    on_row: Callable[[list[dict]], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> list[dict]:
    """Every point of the plan, in plan order, as a row dict: kept from `done` where it was measured (ok or oom),
    else measured unless its estimated cost would pass `deadline` or a smaller point ran out of memory.
    `on_row` gets all rows so far after each new one (to write the file)."""
    rows = {pt: r for pt, r in (done or {}).items() if r["status"] == "ok" or r["status"] == "oom"}
    oom_at = {(r["batch_size"], r["prompt_tokens"]) for r in rows.values() if r["status"] == "oom"}
    # Estimates from what is measured: the last decode time per batch size, the best prefill rate.
    est_s_per_token: dict[int, float] = {}
    prefill_tok_per_s: float | None = None
    for r in rows.values():
        if r["status"] == "ok":
            est_s_per_token[r["batch_size"]] = max(r["decode_s_per_token"], 0.0)
            rate = r["batch_size"] * r["prompt_tokens"] / r["ttft_s"]
            prefill_tok_per_s = max(prefill_tok_per_s or 0.0, rate)
    n, reps = plan.decode_tokens, plan.repeats

    def ordered() -> list[dict]:
        return [rows[pt] for pt in plan.points() if pt in rows]

    for batch, prompt in plan.points():
        if (batch, prompt) in rows:
            continue
        if any(b <= batch and p <= prompt for b, p in oom_at):
            row = GenerateRow(batch, prompt, "skipped: a smaller point ran out of memory")
        else:
            d_est = est_s_per_token.get(batch, max(est_s_per_token.values(), default=0.0))
            p_est = batch * prompt / prefill_tok_per_s if prefill_tok_per_s else 0.0
            # One warm-up T(N+1), then `reps` T(1) and `reps` T(N+1).
            cost_est = (1 + reps) * (p_est + n * d_est) + reps * p_est
            if clock() + cost_est > deadline:
                row = GenerateRow(batch, prompt, f"skipped: time budget (estimated {cost_est:.0f} s)")
                log(f"  b={batch} p={prompt}: skipped, estimated {cost_est:.0f} s left no room")
            else:
                try:
                    row = measure(batch, prompt)
                except OutOfMemory:
                    oom_at.add((batch, prompt))
                    row = GenerateRow(batch, prompt, "oom")
                    log(f"  b={batch} p={prompt}: out of memory")
                else:
                    est_s_per_token[batch] = max(row.decode_s_per_token or 0.0, 0.0)
                    prefill_tok_per_s = max(prefill_tok_per_s or 0.0, batch * prompt / row.ttft_s)
                    log(
                        f"  b={batch} p={prompt}: TTFT {row.ttft_s * 1e3:.1f} ms, "
                        f"decode {(row.decode_s_per_token or 0) * 1e3:.2f} ms/token"
                    )
        rows[(batch, prompt)] = asdict(row)
        if on_row is not None:
            on_row(ordered())
    return ordered()


def replays_reserve_s(specs: Sequence[ReplaySpec], done: dict[str, dict]) -> float:
    """Time kept back from the `generate` sweep for the replays still to run."""
    return sum(s.expected_s + REPLAY_OVERHEAD_S for s in specs if done.get(s.name, {}).get("status") != "ok")


def run_replays(
    run_one: Callable[[ReplaySpec, float], dict],
    specs: Sequence[ReplaySpec],
    deadline: float,
    log: Callable[[str], None],
    done: dict[str, dict] | None = None,
    on_result: Callable[[dict[str, dict]], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, dict]:
    """Each replay by name: kept from `done` if it finished there, else run with a stop time of
    min(deadline, now + 1.5 x expected) if its expected time (plus start-up) fits before `deadline`, else
    recorded as skipped. `run_one(spec, stop_at)` returns the run with a "status"; an "interrupted" run is
    saved and the interruption passed on."""
    runs = {s.name: (done or {})[s.name] for s in specs if (done or {}).get(s.name, {}).get("status") == "ok"}

    def ordered() -> dict[str, dict]:
        return {s.name: runs[s.name] for s in specs if s.name in runs}

    for spec in specs:
        if spec.name in runs:
            continue
        now = clock()
        if now + spec.expected_s + REPLAY_OVERHEAD_S > deadline:
            left = max(deadline - now, 0.0)
            runs[spec.name] = {
                "spec": asdict(spec),
                "status": f"skipped: time budget ({left:.0f} s left, {spec.expected_s:.0f} s expected)",
            }
            log(f"  replay {spec.name}: skipped, {left:.0f} s left for {spec.expected_s:.0f} s expected")
        else:
            stop_at = min(deadline, now + REPLAY_OVERHEAD_S + REPLAY_LIMIT_FACTOR * spec.expected_s)
            runs[spec.name] = run_one(spec, stop_at)
        if on_result is not None:
            on_result(ordered())
        if runs[spec.name]["status"] == "interrupted":
            raise KeyboardInterrupt
    return ordered()


# ---------------------------------------------------------------------------------------------------------------
# The manager's steps. transformers 5.x has no per-step callback (continuous_api.py of 5.17: the background thread
# loops `ContinuousBatchingManager._generation_loop_body` = `prepare_next_batch` (scheduler) -> `_generation_step`
# (forward, sampling, ids back to the host; blocking without async batching) -> `update_batch` (tokens appended and
# stamped, results delivered)). StepRecorder wraps those two methods on the one manager it is given, and reads the
# batch the scheduler handed over (`inputs_and_outputs.requests_in_batch`, FutureRequestState objects).


def batch_composition(batch_processor: Any) -> dict:
    """What the scheduler put in the step about to run: decode sequences (one query token, a token already
    generated) with their summed context, and prefill chunks [request id, chunk tokens, tokens already cached]
    (a first chunk, a later chunk of a split prompt, or a preempted request's recompute)."""
    io = batch_processor.inputs_and_outputs
    n_decode = decode_context = out_tokens = 0
    prefill: list[list] = []
    for fs in io.requests_in_batch:
        state, q = fs.state, fs.query_length
        past = state.position_offset - q  # prepare_batch_tensors has already advanced position_offset by q
        out_tokens += bool(fs.has_new_token)
        if q == 1 and state.generated_len() > 0:
            n_decode += 1
            decode_context += past
        else:
            prefill.append([state.request_id, q, past])
    scheduler = batch_processor.scheduler
    return {
        "n_decode": n_decode,
        "decode_context_tokens": decode_context,
        "prefill_tokens": sum(c[1] for c in prefill),
        "prefill": prefill,
        "out_tokens": out_tokens,
        # The packed batch's query tokens and the KV tokens its attention reads (paged|sdpa masks q x kv).
        "q_tokens": getattr(io, "num_q_tokens", None),
        "kv_read_tokens": getattr(io, "max_kv_read", None),
        "waiting": len(scheduler.waiting_requests),
        "active": len(scheduler.active_requests),
        "free_blocks": batch_processor.cache.get_num_free_blocks(),
    }


class StepRecorder:
    """Per-step records of a running continuous-batching manager: when the loop iteration began (scheduling),
    the forward's start and end (outputs on the host), the iteration's end (tokens stamped), and the batch."""

    _TIMES = ("start_s", "forward_start_s", "forward_end_s", "end_s")

    def __init__(self) -> None:
        self._steps: list[dict] = []
        self._body_start = 0.0
        self._pending: dict | None = None

    def attach(self, manager: Any) -> str | None:
        """Wrap the manager's loop body and step (instance attributes: the loop looks them up on `self` every
        iteration). None when attached, else why not (then steps must be inferred from the token stamps)."""
        body = getattr(manager, "_generation_loop_body", None)
        step = getattr(manager, "_generation_step", None)
        if not callable(body) or not callable(step):
            return "the manager has no _generation_loop_body/_generation_step to time (transformers 5.x API)"

        def timed_body(batch_processor: Any, bootstrapping: bool) -> bool:
            self._body_start = time.perf_counter()
            self._pending = None
            go_on = body(batch_processor, bootstrapping=bootstrapping)
            if self._pending is not None:
                self._pending["end_s"] = time.perf_counter()
                self._steps.append(self._pending)
                self._pending = None
            return go_on

        def timed_step() -> None:
            try:
                rec = batch_composition(manager.batch_processor)
            except Exception as e:  # runs in the manager's thread: a failed record must not fail the requests
                rec = {"composition_error": repr(e)}
            rec["start_s"] = self._body_start
            rec["forward_start_s"] = time.perf_counter()
            step()
            rec["forward_end_s"] = time.perf_counter()
            self._pending = rec

        manager._generation_loop_body = timed_body
        manager._generation_step = timed_step
        return None

    def detach(self, manager: Any) -> None:
        """Give the manager its own methods back (the wrappers are instance attributes over the class's)."""
        for name in ("_generation_loop_body", "_generation_step"):
            vars(manager).pop(name, None)

    def records(self, t0: float) -> list[dict]:
        """The steps that began at t0 (perf_counter) or later, times in seconds from t0 to the microsecond. Steps
        before t0 are the warm-up requests' (the last of them may be appended after their results arrive)."""
        out = []
        for s in [s for s in list(self._steps) if s["start_s"] >= t0]:
            rec = dict(s)
            for k in self._TIMES:
                rec[k] = round(s[k] - t0, 6)
            out.append(rec)
        return out


# ---------------------------------------------------------------------------------------------------------------
# The GPU side: torch and transformers come in here, lazily.


class MissingTransformers(RuntimeError):
    pass


def _import_stack() -> tuple[Any, Any]:
    try:
        import transformers
    except ImportError as e:
        raise MissingTransformers(
            "transformers: not installed; `pip install transformers` (the calibrate extra has it) to time it"
        ) from e
    import torch

    return torch, transformers


# The transformers release this adapter was written and run against (calibration_runs/transformers_h200).
WRITTEN_FOR = "5.17.0"
# What the adapter calls, each an attribute path from the transformers module and the keyword parameters it passes
# by name (they must be named in the signature: a **kwargs would swallow a renamed one without effect). The step
# recorder's private hooks (_generation_loop_body, _generation_step) are not here: without them the runs are still
# whole and the fit rebuilds the steps from the token stamps. The KV cache is only named (its class), not used.
NEEDED_API: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("AutoConfig.from_pretrained", ()),
    ("AutoModelForCausalLM.from_config", ()),
    ("GenerationConfig", ()),
    ("GenerationMixin.generate", ()),
    ("GenerationMixin.init_continuous_batching", ("generation_config", "continuous_batching_config")),
    ("ContinuousBatchingConfig", ("num_blocks", "max_batch_tokens")),
    (
        "generation.continuous_batching.ContinuousBatchingManager.add_request",
        ("request_id", "max_new_tokens", "record_timestamps", "eos_token_id"),
    ),
    ("generation.continuous_batching.ContinuousBatchingManager.get_result", ("timeout",)),
    ("generation.continuous_batching.ContinuousBatchingManager.warmup", ()),
    ("generation.continuous_batching.ContinuousBatchingManager.start", ()),
    ("generation.continuous_batching.ContinuousBatchingManager.stop", ()),
    ("generation.continuous_batching.ContinuousBatchingManager.is_running", ()),
    (
        "generation.continuous_batching.requests.GenerationOutput",
        ("request_id", "generated_tokens", "error", "lifespan", "timestamps"),
    ),
)


class IncompatibleTransformers(RuntimeError):
    """The installed transformers lacks an API the adapter calls."""


def missing_api(transformers: Any) -> str | None:
    """The first of NEEDED_API this transformers lacks, written as a call (`X.y(name=)`); None when all are there."""
    for path, names in NEEDED_API:
        obj = transformers
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except (AttributeError, ImportError):  # lazy submodules import on attribute access
            return path
        if not names:
            continue
        try:
            params = inspect.signature(obj).parameters
        except (TypeError, ValueError):
            return f"{path}({'=, '.join(names)}=)"
        lacking = [n for n in names if n not in params]
        if lacking:
            return f"{path}({'=, '.join(lacking)}=)"
    return None


def check_api(transformers: Any) -> None:
    """Raises IncompatibleTransformers, in one line, when the installed transformers lacks what the adapter calls."""
    what = missing_api(transformers)
    if what is not None:
        version = getattr(transformers, "__version__", "of unknown version")
        raise IncompatibleTransformers(
            f"transformers {version} has no {what}, which this adapter calls; it was written for transformers "
            f"{WRITTEN_FOR}: `pip install 'transformers=={WRITTEN_FOR}'` (or a release that keeps that API)"
        )


def _sync(torch: Any, device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build_model(torch: Any, transformers: Any, config_json: Path, device: str, attn: str) -> tuple[Any, dict]:
    """A bf16 model of the config's shapes with transformers' own random initialisation (normal, std =
    initializer_range), built on the device; multimodal configs (Gemma 3) give their text model."""
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "config.json").write_text(config_json.read_text())
        cfg = transformers.AutoConfig.from_pretrained(d)
    text_cfg = cfg.get_text_config()
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(
            text_cfg, dtype=torch.bfloat16, attn_implementation=attn
        )
    model.eval()
    # Timing on zeros hides wrong indexing and runs faster (METHOD.md): check the weights are really random.
    w = model.get_input_embeddings().weight.detach()
    mlp_w = next(p for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n).detach()
    info = {
        "model_class": type(model).__name__,
        "config_class": type(text_cfg).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "attn_implementation": model.config._attn_implementation,
        "embedding_std": float(w.float().std()),
        "first_matrix_std": float(mlp_w.float().std()),
        "first_matrix_zero_fraction": float((mlp_w == 0).float().mean()),
    }
    # eos disabled so that every sequence generates exactly the tokens asked for.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model, info


def _timed_generate(torch: Any, model: Any, ids: Any, new_tokens: int, device: str) -> tuple[float, str]:
    """Seconds for one generate call, and the class of the KV cache it used. The output is dropped here so that
    no cache outlives its call (at batch 64 x 8k one cache is tens of GB)."""
    _sync(torch, device)
    t = time.perf_counter()
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
        return_dict_in_generate=True,
    )
    _sync(torch, device)
    elapsed = time.perf_counter() - t
    made = out.sequences.shape[1] - ids.shape[1]
    if made != new_tokens:
        raise RuntimeError(f"generate made {made} tokens, asked for {new_tokens}: eos was not disabled")
    return elapsed, type(out.past_key_values).__name__


def measure_generate_point(
    torch: Any, model: Any, plan: SweepPlan, device: str, batch: int, prompt: int
) -> GenerateRow:
    """One point: a warm-up run with the timed runs' max_new_tokens (on the H200 of 2026-12-02 a warm-up of the
    1-token path alone left the first T(N+1) 1.1-3.5x slow), then `repeats` T(1) and `repeats` T(N+1)."""
    g = torch.Generator(device="cpu").manual_seed(batch * 100_003 + prompt)
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt), generator=g).to(device)
    n = plan.decode_tokens
    out_of_memory = False
    try:
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        warmup_s, cache_class = _timed_generate(torch, model, ids, n + 1, device)
        ttft = [_timed_generate(torch, model, ids, 1, device)[0] for _ in range(plan.repeats)]
        full = [_timed_generate(torch, model, ids, n + 1, device)[0] for _ in range(plan.repeats)]
    except torch.OutOfMemoryError:
        out_of_memory = True
    if out_of_memory:
        # Freed only here, outside the except block, whose traceback still holds generate's tensors.
        del ids
        torch.cuda.empty_cache()
        raise OutOfMemory(f"batch {batch} x {prompt} prompt tokens")
    row = generate_row(batch, prompt, n, ttft, full)
    row.cache_class = cache_class
    row.warmup_s = warmup_s
    if device.startswith("cuda"):
        row.peak_memory_bytes = int(torch.cuda.max_memory_allocated())
    return row


def _jsonable(x: Any) -> Any:
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    return repr(x)


def _cb_settings(manager: Any, model: Any) -> dict:
    """The manager's resolved settings (num_blocks, max_batch_tokens, block_size, CUDA graphs, scheduler…) as it
    reports them, and the model's attn_implementation while it runs (the manager swaps in a paged one)."""
    cfg = manager.continuous_batching_config
    fields = getattr(cfg, "__dataclass_fields__", None)
    settings = {k: getattr(cfg, k) for k in fields} if fields else dict(vars(cfg))
    settings["attn_implementation_during_run"] = model.config._attn_implementation
    processor = getattr(manager, "batch_processor", None)
    cache = getattr(processor, "cache", None)
    if cache is not None:
        for k in ("num_blocks", "block_size", "max_batch_tokens", "num_groups", "use_prefix_sharing"):
            settings[f"cache.{k}"] = getattr(cache, k, None)
    scheduler = getattr(processor, "scheduler", None)
    if scheduler is not None:
        settings["scheduler.class"] = type(scheduler).__name__
        settings["scheduler.safety_margin"] = getattr(scheduler, "safety_margin", None)
        settings["scheduler.max_requests_per_batch"] = getattr(scheduler, "max_requests_per_batch", None)
    return _jsonable(settings)


def _cb_config(transformers: Any, plan: SweepPlan) -> Any:
    return transformers.ContinuousBatchingConfig(
        num_blocks=plan.cb_num_blocks, max_batch_tokens=plan.cb_max_batch_tokens
    )


def _served(
    index: int, arrival: float, submitted: float | None, prompt: int, asked: int, out: Any, t0: float
) -> ServedRequest:
    if out is None:
        return ServedRequest(index, arrival, submitted, None, None, prompt, asked, 0, error="no result")
    stamps = [s - t0 for s in (out.timestamps or [])]
    started = (getattr(out, "lifespan", None) or (-1, -1))[0]
    return ServedRequest(
        index=index,
        arrival_s=arrival,
        submitted_s=submitted,
        first_token_s=stamps[0] if stamps else None,
        finish_s=stamps[-1] if stamps else None,
        prompt_tokens=prompt,
        requested_output_tokens=asked,
        output_tokens=len(out.generated_tokens),
        token_times_s=[round(s, 6) for s in stamps],
        error=None if out.error is None else str(out.error),
        scheduled_s=round(started - t0, 6) if started > 0 else None,
    )


def _random_prompts(torch: Any, vocab: int, lengths: Sequence[int], seed: int) -> list[list[int]]:
    """Random token ids, one prompt per length. Each replay has its own seed: the manager shares cached prefix
    blocks between requests, so no two prompts (nor the warm-up's) may share a prefix."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    return [torch.randint(0, vocab, (p,), generator=g).tolist() for p in lengths]


def _warm_up_manager(manager: Any, warm: list[list[int]], stop_at: float) -> None:
    """Runs the untimed warm-up requests through the manager, until they finish, the manager stops or `stop_at`."""
    for i, ids in enumerate(warm):
        manager.add_request(ids, request_id=f"w{i}", max_new_tokens=4, eos_token_id=-1)
    warm_done = 0
    while warm_done < len(warm) and time.perf_counter() < stop_at:
        res = manager.get_result(timeout=0.5)
        warm_done += res is not None and res.is_finished()
        if res is None and not manager.is_running():
            break


def _feeder(
    manager: Any,
    requests: list[tuple[float, int, int]],
    prompts: list[list[int]],
    t0: float,
    stop: threading.Event,
    submitted: dict[str, float],
) -> threading.Thread:
    """A (not yet started) thread that submits each request at its arrival time after `t0`, until `stop` is set."""

    def feed() -> None:
        for i, ((arrival, _, out_tokens), ids) in enumerate(zip(requests, prompts)):
            if stop.wait(max(t0 + arrival - time.perf_counter(), 0.0)):
                return
            submitted[f"r{i}"] = time.perf_counter() - t0
            # eos_token_id=-1: the manager's own "no eos", so every request generates exactly out_tokens.
            manager.add_request(
                ids,
                request_id=f"r{i}",
                max_new_tokens=out_tokens,
                record_timestamps=True,
                eos_token_id=-1,
            )

    return threading.Thread(target=feed, daemon=True)


def _collect_results(manager: Any, n_requests: int, results: dict[str, Any], stop_at: float) -> None:
    """Keeps the replay's finished requests in `results`, until all are in, the manager stops or `stop_at`."""
    while len(results) < n_requests and time.perf_counter() < stop_at:
        res = manager.get_result(timeout=0.5)
        # A warm-up request that outlived its wait may still report: only the replay's count.
        if res is not None and res.is_finished() and res.request_id.startswith("r"):
            results[res.request_id] = res
        elif res is None and not manager.is_running():
            break


def _shut_down(manager: Any, recorder: StepRecorder, hard_stop: bool) -> None:
    """Stops and frees the manager, and unhooks the step recorder from it."""
    manager.stop(block=True, timeout=30, hard_stop=hard_stop)
    manager.destroy()
    # The wrappers refer to the manager: without them it is freed at once (not at the next garbage collection), so
    # the next replay's manager sizes its cache from all the free memory.
    recorder.detach(manager)


def _replay_status(finished_all: bool, interrupted: bool, stopped_early: bool) -> str:
    """How a replay ended."""
    if finished_all:
        return "ok"
    if interrupted:
        return "interrupted"
    if stopped_early:
        return "failed: the manager's thread stopped (see the log)"
    return "partial: stop time"


def run_replay(
    torch: Any,
    transformers: Any,
    model: Any,
    plan: SweepPlan,
    spec: ReplaySpec,
    stop_at: float,
    log: Callable[[str], None],
) -> dict:
    """Requests submitted from a feeder thread at their (scaled) trace times to a running manager, after a few
    warm-up requests; per-token timestamps are the manager's own (record_timestamps: perf_counter when each token
    reaches the host), per-step records from StepRecorder. Stopped at `stop_at` (then "partial") or on Ctrl-C /
    SIGTERM ("interrupted"); what finished is kept either way."""
    requests = trace_requests(spec)
    vocab = model.config.vocab_size
    prompts = _random_prompts(torch, vocab, [p for _, p, _ in requests], spec.seed)
    # Four short warm-up requests run the manager's paged path (masks, index building, sampling) before timing;
    # the manager's own warmup() does nothing without CUDA graphs (ModelRunner.warmup).
    warm = _random_prompts(torch, vocab, [min(p, 512) for _, p, _ in requests[:4]], spec.seed + 1000)
    gen_cfg = transformers.GenerationConfig(
        max_new_tokens=max(o for _, _, o in requests), do_sample=False, eos_token_id=-1, pad_token_id=0
    )
    t_init = time.perf_counter()
    manager = model.init_continuous_batching(
        generation_config=gen_cfg, continuous_batching_config=_cb_config(transformers, plan)
    )
    recorder = StepRecorder()
    no_steps = recorder.attach(manager)
    manager.warmup()
    manager.start()
    stop = threading.Event()
    results: dict[str, Any] = {}
    submitted: dict[str, float] = {}
    interrupted = False
    feeder: threading.Thread | None = None
    warmup_s: float | None = None
    t0 = time.perf_counter()
    try:
        _warm_up_manager(manager, warm, stop_at)
        warmup_s = time.perf_counter() - t_init
        t0 = time.perf_counter()
        feeder = _feeder(manager, requests, prompts, t0, stop, submitted)
        feeder.start()
        _collect_results(manager, len(requests), results, stop_at)
    except KeyboardInterrupt:
        interrupted = True
    wall_s = time.perf_counter() - t0
    warmup_s = time.perf_counter() - t_init if warmup_s is None else warmup_s
    stopped_early = not manager.is_running()
    stop.set()
    if feeder is not None:
        feeder.join(timeout=1.0)
    settings = _cb_settings(manager, model)
    _shut_down(manager, recorder, hard_stop=len(results) < len(requests))
    rows = [
        asdict(_served(i, arrival, submitted.get(f"r{i}"), prompt, out, results.get(f"r{i}"), t0))
        for i, (arrival, prompt, out) in enumerate(requests)
    ]
    status = _replay_status(len(results) == len(requests), interrupted, stopped_early)
    log(
        f"  replay {spec.name}: {len(results)}/{len(requests)} finished in {wall_s:.1f} s "
        f"(warm-up {warmup_s:.1f} s), {len(recorder.records(t0))} steps"
    )
    return {
        "spec": asdict(spec),
        "status": status,
        "settings": settings,
        "warmup_s": warmup_s,
        "wall_s": wall_s,
        "steps_source": "StepRecorder (manager's loop body and step, wrapped)"
        if no_steps is None
        else no_steps,
        "requests": rows,
        "steps": recorder.records(t0),
        "summary": served_summary(rows),
    }


def _gpu_header(torch: Any, device: str) -> dict:
    if not device.startswith("cuda"):
        return {"name": platform.processor() or platform.machine(), "device": device}
    info: dict[str, Any] = {"name": torch.cuda.get_device_name(), "device": device}
    try:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        info["driver"] = pynvml.nvmlSystemGetDriverVersion()
        info["memory_bytes"] = int(pynvml.nvmlDeviceGetMemoryInfo(h).total)
        info["sm_clock_max_mhz"] = pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM)
    except Exception as e:  # NVML only adds detail; the timings stand without it
        info["nvml_error"] = repr(e)
    return info


class ResumeMismatch(ValueError):
    """An existing result file was measured with another plan or on another GPU."""


def load_previous(path: Path, plan: SweepPlan, gpu_name: str) -> dict | None:
    """The result file to continue, if there is one for the same plan and GPU."""
    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text())
        old_plan, old_gpu = old["header"].get("plan"), old["header"]["gpu"]["name"]
    except (ValueError, KeyError, TypeError) as e:
        raise ResumeMismatch(
            f"{path}: not a result file of this script ({e!r}); move it away or use another --out"
        ) from e
    if old_plan != plan_as_json(plan):
        raise ResumeMismatch(f"{path}: measured with another plan; move it away or use another --out")
    if old_gpu != gpu_name:
        raise ResumeMismatch(f"{path}: measured on {old_gpu}, this is {gpu_name}; use another --out")
    return old


def _threads(torch: Any) -> dict:
    """The host's threading as this call ran: torch's intra-op and inter-op pools, the environment that sets them
    and the CPUs the process may use (the manager's host time depends on the intra-op pool, README)."""
    try:
        cpus: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = None
    return {
        "torch_intra_op": torch.get_num_threads(),
        "torch_inter_op": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
        "affinity_cpus": cpus,
    }


def _call_record(args: argparse.Namespace, torch: Any) -> dict:
    """This invocation: when, the command line, the budget, the threads."""
    return {
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m calibrate.transformers_runs " + shlex.join(sys.argv[1:]),
        "budget_s": args.budget_s,
        "threads": _threads(torch),
    }


def _new_header(
    torch: Any,
    transformers: Any,
    name: str,
    config_json: Path,
    gpu: dict,
    call: dict,
    info: dict,
    plan: SweepPlan,
    generate_cache_implementation: Any,
) -> dict:
    """A new raw file's header: the model, the GPU, this call, the versions and how the runs are made."""
    return {
        "model": name,
        "config": str(config_json.relative_to(REPO_ROOT))
        if config_json.is_relative_to(REPO_ROOT)
        else str(config_json),
        "gpu": gpu,
        **call,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "transformers": transformers.__version__,
        },
        "model_info": info,
        "plan": plan_as_json(plan),
        "settings": {
            "dtype": "bfloat16",
            "attn_implementation": info["attn_implementation"],
            "weights": "random (transformers' own init, torch.manual_seed(0))",
            "generate_cache_implementation": generate_cache_implementation,
            "generate_kwargs": "do_sample=False, min_new_tokens=max_new_tokens, eos_token_id=None, pad_token_id=0",
            "generate_warmup": "one untimed generate with the timed runs' max_new_tokens per point",
            "timer": "host perf_counter with torch.cuda.synchronize() before and after each generate call",
            "replay_timer": "the manager's per-token perf_counter stamps (record_timestamps=True)",
            "replay_warmup": "4 requests (prompts <= 512 random tokens, 4 new tokens) before the clock starts",
        },
    }


@dataclass(slots=True)
class _RawFile:
    """A model's raw file and what it holds so far; every change is written at once."""

    path: Path
    result: dict[str, Any]

    def save(self) -> None:
        # Written whole to a side file and renamed, so a kill mid-write leaves the previous complete file.
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.result, indent=1))
        tmp.replace(self.path)

    def keep_rows(self, rows: list[dict]) -> None:
        self.result["generate"] = rows
        self.save()

    def keep_replays(self, runs: dict[str, dict]) -> None:
        self.result["replays"] = {**self.result["replays"], **runs}
        self.save()


def run_model(
    model: str,
    plan: SweepPlan,
    args: argparse.Namespace,
    out_dir: Path,
    deadline: float,
    log: Callable[[str], None],
) -> dict:
    torch, transformers = _import_stack()
    config_json = config_json_path(model)
    name = model_label(model)
    gpu = _gpu_header(torch, args.device)
    path = out_dir / f"transformers_{name}_{args.gpu_tag}.json"
    previous = load_previous(path, plan, gpu["name"])
    t_build = time.perf_counter()
    m, info = build_model(torch, transformers, config_json, args.device, args.attn)
    log(
        f"{name}: built {info['model_class']} ({info['parameters'] / 1e9:.2f}B) in {time.perf_counter() - t_build:.1f} s"
    )
    call = _call_record(args, torch)
    if previous is not None:
        header = previous["header"]
        header.setdefault("continued", []).append(call)
        log(f"{name}: continuing {path}")
    else:
        header = _new_header(
            torch,
            transformers,
            name,
            config_json,
            gpu,
            call,
            info,
            plan,
            m.generation_config.cache_implementation,
        )
    result: dict[str, Any] = {
        "header": header,
        "generate": (previous or {}).get("generate", []),
        "replays": (previous or {}).get("replays", {}),
    }
    raw_file = _RawFile(path, result)
    raw_file.save()
    specs = [s for s in plan.replays if args.replays is None or s.name in args.replays]
    try:
        if "generate" in args.phases:
            reserve = replays_reserve_s(specs, result["replays"]) if "replays" in args.phases else 0.0
            done = {(r["batch_size"], r["prompt_tokens"]): r for r in result["generate"]}
            run_generate_sweep(
                lambda b, p: measure_generate_point(torch, m, plan, args.device, b, p),
                plan,
                deadline - reserve,
                log,
                done,
                raw_file.keep_rows,
            )
        if "replays" in args.phases:

            def replay(spec: ReplaySpec, stop_at: float) -> dict:
                run = run_replay(torch, transformers, m, plan, spec, stop_at, log)
                gc.collect()  # the manager's paged cache goes before the next one is sized from free memory
                if args.device.startswith("cuda"):
                    torch.cuda.empty_cache()
                return run

            run_replays(
                replay,
                specs,
                deadline,
                log,
                result["replays"],
                raw_file.keep_replays,
            )
    finally:
        m = None  # the model's weights go before the next model is built
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    log(f"{name}: wrote {path}")
    return result


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m calibrate.transformers_runs",
        description="Time transformers' generate and continuous batching on catalogue models (random weights); "
        "write raw JSON per model (continued where it exists) and print a Markdown summary.",
    )
    p.add_argument(
        "--out", type=Path, help="folder for transformers_<model>_<gpu>.json (required to measure)"
    )
    p.add_argument(
        "--summarize",
        type=Path,
        metavar="DIR",
        help="no device: print the summary of the transformers_*.json in DIR",
    )
    p.add_argument("--quick", action="store_true", help="a tiny plan (CPU smoke test)")
    p.add_argument(
        "--models", nargs="+", default=list(DEFAULT_MODELS), help="catalogue names or config.json paths"
    )
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--attn", default="sdpa", help="attn_implementation for generate (default sdpa)")
    p.add_argument("--phases", default=",".join(PHASES), help="any of generate,replays (default both)")
    p.add_argument("--replays", default=None, help="comma-separated replay names of the plan (default all)")
    p.add_argument(
        "--budget-s",
        type=float,
        default=540.0,
        help="stop starting work after this many seconds in all (default: inside a 10-minute device call)",
    )
    p.add_argument("--gpu-tag", default="h200", help="file name suffix naming the GPU")
    return p


def _check_choices(args: argparse.Namespace, plan: SweepPlan) -> None:
    """--phases and --replays name things that exist (one-line errors otherwise)."""
    phases = [x for x in args.phases.split(",") if x]
    bad = [x for x in phases if x not in PHASES]
    if bad or not phases:
        raise ValueError(f"--phases: unknown {bad or 'empty'}; choose from {', '.join(PHASES)}")
    args.phases = set(phases)
    if args.replays is not None:
        names = [s.name for s in plan.replays]
        wanted = [x for x in args.replays.split(",") if x]
        bad = [x for x in wanted if x not in names]
        if bad or not wanted:
            raise ValueError(f"--replays: unknown {bad or 'empty'}; this plan has {', '.join(names)}")
        args.replays = set(wanted)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM (a device call's time limit) ends like Ctrl-C: what was measured is kept


def _error(msg: str) -> int:
    print(f"error: calibrate.transformers_runs: {msg}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.summarize is not None:
        files = sorted(args.summarize.glob("transformers_*.json"))
        if not files:
            return _error(
                f"--summarize: no transformers_*.json in {args.summarize}; give the folder --out wrote"
            )
        print(markdown_summary([json.loads(f.read_text()) for f in files]))
        return 0
    if args.out is None:
        return _error("--out: missing; give a folder for the results (or --summarize DIR)")
    # The budget counts from here, importing torch and transformers included (seconds on a newly started machine).
    start = time.perf_counter()
    plan = SweepPlan.quick() if args.quick else SweepPlan.full()
    try:
        _check_choices(args, plan)
        for m in args.models:
            config_json_path(m)
        check_api(_import_stack()[1])  # before anything is written
    except (MissingTransformers, IncompatibleTransformers, ValueError) as e:
        return _error(str(e))
    args.out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _interrupt)

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {msg}", flush=True)

    results = []
    try:
        for i, m in enumerate(args.models):
            # Each model gets an even share of what is left, so a slow first model cannot starve the rest.
            left = args.budget_s - (time.perf_counter() - start)
            deadline = time.perf_counter() + left / (len(args.models) - i)
            results.append(run_model(m, plan, args, args.out, deadline, log))
    except ResumeMismatch as e:
        return _error(f"--out: {e}")
    except KeyboardInterrupt:
        print(
            f"error: calibrate.transformers_runs: interrupted; what was measured is in {args.out} "
            "(the same command continues it)",
            file=sys.stderr,
        )
        return 130
    summary = markdown_summary(results)
    (args.out / "summary.md").write_text(summary + "\n")
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
