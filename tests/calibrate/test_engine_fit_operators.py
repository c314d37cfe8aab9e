"""The operator rule of the engine fit: a model's layers counted by the operators it launches; leave-one-model-out
prefers the rule the synthetic rows were made with, and the shipped profiles carry the counts they were fitted with."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from calibrate.engine_fit import (
    OPERATORS_FILE,
    RawRuns,
    Row,
    _with_layers,
    leave_one_model_out,
    load_operators,
)
from core.errors import ConfigError
from core.model_spec import load_model

HOST_PER_OP_S = 35e-6


def rows_by_operators(ops) -> RawRuns:
    """Rows of three models whose host time is a fixed cost per operator launched (plus GPU time)."""
    rng = np.random.default_rng(0)
    raw = RawRuns()
    for m in ("llama-3.1-8b", "qwen2.5-7b", "gemma-3-12b"):
        spec = load_model(m)
        f = f"/runs/{m}.json"
        raw.files.append(f)
        raw.headers.append({"model": m})
        raw.sessions[f] = "2026-12-02"
        c = ops.models[spec.model_type]
        n_ops = c.per_layer * spec.num_layers + c.per_forward
        for k in range(30):
            gpu = rng.uniform(1e-3, 10e-3, 5)
            seqs = int(rng.integers(1, 64))
            t = gpu.sum() + n_ops * HOST_PER_OP_S * (1 + 0.01 * seqs)
            raw.rows.append(Row(m, "replay", "step_s", f"{k}", t, 0.1, gpu, seqs, 0, spec.num_layers, file=f))
    return raw


def test_leave_one_model_out_prefers_the_operator_rule():
    ops, source = load_operators(OPERATORS_FILE, "llama-3.1-8b")
    assert source.raw == [str(OPERATORS_FILE)] and ops.reference_per_layer == ops.models["llama"].per_layer
    raw = rows_by_operators(ops)
    raw.rows = _with_layers(raw.rows, "operator", ops)
    table = leave_one_model_out(raw, ops)
    gemma = {ln.split(" | ")[2]: ln for ln in table if ln.startswith("| gemma-3-12b |")}
    err = {rule: float(ln.split(" | ")[3].split("%")[0]) for rule, ln in gemma.items()}
    assert err["per operator"] < 0.5 < 10 < err["per layer"] < err["per step"]


def test_bad_operator_file_is_one_line(tmp_path: Path):
    bad = tmp_path / "ops.json"
    bad.write_text(json.dumps({"models": {}}))
    with pytest.raises(ConfigError, match="not an operator count file.*calibrate.operator_count"):
        load_operators(bad, "llama-3.1-8b")


@pytest.mark.parametrize("name", ["transformers", "transformers-generate"])
def test_shipped_transformers_profiles_count_operators(name):
    from core.engine_profile import load_engine_profile

    p = load_engine_profile(name)
    assert p.host.per_layer and p.host.operators is not None
    assert p.host_layers(48, "gemma3_text") > 1.5 * p.host_layers(48, "llama")
