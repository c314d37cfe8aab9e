"""Bad trace files and bad model configs: each is one line on stderr and exit code 2, through the CLI.

Each row writes a file to tmp_path, names it in a scenario and runs `simulator run`; the row gives the
line the user must see (a regex of it) after "error: ".
"""

import json
import re

import pytest

from simulator.cli import main

HEADER = "arrived_at,num_prefill_tokens,num_decode_tokens\n"
MOONCAKE = '{"timestamp": 0, "input_length": 50, "output_length": 5, "hash_ids": [1, 2]}\n'

# (name, file name, contents: str, bytes, or None for a folder, the line after "error: " as a regex)
TRACES = [
    (
        "binary",
        "t.csv",
        b"\x89PNG\r\n\x1a\n\xff\xfe\x00",
        r"t\.csv: workload\.trace: not UTF-8 text \(byte 0x89\); give",
    ),
    (
        "nul bytes",
        "t.csv",
        HEADER + "0,1\x00,2\n",
        r"t\.csv: line 2: num_prefill_tokens: '1\\x00' is not a token count; write a whole number",
    ),
    ("folder", "t.csv", None, r"t\.csv: workload\.trace: is a folder; give a CSV or JSONL file"),
    (
        "too few fields",
        "t.csv",
        HEADER + "0,10,5\n1,10\n",
        r"t\.csv: line 3: 2 fields where the header has 3 \(arrived_at, num_prefill_tokens, "
        r"num_decode_tokens\); give every row one value per column",
    ),
    ("too many fields", "t.csv", HEADER + "0,10,5,7\n", r"t\.csv: line 2: 4 fields where the header has 3 "),
    (
        "NaN time",
        "t.csv",
        HEADER + "0,10,5\nnan,10,5\n2,10,5\n",
        r"t\.csv: line 3: arrived_at: 'nan' is not a finite time >= 0; write arrival times as seconds",
    ),
    ("infinite time", "t.csv", HEADER + "inf,10,5\n", r"line 2: arrived_at: 'inf' is not a finite time >= 0"),
    (
        "negative time",
        "t.csv",
        HEADER + "0,10,5\n-3,10,5\n",
        r"line 3: arrived_at: '-3' is not a finite time >= 0",
    ),
    (
        "empty time",
        "t.csv",
        HEADER + ",10,5\n",
        r"line 2: arrived_at: '' is neither seconds nor a date; write",
    ),
    (
        "not a date",
        "t.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,10,5\nyesterday,10,5\n",
        r"t\.csv: line 3: TIMESTAMP: 'yesterday' is neither seconds nor a date",
    ),
    (
        "negative tokens",
        "t.csv",
        HEADER + "0,10,5\n1,-5,5\n",
        r"t\.csv: line 3: num_prefill_tokens: '-5' tokens is outside 1\.\.10,000,000; fix the count or "
        r"remove the row \(every row of a trace is simulated\)",
    ),
    (
        "zero output",
        "t.csv",
        HEADER + "0,10,0\n",
        r"line 2: num_decode_tokens: '0' tokens is outside 1\.\.10,000,000",
    ),
    (
        "huge tokens",
        "t.csv",
        HEADER + "0,1e12,5\n",
        r"line 2: num_prefill_tokens: '1e12' tokens is outside 1\.\.",
    ),
    (
        "NaN tokens",
        "t.csv",
        HEADER + "0,nan,5\n",
        r"line 2: num_prefill_tokens: 'nan' tokens is outside 1\.\.",
    ),
    (
        "words for tokens",
        "t.csv",
        HEADER + "0,ten,5\n",
        r"line 2: num_prefill_tokens: 'ten' is not a token count",
    ),
    (
        "header only",
        "t.csv",
        HEADER + "\n\n",
        r"t\.csv: workload\.trace: read 0 data rows \(the file has a header or nothing\); give a trace",
    ),
    ("empty file", "t.csv", "", r"t\.csv: needs a prompt-length column .* found no columns"),
    (
        "mooncake not JSON",
        "t.jsonl",
        MOONCAKE + "{timestamp: 1}\n",
        r"t\.jsonl: line 2: not JSON \(Expecting property name enclosed in double quotes\); write one JSON",
    ),
    ("mooncake not an object", "t.jsonl", MOONCAKE + "[1, 2]\n", r"line 2: a list, not a JSON object; write"),
    (
        "mooncake hash_ids after the first line",
        "t.jsonl",
        '{"timestamp": 0, "input_length": 50, "output_length": 5}\n' + MOONCAKE,
        r"t\.jsonl: line 2: hash_ids: given here but not on line 1; give them on the first line too",
    ),
    (
        "mooncake nested too deeply",
        "t.jsonl",
        MOONCAKE + '{"x": ' + "[" * 100_000 + "]" * 100_000 + "}\n",
        r"t\.jsonl: line 2: not JSON \(nested too deeply\); write one JSON object per line",
    ),
    (
        "mooncake number too long",
        "t.jsonl",
        MOONCAKE + '{"timestamp": 1' + "0" * 5000 + "}\n",
        r"t\.jsonl: line 2: not JSON \(a number too long to read\); write one JSON object per line",
    ),
    (
        "mooncake missing field",
        "t.jsonl",
        MOONCAKE + '{"timestamp": 1, "input_length": 50}\n',
        r"t\.jsonl: line 2: output_length: missing; give it on every line",
    ),
    (
        "mooncake string count",
        "t.jsonl",
        MOONCAKE + '{"timestamp": 1, "input_length": "50", "output_length": 5}\n',
        r"line 2: input_length: '50' is not a number; write a JSON number",
    ),
    (
        "mooncake bool count",
        "t.jsonl",
        MOONCAKE + '{"timestamp": 1, "input_length": true, "output_length": 5}\n',
        r"line 2: input_length: True is not a number",
    ),
    (
        "mooncake NaN time",
        "t.jsonl",
        MOONCAKE + '{"timestamp": NaN, "input_length": 5, "output_length": 5}\n',
        r"line 2: timestamp: nan is not a finite time >= 0",
    ),
    (
        "hash_ids not a list",
        "t.jsonl",
        MOONCAKE + '{"timestamp": 1, "input_length": 50, "output_length": 5, "hash_ids": 7}\n',
        r"t\.jsonl: line 2: hash_ids: 7 is not a list; write a list of non-negative integers",
    ),
    (
        "hash_ids not integers",
        "t.jsonl",
        MOONCAKE + '{"timestamp": 1, "input_length": 50, "output_length": 5, "hash_ids": [1, "a"]}\n',
        r"line 2: hash_ids: 'a' is not a non-negative integer",
    ),
    (
        "hash_ids negative",
        "t.jsonl",
        MOONCAKE + '{"timestamp": 1, "input_length": 50, "output_length": 5, "hash_ids": [-1]}\n',
        r"line 2: hash_ids: -1 is not a non-negative integer",
    ),
    (
        "CSV hash_ids",
        "t.csv",
        HEADER.strip() + ",hash_ids\n0,10,5,[1 2]\n1,10,5,[1 x]\n",
        r"line 3: hash_ids: 'x' is not an integer",
    ),
]

