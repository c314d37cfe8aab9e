"""Fit an engine profile's host terms to raw runs of that engine, and check them on held-out rows (issue 11).

`python -m calibrate.engine_fit calibration_runs/transformers_h200 --gpu h200 --out engine_profiles/`

The model (core/engine_profile.py): a step's time is the cost model's GPU time for the step's shape
(the committed GPU profile, the catalogue model, `serving_host=False`: GPU work only) times the engine's
kernel factors, plus `per_step_s + per_sequence_s · sequences + per_prompt_token_s · prompt tokens`, times
the model's layers counted by the operators its architecture launches per forward (`--operators`, written by
calibrate/operator_count.py; an eager engine's host time follows its launches: Gemma 3's layer launches almost
twice Llama's), in layers of the fitted model. The report's leave-one-model-out section fits each rule (per step,
per layer, per operator) without one model and checks it on that model.
Rows come from the raw files under the folder (sub-folders too, one per session) as they are found
(`calibrate/transformers_runs.py` writes them):

- a `generate` sweep (any list of rows with `batch_size`, `prompt_tokens`, `ttft_runs_s`, `full_runs_s`):
  TTFT is one prefill step of the whole static batch; the decode time per token is one decode step of the
  batch at the run's mean context. The first harness's first timed full run of a point is dropped (README: it
  is the slow first decode of that shape; the second harness warms each point up at the timed length), as is
  any point whose status is not `ok`.
- a continuous-batching run (a top-level block, or an entry of a `replays` dict, with `requests` carrying
  `token_times_s`): its `steps` as the harness recorded them from the manager when present (whole loop
  iteration, forward apart, packed q and KV sizes), else rebuilt from the token stamps (`reconstruct_steps`).

The split (`TrainSet`): only the newest raw file of each `--train` model is fitted — its `--train-runs` replays
(default the conversation trace's) and every other `generate` prompt length per batch size; everything else
(the other trace's replays, the other prompt lengths, earlier sessions, every other model) is held out and
only predicted. Figures are never fitted and checked on the same rows. Imports numpy and scipy only (no
torch, no transformers).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
from scipy.optimize import least_squares

from calibrate.host_phases import TABLE_HEAD, PhaseFit, RunSteps, describe, fit_phases
from core.cost_model import BatchShape, CostModel, packed_attention_time
from core.engine_profile import (
    EngineProfile,
    Estimated,
    Figure,
    HostOverlap,
    HostPhases,
    HostTime,
    Kernels,
    Measured,
    MetricError,
    OperatorCount,
    OperatorCounts,
    Published,
    Scheduling,
    Validation,
    write_engine_profile,
)
from core.errors import ConfigError
from core.hardware import load_profile
from core.kv_cache import padded
from core.model_spec import ModelSpec, load_model

HOST_TERMS = ("per_step_s", "per_sequence_s", "per_prompt_token_s")
# x-scales of the host terms in the solver (seconds per step, per sequence, per prompt token), so that
# its variables are of order one
HOST_SCALE = np.array([1e-2, 1e-3, 1e-4])
# the same for an extra term: per packed-attention query x key pair, or per KV token a step reads
EXTRA_SCALE_S = {"pairs": 1e-9, "kv": 1e-7}
SERIAL_SCALE_S = 1e-3  # the same for an overlapping fit's serial seconds per step
ExtraTerm = Literal["pairs", "kv"]
GPU_GROUPS = ("gemm", "attention_prefill", "attention_decode", "elementwise")
# Tokens of one manager step are stamped within about 0.5 ms of each other and steps are 10 ms or more
# apart (calibration_runs/transformers_h200/README.md); a gap longer than this starts a new step.
STEP_GAP_S = 2e-3
# gaps within this factor of STEP_GAP_S either way are counted as ambiguous (reported, not resolved)
AMBIGUOUS_FACTOR = 4.0
# relative spread assumed for a row with no repeated runs (one reconstructed step), and the floor of a
# measured spread (two identical runs do not make a row exact)
STEP_SIGMA = 0.10
MIN_SIGMA = 0.03
TRANSFORMERS_DEFAULT_MAX_BATCH_TOKENS = 8192
# the continuous-batching manager's settings a profile's scheduling source quotes
SETTINGS_SHOWN = (
    "scheduler_type",
    "block_size",
    "max_batch_tokens",
    "max_requests_per_batch",
    "use_cuda_graph",
    "cpu_offload_space",
)
LONG_PROMPT_TOKENS = 2048  # served steps with at least this many prompt tokens are also checked on their own
# host terms below this are written as 0 (the solver's bound leaves round-off, not a measurement)
NEGLIGIBLE_S = 1e-12  # ContinuousBatchingConfig's default when a run has no settings


# ---------------------------------------------------------------- rows
@dataclass(slots=True)
class Row:
    """One measured time and the step shape(s) it is made of."""

    model: str
    run: str  # the raw block it came from: generate, replay, generate_batch, ...
    metric: str  # ttft_s, decode_s_per_token, step_s
    label: str
    measured_s: float
    sigma: float  # relative spread of the measurement
    gpu_s: np.ndarray  # GPU seconds per group: GPU_GROUPS, then the rest (fixed overheads, collectives)
    seqs: int
    prompt_tokens: int
    layers: (
        float  # what per-layer host terms multiply by: the model's layers, or its operators in fitted layers
    )
    forward_s: float | None = None  # the forward alone (recorded steps: forward_start_s to forward_end_s)
    pairs: float = 0.0  # packed attention's query x key pairs (q_tokens x (kv_read_tokens + q_tokens))
    kv_tokens: float = 0.0  # the KV tokens the step's attention reads, its own new tokens included
    file: str = ""  # the raw file it came from (a model's runs of another session are another check)
    point: tuple[int, int] | None = None  # a generate row's (batch size, prompt tokens)


def gpu_groups(cm: CostModel, shape: BatchShape) -> np.ndarray:
    """The cost model's GPU seconds of one step, by GPU_GROUPS and the rest."""
    b = cm.breakdown(shape)
    parts = [b.pop(g) for g in GPU_GROUPS]
    return np.array([*parts, sum(b.values())])


def _spread(runs: list[float]) -> float:
    runs = [r for r in runs if r is not None]
    if len(runs) < 2:
        return STEP_SIGMA
    return max(MIN_SIGMA, (max(runs) - min(runs)) / (2 * float(np.mean(runs))))


def generate_rows(
    model: str, cm: CostModel, points: list[dict], run: str = "generate", drop_first: bool = True
) -> list[Row]:
    """TTFT and decode rows of a `generate` sweep (static batches, one prompt length per point). `drop_first`:
    leave out each point's first timed full run (the first runs warmed up only the 1-token path)."""
    rows: list[Row] = []
    window, layers = cm.model.sliding_window, cm.model.num_layers
    for p in points:
        ttft_runs = [float(x) for x in p.get("ttft_runs_s") or ([p["ttft_s"]] if p.get("ttft_s") else [])]
        if p.get("status", "ok") != "ok" or not ttft_runs:
            continue
        b, n = int(p["batch_size"]), int(p["prompt_tokens"])
        ttft = float(np.median(ttft_runs))
        where = f"b{b} p{n}"
        shape = BatchShape.of([(n, 0)] * b, window=window, fresh=cm.fresh, logits_tokens=b)
        gpu = gpu_groups(cm, shape)
        rows.append(
            Row(model, run, "ttft_s", where, ttft, _spread(ttft_runs), gpu, b, b * n, layers, point=(b, n))
        )
        full = [float(x) for x in p.get("full_runs_s") or []]
        new = int(p.get("new_tokens") or 0)
        if drop_first and len(full) >= 3:
            full = full[1:]  # the first decode run of a point is the slow first one (README)
        if not full or new < 1:
            continue
        per_token = (float(np.mean(full)) - ttft) / new
        # steps j = 1..new feed token j at context n + j: the mean context is n + (new + 1) / 2
        ctx = round(n + (new + 1) / 2)
        shape = BatchShape.of([], [ctx] * b, window=window)
        sigma = _spread([x - ttft for x in full])
        gpu = gpu_groups(cm, shape)
        rows.append(
            Row(model, run, "decode_s_per_token", where, per_token, sigma, gpu, b, 0, layers, point=(b, n))
        )
    return rows


# ---------------------------------------------------------------- continuous batching: steps from stamps
@dataclass(slots=True)
class Step:
    """One step of a continuous-batching manager, rebuilt from its requests' token stamps."""

    end_s: float
    start_s: float
    decode_contexts: list[int]  # each decoding sequence's context, the new token included
    chunks: list[tuple[int, int]]  # prompt chunks: (tokens, tokens already computed before them)
    usable: bool  # False: the first step, or one after an idle manager (its start is not known)
    forward_s: float | None = None  # recorded steps: the forward's own time
    q_tokens: int | None = (
        None  # recorded steps: the packed batch's query tokens, as the manager counted them
    )
    kv_read_tokens: int | None = (
        None  # recorded steps: the KV tokens read from the cache (new tokens not included)
    )


