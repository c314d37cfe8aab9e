"""Fused MoE: the expert-sorted layout, the reference loop, and the Triton grouped GEMM (interpreted on CPU)."""

import pytest
import torch

from engine.fused import act_mul
from engine.moe import align, moe_reference, route
from tests.engine.interpreted import run_interpreted


def _case(t=7, e=4, k=2, h=32, i=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, h, generator=g)
    wgu = torch.randn(e, 2 * i, h, generator=g) / h**0.5
    wd = torch.randn(e, h, i, generator=g) / i**0.5
    w, ids = route(torch.randn(t, e, generator=g), k, True)
    return x, wgu, wd, w, ids


def test_align_sorts_pairs_by_expert_in_whole_blocks():
    ids = torch.tensor([[2, 0], [2, 3], [0, 2], [3, 1]])
    block = 4
    sorted_ids, block_expert = align(ids, 5, block)
    pairs = ids.numel()
    real = sorted_ids[sorted_ids < pairs]
    assert sorted(real.tolist()) == list(range(pairs))  # every pair exactly once
    flat = ids.reshape(-1)
    for b, e in enumerate(block_expert.tolist()):
        rows = sorted_ids[b * block : (b + 1) * block]
        rows = rows[rows < pairs]
        if e < 0:
            assert rows.numel() == 0  # blocks past the last run are idle
        else:
            assert rows.numel() > 0 and (flat[rows.long()] == e).all()
    # experts 0, 1, 2, 3 touched (4 unused): four blocks of work, the rest idle
    assert sorted(x for x in block_expert.tolist() if x >= 0) == [0, 1, 2, 3]


def test_reference_equals_dense_mixture():
    x, wgu, wd, w, ids = _case()
    got = moe_reference(x, wgu, wd, w, ids)
    every = torch.stack([act_mul(x @ wgu[e].t()) @ wd[e].t() for e in range(wgu.shape[0])], 1)  # [T, E, H]
    want = (every.gather(1, ids[:, :, None].expand(-1, -1, x.shape[1])) * w[:, :, None]).sum(1)
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(w.sum(-1), torch.ones(x.shape[0]))  # renormalised top-k


def test_renormalised_route_is_the_softmax_top_k_renormalised():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(50, 8, generator=g).to(torch.bfloat16)
    w, ids = route(logits, 2, True)
    probs = torch.softmax(logits.float(), -1)
    want_w, want_ids = torch.topk(probs, 2, -1)
    assert torch.equal(ids, want_ids)
    assert w.dtype == torch.float32
    assert torch.allclose(w, want_w / want_w.sum(-1, keepdim=True), atol=1e-6)


def test_route_without_renormalisation_keeps_softmax_weights():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    w, ids = route(logits, 2, False)
    assert ids.tolist() == [[0, 1]]
    assert torch.allclose(w, torch.softmax(logits, -1)[:, :2])


