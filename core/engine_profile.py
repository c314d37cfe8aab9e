"""Engine profiles: what a serving stack does on a GPU, as opposed to what the GPU does (DESIGN.md).

A profile is one YAML file in `engine_profiles/`, looked up by its short name (`ours`, `transformers`).
Every figure names its source (a key of `sources`: measured, published or estimated), and a fitted
profile carries the errors of its held-out rows under `validation`.

How the simulator uses each field (the wiring of issue 11; `ours` reproduces today's behaviour exactly):

- `scheduling`: the defaults of the scenario's `serving` block for the fields it maps to — `policy`
  gives `batching.mode` and `batching.chunked_prefill` (`serving_defaults()`, by path), `max_num_seqs`,
  `max_num_batched_tokens` (under `batching`), `block_size`, `preemption` (under `memory`) and `cuda_graphs`
  keep their names. Fields a scenario sets itself win (simulator/engines.py). `preemption: none` is static
  batching's: a batch holds its padded KV from the start, a request that cannot get blocks waits for a later
  batch, nobody is evicted (a scenario asking for it with continuous batching is refused).
  `pad_static_batches` says whether a static batch runs every prompt padded to its longest (the
  simulator's static loop always pads; a profile that does not is refused until the loop can).
- `host`: a step of `n` sequences with `p` prompt tokens pays, on top of the cost model's GPU time,
  `per_step_s + n · per_sequence_s + p · per_prompt_token_s`, times the model's `num_layers` when
  `per_layer` (`host_time()`). With `gpu_profile_loop: true` the step also pays the GPU profile's fitted
  serving-loop terms (`serving_step_s`, `serving_per_sequence_s`, `serving_prompt_step_s` and, for
  `cuda_graphs: decode_only`, `eager_launch_s_per_layer`): they were measured on our engine's loop, so
  only `ours` sets it; then `CostModel(..., serving_host=True)` as today. With `false`,
  `CostModel(..., serving_host=False)` and these three terms are the engine's whole host time (launches
  of an eager engine included: `cuda_graphs: none` adds no launch floor).
  `overlap` (optional): the host terms run alongside the GPU's kernels, a step taking the longer of the two
  plus `overlap.serial_s` (transformers' `generate`). `phases` (optional): the host time's level drifts over wall time and stalls now and then (transformers'
  manager); the continuous loop then costs each step alone and scales its host time by a seeded draw.
- `kernels`: each operation group's time from the GPU profile's fitted curves is multiplied by its
  factor (`gemm`, `attention_prefill` — the fresh-prompt kernel too —, `attention_decode`,
  `elementwise`); 1.0 is the GPU profile's own kernels. `attention_layout: packed` replaces the step's
  per-sequence attention (prefill and decode groups) by one attention of Q × K pairs, Q the step's
  tokens and K every sequence's context plus its new tokens, each padded (`packed_sizes`), costed with
  the GPU profile's prefill-attention curve times `attention_prefill` (core/cost_model.py's
  `packed_attention_time`, which calibrate/engine_fit.py fits with). `quantized_weights` lists the
  weight formats the engine has kernels for: a scenario asking for another is refused with that list.
- `gpu`: the GPU profile the figures were measured or fitted on; `transferred()` says when a scenario's
  GPU differs, and the forecast then reports the profile as transferred (used as is, not re-fitted).
- `validation`: the expected error a forecast with this engine reports ("unvalidated" when absent).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.errors import ConfigError, one_line, read_yaml
from core.kv_cache import padded
from core.resources import shipped

# The shipped engine profiles: the checkout's engine_profiles/, or the installed package's copy of it.
ENGINE_DIR = shipped("engine_profiles")
DEFAULT_ENGINE = "ours"

EngineFamily = Literal["ours", "transformers", "vllm", "sglang", "tensorrt-llm"]
# the simulator's batching policies (core/scheduler.py): continuous batching with chunked prefill
# (vLLM V1), continuous batching whose steps are all prompts or all decodes, prompts first (vLLM V0),
# and static batches run to completion (`generate`)
Policy = Literal["chunked", "prefill_first", "static"]
WeightFormat = Literal[
    "bf16", "fp16", "fp8", "int8", "int4"
]  # the scenario's serving.precision.weight_dtype values


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# ---------------------------------------------------------------- sources
class Measured(_Strict):
    """A figure measured (or fitted to runs) on a GPU: how to run it again and where the raw runs are."""

    kind: Literal["measured"]
    command: str = Field(min_length=1, description="the command that measured or fitted it")
    date: str = Field(min_length=1, description="when (ISO date)")
    gpu: str = Field(min_length=1, description="the GPU it ran on (as the device reports it)")
    raw: list[str] = Field(min_length=1, description="the raw files it was read or fitted from")


class Published(_Strict):
    """A figure read from someone else's publication."""

    kind: Literal["published"]
    url: str = Field(min_length=1)
    table: str = Field(min_length=1, description="which table, figure or line of it")