@dataclass(slots=True)
class StepStats:
    """How well the reconstruction worked."""

    steps: int = 0
    tokens: int = 0
    ambiguous_gaps: int = 0  # gaps near STEP_GAP_S: a step split or two merged would hide there
    repeated: int = 0  # a request with two stamps in one step (merged steps)
    skipped: int = 0  # a decoding request absent from a step between its tokens (split steps)
    hidden_chunks: int = 0  # prompt chunks that produced no token (split prefills), placed by the FIFO rule
    late: int = 0  # a waiting request that fit the budget but did not start (blocks, or submission timing)
    over_budget: int = 0  # steps whose visible prompt tokens exceed the token budget
    idle: int = 0  # steps after an idle manager (not usable)
    cut: int = 0  # steps dropped after a request that never finished was submitted (its tokens are unknown)

    def describe(self) -> str:
        return (
            f"{self.steps} steps from {self.tokens} token stamps; {self.ambiguous_gaps} ambiguous gaps, "
            f"{self.repeated} repeated and {self.skipped} skipped requests in a step, {self.hidden_chunks} "
            f"hidden prompt chunks, {self.late} late starts, {self.over_budget} steps over the token budget, "
            f"{self.idle} after idle, {self.cut} cut after an unfinished request"
        )


def reconstruct_steps(
    requests: list[dict], max_batch_tokens: int, gap_s: float = STEP_GAP_S
) -> tuple[list[Step], StepStats]:
    """The manager's steps from per-token stamps: (steps, how well it worked).

    Stamps closer than `gap_s` belong to one step; a request's first stamp ends its prefill, each later one
    is a decode at context prompt + k. Prompt chunks that produced no token (a prompt split over steps) are
    placed by the manager's FIFO rule: after the decodes, waiting requests in submission order take the rest
    of `max_batch_tokens`, the first that does not fit whole taking what is left.
    """
    st = StepStats()
    done = [r for r in requests if r.get("token_times_s")]
    unfinished = [float(r["submitted_s"]) for r in requests if not r.get("token_times_s") or r.get("error")]
    cutoff = min(unfinished) if unfinished else float("inf")
    events = sorted((float(t), i, k) for i, r in enumerate(done) for k, t in enumerate(r["token_times_s"]))
    st.tokens = len(events)
    if not events:
        return [], st
    ts = np.array([e[0] for e in events])
    gaps = np.diff(ts)
    st.ambiguous_gaps = int(((gaps > gap_s / AMBIGUOUS_FACTOR) & (gaps < gap_s * AMBIGUOUS_FACTOR)).sum())
    bounds = np.flatnonzero(gaps > gap_s) + 1
    groups = np.split(np.arange(len(events)), bounds)

    prompt = [int(r["prompt_tokens"]) for r in done]
    submitted = [float(r["submitted_s"]) for r in done]
    remaining = list(prompt)
    fifo = sorted(range(len(done)), key=lambda i: submitted[i])
    last_step = [-1] * len(done)
    steps: list[Step] = []
    prev_end = float("-inf")
    for s, g in enumerate(groups):
        end = float(ts[g].max())
        if prev_end > cutoff:
            st.cut = len(groups) - s
            break
        seen: set[int] = set()
        decodes, completes = [], []
        for j in g:
            _, i, k = events[j]
            if i in seen:
                st.repeated += 1
            seen.add(i)
            if k == 0:
                completes.append(i)
            else:
                decodes.append(prompt[i] + k)
                if last_step[i] != s - 1:
                    st.skipped += 1
            last_step[i] = s
        waiting_before = any(remaining[i] > 0 and submitted[i] <= prev_end for i in fifo)
        budget = max_batch_tokens - len(decodes)
        chunks = []
        for i in completes:
            chunks.append((remaining[i], prompt[i] - remaining[i]))
            budget -= remaining[i]
            remaining[i] = 0
        if budget < 0:
            st.over_budget += 1
        for i in fifo:  # hidden chunks: the FIFO rule's split of the first waiting prompt that does not fit
            if budget <= 0:
                break
            if remaining[i] <= 0 or submitted[i] > (prev_end if s else end):
                continue
            if remaining[i] < budget:
                st.late += 1  # it would have run whole, and did not
                continue
            chunks.append((budget, prompt[i] - remaining[i]))
            remaining[i] -= budget
            st.hidden_chunks += 1
            budget = 0
        idle = s > 0 and not decodes and not waiting_before
        st.idle += idle
        start = prev_end if not idle else max(prev_end, min(submitted[i] for i in completes or [0]))
        steps.append(Step(end, start, decodes, chunks, usable=s > 0 and not idle))
        prev_end = end
    st.steps = len(steps)
    return steps, st


