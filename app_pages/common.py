"""Widgets and cached calls the pages share. Inputs in, the simulator's public API, results drawn; no modelling."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import tempfile
import threading
import time
import types
import typing
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import pandas as pd
import streamlit as st
import yaml
from pydantic import BaseModel

from core.errors import ConfigError, parse_yaml, yaml_from_bytes
from simulator import api
from simulator.breakdown import BREAKDOWN_HEAD, BREAKDOWN_NOTE, breakdown_rows, step_breakdown
from simulator.deploy import vllm_serve
from simulator.fit import FIT_HEAD, fit_cells, what_fits
from simulator.metrics import capacity, capacity_line
from simulator.plots import timeline
from simulator.report import LATENCY_HEAD, build_report, latency_rows
from simulator.scenario import HostedApi, RenamedField, Scenario, Slo, Workload, upgraded

UPLOADS = Path(tempfile.gettempdir()) / "inferplan-uploads"
# the scenario sections with widgets of their own (extra_sections draws the rest)
HANDLED = {"name", "seed", "model", "hardware", "serving", "engine", "workload", "slo", "hosted_api"}
HANDLED.add("output")


# ---------------------------------------------------------------- cached simulator calls
_FORECASTS: OrderedDict[str, api.Forecast] = OrderedDict()
_FORECASTS_LOCK = threading.Lock()
FORECASTS_KEPT = 128


def cached_forecast(scenario_json: str, progress: Callable[[float], None] | None = None) -> api.Forecast:
    """A forecast, cached by the scenario (its canonical JSON); `progress` is told the share of the arrival
    window simulated. (Not st.cache_data: that replays the elements a cached call drew, and a progress bar
    drawn from outside the call cannot be replayed.)"""
    with _FORECASTS_LOCK:
        if scenario_json in _FORECASTS:
            _FORECASTS.move_to_end(scenario_json)
            return _FORECASTS[scenario_json]
    f = api.portable(api.simulate(api.parse_scenario(json.loads(scenario_json)), progress=progress))
    with _FORECASTS_LOCK:
        _FORECASTS[scenario_json] = f
        while len(_FORECASTS) > FORECASTS_KEPT:
            _FORECASTS.popitem(last=False)
    return f


@st.cache_data(show_spinner=False, max_entries=32)
def cached_curve(
    scenario_json: str, rates: tuple[float, ...], attainment: float = 0.9, window_s: float | None = None
) -> api.LoadCurve:
    return api.latency_vs_load(json.loads(scenario_json), rates, attainment, window_s)


@st.cache_data(show_spinner=False, max_entries=64)
def cached_capacity(scenario_json: str) -> dict:
    """summary["capacity"] of a forecast (simulator.metrics.capacity), cached by the scenario."""
    f = cached_forecast(scenario_json)
    return capacity(f.scenario, f.summary)


def with_capacity(f: api.Forecast) -> api.Forecast:
    """The forecast with its capacity in the summary (so summary.json and the report carry it)."""
    if f.fits and "capacity" not in f.summary:
        with st.spinner("Finding the highest rate within the SLOs …"):
            f.summary["capacity"] = cached_capacity(key_of(f.scenario.model_dump(mode="json")))
    return f


def show_capacity(f: api.Forecast) -> None:
    """Offered load against the highest rate this configuration sustains within its SLOs."""
    cap = f.summary.get("capacity")
    if not cap:
        return
    if "skipped" in cap:
        st.caption(f"Capacity not computed: {cap['skipped']}")
        return
    cols = st.columns(3)
    cols[0].metric("capacity within SLOs (req/s)", f"{cap['max_rate_per_s']:.2f}")
    load = cap["offered_load_fraction"]
    cols[1].metric(
        "offered load (req/s)",
        "—" if cap["offered_per_s"] is None else f"{cap['offered_per_s']:.2f}",
        None if load is None else (f"{1 - load:.0%} headroom" if load < 1 else "over capacity"),
        delta_color="off",
    )
    cols[2].metric("load / capacity", "—" if load is None else f"{load:.0%}")
    line = capacity_line(cap)
    st.caption(line[:1].upper() + line[1:])


@st.cache_data(show_spinner=False, max_entries=16)
def cached_report_html(scenario_json: str) -> str:
    return build_report(cached_forecast(scenario_json)).html


def key_of(data: dict) -> str:
    return json.dumps(data, sort_keys=True, default=str)


def validate(data: dict, label: str = "scenario") -> Scenario | None:
    """The scenario, or None after an in-page error naming the field (renamed fields noted in the page)."""
    try:
        with renames_shown():
            return api.parse_scenario(data, label)
    except ConfigError as e:
        st.error(local_names(str(e)))
        return None


@contextlib.contextmanager
def renames_shown() -> Iterator[None]:
    """Fields given by their previous names (accepted for one release) as in-page notes, one per field."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RenamedField)
        yield
    for w in caught:
        if issubclass(w.category, RenamedField):
            st.info(f"renamed: {local_names(str(w.message))}")
        else:  # any other warning goes where it would have gone
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def scenario_of_now(data: dict, label: str) -> dict:
    """A loaded scenario in the layout of now (renamed fields noted in the page); as given after an error."""
    try:
        with renames_shown():
            return upgraded(data, label)
    except ConfigError as e:
        st.error(local_names(str(e)))
        return data