INTERPRETED = r"""
import torch
from engine.moe import fused_moe, moe_reference, route
g = torch.Generator().manual_seed(1)
for t, e, k, h, i in ((1, 4, 2, 32, 48), (9, 4, 2, 32, 48), (40, 6, 3, 64, 32)):
    x = torch.randn(t, h, generator=g)
    wgu = torch.randn(e, 2 * i, h, generator=g) / h**0.5
    wd = torch.randn(e, h, i, generator=g) / i**0.5
    w, ids = route(torch.randn(t, e, generator=g), k, True)
    got, want = fused_moe(x, wgu, wd, w, ids), moe_reference(x, wgu, wd, w, ids)
    err = (got - want).abs().max().item()
    assert err < 1e-4, (t, e, k, err)
    print("ok", t, e, k, err)
# the grouped_mm path (torch._grouped_mm's CPU fallback) with its Triton combine of each token's k rows
from engine.moe import grouped_mm_moe
for t, e, k, h, i in ((1, 4, 2, 32, 48), (40, 6, 3, 1100, 32)):
    x = torch.randn(t, h, generator=g)
    wgu = torch.randn(e, 2 * i, h, generator=g) / h**0.5
    wd = torch.randn(e, h, i, generator=g) / i**0.5
    w, ids = route(torch.randn(t, e, generator=g), k, True)
    err = (grouped_mm_moe(x, wgu, wd, w, ids) - moe_reference(x, wgu, wd, w, ids)).abs().max().item()
    assert err < 1e-4, (t, e, k, err)
    print("ok grouped_mm", t, e, k, err)
# the align kernels give exactly the torch path's layout: one program up to 512 pairs, then the three-launch
# form (count per chunk, scan, place per chunk), over more chunks than its scan takes at a time
from engine.moe import align, align_reference
for t, e, k, bm in ((1, 8, 2, 16), (8, 8, 2, 16), (21, 64, 6, 16), (5, 3, 1, 32), (64, 8, 2, 16),
                    (71, 64, 6, 32), (256, 8, 2, 64), (300, 8, 2, 64), (257, 5, 2, 128), (700, 64, 6, 16)):
    ids = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(t)])
    a, b = align(ids, e, bm), align_reference(ids, e, bm)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), (t, e, k, a, b)
    print("ok align", t, e, k)
# the Triton path's combine: each token's k weighted rows (token order) summed in fp32, cast once
from engine.moe import sum_pairs
for t, k, h, dt in ((1, 2, 4096, torch.bfloat16), (5, 6, 1100, torch.float32), (3, 2, 64, torch.bfloat16)):
    y = torch.randn(t * k, h, generator=g).to(dt)
    got, want = sum_pairs(y, t, k, dt), y.float().view(t, k, h).sum(1)
    err = ((got.float() - want).abs() / want.abs().clamp_min(1e-3)).max().item()  # one rounding to bf16 at most
    assert got.dtype == dt and err < (1e-5 if dt == torch.float32 else 2 ** -7), (t, k, h, err)
    print("ok sum_pairs", t, k)
# split-K (small steps): the K slices added atomically into fp32 give the unsplit product
from engine.moe import grouped_gemm
for split in (2, 3):
    t, e, k, h, i = 3, 4, 2, 32, 72
    x = torch.randn(t, h, generator=g)
    wd = torch.randn(e, h, i, generator=g) / i**0.5
    a = torch.randn(t * k, i, generator=g)
    w, ids = route(torch.randn(t, e, generator=g), k, True)
    cfg = {"BM": 16, "BN": 16, "BK": 16, "GROUP": 1, "num_warps": 4, "num_stages": 1, "SPLIT_K": 1}
    sid, be = align(ids, e, 16)
    tw = w.reshape(-1).float()
    one = grouped_gemm(a, wd, sid, be, 1, t * k, cfg, weights=tw)
    many = grouped_gemm(a, wd, sid, be, 1, t * k, dict(cfg, SPLIT_K=split), weights=tw)
    assert many.dtype == torch.float32
    err = (one - many).abs().max().item()
    assert err < 1e-4 and one.abs().max() > 0.1, (split, err)
    print("ok split", split, err)
"""


def test_triton_grouped_gemm_matches_reference_interpreted():
    assert run_interpreted(INTERPRETED).count("ok ") == 20


