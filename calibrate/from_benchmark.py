"""Fit an engine profile to measured serving runs of an engine we cannot run here (issue 12).

    python -m calibrate from-benchmark RUN.json... --gpu h100-sxm --engine vllm [--hold-out RUN.json]

Each run (any format simulator/measured.py reads: vLLM bench serve, GuideLLM, AIPerf, requests.csv) is
simulated with its own workload (simulator/validation.py's `run_workload`) on the GPU profile, the catalogue
model it served, and a candidate engine profile; scipy's bounded least squares moves the candidate's terms —
host time per step, per sequence and per prompt token, and the GEMM and attention kernel factors, those
named by --terms — until the log-ratios of forecast to measured metrics (mean TTFT, mean TPOT, median ITL,
request and output throughput, where the run has them) are least. Scheduling (policy, max_num_seqs, the
token budget) is the engine's as the runs were served, given on the command line; with several
--budgets each is fitted and the one with the least cost kept.

Held-out runs (--hold-out) are never fitted: their errors are printed and written as the profile's
`validation`. The fit simulates: it imports the simulator (numpy, scipy, SimPy) and never torch.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from scipy.optimize import least_squares

from core.engine_profile import (
    EngineProfile,
    Estimated,
    Figure,
    HostTime,
    Kernels,
    LoadCheck,
    Measured,
    MetricError,
    Published,
    Scheduling,
    Validation,
    write_engine_profile,
)
from core.errors import ConfigError
from core.model_spec import catalogue_names
from simulator.measured import MeasuredRun, read_measured
from simulator.scenario import parse_scenario
from simulator.simulation import simulate
from simulator.validation import forecast_metrics, model_key, run_workload

# the terms a fit may move, with the scale that makes each solver variable of order one and its bounds
TERMS = {
    "per_step_s": (1e-3, (0.0, 0.05)),
    "per_sequence_s": (1e-5, (0.0, 1e-3)),
    "per_prompt_token_s": (1e-6, (0.0, 1e-4)),
    "gemm": (1.0, (0.3, 4.0)),
    "attention": (1.0, (0.3, 6.0)),  # attention_prefill and attention_decode together
    # each on its own (an engine whose prompt attention runs another kernel than its decode attention: vLLM's
    # Triton attention on Turing prices prompts at ~0.7 TFLOP/s, benchmarks/results/gpu_published.md)
    "attention_prefill": (1.0, (0.3, 100.0)),
    "attention_decode": (1.0, (0.3, 20.0)),
}
DEFAULT_TERMS = ("per_step_s", "per_sequence_s", "gemm", "attention")
# what a fit compares, vLLM's names (the ones a run lacks are left out of its residuals)
FIT_METRICS = ("mean_ttft_ms", "mean_tpot_ms", "median_itl_ms", "request_throughput", "output_throughput")
START = {"per_step_s": 2e-3, "per_sequence_s": 2e-5, "per_prompt_token_s": 0.0, "gemm": 1.0, "attention": 1.0,
         "attention_prefill": 1.0, "attention_decode": 1.0}  # fmt: skip


@dataclass(slots=True)
class Settings:
    """What the fit holds fixed: the engine as the runs were served, the GPU, the model, overrides."""

    engine: str
    family: str
    version: str
    gpu: str
    model: str | None
    policy: str
    max_num_seqs: int
    budget: int
    overrides: dict
    terms: tuple[str, ...]
    cuda_graphs: str = "full"  # the engine's launches as served (none: --enforce-eager)
    per_layer: bool = False  # the host terms are per model layer (an eager engine's launches)
    model_dir: str | None = None  # config.json files of models outside the catalogue, matched by name
    weights: tuple[str, ...] = ("bf16", "fp16", "fp8", "int8", "int4")  # the engine's kernels' weight formats


def profile_of(values: dict[str, float], s: Settings, sources: dict, validation: Validation | None = None,
               notes: str = "") -> EngineProfile:  # fmt: skip
    """The engine profile with these term values (the terms not fitted at their START values)."""
    v = START | values
    fit = "fit" if "fit" in sources else "start"
    # the two attention factors: each fitted on its own, or both the one `attention` term
    prefill, decode = (
        v[k] if k in values else v["attention"] for k in ("attention_prefill", "attention_decode")
    )
    return EngineProfile(
        name=s.engine,
        display_name=f"{s.family} {s.version} (fitted to measured runs)",
        engine=s.family,
        version=s.version,
        gpu=s.gpu,
        status="measured" if isinstance(sources.get("fit"), Measured) else "published",
        date=_dt.date.today().isoformat(),
        scheduling=Scheduling(
            policy=s.policy,
            max_num_seqs=s.max_num_seqs,
            max_num_batched_tokens=s.budget,
            block_size=16,
            preemption="recompute",
            pad_static_batches=False,
            cuda_graphs=s.cuda_graphs,
            source="scheduling",
        ),  # fmt: skip
        host=HostTime(
            per_step_s=Figure(value=v["per_step_s"], source=fit),
            per_sequence_s=Figure(value=v["per_sequence_s"], source=fit),
            per_prompt_token_s=Figure(value=v["per_prompt_token_s"], source=fit),
            per_layer=s.per_layer,
            gpu_profile_loop=False,
        ),
        kernels=Kernels(
            gemm=v["gemm"],
            attention_prefill=prefill,
            attention_decode=decode,
            quantized_weights=list(s.weights),
            attention_layout="per_sequence",
            source=fit,
        ),  # fmt: skip
        sources=sources,
        validation=validation,
        notes=notes,
    )


def catalogue_model(run: MeasuredRun, given: str | None, model_dir: str | None = None) -> str:
    """The catalogue model a run served: --model, else the run's own name matched to a config.json in
    --model-dir (by name: Qwen/Qwen2.5-3B-Instruct and qwen2.5-3b-instruct.json agree), else to the catalogue."""
    if given:
        return given
    if run.model is None:
        raise ConfigError(f"{run.source}: the file names no model; give --model (a catalogue name)")
    theirs = model_key(run.model)
    if model_dir:
        hits = sorted(p for p in Path(model_dir).glob("*.json") if model_key(p.stem) == theirs)
        if hits:
            return str(hits[0])
    hits = [n for n in catalogue_names() if model_key(n) == theirs or model_key(n) in theirs]
    if not hits:
        raise ConfigError(
            f"{run.source}: {run.model} is not in the catalogue; give --model (a catalogue name)"
        )
    return max(hits, key=len)


def scenario_for(run: MeasuredRun, s: Settings, engine_yaml: str) -> dict:
    workload, _ = run_workload(run)
    data = {
        "name": f"fit-{Path(run.source).stem}",
        "model": catalogue_model(run, s.model, s.model_dir),
        "hardware": {"gpu": s.gpu},
        "engine": engine_yaml,
        "workload": workload,
        "seed": 0,
    }
    return _merged(data, s.overrides)


def _merged(data: dict, over: dict) -> dict:
    out = dict(data)
    for k, v in over.items():
        out[k] = _merged(out.get(k, {}), v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class Runs:
    """The measured runs and a simulator of them under a candidate profile (written to a scratch .yaml)."""

    def __init__(self, runs: list[MeasuredRun], s: Settings, scratch: Path) -> None:
        self.runs, self.s, self.scratch = runs, s, scratch
        self.calls = 0
        self.batches: list[float] = []  # the last forecast's mean sequences a step, per run

    def forecast(self, values: dict[str, float]) -> list[dict[str, float]]:
        path = self.scratch / f"candidate{self.calls}.yaml"
        self.calls += 1
        write_engine_profile(
            profile_of(values, self.s, {"start": _START_SOURCE, "scheduling": _START_SOURCE}), path
        )
        out, self.batches = [], []
        for run in self.runs:
            f = simulate(parse_scenario(scenario_for(run, self.s, str(path)), run.source))
            if not f.fits:
                raise ConfigError(f"{run.source}: the model does not fit: {f.memory.explain()}")
            out.append(forecast_metrics(f))
            self.batches.append(float(f.summary["utilisation"]["mean_batch_seqs"]))
        path.unlink()
        return out

    def residuals(self, values: dict[str, float]) -> np.ndarray:
        res = []
        for run, fc in zip(self.runs, self.forecast(values), strict=True):
            for k in FIT_METRICS:
                if k in run.metrics and k in fc and run.metrics[k] > 0 and fc[k] > 0:
                    res.append(math.log(fc[k] / run.metrics[k]))
        return np.array(res)


_START_SOURCE = Estimated(kind="estimated", why="a candidate of the fit (calibrate/from_benchmark.py)")


@dataclass(slots=True)
class Fit:
    values: dict[str, float]
    cost: float
    residuals: np.ndarray
    budget: int
    simulations: int


def fit(runs: list[MeasuredRun], s: Settings) -> Fit:
    """Bounded least squares of the log-ratios forecast / measured over `s.terms`."""
    scale = np.array([TERMS[t][0] for t in s.terms])
    lo = np.array([TERMS[t][1][0] for t in s.terms]) / scale
    hi = np.array([TERMS[t][1][1] for t in s.terms]) / scale
    x0 = np.clip(np.array([START[t] for t in s.terms]) / scale, lo, hi)
    with tempfile.TemporaryDirectory(prefix="from-benchmark-") as d:
        sim = Runs(runs, s, Path(d))

        def res(x: np.ndarray) -> np.ndarray:
            return sim.residuals(dict(zip(s.terms, (x * scale).tolist(), strict=True)))

        r0 = res(x0)
        if len(r0) < len(s.terms):
            raise ConfigError(
                f"{len(r0)} measured figures for {len(s.terms)} terms; give more runs or fewer --terms"
            )
        sol = least_squares(
            res, x0, bounds=(lo, hi), x_scale=1.0, diff_step=1e-3, xtol=1e-6, ftol=1e-8, max_nfev=60
        )
        values = dict(zip(s.terms, (sol.x * scale).tolist(), strict=True))
        return Fit(values, float(sol.cost), sol.fun, s.budget, sim.calls)


def errors(
    runs: list[MeasuredRun], s: Settings, values: dict[str, float], batches: dict[str, float] | None = None
) -> list[tuple[str, str, float, float, float]]:
    """(run, metric, measured, forecast, error %) of every compared metric of every run; `batches`, when given,
    gets each run's mean sequences a step as simulated (the load it was checked at)."""
    with tempfile.TemporaryDirectory(prefix="from-benchmark-") as d:
        sim = Runs(runs, s, Path(d))
        fcs = sim.forecast(values)
    if batches is not None:
        batches.update({run.source: b for run, b in zip(runs, sim.batches, strict=True)})
    rows = []
    for run, fc in zip(runs, fcs, strict=True):
        for k in FIT_METRICS:
            if k in run.metrics and k in fc:
                m = run.metrics[k]
                rows.append((run.source, k, m, fc[k], 100.0 * (fc[k] - m) / m))
    return rows