def merged(a: dict, b: dict) -> dict:
    """`a` with `b`'s fields over it, a sub-mapping field by field."""
    return a | {
        k: merged(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v for k, v in b.items()
    }


def run_forecast(data: dict, label: str = "scenario") -> api.Forecast | None:
    """Validate and simulate (cached) with a spinner; any failure is an in-page message, not a traceback."""
    sc = validate(data, label)
    if sc is None:
        return None
    bar = st.progress(0.0, text=f"Simulating {sc.name} …")
    t0 = time.perf_counter()

    def progress(done: float) -> None:  # the share of the arrival window simulated, with the time left
        el = time.perf_counter() - t0
        left = f", about {el / done * (1 - done):.0f} s left" if done > 0.05 and el > 1 else ""
        bar.progress(min(done, 1.0), text=f"Simulating {sc.name}: {done:.0%}{left}")

    try:
        return cached_forecast(key_of(sc.model_dump(mode="json")), progress)
    except ConfigError as e:
        st.error(f"{label}: {local_names(str(e))}")
    except Exception as e:  # noqa: BLE001 - the page must show a message, never a traceback
        st.error(f"{label}: could not simulate this setting ({type(e).__name__}: {local_names(str(e))})")
    finally:
        bar.empty()
    return None


def local_names(text: str) -> str:
    """`text` with every uploaded file named as the user named it, not by where the server keeps it."""
    return re.sub(re.escape(str(UPLOADS)) + r"/[0-9a-f]{16}/", "", text)


def local_files(files: dict[str, bytes]) -> dict[str, bytes]:
    """Downloads that name uploads by their file names (upload names are plain: see `upload_name`)."""
    return {k: local_names(v.decode()).encode() for k, v in files.items()}


def upload_name(name: str, suffix: str) -> str:
    """A plain file name for an upload: the client's name is untrusted (`../`, `/`, `\\`, odd characters),
    so only the last component's safe characters are kept, always ending in `suffix`."""
    base = re.sub(r"[^A-Za-z0-9._-]", "_", PurePosixPath(name.replace("\\", "/")).name).lstrip(".")[:100]
    if not base.endswith(suffix):
        base = (base.removesuffix(".") or "upload") + suffix
    return base if base != suffix else f"upload{suffix}"


def save_upload(upload, suffix: str) -> str:
    """Write an uploaded file where the simulator can read it by path (a folder named by its content)."""
    data = upload.getvalue()
    d = UPLOADS / hashlib.sha256(data).hexdigest()[:16]
    d.mkdir(parents=True, exist_ok=True)
    p = d / upload_name(upload.name, suffix)
    if p.resolve().parent != d.resolve():  # belt and braces: nothing lands outside its upload folder
        raise ConfigError(f"{upload.name!r}: not a plain file name; rename the file and upload it again")
    p.write_bytes(data)
    return str(p)


def read_yaml_upload(upload, what: str = "scenario file") -> dict | None:
    """An uploaded YAML mapping, checked as a file on disk is (size, encoding, aliases, duplicate keys);
    None after an in-page error."""
    try:
        return yaml_from_bytes(upload.getvalue(), upload_name(upload.name, ".yaml"), what)
    except ConfigError as e:
        st.error(local_names(str(e)))
        return None


def yaml_input(raw: str, name: str) -> object:
    """A value typed as YAML in a text box (None after an in-page error)."""
    try:
        return parse_yaml(raw, name)
    except ConfigError as e:
        st.error(str(e))
        return None


# ---------------------------------------------------------------- generic forms from the pydantic specs
def _unwrap(ann):
    """(inner annotation, optional?) for X | None."""
    args = typing.get_args(ann)
    if typing.get_origin(ann) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True  # noqa: UP007
    return ann, False


def _default(f):
    if f.default_factory is not None:
        v = f.default_factory()
        return v.model_dump(mode="json") if isinstance(v, BaseModel) else v
    return None if f.is_required() else f.default


def _models_in(ann) -> list[type[BaseModel]]:
    ann = typing.get_args(ann)[0] if typing.get_origin(ann) is typing.Annotated else ann
    return [a for a in typing.get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)]


