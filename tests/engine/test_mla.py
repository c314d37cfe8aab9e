"""MLA (DeepSeek-V2): latent cache, absorbed decode equal to the plain form, the Triton decode kernel."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.model_spec import load_model, spec_from_config
from engine.attention import make_layout
from engine.model import build_model
from tests.engine.test_model import _full_and_incremental

ROOT = Path(__file__).resolve().parents[2]


def tiny_deepseek(**over):
    cfg = dict(load_model("deepseek-v2-lite").config)
    cfg.update(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=16,
        intermediate_size=96, moe_intermediate_size=32, n_routed_experts=4, num_experts_per_tok=2,
        n_shared_experts=1, vocab_size=101, max_position_embeddings=512,
    )  # fmt: skip
    cfg.update(over)
    return spec_from_config(cfg, name="tiny-deepseek")


def test_latent_cache_holds_rank_plus_rope_per_token():
    spec = tiny_deepseek()
    m = build_model(spec, dtype="fp32", device="cpu")
    m.allocate_kv(10)
    k, v = m.kv[0]
    assert k.shape == (10, 1, 32 + 16) and v is k
    assert spec.kv_elems_per_token_per_layer == 48
    before = k.clone()
    m(torch.tensor([5, 6, 7]), make_layout([3], [0], "cpu", base=2))
    changed = (k != before).any(-1).any(-1)
    assert changed.tolist() == [False, False, True, True, True] + [False] * 5  # slots 2..4 written


def test_absorbed_decode_equals_plain_prefill():
    """The last token's logits: plain form over the whole prompt vs cached prefix + absorbed decode."""
    full, inc = _full_and_incremental(tiny_deepseek(), [5, 11, 3])
    assert torch.allclose(full, inc, rtol=1e-4, atol=1e-4)
    assert full.abs().sum() > 0


def test_absorbed_attention_equals_plain_per_layer():
    spec = tiny_deepseek()
    m = build_model(spec, dtype="fp32", device="cpu", seed=3)
    attn = m.layers[0].attn
    m.allocate_kv(16)
    pool = m.kv[0][0]
    x = torch.randn(6, 64)
    rope = m.ropes[attn.rope_base]
    plain = attn(x, make_layout([6], [0], "cpu"), rope, pool, pool)
    # the same 6 tokens again, the last one as a decode over the first five's cache
    attn(x[:5], make_layout([5], [0], "cpu"), rope, pool, pool)
    dec = attn(x[5:], make_layout([1], [5], "cpu"), rope, pool, pool)
    assert torch.allclose(plain[5:], dec, rtol=1e-4, atol=1e-5)
    # a mixed step (a prompt chunk, then the decode) gives both rows the same answers
    m.allocate_kv(32, seed=9)
    pool = m.kv[0][0]
    attn(x[:5], make_layout([5], [0], "cpu"), rope, pool, pool)
    both = attn(torch.cat([x, x[5:]]), make_layout([6, 1], [0, 5], "cpu", starts=[16, 0]), rope, pool, pool)
    assert torch.allclose(both[:6], plain, rtol=1e-4, atol=1e-5)
    assert torch.allclose(both[6:], dec, rtol=1e-4, atol=1e-5)


INTERPRETED = r"""
import torch
from engine.attention import make_layout
from engine.mla import mla_decode_units, _sdpa
g = torch.Generator().manual_seed(0)
nh, rank, rope = 4, 32, 16
prior = [3, 300, 7]
lay = make_layout([2] + [1] * len(prior), [0] + prior, "cpu", kv_heads=1)
pool = torch.randn(lay.cu_k[-1].item() + 4, 1, rank + rope, generator=g)
qa = torch.randn(2 + len(prior), nh, rank + rope, generator=g)
op, lp = mla_decode_units(qa, pool, lay, rank, 0.3)
su = lay.units["seq_units"].tolist()
assert su[-1] > len(prior)  # the 301-key sequence is split over several units
for j, (kl, ks) in enumerate(zip(lay.k_lens[1:], lay.k_starts[1:])):
    w = torch.softmax(lp[su[j] : su[j + 1]], 0)  # merge the sequence's units by their log-sum-exp
    got = (w[:, :, None] * op[su[j] : su[j + 1]]).sum(0)
    c = pool[ks : ks + kl, 0]
    want = _sdpa(qa[2 + j : 3 + j], c[:, None], c[:, None, :rank], 0.3)
    err = (got - want[0]).abs().max().item()
    assert err < 1e-4, (j, err)
    print("ok", j, err)
"""