def validation_of(
    rows: list[tuple[str, str, float, float, float]],
    fitted_on: list[str],
    table: str,
    batches: dict[str, float] | None = None,
) -> Validation:
    """The held-out rows' median and worst errors per metric, and (with `batches`) each held-out run's load."""
    by_metric: dict[str, list[tuple[str, float]]] = {}
    for src, k, _, _, err in rows:
        by_metric.setdefault(k, []).append((src, err))
    metrics = []
    for k, errs in by_metric.items():
        worst = max(errs, key=lambda e: abs(e[1]))
        metrics.append(MetricError(metric=f"{k} (held-out runs)", rows=len(errs),
                                   median_abs_pct=round(float(np.median([abs(e) for _, e in errs])), 2),
                                   worst_pct=round(worst[1], 2), worst_row=worst[0]))  # fmt: skip
    held = sorted({r[0] for r in rows})
    loads = [
        LoadCheck(
            run=src,
            batch=round(batches[src], 3),
            table=table,
            errors_pct={k: round(err, 2) for r, k, _, _, err in rows if r == src},
        )  # fmt: skip
        for src in held
        if batches and batches.get(src, 0.0) > 0
    ]
    return Validation(
        held_out=f"runs {', '.join(held)}; fitted on {', '.join(fitted_on)}",
        metrics=metrics,
        table=table,
        loads=loads,
    )


