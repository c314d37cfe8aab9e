"""The scenario a user writes: model, hardware, serving settings, workload, SLOs, output.

Small nested YAML validated by pydantic; every field has a description that `run --help` prints.
"""

from __future__ import annotations

import copy
import difflib
import math
import warnings
from pathlib import Path, PurePath, PureWindowsPath
from typing import Annotated, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from core.errors import ConfigError, one_line, parse_yaml, read_yaml, short_repr
from core.limits import MAX_REPLICAS, MAX_REQUESTS
from simulator.engines import resolve_engine

Dtype = Literal["bf16", "fp16", "fp8", "int8", "int4"]
KvDtype = Literal["bf16", "fp16", "fp8"]
MAX_EXACT_INT = 2**53  # the largest count a float64 holds exactly


class _Spec(BaseModel):
    # inf or nan in any float (a rate, a duration, a price, an SLO) would run forever or poison every sum
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_truth_for_numbers(cls, data: object) -> object:
        # YAML reads `yes`/`true` as a bool, which pydantic would take as 1 for a count or a rate
        # (a model validator: field validators in mode 'before' may not touch discriminator fields)
        if isinstance(data, dict):
            for name, v in data.items():
                f = cls.model_fields.get(name) if isinstance(name, str) else None
                if f is None or not isinstance(v, bool):
                    continue
                kinds = get_args(f.annotation) or (f.annotation,)
                if bool not in kinds and any(k in (int, float) for k in kinds):
                    raise PydanticCustomError(
                        "bool_for_number", "{name}: {value} is not a number; give a number",
                        {"name": name, "value": str(v).lower()},
                    )  # fmt: skip
        return data

    @field_validator("*")
    @classmethod
    def _exact_in_float(cls, v: object) -> object:
        # counts meet numpy (int64) and float arithmetic; past 2^53 neither holds them exactly
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_EXACT_INT:
            raise ValueError(f"{v:.3g} is too large; use at most {MAX_EXACT_INT:,}")
        return v


# ---------------------------------------------------------------- lengths
class Fixed(_Spec):
    dist: Literal["fixed"] = "fixed"
    value: int = Field(ge=1, description="every request has this many tokens")


class Uniform(_Spec):
    dist: Literal["uniform"]
    min: int = Field(ge=1, description="smallest length (inclusive)")
    max: int = Field(ge=1, description="largest length (inclusive)")

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self


class Lognormal(_Spec):
    dist: Literal["lognormal"]
    median: float = Field(gt=0, description="median length in tokens")
    sigma: float = Field(gt=0, le=5, description="standard deviation of log(length)")
    min: int = Field(1, ge=1, description="lengths are clipped to at least this")
    max: int = Field(1_000_000, ge=1, description="lengths are clipped to at most this")


class Exponential(_Spec):
    dist: Literal["exponential"]
    mean: float = Field(gt=0, description="mean length in tokens (geometric on the integers >= 1)")


class FromTrace(_Spec):
    dist: Literal["trace"]


Length = Annotated[Fixed | Uniform | Lognormal | Exponential | FromTrace, Field(discriminator="dist")]


class Slo(_Spec):
    ttft_s: float | None = Field(None, gt=0, description="time to first token target")
    tpot_s: float | None = Field(None, gt=0, description="time per output token target (mean over a request)")
    e2e_s: float | None = Field(None, gt=0, description="end-to-end latency target")


# ---------------------------------------------------------------- workload
class Arrival(_Spec):
    process: Literal["poisson", "gamma", "constant", "trace", "closed_loop"] = Field(
        "poisson",
        description="poisson, gamma (bursty, set cv), constant spacing, the trace's own arrival times, or "
        "closed_loop: `concurrency` users each sending the next request when their last one finishes",
    )
    concurrency: int | None = Field(
        None,
        ge=1,
        description="closed_loop: users sending at once (vLLM bench serve --max-concurrency, GuideLLM concurrent); "
        "with a rate: at most this many requests in flight, later arrivals wait at the client (vLLM bench serve "
        "--request-rate with --max-concurrency)",
    )
    rate_per_s: float | None = Field(
        None,
        gt=0,
        description="mean requests per second (for trace: rescales the trace's times to this rate)",
    )
    # (bounded so that the gamma shape 1/cv^2 stays a float: cv 1e-300 divided by zero, 1e300 overflowed;
    # at cv 100 gaps are nearly all zero with one of ~10^4 mean gaps now and then)
    cv: float = Field(
        1.0, ge=0.001, le=100, description="gamma: coefficient of variation of gaps (1 = Poisson, >1 bursty)"
    )


class Session(_Spec):
    turns: Length = Field(default_factory=lambda: Fixed(value=4), description="turns per conversation")
    think_time_s: float = Field(
        10.0, ge=0, description="mean time (exponential) from a response to the user's next turn"
    )


# ---------------------------------------------------------------- a day of traffic (simulator/rate_schedule.py)


class RateStep(_Spec):
    start_s: float = Field(ge=0, description="seconds from the start when this step begins")
    rate_per_s: float = Field(ge=0, description="mean arrival rate until the next step")


class Steps(_Spec):
    kind: Literal["steps"]
    steps: list[RateStep] = Field(
        min_length=1,
        description="piecewise-constant rate: each step holds until the next; the first starts at 0",
    )

    @model_validator(mode="after")
    def _ordered(self) -> Steps:
        starts = [s.start_s for s in self.steps]
        if starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])):
            raise ValueError("steps need start_s 0 first, then increasing start times")
        if not any(s.rate_per_s > 0 for s in self.steps):
            raise ValueError("every step has rate 0, so nothing arrives; give one step a rate above 0")
        return self

    @property
    def peak_rate_per_s(self) -> float:
        return max(s.rate_per_s for s in self.steps)


