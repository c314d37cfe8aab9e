"""Measured serving runs read from the files benchmark tools write: the workload they ran and what they measured.

Formats, recognised from the content (never the file name):

- vLLM `bench serve` / `benchmarks/benchmark_serving.py --save-result` JSON (vllm-project/vllm,
  benchmarks/benchmark_serving.py `main` and `benchmark`): `num_prompts`, `request_rate` ("inf" or a
  number), `burstiness` (gamma shape), `max_concurrency`, `completed`, `duration`, the throughputs and
  `{mean,median,std,pNN}_{ttft,tpot,itl,e2el}_ms`; with `--save-detailed` also per request `input_lens`,
  `output_lens`, `ttfts` (s), `itls` (s, a list per request) and `errors` ("" when it succeeded).
- GuideLLM benchmark report JSON (vllm-project/guidellm, src/guidellm/benchmark/benchmark.py):
  `benchmarks[]`, each with `args.strategy` (`type_` synchronous, concurrent with `streams`, throughput,
  constant or poisson with `rate`) and `requests.successful[]` carrying `prompt_tokens`, `output_tokens`,
  `start_time`, `first_token_time`, `last_token_time`, `end_time` (s since the epoch).
- AIPerf per-request records (`profile_export.jsonl`, one JSON object per line: `metadata.request_start_ns`,
  `metrics.{input_sequence_length,output_sequence_length,time_to_first_token,request_latency,
  inter_token_latency}` as `{value, unit}`, `error`), and the AIPerf / genai-perf summary
  (`profile_export_aiperf.json`, `profile_export_genai_perf.json`: metrics as `{unit, avg, p50, p90, p99}`,
  the load in `input_config`).
- This project's own `requests.csv` (simulator/results.py).

Every reader gives a `MeasuredRun`: the requests' lengths (each request's where the file has them, else the
means), the load the run offered (a rate with its burstiness, or a number of concurrent users), and the
measured metrics under vLLM's names, in ms and per second as vLLM writes them.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.errors import ConfigError, cut
from simulator.trace import jsonl_rows

FORMATS = (
    "a vLLM `bench serve` result JSON, a GuideLLM benchmark report JSON, an AIPerf profile_export.jsonl, "
    "an AIPerf/genai-perf profile_export JSON, or an inferplan requests.csv"
)
LATENCY_METRICS = ("ttft", "tpot", "itl", "e2el")
STATS = ("mean", "median", "p90", "p99")  # what `validate` compares; any pNN a file has is read
RATE_METRICS = ("request_throughput", "output_throughput", "total_token_throughput")


@dataclass(slots=True)
class MeasuredRun:
    """One measured run: what it served and what it measured."""

    source: str
    format: str
    model: str | None
    completed: int
    prompt_tokens: np.ndarray  # per request when the file has them, else one value: the mean
    output_tokens: np.ndarray
    per_request: bool  # lengths (and metrics) are per request
    rate_per_s: float | None  # None: every request sent at once (vLLM request_rate inf), or closed loop
    burstiness: float  # gamma shape of the gaps (vLLM --burstiness; 1 = Poisson)
    concurrency: int | None  # most requests in flight (vLLM --max-concurrency, GuideLLM concurrent streams)
    start_s: np.ndarray | None = None  # each request's send time from the first, where recorded
    ignore_eos: bool | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # vLLM names: mean_ttft_ms, request_throughput...
    notes: list[str] = field(default_factory=list)

    @property
    def mean_prompt_tokens(self) -> float:
        return float(np.mean(self.prompt_tokens))

    @property
    def mean_output_tokens(self) -> float:
        return float(np.mean(self.output_tokens))

    def load(self) -> str:
        """The offered load in words."""
        if self.concurrency is not None and self.rate_per_s is None:
            return f"{self.concurrency} concurrent users"
        if self.rate_per_s is None:
            return f"all {self.completed} requests at once"
        shape = "Poisson" if self.burstiness == 1 else f"gamma, burstiness {self.burstiness:g}"
        cap = f", at most {self.concurrency} in flight" if self.concurrency is not None else ""
        return f"{self.rate_per_s:g} req/s ({shape}){cap}"


# ---------------------------------------------------------------- metrics from per-request values
def latency_metrics(
    ttft_s: np.ndarray, tpot_s: np.ndarray, itl_s: np.ndarray, e2e_s: np.ndarray, percentiles=(50, 90, 99)
) -> dict[str, float]:
    """vLLM's latency keys (`mean_ttft_ms`, `median_ttft_ms`, `std_ttft_ms`, `p99_ttft_ms`...) from seconds,
    as benchmark_serving.py computes them (np.mean/median/std/percentile of the successful requests)."""
    out: dict[str, float] = {}
    for name, x in (("ttft", ttft_s), ("tpot", tpot_s), ("itl", itl_s), ("e2el", e2e_s)):
        x = np.asarray(x, dtype=float)
        x = x[np.isfinite(x)] * 1000.0
        if not len(x):
            continue
        out[f"mean_{name}_ms"] = float(np.mean(x))
        out[f"median_{name}_ms"] = float(np.median(x))
        with np.errstate(over="ignore", invalid="ignore"):  # (a run of 1e300 s latencies: std is inf)
            out[f"std_{name}_ms"] = float(np.std(x))
        for p in percentiles:
            out[f"p{p_word(p)}_{name}_ms"] = float(np.percentile(x, p))
    return out


def p_word(p: float) -> str:
    return str(int(p)) if int(p) == p else str(p)  # benchmark_serving.py's key spelling


def throughput_metrics(completed: int, in_tok: float, out_tok: float, duration_s: float) -> dict[str, float]:
    return {
        "duration": duration_s,
        "completed": completed,
        "total_input_tokens": in_tok,
        "total_output_tokens": out_tok,
        "request_throughput": completed / duration_s,
        "output_throughput": out_tok / duration_s,
        "total_token_throughput": (in_tok + out_tok) / duration_s,
    }


# ---------------------------------------------------------------- reading
def read_measured(path: str | Path) -> list[MeasuredRun]:
    """Every run in a measured-run file (a GuideLLM report may hold several: `report.json#2` picks the third);
    one line if none can be read."""
    p = Path(path).expanduser()
    pick = None
    if not p.exists() and "#" in p.name:
        name, _, k = p.name.rpartition("#")
        if k.isdigit():
            p, pick = p.with_name(name), int(k)
    src = str(p)
    if not p.is_file():
        raise ConfigError(f"{src}: no such file; give {FORMATS}")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{src}: not UTF-8 text; give {FORMATS}") from None
    runs = parse_measured(text, src)
    if runs is None:
        raise ConfigError(f"{src}: not a measured run in a format read here; give {FORMATS}")
    if pick is not None:
        if pick >= len(runs):
            raise ConfigError(
                f"{src}#{pick}: the file holds {len(runs)} run(s), numbered from 0; pick one of them"
            )
        return [runs[pick]]
    return runs


def one_run(path: str | Path) -> MeasuredRun:
    """The one run of a file (a report of several needs `#K` to pick one)."""
    runs = read_measured(path)
    if len(runs) > 1:
        raise ConfigError(
            f"{runs[0].source.rpartition('#')[0]}: holds {len(runs)} benchmarks "
            f"({', '.join(r.load() for r in runs[:4])}{'...' if len(runs) > 4 else ''}); "
            f"name one as FILE#K (K from 0 to {len(runs) - 1})"
        )
    return runs[0]


def parse_measured(text: str, src: str) -> list[MeasuredRun] | None:
    """The runs in `text`, or None when it is in none of the measured formats (then it may be a plain trace)."""
    head = text.lstrip()[:1]
    if head == "{":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            if e.msg == "Extra data":  # JSON Lines
                return _jsonl(text, src)
            if _looks_measured(text):
                raise ConfigError(
                    f"{src}: cut short or not JSON (line {e.lineno}: {e.msg}); give the whole file the benchmark wrote"
                ) from None
            return None
        except (ValueError, RecursionError):
            return None
        if not isinstance(data, dict):
            return None
        if "num_prompts" in data and ("request_throughput" in data or "input_lens" in data):
            return [_vllm(data, src)]
        if isinstance(data.get("benchmarks"), list):
            return _guidellm(data, src)
        if isinstance(data.get("time_to_first_token"), dict) or isinstance(
            data.get("request_throughput"), dict
        ):
            return [_aiperf_summary(data, src)]
        if isinstance(data.get("metrics"), dict) and isinstance(data.get("metadata"), dict):
            return _jsonl(text, src)
        return None
    if text.startswith(("request_id,", "request_id;")) and "first_token_s" in text.split("\n", 1)[0]:
        return [_inferplan_csv(text, src)]
    return None


def _looks_measured(text: str) -> bool:
    head = text[:4096]
    return any(k in head for k in ('"num_prompts"', '"benchmarks"', '"time_to_first_token"', '"metrics"'))


def _num(v: object, where: str) -> float:
    if v is None:
        raise ConfigError(f"{where}: missing; give the whole file the benchmark wrote")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(
            f"{where}: {cut(repr(v), 40)} is not a finite number; give the file the benchmark wrote"
        )
    return float(v)


def _list(data: dict, key: str, n: int | None, src: str) -> list:
    v = data.get(key)
    if not isinstance(v, list):
        raise ConfigError(
            f"{src}: {key}: missing or not a list; rerun with --save-detailed, or give the file whole"
        )
    if n is not None and len(v) != n:
        raise ConfigError(
            f"{src}: {key}: {len(v)} values where input_lens has {n}; give the file the benchmark wrote"
        )
    return v


def _vllm(data: dict, src: str) -> MeasuredRun:
    """A vLLM bench serve result (benchmark_serving.py writes request_rate as the string "inf" when unbounded)."""
    rate_raw = data.get("request_rate", "inf")
    if rate_raw in ("inf", None) or (isinstance(rate_raw, float) and math.isinf(rate_raw)):
        rate = None
    else:
        rate = _num(rate_raw, f"{src}: request_rate")
        if rate <= 0:
            raise ConfigError(
                f"{src}: request_rate: {rate:g} is not a rate; give the file the benchmark wrote"
            )
    burst = _num(data.get("burstiness", 1.0) or 1.0, f"{src}: burstiness")
    conc = data.get("max_concurrency")
    conc = int(_num(conc, f"{src}: max_concurrency")) if conc is not None else None
    model = data.get("model_id") if isinstance(data.get("model_id"), str) else None
    ignore_eos = data.get("ignore_eos") if isinstance(data.get("ignore_eos"), bool) else None
    notes: list[str] = []
    if "input_lens" in data:
        ins = _list(data, "input_lens", None, src)
        n = len(ins)
        outs = _list(data, "output_lens", n, src)
        ttfts = _list(data, "ttfts", n, src)
        itls = _list(data, "itls", n, src)
        errors = data.get("errors") if isinstance(data.get("errors"), list) else [""] * n
        ok = [i for i in range(n) if not errors[i] and outs[i] and outs[i] > 0]
        if not ok:
            raise ConfigError(
                f"{src}: no successful request (every one has an error or no output); nothing to compare"
            )
        if len(ok) < n:
            notes.append(f"{n - len(ok)} of {n} requests returned an error or no tokens and are left out")
        p = np.array([_num(ins[i], f"{src}: input_lens[{i}]") for i in ok])
        o = np.array([_num(outs[i], f"{src}: output_lens[{i}]") for i in ok])
        ttft = np.array([_num(ttfts[i], f"{src}: ttfts[{i}]") for i in ok])
        gaps = [np.asarray(itls[i], dtype=float) for i in ok]
        itl = np.concatenate(gaps) if gaps else np.zeros(0)
        decode = np.array([g.sum() for g in gaps])
        with np.errstate(invalid="ignore", divide="ignore"):
            tpot = np.where(o > 1, decode / (o - 1), np.nan)
        e2e = ttft + decode  # the last chunk's time from the send (benchmark_serving.py's latency)
        metrics = latency_metrics(ttft, tpot, itl, e2e)
        duration = _num(data.get("duration"), f"{src}: duration")
        metrics |= throughput_metrics(len(ok), float(p.sum()), float(o.sum()), duration)
        metrics |= _file_metrics(data)  # vLLM's own figures where it wrote them (same data, its arithmetic)
        run = MeasuredRun(src, "vLLM bench serve (--save-detailed)", model, len(ok), p.astype(np.int64),
                          o.astype(np.int64), True, rate, burst, conc, None, ignore_eos, metrics, notes)  # fmt: skip
    else:
        completed = int(_num(data.get("completed"), f"{src}: completed"))
        if completed < 1:
            raise ConfigError(f"{src}: completed: no successful request; nothing to compare")
        tin = _num(data.get("total_input_tokens"), f"{src}: total_input_tokens")
        tout = _num(data.get("total_output_tokens"), f"{src}: total_output_tokens")
        metrics = _file_metrics(data)
        notes.append(
            "no per-request lengths (run without --save-detailed): every request at the run's mean lengths"
        )
        run = MeasuredRun(src, "vLLM bench serve", model, completed, np.array([round(tin / completed)]),
                          np.array([round(tout / completed)]), False, rate, burst, conc, None, ignore_eos,
                          metrics, notes)  # fmt: skip
    if data.get("duration") is not None:
        run.metrics["duration"] = _num(data["duration"], f"{src}: duration")
    return run


def _file_metrics(data: dict) -> dict[str, float]:
    metrics = {k: float(v) for k, v in data.items() if _metric_key(k) and isinstance(v, (int, float))}
    goodput = data.get("request_goodput", data.get("request_goodput:"))  # (an old version's key had a colon)
    if isinstance(goodput, (int, float)) and not isinstance(goodput, bool):
        metrics["request_goodput"] = float(goodput)
    return metrics


def _metric_key(k: str) -> bool:
    if k in RATE_METRICS or k in ("duration", "completed", "total_input_tokens", "total_output_tokens"):
        return True
    parts = k.split("_")
    return len(parts) == 3 and parts[1] in LATENCY_METRICS and parts[2] == "ms"


GUIDELLM_REQUEST_FIELDS = ("prompt_tokens", "output_tokens", "start_time", "first_token_time", "end_time")


def _guidellm(data: dict, src: str) -> list[MeasuredRun]:
    runs = []
    if not data["benchmarks"]:
        raise ConfigError(f"{src}: benchmarks: empty; give a report with at least one benchmark")
    for bi, b in enumerate(data["benchmarks"]):
        where = f"{src}: benchmarks[{bi}]"
        if not isinstance(b, dict):
            raise ConfigError(f"{where}: not an object; give the report GuideLLM wrote")
        reqs = (b.get("requests") or {}).get("successful") if isinstance(b.get("requests"), dict) else None
        if not isinstance(reqs, list) or not reqs:
            raise ConfigError(
                f"{where}: requests.successful: missing or empty; save the report with its requests"
            )
        rows = []
        for i, r in enumerate(reqs):
            for k in GUIDELLM_REQUEST_FIELDS:
                if not isinstance(r, dict) or k not in r:
                    raise ConfigError(
                        f"{where}: requests.successful[{i}]: {k}: missing; give the report GuideLLM wrote"
                    )
            rows.append(
                [_num(r[k], f"{where}: requests.successful[{i}].{k}") for k in GUIDELLM_REQUEST_FIELDS]
            )
            last = r.get("last_token_time", r["end_time"])
            rows[-1].append(_num(last, f"{where}: requests.successful[{i}].last_token_time"))
        a = np.array(rows)
        order = np.argsort(a[:, 2], kind="stable")
        a = a[order]
        p, o, start, first, end, last = a.T
        ttft, e2e = first - start, end - start
        with np.errstate(invalid="ignore", divide="ignore"):
            tpot = np.where(o > 1, (last - first) / (o - 1), np.nan)
        itl = np.repeat(
            tpot[np.isfinite(tpot)], (o[np.isfinite(tpot)] - 1).astype(int)
        )  # per-token gaps: each request's mean
        duration = float(end.max() - start.min())
        metrics = latency_metrics(ttft, tpot, itl, e2e) | throughput_metrics(
            len(a), p.sum(), o.sum(), duration
        )
        strategy = ((b.get("args") or {}).get("strategy") or {}) if isinstance(b.get("args"), dict) else {}
        kind = strategy.get("type_")
        rate = conc = None
        if kind == "concurrent":
            conc = int(_num(strategy.get("streams"), f"{where}: args.strategy.streams"))
        elif kind == "synchronous":
            conc = 1
        elif kind in ("poisson", "constant"):
            rate = _num(strategy.get("rate"), f"{where}: args.strategy.rate")
        elif kind == "throughput":
            conc = len(a)  # every request sent at once (up to max_concurrency)
            mc = strategy.get("max_concurrency")
            conc = int(mc) if isinstance(mc, int) and mc > 0 else conc
        else:
            raise ConfigError(f"{where}: args.strategy.type_: {kind!r} is not a strategy read here; "
                              "give synchronous, concurrent, throughput, constant or poisson")  # fmt: skip
        worker = b.get("worker") if isinstance(b.get("worker"), dict) else {}
        model = worker.get("backend_model") if isinstance(worker.get("backend_model"), str) else None
        run = MeasuredRun(f"{src}#{bi}", f"GuideLLM ({kind})", model, len(a), p.astype(np.int64),
                          o.astype(np.int64), True, rate, 1.0, conc, start - start.min(), None, metrics)  # fmt: skip
        if kind == "constant":
            run.burstiness = math.inf  # evenly spaced
        runs.append(run)
    return runs


def _value(m: dict, key: str, where: str, scale: dict[str, float]) -> float | None:
    v = m.get(key)
    if v is None:
        return None
    if not isinstance(v, dict) or "value" not in v:
        raise ConfigError(f"{where}: metrics.{key}: not a {{value, unit}} pair; give the file AIPerf wrote")
    unit = v.get("unit", "ms")
    return _num(v["value"], f"{where}: metrics.{key}") * scale.get(unit, 1.0)


TIME_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "sec": 1.0}


def _jsonl(text: str, src: str) -> list[MeasuredRun]:
    """AIPerf's profile_export.jsonl: one request per line."""
    rows = []
    for ln, r in jsonl_rows(io.StringIO(text), src):
        where = f"{src}: line {ln}"
        if not isinstance(r.get("metrics"), dict):
            raise ConfigError(f"{where}: no `metrics` object; give AIPerf's profile_export.jsonl")
        meta = r.get("metadata") if isinstance(r.get("metadata"), dict) else {}
        if (
            r.get("error")
            or meta.get("was_cancelled")
            or meta.get("benchmark_phase", "profiling") != "profiling"
        ):
            continue  # failed, cancelled or warm-up requests are not part of the profile
        m = r["metrics"]
        isl = _value(m, "input_sequence_length", where, {})
        osl = _value(m, "output_sequence_length", where, {})
        ttft = _value(m, "time_to_first_token", where, TIME_UNITS)
        lat = _value(m, "request_latency", where, TIME_UNITS)
        for k, v in (("input_sequence_length", isl), ("output_sequence_length", osl),
                     ("time_to_first_token", ttft), ("request_latency", lat)):  # fmt: skip
            if v is None:
                raise ConfigError(
                    f"{where}: metrics.{k}: missing; give AIPerf's profile_export.jsonl of a streaming run"
                )
        start = meta.get("request_start_ns")
        rows.append(
            (isl, osl, ttft, lat, float(start) * 1e-9 if isinstance(start, (int, float)) else math.nan)
        )
    if not rows:
        raise ConfigError(f"{src}: no successful profiling request; nothing to compare")
    a = np.array(rows)
    p, o, ttft, e2e, start = a.T
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(o > 1, (e2e - ttft) / (o - 1), np.nan)
    itl = np.repeat(tpot[np.isfinite(tpot)], (o[np.isfinite(tpot)] - 1).astype(int))
    has_start = bool(np.isfinite(start).all())
    if has_start:
        duration = float((start + e2e).max() - start.min())
        start = start - start.min()
    else:
        duration = float(e2e.sum())  # (no send times: a lower bound, one request after another)
    metrics = latency_metrics(ttft, tpot, itl, e2e) | throughput_metrics(len(a), p.sum(), o.sum(), duration)
    notes = (
        [] if has_start else ["no request_start_ns: throughput assumes the requests ran one after another"]
    )
    # the load is not in the records: read from the send times as a trace
    return [MeasuredRun(src, "AIPerf profile_export.jsonl", None, len(a), p.astype(np.int64), o.astype(np.int64),
                        True, None, 1.0, None, start if has_start else None, None, metrics, notes)]  # fmt: skip


