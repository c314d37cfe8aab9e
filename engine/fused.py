"""Fused element-wise kernels of a decoder layer (Triton on CUDA, plain torch elsewhere).

Under CUDA graphs a decode step at batch 1 costs its GEMV weight reads plus a few µs per kernel,
so the layer is kept to nine kernels, the ones the cost model's groups cover:
add+norm, qkv, rope+KV write, attention, o, add+norm, gate_up, act·mul, down. Each function
here has a torch reference used on the CPU and by the tests.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

try:  # Triton ships with CUDA builds of torch; CPU-only installs run the torch paths
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None


def use_triton(x: torch.Tensor) -> bool:
    return triton is not None and x.is_cuda


# ---------------------------------------------------------------- torch references
def add_rmsnorm_ref(x, residual, weight, eps: float, offset: float = 0.0):
    h = x if residual is None else x + residual
    hf = h.float()
    y = hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps) * (weight.float() + offset)
    return y.to(x.dtype), h


def act_mul_ref(gate_up: torch.Tensor, act: str = "silu") -> torch.Tensor:
    g, u = gate_up.chunk(2, dim=-1)
    a = F.silu(g.float()) if act == "silu" else F.gelu(g.float(), approximate="tanh")
    return (a * u.float()).to(gate_up.dtype)


def rope_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Half-split rotary embedding (Hugging Face `rotate_half`); x [T, heads, d], cos/sin [T, d/2]."""
    d2 = x.shape[-1] // 2
    x1, x2 = x[..., :d2].float(), x[..., d2:].float()
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)


def rope_cache_ref(q, k, v, cos_table, sin_table, positions, slots, k_pool, v_pool):
    cos, sin = cos_table[positions], sin_table[positions]
    q = rope_ref(q, cos, sin)
    k_pool[slots] = rope_ref(k, cos, sin).to(k_pool.dtype)
    v_pool[slots] = v.to(v_pool.dtype)
    return q


def jit_functions() -> list:
    """The engine's Triton kernels as imported now: module-level JITFunctions of engine.*, those an autotuner
    wraps and those kept in module-level lists (engine.quant jits its kernels on first use)."""
    if triton is None:
        return []
    from triton.runtime.jit import JITFunction

    found: dict[int, object] = {}
    for name, mod in list(sys.modules.items()):
        if not name.startswith("engine.") or mod is None:
            continue
        for obj in list(vars(mod).values()):
            for item in obj if isinstance(obj, (list, tuple)) else (obj,):
                fn = item if isinstance(item, JITFunction) else getattr(item, "fn", None)  # (an Autotuner's)
                if isinstance(fn, JITFunction):
                    found[id(fn)] = fn
    return list(found.values())


def compiled_variants(fns: list) -> int:
    """How many kernels Triton has compiled for `fns` (jit_functions()) on every device so far; -1 where this
    Triton keeps its cache some other way. A count that grows during serving is a compile inside a step."""
    try:
        return sum(len(c[0]) for fn in fns for c in fn.device_caches.values())
    except (AttributeError, TypeError, IndexError):
        return -1