class Daily(_Spec):
    kind: Literal["daily"]
    peak_rate_per_s: float = Field(gt=0, description="mean arrival rate at the peak hour")
    trough_rate_per_s: float = Field(ge=0, description="mean arrival rate 12 hours from the peak")
    peak_hour: float = Field(
        14.0, ge=0, lt=24, description="hour of the day (0-24) of the peak; the run starts at 0:00"
    )
    shape: Literal["cosine"] = Field(
        "cosine", description="cosine: rate = trough + (peak - trough)(1 + cos(2π(h - peak_hour)/24))/2"
    )

    @model_validator(mode="after")
    def _peak_above_trough(self) -> Daily:
        if self.trough_rate_per_s > self.peak_rate_per_s:
            raise ValueError(
                f"trough_rate_per_s ({self.trough_rate_per_s:g}) is above peak_rate_per_s "
                f"({self.peak_rate_per_s:g}); swap them"
            )
        return self


class Hourly(_Spec):
    kind: Literal["hourly"]
    requests_per_hour: list[float] | None = Field(
        None,
        min_length=1,
        description="arrivals in each hour, spread evenly in the hour; repeats after the last "
        "(or give from_trace)",
    )
    from_trace: str | None = Field(
        None,
        description="a trace (built-in name or CSV/JSONL path with arrival times) whose arrivals per hour, "
        "counted from its first arrival, become requests_per_hour",
    )
    scale: float = Field(1.0, gt=0, le=1e6, description="from_trace: each hour's count times this")

    @field_validator("requests_per_hour")
    @classmethod
    def _counts(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (any(x < 0 for x in v) or not any(x > 0 for x in v)):
            raise ValueError("counts must be >= 0, and at least one above 0")
        return v

    @model_validator(mode="after")
    def _from_trace(self) -> Hourly:
        if (self.requests_per_hour is None) == (self.from_trace is None):
            raise ValueError("give requests_per_hour or from_trace (one of them)")
        if self.from_trace is not None:
            from simulator.trace import hourly_counts  # lazy: the trace reader imports numpy and the readers

            counts = [c * self.scale for c in hourly_counts(self.from_trace)]
            object.__setattr__(self, "requests_per_hour", counts)  # the echo holds the counts it ran
        elif self.scale != 1.0:
            raise ValueError("scale is for from_trace; multiply requests_per_hour instead")
        return self

    @property
    def peak_rate_per_s(self) -> float:
        return max(self.requests_per_hour) / 3600.0


RateSchedule = Annotated[Steps | Daily | Hourly, Field(discriminator="kind")]


class TrafficClass(_Spec):
    name: str = Field(description="label in the per-class results")
    share: float = Field(
        gt=0, description="relative share of arrivals (of conversations, for session classes)"
    )
    prompt_tokens: Length | None = Field(
        None, description="prompt length (per turn: the new user tokens); default: the workload's"
    )
    output_tokens: Length | None = Field(None, description="output length; default: the workload's")
    shared_prefix_tokens: int = Field(
        0, ge=0, description="a system prompt of this many tokens that every request of the class carries"
    )
    prefix_position: Literal["start", "end"] = Field(
        "start", description="where the shared tokens go: start (cacheable) or end (after the variable part)"
    )
    session: Session | None = Field(
        None, description="multi-turn conversations: each turn's prompt is the whole conversation so far"
    )
    slo: Slo | None = Field(None, description="this class's latency targets (default: the scenario's slo)")
    priority: int = Field(
        0, description="higher runs first when serving.admission.scheduling_policy is priority"
    )
    acceptance_rate: float | None = Field(
        None,
        ge=0,
        le=1,
        description="speculative decoding acceptance rate for this class (default: serving's)",
    )
    response_cache_hit_rate: float | None = Field(
        None,
        ge=0,
        le=1,
        description="this class's response-cache hit rate (default: response_cache.hit_rate)",
    )
    schedule: RateSchedule | None = Field(
        None,
        description="this class's own rate over time (requests/s; conversations/s for session classes), "
        "drawn by arrival.process; its share then does not apply (unset: the class takes its share of the "
        "workload's arrivals)",
    )


class Workload(_Spec):
    trace: str | None = Field(
        None,
        description="trace for lengths and/or arrivals: a built-in name (conversation, code, summarization) "
        "or a CSV path with arrived_at, num_prefill_tokens, num_decode_tokens (trace rows are reused in a loop), "
        "or a benchmark's result with per-request lengths (vLLM bench serve --save-detailed, GuideLLM, AIPerf)",
    )
    arrival: Arrival = Field(default_factory=Arrival, description="when requests arrive")
    schedule: RateSchedule | None = Field(
        None,
        description="a rate that changes over time (steps, daily curve, hourly counts); arrival.process draws "
        "the arrivals under it (unset: arrival.rate_per_s throughout)",
    )
    prompt_tokens: Length = Field(
        default_factory=lambda: Fixed(value=512), description="prompt length distribution"
    )
    output_tokens: Length = Field(
        default_factory=lambda: Fixed(value=128), description="output length distribution"
    )
    num_requests: int | None = Field(
        None, ge=1, description="how many requests (default: the trace's rows, or 1000)"
    )
    duration_s: float | None = Field(None, gt=0, description="alternatively, generate arrivals for this long")
    classes: list[TrafficClass] | None = Field(
        None,
        description="a mix of traffic classes by share, each with its own lengths, prefix, sessions, SLO",
    )
    moe_routing_skew: float = Field(
        0.0, ge=0, le=4, description="MoE: Zipf exponent of expert popularity (0 = uniform routing)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> Workload:
        dists = [self.prompt_tokens.dist, self.output_tokens.dist]
        for c in self.classes or []:
            dists += [d.dist for d in (c.prompt_tokens, c.output_tokens) if d is not None]
        uses_trace = self.arrival.process == "trace" or "trace" in dists
        if self.classes and len({c.name for c in self.classes}) < len(self.classes):
            raise ValueError("classes need distinct names")
        if self.classes and not math.isfinite(sum(c.share for c in self.classes)):
            raise ValueError(
                "the classes' shares add up past the largest number; give shares such as 1 and 3"
            )
        if uses_trace and not self.trace:
            raise ValueError(
                "a trace-driven setting needs `trace` (conversation, code, summarization, or a CSV path)"
            )
        if self.schedule is not None:
            schedule_conflicts(self)
        own = [c.name for c in self.classes or [] if c.schedule is not None]
        if own:
            _class_schedules(self, own)
        if self.arrival.process == "closed_loop":
            _closed_loop(self)
        if (
            self.schedule is None
            and not (own and len(own) == len(self.classes))
            and self.arrival.process in ("poisson", "gamma", "constant")
            and self.arrival.rate_per_s is None
        ):
            raise ValueError(f"arrival.process {self.arrival.process!r} needs arrival.rate_per_s")
        if self.num_requests and self.duration_s:
            raise ValueError("give num_requests or duration_s, not both")
        return self


def schedule_conflicts(w: Workload) -> None:
    """A rate schedule replaces arrival.rate_per_s and draws under poisson, gamma or constant arrivals."""
    if w.arrival.process == "closed_loop":
        raise ValueError(
            "schedule: a closed loop's users set the load themselves; remove schedule or use arrival.process "
            "poisson, gamma or constant"
        )
    if w.arrival.process == "trace":
        raise ValueError(
            "schedule: the trace's own arrival times have no rate to reshape; use arrival.process poisson, "
            "gamma or constant under a schedule (or the trace's hourly counts as schedule.kind hourly)"
        )
    if w.arrival.rate_per_s is not None:
        raise ValueError("schedule gives the rate over time; remove arrival.rate_per_s")


# ---------------------------------------------------------------- hardware and serving
def _class_schedules(w: Workload, own: list[str]) -> None:
    """Classes with their own schedules: each draws its arrivals over duration_s, beside the workload's."""
    where = (
        f"classes {own[0]!r}: schedule" if len(own) == 1 else f"classes {', '.join(map(repr, own))}: schedule"
    )
    if w.arrival.process not in ("poisson", "gamma", "constant"):
        raise ValueError(
            f"{where}: a class's schedule draws under arrival.process poisson, gamma or constant, not "
            f"{w.arrival.process}; change arrival.process or remove the class's schedule"
        )
    if not w.duration_s:
        raise ValueError(
            f"{where}: needs workload.duration_s (how long to draw each class's arrivals); set it"
        )
    if len(own) == len(w.classes) and (w.schedule is not None or w.arrival.rate_per_s is not None):
        setting = "workload.schedule" if w.schedule is not None else "arrival.rate_per_s"
        raise ValueError(f"every class has its own schedule, so {setting} would not be used; remove it")


def _closed_loop(w: Workload) -> None:
    """A closed loop has users, not a rate: what it needs and what it cannot combine with."""
    if w.arrival.concurrency is None:
        raise ValueError(
            "arrival.process closed_loop needs arrival.concurrency (how many users send at once)"
        )
    for bad, why in (
        (w.arrival.rate_per_s, "rate_per_s"),
        (w.duration_s, "duration_s"),
        (w.classes, "classes"),
    ):
        if bad:
            raise ValueError(f"arrival.process closed_loop: remove {why} (requests follow each other per user; "
                             "give num_requests)")  # fmt: skip


class Hardware(_Spec):
    gpu: str = Field("h100-sxm", description="GPU profile name from hardware_profiles/ (or a .yaml path)")
    gpus_per_replica: int = Field(
        1, ge=1, description="GPUs serving one model copy: tensor parallel × pipeline_parallel"
    )
    pipeline_parallel: int = Field(
        1, ge=1, description="pipeline stages (layers split); tensor parallel = gpus_per_replica / this"
    )
    expert_parallel: bool = Field(
        False, description="MoE: deal the experts over a stage's GPUs (all-to-all) instead of sharding each"
    )
    price_per_gpu_hour_usd: float | None = Field(
        None, ge=0, description="override the profile's on-demand price"
    )

    @model_validator(mode="after")
    def _stages_divide(self) -> Hardware:
        if self.gpus_per_replica % self.pipeline_parallel:
            raise ValueError(
                f"gpus_per_replica ({self.gpus_per_replica}) must be a multiple of pipeline_parallel "
                f"({self.pipeline_parallel})"
            )
        return self


class Speculative(_Spec):
    method: Literal["draft", "self"] = Field(
        "draft",
        description="draft: a smaller draft model; self: MTP heads / n-gram lookup at a cost fraction",
    )
    draft_model: str | None = Field(
        None, description="draft: catalogue name or config.json of the draft model"
    )
    num_speculative_tokens: int = Field(4, ge=1, le=16, description="k: tokens drafted per round")
    acceptance_rate: float = Field(
        0.7, ge=0, le=1, description="per-token probability that a drafted token is accepted (α)"
    )
    draft_cost_fraction: float = Field(
        0.05, ge=0, le=1, description="self: one drafted token's cost as a fraction of a target decode step"
    )
    max_batch_size: int = Field(
        32, ge=1, description="switched off when more sequences than this are decoding (as vLLM does)"
    )
    graphed_rounds: bool = Field(
        False,
        description="draft: the draft steps run in one CUDA graph with the verification (this project's engine, "
        "engine/speculative.py), so they pay no serving-loop host time of their own; off: each pays it",
    )

    @model_validator(mode="after")
    def _draft_named(self) -> Speculative:
        if self.method == "draft" and not self.draft_model:
            raise ValueError("method draft needs draft_model (a catalogue name or config.json)")
        return self


class Batching(_Spec):
    mode: Literal["continuous", "static"] = Field(
        "continuous", description="continuous (iteration-level, vLLM-style) or static (whole batches, padded)"
    )
    max_num_seqs: int = Field(256, ge=1, description="most sequences in one step")
    max_num_batched_tokens: int = Field(8192, ge=1, description="most tokens (prefill + decode) in one step")
    chunked_prefill: bool = Field(
        True,
        description="split long prompts into chunks and mix them with decodes (False: prefill-first steps)",
    )


class Memory(_Spec):
    block_size: int = Field(16, ge=1, le=1024, description="tokens per paged-KV block")
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1.0, description="fraction of GPU memory the engine may use"
    )
    runtime_reserved_gib: float = Field(
        1.0, ge=0, description="memory held by the runtime (CUDA context, workspaces, CUDA graphs) per GPU"
    )
    max_model_len: int | None = Field(
        None,
        ge=1,
        description="longest prompt + output allowed (default: the model's max_position_embeddings)",
    )
    # recompute is what continuous batching does here (vLLM v1 dropped swapping too); none is static
    # batching's (an engine profile's `preemption`, e.g. transformers' generate): each batch holds its
    # padded KV from the start, a request that cannot get blocks waits for the next batch, nobody is evicted
    preemption: Literal["recompute", "none"] = Field(
        "recompute",
        description="recompute: when KV blocks run out, the newest running request is evicted and later "
        "recomputed; none (static batching only): a request that cannot get KV blocks waits, never preempted",
    )


class Precision(_Spec):
    weight_dtype: Dtype = Field(
        "bf16", description="weight storage: bf16, fp16, fp8, int8, int4 (weight-only)"
    )
    kv_dtype: KvDtype = Field("bf16", description="KV-cache storage: bf16, fp16, fp8")


class Caching(_Spec):
    prefix_caching: bool = Field(
        False, description="share KV blocks of identical prompt prefixes (hashed blocks, LRU eviction)"
    )


class Admission(_Spec):
    scheduling_policy: Literal["fcfs", "priority"] = Field(
        "fcfs", description="fcfs, or priority: classes with higher priority are admitted and kept first"
    )
    max_queue_len: int | None = Field(
        None, description="refuse a request when this many are already queued (>= 1; unset: no limit)"
    )
    queue_timeout_s: float | None = Field(
        None, gt=0, description="drop a request still queued (never started) after this long"
    )

    @field_validator("max_queue_len")
    @classmethod
    def _room_to_wait(cls, n: int | None) -> int | None:
        # every arrival waits in the queue until the next step, even at an idle server (as in vLLM),
        # so a queue of 0 would refuse every request
        if n is not None and n < 1:
            raise ValueError(
                f"{n} would refuse every request (each arrival waits in the queue for the next step, even "
                "at an idle server); use 1 or more, or leave it unset for no limit"
            )
        return n


class Serving(_Spec):
    batching: Batching = Field(default_factory=Batching, description="how requests are batched into steps")
    memory: Memory = Field(default_factory=Memory, description="GPU memory and the paged KV cache")
    precision: Precision = Field(default_factory=Precision, description="storage types of weights and KV")
    caching: Caching = Field(default_factory=Caching, description="KV reuse across requests")
    admission: Admission = Field(default_factory=Admission, description="queue order and admission control")
    speculative: Speculative | None = Field(None, description="speculative decoding (off when unset)")
    cuda_graphs: Literal["full", "decode_only", "none"] = Field(
        "full",
        description="full: every step's kernel launches are hidden (vLLM's piecewise or full CUDA graphs); "
        "decode_only: steps with prompt tokens launch eagerly and take at least the profile's "
        "eager_launch_s_per_layer times the layers (this project's engine, engine/serving.py); none: every "
        "step does (an engine with its own host terms, e.g. transformers, has its launches in them)",
    )
    async_scheduling: bool = Field(
        False,
        description="prepare the next decode step while the GPU runs this one (vLLM's --async-scheduling; "
        "engine/serving.py with serve(async_scheduling=True)): a decode-only step takes the longer of its GPU "
        "work and the loop's host terms instead of their sum; steps with prompt tokens still wait",
    )

    def merged(self, over: Serving) -> Serving:
        """These settings with the fields `over` sets replacing them (a sub-block field by field)."""
        data = self.model_dump()
        for name in over.model_fields_set:
            value = getattr(over, name)
            if name in SERVING_BLOCKS:
                data[name] |= value.model_dump(include=value.model_fields_set)
            else:
                data[name] = over.model_dump(include={name})[name]
        return Serving.model_validate(data)


SERVING_BLOCKS = ("batching", "memory", "precision", "caching", "admission")


# ---------------------------------------------------------------- replicas, disaggregation, response cache
class ReplicaGroup(_Spec):
    gpu: str | None = Field(None, description="GPU profile of these replicas (default: hardware.gpu)")
    gpus_per_replica: int | None = Field(
        None, ge=1, description="GPUs per model copy (default: hardware.gpus_per_replica)"
    )
    count: int = Field(1, ge=1, description="how many replicas of this kind")
    price_per_gpu_hour_usd: float | None = Field(None, ge=0, description="override the profile's price")
    serving: Serving = Field(
        default_factory=Serving,
        description="serving settings of these replicas; the fields given here replace the scenario's `serving`",
    )


class Startup(_Spec):
    """How long a new replica takes before it serves: weights read from storage, engine start, CUDA graphs."""

    # effective read rates of vLLM's default safetensors loader, bytes per second / 1e9:
    #  local_nvme 1.8: Llama-2-7b (13.5 GB) from NVMe in 7.29 s, 13b (26 GB) in 16.04 s on an A100, and
    #    in 14.35 s over TP=2: the disk's rate, shared by a replica's GPUs (vllm-project/vllm PR #10647,
    #    the safetensors column);
    #  network_volume 1.0: an AWS EBS gp3 volume's throughput limit, 1,000 MiB/s (AWS CreateVolume API docs);
    #  page_cache 7.0: Llama-70B-FP8 (70 GB) "~10s to load weights from hot page cache" on TP=8
    #    (vllm-project/vllm issue #19824)
    storage: Literal["local_nvme", "network_volume", "page_cache"] = Field(
        "local_nvme", description="where weights are read from: local_nvme, network_volume, page_cache"
    )
    load_gb_per_s: float | None = Field(
        None, gt=0, le=1000, description="GB/s the weights load at (default: the storage tier's)"
    )
    # vllm-project/vllm issue #20264 (a 3.4 GiB model, torch.compile cache reused): 59 s from start to the
    # first response, of which 0.9 s loading weights and 17 s capturing CUDA graphs
    engine_start_s: float = Field(
        41.0, ge=0, le=86400, description="process start, compile-cache load, memory profiling, API server"
    )
    cuda_graph_capture_s: float = Field(
        17.0,
        ge=0,
        le=86400,
        description="CUDA-graph capture (vLLM issue #20264: 17 s; 60 s for a 70B, #19824)",
    )


LOAD_GB_PER_S = {"local_nvme": 1.8, "network_volume": 1.0, "page_cache": 7.0}  # see Startup above


class Autoscaling(_Spec):
    min_replicas: int = Field(1, ge=1, le=10_000, description="replicas always held")
    max_replicas: int = Field(
        ge=1, le=10_000, description="most replicas holding GPUs at once (draining included)"
    )
    initial_replicas: int | None = Field(
        None, ge=1, le=10_000, description="replicas ready at the start (default: min_replicas)"
    )
    policy: Literal["utilisation", "queue", "slo"] = Field(
        "utilisation",
        description="utilisation: offered req/s over the window ÷ (replicas × replica_capacity_per_s) toward "
        "target_utilisation; queue: ongoing requests per replica toward target_ongoing_per_replica; slo: one "
        "replica more when a TTFT/TPOT percentile nears its SLO, one fewer when far below",
    )
    target_utilisation: float = Field(
        0.8, gt=0, le=1, description="utilisation: fraction of capacity to run at"
    )
    replica_capacity_per_s: float | None = Field(
        None,
        gt=0,
        description="utilisation: req/s one replica sustains under the SLOs (default: found by the "
        "planner's capacity search at the start of the run)",
    )
    target_ongoing_per_replica: float = Field(
        32.0,
        gt=0,
        description="queue: ongoing (queued + running) requests per replica (Ray Serve's "
        "target_ongoing_requests)",
    )
    slo_percentile: float = Field(90.0, ge=50, le=99.9, description="slo: the percentile watched")
    scale_up_at: float = Field(
        0.8, gt=0, le=1, description="slo: add a replica above this fraction of an SLO"
    )
    scale_down_at: float = Field(
        0.4, gt=0, lt=1, description="slo: remove one below this fraction of every SLO"
    )
    window_s: float = Field(60.0, gt=0, le=86400, description="the metric is averaged over this window")
    interval_s: float = Field(15.0, gt=0, le=3600, description="the autoscaler decides this often")
    # Kubernetes HPA's default stabilization windows: 0 s up, 300 s down
    scale_up_delay_s: float = Field(
        0.0, ge=0, le=86400, description="scale up only once the need has lasted this long"
    )
    scale_down_delay_s: float = Field(
        300.0, ge=0, le=86400, description="scale down only once the surplus has lasted this long"
    )
    startup: Startup = Field(default_factory=Startup, description="a new replica's start-up time")

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})"
            )
        n = self.initial_replicas
        if n is not None and not self.min_replicas <= n <= self.max_replicas:
            raise ValueError(f"initial_replicas ({n}) must be between min_replicas and max_replicas")
        if self.scale_down_at >= self.scale_up_at:
            raise ValueError("scale_down_at must be below scale_up_at, or the fleet flaps")
        return self