AIPERF_NAMES = {
    "time_to_first_token": "ttft",
    "inter_token_latency": "itl",
    "request_latency": "e2el",
}


def _aiperf_summary(data: dict, src: str) -> MeasuredRun:
    """AIPerf's profile_export_aiperf.json or genai-perf's profile_export_genai_perf.json: summary statistics."""
    metrics: dict[str, float] = {}
    for key, name in AIPERF_NAMES.items():
        m = data.get(key)
        if not isinstance(m, dict):
            continue
        scale = TIME_UNITS.get(m.get("unit", "ms"), 1e-3) * 1000.0
        for stat, ours in (
            ("avg", "mean"),
            ("p50", "median"),
            ("p90", "p90"),
            ("p99", "p99"),
            ("std", "std"),
        ):
            if isinstance(m.get(stat), (int, float)):
                metrics[f"{ours}_{name}_ms"] = float(m[stat]) * scale
    if (
        "mean_itl_ms" in metrics
    ):  # genai-perf's ITL is each request's (latency - TTFT) / (tokens - 1): vLLM's TPOT
        for k in [k for k in metrics if k.endswith("_itl_ms")]:
            metrics[k.replace("_itl_", "_tpot_")] = metrics[k]
    for key, name in (
        ("request_throughput", "request_throughput"),
        ("output_token_throughput", "output_throughput"),
    ):
        m = data.get(key)
        if isinstance(m, dict) and isinstance(m.get("avg"), (int, float)):
            metrics[name] = float(m["avg"])
    isl, osl = data.get("input_sequence_length"), data.get("output_sequence_length")
    if not (isinstance(isl, dict) and isinstance(osl, dict) and "avg" in isl and "avg" in osl):
        raise ConfigError(f"{src}: input_sequence_length / output_sequence_length: missing; give the summary "
                          "AIPerf or genai-perf wrote (profile_export_aiperf.json)")  # fmt: skip
    if "mean_ttft_ms" not in metrics:
        raise ConfigError(f"{src}: time_to_first_token: missing; profile with --streaming to measure it")
    cfg = data.get("input_config") if isinstance(data.get("input_config"), dict) else {}
    load = cfg.get("loadgen") if isinstance(cfg.get("loadgen"), dict) else cfg
    conc, rate = load.get("concurrency"), load.get("request_rate")
    conc = int(conc) if isinstance(conc, (int, float)) and conc > 0 else None
    rate = float(rate) if isinstance(rate, (int, float)) and rate > 0 else None
    if conc is None and rate is None:
        raise ConfigError(
            f"{src}: input_config: no concurrency or request_rate; give the summary AIPerf wrote"
        )
    count = data.get("request_count")
    completed = (
        int(count["avg"]) if isinstance(count, dict) and isinstance(count.get("avg"), (int, float)) else 0
    )
    models = (cfg.get("endpoint") or {}).get("model_names") if isinstance(cfg.get("endpoint"), dict) else None
    model = (
        models[0]
        if isinstance(models, list) and models
        else cfg.get("model")
        if isinstance(cfg.get("model"), str)
        else None
    )
    return MeasuredRun(src, "AIPerf/genai-perf summary", model, max(completed, 1), np.array([round(float(isl["avg"]))]),
                       np.array([round(float(osl["avg"]))]), False, rate if conc is None else None, 1.0, conc, None,
                       None, metrics, ["summary statistics only: every request at the run's mean lengths"])  # fmt: skip


