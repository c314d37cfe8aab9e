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
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", KERNEL_CHECK], env=env, cwd=ROOT, capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    errs = [float(e) for e in r.stdout.split()]
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