LLAMA = {
    "model_type": "llama",
    "hidden_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "intermediate_size": 1024,
    "vocab_size": 1000,
    "max_position_embeddings": 4096,
}

# (name, config.json contents: a dict merged into LLAMA, a str/bytes file, or None for an empty folder, regex)
MODELS = [
    (
        "null heads",
        {"num_attention_heads": None},
        r"`num_attention_heads` is null; set it to a positive integer",
    ),
    (
        "string size",
        {"hidden_size": "4096"},
        r"`hidden_size` is '4096', not an integer; write a whole number",
    ),
    ("list size", {"intermediate_size": [1024]}, r"`intermediate_size` is \[1024\], not an integer"),
    ("bool layers", {"num_hidden_layers": True}, r"`num_hidden_layers` is True, not an integer"),
    ("fractional", {"vocab_size": 1000.5}, r"`vocab_size` is 1000.5, not an integer"),
    ("zero heads", {"num_attention_heads": 0}, r"`num_attention_heads` must be positive \(got 0\); fix"),
    ("negative MLP", {"intermediate_size": -100}, r"`intermediate_size` must be positive \(got -100\)"),
    ("zero KV heads", {"num_key_value_heads": 0}, r"`num_key_value_heads` must be positive \(got 0\)"),
    ("negative window", {"sliding_window": -4}, r"`sliding_window` must be at least 0 \(got -4\)"),
    ("huge field", {"vocab_size": 10**15}, r"`vocab_size` is 1,000,000,000,000,000, larger than any model's"),
    (
        "heads do not divide",
        {"hidden_size": 500},
        r"`hidden_size` \(500\) is not a multiple of num_attention_heads \(8\) and there is no head_dim; add",
    ),
    ("string flag", {"tie_word_embeddings": "false"}, r"`tie_word_embeddings` is 'false', not true or false"),
    (
        "top-k above experts",
        {"num_local_experts": 4, "num_experts_per_tok": 8},
        r"needs 1 to 4 experts per token",
    ),
    ("missing", {"vocab_size": "DELETE"}, r"`vocab_size` is missing from the model config; add it"),
    (
        "mamba",
        {"model_type": "mamba", "state_size": 16},
        r"model_type: architecture 'mamba' with state-space \(Mamba\) layers is not modelled; supported: "
        r"decoder-only transformers",
    ),
    (
        "nemotron-h",
        {"model_type": "nemotron_h", "hybrid_override_pattern": "M-M-M*-"},
        r"architecture 'nemotron_h' with hybrid Mamba-attention layers is not modelled; supported:",
    ),
    (
        "hybrid fields on a llama type",
        {"layers_block_type": ["mamba", "attention"]},
        r"architecture 'llama' with state-space layers \(`layers_block_type`\) is not modelled",
    ),
    (
        "t5",
        {"model_type": "t5", "is_encoder_decoder": True},
        r"architecture 't5' with encoder-decoder layers is not modelled; supported: decoder-only",
    ),
    (
        "encoder-decoder flag on a llama type",
        {"is_encoder_decoder": True},
        r"architecture 'llama' with encoder-decoder layers \(`is_encoder_decoder`\) is not modelled",
    ),
    (
        "linear attention layers",
        {"layer_types": ["linear_attention", "full_attention"]},
        r"architecture 'llama' with layer types linear_attention is not modelled",
    ),
    (
        "non-UTF-8",
        b"\xff\xfe{}",
        r"config\.json: model config: not UTF-8 text \(byte 0xff at offset 0\); give",
    ),
    ("not JSON", "hidden_size: 4096", r"config\.json' is not valid JSON \(Expecting value: line 1 column 1"),
    ("NaN size", '{"hidden_size": NaN}', r"`hidden_size` is nan, not an integer"),
    (
        "number too long",
        '{"hidden_size": 1' + "0" * 5000 + "}",
        r"config\.json: model config: holds a number too long to read; give a Hugging Face config\.json",
    ),
    ("a list", "[1, 2]", r"config\.json: a model config must be a JSON object"),
    ("folder without config", None, r"m: model: a folder with no config\.json; give a catalogue name"),
]


