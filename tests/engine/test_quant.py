"""int4 weight-only layers (engine/quant.py): packing round-trips, the reference equals a dequantized matmul,
the Triton kernels (through Triton's interpreter on the CPU) equal the reference, and a model built with
int4 weights runs the serving loop."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.quant import GROUP, Int4Linear, dequantize, quantize_int4, unpack_int4, w4a16_reference
from tests.engine.interpreted import run_interpreted

ROOT = Path(__file__).resolve().parents[2]


def test_packing_round_trips_and_quantization_error_is_a_half_step():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(48, 256, generator=g)
    qw, s = quantize_int4(w)
    assert qw.dtype == torch.int32 and qw.shape == (256 // 8, 48) and s.shape == (256 // GROUP, 48)
    q = unpack_int4(qw)
    assert q.min() >= 0 and q.max() <= 15
    # rebuild the words from the unpacked nibbles: the same bits
    shifts = 4 * torch.arange(8, dtype=torch.int64)
    words = (q.to(torch.int64).reshape(-1, 8, 48) << shifts[None, :, None]).sum(1)
    assert (torch.where(words >= 2**31, words - 2**32, words).to(torch.int32) == qw).all()
    err = (dequantize(qw, s, torch.float32) - w).abs()
    step = s.float().repeat_interleave(GROUP, 0).t()  # one quantization step per weight
    assert (err <= step / 2 + 1e-6).all() and err.max() > 0


def test_reference_and_layer_equal_a_dequantized_matmul():
    g = torch.Generator().manual_seed(1)
    lin = torch.nn.Linear(256, 40, bias=True)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(40, 256, generator=g) * 0.06)
    layer = Int4Linear(lin)
    x = torch.randn(5, 256, generator=g)
    w = dequantize(layer.qweight, layer.scales, torch.float32)
    want = x @ w.t() + lin.bias
    assert torch.allclose(layer(x), want, atol=1e-5)
    assert torch.allclose(w4a16_reference(x, layer.qweight, layer.scales), x @ w.t(), atol=1e-5)
    assert not torch.allclose(layer(x), lin(x), atol=1e-3)  # it is the 4-bit weight, not the original


def interpret(code: str) -> list[float]:
    """The numbers a script prints, run with Triton's interpreter (a fresh process: it must be set before
    Triton is imported); skipped where Triton is not installed."""
    return [float(e) for e in run_interpreted(code, timeout=120).split()]


KERNEL_CHECK = """
import torch
from engine.quant import quantize_int4, unpack_int4, w4a16, w4a16_reference
torch.manual_seed(0)
out = []
for dt, shapes in ((torch.float32, [(1, 256, 96), (3, 384, 64), (20, 256, 200), (40, 256, 128)]),
                   (torch.bfloat16, [(1, 512, 160)])):
    for m, k, n in shapes:
        w = (torch.randn(n, k) * k ** -0.5).to(dt)
        qw, s = quantize_int4(w)
        x = torch.randn(m, k).to(dt)
        ref = w4a16_reference(x, qw, s).float()
        y = w4a16(x, qw, s)
        assert y.shape == (m, n) and y.dtype == dt, (y.shape, y.dtype)
        out.append(float((y.float() - ref).abs().max() / ref.abs().max()))
# every GEMV launch configuration the GPU tuner picks from (split-K and not), and a 64-column tile
from engine import quant
w = torch.randn(64, 256) * 256 ** -0.5
qw, s = quantize_int4(w)
x = torch.randn(1, 256)
ref = w4a16_reference(x, qw, s)
for cfg in quant.GEMV_CONFIGS:
    assert torch.allclose(quant._gemv(x, qw, s, cfg), ref, atol=1e-4), cfg
x = torch.randn(20, 256)
assert torch.allclose(quant._gemm(x, qw, s, 32, (64, 4, 3, 2)), w4a16_reference(x, qw, s), atol=1e-4)
# the plane-at-a-time kernel: every configuration at one row, the few-rows ones at 3 and 5 rows (rows masked off
# in a bucket of 4 and 8), split-K and not; bf16 activations too; a weight with every nibble 0 and 15
for cfg in quant.PLANES_ONE:
    x = torch.randn(1, 256)
    assert torch.allclose(quant._planes(x, qw, s, (1, *cfg)), w4a16_reference(x, qw, s), atol=1e-4), cfg
for m, rows in ((3, 4), (5, 8)):
    x = torch.randn(m, 256)
    for cfg in quant.PLANES_FEW[rows] + [(64, 0, 4, 2)]:
        y = quant._planes(x, qw, s, (rows, *cfg))
        assert y.shape == (m, 64) and torch.allclose(y, w4a16_reference(x, qw, s), atol=1e-4), (m, cfg)
