"""Streamed fleet runs: the same records as one process, sketched percentiles within their stated bound,
counts and the stability verdict exact, and a run that resumes from the shards on disk."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from core.errors import ConfigError
from simulator.fleet_stream import (
    SKETCH_RELATIVE_ERROR,
    LogSketch,
    Moments,
    read_records,
    records_digest,
    simulate_streamed,
    table_chunks,
    workload_chunks,
)
from simulator.scenario import DEFAULT_SCENARIO, apply_overrides, parse_scenario
from simulator.shard import arrival_events
from simulator.simulation import simulate
from simulator.workload import generate

FLEET = [
    "cluster.router=round_robin",
    "workload.arrival.process=poisson",
    "workload.prompt_tokens={dist: lognormal, median: 600, sigma: 0.8, max: 8000}",
    "workload.output_tokens={dist: lognormal, median: 150, sigma: 0.7, max: 1500}",
]


def _scenario(extra: list[str], replicas: int = 6, rate: float = 120.0, n: int = 1500):
    data = apply_overrides(
        copy.deepcopy(DEFAULT_SCENARIO),
        [f"cluster.replicas={replicas}", *FLEET, f"workload.arrival.rate_per_s={rate}",
         f"workload.num_requests={n}", *extra],
    )  # fmt: skip
    return parse_scenario(data)


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["workload.arrival.process=gamma", "workload.arrival.cv=3", "workload.prompt_tokens={dist: uniform, min: 3, max: 999}"],
        ["workload.arrival.process=constant", "workload.output_tokens={dist: exponential, mean: 90}",
         "workload.prompt_tokens={dist: fixed, value: 77}"],
    ],
)  # fmt: skip
def test_workload_chunks_are_the_slices_of_the_whole_workload(extra):
    sc = _scenario(extra, n=5003)
    whole = generate(sc.workload, sc.seed)
    chunks = list(workload_chunks(sc, rows=611))
    assert [c[0] for c in chunks] == list(range(0, 5003, 611))
    for k, name in ((1, "arrival_s"), (2, "prompt_tokens"), (3, "output_tokens")):
        assert np.array_equal(np.concatenate([c[k] for c in chunks]), getattr(whole, name))


def test_arrival_events_chained_over_chunks_equal_the_whole_chain():
    rng = np.random.default_rng(3)
    times = np.cumsum(rng.exponential(1e-4, 4000)) + 1e6  # large times: `now + (t − now)` is off by ulps
    times[100:110] = times[100]  # ties join the previous event
    whole = arrival_events(times)
    parts, before = [], None
    for lo in range(0, len(times), 333):
        ev = arrival_events(times[lo : lo + 333], before)
        before = float(ev[-1])
        parts.append(ev)
    assert np.array_equal(np.concatenate(parts), whole)


def test_sketch_percentiles_are_within_the_stated_bound_and_merge():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.lognormal(-3, 1.5, 200_001), np.zeros(5000), rng.uniform(1e-6, 1e3, 1000)])
    a, b, whole = LogSketch(), LogSketch(), LogSketch()
    a.add(x[: len(x) // 3])
    b.add(x[len(x) // 3 :])
    whole.add(x)
    a.merge(b)
    assert np.array_equal(a.counts, whole.counts) and a.zeros == whole.zeros == 5000
    for q in (0.5, 1, 2.4, 10, 50, 90, 95, 99, 99.9, 100):
        exact = float(np.percentile(x, q))
        got = a.percentile(q)
        assert abs(got - exact) <= SKETCH_RELATIVE_ERROR * exact, q
    assert a.percentile(0) == 0.0  # zeros are exact
    assert math.isnan(LogSketch().percentile(50))


def test_moments_merge_to_numpys_mean_and_std():
    rng = np.random.default_rng(1)
    x = rng.lognormal(0, 2, 10_000)
    m = Moments()
    for part in np.array_split(x, 7):
        m.merge(Moments.of(part))
    assert m.n == len(x)
    assert m.mean == pytest.approx(float(x.mean()), rel=1e-12)
    assert m.std == pytest.approx(float(x.std()), rel=1e-12)


def _compare(sc, tmp_path, shards=3, chunk_rows=400):
    one = simulate(sc)
    st = simulate_streamed(sc, tmp_path / "records", shards=shards, backend="serial", chunk_rows=chunk_rows)
    a, b = one.summary, st.summary
    # every request's record, written once by the shard that ran it, as one process recorded it
    digest = records_digest(table_chunks(one.table))
    assert records_digest(read_records(tmp_path / "records")) == digest == b["simulation"]["records_digest"]
    ids = np.concatenate([c["request_id"] for c in read_records(tmp_path / "records")])
    assert np.array_equal(np.sort(ids), np.arange(len(one.table)))
    # exact: counts, the stability verdict, the replicas, rejection reasons
    for key in ("requests", "replicas", "rejected_reasons", "cluster", "model", "hardware"):
        assert b[key] == a[key], key
    # (its service time is a mean: a sum over shards)
    assert b["stability"] == a["stability"] | {
        "service_s": pytest.approx(a["stability"]["service_s"], rel=1e-12)
    }
    assert b["latency_s"]["itl"] == a["latency_s"]["itl"]
    for key in ("completed", "total_input_tokens", "total_output_tokens", "duration"):
        assert b[key] == a[key], key
    # sums in another order: equal to rounding
    for sec, key in (("throughput", "output_tokens_per_s"), ("utilisation", "busy_fraction"),
                     ("kv_cache", "mean_occupancy"), ("goodput", "fraction")):  # fmt: skip
        assert b[sec][key] == pytest.approx(a[sec][key], rel=1e-12)
    # sketched percentiles within the bound summary.json states; means exact to rounding
    assert b["percentiles"]["relative_error_bound"] == SKETCH_RELATIVE_ERROR
    for name in ("ttft", "tpot", "e2e", "queueing"):
        for k, v in a["latency_s"][name].items():
            if k == "mean":
                assert b["latency_s"][name][k] == pytest.approx(v, rel=1e-12)
            else:
                assert abs(b["latency_s"][name][k] - v) <= SKETCH_RELATIVE_ERROR * abs(v), (name, k)
    assert b["p99_ttft_ms"] == pytest.approx(a["p99_ttft_ms"], rel=SKETCH_RELATIVE_ERROR)
    assert b["std_tpot_ms"] == pytest.approx(a["std_tpot_ms"], rel=1e-9)
    return one, st


def test_streamed_run_equals_one_process_where_exact_and_within_the_bound_where_sketched(tmp_path):
    one, st = _compare(_scenario([]), tmp_path)
    assert st.table is None and st.stats.steps == one.stats.steps
    assert np.array_equal(st.stats.itl_hist, one.stats.itl_hist)


def test_streamed_run_with_requests_no_replica_can_serve(tmp_path):
    sc = _scenario(["serving.memory.max_model_len=1200"])
    one, st = _compare(sc, tmp_path)
    assert one.summary["rejected_reasons"]["longer_than_max_model_len"] > 50


def test_overloaded_streamed_run_stops_where_one_process_stops(tmp_path):
    sc = _scenario([], replicas=2, rate=400, n=20000)
    one, st = _compare(sc, tmp_path, shards=2, chunk_rows=5000)
    assert st.summary["stability"]["stopped_at_s"] is not None


def test_a_run_resumes_from_the_shards_on_disk(tmp_path):
    sc = _scenario([], n=900)
    first = simulate_streamed(sc, tmp_path, shards=3, backend="serial", chunk_rows=500)
    (tmp_path / "shard-0001.pkl").unlink()
    lines: list[str] = []
    again = simulate_streamed(sc, tmp_path, shards=3, backend="serial", chunk_rows=500, resume=True,
                              log=lines.append)  # fmt: skip
    assert any("resuming: 2 of 3 shards on disk, 1 to run" in line for line in lines)
    assert again.summary["simulation"]["records_digest"] == first.summary["simulation"]["records_digest"]
    assert again.summary["latency_s"] == first.summary["latency_s"]


def test_a_scenario_that_cannot_stream_says_why_in_one_line(tmp_path):
    sc = _scenario(["cluster.router=least_outstanding"])
    with pytest.raises(ConfigError, match="least_outstanding"):
        simulate_streamed(sc, tmp_path, backend="serial")


def test_run_stream_of_a_scenario_that_cannot_stream_is_one_line(tmp_path, capsys):
    from simulator.cli import main

    rc = main(["run", "--stream", "--workers", "2", "--requests", "100", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "arrival.process trace" in err[0], err


def test_run_stream_writes_the_summary_with_its_sketched_percentiles_said(tmp_path, capsys):
    from simulator.cli import main

    sets = [f"--set={o}" for o in FLEET] + [
        "--set=cluster.replicas=3",
        "--set=workload.arrival.rate_per_s=60",
    ]
    out = tmp_path / "o"
    rc = main(["run", "--stream", "--workers", "1", "--requests", "300", "--no-capacity", "--percentiles", "50,95",
               "--out", str(out), *sets])  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert "percentiles sketched (within 0.115%)" in text
    s = json.loads((out / "summary.json").read_text())
    assert s["requests"]["total"] == 300 and s["percentiles"]["relative_error_bound"] == SKETCH_RELATIVE_ERROR
    assert "p95_ttft_ms" in s and "p99_ttft_ms" not in s  # (--percentiles 50,95)
    assert (out / "records" / "plan.json").exists() and not (out / "requests.csv").exists()


def test_a_run_past_its_deadline_stops_with_its_plan_saved_and_resumes(tmp_path):
    from simulator.fleet_stream import Incomplete

    sc = _scenario([], n=600)
    with pytest.raises(Incomplete, match="0 of 2 shards done"):
        simulate_streamed(sc, tmp_path, workers=1, shards=2, deadline_s=0.0, chunk_rows=500)
    assert json.loads((tmp_path / "plan.json").read_text())["plan"]["n"] == 600
    done = simulate_streamed(sc, tmp_path, shards=2, backend="serial", chunk_rows=500, resume=True)
    assert done.summary["requests"]["total"] == 600
