import math

import pytest
import torch

from engine import kernels
from engine.attention import make_layout, reference_attention, varlen_attention
from engine.fused import act_mul, add_rmsnorm, rope_and_cache, rope_ref
from engine.timing import measure, random_like_nonzero, rotating
from tests.engine.interpreted import run_interpreted


def _ok(t):
    return isinstance(t, float) and math.isfinite(t) and t > 0


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "int8"])
def test_time_gemm_positive(dtype):
    assert _ok(kernels.time_gemm(4, 64, 32, dtype=dtype, device="cpu", warmup=1, repeat=3))


def test_gemm_rejects_fp8_on_cpu_and_bad_dtype():
    with pytest.raises(ValueError):
        kernels.time_gemm(4, 64, 32, dtype="fp8", device="cpu")
    with pytest.raises(ValueError):
        kernels.time_gemm(4, 64, 32, dtype="fp5", device="cpu")


def test_attention_timers_positive():
    assert _ok(
        kernels.time_attention_prefill(16, 8, 4, 2, 16, device="cpu", dtype="fp32", warmup=1, repeat=2)
    )
    assert _ok(kernels.time_attention_decode(3, [5, 9, 2], 4, 2, 16, device="cpu", warmup=1, repeat=2))
    with pytest.raises(ValueError):
        kernels.time_attention_decode(2, [5], 4, 2, 16, device="cpu")
    with pytest.raises(ValueError):
        kernels.time_attention_decode(2, 5, 4, 2, 16, device="cpu", kv_dtype="fp8")


def test_elementwise_and_copy_report_bytes():
    s, b = kernels.time_elementwise(8, 64, device="cpu", head_dim=16, warmup=1, repeat=2)
    assert _ok(s) and b == kernels.elementwise_bytes(8, 64, 224, 4, 1, 16)
    s, b = kernels.time_copy(1 << 16, device="cpu", warmup=1, repeat=2)
    assert _ok(s) and b == 2 * (1 << 16)


def test_collectives_skip_without_gpus():
    if torch.cuda.device_count() < 2:
        assert kernels.time_allreduce(1024) is None
        assert kernels.time_sendrecv(1024) is None