class Estimated(_Strict):
    """A figure nobody measured: why this value."""

    kind: Literal["estimated"]
    why: str = Field(min_length=1)


Source = Annotated[Measured | Published | Estimated, Field(discriminator="kind")]


class Figure(_Strict):
    """A number with the key of its source in the profile's `sources`."""

    value: float = Field(ge=0)
    source: str = Field(min_length=1, description="a key of `sources`")


# ---------------------------------------------------------------- the engine's parts
class Scheduling(_Strict):
    """The engine's batching policy and its defaults (the scenario's `serving` fields of the same names)."""

    policy: Policy = Field(description="chunked, prefill_first or static (core/scheduler.py)")
    max_num_seqs: int = Field(ge=1, description="most sequences in one step (static: in one batch)")
    max_num_batched_tokens: int = Field(ge=1, description="most tokens in one step (the chunk budget)")
    block_size: int = Field(ge=1, le=1024, description="tokens per paged-KV block")
    preemption: Literal["recompute", "swap", "none"] = Field(
        description="what happens when KV blocks run out (none: the engine never preempts)"
    )
    pad_static_batches: bool = Field(
        description="static batches run every prompt padded to the batch's longest (policy static)"
    )
    cuda_graphs: Literal["full", "decode_only", "none"] = Field(
        description="full: every step's launches hidden; decode_only: steps with prompt tokens launch "
        "eagerly; none: every step eager (its launch time is inside the host terms)"
    )
    source: str = Field(min_length=1, description="a key of `sources`")

    @field_validator("policy", mode="before")
    @classmethod
    def _one_continuous(cls, v: object) -> object:
        if v == "continuous":  # the scenario's word for both continuous policies; here each has its name
            raise ValueError(
                "'continuous' is two policies here; give chunked (prompt chunks share steps with decodes, "
                "vLLM V1) or prefill_first (steps of prompts or of decodes, prompts first, vLLM V0)"
            )
        return v


class OperatorCount(_Strict):
    """Operators an engine dispatches in one decode forward of an architecture: per_layer * layers + per_forward."""

    per_layer: float = Field(gt=0)
    per_forward: float = Field(
        description="embedding, final norm, LM head, masks (a first dense layer's "
        "difference from the others folded in, so it may be negative)"
    )


class OperatorCounts(_Strict):
    """An eager engine's host time follows the operators it launches (calibrate/operator_count.py): a model's
    layers count as its operators per forward over those of the layer the host terms were fitted per."""

    reference_per_layer: float = Field(gt=0, description="operators of one layer of the fitted model")
    models: dict[str, OperatorCount] = Field(min_length=1, description="by the config's model_type")
    source: str = Field(min_length=1, description="a key of `sources`")

    def layers(self, model_type: str, num_layers: int) -> float:
        """The model's operators per forward, in layers of the fitted model."""
        c = self.models.get(model_type)
        if c is None:
            raise ConfigError(
                f"engine host terms: no operator count for model_type {model_type!r} (counted: "
                f"{', '.join(sorted(self.models))}); run python -m calibrate.operator_count with transformers "
                "installed and fit the profile again, or use another engine"
            )
        return (c.per_layer * num_layers + c.per_forward) / self.reference_per_layer