xb = torch.randn(4, 256).to(torch.bfloat16)
y = quant._planes(xb, qw, s.to(torch.bfloat16), (4, 64, 4, 4, 2)).float()
ref = w4a16_reference(xb, qw, s.to(torch.bfloat16)).float()
assert y.dtype == torch.float32 and (y - ref).abs().max() / ref.abs().max() < 1e-2
q = torch.where(torch.rand(256, 64) < 0.5, 0, 15).long().reshape(32, 8, 64)
words = (q << (4 * torch.arange(8))[None, :, None]).sum(1)
qe, se = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32), torch.rand(2, 64) + 0.5
assert set(unpack_int4(qe).unique().tolist()) == {0, 15}
x = torch.randn(1, 256)
assert torch.allclose(quant._planes(x, qe, se, (1, 64, 0, 4, 2)), w4a16_reference(x, qe, se), atol=1e-4)
# dequantize-then-matmul: the Triton dequantization is the reference's weight, transposed
w = torch.randn(72, 384) * 384 ** -0.5
qw, s = quantize_int4(w)
assert torch.equal(quant.dequant_t(qw, s, torch.float32), quant.dequantize(qw, s, torch.float32).t())
wb = quant.dequant_t(qw, s.to(torch.bfloat16), torch.bfloat16).float()
assert torch.allclose(wb, quant.dequantize(qw, s.to(torch.bfloat16), torch.float32).t(), rtol=1e-2, atol=1e-6)
print(" ".join(f"{e:.3g}" for e in out))
"""


def test_triton_kernels_equal_the_reference_under_the_interpreter():
    """GEMV (one row, split-K) and tile kernels (M = 3..70, split-K and not) against the reference; fp32 for
    the tile kernel (the interpreter's tl.dot on bf16 is not the GPU's), bf16 for the GEMV."""
    errs = interpret(KERNEL_CHECK)
    assert len(errs) == 5 and max(errs[:4]) < 1e-5 and errs[4] < 1e-2, errs


def test_torch_int4_byte_order_and_cpu_candidates(monkeypatch):
    """The uint8 input of torch's int4 packing holds k pairs as gpt-fast builds it (`q[:, ::2] << 4 | q[:, 1::2]`);
    on the CPU the one candidate is dequantize-then-matmul and the checker accepts it and rejects a wrong one."""
    from engine import quant

    g = torch.Generator().manual_seed(2)
    w = torch.randn(24, 256, generator=g)
    qw, s = quantize_int4(w)
    q = unpack_int4(qw).t()  # [N, K]
    assert torch.equal(quant.tinygemm_bytes(qw, True), (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8))
    assert torch.equal(quant.tinygemm_bytes(qw, False), (q[:, 1::2] << 4 | q[:, ::2]).to(torch.uint8))
    x = torch.randn(5, 256, generator=g)
    cands = quant.candidates(5, x, None)
    assert cands == [("dequant_mm", ())] and quant._check(cands[0], x, qw, s, None) is None
    assert torch.allclose(quant.w4a16(x, qw, s), w4a16_reference(x, qw, s), atol=1e-5)
    with pytest.raises(ValueError):
        quant.run_candidate(("nope", ()), x, qw, s, None)
    assert quant._check(("nope", ()), x, qw, s, None).startswith("ValueError")  # raises: dropped, with why
    other = quantize_int4(torch.randn(24, 256, generator=g))  # a kernel reading the wrong weight: far off
    monkeypatch.setattr(quant, "run_candidate", lambda c, x, qw, s, tg: w4a16_reference(x, *other))
    assert quant._check(cands[0], x, qw, s, None).startswith("error")


def test_int4_model_serves_on_the_cpu():
    from core.kv_cache import BlockPool
    from core.model_spec import spec_from_config
    from core.requests import Requests
    from engine.model import build_model
    from engine.serving import Executor, physical_tokens, serve

    cfg = {"model_type": "llama", "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "head_dim": 32, "intermediate_size": 256, "vocab_size": 97,
           "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0}  # fmt: skip
    spec = spec_from_config(cfg, name="tiny-int4")
    m4 = build_model(spec, dtype="int4", device="cpu")
    lin = [m for m in m4.modules() if isinstance(m, Int4Linear)]
    assert len(lin) == 4 * spec.num_layers  # qkv, o, gate_up, down; the LM head stays 16-bit
    rng = np.random.default_rng(0)
    req = Requests(np.zeros(6), rng.integers(3, 30, 6), rng.integers(2, 10, 6))
    ex = Executor(m4, physical_tokens(200, 4, req, 4), 4, device="cpu")
    run = serve(ex, req, BlockPool(200, 4), 4, 64, True)
    assert not run.unfinished and (run.table.generated == req.output_tokens).all()


W4_CHECK = """
import torch
from engine import quant
from engine.quant import quantize_int4, w4a16_reference
torch.manual_seed(0)
out = []
# (rows in the call, ROWS, K, N, BLOCK_N, R, programs per SM of the K-split): split-K and not, columns past N
# (masked) and not, chunks of 16 / 8 / 4 word rows, rows masked off in a bucket of 4 and 8
for m, rows, k, n, bn, r, per_sm, dt in ((1, 1, 256, 96, 64, 16, 0, torch.float32),
                                         (1, 1, 512, 128, 64, 16, 4, torch.bfloat16),
                                         (3, 4, 384, 64, 32, 8, 4, torch.float32),
                                         (5, 8, 512, 200, 64, 4, 4, torch.float32),
                                         (8, 8, 256, 64, 64, 16, 0, torch.bfloat16)):
    if True:
        w = (torch.randn(n, k) * k ** -0.5).to(dt)
        qw, s = quantize_int4(w)
        x = torch.randn(m, k).to(dt)
        ref = w4a16_reference(x, qw, s).float()
        for tail in ((), (-1, 1, 1)):  # split-K partials summed RB (8 / ROWS) a load, and one a load
            y = quant._w4(x, qw, s, (False, rows, bn, r, per_sm, 2, 2, *tail))
            assert y.shape == (m, n) and y.dtype == dt, (y.shape, y.dtype)
            out.append(float((y.float() - ref).abs().max() / ref.abs().max()))