# ---------------------------------------------------------------- Triton kernels
if triton is not None:

    @triton.jit
    def _add_rmsnorm_kernel(X, R, W, Y, H, n, eps, offset, HAS_RES: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < n
        x = tl.load(X + row * n + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_RES:
            x += tl.load(R + row * n + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(H + row * n + cols, x.to(H.dtype.element_ty), mask=mask)
        var = tl.sum(x * x, axis=0) / n
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32) + offset
        y = x * tl.rsqrt(var + eps) * w
        tl.store(Y + row * n + cols, y.to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def _act_mul_kernel(GU, Y, inter, GELU: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < inter
        g = tl.load(GU + row * 2 * inter + cols, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(GU + row * 2 * inter + inter + cols, mask=mask, other=0.0).to(tl.float32)
        if GELU:  # tanh approximation, as Gemma's gelu_pytorch_tanh
            z = 0.7978845608028654 * (g + 0.044715 * g * g * g)
            a = 0.5 * g * (1.0 + (2.0 / (1.0 + tl.exp(-2.0 * z)) - 1.0))
        else:
            a = g / (1.0 + tl.exp(-g))
        tl.store(Y + row * inter + cols, (a * u).to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def _rope_cache_kernel(
        Q,
        K,
        V,
        QO,
        KP,
        VP,
        COS,
        SIN,
        POS,
        SLOT,
        q_stride,
        k_stride,
        v_stride,
        nh,
        nkv,
        HALF: tl.constexpr,
        NH_PAD: tl.constexpr,
        NKV_PAD: tl.constexpr,
    ):
        # one token a program row: program (t, 0) rotates its query heads, (t, 1) its key heads into the pool at
        # its slot and copies its value heads there, every head of one kind in one [heads, HALF] tile
        t = tl.program_id(0).to(tl.int64)
        part = tl.program_id(1)
        d = tl.arange(0, HALF)[None, :]
        pos = tl.load(POS + t)
        cos = tl.load(COS + pos * HALF + d)
        sin = tl.load(SIN + pos * HALF + d)
        if part == 0:
            h = tl.arange(0, NH_PAD)[:, None]
            m = h < nh
            src = Q + t * q_stride + h * 2 * HALF + d
            x1 = tl.load(src, mask=m, other=0.0).to(tl.float32)
            x2 = tl.load(src + HALF, mask=m, other=0.0).to(tl.float32)
            dst = QO + (t * nh + h) * 2 * HALF + d
            tl.store(dst, (x1 * cos - x2 * sin).to(QO.dtype.element_ty), mask=m)
            tl.store(dst + HALF, (x2 * cos + x1 * sin).to(QO.dtype.element_ty), mask=m)
        else:  # (names of their own: a compiled branch may not retype the other's)
            slot = tl.load(SLOT + t)
            hk = tl.arange(0, NKV_PAD)[:, None]
            mk = hk < nkv
            ks = K + t * k_stride + hk * 2 * HALF + d
            k1 = tl.load(ks, mask=mk, other=0.0).to(tl.float32)
            k2 = tl.load(ks + HALF, mask=mk, other=0.0).to(tl.float32)
            at = (slot * nkv + hk) * 2 * HALF + d
            tl.store(KP + at, (k1 * cos - k2 * sin).to(KP.dtype.element_ty), mask=mk)
            tl.store(KP + at + HALF, (k2 * cos + k1 * sin).to(KP.dtype.element_ty), mask=mk)
            vs = V + t * v_stride + hk * 2 * HALF + d
            tl.store(VP + at, tl.load(vs, mask=mk).to(VP.dtype.element_ty), mask=mk)
            tl.store(VP + at + HALF, tl.load(vs + HALF, mask=mk).to(VP.dtype.element_ty), mask=mk)

    @triton.jit
    def _gemv_kernel(X, W, B, Y, N, K, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid = tl.program_id(0)
        rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask = rows < N
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            cmask = cols < K
            x = tl.load(X + cols, mask=cmask, other=0.0).to(tl.float32)
            w = tl.load(
                W + rows[:, None].to(tl.int64) * K + cols[None, :],
                mask=rmask[:, None] & cmask[None, :],
                other=0.0,
            )
            acc += w.to(tl.float32) * x[None, :]
        y = tl.sum(acc, axis=1)
        if HAS_BIAS:
            y += tl.load(B + rows, mask=rmask, other=0.0).to(tl.float32)
        tl.store(Y + rows, y.to(Y.dtype.element_ty), mask=rmask)

    @triton.jit
    def _decode_attn_kernel(
        Q,
        K,
        V,
        OP,
        LP,
        OUT,
        U_SEQ,
        U_LO,
        U_HI,
        CU_Q,
        CU_K,
        SEQUSED,
        scale,
        k_stride,
        window,
        NH: tl.constexpr,
        G: tl.constexpr,
        G_PAD: tl.constexpr,
        D: tl.constexpr,
        BLOCK_N: tl.constexpr,
        DIRECT: tl.constexpr,
    ):
        u = tl.program_id(0).to(tl.int64)  # one work unit: keys [lo, hi) of one sequence
        kvh = tl.program_id(1)
        s = tl.load(U_SEQ + u)
        if s < 0:  # an idle program of a graph's fixed grid (seq -1): no loads, no stores
            return
        k_len = tl.load(SEQUSED + s)
        start = tl.load(CU_K + s).to(tl.int64)
        row = tl.load(CU_Q + s).to(tl.int64)
        u_lo = tl.load(U_LO + u)
        hi = tl.load(U_HI + u)
        lo = tl.maximum(u_lo, k_len - window)
        g = tl.arange(0, G_PAD)
        d = tl.arange(0, D)
        gmask = g < G
        q = tl.load(Q + (row * NH + kvh * G + g)[:, None] * D + d[None, :], mask=gmask[:, None], other=0.0)
        m_i = tl.full((G_PAD,), float("-inf"), tl.float32)
        l_i = tl.zeros((G_PAD,), tl.float32)
        acc = tl.zeros((G_PAD, D), tl.float32)
        for n0 in range(lo, hi, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            nm = n < hi
            off = (start + n)[:, None] * k_stride + kvh * D + d[None, :]
            k = tl.load(K + off, mask=nm[:, None], other=0.0)
            v = tl.load(V + off, mask=nm[:, None], other=0.0)
            sc = tl.dot(q, tl.trans(k)) * scale
            sc = tl.where(nm[None, :], sc, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(sc, 1))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(sc - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        heads = kvh * G + g
        has = l_i > 0
        o = acc / tl.where(has, l_i, 1.0)[:, None]
        dst = OUT + (row * NH + heads)[:, None] * D + d[None, :]
        # the sequence's only unit (every unit with DIRECT; in a split plan one that covers all its keys): the output
        # row, and the combine skips the sequence
        if DIRECT or ((u_lo == 0) & (hi >= k_len)):
            tl.store(dst, o.to(OUT.dtype.element_ty), mask=gmask[:, None])
        else:
            lse = tl.where(has, m_i + tl.log(tl.where(has, l_i, 1.0)), float("-inf"))
            base = u * NH + heads
            tl.store(OP + base[:, None] * D + d[None, :], o, mask=gmask[:, None])
            tl.store(LP + base, lse, mask=gmask)

    @triton.jit(do_not_specialize=["seq0"])  # a step's prefill count: one compiled kernel for every value
    def _decode_combine_kernel(
        OP, LP, SEQ_U, CU_Q, OUT, seq0, NH: tl.constexpr, D: tl.constexpr, UB: tl.constexpr,
        SKIP_ONE: tl.constexpr = False,
    ):  # fmt: skip
        pid = tl.program_id(0)  # (decode sequence j, head h)
        j = pid // NH
        h = pid % NH
        u0 = tl.load(SEQ_U + j)
        u1 = tl.load(SEQ_U + j + 1)
        if SKIP_ONE and u1 - u0 == 1:  # the sequence's only unit wrote its row (`_decode_attn_kernel`)
            return
        s = seq0 + j
        row = tl.load(CU_Q + s).to(tl.int64)
        nq = tl.load(CU_Q + s + 1) - row
        d = tl.arange(0, D)
        ub = tl.arange(0, UB)
        m = tl.max(
            tl.full((UB,), float("-inf"), tl.float32), 0
        )  # fp32 scalars: loop-carried types stay fixed
        acc = tl.zeros((D,), tl.float32)
        wsum = tl.sum(tl.zeros((UB,), tl.float32), 0)
        for u in range(
            u0, u1, UB
        ):  # UB units at a time, merged online (few iterations even for one long context)
            idx = u + ub
            um = idx < u1
            lse = tl.load(LP + idx * NH + h, mask=um, other=float("-inf"))
            o = tl.load(
                OP + (idx * NH + h).to(tl.int64)[:, None] * D + d[None, :], mask=um[:, None], other=0.0
            )
            m_new = tl.maximum(m, tl.max(lse, 0))
            safe = tl.where(m_new > float("-inf"), m_new, 0.0)
            alpha = tl.exp(m - safe)
            w = tl.where(lse > float("-inf"), tl.exp(lse - safe), 0.0)
            acc = acc * alpha + tl.sum(w[:, None] * o, 0)
            wsum = wsum * alpha + tl.sum(w, 0)
            m = m_new
        out = acc / tl.where(wsum > 0, wsum, 1.0)  # a sequence with no keys gets zeros
        tl.store(OUT + (row * NH + h) * D + d, out.to(OUT.dtype.element_ty), mask=(d * 0 + nq) > 0)


# ---------------------------------------------------------------- dispatch
def add_rmsnorm(x, residual, weight, eps: float, offset: float = 0.0):
    """(rmsnorm(x + residual) · (w + offset), x + residual); residual may be None (first layer)."""
    if not use_triton(x):
        return add_rmsnorm_ref(x, residual, weight, eps, offset)
    n = x.shape[-1]
    x2 = x.reshape(-1, n)
    y = torch.empty_like(x2)
    h = torch.empty_like(x2) if residual is not None else x2
    r = residual.reshape(-1, n) if residual is not None else x2
    block = triton.next_power_of_2(n)
    _add_rmsnorm_kernel[(x2.shape[0],)](
        x2,
        r,
        weight,
        y,
        h,
        n,
        eps,
        offset,
        HAS_RES=residual is not None,
        BLOCK=block,
        num_warps=min(16, max(4, block // 512)),
    )
    return y.view_as(x), h.view_as(x)


def act_mul(gate_up: torch.Tensor, act: str = "silu") -> torch.Tensor:
    """act(gate) · up for a fused [T, 2I] projection output."""
    if not use_triton(gate_up):
        return act_mul_ref(gate_up, act)
    t, two_i = gate_up.shape
    inter = two_i // 2
    y = torch.empty((t, inter), dtype=gate_up.dtype, device=gate_up.device)
    block = 1024
    _act_mul_kernel[(t, triton.cdiv(inter, block))](
        gate_up, y, inter, GELU=act != "silu", BLOCK=block, num_warps=4
    )
    return y


def rope_and_cache(q, k, v, cos_table, sin_table, positions, slots, k_pool, v_pool):
    """Rotate q and k at `positions`, write k and v into the pools at `slots`; returns rotated q [T, nh, d].

    q, k, v: [T, heads, d] views whose last two dims are contiguous (slices of the qkv output).
    """
    half = q.shape[-1] // 2
    if not use_triton(q) or half & (half - 1):
        return rope_cache_ref(q, k, v, cos_table, sin_table, positions, slots, k_pool, v_pool)
    return rope_cache_triton(q, k, v, cos_table, sin_table, positions, slots, k_pool, v_pool)


def rope_cache_triton(q, k, v, cos_table, sin_table, positions, slots, k_pool, v_pool):
    """`rope_and_cache` in its Triton kernel: two programs a token (its query heads; its key and value heads),
    each taking all its heads in one tile (a program a head took 1.5-2x as long at 128-256 decodes)."""
    t, nh, d = q.shape
    nkv = k.shape[1]
    qo = torch.empty((t, nh, d), dtype=q.dtype, device=q.device)
    nh_pad = triton.next_power_of_2(nh)
    _rope_cache_kernel[(t, 2)](
        q,
        k,
        v,
        qo,
        k_pool,
        v_pool,
        cos_table,
        sin_table,
        positions,
        slots,
        q.stride(0),
        k.stride(0),
        v.stride(0),
        nh,
        nkv,
        HALF=d // 2,
        NH_PAD=nh_pad,
        NKV_PAD=triton.next_power_of_2(nkv),
        num_warps=4 if nh_pad * d >= 4096 else 2,
    )
    return qo


# The batch-1 GEMV's tile, (BLOCK_N, BLOCK_K, num_warps): the default, and per-(N, K) picks, timed on the device by
# the executor's warm-up (tune_gemv) or set from a sweep ("cublas": torch's own GEMV for that shape)
GEMV_TILE = (4, 512, 4)
GEMV_TILES: dict[tuple[int, int], tuple[int, int, int] | str] = {}
# What tune_gemv times beside GEMV_TILE: the tiles that led the H200 sweep of Mixtral-8x7B's dense shapes
# (benchmarks/moe_gpu_check.py, engine_kernels_h200/moe_gpu_check.md: qkv 6144 x 4096 at 81% of the copy rate
# with 2 x 1024 against 60% with the default, o 71% against 66%, lm_head 101% against 92%), and cuBLAS.
GEMV_TUNE_CANDIDATES = ((2, 1024, 4), (1, 1024, 4), (2, 512, 2), (4, 1024, 4), (1, 2048, 8), "cublas")
GEMV_TUNE_GAIN = 1.03  # a candidate replaces the default for a shape when this much faster
TUNE_GEMV = True  # off: every shape keeps GEMV_TILE (the before/after check, benchmarks/moe_decode_gpu.py)
GEMV_TUNED: dict[tuple[int, int], dict] = {}  # tune_gemv's timings per shape, this process (each shape once)


def tune_gemv(weights, log=None) -> dict:
    """Time the batch-1 GEMV of each (N, K) among `weights` (2-D CUDA tensors: the Dense layers that take it)
    not tuned yet, on GEMV_TILE and each of GEMV_TUNE_CANDIDATES: each checked against F.linear in fp32 first,
    then replayed from a CUDA graph over copies of the weight that overflow L2, as a decode step's graph runs
    it. A candidate faster than the default by GEMV_TUNE_GAIN becomes the shape's GEMV_TILES pick. Nothing off
    CUDA or with TUNE_GEMV off. Returns the shapes tuned now, {(n, k): {tile: seconds or why dropped, "pick":
    tile}} (GEMV_TUNED keeps them all)."""
    from engine.timing import copies_for_cache, measure_graph, rotating

    record: dict = {}
    if not TUNE_GEMV:
        return record
    for w in weights:
        n, k = w.shape
        if not use_triton(w) or (n, k) in GEMV_TILES or (n, k) in GEMV_TUNED:
            continue
        g = torch.Generator(device=w.device).manual_seed(0)
        x = torch.randn(1, k, device=w.device, generator=g).to(w.dtype)
        want = F.linear(x.float(), w.float())
        bufs = [(w,)] + [
            (w.clone(),) for _ in range(copies_for_cache(w.numel() * w.element_size(), w.device) - 1)
        ]
        times: dict = {}
        for tile in (GEMV_TILE, *GEMV_TUNE_CANDIDATES):
            try:
                err = float(
                    (gemv(x, w, tile=tile).float() - want).abs().max() / want.abs().max().clamp_min(1e-6)
                )
                if not err < 2e-2:
                    times[tile] = f"dropped: error {err:.3g} against F.linear"
                    continue
                times[tile] = measure_graph(rotating(bufs, lambda w, t=tile, x=x: gemv(x, w, tile=t)), w.device,
                                            calls=max(len(bufs), 4), repeat=10)  # fmt: skip
            except Exception as e:  # noqa: BLE001 - a tile that does not compile or capture is dropped
                times[tile] = f"dropped: {type(e).__name__}: {str(e)[:120]}"
        del bufs
        ok = {t: s for t, s in times.items() if isinstance(s, float)}
        if ok and GEMV_TILE in ok:
            best = min(ok, key=ok.get)
            times["pick"] = best if ok[best] * GEMV_TUNE_GAIN < ok[GEMV_TILE] else GEMV_TILE
            if times["pick"] != GEMV_TILE:
                GEMV_TILES[(n, k)] = times["pick"]
        record[(n, k)] = GEMV_TUNED[(n, k)] = times
        if log:
            log(f"gemv tune {n}x{k}: " + ", ".join(f"{t} {v * 1e6:.1f} us" if isinstance(v, float) else f"{t} {v}"
                                                  for t, v in times.items() if t != "pick")
                + f"; pick {times.get('pick')}")  # fmt: skip
    return record


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, tile=None) -> torch.Tensor:
    """y[1, N] = x[1, K] @ W[N, K]^T (+ b) as a weight-streaming Triton kernel (batch-1 decode); `tile`
    (default: GEMV_TILES' pick for the shape, else GEMV_TILE) as (BLOCK_N, BLOCK_K, num_warps) or "cublas"."""
    n, k = weight.shape
    tile = tile or GEMV_TILES.get((n, k), GEMV_TILE)
    if tile == "cublas":
        return F.linear(x, weight, bias)
    y = torch.empty((1, n), dtype=x.dtype, device=x.device)
    block_n, block_k, warps = tile
    _gemv_kernel[(triton.cdiv(n, block_n),)](
        x,
        weight,
        bias if bias is not None else weight,
        y,
        n,
        k,
        HAS_BIAS=bias is not None,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        num_warps=warps,
    )
    return y


# The decode kernel's (BLOCK_N keys a loop step, num_warps, num_stages); benchmarks/decode_kernels_gpu.py times others
DECODE_TILE = (64, 4, 2)


def decode_attention_supported(q: torch.Tensor, k_pool: torch.Tensor) -> bool:
    d = q.shape[-1]
    return use_triton(q) and d in (64, 128, 256) and q.dtype == k_pool.dtype and k_pool.stride(-2) == d


def decode_attention(q, k_pool, v_pool, lay, scale: float, window: int = 0, out: torch.Tensor | None = None):
    """Flash-decoding for the single-query sequences lay.n_prefill.. of a step, over balanced work units.

    One program takes one unit (up to `chunk` keys of one sequence, engine.attention.plan_decode_units)
    for one KV head and all the query heads that share it (GQA), so KV bytes are read once per step;
    a second kernel (`_decode_combine_kernel`) merges the units of each sequence that has several; a unit that
    is its sequence's only one writes the output row itself. With lay.whole_units (a step
    whose sequences alone fill the GPU: one unit each) there is no second kernel. Writes rows cu_q[s] of `out`
    (new if None).
    """
    t, nh, d = q.shape
    nkv = k_pool.shape[1]
    group = nh // nkv
    units = lay.units
    n_units = units["seq"].shape[0]
    n_dec = units["seq_units"].shape[0] - 1
    out = torch.empty_like(q) if out is None else out
    if n_units == 0 or n_dec == 0:
        return out
    q = q.contiguous()
    direct = bool(lay.whole_units)
    if direct:  # no partial results: the kernel writes `out`
        op = lp = out
    else:
        op = torch.empty((n_units, nh, d), dtype=torch.float32, device=q.device)
        lp = torch.empty((n_units, nh), dtype=torch.float32, device=q.device)
    _decode_attn_kernel[(n_units, nkv)](
        q,
        k_pool,
        v_pool,
        op,
        lp,
        out,
        units["seq"],
        units["lo"],
        units["hi"],
        lay.cu_q,
        lay.cu_k,
        lay.seqused_k,
        scale,
        k_pool.stride(0),
        window if window > 0 else 1 << 30,
        NH=nh,
        G=group,
        G_PAD=max(16, triton.next_power_of_2(group)),
        D=d,
        BLOCK_N=DECODE_TILE[0],
        DIRECT=direct,
        num_warps=DECODE_TILE[1],
        num_stages=DECODE_TILE[2],
    )
    if direct:
        return out
    _decode_combine_kernel[(n_dec * nh,)](
        op,
        lp,
        units["seq_units"],
        lay.cu_q,
        out,
        lay.n_prefill,
        NH=nh,
        D=d,
        UB=16,
        SKIP_ONE=True,
        num_warps=4,
    )
    return out
