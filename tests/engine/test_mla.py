"""MLA (DeepSeek-V2): latent cache, absorbed decode equal to the plain form, the Triton decode kernel."""

import pytest
import torch

from core.model_spec import load_model, spec_from_config
from engine.attention import make_layout
from engine.model import build_model
from tests.engine.interpreted import run_interpreted
from tests.engine.test_model import _full_and_incremental


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


def test_absorbed_query_and_latent_values_written_in_place_equal_the_einsums():
    """The absorbed query is built in one buffer (the GEMM writes its rank part in place) and W_UV writes into the
    heads' layout: both equal the einsum-and-concatenate they replace, for all rows and for a decode-rows slice."""
    attn = build_model(tiny_deepseek(), dtype="fp32", device="cpu", seed=5).layers[0].attn
    q = torch.randn(7, attn.nh, attn.qd)
    w_uk, w_uv = attn._wkv()
    ref = torch.cat([torch.einsum("thn,hnr->thr", q[..., : attn.nope], w_uk), q[..., attn.nope :]], -1)
    assert torch.allclose(attn.absorbed_query(q), ref, atol=1e-5)
    assert torch.allclose(attn.absorbed_query(q, slice(4, None))[4:], ref[4:], atol=1e-5)
    o_lat = torch.randn(7, attn.nh, attn.rank)
    out = torch.full((7, attn.nh, attn.vd), float("nan"))
    attn.latent_values(o_lat[3:], out[3:])
    assert torch.allclose(out[3:], torch.einsum("thr,hvr->thv", o_lat[3:], w_uv), atol=1e-5)
    assert out[:3].isnan().all()  # rows outside the slice left alone


def test_triton_mla_decode_kernel_matches_reference_interpreted():
    assert run_interpreted(INTERPRETED).count("ok") == 3


def _counted_flops(attn, x, lay, rope, pool) -> float:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    # the math backend's matmuls are counted (the CPU's fused SDPA kernel is not, in torch's counter)
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as fc:
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
    assert run_interpreted(PREFILL_INTERPRETED).count("ok") == 3


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
    # absorbed pairs cost (2 rank + rope) / (q_head_dim + padded v) = 1088 / 384 of the plain ones, which add
    # the 4000 cached latents' kv_b expansion
    pairs = n * (4000 + (n + 1) / 2)
    absorbed = cm.absorbed_pair_flops * pairs
    plain = cm.prefill_pair_flops * pairs * (n + 1) / n + cm.prefill_ctx_flops * 4000
    assert small > 0.9 * absorbed / plain * large
    assert cm.absorbed_pair_flops == spec.attn_flops_per_pair
    assert cm.prefill_pair_flops == 2 * spec.num_heads * 2 * spec.q_head_dim  # v padded to q_head_dim


def test_plain_chunk_after_context_equals_whole_prompt():
    """A prompt chunk after cached context (plain form, bottom-right mask) = the same rows of the whole prompt."""
    spec = tiny_deepseek()
    m = build_model(spec, dtype="fp32", device="cpu", seed=4)
    attn = m.layers[0].attn
    m.allocate_kv(16)
    pool, rope = m.kv[0][0], m.ropes[attn.rope_base]
    x = torch.randn(9, 64)
    whole = attn(x, make_layout([9], [0], "cpu"), rope, pool, pool)
    attn(x[:4], make_layout([4], [0], "cpu"), rope, pool, pool)
    chunk = attn(x[4:], make_layout([5], [4], "cpu"), rope, pool, pool)
    assert torch.allclose(chunk, whole[4:], rtol=1e-4, atol=1e-5)