assert not quant._COUNTERS[0].any()  # the split-K arrival counters are back to zero
print(" ".join(f"{e:.3g}" for e in out))
"""


def test_word_kernel_equals_the_reference_under_the_interpreter():
    """The plain-Triton variant of the word-at-a-time kernel (`_w4_kernel`, ASM off): one launch with split-K
    (partials summed by the last program of a column tile, one split or several a load) and without, rows and
    columns masked."""
    errs = interpret(W4_CHECK)
    assert len(errs) == 10, errs
    for case, bar in zip(
        range(5), (1e-5, 1e-2, 1e-5, 1e-5, 1e-2), strict=True
    ):  # fp32 cases exact to rounding
        assert max(errs[2 * case], errs[2 * case + 1]) < bar, (case, errs)


def _bf16_bits_to_f32(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


def _round_bf16(f: np.ndarray) -> np.ndarray:
    """fp32 -> bf16 bits, round to nearest even."""
    u = f.astype(np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def emulate_bf16x2_word_kernel(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> np.ndarray:
    """What `_w4_kernel` computes with ASM on, its PTX (`_DEQ_BF16X2`, `_DOT_BF16X2`) and the x pairing done bit for
    bit in numpy: one bf16 row x [K], words [K/8, N] -> y [N] in fp32."""
    from engine.quant import _DEQ_BF16X2, _DOT_BF16X2, _PAIRS_BF16X2

    assert "0x43004300" in _DEQ_BF16X2.value and "0x43084308" in _DEQ_BF16X2.value  # 128 + q, minus 136
    assert "mul.rn.bf16x2" in _DOT_BF16X2.value
    assert (
        _PAIRS_BF16X2.value.count("0x5410") == 2 and _PAIRS_BF16X2.value.count("0x7632") == 2
    )  # prmt: see below
    w = qweight.numpy().view(np.uint32)  # [K/8, N]
    xq = x.view(torch.int64).numpy().reshape(-1, 2)  # [K/8, 2] int64 quads of bf16, as the kernel loads them
    lo, hi = xq[:, 0], xq[:, 1]
    a, b = (lo & 0xFFFFFFFF).astype(np.uint32), ((lo >> 32) & 0xFFFFFFFF).astype(np.uint32)
    c, d = (hi & 0xFFFFFFFF).astype(np.uint32), ((hi >> 32) & 0xFFFFFFFF).astype(np.uint32)
    m16 = np.uint32(0xFFFF)

    def prmt(u, v, sel):  # PTX prmt.b32: bytes of {v, u} (u bytes 0-3, v bytes 4-7) picked by sel's nibbles
        both = u.astype(np.uint64) | (v.astype(np.uint64) << np.uint64(32))
        return sum(((both >> np.uint64(8 * ((sel >> 4 * i) & 7))) & np.uint64(0xFF)) << np.uint64(8 * i)
                   for i in range(4)).astype(np.uint32)  # fmt: skip

    pairs = [prmt(a, c, 0x5410), prmt(a, c, 0x7632), prmt(b, d, 0x5410), prmt(b, d, 0x7632)]
    acc_lo = acc_hi = None
    for j, p in enumerate(pairs):
        t = ((w >> np.uint32(4 * j)) & np.uint32(0x000F000F)) | np.uint32(0x43004300)  # lop3 (a & b) | c
        for lane in (0, 1):
            q = _bf16_bits_to_f32((t >> np.uint32(16 * lane)) & m16) - np.float32(136.0)  # exact: q - 8
            xv = _bf16_bits_to_f32((p[:, None] >> np.uint32(16 * lane)) & m16)
            prev = acc_lo if lane == 0 else acc_hi
            v = _bf16_bits_to_f32(
                _round_bf16(q * xv + (0 if prev is None else prev))
            )  # mul / fma, bf16 rounding
            if lane == 0:
                acc_lo = v
            else:
                acc_hi = v
    word = (acc_lo + acc_hi).astype(np.float32)  # [K/8, N]: the word's 8 products
    group = x.shape[0] // scales.shape[0]
    return (word.reshape(scales.shape[0], group // 8, -1).sum(1) * scales.float().numpy()).sum(0)


def test_bf16x2_word_kernel_arithmetic_matches_the_reference():
    """The PTX path cannot run without a GPU: its bit tricks (nibbles j and j + 4 as the two bf16 lanes after a
    shift by 4j; x pairs (k, k + 4) cut from int64 loads) emulated bit for bit equal the reference to bf16
    rounding, and a word read with the pairs crossed (x[k + 1] against nibble k) does not."""
    pytest.importorskip("triton")
    g = torch.Generator().manual_seed(3)
    w = torch.randn(64, 512, generator=g) * 512**-0.5
    qw, s = quantize_int4(w.to(torch.bfloat16))
    x = torch.randn(512, generator=g).to(torch.bfloat16)
    ref = w4a16_reference(x[None], qw, s).float()[0].numpy()
    y = emulate_bf16x2_word_kernel(x, qw, s)
    assert np.abs(y - ref).max() / np.abs(ref).max() < 1e-2
    swapped = x.view(-1, 2).flip(1).reshape(-1)  # x[k + 1] where x[k] belongs
    bad = emulate_bf16x2_word_kernel(swapped, qw, s)
    assert np.abs(bad - ref).max() / np.abs(ref).max() > 0.1


def run_cpu_benchmark(script: str, out, timeout: int) -> None:
    """benchmarks/<script> --cpu --no-step into `out`, its Triton kernels through the interpreter."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, str(ROOT / "benchmarks" / script), "--out", str(out), "--cpu", "--no-step"]
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-2000:]