def test_kernel_config_streams_decode_steps_and_takes_large_tiles_for_long_steps(monkeypatch):
    from engine import moe
    from engine.moe import LARGE_TILE, TUNED, kernel_config, set_tuned

    # decode steps: 16-row blocks, 64-wide tiles, K unsplit; long K steps where K is long (Mixtral's down)
    for pairs in (2, 16, 64):
        down, gate_up = kernel_config(pairs, 4096, 8, 14336, sms=132), kernel_config(pairs, 28672, 8, 4096)
        shape = tuple(down[key] for key in ("BM", "BN", "BK", "num_stages", "SPLIT_K"))
        assert shape == (16, 64, 256, 4, 1)
        assert (gate_up["BK"], gate_up["num_stages"], gate_up["SPLIT_K"]) == (256, 3, 1)
    assert kernel_config(6, 2048, 64, 1408)["BK"] == 128  # DeepSeek-V2-Lite's down
    assert kernel_config(66, 4096, 8, 14336)["BM"] == 32  # past 64 rows: the row-block rule
    # the session-13 rule, kept for the before/after check: Mixtral's down at batch 1 has 2 touched experts x
    # 128 column tiles, so K is split 4 ways to fill 132 SMs; its gate_up already has 2 x 448 programs
    monkeypatch.setattr(moe, "DECODE_SPLIT", True)
    small = kernel_config(2, 4096, 8, 14336, sms=132)
    assert small["BM"] == 16 and small["SPLIT_K"] == 4
    assert kernel_config(2, 28672, 8, 4096, sms=132)["SPLIT_K"] == 1
    monkeypatch.setattr(moe, "DECODE_SPLIT", False)
    # 8k tokens top-2 over 8 experts: 2,048 rows per expert, the 128 x 256 tile
    big = kernel_config(16384, 28672, 8, 4096)
    assert {k: big[k] for k in LARGE_TILE} == LARGE_TILE and big["SPLIT_K"] == 1
    # a few hundred tokens over 64 experts (DeepSeek-V2-Lite): too few rows per expert for 128-row blocks
    assert kernel_config(1200, 2816, 64, 2048)["BM"] == 64
    # the smallest row block that holds an expert's rows whole (mean + 2 spreads): Mixtral at 80 / 96-192 / 256
    # tokens (20 / 24-48 / 64 rows an expert), DeepSeek-V2-Lite at 768 tokens (72 rows)
    assert kernel_config(160, 28672, 8, 4096)["BM"] == 32
    assert {kernel_config(2 * t, 28672, 8, 4096)["BM"] for t in (96, 128, 160, 192)} == {64}
    assert {k: kernel_config(512, 28672, 8, 4096)[k] for k in LARGE_TILE} == LARGE_TILE
    assert kernel_config(768 * 6, 2816, 64, 2048)["BM"] == 128
    # a device's own sweep overrides the default for that shape only
    try:
        set_tuned({(2048, 28672, 4096, 8): {"BM": 64, "BN": 256, "BK": 64, "GROUP": 8, "num_warps": 8,
                                             "num_stages": 3}})  # fmt: skip
        assert kernel_config(16384, 28672, 8, 4096)["BM"] == 64
        assert kernel_config(16384, 4096, 8, 14336)["BM"] == 128
    finally:
        set_tuned({})
    assert not TUNED


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_mm_path_equals_the_loop_over_experts(dtype):
    """torch._grouped_mm over the expert-sorted tokens (its CPU fallback here; CUTLASS on sm90) gives the loop's
    output, an expert without tokens included."""
    from engine.moe import grouped_mm_moe

    x, wgu, wd, _, _ = _case(t=11, e=6, k=2)
    logits = torch.randn(11, 6, generator=torch.Generator().manual_seed(3))
    logits[:, 5] = float("-inf")  # expert 5 gets no tokens
    w, ids = route(logits, 2, True)
    assert not (ids == 5).any()
    args = [t.to(dtype) for t in (x, wgu, wd)]
    got = grouped_mm_moe(*args, w, ids).float()
    want = moe_reference(*args, w, ids).float()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert got.shape == want.shape and (got - want).abs().max() <= tol * want.abs().max()


def test_expert_order_sorts_pairs_stably_and_gives_row_ends():
    from engine.moe import expert_order

    ids = torch.tensor([[2, 0], [0, 3], [2, 3]])
    order, offs = expert_order(ids, 5)
    assert order.tolist() == [1, 2, 0, 4, 3, 5]  # pairs of expert 0, then 2, then 3 (each in pair order)
    assert offs.dtype == torch.int32 and offs.tolist() == [2, 2, 4, 6, 6]