class Cluster(_Spec):
    replicas: int = Field(
        1, ge=1, description="identical replicas of `hardware` and `serving` behind the router"
    )
    groups: list[ReplicaGroup] | None = Field(
        None,
        min_length=1,
        description="heterogeneous replicas instead: groups with their own GPUs and settings",
    )
    router: Literal["round_robin", "least_outstanding", "prefix_affinity"] = Field(
        "least_outstanding",
        description="round_robin; least_outstanding (fewest tokens in flight); prefix_affinity (same prefix, "
        "same replica; least_outstanding for requests without one)",
    )
    max_ongoing_requests: int | None = Field(
        None,
        ge=1,
        description="per replica; further requests wait in one FIFO queue at the router (unset: no router queue)",
    )

    autoscaling: Autoscaling | None = Field(
        None, description="replicas added and removed with the load (unset: a fixed fleet)"
    )

    @model_validator(mode="after")
    def _one_form(self) -> Cluster:
        if self.groups and self.replicas != 1:
            raise ValueError("give cluster.replicas or cluster.groups, not both")
        if self.autoscaling is not None and (self.groups or self.replicas != 1):
            raise ValueError(
                "autoscaling: give the fleet's size as autoscaling.min_replicas/max_replicas (one kind of "
                "replica), not cluster.replicas or cluster.groups"
            )
        if self.autoscaling is not None and self.max_ongoing_requests is not None:
            raise ValueError(
                "autoscaling: a router queue (max_ongoing_requests) is not modelled with autoscaling; unset it"
            )
        return self


