"""`serving` in sub-blocks: every example reads the same in the previous flat layout (each moved key noted
once on stderr), `--set` and a search's sweep take the old paths too, and a misplaced key is one line."""

import copy
import warnings
from pathlib import Path

import pytest
import yaml

from core.errors import ConfigError
from simulator.cli import _renames_as_notes
from simulator.scenario import (
    SERVING_BLOCKS,
    SERVING_RENAMED,
    RenamedField,
    Serving,
    apply_overrides,
    field_help,
    parse_scenario,
)
from simulator.search import parse_spec

EXAMPLES = sorted(Path(__file__).resolve().parents[2].glob("examples/*.yaml"))
BASE = {"workload": {"arrival": {"process": "poisson", "rate_per_s": 2.0}}}
BACK = {new: old for old, new in SERVING_RENAMED.items()}  # "batching.max_num_seqs" -> "max_num_seqs"


def flat(serving: dict, workload: dict) -> int:
    """The previous release's layout of one `serving` mapping, in place; how many keys moved."""
    moved = 0
    for block in SERVING_BLOCKS:
        for name, value in (serving.pop(block, None) or {}).items():
            serving[BACK[f"{block}.{name}"]] = value
            moved += 1
    if "moe_routing_skew" in workload:
        serving["moe_routing_skew"] = workload.pop("moe_routing_skew")
        moved += 1
    return moved


def flattened(data: dict) -> tuple[dict, int]:
    """A scenario written in the previous release's flat `serving` layout, and how many keys that moves."""
    data = copy.deepcopy(data)
    servings = [data.setdefault("serving", {})]
    servings += [g["serving"] for g in data.get("cluster", {}).get("groups") or [] if "serving" in g]
    dg = data.get("disaggregation") or {}
    servings += [dg[p]["serving"] for p in ("prefill", "decode") if "serving" in dg.get(p, {})]
    moved = sum(flat(sv, data["workload"] if i == 0 else {}) for i, sv in enumerate(servings))
    return data, moved


def scenarios() -> list[tuple[str, dict]]:
    out = []
    for path in EXAMPLES:
        data = yaml.safe_load(path.read_text())
        out.append((path.stem, data.get("base", data)))
    return out


@pytest.mark.parametrize("name,data", scenarios(), ids=[p.stem for p in EXAMPLES])
def test_every_example_reads_the_same_in_the_flat_layout(name, data):
    old, moved = flattened(data)
    assert old != data or moved == 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        now = parse_scenario(data, name)
        assert not caught, "the shipped examples use the layout of now"
        before = parse_scenario(old, name)
    assert before == now
    assert len([w for w in caught if w.category is RenamedField]) == moved


def test_each_renamed_key_is_one_note_line_on_stderr_once(capsys):
    data = BASE | {
        "serving": {"max_num_seqs": 8, "batching": "static", "kv_dtype": "fp8", "moe_routing_skew": 1}
    }
    with _renames_as_notes():
        sc = parse_scenario(data, "s.yaml")
        parse_scenario(data, "s.yaml")  # a second read (a search's configurations) says nothing new
    lines = capsys.readouterr().err.splitlines()
    assert sc.serving.batching.mode == "static" and sc.serving.batching.max_num_seqs == 8
    assert sc.serving.precision.kv_dtype == "fp8" and sc.workload.moe_routing_skew == 1
    assert [line.split(" (")[0] for line in lines] == [
        "note: s.yaml: serving.batching → serving.batching.mode",
        "note: s.yaml: serving.max_num_seqs → serving.batching.max_num_seqs",
        "note: s.yaml: serving.kv_dtype → serving.precision.kv_dtype",
        "note: s.yaml: serving.moe_routing_skew → workload.moe_routing_skew",
    ]
    assert all("accepted until the next release" in line for line in lines)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # pytest.warns(match=...) passes the others on
