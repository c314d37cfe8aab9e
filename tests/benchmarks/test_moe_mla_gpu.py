"""The MoE/MLA GPU script end to end on toy configs (CPU, Triton interpreted), then its tables script."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[2]


def test_cpu_tiny_run_and_tables(tmp_path):
    out, res = tmp_path / "out", tmp_path / "results"
    r = subprocess.run(
        [sys.executable, "benchmarks/moe_mla_gpu.py", "--out", str(out), "--cpu", "--tiny"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    raw = json.loads((out / "moe_mla_raw.json").read_text())
    kinds = {c["kernel"] for c in raw["checks"]}
    assert kinds == {"fused_moe", "mla_decode", "mla_prefill"} and all(c["ok"] for c in raw["checks"])
    st = raw["mixtral_steps"]
    assert [d["batch"] for d in st["decode"]] == [1, 2, 4, 8]
    for d in st["decode"]:  # the floor counts the experts the routing touched: k..E per layer
        assert 2 <= d["experts_touched_per_layer"] <= 4 and d["floor_s"] > 0 and d["step_s"] > 0
    assert st["decode"][0]["experts_touched_per_layer"] == 2  # batch 1, top-2
    assert [p["tokens"] for p in st["prefill"] if p["tiles"] == "default"] == [64, 128]
    assert [t["tokens"] for t in st["tiles"]] == [
        64,
        128,
    ]  # the engine's config per size (the CPU sweeps no more)
    dec = raw["decode_large"]
    assert [d["batch"] for d in dec] == [8, 16] and all(
        d["step_ms"] > 0 and d["roofline_ratio"] > 0 for d in dec
    )
    fid = raw["fidelity"]
    assert [f["model"] for f in fid] == ["tiny-deepseek", "tiny-mixtral"]
    for f in fid:
        assert "error" not in f, f.get("error")
        assert f["engine"]["output_tokens_per_s"] > 0 and f["simulator"]["output_tokens_per_s"] > 0
        assert f["engine_run"]["unfinished"] == 0
        assert (out / f"{f['model']}__engine_steps.csv").exists()
    r = subprocess.run(
        [sys.executable, "benchmarks/moe_mla_tables.py", "--raw", str(out), "--results", str(res)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    md = (res / "moe_bars_cpu_tiny.md").read_text()
    assert md.count("| fused_moe |") == 3 and md.count("| mla_prefill |") == 2 and "| tiny-deepseek |" in md
    large = md.split("## Large-batch decode (tiny_config)")[1].split("##")[0]
    assert large.count("\n| 8 |") + large.count("\n| 16 |") == 2
    # a second call on the same folder keeps every section (resumable) and measures nothing again
    r = subprocess.run(
        [sys.executable, "benchmarks/moe_mla_gpu.py", "--out", str(out), "--cpu", "--tiny", "--skip-fidelity",
         "--skip-decode"], cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0 and "kept checks, ceilings, mixtral_steps, fidelity, decode_large" in r.stdout
    assert json.loads((out / "moe_mla_raw.json").read_text())["mixtral_steps"] == st
    rows = sorted(p.parent.name for p in (res / "fidelity" / "cpu-tiny").glob("*/row.json"))
    assert rows == [
        "tiny-deepseek-tiny-fp32-conversation-80pct-chunked",
        "tiny-mixtral-tiny-fp32-conversation-80pct-chunked",
    ]
    assert "tiny-deepseek-tiny-fp32" in (res / "fidelity_cpu-tiny.md").read_text()
    # the tables again: a row already filed (say, run again since by fidelity.py) is kept, unless --replace-rows
    filed = res / "fidelity" / "cpu-tiny" / rows[0] / "row.json"
    filed.write_text(json.dumps(json.loads(filed.read_text()) | {"newer": True}))
    tables = [sys.executable, "benchmarks/moe_mla_tables.py", "--raw", str(out), "--results", str(res)]
    r = subprocess.run(tables, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "kept the rows already in" in r.stdout
    assert json.loads(filed.read_text()).get("newer") is True
    r = subprocess.run(tables + ["--replace-rows"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "newer" not in json.loads(filed.read_text())


def test_tables_refuse_a_folder_without_a_run(tmp_path):
    r = subprocess.run(
        [sys.executable, "benchmarks/moe_mla_tables.py", "--raw", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "moe_mla_raw.json" in r.stderr


def test_the_committed_bars_table_is_current(tmp_path, run_benchmark):
    """moe_bars_h200.md is what moe_mla_tables.py writes today from the committed raw run (its "cost model now"
    column went stale once; a profile or cost-model change fails this until `python benchmarks/moe_mla_tables.py`
    regenerates it, which leaves the fidelity rows filed since as they are)."""
    r = run_benchmark("moe_mla_tables.py", "--results", tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    committed = ROOT / "benchmarks" / "results" / "moe_bars_h200.md"
    assert (tmp_path / "moe_bars_h200.md").read_text() == committed.read_text()