def _discriminator(choices: list[type[BaseModel]]) -> str | None:
    """The Literal field every member of a union of specs has (pydantic's discriminator), if any."""
    if len(choices) < 2:
        return None
    common = set.intersection(*(set(c.model_fields) for c in choices))
    for name in sorted(common):
        if all(typing.get_origin(c.model_fields[name].annotation) is typing.Literal for c in choices):
            return name
    return None


# words and unit suffixes of field names, as a reader writes them
WORDS = {"gpu": "GPU", "gpus": "GPUs", "kv": "KV", "ttft": "TTFT", "tpot": "TPOT", "e2e": "E2E", "slo": "SLO",
         "api": "API", "cv": "CV", "num": "number of", "seqs": "sequences", "len": "length", "ids": "IDs"}  # fmt: skip
UNITS = (("_per_gpu_hour_usd", "USD per GPU-hour"), ("_per_1m_input", "USD per 1M input tokens"),
         ("_per_1m_output", "USD per 1M output tokens"), ("_per_s", "per s"), ("_s", "s"), ("_gib", "GiB"),
         ("_bytes", "bytes"), ("_usd", "USD"), ("_tokens", "tokens"))  # fmt: skip


def field_label(name: str) -> str:
    """A field's label: words with their capitals and the unit in brackets (`ttft_s` → "TTFT (s)")."""
    unit = ""
    for suffix, text in UNITS:
        if name.endswith(suffix) and name != suffix[1:]:
            name, unit = name[: -len(suffix)], f" ({text})"
            break
    words = [WORDS.get(w, w) for w in name.split("_") if w]
    if name.startswith("usd"):  # usd_per_1m_input: the unit is the whole label
        return unit.strip(" ()")
    text = " ".join(words)
    return text[:1].upper() + text[1:] + unit


def _bounds(f, kind: type, cur) -> dict:
    """The schema's bounds as a number box's min/max (none where the current value is already outside them,
    so that the schema's own message says what is wrong rather than the widget failing)."""
    lo = hi = None
    for m in f.metadata:
        if getattr(m, "ge", None) is not None:
            lo = m.ge
        elif getattr(m, "gt", None) is not None:
            lo = m.gt + 1 if kind is int else m.gt
        if getattr(m, "le", None) is not None:
            hi = m.le
        elif getattr(m, "lt", None) is not None:
            hi = m.lt - 1 if kind is int else None
    if cur is not None and ((lo is not None and cur < lo) or (hi is not None and cur > hi)):
        return {}
    return {"min_value": None if lo is None else kind(lo), "max_value": None if hi is None else kind(hi)}


