"""Fused mixture-of-experts: routed tokens sorted by expert, one grouped GEMM per weight, weighted combine.

What production engines run (vLLM's fused_moe, SGLang's): the router's top-k picks give (token, expert)
pairs; `align` sorts the pairs by expert and pads each expert's run to a multiple of the kernel's row
block, so every row block of the sorted list belongs to one expert. One Triton kernel then computes
gate_up for all blocks at once (each program: one row block x one column tile, reading that block's
expert weights; programs of untouched experts do not exist, so only the experts the batch touched are
read), the activation runs over the pairs, and a second launch computes down with the routing weight
applied in its epilogue, writing each pair's row; the combine sums a token's top-k rows.

Large steps (prefill) can take torch._grouped_mm instead (CUTLASS's grouped GEMM on sm90, bf16): the pairs
sorted by expert without padding, the weights as stored (a transposed view, no copy), one Triton pass
combining each token's rows. `moe_backend` picks per step: `tune_moe`'s timed, reference-checked choice per
rows-per-expert bucket (the serving executor's warm-up runs it), else a rows-per-expert rule.

Every shape here is fixed by the token count (padded lists of `pairs + experts * (block - 1)` rows,
idle blocks marked -1), so a decode step with this layer captures in a CUDA graph. The cost model's
routed-experts group prices exactly this: the weights of the touched experts plus the GEMM over the
routed rows (core.cost_model.CostModel.expert_time). `moe_reference` is the loop over experts, used on
the CPU and to check the kernel.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import torch

from engine.attention import device_sms
from engine.fused import act_mul

try:  # Triton ships with CUDA builds of torch; CPU-only installs run the torch paths
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None


def route(logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax router, top-k: (weights [T, k] fp32, expert ids [T, k] int64).

    Renormalised (Mixtral): the softmax over the top-k logits, which is the full softmax's top-k renormalised
    (the same experts: softmax keeps the order), in two kernels instead of five (a batch-1 step's MoE layer
    is launch-bound). Otherwise the full softmax's top-k probabilities (DeepSeek-V2, norm_topk_prob off)."""
    if renormalize:
        top, ids = torch.topk(logits, top_k, dim=-1)
        return torch.softmax(top.float(), dim=-1), ids
    probs = torch.softmax(logits.float(), dim=-1)
    return torch.topk(probs, top_k, dim=-1)


# How a layer picks its experts. "uniform" (the default): each token's top-k drawn uniformly without replacement
# by a hash of the router's logits, gated by the router's own scores at those experts. "router": the random router's
# own top-k. A random-weight model's router does not route like a trained one: its hidden states grow alike with
# depth, so a few experts take most tokens (benchmarks/moe_routing_balance.py: Mixtral-8x7B at full depth, an
# 881-token step, rows per expert cv up to 1.36 where uniform routing gives 0.06, the busiest expert 3.8x the mean,
# some experts idle), where trained routers are held near balance by their load-balancing loss or bias. SGLang
# (SGLANG_SIMULATE_UNIFORM_EXPERTS, sgl-project/sglang#25571) and vLLM (VLLM_MOE_ROUTING_STRATEGY,
# vllm-project/vllm#21990) force balanced routing for dummy-weight benchmarks for the same reason; calibration's
# MoE points and the simulator (workload.moe_routing_skew 0) route uniformly too. The hash, not a random draw, so
# that equal rows (a CUDA graph's padding, one dummy repeated) pick equal experts, and a step is the same on replay.
ROUTINGS = ("uniform", "router")
ROUTE_INDEX_BITS = 10  # experts a layer at most: 1,024
_GOLD, _MIX1, _MIX2, _SALT, _M32 = 0x9E3779B1, 0x85EBCA6B, 0xC2B2AE35, 0x27D4EB2F, 0xFFFFFFFF


def _fmix(h: torch.Tensor) -> torch.Tensor:
    """murmur3's 32-bit finaliser on int64 tensors holding uint32 values."""
    h = h ^ (h >> 16)
    h = (h * _MIX1) & _M32
    h = h ^ (h >> 13)
    h = (h * _MIX2) & _M32
    return h ^ (h >> 16)


def uniform_keys(logits: torch.Tensor) -> torch.Tensor:
    """[T, E] int64 keys, unique within a row, whose top-k is a uniform draw of k experts keyed on the row's bf16
    logits: a row's seed mixes every logit's bits, each expert's key mixes the seed with the expert index, and
    its low ROUTE_INDEX_BITS hold the index (so keys never tie and the kernel reads the expert back from its
    key)."""
    e = logits.shape[-1]
    bits = logits.to(torch.bfloat16).view(torch.int16).to(torch.int64) & 0xFFFF
    idx = torch.arange(e, device=logits.device, dtype=torch.int64)
    seed = _fmix((((bits + 1) * (((idx + 1) * _GOLD) & _M32)) & _M32).sum(-1, keepdim=True) & _M32)
    return (_fmix(seed ^ ((idx * _SALT) & _M32)) << ROUTE_INDEX_BITS) | idx