def test_triton_mla_decode_kernel_matches_reference_interpreted():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    r = subprocess.run(
        [sys.executable, "-c", INTERPRETED], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("ok") == 3


def _counted_flops(attn, x, lay, rope, pool) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        attn(x, lay, rope, pool, pool)
    return float(fc.get_total_flops())


def test_cost_model_prices_the_forms_the_engine_runs():
    """FLOPs counted in the engine's MLA layer = the cost model's: plain-form prompt pairs plus the cached
    context's kv_b expansion, absorbed-form decode pairs, the projections as the dense GEMMs list them."""
    from core.cost_model import mla_prefill_flops

    spec = tiny_deepseek()
    m = build_model(spec, dtype="fp32", device="cpu")
    attn = m.layers[0].attn
    m.allocate_kv(64)
    pool, rope = m.kv[0][0], m.ropes[attn.rope_base]
    pair, ctx = mla_prefill_flops(spec, 1)

    def gemms(tokens: int) -> float:
        return sum(2.0 * tokens * g.k * g.n for g in spec.attention_gemms)

    prior, n = 9, 6
    x = torch.randn(prior + n, 64)
    attn(x[:prior], make_layout([prior], [0], "cpu"), rope, pool, pool)
    # SDPA's counter counts the whole [n, prior + n] score matrix (the mask is not skipped work)
    chunk = _counted_flops(attn, x[prior:], make_layout([n], [prior], "cpu"), rope, pool)
    assert chunk == gemms(n) + ctx * prior + pair * n * (prior + n)
    dec = _counted_flops(attn, x[:1], make_layout([1], [prior], "cpu"), rope, pool)
    assert dec == gemms(1) + spec.attn_flops_per_pair * (prior + 1)
    assert pair < spec.attn_flops_per_pair  # the plain form's pair is cheaper; the absorbed form reads less


PREFILL_INTERPRETED = r"""
import torch
from engine.attention import make_layout
from engine.mla import mla_prefill, _sdpa
g = torch.Generator().manual_seed(2)
nh, rank, rope = 4, 32, 16
# chunks: a fresh prompt of 5, a chunk of 7 after 40 cached tokens, an unused slot (a graph's), one decode
q_lens, prior = [5, 7, 0, 1], [0, 40, 0, 9]
lay = make_layout(q_lens, prior, "cpu", kv_heads=1)
lay.n_prefill = 3
pool = torch.randn(int(lay.cu_k[-1]) + 64, 1, rank + rope, generator=g)
qa = torch.randn(sum(q_lens), nh, rank + rope, generator=g)
out = torch.full((sum(q_lens), nh, rank), 7.0)
lay.max_q = 16  # a graph's static bound: programs past a chunk's end return
mla_prefill(qa, pool, lay, rank, 0.3, out)
row = 0
for s in range(3):
    ql, kl, ks = lay.q_lens[s], lay.k_lens[s], lay.k_starts[s]
    if ql:
        c = pool[ks : ks + kl, 0]
        want = _sdpa(qa[row : row + ql], c[:, None], c[:, None, :rank], 0.3)
        err = (out[row : row + ql] - want).abs().max().item()
        assert err < 1e-4, (s, err)
        print("ok", s, err)
    row += ql
assert (out[row:] == 7.0).all()  # the decode's row is left to the decode kernel
print("ok untouched")
"""


def test_triton_mla_prefill_kernel_matches_reference_interpreted():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    r = subprocess.run(
        [sys.executable, "-c", PREFILL_INTERPRETED], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("ok") == 3


def test_cost_model_prices_absorbed_prompts_in_graph_sized_steps():
    """Steps of up to MLA_ABSORBED_STEP_TOKENS tokens run prompt chunks absorbed on the GPU (one kernel, CUDA
    graphs): the cost model's pairs there cost the absorbed form's FLOPs and no kv_b expansion; larger steps
    the plain form's."""
    from core.cost_model import MLA_ABSORBED_STEP_TOKENS, BatchShape, CostModel
    from core.hardware import load_profile

    spec = load_model("deepseek-v2-lite")
    cm = CostModel(load_profile("h200"), spec)
    assert cm.fresh is None  # MLA prompts never take the fresh-prompt (cuDNN) kernel

    def attn(tokens: int, prior: int) -> float:
        b = BatchShape.of([(tokens, prior)], [])
        return cm.attention_prefill_time(b)

    n = MLA_ABSORBED_STEP_TOKENS
    small, large = attn(n, 4000), attn(n + 1, 4000)
    # absorbed pairs cost (2 rank + rope) / (q_head_dim + v_head_dim) = 1088 / 320 of the plain ones
    assert small > 2.0 * large
    assert cm.absorbed_pair_flops == spec.attn_flops_per_pair