def model_form(cls: type[BaseModel], values: dict | None, key: str, skip: tuple[str, ...] = ()) -> dict:
    """Widgets for every field of a pydantic spec, so fields added to the scenario appear by themselves."""
    values = values or {}
    out: dict = {}
    for name, f in cls.model_fields.items():
        if name in skip:
            continue
        ann, optional = _unwrap(f.annotation)
        cur = values.get(name, _default(f))
        k = f"{key}.{name}"
        label, hint = field_label(name), f.description
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            if optional and not st.checkbox(f"{label}", value=cur is not None, key=k + ".on", help=hint):
                continue
            with st.container(border=True):
                st.caption(label)
                out[name] = model_form(ann, cur if isinstance(cur, dict) else {}, k)
            continue
        choices = _models_in(ann)
        tag_field = _discriminator(choices)
        # a union of specs told apart by a Literal field, e.g. a length distribution
        if choices and tag_field:
            tags = [typing.get_args(c.model_fields[tag_field].annotation)[0] for c in choices]
            cur = cur if isinstance(cur, dict) else {}
            if optional and not st.checkbox(label, value=bool(cur), key=k + ".on", help=hint):
                continue
            at = tags.index(cur[tag_field]) if cur.get(tag_field) in tags else 0
            tag = st.selectbox(label, tags, index=at, key=f"{k}.{tag_field}", help=hint)
            sub = choices[tags.index(tag)]
            same = cur if cur.get(tag_field) == tag else {}
            out[name] = {tag_field: tag} | model_form(sub, same, f"{k}.{tag}", skip=(tag_field,))
            continue
        if typing.get_origin(ann) is typing.Literal:
            opts = list(typing.get_args(ann))
            out[name] = st.selectbox(
                label, opts, index=opts.index(cur) if cur in opts else 0, key=k, help=hint
            )
        elif ann is bool:
            out[name] = st.checkbox(label, value=bool(cur), key=k, help=hint)
        elif ann is int:
            cur = None if cur is None else int(cur)
            v = st.number_input(label, value=cur, step=1, key=k, help=hint, **_bounds(f, int, cur))
            if v is not None or not optional:
                out[name] = None if v is None else int(v)
        elif ann is float:
            cur = None if cur is None else float(cur)
            v = st.number_input(label, value=cur, format="%g", key=k, help=hint, **_bounds(f, float, cur))
            if v is not None or not optional:
                out[name] = v
        elif ann is str:
            v = st.text_input(label, value="" if cur is None else str(cur), key=k, help=hint)
            if v or not optional:
                out[name] = v
        else:  # anything else: YAML text
            raw = st.text_input(
                f"{label} (YAML)", value="" if cur is None else yaml.safe_dump(cur).strip(), key=k, help=hint
            )
            if raw.strip():
                out[name] = yaml_input(raw, name)
    return {k: v for k, v in out.items() if v is not None}


def extra_sections(base: dict, key: str) -> dict:
    """Forms for scenario sections this UI has no dedicated widgets for (added by newer simulator versions)."""
    out = {}
    for name, f in Scenario.model_fields.items():
        if name in HANDLED:
            continue
        ann, optional = _unwrap(f.annotation)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            if optional and not st.checkbox(
                name.replace("_", " "),
                value=base.get(name) is not None,
                key=f"{key}.{name}.on",
                help=f.description,
            ):
                continue
            st.caption(name.replace("_", " "))
            out[name] = model_form(ann, base.get(name) or _default(f), f"{key}.{name}")
        else:
            raw = st.text_input(
                f"{name} (YAML)",
                value=yaml.safe_dump(base[name]).strip() if name in base else "",
                key=f"{key}.{name}",
                help=f.description,
            )
            if raw.strip():
                out[name] = yaml_input(raw, name)
    return out


# ---------------------------------------------------------------- shared input blocks
def model_picker(key: str, default: str = "llama-3.1-8b") -> str | None:
    """A catalogue name, or the path of an uploaded config.json (None after an in-page error)."""
    source = st.radio("model from", ["catalogue", "upload config.json"], horizontal=True, key=f"{key}.src")
    names = api.catalogue_names()
    if source == "catalogue":
        if default not in names:  # e.g. an uploaded scenario naming a config.json on its author's disk
            st.warning(f"model {default!r} is not in the catalogue: pick one, or upload its config.json")
        return st.selectbox(
            "model", names, index=names.index(default) if default in names else 0, key=f"{key}.model"
        )
    up = st.file_uploader("Hugging Face config.json", type=["json"], key=f"{key}.upload")
    if up is None:
        st.info("Upload a config.json, or pick a catalogue model.")
        return None
    try:
        cfg = json.loads(up.getvalue())
        spec = api.spec_from_config(cfg, name=Path(up.name).stem, source=up.name)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        st.error(f"{up.name} is not valid JSON ({e})")
        return None
    except ConfigError as e:
        st.error(str(e))
        return None
    except Exception as e:  # noqa: BLE001
        st.error(f"{up.name}: not a model config the planner understands ({type(e).__name__}: {e})")
        return None
    st.caption(f"{spec.name}: {spec.param_count / 1e9:.2f}B parameters, {spec.num_layers} layers")
    return save_upload(up, ".json")