class HostPhases(_Strict):
    """An engine's host time drifting over wall time: each step's host time (`host_time()`) is multiplied by
    exp(x(t)), x an Ornstein-Uhlenbeck process (mean `log_mean`, stationary spread `log_std`, correlation time
    `correlation_s`) drawn from the scenario's seed, and a step pays a stall of `stall_s` with probability
    1 - exp(-stall_rate_per_s x its seconds) (simulator/host_phases.py; fitted by calibrate/host_phases.py)."""

    log_mean: float = Field(ge=-2.0, le=2.0, description="mean of the log multiplier on the host terms")
    log_std: float = Field(ge=0.0, le=2.0, description="stationary standard deviation of the log multiplier")
    correlation_s: float = Field(
        gt=0.0, le=3600.0, description="seconds over which the multiplier keeps its level"
    )
    stall_rate_per_s: float = Field(ge=0.0, le=10.0, description="stalls per second of serving")
    stall_s: float = Field(ge=0.0, le=60.0, description="seconds one stall adds to its step")
    source: str = Field(min_length=1, description="a key of `sources`")

    def mean_multiplier(self) -> float:
        """The long-run mean of exp(x): what the host terms are scaled by on average."""
        return math.exp(self.log_mean + self.log_std**2 / 2)


class HostOverlap(_Strict):
    """The host's launches run ahead of the GPU's kernels (an eager engine launches asynchronously): a step takes
    the longer of its GPU time and its host terms, plus `serial_s` that overlaps nothing (the wait for the step's
    tokens, sampling, the loop's own bookkeeping)."""

    serial_s: Figure = Field(description="seconds per step outside the overlap (not per layer)")


class HostTime(_Strict):
    """Time a step spends outside the GPU's kernels, seconds."""

    per_step_s: Figure
    per_sequence_s: Figure = Field(description="per sequence in the step")
    per_prompt_token_s: Figure = Field(description="per prompt token in the step")
    per_layer: bool = Field(
        description="the three terms are per model layer (multiplied by the model's num_layers): an eager "
        "engine issues every layer's kernels from Python, so its host time grows with the layers"
    )
    gpu_profile_loop: bool = Field(
        description="also pay the GPU profile's serving-loop terms (our engine's, measured by calibrate); "
        "true only for ours"
    )
    operators: OperatorCounts | None = Field(
        None,
        description="per_layer: count each model's layers by the operators it launches (its architecture's "
        "count over the fitted layer's); absent: by num_layers",
    )
    overlap: HostOverlap | None = Field(
        None,
        description="the host terms overlap the GPU's time (a step takes the longer); absent: they add to it",
    )
    phases: HostPhases | None = Field(
        None,
        description="the host time's drift over wall time and its stalls; absent: every step as the terms say",
    )


class Kernels(_Strict):
    """Kernel-efficiency factors relative to the GPU profile's fitted curves (time multipliers, 1.0 = same)."""

    gemm: float = Field(1.0, gt=0)
    attention_prefill: float = Field(1.0, gt=0)
    attention_decode: float = Field(1.0, gt=0)
    elementwise: float = Field(1.0, gt=0)
    quantized_weights: list[WeightFormat] = Field(
        description="weight formats the engine has kernels for (bf16 and fp16 included when it runs them)"
    )
    attention_layout: Literal["per_sequence", "packed"] = Field(
        description="per_sequence: each sequence attends to its own context (flash/paged kernels); packed: all "
        "of a step's queries attend to all of its keys in one masked dense attention (transformers' paged sdpa)"
    )
    q_padding_tokens: int = Field(1, ge=1, description="packed: queries padded up to a multiple of this")
    kv_padding_tokens: int = Field(1, ge=1, description="packed: keys padded up to a multiple of this")
    source: str = Field(min_length=1, description="a key of `sources`")

    def packed_sizes(self, q_tokens: int, kv_tokens: int) -> tuple[int, int]:
        """(queries, keys) of a packed attention over a step's `q_tokens` new tokens and `kv_tokens` keys."""
        return padded(q_tokens, self.q_padding_tokens), padded(kv_tokens, self.kv_padding_tokens)


