"""Capacity search: the sweep grid, the rate search's bracket, ranking, backends agreeing, the CLI."""

import csv
import math

import pytest

from core.errors import ConfigError
from core.hardware import load_profile
from simulator.cli import main
from simulator.search import (
    ConfigResult,
    SearchResult,
    bracket,
    configurations,
    fields_of,
    get_field,
    latency_vs_load,
    max_sustainable_rate,
    parse_spec,
    probe,
    run_search,
    set_field,
    with_rate,
)

BASE = {
    "model": "llama-3.1-8b",
    "hardware": {"gpu": "l4"},
    "workload": {
        "arrival": {"process": "poisson", "rate_per_s": 1.0},
        "prompt_tokens": {"dist": "lognormal", "median": 400, "sigma": 0.6, "max": 4000},
        "output_tokens": {"dist": "lognormal", "median": 100, "sigma": 0.6, "max": 800},
        "num_requests": 120,
    },
    "slo": {"ttft_s": 0.5, "tpot_s": 0.05},
}


def spec(**kw):
    data = {
        "name": "t",
        "base": BASE,
        "sweep": {"hardware.gpu": ["l4", "h100-sxm"]},
        "rate": {"rel_tol": 0.1},
    }
    return parse_spec(data | kw)


def test_field_paths_copy_and_create_sections():
    d = set_field(BASE, "serving.batching.max_num_seqs", 8)
    assert get_field(d, "serving.batching.max_num_seqs") == 8 and "serving" not in BASE
    assert get_field(with_rate(BASE, 3), "workload.arrival.rate_per_s") == 3.0
    assert get_field(BASE, "no.such.field", "x") == "x"


def test_configurations_are_the_product_in_order():
    s = spec(sweep={"hardware.gpu": ["l4", "t4"], "serving.batching.max_num_seqs": [8, 16, 32]})
    cfgs = configurations(s)
    assert len(cfgs) == 6
    assert cfgs[0] == {"hardware.gpu": "l4", "serving.batching.max_num_seqs": 8}
    assert cfgs[-1] == {"hardware.gpu": "t4", "serving.batching.max_num_seqs": 32}


def test_variants_combine_with_the_sweep():
    s = spec(
        variants={"one": {"cluster.replicas": 1}, "two": {"cluster.replicas": 2, "hardware.gpu": "h100-sxm"}},
        sweep={"serving.batching.max_num_seqs": [64, 256]},
    )
    cfgs = configurations(s)
    assert [c["variant"] for c in cfgs] == ["one", "one", "two", "two"]
    assert fields_of(s, cfgs[3]) == {
        "cluster.replicas": 2,
        "hardware.gpu": "h100-sxm",
        "serving.batching.max_num_seqs": 256,
    }
    res = run_search(s, "serial").results
    one, two = res[1], res[3]
    price = {g: load_profile(g).price.usd_per_hour for g in ("l4", "h100-sxm")}
    assert two.fields["cluster.replicas"] == 2 and two.status == "ok"
    assert two.usd_per_hour == pytest.approx(2 * price["h100-sxm"])  # both replicas are paid for
    assert one.overrides == {"variant": "one", "serving.batching.max_num_seqs": 256}


def test_spec_errors_are_one_line():
    with pytest.raises(ConfigError, match="slo"):
        parse_spec({"base": BASE | {"slo": {}}})
    with pytest.raises(ConfigError, match="swep: unknown field"):
        parse_spec({"base": BASE, "swep": {}})
    with pytest.raises(ConfigError, match="workload"):
        parse_spec({"base": {"model": "llama-3.1-8b"}})


def test_max_rate_brackets_the_slo_boundary():
    s = spec()
    rate, probes, summary = max_sustainable_rate(set_field(BASE, "hardware.gpu", "h100-sxm"), 0.9, s.rate)
    assert rate > 0 and summary is not None
    # the returned rate passes; a rate a bracket width above it fails
    # (in a run as long as the search's: a short one cannot tell a growing queue from a filling one)
    assert probe(BASE | {"hardware": {"gpu": "h100-sxm"}}, rate, 0.9, summary["requests"]["total"])[0].ok
    # the lowest failing rate, or the limit that the capacity measured by an overloaded run sets
    passed, fails_at, why = bracket(probes)
    assert passed == rate and why and fails_at <= rate * (1 + s.rate.rel_tol) * 1.0001
    # a looser SLO sustains at least as much
    loose = set_field(set_field(BASE, "hardware.gpu", "h100-sxm"), "slo", {"ttft_s": 5.0, "tpot_s": 0.2})
    assert max_sustainable_rate(loose, 0.9, s.rate)[0] >= rate