def gpu_picker(key: str, default: str = "h100-sxm", count: int = 1) -> dict:
    names = api.profile_names()
    if default not in names:  # e.g. an uploaded scenario naming a profile file on its author's disk
        st.warning(f"GPU {default!r} has no profile here: pick one")
    gpu = st.selectbox("GPU", names, index=names.index(default) if default in names else 0, key=f"{key}.gpu")
    status, validation = api.provenance(api.load_profile(gpu))
    st.caption(f"profile: {status}; validation: {validation} (python -m simulator gpus)")
    n = st.number_input("GPUs per replica", min_value=1, max_value=64, value=count, step=1, key=f"{key}.gpus")
    return {"gpu": gpu, "gpus_per_replica": int(n)}


def workload_picker(key: str, presets_only: bool = False) -> dict | None:
    """A workload mapping: a preset (with rate and request count), generated, or an uploaded trace."""
    modes = ["preset"] if presets_only else ["preset", "generated", "uploaded trace"]
    mode = st.radio("workload", modes, horizontal=True, key=f"{key}.mode")
    if mode == "preset":
        name = st.selectbox("preset", list(api.WORKLOADS), key=f"{key}.preset")
        w = json.loads(json.dumps(api.WORKLOADS[name]))
        rate = w["arrival"].get("rate_per_s")
        r = st.number_input(
            "arrival rate (req/s)",
            min_value=0.0,
            value=rate,
            format="%g",
            key=f"{key}.rate",
            help="empty: the trace's own arrival times",
        )
        if r:
            w["arrival"]["rate_per_s"] = float(r)
        n = st.number_input(
            "requests", min_value=1, max_value=1_000_000, value=w["num_requests"], step=50, key=f"{key}.n"
        )
        w["num_requests"] = int(n)
        return w
    if mode == "generated":
        return model_form(
            Workload,
            api.WORKLOADS["chat (Poisson, lognormal lengths)"] | {"trace": None},
            f"{key}.gen",
            skip=("trace",),
        )
    up = st.file_uploader(
        "trace (CSV, JSON or JSONL: arrival time, prompt and output token counts)",
        type=["csv", "json", "jsonl"],
        key=f"{key}.trace",
    )
    if up is None:
        st.info(
            "Upload a trace: vidur/splitwise CSV (arrived_at, num_prefill_tokens, num_decode_tokens), "
            "Azure CSV (TIMESTAMP, ContextTokens, GeneratedTokens) or Mooncake JSONL."
        )
        return None
    path = save_upload(up, next((x for x in (".jsonl", ".json") if up.name.lower().endswith(x)), ".csv"))
    own = st.checkbox("use the trace's arrival times", value=True, key=f"{key}.own")
    arrival = {"process": "trace"} if own else {"process": "poisson"}
    r = st.number_input(
        "arrival rate (req/s)",
        min_value=0.0,
        value=None if own else 2.0,
        format="%g",
        key=f"{key}.trate",
        help="with the trace's times: rescale them to this mean rate (empty: as recorded)",
    )
    if r:
        arrival["rate_per_s"] = float(r)
    n = st.number_input(
        "requests (empty: the trace's rows)", min_value=1, value=None, step=50, key=f"{key}.tn"
    )
    w = {
        "trace": path,
        "arrival": arrival,
        "prompt_tokens": {"dist": "trace"},
        "output_tokens": {"dist": "trace"},
    }
    if n:
        w["num_requests"] = int(n)
    return w


DEFAULT_SLO = {"ttft_s": 0.5, "tpot_s": 0.05}