def _run(tmp_path, capsys, scenario: str) -> tuple[int, str]:
    s = tmp_path / "s.yaml"
    s.write_text(scenario)
    rc = main(["run", str(s), "--out", str(tmp_path / "out")])
    return rc, capsys.readouterr().err


def _one_line(rc: int, err: str, pattern: str) -> None:
    assert rc == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert re.search(pattern, err), err
    assert "Traceback" not in err


@pytest.mark.parametrize("name,file,content,pattern", TRACES, ids=[r[0] for r in TRACES])
def test_bad_trace_is_one_line(tmp_path, capsys, name, file, content, pattern):
    p = tmp_path / file
    if content is None:
        p.mkdir()
    elif isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content)
    scenario = (
        f"workload: {{trace: '{p}', arrival: {{process: trace}}, prompt_tokens: {{dist: trace}}, "
        "output_tokens: {dist: trace}}\n"
    )
    _one_line(*_run(tmp_path, capsys, scenario), pattern)


@pytest.mark.parametrize("name,content,pattern", MODELS, ids=[r[0] for r in MODELS])
def test_bad_model_config_is_one_line(tmp_path, capsys, name, content, pattern):
    folder = tmp_path / "m"
    folder.mkdir()
    p = folder / "config.json"
    if isinstance(content, dict):
        cfg = {k: v for k, v in {**LLAMA, **content}.items() if v != "DELETE"}
        p.write_text(json.dumps(cfg))
    elif isinstance(content, bytes):
        p.write_bytes(content)
    elif content is not None:
        p.write_text(content)
    target = folder if content is None else p
    scenario = (
        f"model: '{target}'\nworkload: {{arrival: {{process: poisson, rate_per_s: 1}}, num_requests: 5}}\n"
    )
    _one_line(*_run(tmp_path, capsys, scenario), pattern)


def test_the_good_base_config_and_trace_run(tmp_path, capsys):
    """The rows above differ from these by one field or line: the base itself is accepted."""
    (tmp_path / "config.json").write_text(json.dumps(LLAMA))
    (tmp_path / "t.jsonl").write_text(
        MOONCAKE + '{"timestamp": 500, "input_length": 60, "output_length": 6}\n'
    )
    scenario = (
        f"model: '{tmp_path / 'config.json'}'\nworkload: {{trace: '{tmp_path / 't.jsonl'}', arrival: "
        "{process: trace}, prompt_tokens: {dist: trace}, output_tokens: {dist: trace}}\n"
    )
    rc, err = _run(tmp_path, capsys, scenario)
    assert rc == 0, err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["requests"]["finished"] == 2


@pytest.mark.parametrize(
    "arrival,extra,pattern",
    [
        (
            "{process: trace}",
            ", duration_s: 60",
            r"t\.csv: workload\.duration_s: all 2 arrivals of the trace are at one",
        ),
        (
            "{process: trace, rate_per_s: 5}",
            "",
            r"workload\.arrival\.rate_per_s: all 2 arrivals .* no rate to rescale",
        ),
    ],
)
def test_a_trace_at_one_instant_cannot_be_replayed_over_time(tmp_path, capsys, arrival, extra, pattern):
    p = tmp_path / "t.csv"
    p.write_text(HEADER + "5,10,5\n5,10,5\n")
    scenario = f"workload: {{trace: '{p}', arrival: {arrival}, prompt_tokens: {{dist: trace}}{extra}}}\n"
    _one_line(*_run(tmp_path, capsys, scenario), pattern)


def test_dates_with_time_zones_are_read_in_utc_without_a_warning(tmp_path, recwarn):
    from simulator.trace import read_trace

    p = tmp_path / "t.csv"
    p.write_text(
        HEADER + "2023-11-16T18:15:46Z,10,5\n2023-11-16T23:15:48+05:00,10,5\n2023-11-16T18:15:50,10,5\n"
    )
    assert list(read_trace(str(p)).arrival_s) == [0.0, 2.0, 4.0]  # +05:00 is 18:15:48 UTC
    assert not [str(w.message) for w in recwarn]
