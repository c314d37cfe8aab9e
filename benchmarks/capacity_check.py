"""Do the capacity search's answers hold up? Each answer re-run 20× longer, and the closed-form saturation points.

(a) The search on examples/search_chat.yaml and on a spec whose base has only 100 requests; every top
(cheapest) and frontier configuration is simulated again at its reported max rate with a run 20× longer
than the probe that found it: SLO attainment, TTFT/TPOT p90 and the stability verdict there. With
`--recheck SPEC=CSV` the rates of another search.csv (e.g. one written before the search was
stability-aware) are re-run 20× longer than its base scenario.
(b) Batch-size-1 replicas are queues with closed forms: one replica with deterministic service is M/D/1
(saturates at 1/S), c replicas behind a router queue with near-exponential service are M/M/c (c/E[S]).
The search with a loose SLO must not exceed the saturation point.

    python benchmarks/capacity_check.py                 # writes benchmarks/results/capacity_check.md
    python benchmarks/capacity_check.py --recheck chat=OLD/search.csv --recheck l4=OLD_L4/search.csv
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

from _checkout import ROOT  # (first: the checkout's root on sys.path)

from benchmarks.queueing import scenario, service_law  # noqa: E402
from benchmarks.search_speed import CHAT  # noqa: E402
from core.errors import read_yaml  # noqa: E402
from simulator.scenario import parse_scenario  # noqa: E402
from simulator.search import (  # noqa: E402
    RateSearch,
    configured,
    fields_of,
    max_sustainable_rate,
    parse_spec,
    run_search,
    set_field,
    with_rate,
    with_requests,
)
from simulator.simulation import simulate  # noqa: E402

LONGER = 20
MAX_LONG_REQUESTS = 400_000  # a bound on one check's run

L4_100 = {  # a base of 100 requests: the short run that let a search report its 500 req/s ceiling
    "name": "l4-100-requests",
    "base": {
        "model": "qwen2.5-0.5b",
        "hardware": {"gpu": "l4"},
        "workload": {**CHAT, "num_requests": 100},
        "slo": {"ttft_s": 0.5, "tpot_s": 0.05},
    },
    "sweep": {"serving.batching.max_num_seqs": [64, 256]},
    "rate": {"min_per_s": 0.05, "max_per_s": 500, "rel_tol": 0.05},
}

BURSTY = {  # bursty arrivals, whose probes must be longer than Poisson ones (search.arrival_burstiness)
    "name": "h100-bursty",
    "base": {
        "hardware": {"gpu": "h100-sxm"},
        "workload": CHAT,
        "slo": {"ttft_s": 1.0, "tpot_s": 0.05},
    },
    "variants": {
        "gamma cv 3": {"workload.arrival": {"process": "gamma", "rate_per_s": 1.0, "cv": 3}},
        "code trace": {
            "workload.trace": "code",
            "workload.arrival": {"process": "trace", "rate_per_s": 1.0},
            "workload.prompt_tokens": {"dist": "trace"},
            "workload.output_tokens": {"dist": "trace"},
        },
    },
}


def long_run(data: dict, rate: float, requests: int, attainment: float) -> dict:
    """The configuration at `rate` with `requests` arrivals: what a planner would see in production."""
    sc = parse_scenario(with_requests(with_rate(data, rate), min(requests, MAX_LONG_REQUESTS), rate))
    t0 = time.perf_counter()
    s = simulate(sc).summary
    r = s["requests"]
    att = s["goodput"]["fraction"] * r["finished"] / max(r["total"], 1)
    st = s["stability"]
    return {
        "requests": r["total"],
        "attainment": att,
        "ttft_p90_s": s["latency_s"]["ttft"]["p90"],
        "tpot_p90_s": s["latency_s"]["tpot"]["p90"],
        "verdict": st["verdict"],
        "holds": st["verdict"] == "stable" and att >= attainment,
        "wall_s": time.perf_counter() - t0,
    }


def check_search(spec_data: dict, top: int) -> tuple[list[dict], float, int]:
    spec = parse_spec(spec_data, spec_data.get("name", "spec"))
    t0 = time.perf_counter()
    result = run_search(spec, "processes")
    wall = time.perf_counter() - t0
    chosen = {r.index: r for r in result.cheapest(n=top) + result.frontier()}
    out = []
    for r in sorted(chosen.values(), key=lambda r: -r.max_rate_per_s):
        data = configured(spec.base, r.fields)
        row = {"spec": spec.name, "configuration": r.label, "max_rate_per_s": r.max_rate_per_s,
               "fails_at": r.failed_rate_per_s, "because": r.failed_because, "probe_requests": r.probe_requests}  # fmt: skip
        row |= long_run(data, r.max_rate_per_s, LONGER * r.probe_requests, spec.slo_attainment)
        out.append(row)
    return out, wall, len(result.results)


def recheck(spec_data: dict, csv_path: Path, top: int) -> list[dict]:
    """Another search's rates (its `max_rate_per_s` column), each re-run 20× longer than its base."""
    spec = parse_spec(spec_data, "recheck")
    rows = [r for r in csv.DictReader(csv_path.open()) if r["status"] == "ok"]
    rows = sorted(rows, key=lambda r: -float(r["max_rate_per_s"]))[:top]
    n = parse_scenario(spec.base).workload.num_requests or 1000
    overrides = {p: None for p in spec.sweep}
    out = []
    for row in rows:
        ov = {p: _typed(row[p], spec.sweep[p]) for p in overrides}
        data = configured(spec.base, fields_of(spec, ov))
        rate = float(row["max_rate_per_s"])
        label = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in ov.items())
        out.append({"spec": f"{spec.name} (rechecked)", "configuration": label, "max_rate_per_s": rate,
                    "fails_at": math.nan, "because": "", "probe_requests": n}
                   | long_run(data, rate, LONGER * n, spec.slo_attainment))  # fmt: skip
    return out