def slo_picker(key: str, slo: dict | None = None) -> dict:
    """The SLOs, typed in ms; an empty box is no SLO on that latency. `slo` (seconds, as a scenario holds
    it) fills the boxes the first time; the mapping returned is in seconds."""
    slo = DEFAULT_SLO if slo is None else slo
    out = {}
    for name, f in Slo.model_fields.items():
        k = f"{key}.slo.{name}"
        if (
            k not in st.session_state
        ):  # (a box made with value=None can be emptied; its first value goes here)
            st.session_state[k] = None if slo.get(name) is None else float(slo[name]) * 1e3
        ms = st.number_input(
            f"{field_label(name[:-2])} SLO (ms)",
            value=None,
            min_value=0.0,
            format="%g",
            placeholder="none",
            key=k,
            help=f"{f.description}; empty: no SLO on it",
        )
        if ms is not None:
            out[name] = ms / 1e3
    return out


def hosted_api_picker(key: str, price: dict | None = None) -> dict | None:
    if not st.checkbox("compare with a hosted API price", value=price is not None, key=f"{key}.api.on"):
        return None
    return model_form(
        HostedApi,
        price or {"name": "hosted API", "usd_per_1m_input": 0.2, "usd_per_1m_output": 0.6},
        f"{key}.api",
    )


# ---------------------------------------------------------------- drawing a forecast
def latency_frame(f: api.Forecast) -> pd.DataFrame:
    return pd.DataFrame(latency_rows(f), columns=LATENCY_HEAD).set_index("latency (ms)")


def show_fit(f: api.Forecast, label: str = "") -> None:
    mem = f.summary["memory"]
    who = f"{label}: " if label else ""
    if f.fits:
        st.success(f"{who}Fits: {mem['explain']} ({mem['kv_tokens']:,} tokens of KV cache)")
    else:
        st.error(
            f"{who}Does not fit: {mem['explain']}. Try more GPUs per replica, a smaller weight dtype or a bigger GPU."
        )


def show_forecast(f: api.Forecast) -> None:
    """Headline numbers, latencies vs SLOs, timelines, cost, and downloads."""
    s = f.summary
    hw = s["hardware"]
    st.subheader(f"Forecast: {s['scenario']}")
    engine = s.get("engine")
    st.caption(
        f"{s['model']['name']} on {hw['gpus']}× {hw['display_name']} "
        f"({'calibrated' if hw['calibrated'] else 'datasheet'} profile, ${hw['price_per_gpu_hour_usd']:.2f}/GPU-hour)"
        + (f", engine {engine['display_name']} ({engine['validation']})" if engine else "")
    )
    if engine and engine["transferred"]:
        st.warning(engine["transferred"])
    if "expected_error" in s:  # how far the headline numbers below may be off, or "unvalidated"
        st.caption(s["expected_error"]["line"][:1].upper() + s["expected_error"]["line"][1:])
    show_fit(f)
    if f.fits and f.table is not None:
        show_capacity(f)
        t, g, c, kv, r = s["throughput"], s["goodput"], s["cost"], s["kv_cache"], s["requests"]
        cols = st.columns(5)
        cols[0].metric("throughput (req/s)", f"{t['requests_per_s']:.2f}")
        cols[1].metric("output tokens/s", f"{t['output_tokens_per_s']:,.0f}")
        cols[2].metric(
            "goodput (req/s)",
            f"{g['requests_per_s']:.2f}",
            f"{g['fraction']:.1%} meet SLOs",
            delta_color="off",
        )
        cols[3].metric("$ per 1M tokens", f"{c['usd_per_1m_tokens']:.3f}")
        cols[4].metric("KV peak occupancy", f"{kv['peak_occupancy']:.1%}")
        st.caption(
            f"{r['total']:,} requests: {r['finished']:,} finished, {r['rejected']:,} rejected, "
            f"{r['preemptions']:,} preemptions; ${c['usd_per_1m_input_tokens']:.3f} per 1M input and "
            f"${c['usd_per_1m_output_tokens']:.3f} per 1M output tokens"
        )
        if "hosted_api" in c:
            h = c["hosted_api"]
            st.info(
                f"vs {h['name']}: the same tokens cost ${h['same_tokens_usd']:.2f} there and ${c['total_usd']:.2f} "
                f"self-hosted ({h['self_hosted_over_api']:.2f}×)."
            )
        st.markdown("**Latency against the SLOs**")
        st.dataframe(latency_frame(f))
        missed = [row[0] for row in latency_rows(f) if row[-1] == "misses"]
        if missed:
            st.warning(f"p90 misses the SLO for: {', '.join(missed)}")
        show_breakdown(f)
        serve = vllm_serve(f.scenario)
        st.markdown("**Deploy with vLLM** (one replica)")
        st.code(serve.line, language="bash")
        for note in serve.notes:
            st.caption(note)
        tl = pd.DataFrame(timeline(f)).set_index("time_s")
        tl["KV blocks used (%)"] = tl["kv_occupancy"] * 100
        c1, c2 = st.columns(2)
        c1.markdown("**KV-cache occupancy over time**")
        c1.line_chart(tl[["KV blocks used (%)"]], x_label="time (s)", y_label="KV blocks used (%)")
        c2.markdown("**Queue length over time**")
        c2.line_chart(tl[["waiting", "running"]], x_label="time (s)", y_label="sequences")
    downloads(f)