def test_varlen_attention_reads_only_own_context():
    g = torch.Generator().manual_seed(0)
    lay = make_layout([1, 1, 3], [4, 9, 2], "cpu")  # two decodes and a chunk after a prefix
    k = torch.randn(sum(lay.k_lens), 2, 8, generator=g)
    v = torch.randn(sum(lay.k_lens), 2, 8, generator=g)
    q = torch.randn(5, 4, 8, generator=g)
    out = varlen_attention(q, k, v, lay, 8**-0.5)
    # direct definition for the second sequence: its one query over its 10 keys, GQA groups of 2
    ks, kl = lay.k_starts[1], lay.k_lens[1]
    for h in range(4):
        s = (k[ks : ks + kl, h // 2] @ q[1, h]) * 8**-0.5
        ref = torch.softmax(s, 0) @ v[ks : ks + kl, h // 2]
        assert torch.allclose(out[1, h], ref, atol=1e-5)
    # keys outside a sequence's region do not matter; keys inside do
    k2 = k.clone()
    k2[ks + kl :] = 100.0
    assert torch.allclose(reference_attention(q, k2, v, lay, 8**-0.5)[1], out[1], atol=1e-6)
    k2[ks] = 100.0
    assert not torch.allclose(reference_attention(q, k2, v, lay, 8**-0.5)[1], out[1], atol=1e-3)


def test_sliding_window_masks_old_keys():
    lay = make_layout([1], [9], "cpu")
    k, v = torch.randn(10, 1, 8), torch.randn(10, 1, 8)
    q = torch.randn(1, 1, 8)
    a = reference_attention(q, k, v, lay, 1.0, window=3)
    k[:7] = 50.0  # outside the window of 3: no effect
    assert torch.allclose(a, reference_attention(q, k, v, lay, 1.0, window=3), atol=1e-6)
    ref = torch.softmax(k[7:, 0] @ q[0, 0], 0) @ v[7:, 0]
    assert torch.allclose(a[0, 0], ref, atol=1e-5)


def test_fused_references():
    x, r, w = torch.randn(3, 32), torch.randn(3, 32), torch.rand(32) + 0.5
    y, h = add_rmsnorm(x, r, w, 1e-6)
    assert torch.allclose(h, x + r)
    assert torch.allclose(y, torch.nn.functional.rms_norm(x + r, (32,), w, 1e-6), atol=1e-5)
    gu = torch.randn(2, 8)
    assert torch.allclose(act_mul(gu), torch.nn.functional.silu(gu[:, :4]) * gu[:, 4:])
    # rope keeps norms and a position-0 rotation is the identity
    q, cos, sin = torch.randn(2, 3, 8), torch.ones(2, 4), torch.zeros(2, 4)
    assert torch.allclose(rope_ref(q, cos, sin), q)
    kp, vp = torch.zeros(4, 1, 8), torch.zeros(4, 1, 8)
    ang = torch.rand(5, 4)
    qo = rope_and_cache(
        q, q[:, :1], q[:, 2:], ang.cos(), ang.sin(), torch.tensor([1, 4]), torch.tensor([3, 0]), kp, vp
    )
    assert torch.allclose(qo.norm(dim=-1), q.norm(dim=-1), atol=1e-5)
    assert torch.equal(vp[3], q[0, 2:]) and kp[1].abs().sum() == 0


def test_measure_and_rotation():
    seen = []
    fn = rotating([(1,), (2,), (3,)], seen.append)
    assert measure(fn, "cpu", warmup=1, repeat=4) >= 0
    assert seen == [1, 2, 3, 1, 2]
    t = random_like_nonzero((1000,), torch.bfloat16, "cpu")
    assert (t != 0).all()
    assert (random_like_nonzero((1000,), torch.int8, "cpu") != 0).all()


ROPE_CACHE = """
import torch
from engine.fused import rope_cache_ref, rope_cache_triton
from engine.model import rope_tables
torch.manual_seed(0)
# (tokens, query heads, kv heads, head dim, dtype): heads off a power of two (masked), GQA 7:1, one token
for t, nh, nkv, d, dt in ((5, 7, 1, 16, torch.float32), (3, 4, 2, 32, torch.float32), (1, 6, 3, 8, torch.bfloat16)):
    qkv = torch.randn(t, nh + 2 * nkv, d).to(dt)
    q, k, v = qkv[:, :nh], qkv[:, nh : nh + nkv], qkv[:, nh + nkv :]  # strided views, as the model passes them
    cos, sin = rope_tables(d, 10000.0, 64, "cpu")
    pos, slots = torch.tensor([3, 9, 17, 30, 41][:t]), torch.tensor([11, 2, 7, 5, 0][:t])
    pools = [torch.zeros(16, nkv, d, dtype=dt) for _ in range(4)]
    want = rope_cache_ref(q, k, v, cos, sin, pos, slots, pools[0], pools[1])
    got = rope_cache_triton(q, k, v, cos, sin, pos, slots, pools[2], pools[3])
    tol = 1e-5 if dt == torch.float32 else 1e-2
    assert (got.float() - want.float()).abs().max() <= tol * want.float().abs().max()
    assert (pools[2].float() - pools[0].float()).abs().max() <= tol * pools[0].float().abs().max()
    assert torch.equal(pools[3], pools[1])  # values copied as they are
    assert (pools[2].abs().sum((1, 2)) > 0).sum() == t  # only the tokens' slots written
    print("ok")
"""


def test_rope_cache_kernel_matches_the_reference_interpreted():
    """The rope + KV-write kernel (every head of a kind in one program) rotates q and k and writes k and v at the
    slots as the torch reference does, for head counts off a power of two, under Triton's interpreter."""
    assert run_interpreted(ROPE_CACHE).count("ok") == 3
