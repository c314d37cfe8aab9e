"""benchmarks/moe_routing_balance.py on a toy MoE config: every MoE layer's routed rows counted, the statistics
consistent with each other, and a dense model refused in one line."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOY = {
    "model_type": "mixtral", "hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
    "num_key_value_heads": 2, "intermediate_size": 96, "num_local_experts": 4, "num_experts_per_tok": 2,
    "vocab_size": 128, "max_position_embeddings": 512, "rms_norm_eps": 1e-5,
}  # fmt: skip


def run(*args, cwd=ROOT):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "moe_routing_balance.py"), *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)


def test_toy_moe(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(TOY))
    r = run("--config", str(cfg), "--layers", "2", "--inter", "32", "--tokens", "60", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads((tmp_path / "moe_routing_balance.json").read_text())
    assert rec["tokens"] == 61 and rec["experts"] == 4 and len(rec["rows"]) == 2
    assert 0 < rec["uniform_cv"] < 1
    assert rec["zipf_skew"] == sum(r["zipf_skew"] for r in rec["rows"]) / 2 and 0 <= rec["zipf_skew"] <= 4
    for row in rec["rows"]:
        assert row["min_over_mean"] <= 1 <= row["max_over_mean"]
        # each expert's rows fill whole blocks: at least the rows' share, at most one partial block more each
        rows = rec["tokens"] * rec["top_k"]
        assert rows / rec["block"] <= row["row_blocks"] <= rows / rec["block"] + rec["experts"]


def test_timed_routing(tmp_path):
    """--time: every MoE layer timed at each token count under both routings, on the step's own rows."""
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(TOY))
    r = run("--config", str(cfg), "--tokens", "40", "--time", "8,41", "--cpu", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads((tmp_path / "moe_routing_balance.json").read_text())
    assert rec["layers"] == 3 and rec["inter"] == 96  # 0: the model as configured
    assert [p["tokens"] for p in rec["timed"]] == [8, 41]
    for p in rec["timed"]:
        assert len(p["layers"]) == 3
        for layer in p["layers"]:
            for name in ("router", "uniform"):
                assert layer[name]["seconds"]["triton"] > 0 and layer[name]["row_blocks"] >= 1
        assert p["router_s"] == sum(min(x["router"]["seconds"].values()) for x in p["layers"])
    r = run("--config", str(cfg), "--tokens", "40", "--time", "42", "--cpu", "--out", str(tmp_path))
    assert r.returncode == 2 and "--time" in r.stdout


def test_dense_model_is_refused(tmp_path):
    r = run("--model", "llama-3.1-8b", "--out", str(tmp_path))
    assert r.returncode == 2 and "not an MoE model" in r.stdout


def test_zipf_skew_recovers_the_exponent():
    """Rows drawn from core.parallelism.expert_inclusion at a known exponent give that exponent back."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from moe_routing_balance import zipf_skew

    from core.parallelism import expert_inclusion

    for e, k, s in ((8, 2, 0.0), (8, 2, 0.3), (64, 6, 0.8)):
        rows = expert_inclusion(e, k, s) * 100_000
        assert abs(zipf_skew(rows[::-1], k) - s) < 0.01, (e, k, s)