class KvLink(_Spec):
    # one 400 Gb/s NDR InfiniBand / ConnectX-7 NIC per instance (NVIDIA ConnectX-7 datasheet)
    bandwidth_gbps: float = Field(50.0, gt=0, description="GB/s (bytes) of one KV-transfer link")
    latency_s: float = Field(ge=0, description="fixed time added to every transfer (network and setup)")
    per: Literal["prefill_replica", "pool"] = Field(
        "prefill_replica", description="one link per prefill replica, or one link shared by the whole pool"
    )


class Disaggregation(_Spec):
    prefill: ReplicaGroup = Field(description="the prefill pool: its GPUs, count and serving settings")
    decode: ReplicaGroup = Field(description="the decode pool: its GPUs, count and serving settings")
    link: KvLink = Field(description="how prompt KV goes from a prefill replica to a decode replica")
    local_prefill_max_tokens: int = Field(
        0,
        ge=0,
        description="conditional disaggregation: prompts of at most this many tokens are prefilled on the "
        "decode replica itself (0: every prompt goes to the prefill pool)",
    )


class ResponseCache(_Spec):
    kind: Literal["exact", "semantic"] = Field(
        "exact", description="exact-match or semantic (embedding) cache"
    )
    hit_rate: float = Field(ge=0, le=1, description="fraction of requests answered from the cache")
    lookup_latency_s: float = Field(ge=0, description="added to every request, hit or miss")