def _inferplan_csv(text: str, src: str) -> MeasuredRun:
    """This project's requests.csv (simulator/results.py): every request with its times."""
    reader = csv.DictReader(text.splitlines())
    rows = [r for r in reader if r.get("finish_s") and r.get("rejected", "0") in ("0", "")]
    if not rows:
        raise ConfigError(f"{src}: no finished request; nothing to compare")
    try:
        a = np.array([[float(r[k]) for k in ("arrival_s", "prompt_tokens", "output_tokens", "first_token_s",
                                              "finish_s")] for r in rows])  # fmt: skip
    except (KeyError, ValueError) as e:
        raise ConfigError(f"{src}: a row without {e}; give the requests.csv `run` wrote") from None
    arrival, p, o, first, finish = a.T
    ttft, e2e = first - arrival, finish - arrival
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(o > 1, (finish - first) / (o - 1), np.nan)
    itl = np.repeat(tpot[np.isfinite(tpot)], (o[np.isfinite(tpot)] - 1).astype(int))
    duration = float(finish.max() - arrival.min())
    metrics = latency_metrics(ttft, tpot, itl, e2e) | throughput_metrics(len(a), p.sum(), o.sum(), duration)
    return MeasuredRun(src, "inferplan requests.csv", None, len(a), p.astype(np.int64), o.astype(np.int64), True,
                       None, 1.0, None, arrival - arrival.min(), None, metrics)  # fmt: skip