def test_plain_form_stays_in_bf16_with_flash_shapes(monkeypatch):
    """bf16 in, bf16 through: the plain form's SDPA gets 4-D bf16 q/k/v of one head dim (v zero-padded to
    the 24-wide q/k head: what flash attention needs), a CausalBias-free fresh prompt, and the layer's
    output is bf16 and close to the fp32 layer's."""
    import torch.nn.functional as F

    spec = tiny_deepseek()
    m = build_model(spec, dtype="fp32", device="cpu", seed=6)
    ref = m.layers[0].attn
    attn = __import__("copy").deepcopy(ref).to(torch.bfloat16)
    seen = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append(
            (q.dtype, k.dtype, v.dtype, q.dim(), q.shape[-1], k.shape[-1], v.shape[-1], kw["is_causal"])
        )
        return sdpa(q, k, v, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    rope = m.ropes[ref.rope_base]
    x = torch.randn(7, 64)
    pools = [torch.zeros(16, 1, 48, dtype=dt) for dt in (torch.float32, torch.bfloat16)]
    lay = make_layout([4, 3], [0, 5], "cpu", starts=[0, 8])  # a fresh prompt and a chunk after 5 tokens
    ctx = torch.randn(5, 1, 48)
    for p in pools:
        p[8:13] = ctx
    want = ref(x, lay, rope, pools[0], pools[0])
    seen.clear()
    got = attn(x.to(torch.bfloat16), lay, rope, pools[1], pools[1])
    qd = spec.q_head_dim
    bf = torch.bfloat16
    assert seen == [(bf, bf, bf, 4, qd, qd, qd, True), (bf, bf, bf, 4, qd, qd, qd, False)]
    assert got.dtype == bf
    assert (got.float() - want).abs().max() < 0.05 * want.abs().max()


def test_causal_bias_equals_materialised_mask():
    """The CUDA path's CausalBias (bottom-right) gives what the CPU's boolean mask gives."""
    from engine.mla import plain_attention

    g = torch.Generator().manual_seed(1)
    for nq, nk in ((5, 12), (6, 6)):
        q, k, v = (torch.randn(n, 3, 8, generator=g) for n in (nq, nk, nk))
        a = plain_attention(q, k, v, 0.3, bias=True)
        b = plain_attention(q, k, v, 0.3, bias=False)
        assert torch.allclose(a, b, atol=1e-6)
    # the last query sees every key; the first only the keys up to its own position
    w = plain_attention(q[:1], k, torch.eye(6)[:, None].expand(6, 3, 6), 1.0)
    assert (w[0, 0] > 0).all()


def test_executor_caps_mla_mixed_graphs_at_the_absorbed_threshold(monkeypatch):
    """Mixed-step graphs of an MLA model stop at engine.mla.ABSORBED_PROMPT_TOKENS: larger steps run prompt
    chunks in the plain form, which reads host lists (eager)."""
    from engine import mla
    from engine.serving import Executor

    spec = tiny_deepseek()
    m = build_model(spec, dtype="fp32", device="cpu")
    monkeypatch.setattr(mla, "ABSORBED_PROMPT_TOKENS", 256)
    ex = Executor(m, 512, 4, device="cpu", mixed_graph_tokens=1024)
    assert ex.mixed_sizes[-1] == 256
    monkeypatch.setattr(mla, "ABSORBED_PROMPT_TOKENS", 0)
    assert Executor(m, 512, 4, device="cpu", mixed_graph_tokens=1024).mixed_sizes == []


def test_calibration_runner_cuts_mla_decode_units_as_the_serving_executor():
    """One program runs every head of an MLA unit, so both runners aim at the GPU's programs, not over the 4
    heads (the calibration runner had divided by them: a quarter of the serving loop's units)."""
    from engine.attention import unit_heads
    from engine.serving import Executor
    from engine.steps import StepRunner

    spec = tiny_deepseek()
    assert spec.num_kv_heads == 4 and unit_heads(spec) == 1
    m = build_model(spec, dtype="fp32", device="cpu")
    runner = StepRunner(m, max_batch=4, max_context=64, device="cpu", cuda_graphs=False)
    assert runner.unit_target == Executor(m, 512, 4, device="cpu").target


def _layer_with_cache():
    """The toy DeepSeek's first attention layer over a 64-slot latent pool of random contents: (layer, pool, rope)."""
    m = build_model(tiny_deepseek(), dtype="fp32", device="cpu", seed=8)
    attn = m.layers[0].attn
    m.allocate_kv(64, seed=2)
    return attn, m.kv[0][0], m.ropes[attn.rope_base]


@pytest.mark.parametrize("cap", [10_000, 12, 1])
def test_plain_chunks_batched_equal_one_chunk_at_a_time(monkeypatch, cap):
    """A step of three prompt chunks (fresh, after 5 and after 9 cached tokens), gathered and expanded together
    (in groups of at most `cap` context tokens: one group, two, one a chunk), gives each chunk's rows what the
    chunk alone gives."""
    from engine import mla

    monkeypatch.setattr(mla, "PLAIN_CONTEXT_TOKENS", cap)
    assert mla.plain_groups([3, 4, 2], [3, 9, 11], 12) == [[0, 1], [2]]
    assert mla.plain_groups([3, 4, 2], [3, 9, 11], 1) == [[0], [1], [2]]
    attn, pool, rope = _layer_with_cache()
    x = torch.randn(9, 64)
    q_lens, prior, starts = [3, 4, 2], [0, 5, 9], [0, 16, 40]
    both = attn(x, make_layout(q_lens, prior, "cpu", starts=starts), rope, pool, pool)
    row = 0
    for ql, p, st in zip(q_lens, prior, starts, strict=True):
        alone = attn(x[row : row + ql], make_layout([ql], [p], "cpu", starts=[st]), rope, pool, pool)
        assert torch.allclose(both[row : row + ql], alone, rtol=1e-4, atol=1e-5), (cap, row)
        row += ql
    assert both.abs().sum() > 0


def test_plain_plan_follows_a_refilled_layout():
    """A static layout is refilled step after step (the mixed-step buffers): the plain form's gather plan, kept
    in the layout, is made again when the chunks change, so a second step reads its own contexts."""
    attn, pool, rope = _layer_with_cache()
    x = torch.randn(7, 64)
    first = make_layout([3, 4], [0, 5], "cpu", starts=[0, 16])
    attn(x, first, rope, pool, pool)
    second = make_layout([4, 3], [9, 2], "cpu", starts=[30, 50])
    want = attn(x, second, rope, pool, pool)
    second.shared = first.shared  # what a refilled layout carries over
    got = attn(x, second, rope, pool, pool)
    assert torch.allclose(got, want) and second.shared["mla_plain"][0][1] == (4, 3)


ROPE_CACHE = """
import torch
from engine.mla import mla_rope_cache, mla_rope_cache_ref
from engine.model import RMSNorm
from engine.model import rope_tables
torch.manual_seed(0)
# (tokens, heads, nope, rank, rope dim, dtype): a power-of-two rank and one that is not (masked)
for t, nh, nope, rank, rd, dt in ((5, 4, 16, 32, 16, torch.float32), (3, 2, 8, 24, 8, torch.float32),
                                  (4, 3, 16, 64, 32, torch.bfloat16)):
    q = torch.randn(t, nh, nope + rd).to(dt)
    kv = torch.randn(t, rank + rd).to(dt)
    norm = RMSNorm(rank, 1e-6, 0.0)
    torch.nn.init.normal_(norm.weight, 1.0, 0.1)
    rope = rope_tables(rd, 10000.0, 64, "cpu")
    positions = torch.tensor([3, 9, 17, 30, 41][:t])
    slots = torch.tensor([11, 2, 7, 5, 0][:t])
    pool_ref = torch.zeros(16, 1, rank + rd, dtype=dt)
    pool = pool_ref.clone()
    q_pe = mla_rope_cache_ref(q, kv, norm, rope, positions, slots, pool_ref, nope, rank)
    q2 = q.clone()
    mla_rope_cache(q2, kv, norm, rope, positions, slots, pool, nope, rank)
    tol = 1e-5 if dt == torch.float32 else 1e-2
    assert torch.equal(q2[..., :nope], q[..., :nope])  # the no-rope part left alone
    # relative to the largest value (bf16: a rounding apart where the reduction order differs)
    err_q = ((q2[..., nope:].float() - q_pe.float()).abs().max() / q_pe.float().abs().max()).item()
    err_k = ((pool.float() - pool_ref.float()).abs().max() / pool_ref.float().abs().max()).item()
    assert err_q < tol and err_k < tol, (t, err_q, err_k)
    assert pool[slots].abs().sum(-1).min() > 0 and (pool.abs().sum((1, 2)) > 0).sum() == t  # only those slots
    print("ok", err_q, err_k)
"""


def test_mla_rope_cache_kernel_matches_the_torch_ops_interpreted():
    """The fused MLA glue kernel (q's rope in place, the normalised latent and rotated rope key into the pool
    slots) gives what the torch ops give, under Triton's interpreter."""
    assert run_interpreted(ROPE_CACHE).count("ok") == 3