def test_set_and_sweep_take_the_old_paths():
    with pytest.warns(RenamedField, match=r"--set: serving.max_num_seqs → serving.batching.max_num_seqs"):
        data = apply_overrides(copy.deepcopy(BASE), ["serving.max_num_seqs=64", "serving.batching=static"])
    assert data["serving"] == {"batching": {"max_num_seqs": 64, "mode": "static"}}
    # an old-layout file with an old-path override: the override wins, nothing is given twice
    old = BASE | {"serving": {"max_num_seqs": 8}}
    with pytest.warns(RenamedField):
        assert (
            parse_scenario(apply_overrides(old, ["serving.max_num_seqs=32"])).serving.batching.max_num_seqs
            == 32
        )
    spec = {
        "base": BASE | {"slo": {"ttft_s": 1}, "serving": {"block_size": 32}},
        "sweep": {"serving.weight_dtype": ["bf16", "fp8"], "hardware.gpu": ["l4"]},
    }
    with pytest.warns(
        RenamedField, match=r"spec: sweep: serving.weight_dtype → serving.precision.weight_dtype"
    ):
        parsed = parse_spec(spec, "spec")
    assert list(parsed.sweep) == ["serving.precision.weight_dtype", "hardware.gpu"]
    assert parsed.base["serving"] == {"memory": {"block_size": 32}}


@pytest.mark.parametrize(
    "serving,expect",
    [
        ({"batching": {"max_num_sequences": 8}}, "serving.batching.max_num_sequences: unknown field"),
        (
            {"batching": {"block_size": 32}},
            "serving.batching.block_size: unknown field; it belongs in the memory block: "
            "write serving.memory.block_size",
        ),
        ({"mode": "static"}, "serving.mode: unknown field; it belongs in the batching block"),
        (
            {"max_num_seqs": 8, "batching": {"max_num_seqs": 16}},
            "serving.max_num_seqs: given as 8 and as serving.batching.max_num_seqs = 16; keep only",
        ),
        ({"memory": {"preemption": "swap"}}, "serving.memory.preemption: Input should be 'recompute'"),
    ],
)
def test_a_misplaced_or_unknown_key_is_one_line_naming_it_and_the_fix(serving, expect):
    with pytest.raises(ConfigError) as e, warnings.catch_warnings():
        warnings.simplefilter("ignore", RenamedField)
        parse_scenario(BASE | {"serving": serving}, "s.yaml")
    assert "\n" not in str(e.value) and str(e.value).startswith("s.yaml: ") and expect in str(e.value)


def test_a_group_replaces_only_the_fields_it_sets_inside_a_block():
    base = Serving.model_validate({"batching": {"max_num_seqs": 64, "max_num_batched_tokens": 2048}})
    over = Serving.model_validate({"batching": {"max_num_seqs": 128}, "precision": {"kv_dtype": "fp8"}})
    merged = base.merged(over)
    assert (merged.batching.max_num_seqs, merged.batching.max_num_batched_tokens) == (128, 2048)
    assert merged.precision.kv_dtype == "fp8" and merged.precision.weight_dtype == "bf16"


def test_help_lists_the_serving_fields_once():
    lines = field_help()
    assert sum("max_num_seqs:" in line for line in lines) == 1
    assert any(line.startswith("  disaggregation.prefill.serving:") and "(the fields of serving, above)" in line
               for line in lines)  # fmt: skip


def test_a_variants_whole_section_is_read_in_the_new_layout():
    pools = {"prefill": {"serving": {"max_num_batched_tokens": 4096}}, "decode": {"count": 1}}
    spec = {
        "base": BASE | {"slo": {"ttft_s": 1}},
        "variants": {
            "split": {"disaggregation": pools | {"link": {"latency_s": 0}}},
            "one": {"cluster.replicas": 1},
        },
    }
    with pytest.warns(
        RenamedField, match=r"variants.split: disaggregation.prefill.serving.max_num_batched_tokens"
    ):
        parsed = parse_spec(spec, "spec")
    prefill = parsed.variants["split"]["disaggregation"]["prefill"]
    assert prefill == {"serving": {"batching": {"max_num_batched_tokens": 4096}}}
