"""Bad scenario files, search specs and arguments: each is one line on stderr and exit code 2.

One row per input: the files it needs, the command line, and a regex the whole line must match. Rows
stop before any simulation runs, so the table is fast. Traces and model config.json have their own table.
"""

from __future__ import annotations

import re
import time
import tracemalloc
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.errors import ConfigError, one_line, read_yaml
from simulator.cli import main
from simulator.scenario import Scenario, load_scenario, parse_scenario
from simulator.search import configuration_count, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[2]

W = "workload: {arrival: {process: poisson, rate_per_s: 1}, num_requests: 20}\n"
SPEC = (
    "name: {name}\nbase:\n  workload: {{arrival: {{process: poisson, rate_per_s: 1}}, num_requests: 50}}\n"
    "  slo: {{ttft_s: 0.5}}\nsweep: {sweep}\n"
)
# nine levels of nine: about 4.9e8 strings once expanded, from a file of about 400 bytes
LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)
BIG = "1e+08 requests|100,000,000 requests"


def _row(id, files, argv, line, env=None):
    return pytest.param(files, argv, line, env or {}, id=id)


ROWS = [
    # ---- reading YAML: encoding, folders, syntax with line and column, duplicate keys, limits, tags
    _row(
        "binary file",
        {"s.yaml": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"},
        ["run", "s.yaml"],
        r"error: s\.yaml: is a binary file, not a scenario file; give the YAML text file",
    ),
    _row(
        "latin-1 file",
        {"s.yaml": W.encode() + "name: caf\xe9\n".encode("latin-1")},
        ["run", "s.yaml"],
        r"error: s\.yaml:2: not UTF-8 text \(byte 0xe9 at offset \d+\); save the file as UTF-8",
    ),
    _row(
        "folder as scenario",
        {"d/x": ""},
        ["run", "d"],
        r"error: d: is a folder, not a scenario file; give the file's path",
    ),
    _row(
        "folder as search spec",
        {"d/x": ""},
        ["search", "d"],
        r"error: d: is a folder, not a search spec; give the file's path",
    ),
    _row(
        "folder in compare",
        {"a.yaml": W, "d/x": ""},
        ["compare", "a.yaml", "d"],
        r"error: d: is a folder, not a scenario file; give the file's path",
    ),
    _row(
        "binary GPU profile",
        {"gpu.yaml": b"\x7fELF\x02\x01\x01\x00\x00\xff\xfe"},
        ["run", "--requests", "5", "--set", "hardware.gpu=gpu.yaml"],
        r"error: gpu\.yaml: is a binary file, not a profile; give the YAML text file",
    ),
    _row(
        "yaml error keeps line and column",
        {"s.yaml": W + "serving:\n  max_num_seqs: 4\n   block_size: 8\n"},
        ["run", "s.yaml"],
        r"error: s\.yaml:4:14: not valid YAML: mapping values are not allowed here; .+",
    ),
    _row(
        "unclosed flow keeps line",
        {"s.yaml": W + "serving: {max_num_seqs: 4\n"},
        ["run", "s.yaml"],
        r"error: s\.yaml:3:1: not valid YAML: .+ \(while parsing a flow mapping at line 2\); .+",
    ),
    _row(
        "control character",
        {"s.yaml": W + "name: a\x07b\n"},
        ["run", "s.yaml"],
        r"error: s\.yaml:2:8: not valid YAML: character '\\x07' is not allowed; remove it",
    ),
    _row(
        "duplicate section",
        {"s.yaml": W + "serving: {max_num_seqs: 4}\nserving: {block_size: 8}\n"},
        ["run", "s.yaml"],
        r"error: s\.yaml:3:1: duplicate key 'serving' \(first given at line 2\); merge the two blocks into one",
    ),
    _row(
        "duplicate nested key",
        {"s.yaml": W + "serving:\n  block_size: 8\n  block_size: 32\n"},
        ["run", "s.yaml"],
        r"error: s\.yaml:4:3: duplicate key 'block_size' \(first given at line 3\); .+",
    ),
    _row(
        "duplicate key in search spec",
        {"p.yaml": SPEC.format(name="x", sweep="{}") + "name: y\n"},
        ["search", "p.yaml"],
        r"error: p\.yaml:6:1: duplicate key 'name' \(first given at line 1\); .+",
    ),
    _row(
        "billion laughs",
        {"s.yaml": LAUGHS + W},
        ["run", "s.yaml"],
        r"error: s\.yaml: YAML aliases: about 490,329,036 nodes added by aliases \(.+\), above the limit of "
        r"100,000; .+ INFERPLAN_MAX_YAML_ALIAS_NODES=490329037 .+",
    ),
    _row(
        "billion laughs in a search spec",
        {"p.yaml": LAUGHS},
        ["search", "p.yaml"],
        r"error: p\.yaml: YAML aliases: about 490,329,036 nodes .+",
    ),
    _row(
        "alias to itself",
        {"s.yaml": "a: &a [1, *a]\n" + W},
        ["run", "s.yaml"],
        r"error: s\.yaml:1:\d+: not valid YAML: an alias refers to the block that contains it; .+",
    ),
    _row(
        "nested too deeply",
        {"s.yaml": W + "name: " + "[" * 5000 + "]" * 5000 + "\n"},
        ["run", "s.yaml"],
        r"error: s\.yaml: not valid YAML: nested too deeply to read; flatten the structure",
    ),
    _row(
        "file over the size limit",
        {"s.yaml": W + "#" * 3000 + "\n"},
        ["run", "s.yaml"],
        r"error: s\.yaml: file size: about 3,\d{3} bytes, above the limit of 1,000; .+INFERPLAN_MAX_YAML_BYTES=.+",
        {"INFERPLAN_MAX_YAML_BYTES": "1000"},
    ),
    _row(
        "bad limit setting",
        {"s.yaml": W},
        ["run", "s.yaml"],
        r"error: environment: INFERPLAN_MAX_YAML_BYTES: 'lots' is not a positive whole number; .+",
        {"INFERPLAN_MAX_YAML_BYTES": "lots"},
    ),
    _row(
        "python tag",
        {"s.yaml": W + "name: !!python/object/apply:os.getcwd []\n"},
        ["run", "s.yaml"],
        r"error: s\.yaml:2:7: YAML tag 'tag:yaml\.org,2002:python/object/apply:os\.getcwd' is not allowed "
        r"\(only plain data is read\); remove the tag",
    ),
    # ---- values: non-finite floats, seeds, counts, admission control
    _row(
        "duration inf",
        {"s.yaml": "workload: {arrival: {process: poisson, rate_per_s: 1}, duration_s: .inf}\n"},
        ["run", "s.yaml"],
        r"error: s\.yaml: workload\.duration_s: must be a finite number \(got inf\); give a number",
    ),
    _row(
        "rate nan",
        {"s.yaml": "workload: {arrival: {process: poisson, rate_per_s: .nan}, num_requests: 5}\n"},
        ["run", "s.yaml"],
        r"error: s\.yaml: workload\.arrival\.rate_per_s: must be a finite number \(got nan\); .+",
    ),
    _row(
        "exponential mean inf",
        {"s.yaml": W},
        ["run", "s.yaml", "--set", "workload.output_tokens={dist: exponential, mean: .inf}"],
        r"error: s\.yaml: workload\.output_tokens\.exponential\.mean: must be a finite number \(got inf\); .+",
    ),
    _row(
        "think time inf",
        {"s.yaml": W},
        [
            "run",
            "s.yaml",
            "--set",
            "workload.classes=[{name: chat, share: 1, session: {think_time_s: .inf}}]",
        ],
        r"error: s\.yaml: workload\.classes\[0\]\.session\.think_time_s: must be a finite number .+",
    ),
    _row(
        "gamma cv below float resolution",
        {"s.yaml": W},
        ["run", "s.yaml", "--set", "workload.arrival={process: gamma, rate_per_s: 1, cv: 1e-300}"],
        r"error: s\.yaml: workload\.arrival\.cv: Input should be greater than or equal to 0\.001 \(got .+\)",
    ),
    _row(
        "gamma cv past float range",
        {"s.yaml": W},
        ["run", "s.yaml", "--set", "workload.arrival={process: gamma, rate_per_s: 1, cv: 1e300}"],
        r"error: s\.yaml: workload\.arrival\.cv: Input should be less than or equal to 100 \(got .+\)",
    ),
    _row(
        "class shares adding past float range",
        {"s.yaml": W},
        ["run", "s.yaml", "--set", "workload.classes=[{name: a, share: 1e308}, {name: b, share: 1e308}]"],
        r"error: s\.yaml: workload: the classes' shares add up past the largest number; give shares such as "
        r"1 and 3",
    ),
    _row(
        "link bandwidth inf",
        {
            "s.yaml": W + "disaggregation: {prefill: {}, decode: {}, "
            "link: {bandwidth_gbps: .inf, latency_s: 0}}\n"
        },
        ["run", "s.yaml"],
        r"error: s\.yaml: disaggregation\.link\.bandwidth_gbps: must be a finite number .+",
    ),
    _row(
        "price nan",
        {"s.yaml": W + "hardware: {price_per_gpu_hour_usd: .nan}\n"},
        ["run", "s.yaml"],
        r"error: s\.yaml: hardware\.price_per_gpu_hour_usd: must be a finite number \(got nan\); .+",
    ),
    _row(
        "slo inf",
        {"s.yaml": W + "slo: {ttft_s: .inf}\n"},
        ["run", "s.yaml"],
        r"error: s\.yaml: slo\.ttft_s: must be a finite number \(got inf\); .+",
    ),
    _row(
        "search rate bound inf",
        {"p.yaml": SPEC.format(name="x", sweep="{}") + "rate: {max_per_s: .inf}\n"},
        ["search", "p.yaml"],
        r"error: p\.yaml: rate\.max_per_s: must be a finite number \(got inf\); .+",
    ),
    _row(
        "search tolerance below float resolution",
        {"p.yaml": SPEC.format(name="x", sweep="{}") + "rate: {rel_tol: 1.0e-300}\n"},
        ["search", "p.yaml"],
        r"error: p\.yaml: rate\.rel_tol: Input should be greater than or equal to 0\.001 \(got 1e-300\)",
    ),
    _row(
        "true as a count",
        {"s.yaml": W},
        ["run", "s.yaml", "--set", "serving.batching.max_num_seqs=true"],
        r"error: s\.yaml: serving\.batching: max_num_seqs: true is not a number; give a number",
    ),
    _row(
        "yes as a rate",
        {"s.yaml": "workload: {arrival: {process: poisson, rate_per_s: yes}, num_requests: 20}\n"},
        ["run", "s.yaml"],
        r"error: s\.yaml: workload\.arrival: rate_per_s: true is not a number; give a number",
    ),
    _row(
        "token count past 2^53",
        {"s.yaml": W},
        ["run", "s.yaml", "--set", "workload.prompt_tokens={dist: fixed, value: 100000000000000000000000}"],
        r"error: s\.yaml: workload\.prompt_tokens\.fixed\.value: 1e\+23 is too large; use at most "
        r"9,007,199,254,740,992",
    ),
    _row(
        "priority past 2^53",
        {"s.yaml": W},
        [
            "run",
            "s.yaml",
            "--set",
            "workload.classes=[{name: a, share: 1, priority: -100000000000000000000}]",
        ],
        r"error: s\.yaml: workload\.classes\[0\]\.priority: -1e\+20 is too large; .+",
    ),
    _row(
        "negative seed",
        {"s.yaml": W + "seed: -1\n"},
        ["run", "s.yaml"],
        r"error: s\.yaml: seed: Input should be greater than or equal to 0 \(got -1\)",
    ),
    _row(
        "--requests 0",
        {},
        ["run", "--requests", "0"],
        r"error: python -m simulator run: argument --requests: must be 1 or more \(got 0\); see .+",
    ),
    _row(
        "--requests negative",
        {},
        ["report", "--requests", "-5"],
        r"error: python -m simulator report: argument --requests: must be 1 or more \(got -5\); see .+",
    ),
    _row(
        "--requests not a number",
        {},
        ["run", "--requests", "many"],
        r"error: python -m simulator run: argument --requests: 'many' is not a whole number; see .+",
    ),
    _row(
        "--workers 0",
        {},
        ["search", "x.yaml", "--workers", "0"],
        r"error: python -m simulator search: argument --workers: must be 1 or more \(got 0\); see .+",
    ),
    _row(
        "--workers negative",
        {},
        ["search", "x.yaml", "--workers", "-2"],
        r"error: python -m simulator search: argument --workers: must be 1 or more \(got -2\); see .+",
    ),
    _row(
        "--target nan",
        {},
        ["search", "x.yaml", "--target", "nan"],
        r"error: python -m simulator search: argument --target: must be a finite rate above 0 req/s .+",
    ),
    _row(
        "unknown subcommand",
        {},
        ["simulate"],
        r"error: python -m simulator: argument cmd: invalid choice: .+",
    ),
    _row(
        "max_queue_len 0",
        {"s.yaml": W + "serving: {admission: {max_queue_len: 0}}\n"},
        ["run", "s.yaml"],
        r"error: s\.yaml: serving\.admission\.max_queue_len: 0 would refuse every request \(.+\); use 1 or more, or leave "
        r"it unset for no limit",
    ),
    # ---- --set
    _row(
        "--set value not YAML",
        {},
        ["run", "--set", "serving.batching.max_num_seqs=[1"],
        r"error: --set 'serving\.batching\.max_num_seqs=\[1': value:1:3: not valid YAML: .+",
    ),
    _row(
        "--set without =",
        {},
        ["run", "--set", "serving.batching.max_num_seqs"],
        r"error: --set 'serving\.batching\.max_num_seqs': must look like field\.path=value; "
        r"e\.g\. serving\.batching\.max_num_seqs=128",
    ),
    _row(
        "--set empty part",
        {},
        ["run", "--set", "serving..block_size=4"],
        r"error: --set 'serving\.\.block_size=4': must look like field\.path=value; .+",
    ),
    _row(
        "--set unknown field",
        {},
        ["run", "--set", "serving.max_num_seq=64"],
        r"error: --set 'serving\.max_num_seq=64': serving has no field 'max_num_seq'; did you mean batching\.max_num_seqs\? "
        r"`python -m simulator run --help` lists the fields",
    ),
    _row(
        "--set unknown section",
        {},
        ["run", "--set", "servign.block_size=4"],
        r"error: --set 'servign\.block_size=4': a scenario has no field 'servign'; did you mean serving\? .+",
    ),
    _row(
        "--set below a value",
        {},
        ["run", "--set", "seed.x=4"],
        r"error: --set 'seed\.x=4': seed is not a section; set the whole section or a field in it",
    ),
    # ---- paths: output.dir stays inside the current folder; a search name is one plain component
    _row(
        "output.dir absolute",
        {"s.yaml": W + "output: {dir: /proc/inferplan-elsewhere}\n"},
        ["run", "s.yaml"],
        r"error: s\.yaml: output\.dir: '/proc/inferplan-elsewhere' leaves the current folder; use a relative path inside it "
        r"\(e\.g\. results/my-run\), or pass --out DIR on the command line",
    ),
    _row(
        "output.dir ..",
        {"s.yaml": W + "output: {dir: results/../../up}\n"},
        ["run", "s.yaml"],
        r"error: s\.yaml: output\.dir: 'results/\.\./\.\./up' leaves the current folder; .+ --out DIR .+",
    ),
    _row(
        "output.dir home",
        {"s.yaml": W + "output: {dir: ~/x}\n"},
        ["report", "s.yaml"],
        r"error: s\.yaml: output\.dir: '~/x' leaves the current folder; .+",
    ),
    _row(
        "output.dir by --set",
        {},
        ["run", "--set", "output.dir=/proc/inferplan-x"],
        r"error: default scenario: output\.dir: '/proc/inferplan-x' leaves the current folder; .+",
    ),
    _row(
        "search sweeps the rate it searches",
        {"p.yaml": SPEC.format(name="x", sweep="{workload.arrival.rate_per_s: [1, 2]}")},
        ["search", "p.yaml"],
        r"error: p\.yaml: \(top level\): sweep\.workload\.arrival\.rate_per_s: the search sets the rate itself; "
        r"remove it .+",
    ),
    _row(
        "--ray address not an address",
        {"p.yaml": SPEC.format(name="x", sweep="{}")},
        ["search", "p.yaml", "--ray", "::::"],
        r"error: --ray '::::': cannot start or reach Ray \(Invalid address format: ::::\); give 'auto' .+",
    ),
    _row(
        "search name ../",
        {"p.yaml": SPEC.format(name="../../outside", sweep="{}")},
        ["search", "p.yaml"],
        r"error: p\.yaml: name: '\.\./\.\./outside' is not a plain folder name \(it names results/NAME\); use up to "
        r"100 letters, digits, '\.', '_' and '-', e\.g\. llama-chat-capacity",
    ),
    _row(
        "search name with /",
        {"p.yaml": SPEC.format(name="a/b", sweep="{}")},
        ["search", "p.yaml"],
        r"error: p\.yaml: name: .+ is not a plain folder name \(it names results/NAME\); .+",
    ),
    _row(
        "search name ..",
        {"p.yaml": SPEC.format(name="a..b", sweep="{}")},
        ["search", "p.yaml"],
        r"error: p\.yaml: name: 'a\.\.b' is not a plain folder name \(it names results/NAME\); .+",
    ),
    _row(
        "search name odd characters",
        {"p.yaml": SPEC.format(name="'my run;'", sweep="{}")},
        ["search", "p.yaml"],
        r"error: p\.yaml: name: .+ is not a plain folder name \(it names results/NAME\); .+",
    ),
    # ---- size guards: the estimate, the limit and how to lift it, before anything is allocated
    _row(
        "a million replicas",
        {"s.yaml": W + "cluster: {replicas: 1000000}\n"},
        ["run", "s.yaml"],
        r"error: s\.yaml: cluster: about 1,000,000 replicas, above the limit of 10,000; make it smaller, or raise "
        r"the limit with INFERPLAN_MAX_REPLICAS=1000001 \(or INFERPLAN_MAX_REPLICAS=off\)",
    ),
    _row(
        "replica groups",
        {"s.yaml": W + "cluster: {groups: [{count: 6000}, {count: 6000}]}\n"},
        ["run", "s.yaml"],
        r"error: s\.yaml: cluster: about 12,000 replicas, above the limit of 10,000; .+",
    ),
    _row(
        "replicas under a lowered limit",
        {"s.yaml": W + "cluster: {replicas: 3}\n"},
        ["run", "s.yaml"],
        r"error: s\.yaml: cluster: about 3 replicas, above the limit of 2; .+",
        {"INFERPLAN_MAX_REPLICAS": "2"},
    ),
    _row(
        "duration 1e7",
        {"s.yaml": "workload: {arrival: {process: poisson, rate_per_s: 10}, duration_s: 1e7}\n"},
        ["run", "s.yaml"],
        r"error: s\.yaml: workload\.duration_s: about 100,000,000 requests \(10 req/s x 1e\+07 s\), above the "
        r"limit of 10,000,000; make it smaller, or raise the limit with INFERPLAN_MAX_REQUESTS=100000001 "
        r"\(or INFERPLAN_MAX_REQUESTS=off\)",
    ),
    _row(
        "conversations count their turns",
        {"s.yaml": W},
        [
            "run",
            "s.yaml",
            "--set",
            "workload.num_requests=null",
            "--set",
            "workload.duration_s=1e6",
            "--set",
            "workload.classes=[{name: chat, share: 1, session: {turns: {dist: fixed, value: 20}}}]",
        ],
        r"error: s\.yaml: workload\.duration_s: about 20,000,000 requests \(1 req/s x 1e\+06 s x 20 turns per "
        r"conversation\), above the limit of 10,000,000; .+",
    ),
    _row(
        "num_requests 1e9",
        {"a.yaml": W.replace("20}", "1000000000}"), "b.yaml": W},
        ["compare", "a.yaml", "b.yaml"],
        r"error: a\.yaml: workload\.num_requests: about 1,000,000,000 requests, above the limit of 10,000,000; .+",
    ),
    _row(
        "sweep of 1e8 configurations",
        {
            "p.yaml": SPEC.format(
                name="x",
                sweep="{" + ", ".join(f"f{i}: [{', '.join(map(str, range(10)))}]" for i in range(8)) + "}",
            )
        },
        ["search", "p.yaml"],
        r"error: p\.yaml: sweep: about 100,000,000 configurations \(10 x 10 x 10 x 10 x 10 x 10 x 10 x 10\), above "
        r"the limit of 10,000; make it smaller, or raise the limit with INFERPLAN_MAX_CONFIGURATIONS=100000001 .+",
    ),
    # ---- a path the user named for output cannot be written
    _row(
        "--out under a file",
        {"a.yaml": W, "f": ""},
        ["compare", "a.yaml", "a.yaml", "--out", "f/sub"],
        r"error: .*f.*; .+",
    ),
]


def _exit_code(argv: list[str]) -> int:
    """main's return value, or the code argparse exits with."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("files,argv,line,env", ROWS)
def test_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, files, argv, line, env):
    monkeypatch.chdir(tmp_path)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for name, content in files.items():
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
    rc = _exit_code(argv)
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert re.fullmatch(line, err.rstrip("\n")), err


@pytest.mark.parametrize(
    "tag",
    [
        "!!python/object/apply:os.system ['touch {f}']",
        "!!python/object/new:subprocess.Popen [['touch', '{f}']]",
        "!!python/name:os.system",
    ],
)
def test_python_tags_are_never_executed(tmp_path, tag):
    sentinel = tmp_path / "executed"
    f = tmp_path / "s.yaml"
    f.write_text(W + "name: " + tag.format(f=sentinel) + "\n")
    with pytest.raises(ConfigError, match=r"s\.yaml:2:7: YAML tag .+ is not allowed"):
        read_yaml(f, "scenario file")
    assert not sentinel.exists()


def _limited(fn, *args):
    """(the ConfigError raised, peak bytes allocated, seconds) of a call that must refuse."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ConfigError) as e:
            fn(*args)
        return str(e.value), tracemalloc.get_traced_memory()[1], time.perf_counter() - t0
    finally:
        tracemalloc.stop()


def test_size_estimates_allocate_nothing():
    """A day at a million requests per second, or 10^12 configurations, is refused from the fields alone."""
    huge = {"workload": {"arrival": {"process": "poisson", "rate_per_s": 1e6}, "duration_s": 1e9}}
    msg, peak_bytes, wall_s = _limited(parse_scenario, huge, "s")
    assert "about 1e+15 requests" in msg and peak_bytes < 1_000_000 and wall_s < 0.5
    spec = {
        "base": {"workload": {"arrival": {"process": "poisson", "rate_per_s": 1}}, "slo": {"ttft_s": 1}},
        "sweep": {f"f{i}": list(range(10)) for i in range(12)},
    }
    msg, peak_bytes, wall_s = _limited(parse_spec, spec, "p")
    assert "about 1,000,000,000,000 configurations" in msg and peak_bytes < 1_000_000 and wall_s < 0.5


def test_limits_are_raised_or_lifted_from_the_environment(monkeypatch):
    data = {"workload": {"arrival": {"process": "poisson", "rate_per_s": 10}, "duration_s": 1e7}}
    with pytest.raises(ConfigError, match="INFERPLAN_MAX_REQUESTS"):
        parse_scenario(data)
    monkeypatch.setenv("INFERPLAN_MAX_REQUESTS", "100000001")
    assert parse_scenario(data).workload.duration_s == 1e7  # validated only: nothing is generated
    monkeypatch.setenv("INFERPLAN_MAX_REQUESTS", "off")
    assert parse_scenario(data | {"cluster": {"replicas": 5000}}).cluster.replicas == 5000
    monkeypatch.setenv("INFERPLAN_MAX_REPLICAS", "4999")
    with pytest.raises(ConfigError, match="about 5,000 replicas, above the limit of 4,999"):
        parse_scenario(data | {"cluster": {"replicas": 5000}})
    spec = {"base": {"workload": data["workload"], "slo": {"ttft_s": 1}}, "sweep": {"seed": list(range(20))}}
    monkeypatch.setenv("INFERPLAN_MAX_CONFIGURATIONS", "19")
    with pytest.raises(ConfigError, match="about 20 configurations"):
        parse_spec(spec)
    monkeypatch.setenv("INFERPLAN_MAX_CONFIGURATIONS", "20")
    assert configuration_count(parse_spec(spec)) == 20


def test_one_line_never_builds_the_whole_repr():
    """A value shared 9^8 times (what alias expansion gives) is shown cut short, at once."""
    x: list = ["lol"] * 9
    for _ in range(8):
        x = [x] * 9
    with pytest.raises(ValidationError) as e:
        Scenario.model_validate({"name": x, "workload": {"arrival": {"rate_per_s": 1}}})
    t0 = time.perf_counter()
    msg = str(one_line(e.value, "s.yaml"))
    assert time.perf_counter() - t0 < 0.5
    assert msg.startswith("s.yaml: name: Input should be a valid string (got [[[") and len(msg) < 200


def test_merge_keys_may_override_and_every_example_still_loads(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(
        "x-base: &base {max_num_seqs: 8, block_size: 16}\n" + W + "serving:\n  <<: *base\n  block_size: 32\n"
    )
    data = read_yaml(f, "scenario file")
    assert data["serving"] == {"max_num_seqs": 8, "block_size": 32}
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        if path.name.startswith("search_"):
            assert configuration_count(load_spec(path)) >= 1
        else:
            assert load_scenario(path).output.dir.startswith("results")


def test_output_dir_inside_and_max_queue_len_one_are_accepted(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "s.yaml"
    f.write_text(W + "serving: {max_queue_len: 1}\noutput: {dir: results/./here}\n")
    assert main(["run", str(f)]) == 0
    summary = (tmp_path / "results" / "here" / "summary.json").read_text()
    assert '"finished": ' in summary and '"finished": 0,' not in summary
    assert main(["run", str(f), "--out", str(tmp_path / "elsewhere")]) == 0  # --out stays the user's choice
    assert (tmp_path / "elsewhere" / "summary.json").exists()