class HostedApi(_Spec):
    name: str = Field("hosted API", description="label for the comparison")
    usd_per_1m_input: float = Field(ge=0, description="price per million input tokens")
    usd_per_1m_output: float = Field(ge=0, description="price per million output tokens")


class Output(_Spec):
    dir: str = Field(
        "results",
        description="folder for summary.json, requests.csv, timeline.csv, inside the current folder "
        "(write elsewhere with --out)",
    )
    per_request_csv: bool = Field(True, description="write one CSV row per request")

    @field_validator("dir")
    @classmethod
    def _inside(cls, d: str) -> str:
        # a scenario file may come from someone else: it must not choose where on disk results land
        if not d.strip():
            raise ValueError("is empty; name a folder, e.g. results/my-run")
        p = PurePath(d)
        if d.startswith("~") or p.is_absolute() or PureWindowsPath(d).anchor or ".." in p.parts:
            raise ValueError(
                f"{d!r} leaves the current folder; use a relative path inside it (e.g. results/my-run), "
                "or pass --out DIR on the command line"
            )
        return d


class Scenario(_Spec):
    name: str = Field("scenario", description="label used in reports and output file names")
    seed: int = Field(0, ge=0, description="every random choice flows from this seed")
    model: str = Field("llama-3.1-8b", description="catalogue name or path to a Hugging Face config.json")
    hardware: Hardware = Field(
        default_factory=Hardware, description="which GPUs serve the model, and their price"
    )
    serving: Serving = Field(default_factory=Serving, description="how the engine batches and stores KV")
    engine: str = Field(
        "ours",
        description="the serving engine: a profile name (`python -m simulator engines` lists them) or a .yaml "
        "path; its scheduling settings are the defaults of `serving`, and its host time and kernels cost the steps",
    )
    workload: Workload = Field(description="the traffic: arrivals and prompt/output lengths")
    slo: Slo = Field(default_factory=Slo, description="latency targets for goodput (unset: no target)")
    cluster: Cluster = Field(default_factory=Cluster, description="replicas behind a router (default: one)")
    disaggregation: Disaggregation | None = Field(
        None, description="separate prefill and decode pools with KV transfer (unset: colocated)"
    )
    response_cache: ResponseCache | None = Field(None, description="a response cache in front of the model")
    hosted_api: HostedApi | None = Field(None, description="a hosted API's prices to compare cost with")
    output: Output = Field(default_factory=Output, description="where result files go")

    @model_serializer(mode="wrap")
    def _echo(self, handler):  # noqa: ANN001, ANN202
        # a scenario that names no engine is echoed as before engines existed (its results are too)
        data = handler(self)
        if "engine" not in self.model_fields_set and isinstance(data, dict):
            data.pop("engine", None)
        return data


