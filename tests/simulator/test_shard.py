"""Sharded runs equal the one-process run byte for byte (summary.json and requests.csv)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from simulator.results import write_results
from simulator.scenario import DEFAULT_SCENARIO, apply_overrides, parse_scenario
from simulator.shard import _arrival_events_loop, arrival_events, simulate_sharded
from simulator.simulation import simulate

# how the run went, not what it forecast: the only fields that differ
WALL = ("wall_s", "requests_per_wall_s", "steps_per_wall_s", "shards", "shard_cpu_s", "shard_peak_rss_mib")

CLASSES = (
    "workload.classes=["
    "{name: a, share: 0.5, shared_prefix_tokens: 400, priority: 1},"
    "{name: b, share: 0.3, shared_prefix_tokens: 800},"
    "{name: c, share: 0.2, shared_prefix_tokens: 200}]"
)
CASES = {
    "round_robin": ["cluster.router=round_robin"],
    "round_robin_overloaded_stops_early": [
        "cluster.router=round_robin",
        "workload.arrival.rate_per_s=400",
        "workload.num_requests=20000",
    ],
    "prefix_affinity_with_prefix_caching": [
        "cluster.router=prefix_affinity",
        "serving.caching.prefix_caching=true",
        CLASSES,
        "workload.arrival.rate_per_s=30",
    ],
    "round_robin_priority_small_kv_preempts": [
        "cluster.router=round_robin",
        "serving.admission.scheduling_policy=priority",
        CLASSES,
        "serving.memory.gpu_memory_utilization=0.25",
        "workload.arrival.rate_per_s=40",
    ],
    "round_robin_pipeline_parallel_and_spec_decode": [
        "cluster.router=round_robin",
        "hardware.pipeline_parallel=2",
        "hardware.gpus_per_replica=2",
        "serving.speculative={method: self, num_speculative_tokens: 3, acceptance_rate: 0.6}",
    ],
    "round_robin_two_groups_one_too_short_for_some_requests": [
        "cluster.router=round_robin",
        "cluster.groups=[{gpu: h100-sxm, count: 2, serving: {memory: {max_model_len: 1500}}},"
        "{gpu: a100-80gb-sxm, count: 3}]",
    ],
}


def _scenario(overrides: list[str], n: int = 1500):
    fleet = [] if any(o.startswith("cluster.groups") for o in overrides) else ["cluster.replicas=4"]
    data = apply_overrides(copy.deepcopy(DEFAULT_SCENARIO), [*fleet, f"workload.num_requests={n}"])
    return parse_scenario(apply_overrides(data, overrides))


def _files(f, tmp_path, name: str) -> tuple[str, bytes]:
    folder = write_results(f, tmp_path / name)
    s = json.loads((folder / "summary.json").read_text())
    for k in WALL:
        s["simulation"].pop(k, None)
    return json.dumps(s, indent=2), (folder / "requests.csv").read_bytes()


@pytest.mark.parametrize("case", list(CASES))
def test_sharded_run_equals_one_process(case, tmp_path):
    sc = _scenario(CASES[case], 400 if "spec_decode" in case else 1500)
    one = _files(simulate(sc), tmp_path, "one")
    for shards in (2, 4):
        f = simulate_sharded(sc, shards, "serial")
        assert "sharding" not in f.summary, f.summary.get("sharding")
        assert _files(f, tmp_path, f"s{shards}") == one, f"{case}: {shards} shards differ from one process"
    if case == "round_robin_overloaded_stops_early":
        assert f.summary["stability"]["stopped_at_s"] is not None


def test_sharded_run_on_a_process_pool_equals_one_process(tmp_path):
    sc = _scenario(CASES["round_robin"], 600)
    assert _files(simulate_sharded(sc, 2, "processes", workers=2), tmp_path, "pool") == _files(
        simulate(sc), tmp_path, "one"
    )


@pytest.mark.parametrize(
    "overrides, why",
    [
        (["cluster.router=least_outstanding"], "least_outstanding"),
        (["cluster.router=round_robin", "cluster.max_ongoing_requests=4"], "router queue"),
        (
            [
                "cluster.replicas=1",
                "cluster.router=round_robin",
                "cluster.autoscaling={min_replicas: 1, max_replicas: 3, replica_capacity_per_s: 5}",
            ],
            "autoscaling",
        ),
        (
            [
                "cluster.router=prefix_affinity",
                "workload.classes=[{name: a, share: 0.5, shared_prefix_tokens: 400},{name: b, share: 0.5}]",
            ],
            "without a prefix",
        ),
    ],
)
def test_a_router_that_reads_load_stays_in_one_process_and_says_why(overrides, why, tmp_path):
    sc = _scenario(overrides, 300)
    f = simulate_sharded(sc, 2, "serial")
    assert why in f.summary["sharding"]["why_one_process"]
    f.summary.pop("sharding")
    assert _files(f, tmp_path, "a") == _files(simulate(sc), tmp_path, "b")


def test_arrival_events_replays_the_source_chain_bit_for_bit():
    rng = np.random.default_rng(0)
    times = np.sort(
        np.concatenate([np.cumsum(rng.exponential(0.013, 5000)), rng.uniform(0, 60, 200).round(1)])
    )
    times[100:140] = times[100]  # a run of equal times (a trace's same-second arrivals)
    times[2:] += 2.0
    times[:2] = 2.0**-53, 1 + 2.0**-52  # now + (t − now) lands an ulp below t (a rounding tie, to even)
    ev = arrival_events(times)
    assert np.array_equal(ev, _arrival_events_loop(times))
    assert ev[1] == 1.0 != times[1]  # where the chain lands off its arrival time, the replay follows it
    assert np.array_equal(ev[100:140], np.full(40, ev[100]))


def test_arrivals_the_chain_lands_off_their_time_reach_a_shard_at_that_time_too(tmp_path):
    from core.requests import Requests
    from simulator.workload import generate

    sc = _scenario(CASES["round_robin"], 400)
    reqs = generate(sc.workload, sc.seed)
    reqs.arrival_s[:2] = 2.0**-53, 1 + 2.0**-52  # the second is submitted at 1.0 by one process's chain
    reqs.arrival_s[2:] += 2.0
    reqs = Requests(reqs.arrival_s, reqs.prompt_tokens, reqs.output_tokens)
    one = simulate(sc, reqs)
    assert one.table.scheduled_s[1] == 1.0
    assert _files(simulate_sharded(sc, 2, "serial", requests=reqs), tmp_path, "s") == _files(
        one, tmp_path, "o"
    )


def test_cli_run_with_workers_writes_the_one_process_files(tmp_path, capsys):
    from simulator.cli import main

    args = ["run", "--set", "cluster.replicas=4", "--set", "cluster.router=round_robin", "--requests", "300",
            "--no-capacity"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    assert main([*args, "--workers", "2", "--out", str(tmp_path / "two")]) == 0
    assert "in 2 shards" in capsys.readouterr().out
    for name in ("requests.csv", "timeline.csv"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


@pytest.mark.parametrize("horizon", [1234.5678, 0.3, 7.0e5 / 3])
def test_check_times_are_where_chunked_runs_stop_the_clock(horizon):
    import simpy

    from simulator.shard import _check_time
    from simulator.stability import CHECKS

    env = simpy.Environment()
    for k in range(1, CHECKS + 1):
        env.run(until=horizon * k / CHECKS)
        assert env.now == _check_time(horizon, k)


def test_sharded_and_streamed_runs_on_ray_equal_one_process(tmp_path):
    """`run --ray`: the same shards on a (local) Ray cluster give the one-process files byte for byte, and a
    streamed run there writes every request's record as one process recorded it."""
    ray = pytest.importorskip("ray")
    from simulator.fleet_stream import read_records, records_digest, simulate_streamed, table_chunks

    drawn = [  # a drawn workload (a streamed run draws it in each shard)
        "workload.arrival.process=poisson",
        "workload.arrival.rate_per_s=40",
        "workload.prompt_tokens={dist: lognormal, median: 600, sigma: 0.8, max: 8000}",
        "workload.output_tokens={dist: lognormal, median: 150, sigma: 0.7, max: 1500}",
    ]
    sc = _scenario([*CASES["round_robin"], *drawn], 600)
    one = simulate(sc)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = simulate_sharded(sc, 2, "ray")
        streamed = simulate_streamed(sc, tmp_path / "records", shards=2, backend="ray", chunk_rows=200)
    finally:
        ray.shutdown()
    assert _files(on_ray, tmp_path, "ray") == _files(one, tmp_path, "one")
    digest = records_digest(table_chunks(one.table))
    assert records_digest(read_records(tmp_path / "records")) == digest
    assert streamed.summary["requests"] == one.summary["requests"]
    assert streamed.summary["stability"]["verdict"] == one.summary["stability"]["verdict"]