def test_statuses_for_impossible_configurations():
    s = spec(sweep={"hardware.gpu": ["t4", "h100-sxm"], "model": ["llama-3.1-70b", "qwen2.5-0.5b"]})
    res = {tuple(r.overrides.values()): r for r in run_search(s, "serial").results}
    assert res[("t4", "llama-3.1-70b")].status == "does not fit"
    assert "weights" in res[("t4", "llama-3.1-70b")].message
    assert res[("h100-sxm", "qwen2.5-0.5b")].status == "ok"
    bad = run_search(spec(sweep={"serving.batching.max_num_seqs": [0]}), "serial").results[0]
    assert bad.status == "invalid" and "max_num_seqs" in bad.message


def _r(i, rate, usd):
    return ConfigResult(
        i, {"x": i}, "ok", max_rate_per_s=rate, usd_per_hour=usd, usd_per_1m_tokens=usd / max(rate, 1e-9)
    )


def test_cheapest_and_frontier():
    results = [_r(0, 1.0, 1.0), _r(1, 10.0, 3.0), _r(2, 2.0, 3.5), _r(3, 30.0, 12.0), _r(4, 0.0, 0.5)]
    results[4].status = "below min rate"
    sr = SearchResult(spec(), results, 0.0, "serial")
    assert [r.index for r in sr.frontier()] == [0, 1, 3]
    # 20 req/s: 20 copies of #0 ($20), 2 of #1 ($6), 10 of #2 ($35), 1 of #3 ($12)
    assert [r.index for r in sr.cheapest(20.0, n=4)] == [1, 3, 0, 2]
    assert results[1].copies_for(20.0) == 2 and results[4].copies_for(1.0) is None


def _same(r):
    """Everything a result reports, NaN made comparable."""
    return repr(
        (r.index, r.status, r.max_rate_per_s, r.usd_per_1m_tokens, r.ttft_p90_s, r.tpot_p90_s, r.simulations)
    )


def test_process_pool_matches_serial():
    s = spec(sweep={"hardware.gpu": ["l4", "h100-sxm"], "serving.batching.max_num_seqs": [32, 256]})
    a = run_search(s, "serial")
    b = run_search(s, "processes", workers=2)
    assert [_same(r) for r in a.results] == [_same(r) for r in b.results]


def test_ray_backend_matches_process_pool():
    ray = pytest.importorskip("ray")
    s = spec()
    local = run_search(s, "processes", workers=2)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = run_search(s, "ray")
    finally:
        ray.shutdown()
    assert [_same(r) for r in remote.results] == [_same(r) for r in local.results]


def test_latency_grows_with_load_and_slo_breaks():
    data = set_field(BASE, "hardware.gpu", "h100-sxm")
    rate, _, s = max_sustainable_rate(data, 0.9)
    curve = latency_vs_load(
        data, [rate * x for x in (0.25, 1.0, 2.0)], window_s=s["requests"]["total"] / rate
    )
    ttft = [p.ttft_p90_s for p in curve.probes]
    assert ttft[0] < ttft[-1]
    assert set(curve.breaks_at) == {"ttft_s", "tpot_s"}
    assert any(v is not None and v <= rate * 2.0 for v in curve.breaks_at.values())
    assert [p.verdict for p in curve.probes][:2] == ["stable", "stable"]
    assert curve.unstable_at == rate * 2.0  # twice the max rate: the queue grows


def test_cli_search_writes_table_and_csv(tmp_path, capsys):
    spec_file = tmp_path / "spec.yaml"
    import yaml

    spec_file.write_text(
        yaml.safe_dump(
            {
                "name": "cli",
                "base": BASE,
                "sweep": {"hardware.gpu": ["l4", "h100-sxm"]},
                "target_rate_per_s": 5,
                "rate": {"rel_tol": 0.1},
            }
        )
    )
    rc = main(["search", str(spec_file), "--out", str(tmp_path / "out"), "--workers", "1"])
    out = capsys.readouterr()
    assert rc == 0
    assert "cheapest for 5 req/s" in out.out and "frontier" in out.out
    assert "2/2 configurations" in out.err  # the progress bar
    rows = list(csv.DictReader((tmp_path / "out" / "search.csv").open()))
    assert [r["hardware.gpu"] for r in rows] == ["l4", "h100-sxm"]
    h100 = rows[1]
    assert h100["status"] == "ok" and float(h100["max_rate_per_s"]) > 0
    assert int(h100["copies_for_target"]) == math.ceil(5 / float(h100["max_rate_per_s"]))
    curves = list(csv.DictReader((tmp_path / "out" / "frontier_curves.csv").open()))
    assert curves and {r["verdict"] for r in curves} <= {"stable", "overloaded", "inconclusive"}
    assert all(int(r["requests"]) > 0 for r in curves)


def test_cli_search_bad_spec_is_one_line(tmp_path, capsys):
    f = tmp_path / "bad.yaml"
    f.write_text("base: {model: llama-3.1-8b}\n")
    assert main(["search", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err
