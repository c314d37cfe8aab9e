"""benchmarks/moe_tiles.py's CPU path: one toy MoE layer taken apart (align, each grouped GEMM per tile config,
the whole layer), the Triton kernels interpreted."""

import json


def test_cpu_toy_shape(tmp_path, run_benchmark):
    r = run_benchmark("moe_tiles.py", "--out", tmp_path, "--cpu", "--tokens", "8")
    assert r.returncode == 0, r.stderr[-2000:]
    raw = json.loads((tmp_path / "moe_tiles.json").read_text())
    (shape,) = raw["shapes"]
    (p,) = shape["points"]
    e, k = shape["shape"][:2]
    assert p["tokens"] == 8 and p["pairs"] == 8 * k and p["min_rows"] <= 8 * k / e <= p["max_rows"]
    for path in ("align_kernel", "align_one_program", "align_torch"):
        assert all(isinstance(s, float) and s > 0 for s in p[path].values())
    # each GEMM under the engine's own config first, then the swept one; every one timed
    for gemm in ("gate_up", "down"):
        rows = [g for g in p["gemms"] if g["gemm"] == gemm]
        assert rows[0]["engine"] and not any(g["engine"] for g in rows[1:]) and len(rows) == 2
        assert all(isinstance(g["seconds"], float) and g["seconds"] > 0 for g in rows)
        # every touched expert's rows fill whole blocks: at least one block per touched expert, at most pairs
        assert 1 <= rows[0]["row_blocks"] <= p["pairs"]
    assert p["layer"]["triton"] > 0
    assert "| 8 |" in (tmp_path / "moe_tiles.md").read_text()