def uniform_route_reference(
    logits: torch.Tensor, top_k: int, renormalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """`uniform_route` through torch ops: (weights [T, k] fp32, expert ids [T, k] int64)."""
    ids = torch.topk(uniform_keys(logits), top_k, dim=-1).indices
    if renormalize:
        return torch.softmax(logits.float().gather(-1, ids), dim=-1), ids
    return torch.softmax(logits.float(), dim=-1).gather(-1, ids), ids


def uniform_route(logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's top-k experts drawn uniformly by a hash of its logits (`ROUTINGS`), weighted like `route`
    (renormalised over the picks, or the full softmax's probabilities at them): one Triton launch on CUDA
    (`uniform_route_triton`), the torch path elsewhere; both give the same picks and weights."""
    e = logits.shape[-1]
    if e > 1 << ROUTE_INDEX_BITS:
        raise ValueError(f"uniform routing takes at most {1 << ROUTE_INDEX_BITS} experts a layer, not {e}")
    if triton is not None and logits.is_cuda and logits.shape[0]:
        return uniform_route_triton(logits, top_k, renormalize)
    return uniform_route_reference(logits, top_k, renormalize)


def uniform_route_triton(
    logits: torch.Tensor, top_k: int, renormalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """`uniform_route`'s kernel (a program per token; the tests run it under Triton's interpreter)."""
    t, e = logits.shape
    lg = logits.to(torch.bfloat16).contiguous()
    w = torch.empty((t, top_k), dtype=torch.float32, device=lg.device)
    ids = torch.empty((t, top_k), dtype=torch.int64, device=lg.device)
    _uniform_route_kernel[(t,)](
        lg, w, ids, E=e, EP2=triton.next_power_of_2(max(e, 2)), K=top_k, RENORM=renormalize,
        IDX_BITS=ROUTE_INDEX_BITS, num_warps=1,
    )  # fmt: skip
    return w, ids


def select_experts(
    logits: torch.Tensor, top_k: int, renormalize: bool, routing: str = "uniform"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights, ids) of one MoE layer's tokens under `routing` (ROUTINGS)."""
    if routing == "router":
        return route(logits, top_k, renormalize)
    check_routing(routing)
    return uniform_route(logits, top_k, renormalize)


def check_routing(routing: str) -> None:
    """One line naming the routings there are, for a name that is not one (ROUTINGS)."""
    if routing not in ROUTINGS:
        raise ValueError(f"moe routing {routing!r}: pick one of {', '.join(ROUTINGS)}")


def moe_reference(x, w_gate_up, w_down, weights, ids, act: str = "silu") -> torch.Tensor:
    """The loop over experts: each expert's tokens through gate_up, act·mul, down, weighted and summed."""
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for e in range(w_gate_up.shape[0]):
        tok, slot = torch.nonzero(ids == e, as_tuple=True)
        if tok.numel() == 0:
            continue
        h = act_mul(x[tok] @ w_gate_up[e].t(), act)
        y = (h @ w_down[e].t()).float() * weights[tok, slot, None].float()
        out.index_add_(0, tok, y)
    return out.to(x.dtype)


def align(ids: torch.Tensor, num_experts: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort the (token, slot) pairs of `ids` [T, k] by expert, each expert's run padded to `block` rows.

    Returns (sorted pair ids [pairs + E*(block-1)], value `pairs` for padding rows; expert of each row
    block, -1 for blocks past the last expert's run). Pair p is token p // k, slot p % k. Fixed shapes,
    no host synchronisation: CUDA-graph safe.
    """
    flat = ids.reshape(-1)
    pairs = flat.numel()
    dev = flat.device
    rows = align_rows(pairs, num_experts, block)
    if triton is not None and (flat.is_cuda or _interpreted()) and pairs <= ALIGN_KERNEL_MAX_PAIRS:
        sorted_ids = torch.empty(rows, dtype=torch.int32, device=dev)
        block_expert = torch.empty(rows // block, dtype=torch.int32, device=dev)
        e_p2 = max(16, triton.next_power_of_2(num_experts))
        if pairs <= ALIGN_ONE_PROGRAM_MAX_PAIRS:
            _align_kernel[(1,)](
                flat.contiguous(), sorted_ids, block_expert, pairs, rows,
                E=num_experts, E_P2=e_p2, BM=block, CH=ALIGN_CHUNK, B_CH=64, num_warps=8,
            )  # fmt: skip
            return sorted_ids, block_expert
        chunks = triton.cdiv(pairs, ALIGN_CHUNK)
        # each chunk's counts per expert, then where its first pair of each expert goes
        offsets = torch.empty((chunks, e_p2), dtype=torch.int32, device=dev)
        flat = flat.contiguous()
        _align_count_kernel[(chunks,)](flat, offsets, pairs, E=num_experts, E_P2=e_p2, CH=ALIGN_CHUNK)
        _align_scan_kernel[(1,)](
            offsets, sorted_ids, block_expert, pairs, rows, chunks,
            E=num_experts, E_P2=e_p2, BM=block, C_CH=ALIGN_SCAN_CHUNKS, R_CH=1024, num_warps=4,
        )  # fmt: skip
        _align_place_kernel[(chunks,)](
            flat, offsets, sorted_ids, pairs, E=num_experts, E_P2=e_p2, CH=ALIGN_CHUNK
        )
        return sorted_ids, block_expert
    counts = torch.zeros(num_experts, dtype=torch.int64, device=dev)
    counts.scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block - 1) // block * block
    pad_end = torch.cumsum(padded, 0)
    order = torch.argsort(flat, stable=True)
    e_sorted = flat[order]
    rank = torch.arange(pairs, device=dev) - (torch.cumsum(counts, 0) - counts)[e_sorted]
    dest = (pad_end - padded)[e_sorted] + rank
    sorted_ids = torch.full((rows,), pairs, dtype=torch.int32, device=dev)
    sorted_ids.scatter_(0, dest, order.to(torch.int32))
    starts = torch.arange(0, rows, block, device=dev)
    blk = torch.searchsorted(pad_end, starts, right=True)
    block_expert = torch.where(blk < num_experts, blk, -1).to(torch.int32)
    return sorted_ids, block_expert


# `align` runs as Triton kernels on the GPU (the torch path is some 25 small kernels, a sort among them: 76-128 µs
# a layer on an H200 at 384-2,048 tokens, benchmarks/moe_tiles.py). Up to ALIGN_ONE_PROGRAM_MAX_PAIRS (token,
# expert) pairs one program does it all in one launch; it walks the pairs alone, so it grows with them (19 µs at
# 768 pairs, 74 at 2,304, 378 at 12,288 on the H200). Above, three launches: a program per chunk of pairs counts
# its experts, one program turns the counts into each expert's padded start and each chunk's place in it, and a
# program per chunk places its pairs: 10-17 µs at 768-12,288 pairs. ALIGN_KERNEL_MAX_PAIRS: the torch path beyond
# it (kept as the tests' reference, `align_reference`).
ALIGN_KERNEL_MAX_PAIRS = 1 << 62
# decode-size steps keep one graph node; the crossover below 768 pairs is unmeasured
ALIGN_ONE_PROGRAM_MAX_PAIRS = 512
ALIGN_CHUNK = 128  # pairs a program takes at a time
ALIGN_SCAN_CHUNKS = 32  # chunks' counts the scan program takes at a time


def align_rows(pairs: int, num_experts: int, block: int) -> int:
    """Rows of the sorted list: every pair plus each expert's padding, rounded up to whole blocks."""
    return (pairs + num_experts * (block - 1) + block - 1) // block * block


if triton is not None:

    @triton.jit
    def _pad_rows(SORTED, pairs, rows, R_CH: tl.constexpr):
        """Every row of the sorted list set to the padding value `pairs` (the pairs are placed over it after)."""
        r = tl.arange(0, R_CH)
        for r0 in range(0, rows, R_CH):
            tl.store(SORTED + r0 + r, tl.full((R_CH,), 0, tl.int32) + pairs, mask=(r0 + r) < rows)

    @triton.jit
    def _block_experts(BLOCK_E, pad_end, rows, E: tl.constexpr, E_P2: tl.constexpr, BM: tl.constexpr,
                       B_CH: tl.constexpr):  # fmt: skip
        """Each row block's expert from the experts' padded ends (-1 past the last expert's run)."""
        ex = tl.arange(0, E_P2)
        b = tl.arange(0, B_CH)
        for b0 in range(0, rows // BM, B_CH):
            bi = b0 + b
            blk = tl.sum(((pad_end[None, :] <= (bi * BM)[:, None]) & (ex[None, :] < E)).to(tl.int32), 1)
            tl.store(BLOCK_E + bi, tl.where(blk < E, blk, -1), mask=bi < rows // BM)

    @triton.jit
    def _rank_in_chunk(e, valid, CH: tl.constexpr):
        """Each pair's rank among the earlier valid pairs of its expert in this chunk (the stable sort's order)."""
        c = tl.arange(0, CH)
        same = (e[:, None] == e[None, :]) & (c[None, :] < c[:, None]) & valid[None, :]
        return tl.sum(same.to(tl.int32), 1)

    # `pairs` and `rows` change with every step's token count: not specialised (Triton would otherwise compile
    # a kernel again the first time a count is a multiple of 16 or 1, in the middle of serving)
    @triton.jit(do_not_specialize=["pairs", "rows"])
    def _align_kernel(
        IDS,
        SORTED,
        BLOCK_E,
        pairs,
        rows,
        E: tl.constexpr,
        E_P2: tl.constexpr,
        BM: tl.constexpr,
        CH: tl.constexpr,
        B_CH: tl.constexpr,
    ):
        """`align` in one program (steps up to ALIGN_ONE_PROGRAM_MAX_PAIRS pairs): one launch instead of a sort
        and its scans. Pairs are taken CH at a time: a pass counting each expert's pairs, then a pass
        placing each pair after its expert's earlier ones (the stable sort's order)."""
        ex = tl.arange(0, E_P2)
        c = tl.arange(0, CH)
        counts = tl.zeros((E_P2,), tl.int32)
        for c0 in range(0, pairs, CH):
            p = c0 + c
            e = tl.load(IDS + p, mask=p < pairs, other=E).to(tl.int32)
            counts += tl.sum(((ex[:, None] == e[None, :]) & (p < pairs)[None, :]).to(tl.int32), 1)
        padded = (counts + BM - 1) // BM * BM
        pad_end = tl.cumsum(padded, 0)
        pad_start = pad_end - padded
        _pad_rows(SORTED, pairs, rows, CH)  # the padding first, then the pairs over it
        tl.debug_barrier()
        placed = tl.zeros((E_P2,), tl.int32)  # pairs of each expert placed by earlier chunks
        for c0 in range(0, pairs, CH):
            p = c0 + c
            valid = p < pairs
            e = tl.load(IDS + p, mask=valid, other=E).to(tl.int32)
            rank = _rank_in_chunk(e, valid, CH)
            hit = (ex[:, None] == e[None, :]) & valid[None, :]  # [E_P2, CH]
            start = tl.sum(tl.where(hit, (pad_start + placed)[:, None], 0), 0)
            tl.store(SORTED + start + rank, p, mask=valid)
            placed += tl.sum(hit.to(tl.int32), 1)
        _block_experts(BLOCK_E, pad_end, rows, E, E_P2, BM, B_CH)

    @triton.jit(do_not_specialize=["pairs"])
    def _align_count_kernel(IDS, COUNTS, pairs, E: tl.constexpr, E_P2: tl.constexpr, CH: tl.constexpr):
        """COUNTS[chunk, e]: pairs of expert e among this program's CH pairs."""
        chunk = tl.program_id(0)
        p = chunk * CH + tl.arange(0, CH)
        valid = p < pairs
        e = tl.load(IDS + p, mask=valid, other=E).to(tl.int32)
        ex = tl.arange(0, E_P2)
        counts = tl.sum(((ex[:, None] == e[None, :]) & valid[None, :]).to(tl.int32), 1)
        tl.store(COUNTS + chunk * E_P2 + ex, counts)

    @triton.jit(do_not_specialize=["pairs", "rows", "chunks"])
    def _align_scan_kernel(
        OFFSETS,
        SORTED,
        BLOCK_E,
        pairs,
        rows,
        chunks,
        E: tl.constexpr,
        E_P2: tl.constexpr,
        BM: tl.constexpr,
        C_CH: tl.constexpr,
        R_CH: tl.constexpr,
    ):
        """One program: each expert's total and padded start, then OFFSETS[chunk, e] (the chunk's counts in,
        where the chunk's first pair of expert e goes out), every row set to the padding value `pairs`, and
        each row block's expert (-1 past the last expert's run)."""
        ex = tl.arange(0, E_P2)
        cc = tl.arange(0, C_CH)
        totals = tl.zeros((E_P2,), tl.int32)
        for c0 in range(0, chunks, C_CH):
            m = (c0 + cc) < chunks
            counts = tl.load(OFFSETS + (c0 + cc)[:, None] * E_P2 + ex[None, :], mask=m[:, None], other=0)
            totals += tl.sum(counts, 0)
        padded = (totals + BM - 1) // BM * BM
        pad_end = tl.cumsum(padded, 0)
        run = pad_end - padded  # where the next chunk's pairs of each expert start
        for c0 in range(0, chunks, C_CH):
            m = (c0 + cc) < chunks
            ptrs = OFFSETS + (c0 + cc)[:, None] * E_P2 + ex[None, :]
            counts = tl.load(ptrs, mask=m[:, None], other=0)
            before = tl.cumsum(counts, 0) - counts  # earlier chunks of this group
            tl.store(ptrs, run[None, :] + before, mask=m[:, None])
            run += tl.sum(counts, 0)
        _pad_rows(SORTED, pairs, rows, R_CH)
        _block_experts(BLOCK_E, pad_end, rows, E, E_P2, BM, 64)

    @triton.jit(do_not_specialize=["pairs"])
    def _align_place_kernel(
        IDS, OFFSETS, SORTED, pairs, E: tl.constexpr, E_P2: tl.constexpr, CH: tl.constexpr
    ):
        """Each of this program's pairs after its expert's pairs in earlier chunks and earlier in this one (the
        stable sort's order)."""
        chunk = tl.program_id(0)
        p = chunk * CH + tl.arange(0, CH)
        valid = p < pairs
        e = tl.load(IDS + p, mask=valid, other=0).to(tl.int32)
        rank = _rank_in_chunk(e, valid, CH)
        start = tl.load(OFFSETS + chunk * E_P2 + e, mask=valid, other=0)
        tl.store(SORTED + start + rank, p, mask=valid)

    @triton.jit(do_not_specialize=["pairs"])
    def _moe_gemm_kernel(
        A,
        W,
        C,
        TW,
        SORTED,
        BLOCK_E,
        N,
        K,
        pairs,
        stride_am,
        stride_we,
        stride_wn,
        stride_cm,
        TOP_K: tl.constexpr,
        ROUTED_WEIGHT: tl.constexpr,
        BM: tl.constexpr,
        BN: tl.constexpr,
        BK: tl.constexpr,
        GROUP: tl.constexpr,
        SPLIT_K: tl.constexpr,
    ):
        """C[pair] = A[pair // TOP_K] @ W[e]^T (times the pair's routing weight), for one row block of
        the expert-sorted pairs and one column tile; blocks of expert -1 return at once. With SPLIT_K > 1
        (small steps: a few touched experts would leave most SMs idle) program axis 1 takes one of SPLIT_K
        slices of K and adds its partial product into C (fp32, zeroed) atomically."""
        pid = tl.program_id(0)
        pid_k = tl.program_id(1)
        n_m = tl.num_programs(0) // tl.cdiv(N, BN)
        n_n = tl.cdiv(N, BN)
        # grouped ordering: GROUP row blocks share a column tile's weights in L2
        width = GROUP * n_n
        g = pid // width
        first = g * GROUP
        size = tl.minimum(n_m - first, GROUP)
        pid_m = first + (pid % width) % size
        pid_n = (pid % width) // size
        e = tl.load(BLOCK_E + pid_m)
        if e < 0:
            return
        offs_m = pid_m * BM + tl.arange(0, BM)
        pid_rows = tl.load(SORTED + offs_m)
        valid = pid_rows < pairs
        a_rows = (pid_rows // TOP_K).to(tl.int64)
        offs_n = pid_n * BN + tl.arange(0, BN)
        nmask = offs_n < N
        k_steps = tl.cdiv(tl.cdiv(K, BK), SPLIT_K)  # this program's BK-blocks of K
        k_first = pid_k * k_steps * BK
        offs_k = tl.arange(0, BK)
        a_ptrs = A + a_rows[:, None] * stride_am + (k_first + offs_k)[None, :]
        w_ptrs = (W + e.to(tl.int64) * stride_we + offs_n[None, :].to(tl.int64) * stride_wn
                  + (k_first + offs_k)[:, None])  # fmt: skip
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, k_steps):
            kmask = offs_k < K - k_first - k0 * BK
            a = tl.load(a_ptrs, mask=valid[:, None] & kmask[None, :], other=0.0)
            w = tl.load(w_ptrs, mask=kmask[:, None] & nmask[None, :], other=0.0)
            acc = tl.dot(a, w, acc)
            a_ptrs += BK
            w_ptrs += BK
        if ROUTED_WEIGHT:
            acc = acc * tl.load(TW + pid_rows, mask=valid, other=0.0)[:, None]
        c_ptrs = C + pid_rows.to(tl.int64)[:, None] * stride_cm + offs_n[None, :]
        if SPLIT_K == 1:
            tl.store(c_ptrs, acc.to(C.dtype.element_ty), mask=valid[:, None] & nmask[None, :])
        else:
            tl.atomic_add(c_ptrs, acc, mask=valid[:, None] & nmask[None, :])

    @triton.jit
    def _fmix_tl(h):
        """`_fmix` (murmur3's 32-bit finaliser) inside a kernel: Triton reads no module-level ints."""
        h = h ^ (h >> 16)
        h = (h * 0x85EBCA6B) & 0xFFFFFFFF
        h = h ^ (h >> 13)
        h = (h * 0xC2B2AE35) & 0xFFFFFFFF
        return h ^ (h >> 16)

    @triton.jit
    def _uniform_route_kernel(
        L, W, IDS, E: tl.constexpr, EP2: tl.constexpr, K: tl.constexpr, RENORM: tl.constexpr,
        IDX_BITS: tl.constexpr,
    ):  # fmt: skip
        """One token a program: its keys (uniform_keys), the k largest one by one (the low bits are the expert),
        then the gate weights over the picks (RENORM) or the full softmax at them."""
        t = tl.program_id(0)
        e = tl.arange(0, EP2)
        valid = e < E
        raw = tl.load(L + t * E + e, mask=valid, other=0.0)
        logit = tl.where(valid, raw.to(tl.float32), float("-inf"))
        bits = raw.to(tl.int16, bitcast=True).to(tl.int64) & 0xFFFF
        idx = e.to(tl.int64)
        mult = ((idx + 1) * 0x9E3779B1) & 0xFFFFFFFF
        seed = _fmix_tl(tl.sum(tl.where(valid, ((bits + 1) * mult) & 0xFFFFFFFF, 0), axis=0) & 0xFFFFFFFF)
        keys = (_fmix_tl(seed ^ ((idx * 0x27D4EB2F) & 0xFFFFFFFF)) << IDX_BITS) | idx
        keys = tl.where(valid, keys, -1)
        picked = tl.zeros([EP2], dtype=tl.int1)
        left = keys
        for _j in tl.static_range(K):
            best = tl.max(left, axis=0) & ((1 << IDX_BITS) - 1)
            picked = picked | (idx == best)
            left = tl.where(idx == best, -1, left)
        over = picked if RENORM else valid
        top = tl.max(tl.where(over, logit, float("-inf")), axis=0)
        p = tl.where(over, tl.exp(logit - top), 0.0)
        p = p / tl.sum(p, axis=0)
        left = keys
        for j in tl.static_range(K):
            best = tl.max(left, axis=0) & ((1 << IDX_BITS) - 1)
            tl.store(IDS + t * K + j, best)
            tl.store(W + t * K + j, tl.sum(tl.where(idx == best, p, 0.0), axis=0))
            left = tl.where(idx == best, -1, left)

    @triton.jit
    def _moe_combine_kernel(
        Y, RANK, TW, OUT, H, TOP_K: tl.constexpr, BLOCK: tl.constexpr, IN_ORDER: tl.constexpr = False
    ):
        """OUT[t] = sum over the token's k pairs of routing weight x its row of Y (rows in expert order, RANK
        giving each pair's). IN_ORDER: Y's rows are the pairs in token order with the weights applied already
        (the Triton path's down GEMM), summed as they are (RANK and TW unread)."""
        t = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = cols < H
        acc = tl.zeros((BLOCK,), tl.float32)
        for j in tl.static_range(TOP_K):
            if IN_ORDER:
                acc += tl.load(Y + (t * TOP_K + j) * H + cols, mask=m, other=0.0).to(tl.float32)
            else:
                r = tl.load(RANK + t * TOP_K + j).to(tl.int64)
                row = tl.load(Y + r * H + cols, mask=m, other=0.0).to(tl.float32)
                acc += tl.load(TW + t * TOP_K + j) * row
        tl.store(OUT + t * H + cols, acc.to(OUT.dtype.element_ty), mask=m)


# Large steps: 128 x 256 tiles (the H200 sweep of benchmarks/moe_mla_gpu.py: 626 TFLOP/s for one Mixtral
# layer's grouped GEMMs at 8k tokens against 362 with 64 x 128) once an expert's rows outgrow a 64-row block
# (kernel_config); below that, 64 x 128 wastes fewer padded rows.
LARGE_TILE = {"BM": 128, "BN": 256, "BK": 64, "GROUP": 8, "num_warps": 8, "num_stages": 3}
MEDIUM_TILE = {"BM": 64, "BN": 128, "BK": 64, "GROUP": 8, "num_warps": 8, "num_stages": 4}
# Decode steps (up to 64 routed rows): 16-row blocks streaming the touched experts' weights in 64-wide column
# tiles, K unsplit. From the H200 sweep of one layer at 1-4 tokens (benchmarks/moe_tiles.py --decode,
# engine_kernels_h200/moe_tiles_decode_2026-12-04.md): Mixtral's gate_up (K 4,096) 113.6 / 164.6 / 269.4 us with
# BK 256 in 3 stages, its down (K 14,336) 58.2 / 91.7 / 145.3 with BK 256 in 4, DeepSeek-V2-Lite's (K 1,408-2,048)
# 21.2 / 37.8 / 59.4 and 12.0 / 21.2 / 31.6 with BK 128 in 3, each within 7% of the sweep's best of 90 (gate_up)
# or 30 (down) configs; the session-13 rule below (32-wide tiles, K split until 4 programs an SM) took 118.6 us
# for Mixtral's gate_up and about 69 for its down at one token (kernel_profile_2026-12-04: 93.6 us a call).
# DECODE_SPLIT = True restores that rule, for the before/after check (benchmarks/moe_decode_gpu.py).
DECODE_SPLIT = False
# the session-13 rule: programs wanted per SM before K is split, at most MAX_SPLIT_K slices
SPLIT_PROGRAMS_PER_SM = 4
MAX_SPLIT_K = 8
SMS_DEFAULT = 132  # an H100/H200's SMs, where no device is at hand (CPU tests)
# per-shape overrides, (rows-per-expert bucket, N, K, experts) -> config: set by `set_tuned` from a
# device's own sweep (benchmarks/moe_mla_gpu.py); empty by default
TUNED: dict[tuple[int, int, int, int], dict] = {}


def kernel_config(pairs: int, n: int, num_experts: int = 8, k: int = 0, sms: int = 0) -> dict:
    """Tile sizes by routed rows: small batches stream weights (16-row blocks, 64-wide column tiles, long K
    steps; `DECODE_SPLIT`: narrow tiles with K split so that a few touched experts fill the SMs); then the smallest of 32, 64 and 128-row blocks that holds
    an expert's rows whole (`expert_rows_high`), so that no expert's weights are read twice; 128 x 256 tiles
    from there on, where the GEMMs turn compute-bound. A `TUNED` entry for the shape wins."""
    bucket = rows_bucket(pairs, num_experts)
    tuned = TUNED.get((bucket, n, k, num_experts))
    if tuned is not None:
        return dict(tuned, SPLIT_K=1)
    if pairs <= 64:
        if not DECODE_SPLIT:
            return {"BM": 16, "BN": 64, "BK": 256 if k >= 4096 else 128, "GROUP": 1, "num_warps": 4,
                    "num_stages": 4 if k >= 8192 else 3, "SPLIT_K": 1}  # fmt: skip
        cfg = {"BM": 16, "BN": 64 if n >= 16384 else 32, "BK": 128, "GROUP": 1, "num_warps": 4,
               "num_stages": 4}  # fmt: skip
        cfg["SPLIT_K"] = split_k(min(pairs, num_experts) * -(-n // cfg["BN"]), k, cfg["BK"], sms)
        return cfg
    high = expert_rows_high(pairs, num_experts)
    if high > MEDIUM_TILE["BM"]:
        return dict(LARGE_TILE, SPLIT_K=1)
    if pairs <= 512 and high <= 32:
        return {"BM": 32, "BN": 64, "BK": 128, "GROUP": 4, "num_warps": 4, "num_stages": 3, "SPLIT_K": 1}
    return dict(MEDIUM_TILE, SPLIT_K=1)


def expert_rows_high(pairs: int, num_experts: int) -> float:
    """An expert's rows at the high end under uniform routing: the mean plus two of its binomial (about Poisson)
    spreads. While the layer reads weights, an expert whose rows take two row blocks reads its weights twice: on
    an H200, Mixtral-8x7B's layer went 688 -> 840-956 us from 96 to 128-192 tokens in 32-row blocks (24 -> 32-48
    rows an expert, benchmarks/results/engine_kernels_h200/moe_knee_session13.json), and at 384 tokens (96 rows,
    16 blocks of 64) its GEMMs took 618 + 291 us in 64 x 128 tiles against 479 + 237 in 128 x 256 (moe_tiles.md);
    DeepSeek-V2-Lite's at 768-1,280 tokens (72-120 rows) 360-433 us against 323-363."""
    mean = pairs / max(num_experts, 1)
    return mean + 2.0 * math.sqrt(mean)


def rows_bucket(pairs: int, num_experts: int) -> int:
    """Average routed rows per expert, rounded down to a power of two (the key of `TUNED`)."""
    r = max(1, pairs // max(num_experts, 1))
    return 1 << (r.bit_length() - 1)


def split_k(programs: int, k: int, bk: int, sms: int = 0) -> int:
    """K slices for a small step whose touched blocks give `programs` programs: enough for
    SPLIT_PROGRAMS_PER_SM per SM, at most MAX_SPLIT_K, each slice at least 4 BK-blocks (1: no split)."""
    if k <= 0:
        return 1
    want = SPLIT_PROGRAMS_PER_SM * (sms or SMS_DEFAULT)
    s = 1
    while s < MAX_SPLIT_K and programs * s < want and k // (2 * s * bk) >= 4:
        s *= 2
    return s


def set_tuned(entries: dict[tuple[int, int, int, int], dict]) -> None:
    """Use these tile configs for these shapes ((rows-per-expert bucket, N, K, experts) -> config)."""
    TUNED.clear()
    TUNED.update(entries)


def grouped_gemm(a, w, sorted_ids, block_expert, top_k: int, pairs: int, cfg: dict, weights=None):
    """[pairs, N] = rows of `a` (row pair // top_k) times their expert's w [E, N, K]^T, sorted by `align`
    (fp32 when cfg's SPLIT_K > 1: the slices add into it)."""
    n, k = w.shape[1], w.shape[2]
    split = cfg.get("SPLIT_K", 1)
    out = a.new_zeros((pairs, n), dtype=torch.float32) if split > 1 else a.new_empty((pairs, n))
    n_m = block_expert.shape[0]
    grid = (n_m * triton.cdiv(n, cfg["BN"]), split)
    _moe_gemm_kernel[grid](
        a,
        w,
        out,
        weights if weights is not None else a,
        sorted_ids,
        block_expert,
        n,
        k,
        pairs,
        a.stride(0),
        w.stride(0),
        w.stride(1),
        out.stride(0),
        TOP_K=top_k,
        ROUTED_WEIGHT=weights is not None,
        BM=cfg["BM"],
        BN=cfg["BN"],
        BK=cfg["BK"],
        GROUP=cfg["GROUP"],
        SPLIT_K=split,
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )
    return out


def fused_moe(x, w_gate_up, w_down, weights, ids, act: str = "silu") -> torch.Tensor:
    """The routed experts of one layer through two grouped-GEMM launches: [T, hidden]. torch._grouped_mm
    (CUTLASS) where `moe_backend` picks it for this step's rows and shape, else the Triton kernel."""
    if moe_backend(x, ids.numel(), w_gate_up) == "grouped_mm":
        return grouped_mm_moe(x, w_gate_up, w_down, weights, ids, act)
    return triton_moe(x, w_gate_up, w_down, weights, ids, act)


def triton_moe(x, w_gate_up, w_down, weights, ids, act: str = "silu") -> torch.Tensor:
    """The routed experts through the Triton grouped GEMM (`_moe_gemm_kernel`, padded row blocks)."""
    t, hidden = x.shape
    top_k = ids.shape[1]
    pairs = t * top_k
    e = w_gate_up.shape[0]
    sms = device_sms(x.device, off_cuda=0)  # (0: kernel_config then assumes SMS_DEFAULT)
    cfg = kernel_config(pairs, w_gate_up.shape[1], e, w_gate_up.shape[2], sms)
    sorted_ids, block_expert = align(ids, e, cfg["BM"])
    x = x.contiguous()
    h1 = grouped_gemm(x, w_gate_up, sorted_ids, block_expert, top_k, pairs, cfg)
    h2 = act_mul(h1.to(x.dtype), act)
    cfg_d = kernel_config(pairs, w_down.shape[1], e, w_down.shape[2], sms)
    if cfg_d["BM"] != cfg["BM"]:  # the same row blocks (a tuned entry may differ): the gate_up's rows
        cfg_d = dict(cfg_d, BM=cfg["BM"])
    tw = weights.reshape(-1).float().contiguous()
    y = grouped_gemm(h2, w_down, sorted_ids, block_expert, 1, pairs, cfg_d, weights=tw)
    return sum_pairs(y, t, top_k, x.dtype)


COMBINE_BLOCK = 1024


def sum_pairs(y: torch.Tensor, t: int, top_k: int, dtype: torch.dtype) -> torch.Tensor:
    """[t, hidden] in `dtype`: each token's top_k rows of y ([t * top_k, hidden], token order, weighted) summed
    in fp32, in one launch (torch's sum and cast took two, about 5 us at one token on an H200)."""
    hidden = y.shape[1]
    out = torch.empty((t, hidden), dtype=dtype, device=y.device)
    _moe_combine_kernel[(t, triton.cdiv(hidden, COMBINE_BLOCK))](
        y, y, y, out, hidden, TOP_K=top_k, BLOCK=COMBINE_BLOCK, IN_ORDER=True, num_warps=4
    )
    return out


# torch._grouped_mm (CUTLASS's grouped GEMM on sm90+, bf16): the expert GEMMs of large steps. Chosen per
# (rows-per-expert bucket, 2I, H, experts) by `tune_moe`'s timing at warm-up (BACKEND), else by this rule: from
# GROUPED_MM_MIN_ROWS routed rows per expert on average (prefill-size steps); decode-size steps keep the Triton
# kernel, which streams the touched experts' weights near the copy bandwidth (16-row blocks, 64-wide tiles).
# 160 from an H200 (benchmarks/moe_gpu_check.py and the calibration sweep's moe points, ms, Triton vs
# grouped_mm): Mixtral 128 rows an expert 1.05 vs 1.24 (Triton), 256 rows 1.74 vs 1.62; DeepSeek-V2-Lite
# 192 rows 0.74 vs 0.62 (grouped_mm).
GROUPED_MM_MIN_ROWS = 160
BACKEND: dict[tuple[int, int, int, int], str] = {}
BACKENDS = ("triton", "grouped_mm")


def forcing_backends(x: torch.Tensor, w_gate_up: torch.Tensor, pairs: int) -> Iterator[str]:
    """Each expert backend that runs here, forced in turn for steps of `pairs` routed rows through `w_gate_up`
    (its BACKEND entry set while the caller's loop body runs; the entries as they were afterwards): for timing
    `routed_experts` on every backend."""
    e, n, k = w_gate_up.shape
    key = (rows_bucket(pairs, e), n, k, e)
    keep = dict(BACKEND)
    try:
        for backend in BACKENDS if grouped_mm_supported(x) else ("triton",):
            set_backends({**keep, key: backend})
            yield backend
    finally:
        set_backends(keep)


def grouped_mm_supported(x: torch.Tensor) -> bool:
    """torch._grouped_mm runs here: a CUDA bf16 tensor on sm90 or newer (elsewhere its fallback is a loop)."""
    if not (hasattr(torch, "_grouped_mm") and x.is_cuda and x.dtype == torch.bfloat16):
        return False
    i = x.device.index if x.device.index is not None else torch.cuda.current_device()
    if i not in _MAJOR:
        _MAJOR[i] = torch.cuda.get_device_capability(i)[0]
    return _MAJOR[i] >= 9


_MAJOR: dict[int, int] = {}  # compute capability major per CUDA device (a step's MoE layers ask each time)


def moe_backend(x: torch.Tensor, pairs: int, w_gate_up: torch.Tensor) -> str:
    """ "grouped_mm" or "triton" for a step of `pairs` routed rows through experts `w_gate_up` [E, 2I, H]."""
    if not grouped_mm_supported(x):
        return "triton"
    e, n, k = w_gate_up.shape
    tuned = BACKEND.get((rows_bucket(pairs, e), n, k, e))
    if tuned is not None:
        return tuned
    return "grouped_mm" if pairs >= GROUPED_MM_MIN_ROWS * e else "triton"


def set_backends(entries: dict[tuple[int, int, int, int], str]) -> None:
    """Use these backends for these (rows-per-expert bucket, 2I, H, experts) keys; {}: the rule alone."""
    BACKEND.clear()
    BACKEND.update(entries)


def expert_order(ids: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (token, slot) pairs of `ids` [T, k] sorted by expert (stable), and each expert's cumulative row end
    (int32 [E], the `offs` of torch._grouped_mm). No host synchronisation."""
    flat = ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.zeros(num_experts, dtype=torch.int32, device=flat.device)
    counts.scatter_add_(0, flat, torch.ones_like(flat, dtype=torch.int32))
    return order, torch.cumsum(counts, 0, dtype=torch.int32)


def grouped_mm_moe(x, w_gate_up, w_down, weights, ids, act: str = "silu") -> torch.Tensor:
    """The routed experts through torch._grouped_mm: the tokens gathered in expert order (unpadded: each
    expert's rows end at `offs`), gate_up on the weights as stored ([E, 2I, H] seen as [E, H, 2I]: the
    column-major B the kernel takes, no copy), act·mul, down, then each pair's row weighted and put back in
    pair order, and a token's top-k rows summed in fp32."""
    t, hidden = x.shape
    top_k = ids.shape[1]
    order, offs = expert_order(ids, w_gate_up.shape[0])
    a = x[order // top_k]
    h1 = torch._grouped_mm(a, w_gate_up.transpose(1, 2), offs=offs)
    y = torch._grouped_mm(act_mul(h1, act), w_down.transpose(1, 2), offs=offs)
    tw = weights.reshape(-1).float().contiguous()
    if triton is not None and (y.is_cuda or _interpreted()):  # one pass: each token reads its k rows
        rank = torch.empty_like(order)  # where each pair's row sits in expert order
        rank[order] = torch.arange(order.numel(), device=order.device)
        out = torch.empty((t, hidden), dtype=x.dtype, device=x.device)
        _moe_combine_kernel[(t, triton.cdiv(hidden, COMBINE_BLOCK))](
            y, rank, tw, out, hidden, TOP_K=top_k, BLOCK=COMBINE_BLOCK, num_warps=4
        )
        return out
    y = y.float() * tw[order][:, None]
    out = torch.empty_like(y).index_copy_(0, order, y)
    return out.view(t, top_k, hidden).sum(1).to(x.dtype)


def moe_flops(pairs: int, w_gate_up: torch.Tensor) -> float:
    """FLOPs of one layer's two expert GEMMs over `pairs` routed rows."""
    _, n, k = w_gate_up.shape
    return 2.0 * pairs * k * n * 1.5  # gate_up (N = 2I) plus down (I x H): 3 I H multiply-adds a row


def tune_moe(model, max_tokens: int, log=None, min_rows: int = 16) -> dict:
    """Time both backends of every MoE shape in `model` at each rows-per-expert bucket from `min_rows` to
    `max_tokens` tokens' worth, each checked against `moe_reference` first and timed from a CUDA graph (a
    backend that disagrees or cannot be captured is dropped), and keep the faster one per bucket (BACKEND). What an engine does at start-up, before serving;
    nothing on the CPU or without sm90 (where only the Triton kernel runs). Returns {key: {backend: seconds
    or why dropped, "pick": backend}}."""
    from engine.model import MoE  # engine.model imports this module
    from engine.timing import measure_graph

    shapes = {}
    for m in model.modules():
        if isinstance(m, MoE) and grouped_mm_supported(m.w_gate_up):
            shapes.setdefault(tuple(m.w_gate_up.shape), m)
    record: dict = {}
    for (e, n, k), m in shapes.items():
        g = torch.Generator(device=m.w_gate_up.device).manual_seed(0)
        tokens = max(1, min_rows * e // m.top_k)
        while tokens <= max_tokens:
            pairs = tokens * m.top_k
            key = (rows_bucket(pairs, e), n, k, e)
            if key in record or key in BACKEND:  # tuned already (this bucket, or an earlier warm-up)
                tokens *= 2
                continue
            try:
                x = torch.randn(tokens, k, device=m.w_gate_up.device, generator=g).to(m.w_gate_up.dtype)
                w, ids = m.select(x)
                ref = moe_reference(x, m.w_gate_up, m.w_down, w, ids, m.act).float()
            except torch.cuda.OutOfMemoryError:  # larger buckets keep the rule
                if log:
                    log(f"moe tune {key}: out of memory, the rule decides from {tokens} tokens")
                break
            times: dict = {}
            args = (x, m.w_gate_up, m.w_down, w, ids, m.act)
            for name, fn in (("triton", triton_moe), ("grouped_mm", grouped_mm_moe)):
                err = float((fn(*args).float() - ref).abs().max() / ref.abs().max().clamp_min(1e-6))
                if not err < CHECK_TOL:
                    times[name] = f"dropped: error {err:.3g} against the reference (bar {CHECK_TOL})"
                    continue
                try:  # replayed from a CUDA graph: how a decode or mixed step runs it (and a capture check)
                    times[name] = measure_graph(
                        lambda fn=fn, args=args: fn(*args), x.device, calls=2, repeat=5
                    )
                except Exception as err:  # noqa: BLE001 - a backend that cannot be captured is dropped
                    times[name] = (
                        f"dropped: timing from a graph failed ({type(err).__name__}: {str(err)[:120]})"
                    )
            ok = {b: s for b, s in times.items() if isinstance(s, float)}
            if ok:
                times["pick"] = BACKEND[key] = min(ok, key=ok.get)
            record[key] = times
            if log:
                log(f"moe tune {key}: " + ", ".join(f"{b} {v * 1e3:.3f} ms" if isinstance(v, float) else f"{b} {v}"
                                                    for b, v in times.items()))  # fmt: skip
            tokens *= 2
    return record


CHECK_TOL = 5e-2  # bf16: a few ulps of the largest output (the kernels' checks in benchmarks/moe_mla_gpu.py)


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def align_reference(ids: torch.Tensor, num_experts: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`align` through torch ops only (what it runs for large steps), for the tests."""
    global ALIGN_KERNEL_MAX_PAIRS
    keep, ALIGN_KERNEL_MAX_PAIRS = ALIGN_KERNEL_MAX_PAIRS, -1
    try:
        return align(ids, num_experts, block)
    finally:
        ALIGN_KERNEL_MAX_PAIRS = keep


def use_fused(x: torch.Tensor) -> bool:
    return triton is not None and x.is_cuda


def routed_experts(x, w_gate_up, w_down, weights, ids, act: str = "silu") -> torch.Tensor:
    """The fused kernels on CUDA, the reference loop elsewhere."""
    if use_fused(x):
        return fused_moe(x, w_gate_up, w_down, weights, ids, act)
    return moe_reference(x, w_gate_up, w_down, weights, ids, act)
