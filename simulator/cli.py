"""`python -m simulator` (and the `inferplan` command): run a scenario, list models, GPUs and examples."""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import yaml

from core.engine_profile import engine_names, load_engine_profile
from core.errors import ConfigError, read_yaml
from core.hardware import PROFILES_ENV, load_profile, profile_origins, provenance
from core.model_spec import catalogue_names, human_count, load_model
from simulator import __version__
from simulator.output import ResultFolder
from simulator.resources import example_names, find_example, shipped
from simulator.scenario import (
    DEFAULT_SCENARIO,
    LENGTH_HELP,
    RenamedField,
    apply_overrides,
    field_help,
    parse_scenario,
)

if TYPE_CHECKING:
    from simulator.search import SearchResult


def _scenario_data(path: str | None) -> tuple[dict, str]:
    if path is None:
        return yaml.safe_load(yaml.safe_dump(DEFAULT_SCENARIO)), "default scenario"
    path = _file_or_example(path, "scenario")
    data = read_yaml(path, "scenario file")
    return data, path


def _file_or_example(arg: str, what: str) -> str:
    """A scenario or search spec argument: a file, or a shipped example by name (from any directory)."""
    path = find_example(arg)
    if not Path(path).exists():
        raise ConfigError(
            f"{what} {arg!r}: no such file nor shipped example; give a YAML path or an example's name "
            f"({', '.join(example_names())})"
        )
    return path


def _scenario(path: str | None, overrides: list[str] | None, requests: int | None):
    """A scenario file (or the default) with --set overrides and --requests applied, validated."""
    data, source = _scenario_data(path)
    data = apply_overrides(data, overrides or [], source)
    if requests is not None:  # --requests 0 is refused by the parser, never silently ignored
        data.setdefault("workload", {})["num_requests"] = requests
        data["workload"].pop("duration_s", None)
    return parse_scenario(data, source)


def run_dir(output_dir: str, overrides: list[str] | None, requests: int | None) -> str:
    """Where `run` writes without --out: the scenario's output.dir, or, with --set/--requests, a folder
    beside it named by a short hash of the overrides (so a changed run never replaces the unchanged one's)."""
    changes = [*(overrides or []), *([f"--requests={requests}"] if requests is not None else [])]
    if not changes:
        return output_dir
    digest = hashlib.sha256("\n".join(changes).encode()).hexdigest()[:8]
    return f"{output_dir.rstrip('/')}-set-{digest}"


@contextlib.contextmanager
def _run_progress(what: str, stream=None, total: float | None = 1.0):
    """A progress bar with the time left on a terminal (rich); nothing when output goes to a file or
    rich is not installed. Yields the callback `simulate` tells the share of its arrival window
    (total None: work of unknown length, a pulsing bar)."""
    stream = stream or sys.stderr
    try:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
    except ImportError:
        yield None
        return
    if not stream.isatty():
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(file=stream), transient=True) as bar:
        task = bar.add_task(what, total=total)
        yield lambda done: bar.update(task, completed=done)


def cmd_run(args: argparse.Namespace) -> int:
    from simulator.results import format_summary, write_results
    from simulator.simulation import simulate

    sc = _scenario(args.scenario, args.set, args.requests)
    with _scenario_folder(args.out, run_dir(sc.output.dir, args.set, args.requests)) as folder:
        streamed = args.stream or ((args.workers or args.ray) and _streams(sc))
        if streamed:
            from simulator.fleet_stream import simulate_streamed

            with _run_progress(f"simulating {sc.name} streamed in shards", total=None):
                backend = "ray" if args.ray else "processes"
                forecast = simulate_streamed(sc, folder.work / "records", args.workers, None, backend, args.ray,
                                             vllm_percentiles=args.percentiles)  # fmt: skip
        elif args.workers or args.ray:
            from simulator.shard import simulate_sharded

            with _run_progress(f"simulating {sc.name} in shards", total=None):
                backend = "ray" if args.ray else "processes"
                forecast = simulate_sharded(sc, args.workers, backend, args.workers, args.ray)
        else:
            with _run_progress(f"simulating {sc.name}") as progress:
                forecast = simulate(sc, progress=progress)
        if args.percentiles is not None and forecast.fits and not streamed:
            from simulator.metrics import with_percentiles

            with_percentiles(forecast.summary, forecast.table, forecast.stats.itl_hist, args.percentiles)
        if not args.no_capacity and forecast.fits:
            from simulator.metrics import capacity

            with _run_progress("finding the highest rate within the SLOs (--no-capacity skips)", total=None):
                forecast.summary["capacity"] = capacity(sc, forecast.summary)
        write_results(forecast, folder)
        folder.commit()
    print(format_summary(forecast))
    if streamed:
        print(_streamed_line(forecast.summary))
    print(_wrote(folder))
    return 0 if forecast.fits else 3