def test_backend_rule_and_tuned_picks(monkeypatch):
    """Off sm90 (here: the CPU) always the Triton kernel; on it, grouped_mm from GROUPED_MM_MIN_ROWS rows per
    expert unless a tuned pick for the rows bucket says otherwise."""
    import engine.moe as moe

    wgu = torch.empty(8, 28672, 4096, device="meta")
    x = torch.empty(1, 4096)
    assert moe.moe_backend(x, 16384, wgu) == "triton"
    monkeypatch.setattr(moe, "grouped_mm_supported", lambda x: True)
    assert moe.moe_backend(x, 2, wgu) == "triton"
    assert moe.moe_backend(x, moe.GROUPED_MM_MIN_ROWS * 8, wgu) == "grouped_mm"
    try:
        moe.set_backends({(2048, 28672, 4096, 8): "triton", (1, 28672, 4096, 8): "grouped_mm"})
        assert moe.moe_backend(x, 16384, wgu) == "triton" and moe.moe_backend(x, 8, wgu) == "grouped_mm"
        assert moe.moe_backend(x, 4096, wgu) == "grouped_mm"  # another bucket: the rule
    finally:
        moe.set_backends({})


def test_tune_moe_leaves_the_cpu_alone():
    from core.model_spec import spec_from_config
    from engine.model import build_model
    from engine.moe import BACKEND, tune_moe

    cfg = {"model_type": "mixtral", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
           "num_key_value_heads": 1, "head_dim": 16, "intermediate_size": 32, "num_local_experts": 4,
           "num_experts_per_tok": 2, "vocab_size": 50, "max_position_embeddings": 128}  # fmt: skip
    model = build_model(spec_from_config(cfg, name="t"), dtype="fp32", device="cpu")
    assert tune_moe(model, 4096) == {} and BACKEND == {}


def test_forcing_backends_restores_the_tuned_picks():
    """engine.moe.forcing_backends: each backend that runs here forced in turn for the step's key, the entries as
    they were afterwards (on the CPU only the Triton kernel runs)."""
    from engine import moe

    x, wgu, _, _, ids = _case()
    key = (moe.rows_bucket(ids.numel(), wgu.shape[0]), wgu.shape[1], wgu.shape[2], wgu.shape[0])
    try:
        moe.set_backends({(1, 2, 3, 4): "grouped_mm"})
        seen = []
        for backend in moe.forcing_backends(x, wgu, ids.numel()):
            seen.append((backend, moe.BACKEND.get(key)))
        assert seen == [("triton", "triton")]
        assert moe.BACKEND == {(1, 2, 3, 4): "grouped_mm"}
    finally:
        moe.set_backends({})


def test_tune_gemv_leaves_the_cpu_alone_and_lists_the_gemv_weights():
    from core.model_spec import spec_from_config
    from engine import fused
    from engine.model import build_model

    cfg = {"model_type": "mixtral", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
           "num_key_value_heads": 1, "head_dim": 16, "intermediate_size": 32, "num_local_experts": 4,
           "num_experts_per_tok": 2, "vocab_size": 50, "max_position_embeddings": 128}  # fmt: skip
    model = build_model(spec_from_config(cfg, name="t"), dtype="fp32", device="cpu")
    assert model.gemv_weights() == []  # gemv off: nothing streams through it
    model.set_gemv(True)
    weights = model.gemv_weights()
    # qkv, o, router (MoE) or gate_up / down (dense) per layer, and lm_head: every Dense layer's 2-D weight
    assert weights and all(w.dim() == 2 for w in weights) and any(w is model.lm_head.weight for w in weights)
    before = dict(fused.GEMV_TILES)
    assert fused.tune_gemv(weights) == {} and before == fused.GEMV_TILES  # off CUDA: no timing, no picks
