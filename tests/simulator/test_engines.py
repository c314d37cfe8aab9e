"""A scenario's engine: the profile's serving defaults under the fields the scenario sets, the refusals in one
line, ours named is no engine named, and the forecast says which engine and when it is transferred."""

from __future__ import annotations

import pytest
import yaml

from core.engine_profile import engine_names
from core.errors import ConfigError
from simulator.cli import main
from simulator.results import format_summary
from simulator.scenario import Serving, parse_scenario
from simulator.simulation import simulate

W = {"arrival": {"process": "poisson", "rate_per_s": 2}, "num_requests": 40}


def scenario(**fields) -> dict:
    return {"model": "llama-3.1-8b", "workload": W, **fields}


def _no_wall(d):
    if isinstance(d, dict):
        return {k: _no_wall(v) for k, v in d.items() if "wall" not in k}
    return d


def test_the_profiles_defaults_fill_what_the_scenario_leaves_unset():
    sc = parse_scenario(scenario(engine="transformers", serving={"memory": {"block_size": 32}}))
    b, m = sc.serving.batching, sc.serving.memory
    assert (b.mode, b.chunked_prefill, b.max_num_seqs, b.max_num_batched_tokens) == (
        "continuous",
        True,
        1024,
        8192,
    )
    assert m.block_size == 32  # set by the scenario: it wins over the profile's 256
    assert sc.serving.cuda_graphs == "none" and m.preemption == "recompute"
    assert m.gpu_memory_utilization == Serving().memory.gpu_memory_utilization  # not a field the profile sets
    gen = parse_scenario(scenario(engine="transformers-generate", serving={"batching": {"max_num_seqs": 8}}))
    gb = gen.serving.batching
    assert (gb.mode, gb.chunked_prefill, gb.max_num_seqs) == ("static", False, 8)
    assert gen.serving.memory.preemption == "none"


def test_a_groups_own_setting_wins_over_the_engines_default():
    from core.model_spec import load_model
    from simulator.cluster import plan_groups

    sc = parse_scenario(
        scenario(
            engine="transformers",
            cluster={"groups": [{"count": 1}, {"count": 1, "serving": {"batching": {"max_num_seqs": 16}}}]},
        )
    )
    a, b = plan_groups(sc, load_model("llama-3.1-8b"))
    assert a.serving.batching.max_num_seqs == 1024 and b.serving.batching.max_num_seqs == 16
    assert a.serving.memory.block_size == b.serving.memory.block_size == 256
    assert a.engine.name == b.engine.name == "transformers"


def test_a_scenario_without_an_engine_is_unchanged_and_echoed_as_before():
    plain = parse_scenario(scenario())
    assert plain.serving == Serving() and "engine" not in plain.model_dump()
    named = parse_scenario(scenario(engine="transformers"))
    assert named.model_dump()["engine"] == "transformers"
    again = parse_scenario(named.model_dump(mode="json"))  # the echo reproduces the scenario
    assert again.serving == named.serving and again.engine == "transformers"


def test_ours_named_forecasts_exactly_what_no_engine_does():
    plain = simulate(parse_scenario(scenario()))
    ours = simulate(parse_scenario(scenario(engine="ours")))
    named = dict(ours.summary)
    engine = named.pop("engine")
    assert _no_wall(named) == _no_wall(plain.summary) and "engine" not in plain.summary
    assert engine["name"] == "ours" and engine["transferred"] is None
    assert (ours.table.finish_s == plain.table.finish_s).all()


@pytest.mark.parametrize(
    ("fields", "needles"),
    [
        (
            {"engine": "vllm-9"},
            ["engine: engine 'vllm-9' has no profile", ", ".join(engine_names())],
        ),
        (
            {"engine": "transformers", "serving": {"precision": {"weight_dtype": "int4"}}},
            ["serving.precision.weight_dtype", "transformers has no kernels for int4", "bf16, fp16"],
        ),
        (
            {
                "engine": "transformers",
                "cluster": {"groups": [{"serving": {"precision": {"weight_dtype": "fp8"}}}]},
            },
            ["cluster.groups.0.serving.precision.weight_dtype", "fp8"],
        ),
        (
            {"engine": "transformers", "serving": {"batching": {"mode": "static"}}},
            ["serving.batching.mode", "does not pad static batches", "continuous"],
        ),
        (
            {"serving": {"memory": {"preemption": "none"}}},
            ["serving.memory.preemption", "needs static batching", "recompute"],
        ),
        ({"engine": "missing.yaml"}, ["engine: engine profile 'missing.yaml' does not exist"]),
    ],
)
def test_what_the_engine_cannot_run_is_refused_in_one_line(fields, needles):
    with pytest.raises(ConfigError) as e:
        parse_scenario(scenario(**fields), "s.yaml")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("s.yaml: ")
    for n in needles:
        assert n in msg


def test_a_profile_used_on_another_gpu_is_said_transferred_and_still_forecast(tmp_path, capsys):
    sc = parse_scenario(scenario(engine="transformers", hardware={"gpu": "h100-sxm"}))
    f = simulate(sc)
    e = f.summary["engine"]
    assert "transferred" in e["transferred"] and "h200" in e["transferred"] and "h100-sxm" in e["transferred"]
    assert e["validation"].startswith("held-out median |error|") and e["validation_metrics"]
    assert f.summary["requests"]["finished"] == 40  # the forecast is still made
    text = format_summary(f)
    assert "engine: transformers" in text and "transferred" in text
    # on the GPU it was measured on: no transferred line
    same = simulate(parse_scenario(scenario(engine="transformers", hardware={"gpu": "h200"})))
    assert same.summary["engine"]["transferred"] is None and "transferred" not in format_summary(same)
    # the CLI writes it to summary.json too
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(scenario(engine="transformers", hardware={"gpu": "h100-sxm"})))
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--no-capacity"]) == 0
    import json

    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert "transferred" in summary["engine"]["transferred"]
    out = capsys.readouterr().out
    assert "transferred" in out and "deploy with vLLM" not in out  # not a vLLM forecast


def test_transformers_is_slower_than_ours_by_its_host_time():
    """The same traffic on the same GPU: transformers' eager loop (tens of ms a step) against our engine's."""
    ours = simulate(parse_scenario(scenario(hardware={"gpu": "h200"})))
    hf = simulate(parse_scenario(scenario(hardware={"gpu": "h200"}, engine="transformers")))
    gen = simulate(parse_scenario(scenario(hardware={"gpu": "h200"}, engine="transformers-generate")))
    tpot = {k: f.summary["latency_s"]["tpot"]["p50"] for k, f in (("ours", ours), ("hf", hf), ("gen", gen))}
    assert tpot["hf"] > 5 * tpot["ours"] and tpot["gen"] > 5 * tpot["ours"]
    assert gen.summary["engine"]["name"] == "transformers-generate"


@pytest.mark.parametrize(
    "engine, padded", [(None, True), ("ours", True), ("transformers", False), ("vllm-h200", False)]
)
def test_our_engines_cuda_graph_padding_is_priced_for_ours_only(engine, padded):
    """Our engine's CUDA graphs pad a step's rows (core/graphs.py); another engine's fitted profile is not ours."""
    from core.model_spec import load_model
    from simulator.cluster import plan_groups

    model = load_model("llama-3.1-8b")
    sc = parse_scenario(scenario(**({"engine": engine} if engine else {})))
    (g,) = plan_groups(sc, model)
    cm = g.cost_model(model, 0.0)
    assert g.ours == padded and (cm.pad_decode and cm.pad_mixed) == padded
    assert cm.graph_rows(37, 0, 0) == (40 if padded else 37)