def show_breakdown(f: api.Forecast) -> None:
    """Where the time goes: a typical prefill and decode step by operation group, as a table and a chart."""
    bd = step_breakdown(f)
    if bd is None:
        return
    with st.expander("Where the time goes", expanded=False):
        st.caption(BREAKDOWN_NOTE)
        table = pd.DataFrame(breakdown_rows(bd), columns=BREAKDOWN_HEAD)
        st.dataframe(table, hide_index=True, key="plan.breakdown")
        chart = pd.DataFrame(
            {kind: {g["label"]: g["time_s"] * 1e3 for g in step["groups"]} for kind, step in bd.items()}
        ).fillna(0.0)
        st.bar_chart(chart.T, horizontal=True, x_label="ms per step", y_label="step")


@st.cache_data(show_spinner=False, max_entries=16)
def cached_fit_table(model: str, context_tokens: int) -> pd.DataFrame:
    rows = what_fits(model, context_tokens=context_tokens)
    return pd.DataFrame([fit_cells(r) for r in rows], columns=FIT_HEAD)


def show_what_fits(model: str, key: str) -> None:
    """What fits: the model on every GPU profile × weight format × GPUs per replica (on request)."""
    if not st.toggle("What fits: this model on every GPU", key=f"{key}.fit.on"):
        return
    context = st.number_input(
        "context per sequence (tokens)", min_value=1, value=4096, step=512, key=f"{key}.fit.context"
    )
    table = cached_fit_table(model, int(context))
    gpus = st.multiselect("GPUs", sorted(set(table["GPU"])), key=f"{key}.fit.gpus", placeholder="all")
    shown = table[table["GPU"].isin(gpus)] if gpus else table
    st.dataframe(shown, hide_index=True, key=f"{key}.fit.table")
    st.caption(
        "max batch: sequences of that context the KV room holds at once; a setup that does not fit names "
        "the smallest change that would (`python -m simulator fit MODEL` prints the same table)."
    )


def downloads(f: api.Forecast) -> None:
    files = local_files(api.result_files(f))
    st.markdown("**Downloads**")
    cols = st.columns(len(files) + 1)
    mime = {".yaml": "application/yaml", ".json": "application/json", ".csv": "text/csv"}
    for col, (name, data) in zip(cols, files.items()):
        col.download_button(name, data, file_name=name, mime=mime[Path(name).suffix], key=f"dl.{name}")
    if f.fits and f.table is not None:
        sc_json = key_of(f.scenario.model_dump(mode="json"))
        if cols[-1].button("build HTML report", key="report.build"):
            with st.spinner("Simulating the load curve and drawing plots …"):
                st.session_state["report.html"] = (sc_json, cached_report_html(sc_json))
        got = st.session_state.get("report.html")
        if got and got[0] == sc_json:
            cols[-1].download_button(
                "report.html", local_names(got[1]), file_name="report.html", mime="text/html", key="dl.report"
            )