DEFAULT_SCENARIO = {
    "name": "default-llama-3.1-8b-h100-conversation",
    "seed": 0,
    "model": "llama-3.1-8b",
    "hardware": {"gpu": "h100-sxm"},
    "serving": {"batching": {"mode": "continuous", "max_num_seqs": 256, "max_num_batched_tokens": 8192}},
    "workload": {
        "trace": "conversation",
        "arrival": {"process": "trace"},
        "prompt_tokens": {"dist": "trace"},
        "output_tokens": {"dist": "trace"},
    },
    "slo": {"ttft_s": 0.5, "tpot_s": 0.05},
    "output": {"dir": "results/default"},
}


def parse_scenario(data: object, source: str = "scenario") -> Scenario:
    """Validate a scenario mapping; errors become one line naming the field. Oversized runs are refused."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a scenario must be a YAML mapping (got {type(data).__name__})")
    data = upgraded(data, source)
    try:
        sc = Scenario.model_validate(data)
    except ValidationError as e:
        raise one_line(e, source) from None
    sc = resolve_engine(sc, source)
    check_size(sc, source)
    return sc


# ---------------------------------------------------------------- the previous release's flat `serving`
# each flat `serving` key of the previous release → where it lives now (accepted, and reported, for one
# release); moe_routing_skew leaves `serving`: expert popularity is a property of the traffic
SERVING_RENAMED: dict[str, str] = {
    "batching": "batching.mode",
    "max_num_seqs": "batching.max_num_seqs",
    "max_num_batched_tokens": "batching.max_num_batched_tokens",
    "chunked_prefill": "batching.chunked_prefill",
    "block_size": "memory.block_size",
    "gpu_memory_utilization": "memory.gpu_memory_utilization",
    "runtime_reserved_gib": "memory.runtime_reserved_gib",
    "max_model_len": "memory.max_model_len",
    "preemption": "memory.preemption",
    "weight_dtype": "precision.weight_dtype",
    "kv_dtype": "precision.kv_dtype",
    "prefix_caching": "caching.prefix_caching",
    "scheduling_policy": "admission.scheduling_policy",
    "max_queue_len": "admission.max_queue_len",
    "queue_timeout_s": "admission.queue_timeout_s",
    "moe_routing_skew": "workload.moe_routing_skew",
}
# the sub-block each field of a `serving` sub-block lives in, to point a misplaced key to its block
FIELD_BLOCK: dict[str, str] = {
    f: b for b in SERVING_BLOCKS for f in Serving.model_fields[b].annotation.model_fields
}


class RenamedField(FutureWarning):
    """A field given under its previous name: accepted for one release, reported on stderr."""


def _renamed(old: str, new: str, source: str) -> None:
    msg = f"{source}: {old} → {new} (renamed; the old name is accepted until the next release)"
    warnings.warn(msg, RenamedField, stacklevel=3)


def _old_key(key: object, value: object) -> bool:
    # `batching` is both a previous flat key (a string) and a sub-block now (a mapping)
    return key in SERVING_RENAMED and not (key in SERVING_BLOCKS and isinstance(value, dict))


def _servings(data: dict) -> list[tuple[str, dict]]:
    """Every `serving` mapping of a scenario, with its dotted place: the scenario's, each group's, each pool's."""
    out = [("serving", data["serving"])] if isinstance(data.get("serving"), dict) else []
    groups = data.get("cluster", {}).get("groups") if isinstance(data.get("cluster"), dict) else None
    for i, g in enumerate(groups if isinstance(groups, list) else []):
        if isinstance(g, dict) and isinstance(g.get("serving"), dict):
            out.append((f"cluster.groups.{i}.serving", g["serving"]))
    dg = data.get("disaggregation")
    for pool in ("prefill", "decode") if isinstance(dg, dict) else ():
        if isinstance(dg.get(pool), dict) and isinstance(dg[pool].get("serving"), dict):
            out.append((f"disaggregation.{pool}.serving", dg[pool]["serving"]))
    return out