def recorded_steps(records: list[dict]) -> list[Step]:
    """The manager's steps as `StepRecorder` wrote them (calibrate/transformers_runs.py): start to end is the
    whole loop iteration (scheduling, inputs, forward, tokens delivered), so every step is usable. A step
    records its decodes' summed past KV only; it is split evenly over them (the packed attention, which the
    manager runs, depends on the sum alone)."""
    steps = []
    for r in records:
        if "composition_error" in r:
            continue
        n, past = int(r["n_decode"]), int(r["decode_context_tokens"])
        decode = [past // n + (k < past % n) + 1 for k in range(n)]  # + 1: the new token, as rebuilt steps
        steps.append(
            Step(
                float(r["end_s"]),
                float(r["start_s"]),
                decode,
                [(int(c[1]), int(c[2])) for c in r["prefill"]],
                usable=True,
                forward_s=float(r["forward_end_s"]) - float(r["forward_start_s"]),
                q_tokens=int(r["q_tokens"]),
                kv_read_tokens=int(r["kv_read_tokens"]),
            )
        )
    return steps


@dataclass(frozen=True, slots=True)
class Layout:
    """How a continuous-batching run's attention is laid out (Kernels.attention_layout and its paddings)."""

    packed: bool = False
    q_padding: int = 1
    kv_padding: int = 1

    @classmethod
    def of(cls, settings: dict) -> Layout:
        """From the manager's resolved settings: its paged sdpa (and eager) attention runs the whole step as one
        masked dense attention (over keys padded to kv_padding_interval_size when it pads); paged flash
        attention does not."""
        attn = str(settings.get("attn_implementation_during_run") or "")
        packed = "sdpa" in attn or "eager" in attn
        # the manager pads only static-shape runs (ContinuousBatchingModelRunner.pad_inputs = CUDA graphs or
        # compile, model_runner.py of 5.17); its interval sizes are set either way
        pads = any(settings.get("use_cuda_graph") or []) or any(
            settings.get(k) for k in ("varlen_compile_config", "decode_compile_config")
        )
        q = int(settings.get("q_padding_interval_size") or 1) if pads else 1
        kv = int(settings.get("kv_padding_interval_size") or 1) if pads else 1
        return cls(packed, q, kv) if packed else cls()


def step_rows(model: str, cm: CostModel, steps: list[Step], run: str, layout: Layout = Layout()) -> list[Row]:
    """A row per usable step: its wall time against its shape's GPU time."""
    rows = []
    for k, s in enumerate(steps):
        if not s.usable:
            continue
        shape = BatchShape.of(s.chunks, s.decode_contexts, window=cm.model.sliding_window, fresh=cm.fresh)
        gpu = gpu_groups(cm, shape)
        pairs = 0.0
        kv_all = sum(s.decode_contexts) + sum(c + p for c, p in s.chunks)
        if s.kv_read_tokens is not None and s.q_tokens is not None:
            kv_all = s.kv_read_tokens + s.q_tokens
        if layout.packed:
            # the keys are the cached KV read plus the step's own new tokens (input_outputs.get_model_kwargs)
            if s.q_tokens is not None and s.kv_read_tokens is not None:
                q, kv = s.q_tokens, s.kv_read_tokens + s.q_tokens
            else:
                q, kv = shape.tokens, sum(s.decode_contexts) + sum(c + p for c, p in s.chunks)
            q, kv = padded(q, layout.q_padding), padded(kv, layout.kv_padding)
            gpu[1] = packed_attention_time(cm, q, kv)
            gpu[2] = 0.0
            pairs = float(q) * kv
        label = f"step {k}: {len(s.decode_contexts)} decodes, {sum(c for c, _ in s.chunks)} prompt tokens"
        rows.append(
            Row(
                model,
                run,
                "step_s",
                label,
                s.end_s - s.start_s,
                STEP_SIGMA,
                gpu,
                len(s.decode_contexts) + len(s.chunks),
                shape.prefill_tokens,
                cm.model.num_layers,
                forward_s=s.forward_s,
                pairs=pairs,
                kv_tokens=float(kv_all),
            )
        )
    return rows


# ---------------------------------------------------------------- reading a folder of raw runs
@dataclass
class RawRuns:
    """Every row found in a folder, with what the profile's provenance needs."""

    rows: list[Row] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    settings: dict[str, dict] = field(default_factory=dict)  # CB run -> the manager's resolved settings
    stats: dict[str, StepStats] = field(default_factory=dict)  # "model run (session)" -> reconstruction stats
    steps_source: dict[str, str] = field(default_factory=dict)  # "model run (session)" -> recorded or rebuilt
    headers: list[dict] = field(default_factory=list)
    sessions: dict[str, str] = field(default_factory=dict)  # raw file -> its session (header start time)


def _is_generate_sweep(v: object) -> bool:
    return isinstance(v, list) and any(
        isinstance(r, dict)
        and {"batch_size", "prompt_tokens"} <= set(r)
        and ("ttft_runs_s" in r or "ttft_s" in r)
        for r in v
    )


def _is_cb_run(v: object) -> bool:
    return isinstance(v, dict) and any(
        isinstance(r, dict) and "token_times_s" in r for r in v.get("requests") or []
    )


def _cb_settings(block: dict, siblings: list[dict]) -> dict:
    """A run's resolved manager settings, else those of another run of the same file (the same manager
    defaults; generate_batch's were not recorded in the first runs), else none."""
    for b in [block, *siblings]:
        if b.get("settings") and "error" not in b["settings"]:
            return b["settings"]
    return {}


def _max_batch_tokens(settings: dict) -> int:
    v = settings.get("cache.max_batch_tokens") or settings.get("max_batch_tokens")
    return v if isinstance(v, int) and v > 0 else TRANSFORMERS_DEFAULT_MAX_BATCH_TOKENS


def _cb_blocks(data: dict) -> dict[str, dict]:
    """A file's continuous-batching runs by name: top-level blocks (`replay`, `generate_batch`: the first
    harness) and the entries of a `replays` dict (the second: one per trace and arrival rate)."""
    found = {k: v for k, v in data.items() if _is_cb_run(v)}
    replays = data.get("replays")
    if isinstance(replays, dict):
        found.update({k: v for k, v in replays.items() if _is_cb_run(v)})
    return found


def _recorded(block: dict) -> list[dict] | None:
    """The block's step records when the harness wrote them whole (every time and the batch), else None."""
    steps = block.get("steps")
    need = {"start_s", "forward_start_s", "forward_end_s", "end_s", "n_decode", "decode_context_tokens",
            "prefill", "q_tokens", "kv_read_tokens"}  # fmt: skip
    if not isinstance(steps, list) or not steps:
        return None
    if not all(isinstance(r, dict) and (need <= set(r) or "composition_error" in r) for r in steps):
        return None
    return steps


def read_runs(
    folder: Path, gpu: str, per_sequence_attention: bool = False, operators: OperatorCounts | None = None
) -> RawRuns:
    """The rows of every raw file under `folder` (sub-folders too: one per session) whose header names a model;
    files without one are skipped. A continuous-batching run's steps are its recorded ones when it has them,
    else rebuilt from its token stamps. `per_sequence_attention`: cost served steps' attention per sequence
    whatever the runs' layout (to compare). `operators`: count each model's layers by its operators (the rows'
    `layers`, what per-layer host terms multiply by), else by num_layers."""
    if not folder.is_dir():
        raise ConfigError(f"{folder}: not a folder of raw runs; give calibration_runs/<engine>_<gpu>")
    profile = load_profile(gpu)
    out = RawRuns()
    for f in sorted(folder.rglob("*.json")):
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{f}: not a JSON raw run ({e}); remove it or fix it") from None
        header = data.get("header") if isinstance(data, dict) else None
        if not isinstance(header, dict) or not header.get("model"):
            continue  # e.g. a single sweep point run separately, with no header: nothing to rebuild from
        model = str(header["model"])
        spec: ModelSpec = load_model(model)
        cm = CostModel(profile, spec, serving_host=False)
        session = str(header.get("date_utc") or f.parent.name)[:16]
        out.files.append(str(f))
        out.headers.append(header)
        out.sessions[str(f)] = session
        # the second harness warms every point up with an untimed run of the timed length; the first did not
        drop_first = "generate_warmup" not in (header.get("settings") or {})
        rows: list[Row] = []
        blocks = _cb_blocks(data)
        for key, v in data.items():
            if _is_generate_sweep(v):
                rows += generate_rows(model, cm, v, run=key, drop_first=drop_first)
        for key, v in blocks.items():
            settings = _cb_settings(v, list(blocks.values()))
            records = _recorded(v)
            name = f"{model} {key} ({session})"
            if records is not None:
                try:
                    steps = recorded_steps(records)
                except (KeyError, TypeError, ValueError, IndexError) as e:
                    raise ConfigError(
                        f"{f}: {key}.steps: a step record is malformed ({e!r}); remove the block's `steps` to "
                        "rebuild them from the token stamps, or measure again"
                    ) from None
                out.steps_source[name] = f"{len(steps)} steps recorded by the harness"
            else:
                steps, stats = reconstruct_steps(v["requests"], _max_batch_tokens(settings))
                out.stats[name] = stats
                out.steps_source[name] = "rebuilt from token stamps: " + stats.describe()
            out.settings[f"{model} {key}"] = settings
            layout = Layout() if per_sequence_attention else Layout.of(settings)
            rows += step_rows(model, cm, steps, run=key, layout=layout)
        layers = operators.layers(spec.model_type, spec.num_layers) if operators else spec.num_layers
        for r in rows:
            r.file = str(f)
            r.layers = layers
        out.rows += rows
    if not out.rows:
        raise ConfigError(
            f"{folder}: no raw runs with a header and timed rows; run calibrate.transformers_runs"
        )
    return out


# ---------------------------------------------------------------- the fit
@dataclass(frozen=True, slots=True)
class TrainSet:
    """Which rows are fitted: rows of `models` from `files` (None: any file), served steps of `served_runs` only
    (None: every run), and of a generate sweep, with `alternate`, every other prompt length of each batch size
    starting with the shortest (the others held out)."""

    models: frozenset[str]
    files: frozenset[str] | None = None
    served_runs: frozenset[str] | None = None
    alternate: bool = False

    def describe(self) -> str:
        what = [", ".join(sorted(self.models))]
        if self.files is not None:
            what.append("from " + ", ".join(sorted(self.files)))
        if self.served_runs is not None:
            what.append("served runs " + ", ".join(sorted(self.served_runs)))
        if self.alternate:
            what.append("generate: every other prompt length per batch size from the shortest")
        return "; ".join(what)


def alternate_points(rows: list[Row]) -> set[tuple[str, str, int, int]]:
    """(file, run, batch size, prompt tokens) of every other generate point per batch size, from the shortest."""
    lengths: dict[tuple[str, str, int], set[int]] = {}
    for r in rows:
        if r.point is not None:
            lengths.setdefault((r.file, r.run, r.point[0]), set()).add(r.point[1])
    return {(*k, n) for k, ns in lengths.items() for n in sorted(ns)[::2]}


@dataclass(slots=True)
class Split:
    """Which rows are fitted and which only predicted; the two never overlap."""

    train: np.ndarray
    held_out: np.ndarray

    @classmethod
    def of(cls, rows: list[Row], ts: TrainSet) -> Split:
        alt = alternate_points(rows) if ts.alternate else set()

        def fitted(r: Row) -> bool:
            if r.model not in ts.models or (ts.files is not None and r.file not in ts.files):
                return False
            if r.metric == "step_s" and ts.served_runs is not None and r.run not in ts.served_runs:
                return False
            return not (ts.alternate and r.point is not None and (r.file, r.run, *r.point) not in alt)

        is_train = np.array([fitted(r) for r in rows], dtype=bool)
        split = cls(np.flatnonzero(is_train), np.flatnonzero(~is_train))
        assert not set(split.train) & set(split.held_out)
        return split

    @classmethod
    def by_model(cls, rows: list[Row], train_models: set[str]) -> Split:
        return cls.of(rows, TrainSet(frozenset(train_models)))


@dataclass(slots=True)
class HostFit:
    host_s: np.ndarray  # HOST_TERMS (then the extra term's), seconds (per layer when per_layer)
    factors: np.ndarray  # GPU_GROUPS' factors (1.0 unless fitted)
    per_layer: bool
    train_rows: int
    # split_forward: the time outside the forward (scheduling, inputs, tokens delivered) per step, per sequence
    # and per prompt token, not per layer; then host_s is the forward's host time only
    outside_s: np.ndarray | None = None

    extra: ExtraTerm | None = None  # a fourth host term: per packed-attention pair, or per KV token read
    # host launches overlap the GPU (HostOverlap): a row takes max(GPU, host terms) + serial_s; None: their sum
    serial_s: float | None = None


def _columns(
    rows: list[Row], per_layer: bool, extra: ExtraTerm | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    gpu = np.array([r.gpu_s for r in rows])
    more = {None: lambda r: [], "pairs": lambda r: [r.pairs], "kv": lambda r: [r.kv_tokens]}[extra]
    host = np.array([[1.0, r.seqs, r.prompt_tokens, *more(r)] for r in rows])
    if per_layer:
        host *= np.array([r.layers for r in rows], dtype=float)[:, None]
    return gpu, host, np.array([r.measured_s for r in rows]), np.array([r.sigma for r in rows])


def _outside_columns(rows: list[Row]) -> np.ndarray:
    return np.array([[1.0, r.seqs, r.prompt_tokens] for r in rows])


def predict(rows: list[Row], fit: HostFit) -> np.ndarray:
    """Predicted seconds of each row (a whole step, when the fit splits forward and outside) under the fit."""
    gpu, host, _, _ = _columns(rows, fit.per_layer, fit.extra)
    g = gpu[:, :4] @ fit.factors + gpu[:, 4]
    t = g + host @ fit.host_s if fit.serial_s is None else np.maximum(g, host @ fit.host_s) + fit.serial_s
    if fit.outside_s is not None:
        t = t + _outside_columns(rows) @ fit.outside_s
    return t


def _solve(
    gpu: np.ndarray,
    host: np.ndarray,
    meas: np.ndarray,
    sigma: np.ndarray,
    scale: np.ndarray,
    nf: int,
    attention_only: bool = False,
    overlap: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Host terms >= 0 (and nf kernel factors: all four, or with `attention_only` the prefill-attention one)
    minimising the rows' relative errors weighted by their spread. `overlap`: the last of `scale` is a serial
    seconds per step, and a row takes max(GPU, host terms) + serial (HostOverlap), not their sum."""

    def unpack(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not nf:
            return x[: len(scale)] * scale, np.ones(4)
        f = np.array([1.0, x[-1], 1.0, 1.0]) if attention_only else x[len(scale) :]
        return x[: len(scale)] * scale, f

    def resid(x: np.ndarray) -> np.ndarray:
        h, f = unpack(x)
        g = gpu[:, :4] @ f + gpu[:, 4]
        pred = np.maximum(g, host @ h[:-1]) + h[-1] if overlap else g + host @ h
        return (pred / meas - 1.0) / sigma

    x0 = np.concatenate([np.ones(len(scale)), np.ones(nf)])
    lower = np.concatenate([np.zeros(len(scale)), np.full(nf, 0.05)])
    sol = least_squares(resid, x0, bounds=(lower, np.inf), loss="soft_l1", f_scale=1.0)
    h, f = unpack(sol.x)
    return h, np.array(f, dtype=float)


def fit_host(
    rows: list[Row],
    fit_factors: bool = False,
    per_layer: bool = True,
    extra: ExtraTerm | None = None,
    split_forward: bool = False,
    attention_factor: bool = False,
    overlap: bool = False,
) -> HostFit:
    """Host terms (and kernel factors if asked) minimising the rows' relative errors, each weighted by its
    spread, with a soft-L1 loss so that a few outlying steps do not pull the terms. `extra`: a fourth term per
    packed-attention pair (q x kv) or per KV token read. `split_forward`: fit the forward (GPU + host terms) on the recorded
    forward times and the rest of the step (outside_s) on what remains, each row's parts summing to its step.
    `attention_factor`: fit the prefill-attention kernel factor alone (the packed attention's, in a served step).
    `overlap`: the host terms' launches overlap the GPU's kernels, a row taking max(GPU, host) + a serial part."""
    if not rows:
        raise ConfigError("engine fit: no rows to fit; give --train a model that has runs in the folder")
    nf = 4 if fit_factors else (1 if attention_factor else 0)
    scale = np.append(HOST_SCALE, [EXTRA_SCALE_S[extra]] if extra else [])
    scale = scale / (float(np.mean([r.layers for r in rows])) if per_layer else 1.0)
    outside = None
    if split_forward:
        timed = [r for r in rows if r.forward_s is not None]
        if not timed:
            raise ConfigError("engine fit: no recorded forward times to split the steps by; fit whole steps")
        rest = np.array([r.measured_s - r.forward_s for r in timed])
        zeros = np.zeros((len(timed), 5))
        outside, _ = _solve(
            zeros, _outside_columns(timed), rest, np.full(len(timed), STEP_SIGMA), HOST_SCALE, 0
        )
        rows = [replace(r, measured_s=r.forward_s) for r in timed]
    gpu, host, meas, sigma = _columns(rows, per_layer, extra)
    if overlap:
        scale = np.append(scale, SERIAL_SCALE_S)
    h, f = _solve(gpu, host, meas, sigma, scale, nf, attention_factor and not fit_factors, overlap)
    if overlap:
        return HostFit(h[:-1], f, per_layer, len(rows), outside, extra, serial_s=float(h[-1]))
    return HostFit(h, f, per_layer, len(rows), outside, extra)


@dataclass(slots=True)
class Check:
    """Held-out errors of one metric."""

    metric: str
    run: str
    errors_pct: np.ndarray
    labels: list[str]

    def as_metric(self) -> MetricError:
        w = int(np.argmax(np.abs(self.errors_pct)))
        return MetricError(
            metric=f"{self.metric} ({self.run})",
            rows=len(self.errors_pct),
            median_abs_pct=round(float(np.median(np.abs(self.errors_pct))), 1),
            worst_pct=round(float(self.errors_pct[w]), 1),
            worst_row=self.labels[w],
        )


def check(rows: list[Row], fit: HostFit) -> list[Check]:
    """Errors of the rows (held out) by metric, run kind and model (an engine's host time differs by model
    family, so one pooled figure would hide where it holds); then long-prompt steps and busy time per run."""
    if not rows:
        return []
    err = (predict(rows, fit) / np.array([r.measured_s for r in rows]) - 1.0) * 100.0
    out = []
    for key in dict.fromkeys((r.metric, r.run, r.model, r.file) for r in rows):
        idx = [i for i, r in enumerate(rows) if (r.metric, r.run, r.model, r.file) == key]
        run = f"{key[1]}, {key[2]}" + (f", {Path(key[3]).parent.name}" if key[3] else "")
        out.append(Check(key[0], run, err[idx], [f"{rows[i].model} {rows[i].label}" for i in idx]))
    pred = predict(rows, fit)
    # served steps with a long prompt in them: the steps a request's TTFT (and its neighbours' TPOT) waits on
    for run in dict.fromkeys(r.run for r in rows if r.metric == "step_s"):
        idx = [
            i
            for i, r in enumerate(rows)
            if (r.run, r.metric) == (run, "step_s") and r.prompt_tokens >= LONG_PROMPT_TOKENS
        ]
        if idx:
            labels = [f"{rows[i].model} {rows[i].label}" for i in idx]
            out.append(Check(f"step_s, >= {LONG_PROMPT_TOKENS} prompt tokens", run, err[idx], labels))
    # a served run's busy time (its steps summed): what its throughput follows
    for run in dict.fromkeys(r.run for r in rows if r.metric == "step_s"):
        runs = list(dict.fromkeys((r.model, r.file) for r in rows if r.run == run and r.metric == "step_s"))
        busy = []
        for m, f in runs:
            idx = [
                i for i, r in enumerate(rows) if (r.model, r.file, r.run, r.metric) == (m, f, run, "step_s")
            ]
            busy.append((pred[idx].sum() / sum(rows[i].measured_s for i in idx) - 1.0) * 100.0)
        labels = [m + (f" ({Path(f).parent.name})" if f else "") for m, f in runs]
        out.append(Check("busy_s", run, np.array(busy), labels))
    return out


# ---------------------------------------------------------------- operators: what an eager engine's host time follows
OPERATORS_FILE = Path("calibration_runs/transformers_operators.json")


def load_operators(path: Path, reference_model: str) -> tuple[OperatorCounts, Measured]:
    """The operator counts of calibrate/operator_count.py's file, in layers of `reference_model`, and their source."""
    try:
        data = json.loads(path.read_text())
        counts = {
            str(m["model_type"]): OperatorCount(per_layer=m["per_layer"], per_forward=m["per_forward"])
            for m in data["models"].values()
        }
        header = data["header"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(
            f"--operators {path}: not an operator count file ({e!r}); write one with "
            "python -m calibrate.operator_count, or give --operators none"
        ) from None
    ref = load_model(reference_model).model_type
    if ref not in counts:
        raise ConfigError(f"--operators {path}: no count for {reference_model} ({ref}); count it first")
    source = Measured(
        kind="measured",
        command=str(header.get("command", "python -m calibrate.operator_count")),
        date=str(header.get("date_utc", ""))[:10] or "unknown",
        gpu="CPU (an operator count does not depend on the device): transformers "
        + str((header.get("versions") or {}).get("transformers", "?")),
        raw=[str(path)],
    )
    ops = OperatorCounts(reference_per_layer=counts[ref].per_layer, models=counts, source="operators")
    return ops, source


def _with_layers(rows: list[Row], rule: str, ops: OperatorCounts | None) -> list[Row]:
    """The rows with `layers` for a host-time rule: per layer (num_layers) or per operator (ops in layers)."""
    specs = {m: load_model(m) for m in {r.model for r in rows}}
    if rule == "operator" and ops is not None:
        n = {m: ops.layers(s.model_type, s.num_layers) for m, s in specs.items()}
    else:
        n = {m: float(s.num_layers) for m, s in specs.items()}
    return [replace(r, layers=n[r.model]) for r in rows]


HOST_RULES = ("step", "layer", "operator")


def leave_one_model_out(raw: RawRuns, ops: OperatorCounts | None) -> list[str]:
    """Each model's rows predicted by host terms fitted on the other models' newest runs only (every served run
    and generate point of them), under each rule: host time per step (the same for every model), per layer
    (times num_layers), per operator (times the operators each architecture launches)."""
    models = sorted({r.model for r in raw.rows})
    rules = [r for r in HOST_RULES if r != "operator" or ops is not None]
    out = [
        "",
        "## Leave one model out: which host-time rule carries to a model it was not fitted on",
        "",
        "Each model's rows (every session) predicted by terms fitted on the other models' newest raw files only "
        "(every served run, every generate point); the operators per forward of each architecture are "
        + (
            ", ".join(
                f"{t} {c.per_layer:g} per layer + {c.per_forward:g}" for t, c in sorted(ops.models.items())
            )
            + " (calibrate/operator_count.py)."
            if ops
            else "not given (--operators none)."
        ),
        "",
        "| held-out model | fitted on | rule | served steps: median abs. error (rows) | served busy time, by run "
        "| generate TTFT: median abs. error | generate decode/token: median abs. error |",
        "|---|---|---|---:|---|---:|---:|",
    ]
    for held in models:
        train = set(models) - {held}
        if not train:
            continue
        files = newest_files(raw, train)
        for rule in rules:
            rows = _with_layers(raw.rows, rule, ops)
            cells = []
            for kind in ("served", "generate"):
                part = [r for r in rows if (r.metric == "step_s") == (kind == "served")]
                ts = TrainSet(frozenset(train), files)
                try:
                    ef = fit_engine(
                        "lomo", part, ts, per_layer=rule != "step", attention_factor=kind == "served"
                    )
                except ConfigError:
                    cells.append(None)
                    continue
                held_rows = [r for r in part if r.model == held]
                cells.append((held_rows, predict(held_rows, ef.fit)) if held_rows else None)
            out.append(f"| {held} | {', '.join(sorted(train))} | per {rule} | " + _lomo_cells(cells) + " |")
    return out


def host_spread_section(raw: RawRuns) -> list[str]:
    """Each run's host time (measured minus the GPU profile's kernels) per layer of the fitted model (operators
    counted when the rows are), on its small decode steps and its generate decode rows: whether host time
    follows the architecture (a rule carries) or the run (it cannot)."""
    out = [
        "",
        "Host time per fitted-model layer (measured minus the GPU profile's kernel time, over the rows' `layers`), "
        "ms, by run: served decode-only steps of at most 4 sequences, and generate decode rows:",
        "",
        "| model | run (raw folder) | rows | p10 | p50 | p90 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    picks = [
        (r, "decode steps") for r in raw.rows if r.metric == "step_s" and r.prompt_tokens == 0 and r.seqs <= 4
    ] + [(r, "generate decode") for r in raw.rows if r.metric == "decode_s_per_token"]
    for key in dict.fromkeys((r.model, r.run, r.file, what) for r, what in picks):
        rs = [r for r, what in picks if (r.model, r.run, r.file, what) == key]
        h = np.array([(r.measured_s - r.gpu_s.sum()) / r.layers for r in rs]) * 1e3
        q = np.percentile(h, [10, 50, 90])
        where = f"{key[1]} ({Path(key[2]).parent.name})"
        out.append(f"| {key[0]} | {where} | {len(rs)} | " + " | ".join(f"{x:.2f}" for x in q) + " |")
    return out


def _lomo_cells(cells: list) -> str:
    def med(rows: list[Row], pred: np.ndarray, metric: str) -> str:
        idx = [i for i, r in enumerate(rows) if r.metric == metric]
        if not idx:
            return "-"
        e = np.abs(pred[idx] / np.array([rows[i].measured_s for i in idx]) - 1.0) * 100.0
        return f"{np.median(e):.1f}%" + (f" ({len(idx)})" if metric == "step_s" else "")

    served, gen = cells
    if served is None:
        s_cells = "- | -"
    else:
        rows, pred = served
        busy = []
        for key in dict.fromkeys((r.run, r.file) for r in rows):
            idx = [i for i, r in enumerate(rows) if (r.run, r.file) == key]
            b = pred[idx].sum() / sum(rows[i].measured_s for i in idx) - 1.0
            busy.append(f"{key[0]} ({Path(key[1]).parent.name}) {b:+.1%}")
        s_cells = f"{med(rows, pred, 'step_s')} | {', '.join(busy)}"
    g_cells = "- | -" if gen is None else f"{med(*gen, 'ttft_s')} | {med(*gen, 'decode_s_per_token')}"
    return f"{s_cells} | {g_cells}"


# ---------------------------------------------------------------- profiles and the table
@dataclass(slots=True)
class EngineFit:
    """One engine profile's fit: its rows, split, terms and held-out checks."""

    name: str
    rows: list[Row]
    split: Split
    fit: HostFit
    checks: list[Check]
    train_checks: list[Check]
    variant: str = ""  # how it differs from the shipped fit, when it is an alternative shown for comparison
    train_set: TrainSet | None = None


def fit_engine(
    name: str,
    rows: list[Row],
    train: set[str] | TrainSet,
    fit_factors: bool = False,
    per_layer: bool = True,
    variant: str = "",
    extra: ExtraTerm | None = None,
    split_forward: bool = False,
    attention_factor: bool = False,
    overlap: bool = False,
) -> EngineFit:
    ts = train if isinstance(train, TrainSet) else TrainSet(frozenset(train))
    split = Split.of(rows, ts)
    fitted = [rows[i] for i in split.train]
    held = [rows[i] for i in split.held_out]
    if not fitted:
        have = ", ".join(sorted({f"{r.model} {r.run}" for r in rows}))
        raise ConfigError(
            f"--train {','.join(sorted(ts.models))}: no {name} rows to fit ({ts.describe()}; the runs have "
            f"{have}); give --train a model and --train-runs runs of those"
        )
    fit = fit_host(fitted, fit_factors, per_layer, extra, split_forward, attention_factor, overlap)
    return EngineFit(name, rows, split, fit, check(held, fit), check(fitted, fit), variant, ts)


def _settings_of(raw: RawRuns, ts: TrainSet) -> dict:
    """The resolved settings of a fitted served run (else of any served run)."""
    found = [
        (
            not (
                key.split()[0] in ts.models and (ts.served_runs is None or key.split()[1] in ts.served_runs)
            ),
            s,
        )
        for key, s in raw.settings.items()
        if s
    ]
    return min(found, key=lambda x: x[0])[1] if found else {}


def _gpu_share(rows: list[Row], fit: HostFit) -> float:
    gpu, _, meas, _ = _columns(rows, fit.per_layer)
    return float(np.median((gpu[:, :4] @ fit.factors + gpu[:, 4]) / meas))


def newest_files(raw: RawRuns, models: set[str]) -> frozenset[str]:
    """The newest raw file (by its header's start time) of each of `models`: the session a fit is made on."""
    newest: dict[str, str] = {}
    for f, h in zip(raw.files, raw.headers):
        m = str(h["model"])
        if m in models and (m not in newest or raw.sessions[f] > raw.sessions[newest[m]]):
            newest[m] = f
    return frozenset(newest.values())


def _group(r: Row) -> str:
    """A row's model, run and raw folder, as the held-out list names them."""
    return f"{r.model} {r.run}" + (f" ({Path(r.file).parent.name})" if r.file else "")


def _train_header(ef: EngineFit, raw: RawRuns, ts: TrainSet, train_files: list[str]) -> dict:
    """The raw header of the fitted runs (else of a fitted model's run, else the first)."""
    return next(
        (h for f, h in zip(raw.files, raw.headers) if f in train_files),
        next((h for h in raw.headers if h.get("model") in ts.models), raw.headers[0]),
    )


def _kernels_source(share: float, fitted_attention: bool, s: dict, layout: Layout) -> Estimated:
    """Why the kernel factors are what they are."""
    return Estimated(
        kind="estimated",
        why=("GEMM, decode-attention and element-wise factors 1.0" if fitted_attention else "factors 1.0")
        + f": not identifiable from these runs, where the GPU's kernels are a median {share:.0%} of a row's "
        "time (the rest is the engine's host time; --fit-factors gives unstable factors); transformers runs "
        "torch's own kernels (cuBLAS GEMMs, sdpa), as the GPU profile's fit did; only 16-bit weights were run"
        + (
            f". Attention packed: the manager ran {s.get('attn_implementation_during_run')}, which gathers "
            "the KV of every sequence of a step and runs one masked sdpa of all its query tokens over all "
            f"those keys (padded to {layout.kv_padding}, queries to {layout.q_padding}: the manager pads "
            "only with CUDA graphs or compile); its factor (attention_prefill) is fitted with the host "
            "terms (source fit); the table compares factors 1.0, a host term per query x key pair, and "
            "attention costed per sequence"
            if layout.packed
            else ""
        ),
    )


def _static_scheduling() -> tuple[Scheduling, Estimated]:
    """generate()'s scheduling: one static batch, and why."""
    source = Estimated(
        kind="estimated",
        why="generate() runs the batch it is given as one static batch: prompts left-padded to the longest "
        "and prefilled in one forward pass, every row decoded until the longest output is done, a "
        "contiguous DynamicCache (no blocks, no preemption; too large a batch runs out of memory), eager "
        "launches; max_num_seqs is the largest batch measured (64), the token budget lets that batch of "
        "8,192-token prompts prefill in one step",
    )
    sched = Scheduling(
        policy="static",
        max_num_seqs=64,
        max_num_batched_tokens=64 * 8192,
        block_size=16,
        preemption="none",
        pad_static_batches=True,
        cuda_graphs="none",
        source="scheduling",
    )
    return sched, source


def _manager_scheduling(s: dict, versions: dict) -> tuple[Scheduling, Published]:
    """The continuous batching manager's scheduling, from its settings read back in the runs, and its source."""
    hf_version = versions.get("transformers", "main")
    source = Published(
        kind="published",
        url=f"https://github.com/huggingface/transformers/blob/v{hf_version}/src/transformers/generation/"
        "continuous_batching/scheduler.py",
        table="FIFOScheduler.schedule_batch (scheduler_type fifo in the runs): decodes take their token first, "
        "then prompts in arrival order, the first that does not fit the rest of max_batch_tokens split to it "
        "(chunked prefill); with cpu_offload_space 0 an evicted request is soft-reset and prefilled again "
        "(recompute). The numbers are the manager's own, read back in the raw runs' replay.settings: "
        + ", ".join(f"{k} {s.get(k)}" for k in SETTINGS_SHOWN if k in s),
    )
    sched = Scheduling(
        policy="chunked",
        max_num_seqs=int(s.get("max_requests_per_batch") or 1024),
        max_num_batched_tokens=int(s.get("cache.max_batch_tokens") or s.get("max_batch_tokens") or 8192),
        block_size=int(s.get("cache.block_size") or s.get("block_size") or 256),
        preemption="recompute",
        pad_static_batches=False,
        cuda_graphs="full" if any(s.get("use_cuda_graph") or []) else "none",
        source="scheduling",
    )
    return sched, source


def _validation(ef: EngineFit, ts: TrainSet, table: str) -> Validation | None:
    """The held-out checks of a fit, or None where nothing was held out."""
    if not ef.checks:
        return None
    held = list(dict.fromkeys(_group(ef.rows[i]) for i in ef.split.held_out))
    return Validation(
        held_out=f"every row not fitted: {', '.join(held)}; fitted on {ts.describe()} only "
        f"({len(ef.split.train)} rows)",
        metrics=[c.as_metric() for c in ef.checks],
        table=table,
    )


def _profile_notes(
    header: dict,
    versions: dict,
    share: float,
    static: bool,
    recorded: bool,
    table: str,
    operators: OperatorCounts | None = None,
) -> str:
    """The profile's notes: how the runs were made and what sets the error."""
    return (
        f"bf16, attention {header.get('model_info', {}).get('attn_implementation', 'sdpa')}, torch "
        f"{versions.get('torch', '?')}, random weights. The engine's host time is most of a step here (the "
        f"GPU's kernels a median {share:.0%} of a fitted row) and grows with the model's layers, so the host "
        "terms are per layer"
        + (
            ", a model's layers counted by the operators its architecture launches per forward (host.operators: per "
            "layer "
            + ", ".join(f"{t} {c.per_layer:g}" for t, c in sorted(operators.models.items()))
            + "; the table's leave-one-model-out section). "
            if operators
            else ". "
        )
        + (
            (
                "Steps as the harness recorded them from the manager (start of the loop iteration to its tokens "
                "delivered; the forward alone is most of it, table). "
                if recorded
                else "Steps were rebuilt from the manager's per-token stamps. "
            )
            + "A step's wall time at one shape spreads widely over a run (host-side: see the table's batch-1 "
            "decode steps), which sets the per-step error. "
            if not static
            else (
                "Each point was warmed up with an untimed run of the timed length; all timed runs are used. "
                if recorded
                else "Decode rows drop each point's first timed run (the slow first decode of that shape). "
            )
        )
        + f"Held-out errors in `validation`; the row tables in {table}."
    )


def build_profile(
    ef: EngineFit,
    raw: RawRuns,
    gpu: str,
    command: str,
    table: str,
    operators: tuple[OperatorCounts, Measured] | None = None,
) -> EngineProfile:
    """The engine profile of a fit: scheduling from the runs' settings, host terms fitted, kernels 1.0;
    `operators`: the counts its per-layer terms were fitted with, and their source."""
    ts = ef.train_set or TrainSet(frozenset())
    train_files = sorted({ef.rows[i].file for i in ef.split.train})
    header = _train_header(ef, raw, ts, train_files)
    versions = header.get("versions") or {}
    date = str(header.get("date_utc", ""))[:10] or _dt.date.today().isoformat()
    static = ef.name.endswith("generate")
    s = _settings_of(raw, ts)
    layout = Layout() if static else Layout.of(s)
    measured = Measured(
        kind="measured",
        command=f"{command} (the runs: {header.get('command', 'python -m calibrate.transformers_runs')})",
        date=date,
        gpu=str((header.get("gpu") or {}).get("name", gpu)),
        raw=train_files or raw.files,
    )
    share = _gpu_share([ef.rows[i] for i in ef.split.train], ef.fit)
    fitted_attention = bool(ef.fit.factors[1] != 1.0)
    # the second harness: recorded steps, and generate points warmed up at the timed length
    recorded = any(ef.rows[i].forward_s is not None for i in ef.split.train) or any(
        "generate_warmup" in (h.get("settings") or {})
        for f, h in zip(raw.files, raw.headers)
        if f in train_files
    )
    sources = {"fit": measured, "kernels": _kernels_source(share, fitted_attention, s, layout)}
    sched, sources["scheduling"] = _static_scheduling() if static else _manager_scheduling(s, versions)
    if operators is not None and ef.fit.per_layer:
        sources["operators"] = operators[1]
    host = HostTime(
        **{
            k: Figure(value=float(f"{v:.4g}") if v > NEGLIGIBLE_S else 0.0, source="fit")
            for k, v in zip(HOST_TERMS, ef.fit.host_s)
        },
        per_layer=ef.fit.per_layer,
        gpu_profile_loop=False,
        operators=operators[0] if operators is not None and ef.fit.per_layer else None,
        overlap=None
        if ef.fit.serial_s is None
        else HostOverlap(serial_s=Figure(value=float(f"{ef.fit.serial_s:.4g}"), source="fit")),
    )
    kernels = Kernels(
        **dict(zip(GPU_GROUPS, (round(float(f), 3) for f in ef.fit.factors))),
        quantized_weights=["bf16", "fp16"],
        attention_layout="packed" if layout.packed else "per_sequence",
        q_padding_tokens=layout.q_padding,
        kv_padding_tokens=layout.kv_padding,
        source="fit" if fitted_attention else "kernels",
    )
    hf = versions.get("transformers", "unknown")
    return EngineProfile(
        name=ef.name,
        display_name=f"Hugging Face transformers {hf}, "
        + ("generate() (static batches)" if static else "continuous batching manager"),
        engine="transformers",
        version=str(hf),
        gpu=gpu,
        status="measured",
        date=date,
        scheduling=sched,
        host=host,
        kernels=kernels,
        sources=sources,
        validation=_validation(ef, ts, table),
        notes=_profile_notes(
            header, versions, share, static, recorded, table, operators[0] if operators else None
        )
        + _overlap_note(ef.fit),
    )


def _overlap_note(fit: HostFit) -> str:
    if fit.serial_s is None:
        return ""
    return (
        " Host overlap (host.overlap): generate's launches run ahead of the GPU's kernels, so a step takes the "
        f"longer of its GPU time and its host terms plus {fit.serial_s * 1e3:.2f} ms that overlaps nothing (a short "
        "prompt's TTFT is its host time, a long one's its GPU time); fitted with the prefill attention's factor "
        f"({fit.factors[1]:.3f}: generate's sdpa with an attention mask). The additive fit is in the table."
    )


def _held_out_by_model(f: EngineFit) -> str:
    rows = [f.rows[i] for i in f.split.held_out]
    if not rows:
        return "none held out"
    err = np.abs(predict(rows, f.fit) / np.array([r.measured_s for r in rows]) - 1.0) * 100.0
    where = [f"{r.model} ({Path(r.file).parent.name})" if r.file else r.model for r in rows]
    return ", ".join(
        f"{m} {np.median(err[[i for i, w in enumerate(where) if w == m]]):.1f}%" for m in sorted(set(where))
    )


def _busy(f: EngineFit) -> str:
    busy = [c for c in f.checks if c.metric == "busy_s"]
    return "; ".join(
        f"{c.run}: " + ", ".join(f"{m} {e:+.1f}%" for m, e in zip(c.labels, c.errors_pct)) for c in busy
    )


def _long(f: EngineFit) -> str:
    long = [c for c in f.checks if c.metric.startswith("step_s, >=")]
    return "; ".join(f"{c.run}: {np.median(np.abs(c.errors_pct)):.1f}% ({len(c.errors_pct)})" for c in long)


def _busy_section(fits: list[EngineFit]) -> list[str]:
    """Each held-out served run's busy time (its steps summed), measured and predicted."""
    out = [
        "",
        "Held-out served runs' busy time (every step's time summed; what a run's throughput follows):",
        "",
        "| model | run | raw file | steps | measured (s) | predicted (s) | error | stalls: steps over 2x their "
        "prediction (their excess, s) | error without them |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for f in fits:
        rows = [f.rows[i] for i in f.split.held_out if f.rows[i].metric == "step_s"]
        pred = predict(rows, f.fit) if rows else np.array([])
        for key in dict.fromkeys((r.model, r.run, r.file) for r in rows):
            idx = [i for i, r in enumerate(rows) if (r.model, r.run, r.file) == key]
            meas, p = np.array([rows[i].measured_s for i in idx]), pred[idx]
            stall = meas > 2 * p  # a step far over its shape's time: a host stall, not the step's shape
            out.append(
                f"| {key[0]} | {key[1]} | {key[2]} | {len(idx)} | {meas.sum():.2f} | {p.sum():.2f} | "
                f"{p.sum() / meas.sum() - 1:+.1%} | {stall.sum()} ({(meas - p)[stall].sum():.2f}) | "
                f"{p[~stall].sum() / meas[~stall].sum() - 1:+.1%} |"
            )
    return out if len(out) > 5 else []


def _forward_section(fits: list[EngineFit]) -> list[str]:
    """Recorded steps split into the forward (forward_start to forward_end) and the rest of the loop iteration
    (scheduling, inputs, tokens delivered), by run; and the outside-forward terms of the split fit."""
    served = next((f for f in fits if f.name == "transformers"), None)
    timed = [r for r in served.rows if r.forward_s is not None] if served else []
    if not timed:
        return []
    out = [
        "",
        "## Forward against the whole step (recorded steps)",
        "",
        "| model | run | steps | step p50 (ms) | forward p50 (ms) | outside the forward p50 / p90 / max (ms) "
        "| outside, share of the run's busy time | GPU part of the forward, p50 (ms) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key in dict.fromkeys((r.model, r.run) for r in timed):
        rs = [r for r in timed if (r.model, r.run) == key]
        step = np.array([r.measured_s for r in rs]) * 1e3
        fwd = np.array([r.forward_s for r in rs]) * 1e3
        rest = np.percentile(step - fwd, [50, 90, 100])
        gpu = np.array([r.gpu_s[:4] @ served.fit.factors + r.gpu_s[4] for r in rs]) * 1e3
        out.append(
            f"| {key[0]} | {key[1]} | {len(rs)} | {np.median(step):.1f} | {np.median(fwd):.1f} | "
            + " / ".join(f"{x:.1f}" for x in rest)
            + f" | {(step - fwd).sum() / step.sum():.1%} | {np.median(gpu):.1f} |"
        )
    split = next((f for f in fits if f.fit.outside_s is not None), None)
    if split is not None:
        o = np.where(split.fit.outside_s > NEGLIGIBLE_S, split.fit.outside_s, 0.0)
        h = np.where(split.fit.host_s > NEGLIGIBLE_S, split.fit.host_s, 0.0)
        out += [
            "",
            f"The split fit's outside-forward terms (not per layer): {o[0] * 1e3:.3g} ms per step, "
            f"{o[1] * 1e3:.3g} ms per sequence, {o[2] * 1e6:.3g} µs per prompt token; the forward's host terms "
            "per layer: "
            + ", ".join(f"{x * 1e3:.4g} ms" for x in h[:2])
            + f", {h[2] * 1e6:.4g} µs. The forward is most of a step and most of the forward is "
            "host time (eager launches from Python), so the profile keeps one set of per-layer host terms "
            "for the whole step; the split fit's held-out errors are in the table above.",
        ]
    return out


def _fits_section(fits: list[EngineFit], command: str) -> list[str]:
    """The report's head: what was fitted, and each fit's terms."""
    out = [
        f"# Engine fit: {', '.join(f.name for f in fits)}",
        "",
        f"`{command}`",
        "",
        "Fitted rows set the terms; every other row is predicted only, and only those are errors below (fitted",
        "rows' errors are listed apart, as a fit quality, never as a check). Fitted:",
        "",
        *[f"- {f.name}: {f.train_set.describe() if f.train_set else 'every row'}" for f in fits],
        "",
        "| profile | host terms | per step (ms) | per sequence (ms) | per prompt token (µs) | kernel factors "
        "| fitted rows |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    for f in fits:
        h = np.where(f.fit.host_s > NEGLIGIBLE_S, f.fit.host_s, 0.0)
        out.append(
            f"| {f.name} | {'per layer' if f.fit.per_layer else 'per step'} | {h[0] * 1e3:.4g} | "
            f"{h[1] * 1e3:.4g} | {h[2] * 1e6:.4g} | {', '.join(f'{x:.2f}' for x in f.fit.factors)} | "
            f"{f.fit.train_rows} |"
        )
    return out


def _held_out_section(fits: list[EngineFit], others: list[EngineFit]) -> list[str]:
    """Held-out errors by metric, then the shipped fits against the alternatives."""
    out = ["", "## Held-out errors (predicted / measured − 1)", ""]
    out += ["| profile | metric | rows | median abs. error | worst row |", "|---|---|---:|---:|---|"]
    for f in fits:
        for c in f.checks:
            m = c.as_metric()
            out.append(
                f"| {f.name} | {m.metric} | {m.rows} | {m.median_abs_pct:.1f}% | "
                f"{m.worst_row}: {m.worst_pct:+.1f}% |"
            )
    out += [
        "",
        "busy_s is a served run's steps summed (what its throughput follows), one row per held-out model.",
        "",
        "The shipped fits against alternatives, on the same held-out rows:",
        "",
    ]
    out += [
        f"| profile | fit | median abs. error of rows, by model (raw folder) | steps with >= {LONG_PROMPT_TOKENS} prompt "
        "tokens: median abs. error (rows) | busy time, by model |",
        "|---|---|---|---|---|",
    ]
    for f in fits + others:
        out.append(
            f"| {f.name} | {f.variant or 'shipped'} | {_held_out_by_model(f)} | {_long(f) or '-'} | "
            f"{_busy(f) or '-'} |"
        )
    return out


def _fitted_rows_section(fits: list[EngineFit]) -> list[str]:
    """The fitted rows' errors, a fit quality only."""
    out = ["", "Fitted rows, for comparison (not a check):", ""]
    out += ["| profile | metric | rows | median abs. error |", "|---|---|---:|---:|"]
    for f in fits:
        for c in f.train_checks:
            m = c.as_metric()
            out.append(f"| {f.name} | {m.metric} | {m.rows} | {m.median_abs_pct:.1f}% |")
    return out


def _steps_section(fits: list[EngineFit], raw: RawRuns) -> list[str]:
    """Where each served run's steps came from, and the spread of its batch-1 decode steps."""
    out = ["", "## Steps of the served runs: recorded by the harness, or rebuilt from the token stamps", ""]
    for key, how in raw.steps_source.items():
        out.append(f"- {key}: {how}")
    out += ["", "Wall time of the batch-1 decode steps (one sequence, no prompt tokens) of each run, ms:", ""]
    out += [
        "| model | run | steps | min | p10 | median | p90 | max |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for f in fits:
        one = [r for r in f.rows if r.metric == "step_s" and r.seqs == 1 and r.prompt_tokens == 0]
        for key in dict.fromkeys((r.model, r.run) for r in one):
            t = np.array([r.measured_s for r in one if (r.model, r.run) == key]) * 1e3
            q = np.percentile(t, [0, 10, 50, 90, 100])
            out.append(f"| {key[0]} | {key[1]} | {len(t)} | " + " | ".join(f"{x:.1f}" for x in q) + " |")
    return out


def _held_out_rows_section(fits: list[EngineFit]) -> list[str]:
    """Every held-out row: measured, predicted, its GPU part, the error."""
    out = ["", "## Held-out rows", ""]
    for f in fits:
        rows = [f.rows[i] for i in f.split.held_out]
        if not rows:
            continue
        pred = predict(rows, f.fit)
        out += [
            f"### {f.name}",
            "",
            "| model | run | metric | row | measured (ms) | predicted (ms) | GPU part (ms) | error |",
        ]
        out.append("|---|---|---|---|---:|---:|---:|---:|")
        for r, p in zip(rows, pred):
            g = float(r.gpu_s[:4] @ f.fit.factors + r.gpu_s[4])
            out.append(
                f"| {r.model} | {r.run} | {r.metric} | {r.label} | {r.measured_s * 1e3:.1f} | {p * 1e3:.1f} | "
                f"{g * 1e3:.1f} | {(p / r.measured_s - 1) * 100:+.1f}% |"
            )
        out.append("")
    return out


def markdown(
    fits: list[EngineFit],
    others: list[EngineFit],
    raw: RawRuns,
    command: str,
    operators: OperatorCounts | None = None,
) -> str:
    """The fit's report: figures, held-out errors by metric, the reconstruction, every held-out row; `others`
    are alternative fits of the same rows (their `variant` says how they differ), compared on held-out rows;
    then each host-time rule fitted without one model and checked on it."""
    out = _fits_section(fits, command)
    out += _held_out_section(fits, others)
    out += leave_one_model_out(raw, operators)
    out += host_spread_section(raw)
    out += _busy_section(fits)
    out += _forward_section(fits + others)
    out += _fitted_rows_section(fits)
    out += _steps_section(fits, raw)
    out += _held_out_rows_section(fits)
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- command line
class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors as one line (calibrate/__main__.py's rule), not usage text."""

    def error(self, message: str):
        raise ConfigError(f"{self.prog}: {message}; see {self.prog} --help")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m calibrate.engine_fit",
        description="Fit transformers engine profiles (host terms) to raw runs and check them on held-out models.",
    )
    p.add_argument("runs", help="folder of raw runs (calibration_runs/transformers_h200)")
    p.add_argument("--gpu", required=True, help="GPU profile the runs were made on (h200)")
    p.add_argument(
        "--out", default="engine_profiles", help="folder for the profiles (default: engine_profiles)"
    )
    p.add_argument("--train", default="llama-3.1-8b", help="models whose rows are fitted, comma-separated")
    p.add_argument(
        "--table",
        default=None,
        help="markdown report (default: benchmarks/results/engine_fit_<runs folder name>.md)",
    )
    p.add_argument(
        "--train-runs",
        default="conv_trace_rate,conv_moderate",
        help="served runs whose steps are fitted, comma-separated (the others held out; default: the "
        "conversation replays)",
    )
    p.add_argument(
        "--fit-factors",
        action="store_true",
        help="fit all four kernel factors (default: served steps the packed attention's alone, generate none)",
    )
    p.add_argument(
        "--operators",
        default=str(OPERATORS_FILE),
        help="operator counts per architecture (python -m calibrate.operator_count): per-layer host terms "
        f"multiply by a model's operators, not its layers (default {OPERATORS_FILE}; none: by num_layers)",
    )
    p.add_argument(
        "--no-overlap",
        action="store_true",
        help="generate profile: host time added to the GPU's (default: overlapped, max(GPU, host) + serial)",
    )
    p.add_argument(
        "--no-phases",
        action="store_true",
        help="leave the served profile's host phases out (calibrate/host_phases.py; default: fitted)",
    )
    p.add_argument(
        "--host-per-step",
        action="store_true",
        help="host terms per step, the same for every model (default: per layer, times the model's layers)",
    )
    return p


@dataclass(slots=True)
class FitInputs:
    """What the read stage hands the fit stage: the rows found, how they split, and where the results go."""

    args: argparse.Namespace
    command: str
    folder: Path
    out: Path
    table: Path
    raw: RawRuns
    operators: tuple[OperatorCounts, Measured] | None
    served_set: TrainSet
    static_set: TrainSet


@dataclass(slots=True)
class FitOutputs:
    """What the fit stage hands the write stage: the profiles and the report's text."""

    profiles: list[EngineProfile]
    text: str


def read_stage(argv: list[str] | None) -> FitInputs:
    """Parse the command line, check the output paths and read every raw run under the folder."""
    command = "python -m calibrate.engine_fit " + shlex.join(argv if argv is not None else sys.argv[1:])
    args = _parser().parse_args(argv)
    folder = Path(args.runs)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file; give a folder for the profiles")
    table = Path(args.table or f"benchmarks/results/engine_fit_{folder.name}.md")
    train = {m.strip() for m in args.train.split(",") if m.strip()}
    runs = frozenset(r.strip() for r in args.train_runs.split(",") if r.strip())
    operators = None
    if args.operators.lower() != "none":
        operators = load_operators(Path(args.operators), sorted(train)[0])
    raw = read_runs(folder, args.gpu, operators=operators[0] if operators else None)
    files = newest_files(raw, train)
    return FitInputs(
        args, command, folder, out, table, raw, operators,
        TrainSet(frozenset(train), files, runs), TrainSet(frozenset(train), files, alternate=True),
    )  # fmt: skip


def _static_fits(inp: FitInputs, static: list[Row], per_layer: bool, other_host: str) -> tuple[list, list]:
    """The generate profile's shipped fit and its alternatives."""
    args, ops, ts = inp.args, inp.operators[0] if inp.operators else None, inp.static_set
    # shipped: generate's launches run ahead of the GPU (a step takes the longer of the two, plus a serial part),
    # with the prefill attention's factor (sdpa with generate's mask), unless --no-overlap
    ov, att = not args.no_overlap, not args.no_overlap and not args.fit_factors
    gen = "transformers-generate"
    fits = [fit_engine(gen, static, ts, args.fit_factors, per_layer, attention_factor=att, overlap=ov)]
    others = [
        fit_engine(
            gen, static, ts, args.fit_factors, not per_layer, other_host, attention_factor=att, overlap=ov
        )
    ]
    if ov:
        others.append(
            fit_engine(
                gen, static, ts, args.fit_factors, per_layer, "host added to the GPU's time, not overlapped"
            )
        )
    if ops is not None and per_layer:
        plain = _with_layers(static, "layer", None)
        others.append(
            fit_engine(gen, plain, ts, args.fit_factors, variant="layers by num_layers, not operators",
                       attention_factor=att, overlap=ov)
        )  # fmt: skip
    return fits, others


def _served_fits(inp: FitInputs, served: list[Row], per_layer: bool, other_host: str) -> tuple[list, list]:
    """The manager's profile's shipped fit and its alternatives."""
    args, ops, served_set = inp.args, inp.operators[0] if inp.operators else None, inp.served_set
    # shipped: host terms per layer and the packed attention's kernel factor (the best on held-out
    # long-prompt steps, benchmarks/results/engine_fit_*.md); the alternatives are shown beside it
    ff, att = args.fit_factors, not args.fit_factors
    fits = [fit_engine("transformers", served, served_set, ff, per_layer, attention_factor=att)]
    others = []
    if ops is not None and per_layer:
        plain = _with_layers(served, "layer", None)
        others.append(
            fit_engine("transformers", plain, served_set, ff, variant="layers by num_layers, not "
                       "operators", attention_factor=att)
        )  # fmt: skip
    for variant, kw in (
        (other_host, {"per_layer": not per_layer, "attention_factor": att}),
        ("kernel factors 1.0", {"per_layer": per_layer}),
        ("kernel factors 1.0, + host term per packed-attention q x kv pair", {"extra": "pairs"}),
        ("+ host term per KV token read", {"extra": "kv", "attention_factor": att}),
        (
            "host launches overlap the GPU: max(GPU, host) + serial",
            {"overlap": True, "attention_factor": att},
        ),
        (
            "forward (GPU + per-layer host) and outside-forward time (per step) fitted apart",
            {"split_forward": True, "attention_factor": att},
        ),
    ):
        if kw.get("split_forward") and not any(served[i].forward_s for i in fits[-1].split.train):
            continue
        others.append(fit_engine("transformers", served, served_set, ff, variant=variant, **kw))
    return fits, others


def fit_stage(inp: FitInputs) -> FitOutputs:
    """Fit each profile (and the alternatives the report compares it with) and build the profiles and report."""
    args, raw = inp.args, inp.raw
    ops = inp.operators[0] if inp.operators else None
    static = [r for r in raw.rows if r.metric != "step_s"]
    served = [r for r in raw.rows if r.metric == "step_s"]
    per_layer = not args.host_per_step
    other_host = "host terms per layer" if args.host_per_step else "host terms per step, not per layer"
    fits, others = [], []
    for rows, stage in ((static, _static_fits), (served, _served_fits)):
        if rows:
            f, o = stage(inp, rows, per_layer, other_host)
            fits += f
            others += o
    if any(Layout.of(s).packed for s in raw.settings.values()):
        flat = [
            r
            for r in read_runs(inp.folder, args.gpu, per_sequence_attention=True, operators=ops).rows
            if r.metric == "step_s"
        ]
        others.append(
            fit_engine(
                "transformers", flat, inp.served_set, args.fit_factors, per_layer,
                "attention per sequence (factor fitted)", attention_factor=not args.fit_factors,
            )
        )  # fmt: skip
    profiles = [build_profile(f, raw, args.gpu, inp.command, str(inp.table), inp.operators) for f in fits]
    text = markdown(fits, others, raw, inp.command, ops)
    served_fit = next((f for f in fits if f.name == "transformers"), None)
    if served_fit is not None and not args.no_phases:
        pf = fit_phases(run_steps(served_fit, served_fit.split.train))
        i = fits.index(served_fit)
        profiles[i] = with_phases(profiles[i], pf)
        text += "\n".join(phases_section(served_fit, pf)) + "\n"
    return FitOutputs(profiles, text)


# ---------------------------------------------------------------- host phases (calibrate/host_phases.py)
def run_steps(ef: EngineFit, idx: np.ndarray) -> list[RunSteps]:
    """The served rows at `idx`, one RunSteps per raw file and run, in step order."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for i in idx:
        r = ef.rows[i]
        if r.metric == "step_s":
            groups.setdefault((r.file, r.run), []).append(r)
    out = []
    for (file, run), rows in groups.items():
        gpu, host, meas, _ = _columns(rows, ef.fit.per_layer, ef.fit.extra)
        name = f"{rows[0].model} {run} ({Path(file).parent.name})"
        out.append(RunSteps(name, meas, gpu[:, :4] @ ef.fit.factors + gpu[:, 4], host @ ef.fit.host_s))
    return out


def with_phases(p: EngineProfile, pf: PhaseFit) -> EngineProfile:
    """The profile with its fitted host phases (source: the host terms' fit, the same runs)."""
    phases = HostPhases(
        log_mean=round(pf.log_mean, 4),
        log_std=round(pf.log_std, 4),
        correlation_s=float(f"{pf.correlation_s:.4g}"),
        stall_rate_per_s=float(f"{pf.stall_rate_per_s:.4g}"),
        stall_s=round(pf.stall_s, 3),
        source="fit",
    )
    note = (
        f" Host phases (host.phases, fitted on the same steps): the host terms' level drifts over wall time "
        f"(mean multiplier {pf.mean_multiplier:.3f}, log spread {pf.log_std:.3f}, correlation "
        f"{pf.correlation_s:.2f} s) and the loop stalls {pf.stall_rate_per_s * 60:.2f} times a minute for "
        f"{pf.stall_s:.2f} s; the simulator draws both from the scenario's seed (simulator/host_phases.py)."
    )
    return p.model_copy(
        update={"host": p.host.model_copy(update={"phases": phases}), "notes": p.notes + note}
    )


def phases_section(ef: EngineFit, pf: PhaseFit) -> list[str]:
    """The fitted phases, and the same statistics of each held-out run (shown to compare, not fitted)."""
    lines = [
        "## Host phases and stalls (host.phases)",
        "",
        "A step's host multiplier is (measured - GPU) / fitted host seconds; calibrate/host_phases.py fits its "
        "level, spread and correlation time, and the stalls, on the fitted runs only. The held-out runs' own "
        "statistics are shown to compare (their steps' start times are the sum of the usable steps before).",
        "",
        *TABLE_HEAD,
        describe("fitted: " + ", ".join(r.name for r in run_steps(ef, ef.split.train)), pf),
    ]
    for r in run_steps(ef, ef.split.held_out):
        lines.append(describe(f"held-out: {r.name}", fit_phases([r])))
    return lines + [""]


def write_stage(inp: FitInputs, res: FitOutputs) -> None:
    """Print and write the report, and write each profile."""
    print(res.text)
    inp.table.write_text(res.text)
    for p in res.profiles:
        write_engine_profile(
            p, inp.out / f"{p.name}.yaml", header=f"{p.display_name} on {p.gpu}: written by {inp.command}"
        )
        print(f"wrote {inp.out / (p.name + '.yaml')}")


def main(argv: list[str] | None = None) -> int:
    try:
        inp = read_stage(argv)
        res = fit_stage(inp)
        inp.out.mkdir(parents=True, exist_ok=True)
        inp.table.parent.mkdir(parents=True, exist_ok=True)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_stage(inp, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