def markdown(
    s: Settings, f: Fit, train: list[tuple], held: list[tuple], command: str, batches: dict | None = None
) -> str:
    lines = [f"# {s.engine}: engine profile fitted to measured runs", "", f"`{command}`", "",
             f"Fitted terms ({f.simulations} simulations, cost {f.cost:.4g}, token budget {f.budget}):", ""]  # fmt: skip
    lines += [f"- {k}: {v:.4g}" for k, v in f.values.items()]
    for title, rows in (("Fitted runs (residuals)", train), ("Held-out runs (never fitted)", held)):
        lines += [
            "",
            f"## {title}",
            "",
            "| run | metric | measured | forecast | error |",
            "|---|---|---|---|---|",
        ]
        lines += [f"| {Path(r).name} | {k} | {m:.4g} | {fc:.4g} | {e:+.1f}% |" for r, k, m, fc, e in rows]
        if not rows:
            lines.append("| (none) | | | | |")
    if batches:  # the load each held-out run checks (a forecast's band names the checks nearest its load)
        lines += ["", "Held-out runs' load, mean sequences a step as simulated: "
                  + "; ".join(f"{Path(r).name} {b:.3g}" for r, b in sorted(batches.items()))]  # fmt: skip
    return "\n".join(lines) + "\n"