def upgraded(data: dict, source: str = "scenario") -> dict:
    """`data` with each previous-release flat `serving` key moved to its place now (a copy; each reported)."""
    if not any(_old_key(k, v) for _, sv in _servings(data) for k, v in sv.items()):
        _check_blocks(data, source)
        return data
    data = copy.deepcopy(data)
    for where, sv in _servings(data):
        # the old `batching` string first: its name is the block the other batching keys go into
        for key in sorted((k for k, v in sv.items() if _old_key(k, v)), key=lambda k: k != "batching"):
            value = sv.pop(key)
            block, name = SERVING_RENAMED[key].split(".")
            if block == "workload":
                node, new = data.setdefault("workload", {}), "workload.moe_routing_skew"
            else:
                node, new = sv.setdefault(block, {}), f"{where}.{block}.{name}"
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: {new.rpartition('.')[0]}: must be a mapping; give its fields")
            if name in node and node[name] != value:
                raise ConfigError(
                    f"{source}: {where}.{key}: given as {short_repr(value)} and as {new} = "
                    f"{short_repr(node[name])}; keep only {new}"
                )
            node[name] = value
            _renamed(f"{where}.{key}", new, source)
    _check_blocks(data, source)
    return data


def _check_blocks(data: dict, source: str) -> None:
    """A field of a `serving` sub-block given in the wrong place is one line naming where it goes."""
    for where, sv in _servings(data):
        for key, value in sv.items():
            if key in FIELD_BLOCK and key not in Serving.model_fields:
                raise _misplaced(source, where, f"{where}.{key}", key)
            if key not in SERVING_BLOCKS or not isinstance(value, dict):
                continue
            for name in value:
                if name in FIELD_BLOCK and FIELD_BLOCK[name] != key:
                    raise _misplaced(source, where, f"{where}.{key}.{name}", name)


def _misplaced(source: str, where: str, given: str, name: str) -> ConfigError:
    """The one line for a sub-block field given at `given`: the block it belongs in, and where to write it."""
    block = FIELD_BLOCK[name]
    return ConfigError(
        f"{source}: {given}: unknown field; it belongs in the {block} block: write {where}.{block}.{name}"
    )


def renamed_path(path: str, source: str) -> str:
    """A dotted field path (--set, a search's sweep) with a previous-release `serving` key spelled as now."""
    parts = path.split(".")
    for i in range(len(parts) - 1):
        key = parts[i + 1]
        if parts[i] != "serving" or key not in SERVING_RENAMED or (key == "batching" and len(parts) > i + 2):
            continue
        new = SERVING_RENAMED[key].split(".")
        new = (new if new[0] == "workload" else parts[: i + 1] + new) + parts[i + 2 :]
        _renamed(path, ".".join(new), source)
        return ".".join(new)
    return path


def _mean_length(d: Length) -> float:
    """Mean of a length distribution (the clipped lognormal's unclipped mean, capped at its max)."""
    if isinstance(d, Fixed):
        return d.value
    if isinstance(d, Uniform):
        return (d.min + d.max) / 2
    if isinstance(d, Lognormal):
        return min(d.median * math.exp(d.sigma**2 / 2), d.max)
    if isinstance(d, Exponential):
        return d.mean
    return 1.0


def estimated_requests(w: Workload) -> tuple[float, str] | None:
    """(requests the workload will generate, how that was estimated), from its fields alone; None: the
    trace's own length decides (it is read later). No arrays are drawn: this runs before generation."""
    if w.num_requests is not None:
        return float(w.num_requests), ""
    own = [c.schedule.peak_rate_per_s for c in w.classes or [] if c.schedule is not None]
    rate = w.schedule.peak_rate_per_s if w.schedule is not None else w.arrival.rate_per_s
    if own:  # classes with their own schedules add their peaks (all of them: no shared rate)
        rate = (rate if len(own) < len(w.classes) else 0.0) + sum(own)
    if w.duration_s is None or rate is None:
        return None
    n = rate * w.duration_s  # (with a schedule: its peak rate, an upper bound)
    how = f"{rate:g} req/s{' (the schedule peak)' if w.schedule or own else ''} x {w.duration_s:g} s"
    if w.classes and any(c.session for c in w.classes):
        total = sum(c.share for c in w.classes)
        turns = sum(c.share * (_mean_length(c.session.turns) if c.session else 1) for c in w.classes) / total
        n, how = n * turns, how + f" x {turns:.3g} turns per conversation"
    return n, how