class MetricError(_Strict):
    """Held-out error of one predicted quantity."""

    metric: str = Field(description="what was predicted, e.g. 'step_s (replay)'")
    rows: int = Field(ge=1)
    median_abs_pct: float = Field(ge=0)
    worst_pct: float = Field(description="the signed error of the worst row, percent")
    worst_row: str


class LoadCheck(_Strict):
    """One run the profile was checked on (never fitted), with the load it ran at: a band checked at full load
    says nothing of a forecast at a few users, where per-step host terms and kernel factors weigh differently."""

    run: str = Field(min_length=1, description="the run checked")
    batch: float = Field(gt=0, description="mean sequences a step of the run, as simulated with this profile")
    errors_pct: dict[str, float] = Field(
        min_length=1, description="signed error per compared metric (vLLM's names), percent"
    )
    table: str = Field(min_length=1, description="the file with the run's rows")
    note: str = ""


class Validation(_Strict):
    """How the profile was checked on rows it was not fitted to."""

    held_out: str = Field(description="which rows were held out, and what was fitted on")
    metrics: list[MetricError] = Field(min_length=1)
    table: str = Field(description="the file with the row-by-row table")
    loads: list[LoadCheck] = Field(
        default_factory=list,
        description="each checked run with its load (mean sequences a step): the band of a forecast far from "
        "every one of them is shown as outside the checked load, or taken from the nearest check",
    )


class EngineProfile(_Strict):
    name: str = Field(min_length=1)
    display_name: str = Field(min_length=1)
    engine: EngineFamily
    version: str = Field(min_length=1, description="the engine's version the figures hold for")
    gpu: str | None = Field(
        description="GPU profile the figures were measured or fitted on; null: they do not depend on it"
    )
    status: Literal["measured", "published", "estimated"]
    date: str = Field(min_length=1)
    scheduling: Scheduling
    host: HostTime
    kernels: Kernels
    sources: dict[str, Source] = Field(min_length=1, description="where each figure comes from, by key")
    validation: Validation | None = None
    notes: str = ""

    def host_time(
        self, num_layers: int, seqs: int, prompt_tokens: int, model_type: str | None = None
    ) -> float:
        """This engine's host seconds for one step of `seqs` sequences with `prompt_tokens` prompt tokens, for a
        model of `num_layers` layers (the GPU profile's serving-loop terms, when `gpu_profile_loop`, not included);
        with `host.operators` the model's `model_type` is needed (its layers are counted by their operators)."""
        h = self.host
        t = h.per_step_s.value + seqs * h.per_sequence_s.value + prompt_tokens * h.per_prompt_token_s.value
        return t * self.host_layers(num_layers, model_type) if h.per_layer else t

    def host_layers(self, num_layers: int, model_type: str | None = None) -> float:
        """What the per-layer host terms multiply by: `num_layers`, or with `host.operators` the model's operators
        per forward in layers of the fitted model."""
        ops = self.host.operators
        if ops is None:
            return float(num_layers)
        if model_type is None:
            raise ConfigError(
                f"engine {self.name}: its host terms count operators; give the model's model_type"
            )
        return ops.layers(model_type, num_layers)

    def serving_defaults(self) -> dict[str, object]:
        """The scenario `serving` fields this profile sets the defaults of, by their paths there (`batching.mode`)."""
        s = self.scheduling
        return {
            "batching.mode": "static" if s.policy == "static" else "continuous",
            "batching.chunked_prefill": s.policy == "chunked",
            "batching.max_num_seqs": s.max_num_seqs,
            "batching.max_num_batched_tokens": s.max_num_batched_tokens,
            "memory.block_size": s.block_size,
            "memory.preemption": s.preemption,
            "cuda_graphs": s.cuda_graphs,
        }