def _typed(text: str, values: list):
    return next((v for v in values if str(v) == text), text)


def closed_forms(seeds: int) -> list[dict]:
    loose = RateSearch(min_per_s=0.1, max_per_s=1000, rel_tol=0.02)
    out = []
    s, p = service_law("D")
    for seed in range(seeds):
        data = scenario("D", 0.5, 5000, seed=seed)[0].model_dump(mode="json", exclude_none=True)
        data = set_field(data, "slo", {"ttft_s": 100 * float(s[0])})
        rate = max_sustainable_rate(data, 0.9, loose)[0]
        out.append({"queue": "M/D/1", "seed": seed, "saturation_per_s": 1 / s[0], "searched_per_s": rate})
    s, p = service_law("G")
    mean = float(s @ p)
    for c in (2, 4):
        for seed in range(seeds):
            data = scenario("G", 0.5, 5000, seed=seed)[0].model_dump(mode="json", exclude_none=True)
            data = set_field(data, "cluster", {"replicas": c, "max_ongoing_requests": 1})
            data = set_field(data, "slo", {"ttft_s": 100 * mean})
            rate = max_sustainable_rate(data, 0.9, loose)[0]
            out.append(
                {"queue": f"M/M/{c}", "seed": seed, "saturation_per_s": c / mean, "searched_per_s": rate}
            )
    for row in out:
        row["ratio"] = row["searched_per_s"] / row["saturation_per_s"]
    return out


def _f(x, fmt: str) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def table(checks: list[dict], theory: list[dict], walls: list[str]) -> str:
    lines = [
        "# Capacity check: the search's answers against 20× longer runs and closed forms",
        "",
        "`python benchmarks/capacity_check.py` — each top (cheapest) and frontier configuration re-simulated at "
        f"its reported max rate with {LONGER}× the requests of the probe that found it (at most "
        f"{MAX_LONG_REQUESTS:,}). 'holds': the long run is stable and meets the SLO attainment.",
        "",
        *walls,
        "",
        "| spec | configuration | max req/s | fails at | because | probe requests | long-run requests | "
        "attainment | TTFT p90 (s) | TPOT p90 (ms) | verdict | holds |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for c in checks:
        lines.append(
            f"| {c['spec']} | {c['configuration']} | {c['max_rate_per_s']:.2f} | {_f(c['fails_at'], '.2f')} | "
            f"{c['because']} | {c['probe_requests']:,} | {c['requests']:,} | {c['attainment']:.1%} | "
            f"{_f(c['ttft_p90_s'], '.3f')} | {_f(c['tpot_p90_s'] * 1e3, '.1f')} | {c['verdict']} | "
            f"{'yes' if c['holds'] else 'NO'} |"
        )
    lines += [
        "",
        "## Closed forms: the search with a loose SLO (TTFT ≤ 100 service times) against the saturation point",
        "",
        "| queue | seed | saturation (req/s) | searched max (req/s) | searched / saturation |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {t['queue']} | {t['seed']} | {t['saturation_per_s']:.3f} | {t['searched_per_s']:.3f} | {t['ratio']:.3f} |"
        for t in theory
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--top", type=int, default=5, help="cheapest configurations checked per spec (plus the frontier)"
    )
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument(
        "--recheck",
        action="append",
        default=[],
        metavar="SPEC=CSV",
        help="re-run the rates of another search.csv of spec 'chat' (examples/search_chat.yaml) or 'l4' (the "
        "100-request spec), e.g. one written before the search was stability-aware",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "capacity_check.md")
    args = ap.parse_args()
    specs = {
        "chat": read_yaml(ROOT / "examples" / "search_chat.yaml", "search spec"),
        "l4": L4_100,
        "bursty": BURSTY,
    }
    checks, walls = [], []
    for spec in specs.values():
        rows, wall, n = check_search(spec, args.top)
        checks += rows
        walls.append(f"- search `{spec['name']}`: {n} configurations in {wall:.1f} s (2 worker processes)")
    for item in args.recheck:
        name, _, path = item.partition("=")
        checks += recheck(specs[name], Path(path), args.top)
    theory = closed_forms(args.seeds)
    text = table(checks, theory, walls)
    print(text)
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