def replica_count(sc: Scenario) -> int:
    """Replicas the cluster simulates (every group and pool)."""
    if sc.disaggregation is not None:
        return sc.disaggregation.prefill.count + sc.disaggregation.decode.count
    if sc.cluster.groups:
        return sum(g.count for g in sc.cluster.groups)
    return sc.cluster.autoscaling.max_replicas if sc.cluster.autoscaling else sc.cluster.replicas


def check_size(sc: Scenario, source: str = "scenario") -> None:
    """Refuse (one line, with the estimate, the limit and the override) a run too big to simulate here."""
    est = estimated_requests(sc.workload)
    if est is not None:
        field = "workload.num_requests" if sc.workload.num_requests is not None else "workload.duration_s"
        MAX_REQUESTS.check(est[0], f"{source}: {field}", est[1])
    MAX_REPLICAS.check(replica_count(sc), f"{source}: cluster")


def load_scenario(path: str | Path | None) -> Scenario:
    """Read a scenario YAML file; None gives the built-in default."""
    if path is None:
        return parse_scenario(DEFAULT_SCENARIO, "default scenario")
    p = Path(path)
    data = read_yaml(p, "scenario file", mapping=False)
    return parse_scenario(data, str(p))


def apply_overrides(data: dict, overrides: list[str], source: str = "scenario") -> dict:
    """Apply `a.b.c=value` overrides (values parsed as YAML) to a scenario mapping (in the layout of now)."""
    data = upgraded(data, source) if overrides else data
    for item in overrides:
        key, eq, raw = item.partition("=")
        where = f"--set {short_repr(item)}"
        parts = renamed_path(key.strip(), "--set").split(".")
        if not eq or not all(parts):
            raise ConfigError(
                f"{where}: must look like field.path=value; e.g. serving.batching.max_num_seqs=128"
            )
        _check_path(parts, where)
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: {part} is not a section; set the whole section or a field in it")
        node[parts[-1]] = parse_yaml(raw, f"{where}: value")
    return data


def _check_path(parts: list[str], where: str) -> None:
    """A dotted override path must name scenario fields (down to the first list or free-form value)."""
    model: type[BaseModel] | None = Scenario
    for i, part in enumerate(parts):
        if model is None:
            return  # inside a list or a union of specs: pydantic checks the value as a whole
        if part not in model.model_fields:
            inner = FIELD_BLOCK if model is Serving else {}  # a sub-block's field named one level up
            near = difflib.get_close_matches(part, [*model.model_fields, *inner], n=1)
            near = [f"{inner[n]}.{n}" if n in inner else n for n in near]
            hint = f"did you mean {near[0]}? " if near else ""
            section = ".".join(parts[:i]) or "a scenario"
            raise ConfigError(
                f"{where}: {section} has no field {part!r}; {hint}`python -m simulator run --help` lists the fields"
            )
        model = _submodel_only(model.model_fields[part].annotation)


def _submodel_only(ann) -> type[BaseModel] | None:
    """The one spec class a field holds (X or X | None), else None."""
    models = [
        a for a in (ann, *getattr(ann, "__args__", ())) if isinstance(a, type) and issubclass(a, BaseModel)
    ]
    return models[0] if len(models) == 1 else None


def field_help(model: type[BaseModel] = Scenario, prefix: str = "", seen: dict | None = None) -> list[str]:
    """One line per field, nested, for `run --help`; a block met again (a group's `serving`) points back."""
    lines, seen = [], {} if seen is None else seen
    for name, f in model.model_fields.items():
        ann = f.annotation
        sub = _submodel(ann)
        path = f"{prefix}{name}"
        if sub is not None and sub not in (Fixed,):
            if sub in seen and sub.model_fields:
                lines.append(f"  {path}: {f.description or ''} (the fields of {seen[sub]}, above)")
                continue
            seen.setdefault(sub, path)
            lines.append(f"  {path}: {f.description or ''}".rstrip())
            lines += field_help(sub, path + ".", seen)
            continue
        default = "" if f.is_required() else f" [default: {_show_default(f)}]"
        lines.append(f"  {path}: {f.description or ''}{default}")
    return lines


def _submodel(ann) -> type[BaseModel] | None:
    for cand in (ann, *getattr(ann, "__args__", ())):
        if isinstance(cand, type) and issubclass(cand, BaseModel):
            return cand
    return None


def _show_default(f) -> str:
    if f.default_factory is not None:
        v = f.default_factory()
        return v.model_dump_json(exclude_defaults=False) if isinstance(v, BaseModel) else repr(v)
    return repr(f.default)


LENGTH_HELP = """\
  length distributions (prompt_tokens, output_tokens), chosen by `dist`:
    {dist: fixed, value: N}
    {dist: uniform, min: A, max: B}
    {dist: lognormal, median: M, sigma: S, min: 1, max: 1000000}
    {dist: exponential, mean: M}            geometric on 1, 2, ...
    {dist: trace}                           the trace's column (needs workload.trace)
  rate schedules (workload.schedule), chosen by `kind`; arrival.process draws under them:
    {kind: steps, steps: [{start_s: 0, rate_per_s: R0}, {start_s: T1, rate_per_s: R1}, ...]}
    {kind: daily, peak_rate_per_s: P, trough_rate_per_s: T, peak_hour: 14, shape: cosine}
    {kind: hourly, requests_per_hour: [N0, N1, ...]}   repeats after the last hour
    {kind: hourly, from_trace: TRACE, scale: 1.0}     a trace's own arrivals per hour (times scale)
  a traffic class may carry its own `schedule` (then its share does not apply; needs duration_s)"""