def _parser(prog: str) -> argparse.ArgumentParser:
    from calibrate.__main__ import _Parser

    p = _Parser(prog=f"{prog} from-benchmark", description=__doc__.split("\n\n")[1])
    p.add_argument("runs", nargs="+", help="measured runs to fit (FILE#K picks one benchmark of a report)")
    p.add_argument(
        "--gpu", required=True, help="GPU profile the runs ran on (h100-sxm, h200, a100-sxm-80gb...)"
    )
    p.add_argument("--engine", required=True, help="name of the profile to write (e.g. vllm-h100)")
    p.add_argument(
        "--family", default="vllm", choices=["vllm", "sglang", "tensorrt-llm", "transformers", "ours"]
    )
    p.add_argument("--version", default="unknown", help="the engine's version the runs used")
    p.add_argument("--model", help="catalogue model the runs served (default: matched from the runs' files)")
    p.add_argument("--hold-out", nargs="*", default=[], help="runs to check the fit on, never fitted")
    p.add_argument("--terms", default=",".join(DEFAULT_TERMS), help=f"terms to fit, of {', '.join(TERMS)}")
    p.add_argument("--policy", default="chunked", choices=["chunked", "prefill_first"])
    p.add_argument("--max-num-seqs", type=int, default=256, help="the engine's max_num_seqs in the runs")
    p.add_argument("--budgets", default="8192", help="token budget(s) per step to try, comma-separated")
    p.add_argument("--model-dir", help="a folder of config.json files for models outside the catalogue, each "
                   "named after the model (qwen2.5-3b-instruct.json for Qwen/Qwen2.5-3B-Instruct)")  # fmt: skip
    p.add_argument("--cuda-graphs", default="full", choices=["full", "decode_only", "none"],
                   help="the engine's CUDA graphs as served (none: --enforce-eager)")  # fmt: skip
    p.add_argument("--weights", default="bf16,fp16,fp8,int8,int4",
                   help="weight formats the engine has kernels for (the profile's kernels.quantized_weights)")  # fmt: skip
    p.add_argument("--per-layer", action="store_true",
                   help="fit the host terms per model layer (an eager engine issues each layer's kernels)")  # fmt: skip
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel GPUs per replica in the runs")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="a scenario field of the runs' serving setup, e.g. serving.precision.weight_dtype=fp8")  # fmt: skip
    p.add_argument(
        "--published", metavar="URL", help="the runs were read from this publication (a published profile)"
    )
    p.add_argument("--notes", default="", help="what the profile's reader should know (written as its notes)")
    p.add_argument("--table", help="the fit's Markdown table (default: beside the profile, .md)")
    p.add_argument("--out", help="profile path (default: engine_profiles/ENGINE.yaml)")
    return p


