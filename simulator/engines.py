"""The scenario's engine (issue 11): its profile's serving defaults under what the scenario sets itself, the
settings the engine cannot run refused in one line, and what a forecast says about the engine.

How each profile field is used is in core/engine_profile.py; the cost model applies host terms and kernel
factors (core/cost_model.py, `CostModel(..., engine=)`). A scenario that names no engine is left exactly as it
is (our engine's profile sets today's defaults and adds nothing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ValidationError

from core.engine_profile import EngineProfile, load_engine_profile, transferred
from core.errors import ConfigError, one_line

if TYPE_CHECKING:
    from simulator.scenario import Scenario, Serving


def engine_profile(sc: Scenario, source: str = "scenario") -> EngineProfile:
    """The profile `sc.engine` names; an unknown name is one line listing the known ones."""
    try:
        return load_engine_profile(sc.engine)
    except ConfigError as e:
        raise ConfigError(f"{source}: engine: {e}") from None


def named(sc: Scenario) -> bool:
    """Whether the scenario names its engine (else: ours, and every result as before engines existed)."""
    return "engine" in sc.model_fields_set


def with_defaults(serving: Serving, defaults: dict[str, object], source: str) -> Serving:
    """`serving` with each field of `defaults` (dotted paths) that the scenario did not set itself taken from them."""
    data = _under(serving.model_dump(exclude_unset=True), defaults)
    try:
        return type(serving).model_validate(data)
    except ValidationError as e:
        raise one_line(e, source, prefix="serving") from None


def serving_values(name: str, given: dict | None) -> dict:
    """A `serving` mapping with engine `name`'s defaults under the fields `given` sets (for a form to start from)."""
    given = {k: dict(v) if isinstance(v, dict) else v for k, v in (given or {}).items()}
    return _under(given, load_engine_profile(name).serving_defaults())


def _under(data: dict, defaults: dict[str, object]) -> dict:
    """`data` (changed in place) with each dotted path of `defaults` it does not set taken from them."""
    for path, value in defaults.items():
        *blocks, name = path.split(".")
        node = data
        for b in blocks:
            node = node.setdefault(b, {})
        node.setdefault(name, value)
    return data


def _servings(sc: Scenario) -> list[tuple[str, Serving]]:
    """Every serving setup the scenario runs, with its place: the scenario's, each group's, each pool's."""
    out = [("serving", sc.serving)]
    for i, g in enumerate(sc.cluster.groups or []):
        out.append((f"cluster.groups.{i}.serving", sc.serving.merged(g.serving)))
    if sc.disaggregation is not None:
        for pool in ("prefill", "decode"):
            g = getattr(sc.disaggregation, pool)
            out.append((f"disaggregation.{pool}.serving", sc.serving.merged(g.serving)))
    return out


def check_runnable(sc: Scenario, profile: EngineProfile | None, source: str) -> None:
    """Refuse, in one line naming the field, a setting the engine (None: ours, which runs every format and pads
    static batches) or the simulator cannot run."""
    for where, sv in _servings(sc):
        wd = sv.precision.weight_dtype
        if profile is not None and wd not in profile.kernels.quantized_weights:
            raise ConfigError(
                f"{source}: {where}.precision.weight_dtype: engine {profile.name} has no kernels for {wd} weights "
                f"(it runs {', '.join(profile.kernels.quantized_weights)}); use one of those, or another engine"
            )
        static = sv.batching.mode == "static"
        if static and profile is not None and not profile.scheduling.pad_static_batches:
            raise ConfigError(
                f"{source}: {where}.batching.mode: engine {profile.name} does not pad static batches and the "
                "simulator's static batches are padded to their longest prompt; use continuous batching, or "
                "an engine whose static batches are padded (transformers-generate)"
            )
        if sv.async_scheduling and profile is not None and not profile.host.gpu_profile_loop:
            raise ConfigError(
                f"{source}: {where}.async_scheduling: modelled for this project's serving loop only (engine "
                f"{profile.name}'s host terms were fitted on its own runs, whose scheduling they already hold); "
                "remove it, or use engine: ours"
            )
        if sv.async_scheduling and sv.speculative is not None:
            raise ConfigError(
                f"{source}: {where}.async_scheduling: not with speculative decoding (the engine waits for every "
                "speculative round, and async rounds are not modelled); leave one of them off"
            )
        if sv.async_scheduling and sv.cuda_graphs == "none":
            raise ConfigError(
                f"{source}: {where}.async_scheduling: needs decode steps on CUDA graphs (cuda_graphs: full or "
                "decode_only): an eager step's host is busy launching its kernels"
            )
        if sv.memory.preemption == "none" and not static:
            raise ConfigError(
                f"{source}: {where}.memory.preemption: none needs static batching (each batch's KV is held "
                "from the start, so nothing is ever preempted); continuous batching preempts when blocks run "
                "out: use recompute"
            )


def resolve_engine(sc: Scenario, source: str = "scenario") -> Scenario:
    """The scenario with its engine's serving defaults under the fields it sets itself, checked runnable."""
    if not named(sc):
        check_runnable(sc, None, source)
        return sc
    profile = engine_profile(sc, source)
    sc = sc.model_copy(update={"serving": with_defaults(sc.serving, profile.serving_defaults(), source)})
    check_runnable(sc, profile, source)
    return sc


def validation_line(profile: EngineProfile) -> str:
    """The expected error a forecast with this engine carries: the profile's held-out checks, in one line."""
    v = profile.validation
    if v is None:
        if profile.host.gpu_profile_loop:
            return "validated with each GPU profile (its calibration and fidelity tables are this engine's)"
        return "unvalidated"
    kinds: dict[str, list[float]] = {}
    for m in v.metrics:
        kinds.setdefault(m.metric.split(" (")[0], []).append(m.median_abs_pct)
    parts = [
        f"{k} {min(e):.3g}–{max(e):.3g}% ({len(e)} checks)" if len(e) > 1 else f"{k} {e[0]:.3g}%"
        for k, e in kinds.items()
    ]
    return "held-out median |error|: " + "; ".join(parts) + f" ({v.table})"


def engine_summary(profile: EngineProfile, gpu: str) -> dict:
    """summary["engine"]: which engine, measured where, used on which GPU, and its expected error."""
    v = profile.validation
    return {
        "name": profile.name,
        "display_name": profile.display_name,
        "engine": profile.engine,
        "version": profile.version,
        "status": profile.status,
        "measured_on": profile.gpu,
        "transferred": transferred(profile, gpu),
        "validation": validation_line(profile),
        "validation_metrics": [m.model_dump() for m in v.metrics] if v is not None else [],
    }


def engine_line(profile: EngineProfile, gpu: str) -> str:
    """The summary's engine line for a terminal or a page."""
    where = f"{profile.status} on {profile.gpu}" if profile.gpu else profile.status
    about = profile.display_name + ("" if profile.version in profile.display_name else f" {profile.version}")
    line = f"engine: {profile.name} ({about}; {where}); {validation_line(profile)}"
    moved = transferred(profile, gpu)
    return line + (f"\n{moved}" if moved else "")
