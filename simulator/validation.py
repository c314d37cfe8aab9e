"""A forecast checked against a measured run: the run's workload simulated on a scenario's model, GPU and
engine, and each metric measured, forecast and their error (`python -m simulator validate`).

The workload is the run's: its requests' lengths (each request's, or the means where the file has only
summary statistics), as many requests as it completed, and its load — a rate with its burstiness (vLLM's
gamma shape k is a coefficient of variation 1/sqrt(k)) and its cap on requests in flight where it had one
(--max-concurrency with a rate: the rest wait at the client, simulator/concurrency.py), the send times the file
recorded, or a closed loop of its concurrent users. Everything else (model, GPU, engine, serving settings, seed) is the scenario's.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from core.errors import ConfigError
from simulator.measured import MeasuredRun, p_word
from simulator.metrics import vllm_keys
from simulator.scenario import Scenario, parse_scenario
from simulator.simulation import Forecast, simulate

# what `validate` compares, in vLLM's names: the latency statistics, then the rates
LATENCIES = (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2E"))
STATS = (("mean", "mean"), ("median", "p50"), ("p90", "p90"), ("p99", "p99"))
RATES = (("request_throughput", "requests/s"), ("output_throughput", "output tokens/s"))
PERCENTILES = (50, 90, 99)


@dataclass(slots=True)
class Row:
    metric: str  # vLLM's key, e.g. median_ttft_ms
    label: str  # e.g. "TTFT p50 (ms)"
    measured: float | None
    forecast: float | None

    @property
    def error_pct(self) -> float | None:
        if self.measured is None or self.forecast is None or not self.measured:
            return None
        return 100.0 * (self.forecast - self.measured) / self.measured


@dataclass(slots=True)
class Validation:
    run: MeasuredRun
    scenario: Scenario
    notes: list[str]
    rows: list[Row]
    forecast: Forecast

    def as_dict(self) -> dict:
        errs = [abs(r.error_pct) for r in self.rows if r.error_pct is not None]
        worst = max(
            (r for r in self.rows if r.error_pct is not None), key=lambda r: abs(r.error_pct), default=None
        )
        return {
            "measured": {
                "source": self.run.source,
                "format": self.run.format,
                "model": self.run.model,
                "requests": self.run.completed,
                "load": self.run.load(),
                "mean_prompt_tokens": self.run.mean_prompt_tokens,
                "mean_output_tokens": self.run.mean_output_tokens,
            },
            "scenario": self.scenario.name,
            "model": self.scenario.model,
            "gpu": self.forecast.profile.name,
            "notes": self.notes,
            "rows": [
                {
                    "metric": r.metric,
                    "label": r.label,
                    "measured": r.measured,
                    "forecast": r.forecast,
                    "error_pct": r.error_pct,
                }
                for r in self.rows
            ],  # fmt: skip
            "median_abs_error_pct": float(np.median(errs)) if errs else None,
            "worst": {"metric": worst.metric, "error_pct": worst.error_pct} if worst else None,
        }


# ---------------------------------------------------------------- the run's workload
def run_workload(run: MeasuredRun) -> tuple[dict, list[str]]:
    """The scenario `workload` block that replays the run, and what it could not replay."""
    notes: list[str] = []
    if run.per_request:
        w: dict = {
            "trace": run.source,
            "prompt_tokens": {"dist": "trace"},
            "output_tokens": {"dist": "trace"},
        }
    else:
        w = {
            "prompt_tokens": {"dist": "fixed", "value": int(round(run.mean_prompt_tokens))},
            "output_tokens": {"dist": "fixed", "value": int(round(run.mean_output_tokens))},
        }
    w["num_requests"] = run.completed
    if run.rate_per_s is None:  # every request at once, or a fixed number of users
        w["arrival"] = {"process": "closed_loop", "concurrency": run.concurrency or run.completed}
        if run.concurrency is None and run.start_s is not None:
            w["arrival"] = {"process": "trace"}  # the send times the file recorded
    elif run.start_s is not None:
        w["arrival"] = {"process": "trace"}
    elif math.isinf(run.burstiness):
        w["arrival"] = {"process": "constant", "rate_per_s": run.rate_per_s}
    elif run.burstiness == 1:
        w["arrival"] = {"process": "poisson", "rate_per_s": run.rate_per_s}
    else:  # vLLM: gaps ~ gamma(shape k, scale 1/(rate k)), a coefficient of variation 1/sqrt(k)
        w["arrival"] = {"process": "gamma", "rate_per_s": run.rate_per_s, "cv": 1 / math.sqrt(run.burstiness)}
    if run.rate_per_s is not None and run.concurrency is not None and run.start_s is None:
        # at the run's rate with at most this many in flight, the rest waiting at the client (ClientGate)
        w["arrival"]["concurrency"] = run.concurrency
    return w, notes


# ---------------------------------------------------------------- run vs scenario
_SIZE = re.compile(r"(\d+(?:\.\d+)?)b\b")
_DROP = ("-instruct", "-chat", "-hf", "-it", "-base")


def model_key(name: str) -> str:
    """A model's name without its organisation, case or instruction-tuning suffix (meta-llama/Llama-3.1-8B-Instruct
    and llama-3.1-8b agree)."""
    key = name.rsplit("/", 1)[-1].lower().replace("_", "-")
    for d in _DROP:
        key = key.removesuffix(d)
    return key


def model_size(name: str) -> float | None:
    m = _SIZE.search(name.lower())
    return float(m.group(1)) if m else None


def check_model(run: MeasuredRun, scenario: Scenario, force: bool) -> list[str]:
    """One line refusing a run of another model (unless `force`, then said above the table)."""
    if run.model is None:
        return [f"the run's file names no model: compared as a run of {scenario.model}"]
    ours, theirs = model_key(scenario.model), model_key(run.model)
    if ours == theirs or ours in theirs or theirs in ours:
        return []
    sizes = (model_size(run.model), model_size(scenario.model))
    size = (
        f" (model size {sizes[0]:g}B vs {sizes[1]:g}B)" if None not in sizes and sizes[0] != sizes[1] else ""
    )
    line = f"the run served {run.model}, the scenario models {scenario.model}{size}"
    if not force:
        raise ConfigError(
            f"{run.source}: {line}; set the scenario's model to the run's (--set model=...) or pass --force "
            "to compare anyway"
        )
    return [line + ": compared anyway (--force)"]


def disagreements(run: MeasuredRun, scenario: Scenario) -> list[str]:
    """What the run did that the scenario does differently."""
    out = []
    seqs = scenario.serving.batching.max_num_seqs
    users = run.concurrency if run.rate_per_s is None else None
    if users is not None and users > seqs:
        out.append(
            f"max concurrency: the run kept {users} requests in flight, the scenario's engine runs at most {seqs} "
            "at once (serving.batching.max_num_seqs): the rest wait in its queue"
        )
    elif run.concurrency is not None and run.concurrency > seqs:
        out.append(
            f"max concurrency: the run let up to {run.concurrency} requests be in flight, the scenario's engine "
            f"runs at most {seqs} at once (serving.batching.max_num_seqs): the rest wait in its queue"
        )
    if run.ignore_eos is False:
        out.append("ignore_eos was off: output lengths are where the model stopped, as the run recorded them")
    elif run.ignore_eos is None and run.per_request:
        out.append(
            "output lengths as the run recorded them (with or without --ignore-eos, the file does not say)"
        )
    return out + list(run.notes)


# ---------------------------------------------------------------- validating
def forecast_metrics(f: Forecast) -> dict[str, float]:
    """The forecast's figures under vLLM's names, with the percentiles `validate` compares."""
    if not f.fits:
        return {}
    return vllm_keys(f.table, f.stats.itl_hist, f.summary["throughput"]["duration_s"], None, PERCENTILES)


def rows_of(measured: dict[str, float], forecast: dict[str, float]) -> list[Row]:
    rows = []
    for name, label in LATENCIES:
        for stat, shown in STATS:
            key = f"{stat}_{name}_ms"
            rows.append(Row(key, f"{label} {shown} (ms)", measured.get(key), forecast.get(key)))
    for key, label in RATES:
        rows.append(Row(key, label, measured.get(key), forecast.get(key)))
    return rows


def validate(run: MeasuredRun, scenario_data: dict, source: str, force: bool = False) -> Validation:
    """Simulate `run`'s workload on the scenario's model, GPU and engine and compare (the scenario's own
    workload, if it has one, is replaced: it may leave it out)."""
    workload, replay_notes = run_workload(run)
    data = dict(scenario_data) | {"workload": workload}
    base = parse_scenario(scenario_data if "workload" in scenario_data else data, source)
    notes = check_model(run, base, force)
    scenario = parse_scenario(data, f"{source} with the workload of {run.source}")
    notes += replay_notes + disagreements(run, scenario)
    f = simulate(scenario)
    if not f.fits:
        raise ConfigError(f"{source}: the model does not fit: {f.memory.explain()}; nothing to compare")
    return Validation(run, scenario, notes, rows_of(run.metrics, forecast_metrics(f)), f)


def _cell(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "—"
    return f"{x:,.2f}" if abs(x) < 1000 else f"{x:,.0f}"


def table(v: Validation) -> str:
    """The terminal table: notes above, then measured / forecast / error per metric."""
    r = v.run
    lines = [
        f"{r.source}: {r.format}, {r.model or 'model not named'}, {r.completed:,} requests, {r.load()}, "
        f"mean {r.mean_prompt_tokens:,.0f} in / {r.mean_output_tokens:,.0f} out",
        f"forecast: {v.scenario.model} on {v.forecast.summary['hardware']['display_name']} ({v.scenario.name})",
    ]
    lines += [f"note: {n}" for n in v.notes]
    lines += ["", f"{'metric':<22}  {'measured':>12}  {'forecast':>12}  {'error':>8}"]
    for row in v.rows:
        if row.measured is None and row.forecast is None:
            continue
        err = row.error_pct
        lines.append(
            f"{row.label:<22}  {_cell(row.measured):>12}  {_cell(row.forecast):>12}  "
            f"{'—' if err is None else f'{err:+.1f}%':>8}"
        )
    missing = [row.label for row in v.rows if row.measured is None]
    if missing:
        lines.append(
            f"(— measured: not in the file; vLLM writes p{p_word(99)} by default, --metric-percentiles for more)"
        )
    d = v.as_dict()
    if d["median_abs_error_pct"] is not None:
        lines.append(f"median |error| {d['median_abs_error_pct']:.1f}%, worst {d['worst']['metric']} "
                     f"{d['worst']['error_pct']:+.1f}%")  # fmt: skip
    return "\n".join(lines)


def vllm_result(f: Forecast, percentiles: tuple[float, ...] = PERCENTILES) -> dict:
    """The forecast written as vLLM bench serve --save-detailed would write its run: the run's settings, each
    request's lengths and TTFT, each request's token gaps (its mean gap, repeated: the simulator keeps one ITL
    histogram, not each token's time), and the summary keys (from the forecast, so they keep its ITL)."""
    sc, t = f.scenario, f.table
    done = np.isfinite(t.finish_s)
    a = sc.workload.arrival
    rate: float | str = a.rate_per_s if a.process in ("poisson", "gamma", "constant") else "inf"
    burst = 1.0 if a.process == "poisson" else 1 / a.cv**2 if a.process == "gamma" else math.inf
    gaps = []
    for i in np.flatnonzero(done).tolist():
        o = int(t.output_tokens[i])
        g = (t.finish_s[i] - t.first_token_s[i]) / (o - 1) if o > 1 else 0.0
        gaps.append([float(g)] * (o - 1))
    keys = vllm_keys(t, f.stats.itl_hist, f.summary["throughput"]["duration_s"], None, percentiles)
    return {
        "date": "simulated",
        "backend": "inferplan",
        "model_id": sc.model,
        "tokenizer_id": sc.model,
        "num_prompts": len(t),
        "request_rate": rate,
        "burstiness": burst if math.isfinite(burst) else None,
        "max_concurrency": a.concurrency,  # (the users of a closed loop, or the cap with a rate)
        "input_lens": t.prompt_tokens[done].tolist(),
        "output_lens": t.output_tokens[done].tolist(),
        "ttfts": (t.first_token_s - t.arrival_s)[done].tolist(),
        "itls": gaps,
        "generated_texts": [""] * int(done.sum()),
        "errors": [""] * int(done.sum()),
    } | {k: v for k, v in keys.items() if v is not None}