def _source_refs(p: EngineProfile) -> list[tuple[str, str]]:
    """(field, source key) of every figure and block that names a source."""
    refs = [("scheduling.source", p.scheduling.source), ("kernels.source", p.kernels.source)]
    for f in ("per_step_s", "per_sequence_s", "per_prompt_token_s"):
        refs.append((f"host.{f}.source", getattr(p.host, f).source))
    if p.host.operators is not None:
        refs.append(("host.operators.source", p.host.operators.source))
    if p.host.overlap is not None:
        refs.append(("host.overlap.serial_s.source", p.host.overlap.serial_s.source))
    if p.host.phases is not None:
        refs.append(("host.phases.source", p.host.phases.source))
    return refs


def check_sources(p: EngineProfile) -> None:
    """Every source key a figure names exists in `sources` (one line naming the first that does not)."""
    for where, key in _source_refs(p):
        if key not in p.sources:
            raise ConfigError(
                f"{where}: {key!r} is not in `sources` (it has {', '.join(sorted(p.sources))}); "
                f"add a `{key}` entry to `sources` or name one of those"
            )


def parse_engine_profile(data: object, source: str) -> EngineProfile:
    """An engine profile from plain data (a YAML file's), checked; errors are one line naming `source`."""
    try:
        p = EngineProfile.model_validate(data)
    except ValidationError as e:
        raise one_line(e, source) from None
    try:
        check_sources(p)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return p


def read_engine_profile(path: Path) -> EngineProfile:
    return parse_engine_profile(read_yaml(path, "engine profile"), str(path))


# ---------------------------------------------------------------- lookup
def engine_dirs() -> list[Path]:
    """Where engine profiles are looked up, first match wins: ./engine_profiles, then the shipped ones."""
    here = Path.cwd() / "engine_profiles"
    return [here] if here.resolve() == ENGINE_DIR.resolve() else [here, ENGINE_DIR]


def engine_names() -> list[str]:
    """Every engine profile name that can be loaded."""
    return sorted({p.stem for d in engine_dirs() for p in d.glob("*.yaml")})


def load_engine_profile(name_or_path: str = DEFAULT_ENGINE) -> EngineProfile:
    """An engine profile by short name (./engine_profiles, then the shipped ones) or a .yaml path."""
    p = Path(name_or_path).expanduser()
    if p.suffix in (".yaml", ".yml"):
        if not p.exists():
            raise ConfigError(f"engine profile {str(p)!r} does not exist")
        return read_engine_profile(p)
    for d in engine_dirs():
        f = d / f"{name_or_path.lower()}.yaml"
        if f.is_file():
            return read_engine_profile(f)
    raise ConfigError(
        f"engine {name_or_path!r} has no profile; use one of {', '.join(engine_names())} or a .yaml path"
    )


def transferred(profile: EngineProfile, gpu_name: str) -> str | None:
    """None when the profile holds on `gpu_name` as measured (same GPU, or GPU-independent); else the line a
    forecast shows: the profile is used as is on another GPU than it was measured on."""
    if profile.gpu is None or profile.gpu.lower() == gpu_name.lower():
        return None
    return (
        f"engine {profile.name}: {profile.status} on {profile.gpu}, used on {gpu_name}: transferred "
        "(host terms and kernel factors as measured there, not re-fitted)"
    )


def write_engine_profile(profile: EngineProfile, path: Path, header: str = "") -> None:
    """Write a profile as YAML (fields in declaration order), after a `# ` comment header if given; the file
    appears whole or not at all (written beside it, then renamed)."""
    check_sources(profile)
    data = profile.model_dump(mode="json", exclude_none=True)
    if "validation" in data and not data["validation"]["loads"]:
        del data["validation"]["loads"]  # (no load checks: the file as before they existed)
    text = "".join(f"# {ln}\n" for ln in header.splitlines()) + yaml.safe_dump(
        data, sort_keys=False, width=110, allow_unicode=True
    )
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text)
    tmp.replace(path)