def _streams(sc) -> bool:
    """Whether a sharded run streams unasked: more requests than the coordinator holds exactly, and a
    scenario that streams (simulator/fleet_stream.py)."""
    from simulator.fleet_stream import STREAM_ABOVE_REQUESTS, unstreamable

    return (sc.workload.num_requests or 0) > STREAM_ABOVE_REQUESTS and unstreamable(sc) is None


def _streamed_line(summary: dict) -> str:
    p = summary["percentiles"]
    return (
        f"streamed: {', '.join(p['sketched'])} percentiles sketched (within {p['relative_error_bound']:.3%}); "
        f"exact: {', '.join(p['exact'])}; per-request records as numpy chunks in records/"
    )


def _scenario_folder(out: str | None, default: str) -> ResultFolder:
    """The results folder of a scenario's command: --out, else one under the scenario's output.dir
    (named as the setting it came from in messages)."""
    return ResultFolder(out or default, "--out" if out else "output.dir")


def _wrote(folder: ResultFolder) -> str:
    """The files a command put in place, and nothing else."""
    return f"\nwrote {folder.path}/: " + ", ".join(folder.written)


def cmd_compare(args: argparse.Namespace) -> int:
    import csv
    import json

    if len(args.scenarios) < 2:
        raise ConfigError("compare needs two or more scenario files")
    with ResultFolder(args.out) if args.out else contextlib.nullcontext() as folder:
        rows, labels = _compare(args)
        if folder is not None:
            (folder.work / "compare.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
            with (folder.work / "compare.csv").open("w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["metric", *labels])
                for metric, vals in rows.items():
                    w.writerow([metric, *(vals.get(x) for x in labels)])
            folder.commit()
    if folder is not None:
        print(_wrote(folder))
    return 0


def _compare(args: argparse.Namespace) -> tuple[dict, list[str]]:
    """Simulate every scenario and print them side by side; the table's rows and the column labels."""
    from simulator.comparison import differences, table
    from simulator.simulation import simulate

    forecasts = {}
    for path in args.scenarios:
        label = Path(path).stem
        while label in forecasts:
            label += "'"
        forecasts[label] = simulate(_scenario(path, args.set, args.requests))
    rows = table(forecasts)
    labels = list(forecasts)
    width = max(
        12, *(len(x) for x in labels), *(len(_cell(v)) for vals in rows.values() for v in vals.values())
    )
    print(
        f"{'':<26}"
        + "".join(f"{x:>{width + 2}}" for x in labels)
        + (f"{'B vs A':>10}" if len(labels) == 2 else "")
    )
    for metric, vals in rows.items():
        cells = [vals.get(x) for x in labels]
        line = f"{metric:<26}" + "".join(f"{_cell(v):>{width + 2}}" for v in cells)
        a, b = cells[0] if cells else None, cells[-1] if cells else None
        if len(labels) == 2 and isinstance(a, (int, float)) and isinstance(b, (int, float)) and a:
            line += f"{(b / a - 1):>+10.1%}"
        print(line)
    print()
    for note in differences(forecasts):
        print(f"- {note}")
    return rows, labels


def _cell(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}"
    return str(v)


def cmd_fit(args: argparse.Namespace) -> int:
    from simulator.fit import DTYPES, GPU_COUNTS, format_fit, what_fits

    for gpu in args.gpu or []:
        load_profile(gpu)  # an unknown name is one line before any table
    rows = what_fits(
        args.model, args.gpu, tuple(args.dtype or DTYPES), tuple(args.gpus or GPU_COUNTS), args.context
    )
    print(format_fit(args.model, rows, args.context))
    return 0 if any(r.fits for r in rows) else 3


def cmd_models(_: argparse.Namespace) -> int:
    print(f"{'name':<20}{'params':>9}{'active':>9}{'layers':>8}{'KV/token bf16':>15}  notes")
    for name in catalogue_names():
        m = load_model(name)
        notes = []
        if m.is_moe:
            notes.append(f"MoE {m.num_experts} experts, top-{m.experts_per_token}")
        if m.is_mla:
            notes.append("MLA")
        if m.sliding_layers:
            notes.append(f"{m.sliding_layers}/{m.num_layers} layers sliding {m.sliding_window}")
        kv = m.kv_bytes_per_token("bf16") + m.sliding_kv_bytes_per_token("bf16")
        print(
            f"{name:<20}{human_count(m.param_count):>9}{human_count(m.active_param_count):>9}{m.num_layers:>8}"
            f"{kv / 1024:>12.0f} KiB  {', '.join(notes)}"
        )
    return 0


def cmd_gpus(_: argparse.Namespace) -> int:
    origins = profile_origins()
    print(
        f"{'name':<15}{'memory':>9}{'bandwidth':>12}{'bf16/fp16':>11}{'sustained':>11}{'fp8':>8}{'$/h':>7}  "
        f"{'efficiencies':<28}{'validation (median |error|)':<50}from"
    )
    for name, origin in origins.items():
        p = load_profile(name)
        pk = p.peak_tflops
        status, err = provenance(p)
        sixteen = p.sustained_flops("bf16") or p.sustained_flops("fp16")
        print(
            f"{name:<15}{p.memory_gib:>6.0f} GiB{p.memory_bandwidth_gbps:>8.0f} GB/s{(pk.bf16 or pk.fp16):>11.0f}"
            f"{(f'{sixteen / 1e12:.0f}' + ('*' if p.sustained and set(p.sustained.assumed) & {'bf16', 'fp16'} else '') if sixteen else '—'):>11}"
            f"{(f'{pk.fp8:.0f}' if pk.fp8 else '—'):>8}{p.price.usd_per_hour:>7.2f}  {status:<28}{err:<50}{origin}"
        )
    print(
        "(TFLOP/s dense; sustained: the large-GEMM rate measured here or published, the asymptote transfers scale to, "
        "* an assumption where no published measurement was found; "
        "tables: benchmarks/results/gpu_transfer.md, gpu_published.md)"
    )
    return 0


def cmd_engines(_: argparse.Namespace) -> int:
    """The engine profiles: which engine, its policy, where its figures come from and how well they held."""
    rows = []
    for name in engine_names():
        p = load_engine_profile(name)
        status = p.status + (f" on {p.gpu}" if p.gpu else "")
        metrics = p.validation.metrics if p.validation else []
        errors = [m.median_abs_pct for m in metrics]
        held = (
            f"{min(errors):.1f}-{max(errors):.1f}% over {len(errors)} metrics of up to {max(m.rows for m in metrics)} rows"
            if errors
            else "unvalidated"
        )
        loads = sorted(c.batch for c in p.validation.loads) if p.validation else []
        checked = ", ".join(f"{b:.3g}" for b in loads) if loads else "-"
        rows.append((name, p.engine, p.version.split(" ")[0], p.scheduling.policy, status, checked, held))
    head = (
        "name",
        "engine",
        "version",
        "policy",
        "status",
        "checked at (seqs/step)",
        "held-out median |error|",
    )
    widths = [max(len(r[i]) for r in [*rows, head]) + 2 for i in range(6)]
    for r in [head, *rows]:
        print("".join(f"{c:<{w}}" for c, w in zip(r, widths, strict=False)) + r[6])
    print(
        "(a scenario names one with `engine: NAME` or a .yaml path; default ours; tables in each profile's "
        "validation; checked at: each check's mean sequences a step, a forecast's band comes from those near its load)"
    )
    return 0


def cmd_examples(_: argparse.Namespace) -> int:
    """The shipped examples, each with the first line of its header comment."""
    folder = shipped("examples")
    print(f"{'name':<28}{'kind':<9}about   (run one by name: run NAME, search NAME; files in {folder})")
    for name in example_names():
        text = (folder / f"{name}.yaml").read_text(encoding="utf-8")
        about = next((ln.lstrip("# ").rstrip() for ln in text.splitlines() if ln.startswith("#")), "")
        kind = "search" if "\nsweep:" in text else "scenario"
        print(f"{name:<28}{kind:<9}{about}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from simulator.journal import JOURNAL, Journal, search_key
    from simulator.search import (
        SearchResult,
        configurations,
        format_table,
        load_spec,
        progress_bar,
        run_search,
    )

    spec = load_spec(_file_or_example(args.spec, "search spec"))
    if args.target:
        spec.target_rate_per_s = args.target
    backend = "ray" if args.ray else ("serial" if args.workers == 1 else "processes")
    with ResultFolder(args.out or f"results/{spec.name}", keep_unfinished=True) as folder:
        journal = Journal(folder.work / JOURNAL, search_key(spec), folder.previous(JOURNAL))
        if journal.done:
            print(f"resuming: {len(journal.done)} configurations already done ({JOURNAL})", file=sys.stderr)
        t0, result = time.perf_counter(), None
        try:
            result = run_search(spec, backend, args.workers, args.ray, progress_bar(), journal)
            journal.close()
            print(format_table(result, args.top))
            _write_search(result, folder, curves=not args.no_curves)
        except BaseException:
            # Ctrl-C or a crash: keep what finished (the table, the CSV and the journal a rerun resumes from)
            journal.close()
            if folder.committed or not journal.results:
                raise
            if result is None:
                done = sorted(journal.results.values(), key=lambda r: r.index)
                result = SearchResult(
                    spec, done, time.perf_counter() - t0, backend, len(configurations(spec))
                )
                print("\n" + format_table(result, args.top))
            _write_search(result, folder, curves=False)
            print(_wrote(folder))
            if result.partial:
                print(
                    f"\npartial: {len(result.results)} of {result.total} configurations; "
                    "rerun the same command to resume",
                    file=sys.stderr,
                )
            raise
    print(_wrote(folder))
    return 0 if result.feasible else 3


def _write_search(result: SearchResult, folder: ResultFolder, curves: bool) -> None:
    """search.csv (and the frontier's latency-vs-load curves) beside the journal, then swapped in."""
    from simulator.search import frontier_curves, to_csv

    (folder.work / "search.csv").write_text(to_csv(result))
    (folder.work / "frontier_curves.csv").unlink(missing_ok=True)  # one an interruption cut short
    if curves and result.frontier():
        lines = [
            "index,rate_per_s,attainment,ttft_p90_s,tpot_p90_s,e2e_p90_s,usd_per_1m_tokens,verdict,"
            "sustained_per_s,requests"
        ]
        for i, curve in frontier_curves(result).items():
            lines += [
                f"{i},{p.rate_per_s:.6g},{p.attainment:.4f},{p.ttft_p90_s:.6g},{p.tpot_p90_s:.6g},"
                f"{p.e2e_p90_s:.6g},{p.usd_per_1m_tokens:.6g},{p.verdict},{p.sustained_per_s:.6g},{p.requests}"
                for p in curve.probes
            ]
        (folder.work / "frontier_curves.csv").write_text("\n".join(lines) + "\n")
    folder.commit()


def cmd_report(args: argparse.Namespace) -> int:
    from simulator.report import build_report, write_report
    from simulator.simulation import simulate

    sc = _scenario(args.scenario, args.set, args.requests)
    with _scenario_folder(args.out, f"{sc.output.dir}/report") as folder:
        print(f"simulating {sc.name}, its maximum rate under the SLOs and 8 load points ...", file=sys.stderr)
        write_report(build_report(simulate(sc)), folder)
        folder.commit()
    print(_wrote(folder) + " (report.html is self-contained)")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    import json

    from simulator.measured import read_measured
    from simulator.results import _clean
    from simulator.validation import run_workload, table, validate

    data, source = _scenario_data(args.scenario)
    data = apply_overrides(data, args.set or [], source)
    runs = read_measured(args.measured)
    if "workload" not in data:  # (the measured run's workload is what is simulated)
        data = data | {"workload": run_workload(runs[0])[0]}
    sc = parse_scenario(data, source)
    with _scenario_folder(args.out, f"{sc.output.dir}-validate") as folder:
        checks = [validate(run, data, source, args.force) for run in runs]
        out = [v.as_dict() for v in checks]
        text = json.dumps(_clean(out[0] if len(out) == 1 else out), indent=2) + "\n"
        (folder.work / "validation.json").write_text(text)
        folder.commit()
    print("\n\n".join(table(v) for v in checks))
    print(_wrote(folder))
    return 0


RUN_EPILOG = (
    "Scenario fields (YAML, nested as shown; override any with --set field.path=value):\n"
    + "\n".join(field_help())
    + "\n\n"
    + LENGTH_HELP
    + "\n\nWith no SCENARIO, runs the built-in default: Llama-3.1-8B bf16 on one H100 SXM replaying the"
    "\nconversation trace (Azure LLM inference trace 2023, CC-BY-4.0) at its own arrival times."
)


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors as one line, like every other bad input (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message}; see `{self.prog} --help`\n")


def _count(text: str) -> int:
    """A whole number >= 1 (request counts, workers, rows)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more (got {n})")
    return n


def _rate(text: str) -> float:
    """A finite request rate above zero."""
    try:
        r = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(r) or r <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite rate above 0 req/s (got {text})")
    return r


def _percentiles(text: str) -> tuple[float, ...]:
    try:
        ps = tuple(float(x) for x in text.split(","))
    except ValueError:
        ps = ()
    if not ps or not all(0 < p < 100 for p in ps):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give percentiles between 0 and 100, comma-separated (50,90,99)"
        )
    return tuple(sorted(set(ps)))


def _override_options(p: argparse.ArgumentParser, scope: str = "") -> None:
    """--set and --requests, read by `_scenario`."""
    p.add_argument(
        "--set",
        action="append",
        metavar="FIELD=VALUE",
        help=f"override a field{scope}, e.g. serving.batching.max_num_seqs=64",
    )
    p.add_argument(
        "--requests",
        type=_count,
        help=f"number of requests{scope} (overrides workload.num_requests/duration_s)",
    )


def _folder(text: str) -> str:
    """--profiles: an existing folder."""
    if not Path(text).expanduser().is_dir():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a folder; give a folder of GPU profile .yaml files"
        )
    return text


PROFILES_HELP = (
    "a folder of your own GPU profiles (.yaml), searched before ./hardware_profiles and the built-in ones "
    f"(also ${PROFILES_ENV}, several joined by '{os.pathsep}')"
)


def _simulate_verbs(verb: Callable[..., argparse.ArgumentParser]) -> None:
    """run and compare: simulate scenarios."""
    r = verb(
        "run",
        help="simulate a scenario and write summary.json, requests.csv, timeline.csv",
        description="Simulate one scenario file (or the built-in default).",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument(
        "scenario",
        nargs="?",
        help="scenario YAML or an example's name (see `examples`; default: the built-in default scenario)",
    )
    r.add_argument(
        "--no-capacity",
        action="store_true",
        help="skip the search for the highest rate within the SLOs (summary.json's capacity; "
        "about 3 s more on the default scenario: its runs are at most 20,000 requests)",
    )
    r.add_argument(
        "--percentiles",
        type=_percentiles,
        metavar="50,90,99",
        help="percentiles of summary.json's vLLM-named keys (p50_ttft_ms...), as vLLM bench serve's "
        "--metric-percentiles (default 99, as there)",
    )
    r.add_argument(
        "--out",
        help="output folder (default: the scenario's output.dir; with --set or --requests, "
        "output.dir-set-HASH, HASH naming the overrides, so the unchanged scenario's results are kept)",
    )
    r.add_argument(
        "--workers",
        type=_count,
        help="split the replicas into this many shards run on local processes, identical to one process "
        "(routers that decide up front: round_robin, prefix_affinity; others run in one process, and say so)",
    )
    r.add_argument(
        "--ray", metavar="ADDRESS", help="run the shards on a Ray cluster ('auto', ray://host:10001, local)"
    )
    r.add_argument(
        "--stream",
        action="store_true",
        help="a sharded run whose coordinator's memory stays flat: records written by the shards as numpy "
        "chunks (OUT/records/), TTFT/TPOT/e2e/queueing percentiles sketched within 0.115%% (counts, means, "
        "ITL exact); on by default with --workers/--ray above 4,000,000 requests",
    )
    _override_options(r)
    r.set_defaults(fn=cmd_run)
    c = verb(
        "compare",
        help="simulate two or more scenarios and print them side by side, with the differences",
        description="Simulate each scenario file and print the headline numbers side by side.",
    )
    c.add_argument("scenarios", nargs="+", help="scenario YAML files or example names (two or more)")
    _override_options(c, " in every scenario")
    c.add_argument("--out", help="write compare.json and compare.csv into this folder")
    c.set_defaults(fn=cmd_compare)


def _catalogue_verbs(verb: Callable[..., argparse.ArgumentParser]) -> None:
    """fit, models, gpus, examples: what the catalogue holds and what fits."""
    ft = verb(
        "fit",
        help="what fits: a model on GPUs x weight formats x GPUs per replica, KV room, max batch",
        description="Whether MODEL fits each GPU profile, weight format and GPUs per replica (the memory plan "
        "the simulator enforces, default serving settings), the KV-cache room left and the batch it holds "
        "at --context tokens; a setup that does not fit names the smallest change that would.",
    )
    ft.add_argument("model", help="catalogue name or a Hugging Face config.json")
    ft.add_argument("--gpu", action="append", help="GPU profile (repeat; default: every profile)")
    ft.add_argument(
        "--dtype",
        action="append",
        choices=["bf16", "fp16", "fp8", "int8", "int4"],
        help="weight format (repeat)",
    )
    ft.add_argument("--gpus", action="append", type=_count, help="GPUs per replica (repeat; default 1 2 4 8)")
    ft.add_argument(
        "--context", type=_count, default=4096, help="tokens per sequence for max batch (default 4096)"
    )
    ft.set_defaults(fn=cmd_fit)
    verb("models", help="list catalogue models").set_defaults(fn=cmd_models)
    verb("gpus", help="list GPU profiles and where each is read from").set_defaults(fn=cmd_gpus)
    verb("engines", help="list engine profiles: policy, measured where, held-out error").set_defaults(
        fn=cmd_engines
    )
    verb("examples", help="list the shipped example scenarios and search specs").set_defaults(fn=cmd_examples)


def _search_and_report_verbs(verb: Callable[..., argparse.ArgumentParser]) -> None:
    """search and report: sweep configurations, write a report."""
    s = verb(
        "search",
        help="sweep configurations; max sustainable rate under the SLOs, cheapest, frontier",
        description="Sweep the fields listed under `sweep:` in SPEC (see examples/search_*.yaml); "
        "binary-search each configuration's maximum rate meeting the base scenario's SLOs.",
    )
    s.add_argument(
        "spec",
        help="search spec YAML (base scenario, sweep, slo_attainment, target_rate_per_s) or an example's name",
    )
    s.add_argument(
        "--out", help="output folder for search.csv and frontier_curves.csv (default results/NAME)"
    )
    s.add_argument("--workers", type=_count, help="local processes (default: one per CPU; 1 runs in-process)")
    s.add_argument(
        "--ray", metavar="ADDRESS", help="run on a Ray cluster ('auto', ray://host:10001, or local)"
    )
    s.add_argument("--target", type=_rate, help="target request rate (overrides target_rate_per_s)")
    s.add_argument("--top", type=_count, default=20, help="rows shown per table")
    s.add_argument("--no-curves", action="store_true", help="skip latency-vs-load curves of the frontier")
    s.set_defaults(fn=cmd_search)
    rp = verb(
        "report",
        help="write a self-contained HTML report (and Markdown) with plots",
        description="Simulate a scenario (and its latency vs load) and write report.html and report.md.",
    )
    rp.add_argument("scenario", nargs="?", help="scenario YAML or an example's name (default: the built-in)")
    rp.add_argument("--out", help="output folder (default: the scenario's output.dir/report)")
    _override_options(rp)
    rp.set_defaults(fn=cmd_report)
    v = verb(
        "validate",
        help="simulate a measured run's workload on a scenario and print measured, forecast and error per metric",
        description="Read a measured run (vLLM bench serve result JSON, GuideLLM report, AIPerf/genai-perf "
        "export, inferplan requests.csv), simulate its workload (lengths, rate or concurrency) on the scenario's "
        "model, GPU and engine, and print TTFT, TPOT, ITL, E2E (mean/p50/p90/p99) and throughput: measured, "
        "forecast, error. Writes validation.json.",
    )
    v.add_argument(
        "measured", help="the measured run's file (FILE#K: the K-th benchmark of a GuideLLM report)"
    )
    v.add_argument(
        "--scenario",
        help="scenario YAML or an example's name (default: the built-in); its workload may be "
        "left out: the measured run's is simulated",
    )
    v.add_argument(
        "--out", help="output folder for validation.json (default: the scenario's output.dir-validate)"
    )
    v.add_argument("--force", action="store_true", help="compare even when the run served another model")
    v.add_argument(
        "--set", action="append", metavar="FIELD=VALUE", help="override a scenario field (repeatable)"
    )
    v.set_defaults(fn=cmd_validate)


def build_parser(
    prog: str = "python -m simulator",
    more_verbs: Callable[[argparse._SubParsersAction], None] | None = None,
) -> argparse.ArgumentParser:
    """The command line; `more_verbs` adds verbs of a wider command (the `inferplan` script's)."""
    p = _Parser(prog=prog, description="inferplan: forecast LLM serving on GPUs.")
    p.add_argument("--version", action="version", version=f"inferplan {__version__}")
    p.add_argument("--profiles", metavar="DIR", type=_folder, help=PROFILES_HELP)
    # the same option after the verb; SUPPRESS keeps a verb's default from hiding one given before it
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--profiles", metavar="DIR", type=_folder, default=argparse.SUPPRESS, help=PROFILES_HELP
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    verb = functools.partial(sub.add_parser, parents=[common])
    _simulate_verbs(verb)
    _catalogue_verbs(verb)
    _search_and_report_verbs(verb)
    if more_verbs is not None:
        more_verbs(sub)
    return p


@contextlib.contextmanager
def _user_profiles(folder: str | None) -> Iterator[None]:
    """--profiles DIR for one command: first on the lookup path, in this process and any it starts."""
    before = os.environ.get(PROFILES_ENV)
    if folder is not None:
        os.environ[PROFILES_ENV] = os.pathsep.join(x for x in (folder, before) if x)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(PROFILES_ENV, None)
        else:
            os.environ[PROFILES_ENV] = before


@contextlib.contextmanager
def _renames_as_notes() -> Iterator[None]:
    """A field given by its previous name is one `note:` line on stderr (once each), not a Python warning."""
    show = warnings.showwarning

    def note(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, RenamedField):
            print(f"note: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("default", RenamedField)
        warnings.showwarning = note
        yield


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    args = (parser or build_parser()).parse_args(argv)
    try:
        with _user_profiles(getattr(args, "profiles", None)), _renames_as_notes():
            return args.fn(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except OSError as e:
        if e.filename is None:
            raise
        # a path the user named cannot be read or written (permissions, a file in the way, a full disk)
        print(
            f"error: {e.filename}: {e.strerror or e}; check the path, its permissions and free space",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