def test_int4_gemv_benchmark_cpu_path(tmp_path):
    """benchmarks/int4_gemv_gpu.py on a toy shape through the interpreter: a row per row count, each with the
    chosen kernel, its error against the reference, the floor and its ratio; the markdown table written."""
    pytest.importorskip("triton")
    import json

    run_cpu_benchmark("int4_gemv_gpu.py", tmp_path, 120)
    res = json.loads((tmp_path / "int4_gemv.json").read_text())
    assert [row["m"] for row in res["rows"]] == [1, 3]
    for row in res["rows"]:
        assert row["max_rel_error"] < 1e-2 and row["x_floor"] == pytest.approx(row["us"] / row["floor_us"])
        assert "w4" in row["best_us_by_kernel"] and row["chosen"] in row["candidates_us"]
    assert "| toy | a | 256->192 | 3 |" in (tmp_path / "int4_gemv.md").read_text()


def test_int4_chain_benchmark_cpu_path(tmp_path):
    """benchmarks/int4_chain_gpu.py on toy shapes through the interpreter: the tuner's chain, the word kernel's
    (RB splits a load and one a load, the same output to bf16 rounding) and cuBLAS's in 16 bits, each against
    its floor; no PDL rows off sm90."""
    pytest.importorskip("triton")
    import json

    run_cpu_benchmark("int4_chain_gpu.py", tmp_path, 300)
    rows = {row["variant"]: row for row in json.loads((tmp_path / "int4_chain.json").read_text())["rows"]}
    assert list(rows) == ["tuned", "w4asm", "w4asm rb1", "bf16"]
    for row in rows.values():
        assert row["x_floor"] == pytest.approx(row["us"] / row["floor_us"]) and row["x_floor"] > 0
    assert rows["w4asm rb1"]["max_abs_diff_vs_w4asm"] < 2e-2
    assert "| w4asm rb1 |" in (tmp_path / "int4_chain.md").read_text()