def parse(
    argv: list[str], prog: str = "python -m calibrate"
) -> tuple[argparse.Namespace, tuple, tuple, dict]:
    """A from-benchmark command line's arguments, checked: (args, terms, weight formats, scenario overrides)."""
    a = _parser(prog).parse_args(argv)
    terms = tuple(t.strip() for t in a.terms.split(",") if t.strip())
    bad = [t for t in terms if t not in TERMS]
    if bad or not terms:
        raise ConfigError(f"--terms: {', '.join(bad) or 'none'}: give some of {', '.join(TERMS)}")
    if "attention" in terms and ({"attention_prefill", "attention_decode"} & set(terms)):
        raise ConfigError(
            "--terms: attention is attention_prefill and attention_decode together; give it or them, not both"
        )
    weights = tuple(w.strip() for w in a.weights.split(",") if w.strip())
    known = ("bf16", "fp16", "fp8", "int8", "int4")
    if not weights or any(w not in known for w in weights):
        raise ConfigError(f"--weights {a.weights!r}: give some of {', '.join(known)}, comma-separated")
    over = {"hardware": {"gpus_per_replica": a.tp}} if a.tp > 1 else {}
    for item in a.set:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(
                f"--set {item!r}: write field.path=value, e.g. serving.precision.weight_dtype=fp8"
            )
        *blocks, name = key.strip().split(".")
        node = over
        for b in blocks:
            node = node.setdefault(b, {})
        node[name] = yaml.safe_load(value)
    return a, terms, weights, over


def settings(a: argparse.Namespace, terms: tuple, weights: tuple, over: dict, budget: int) -> Settings:
    """The fit's Settings of parsed arguments at one token budget."""
    return Settings(
        a.engine, a.family, a.version, a.gpu, a.model, a.policy, a.max_num_seqs, budget, over, terms,
        a.cuda_graphs, a.per_layer, a.model_dir, weights,
    )  # fmt: skip


def measured_runs(a: argparse.Namespace) -> tuple[list[MeasuredRun], list[MeasuredRun]]:
    """(fitted runs, held-out runs) that parsed arguments name."""
    return [r for p in a.runs for r in read_measured(p)], [r for p in a.hold_out for r in read_measured(p)]


def main(argv: list[str], prog: str = "python -m calibrate") -> int:
    a, terms, weights, over = parse(argv, prog)
    command = f"{prog} from-benchmark " + shlex.join(argv)
    budgets = [int(b) for b in a.budgets.split(",")]
    train, held = measured_runs(a)
    best = None
    for budget in budgets:
        s = settings(a, terms, weights, over, budget)
        f = fit(train, s)
        print(f"budget {budget}: cost {f.cost:.4g} after {f.simulations} simulations", flush=True)
        if best is None or f.cost < best[1].cost:
            best = (s, f)
    s, f = best
    shown = {
        k: float(f"{x:.4g}") if abs(x) > 1e-12 else 0.0 for k, x in f.values.items()
    }  # 4 digits; 0 at the bound
    train_rows = errors(train, s, shown)  # (the profile's figures as written, so a rerun of it agrees)
    batches: dict[str, float] = {}
    held_rows = errors(held, s, shown, batches) if held else []
    out = Path(a.out or f"engine_profiles/{a.engine}.yaml")
    table = Path(a.table) if a.table else out.with_suffix(".md")
    raw = [r.source for r in train + held]
    source = (
        Published(kind="published", url=a.published, table=f"runs {', '.join(raw)}; fitted: {command}")
        if a.published
        else Measured(kind="measured", command=command, date=_dt.date.today().isoformat(), gpu=a.gpu, raw=raw)
    )
    sched = Estimated(kind="estimated", why=f"as given on the command line for the runs: policy {s.policy}, "
                      f"max_num_seqs {s.max_num_seqs}, token budget {s.budget} (best of {a.budgets})")  # fmt: skip
    validation = (
        validation_of(held_rows, [r.source for r in train], str(table), batches) if held_rows else None
    )
    profile = profile_of(shown, s, {"fit": source, "scheduling": sched}, validation, a.notes)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_engine_profile(profile, out, header=f"{profile.display_name} on {a.gpu}: written by {command}")
    text = markdown(s, f, train_rows, held_rows, command, batches)
    table.write_text(text)
    print(text)
    print(f"wrote {out} and {table}")
    return 0
