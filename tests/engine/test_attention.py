"""The mixed-step attention split and the decode kernel's work partitioning (CPU-checkable logic)."""

import math
import random

import pytest
import torch

from engine.attention import (
    balanced_units,
    make_layout,
    plan_decode_units,
    plan_layout,
    prefill_count,
    reference_attention,
    split_reference,
    split_waves,
    unit_capacity,
)
from tests.engine.interpreted import run_interpreted


@pytest.mark.parametrize("seed", range(6))
def test_decode_units_cover_every_context_exactly_once(seed):
    rng = random.Random(seed)
    k_lens = [rng.choice([0, 1, 5, 64, 129, 700, 4096, 30000]) for _ in range(rng.randint(1, 60))]
    target = rng.choice([1, 8, 66, 200])
    cap = unit_capacity(target, len(k_lens), balanced_units(k_lens, target))  # the graph a serving step takes
    u = plan_decode_units(k_lens, target, seq0=3, cap=cap)
    assert u["count"] <= cap and len(u["seq"]) == cap
    cover = [[0] * k for k in k_lens]
    for j in range(len(k_lens)):
        a, b = u["seq_units"][j], u["seq_units"][j + 1]
        assert all(s == 3 + j for s in u["seq"][a:b])
        for lo, hi in zip(u["lo"][a:b], u["hi"][a:b], strict=True):
            assert 0 <= lo < hi <= k_lens[j] and hi - lo <= u["chunk"]
            for i in range(lo, hi):
                cover[j][i] += 1
    assert all(c == 1 for row in cover for c in row)
    assert all(s == -1 for s in u["seq"][u["count"] :])  # idle programs of a fixed grid
    if u["whole"]:  # as many sequences as the target's units: one unit each, no split
        assert len(k_lens) >= target and u["count"] == sum(1 for k in k_lens if k)
    else:  # balanced: no unit longer than the step's share of a unit of target x waves (or the minimum unit)
        assert u["chunk"] <= max(256, -(-sum(k_lens) // (target * split_waves(len(k_lens), target))) + 63)


def test_split_waves_cut_units_near_the_mean_context_at_large_batches():
    """2 waves up to twice the target's units in sequences, then the power of two holding the sequences per unit of
    the target, up to 8."""
    assert [split_waves(n, 33) for n in (1, 16, 33, 34, 66, 67, 128, 132, 133, 256, 10_000)] == [
        2, 2, 2, 2, 2, 4, 4, 4, 8, 8, 8,
    ]  # fmt: skip
    # 128 sequences of 2,048 keys at target 33: 4 waves, units of 2,048 keys (about the mean context)
    assert plan_decode_units([2048] * 128, 33, whole=False)["chunk"] == 2048
    assert plan_decode_units([2048] * 128, 33, whole=False, waves=1)["chunk"] == 8000


def test_one_long_context_is_split_like_many_short_ones():
    ragged = plan_decode_units([16] * 39 + [30000], target=66)
    assert max(b - a for a, b in zip(ragged["lo"], ragged["hi"], strict=True)) <= ragged["chunk"] < 30000 / 20


def test_plan_layout_groups():
    assert prefill_count([64, 100, 1, 1]) == 2 and prefill_count([1, 1]) == 0 and prefill_count([1, 3]) == 2
    p = plan_layout([64, 1, 1], [10, 5, 99], target=4)
    assert (
        p["n_prefill"] == 1
        and p["units"]["seq"][0] == 1
        and p["units"]["seq_units"][-1] == p["units"]["count"]
    )


@pytest.mark.parametrize("window", [0, 7])
@pytest.mark.parametrize(
    "q_lens,prior",
    [
        ([9, 1, 1, 1], [0, 4, 300, 40]),  # a fresh chunk and three decodes
        ([5, 12, 1, 1], [20, 0, 1000, 0]),  # chunks after a prefix, then decodes
        ([1, 1, 1], [0, 129, 63]),  # decodes only
        ([6, 6, 1, 1, 0, 0], [0, 0, 2000, 8, 0, 0]),  # cuDNN-shaped prompts, decodes, graph padding
    ],
)
def test_mixed_step_split_equals_masked_attention(q_lens, prior, window):
    g = torch.Generator().manual_seed(sum(q_lens) + window)
    lay = make_layout(q_lens, prior, "cpu", kv_heads=2)
    if 0 in q_lens:  # zero-token dummies after the decodes, as a CUDA-graph step lays them out
        lay.n_prefill, lay.n_real = 2, 4
    lay.units = {
        k: torch.tensor(v, dtype=torch.int32)
        for k, v in plan_decode_units(lay.k_lens[lay.n_prefill :], 3, seq0=lay.n_prefill).items()
        if k not in ("count", "chunk", "whole")
    }
    k = torch.randn(sum(lay.k_lens) + 4, 2, 16, generator=g)
    v = torch.randn(sum(lay.k_lens) + 4, 2, 16, generator=g)
    q = torch.randn(sum(q_lens), 4, 16, generator=g)
    ref = reference_attention(q, k, v, lay, 0.25, window)
    out = split_reference(q, k, v, lay, 0.25, window)
    real = int(lay.cu_q[len([x for x in q_lens if x])])
    assert torch.allclose(out[:real], ref[:real], atol=1e-5)


def test_fresh_prompts_run_padded_apart_and_the_rest_by_runs(monkeypatch):
    """The CUDA prefill group's split, on the CPU: long whole fresh prompts through SDPA one by one, padded
    to the bucket; the runs of other sequences between them through the varlen kernel (here the masked
    reference); decodes left alone. Together they equal masked attention over every prefill row."""
    from torch.nn.attention import SDPBackend

    import engine.attention as A

    calls = {"fresh": [], "runs": []}

    def flash(q, k_pool, v_pool, cu_q, cu_k, used, max_q, max_k, scale, window, n):
        cq, ck, u = cu_q.tolist(), cu_k.tolist(), used.tolist()
        calls["runs"].append(n)
        lay = A.StepLayout(
            [cq[i + 1] - cq[i] for i in range(n)], u[:n], ck[:n], None, None, None, None, None, 0, 0, n, n
        )
        return A.reference_attention(q[: cq[n]], k_pool, v_pool, lay, scale, window)

    real = A._cudnn_prefill

    def cudnn(q, *a, **k):
        calls["fresh"].append(q.shape[0])
        return real(q, *a, **k)

    monkeypatch.setattr(A, "_flash", flash)
    monkeypatch.setattr(A, "_cudnn_prefill", cudnn)
    monkeypatch.setattr(A, "FRESH_BACKENDS", [SDPBackend.MATH])
    monkeypatch.setitem(A._cudnn_state, "ok", None)
    nh, nkv, d = 4, 2, 16
    q_lens = [A.FRESH_MIN_TOKENS + 100, 40, 30, A.FRESH_MIN_TOKENS, A.FRESH_MIN_TOKENS + 5, 1, 1]
    prior = [0, 200, 0, 7, 0, 50, 90]  # the 4th is long but after a prefix: varlen kernel
    lay = A.make_layout(q_lens, prior, "cpu")
    g = torch.Generator().manual_seed(0)
    pool = lay.cu_k[-1].item() + A.FRESH_BUCKET
    k_pool = torch.randn((pool, nkv, d), generator=g)
    v_pool = torch.randn((pool, nkv, d), generator=g)
    q = torch.randn((sum(q_lens), nh, d), generator=g)
    assert A.fresh_sequences(lay, 0, lay.n_prefill) == [0, 4]
    assert A.fresh_sequences(lay, 64, lay.n_prefill) == []  # sliding-window layers stay on the varlen kernel
    out = A._prefill_group(q, k_pool, v_pool, lay, d**-0.5, 0, lay.n_prefill)
    assert calls["fresh"] == [q_lens[0], q_lens[4]] and calls["runs"] == [3]
    rows = sum(q_lens[: lay.n_prefill])
    want = A.reference_attention(q, k_pool, v_pool, lay, d**-0.5)
    torch.testing.assert_close(out[:rows], want[:rows], atol=2e-5, rtol=1e-4)


def test_vectorised_decode_units_equal_the_per_sequence_split():
    """plan_decode_units (numpy, no per-sequence Python) against the plain loop it replaced."""
    import math
    import random

    from engine.attention import UNIT_BLOCK, UNIT_MIN_KEYS, plan_decode_units

    def loop(k_lens, target, seq0, cap):
        total = sum(k_lens)
        chunk = max(UNIT_MIN_KEYS, math.ceil(math.ceil(total / max(target, 1)) / UNIT_BLOCK) * UNIT_BLOCK)
        seq, lo, hi, su = [], [], [], [0]
        for j, k in enumerate(k_lens):
            for a in range(0, k, chunk):
                seq.append(seq0 + j), lo.append(a), hi.append(min(a + chunk, k))
            su.append(len(seq))
        n = len(seq)
        if cap is not None:
            seq, lo, hi = seq + [-1] * (cap - n), lo + [0] * (cap - n), hi + [0] * (cap - n)
        return {"seq": seq, "lo": lo, "hi": hi, "seq_units": su, "count": n, "chunk": chunk, "whole": False}

    rng = random.Random(0)
    for _ in range(200):
        k = [rng.choice([0, 1, 256, 257, rng.randint(0, 9000)]) for _ in range(rng.randint(0, 40))]
        target, seq0, w = rng.choice([1, 7, 66, 264]), rng.randint(0, 3), rng.choice([1, 2, 8])
        cap = target * w + len(k) if rng.random() < 0.5 else None
        want = loop(k, target * w, seq0, cap)  # w waves: the loop's plan for w times the target
        assert plan_decode_units(k, target, seq0, cap, whole=False, waves=w) == want
        arr = plan_decode_units(k, target, seq0, cap, arrays=True, whole=False, waves=w)
        assert arr["seq"].tolist() == want["seq"]


def test_whole_units_once_the_sequences_fill_the_gpu_evenly():
    """From WHOLE_UNITS_MIN_FILL x `target` decode sequences (sequences x KV heads about fill the SMs) each
    sequence may be one unit: the graph grid is the sequence count. A plan takes one unit per sequence only when
    no context is longer than WHOLE_MAX_SHARE of the split plan's share (balanced_units): one 30,000-key
    sequence among 40-key ones is split, as the H200 measured it faster."""
    from engine.attention import (
        WHOLE_MAX_OVER_MEAN,
        WHOLE_MAX_SHARE,
        WHOLE_UNITS_MIN_FILL,
        balanced_units,
        whole_units,
    )

    edge = math.ceil(WHOLE_UNITS_MIN_FILL * 66)  # 60 at the measured 0.9
    assert not whole_units(edge - 1, 66) and whole_units(edge, 66) and not whole_units(0, 1)
    assert unit_capacity(66, edge - 1) == 2 * 66 + edge - 1 and unit_capacity(66, 128) == 128
    assert unit_capacity(66, 128, whole=False) == 2 * 66 + 128  # split_waves(128, 66) = 2
    assert unit_capacity(66, 256, whole=False) == 4 * 66 + 256
    assert unit_capacity(66, 128, whole=False, waves=1) == 66 + 128  # MLA's one wave
    uneven = [30000, 5, 0, 700] + [40] * 124
    assert not balanced_units(uneven, 66) and balanced_units([700] * 128, 66)
    # the share's edge: 63 x 700 keys and one of x, target 66: x <= 1.1 (44,100 + x) / 66, so x <= 747
    assert WHOLE_MAX_SHARE == 1.1 and WHOLE_MAX_OVER_MEAN == 1.5
    assert balanced_units([700] * 63 + [747], 66) and not balanced_units([700] * 63 + [748], 66)
    # the mean's edge: 255 x 700 keys and one of x: 256 x <= 1.5 (178,500 + x), so x <= 1,052
    assert balanced_units([700] * 255 + [1052], 66) and not balanced_units([700] * 255 + [1053], 66)
    u = plan_decode_units(uneven, 66, seq0=2, cap=unit_capacity(66, 128), whole=True)
    assert u["whole"] and u["count"] == 127 and len(u["seq"]) == 128 and u["seq"][-1] == -1
    assert all(lo == 0 for lo in u["lo"]) and u["hi"][0] == 30000 and u["seq_units"][3:5] == [2, 3]
    split = plan_decode_units(uneven, 66)  # the default: split, the long context over several units
    assert (
        not split["whole"]
        and split["count"] > 128
        and max(h - lo for lo, h in zip(split["lo"], split["hi"])) < 30000
    )
    even = plan_decode_units([700] * 128, 66)
    assert even["whole"] and even["count"] == 128


WHOLE_VS_SPLIT = r"""
import torch
from engine.attention import make_layout, plan_decode_units, reference_attention, unit_capacity, unit_tensors
from engine.fused import decode_attention
g = torch.Generator().manual_seed(0)
nh, nkv, d = 4, 2, 64
for q_lens, prior, window in (([1] * 5, [0, 30, 300, 700, 64], 0), ([7, 1, 1, 1], [0, 10, 500, 90], 0),
                              ([1, 1, 1], [400, 20, 130], 100)):
    lay = make_layout(q_lens, prior, "cpu", kv_heads=nkv)
    k = torch.randn(sum(lay.k_lens) + 8, nkv, d, generator=g)
    v = torch.randn(sum(lay.k_lens) + 8, nkv, d, generator=g)
    q = torch.randn(sum(q_lens), nh, d, generator=g)
    dec = lay.k_lens[lay.n_prefill :]
    row = int(lay.cu_q[lay.n_prefill])
    want = reference_attention(q, k, v, lay, d**-0.5, window)[row:]
    outs = {}
    for whole in (False, True):  # cap past the count: idle programs of a graph's grid write nothing
        units = plan_decode_units(dec, 3, seq0=lay.n_prefill, cap=unit_capacity(3, len(dec), whole) + 3, whole=whole)
        assert whole or units["count"] > len(dec)  # the split path really splits
        lay.units, lay.whole_units = unit_tensors(units, "cpu"), whole
        out = decode_attention(q, k, v, lay, d**-0.5, window, out=torch.full_like(q, float("nan")))
        assert out[:row].isnan().all(), "a decode program wrote a prefill row"
        err = (out[row:] - want).abs().max().item()
        assert err < 1e-4, (q_lens, whole, err)
        outs[whole] = out[row:]
    assert (outs[True] - outs[False]).abs().max().item() < 1e-5
    print("ok", q_lens)
"""


def test_decode_kernel_gives_the_same_rows_with_and_without_the_split_interpreted():
    assert run_interpreted(WHOLE_VS_SPLIT).count("ok ") == 3
