"""int4 weight-only linear layers (W4A16): 4-bit weights with group-wise scales, 16-bit activations and compute.

A [N, K] weight is stored as GPTQ lays it out for a Triton kernel: `qweight` [K/8, N] int32, eight 4-bit
values per word along K (nibble j of word r holds row k = 8r + j), and `scales` [K/G, N] in the activation
dtype, one per group of G = 128 consecutive k (symmetric: w = (q - 8)·s, q in 0..15). The kernels read
the packed words, unpack and dequantize them in registers and multiply in 16-bit (tensor cores for
tiles of tokens, FMAs for a single row), so a decode step reads half a byte per weight:

- `_gemv_kernel`: one token row (batch-1 decode), a program per BLOCK_N columns and K-split, partial sums
  in fp32 summed after (split-K), so even a 4096-wide matrix spreads over every SM;
- `_gemm_kernel`: tiles of BLOCK_M tokens x BLOCK_N columns with tl.dot, the weights re-read and
  dequantized once per token tile (as Marlin re-runs them per 64 rows; the same 2^23 trick), split-K when
  there are few tiles;
- `_planes_kernel`: up to 8 token rows (batch-1 decode, small decode batches, speculative verification), a
  program per BLOCK_N columns and K-split; per 4-bit plane j of the words, the nibble is masked in place and or-ed
  into the mantissa of 2^23 (one integer op, no shift for planes 0-3, one shift per word for planes 4-7, no
  int-to-float conversion: I2F issues at a quarter of the FMA rate on sm80/sm90), the exact float
  (q − 8)·16^j comes from one subtraction, and x is pre-scaled by 16^-j (exact): three instructions per weight
  for the weight itself, ~5.6 in all at one row in sm90 SASS (x's loads shared by a thread's columns), partial
  sums per group reduced in registers and scaled once (split-K partials summed after);
- `_w4_kernel`: up to 8 token rows, a packed word at a time in 16-bit packed arithmetic (as Marlin, TensorRT-LLM's
  weight-only GEMV and FLUTE do): nibbles j and j + 4 of a word sit at bits 0-3 of its two 16-bit halves after a
  shift by 4j, one LOP3 masks them and or-s them into bf16 128.0's mantissa (128 + q, exact), one bf16x2 sub
  gives q − 8 (exact), and bf16x2 FMAs against x pairs (x[k], x[k + 4]) (one PRMT each from int64 loads of x)
  sum a word's 8 products (or two words' 16, `w4acc2`) per lane before they are widened to fp32 (PTX through
  `tl.inline_asm_elementwise`, sm90: ~2.4-2.8 instructions a weight at one row in SASS against ~3.5 that the
  H200's bandwidth allows); 128-bit loads of 4 adjacent columns' words, a thread holding all word rows of its
  columns (row sums in registers), the scale once per chunk; split-K in one launch (the last program of a
  column tile to arrive sums the fp32 partials, 8 splits a load (RB): deterministic, graph-capturable). A plain-Triton
  variant (the 2^23 trick per nibble in fp32) is what the interpreter runs in the tests. On sm90 it can be
  launched with programmatic dependent launch (PDL: reading nothing an earlier kernel writes before
  `gdc_wait`), measured and not a candidate by default (`PDL`);
- torch's own int4 kernel (`aten._weight_int4pack_mm`, tinygemm, as gpt-fast runs it) where this torch has it
  on CUDA, the weight also packed in its layout (`tinygemm_pack`, self-checked once against the reference);
- from 17 rows, dequantize the weight to 16 bits (`_dequant_kernel`, one pass) and multiply with cuBLAS.

Per (rows bucket, N, K) every candidate that runs on the device is checked against the reference on a slice of
its output and timed from a CUDA graph; the fastest is kept (`_tuned`). The engine tunes every bucket of every
int4 shape of the model at warm-up, before serving (`tune_model`, from `Executor.warmup`), so no request waits
on a tuning; a bucket first met later is tuned then, outside graph capture.

On the CPU (and without Triton) the layer dequantizes and runs a plain matmul: `dequantize` is the
reference the kernels are tested against (tests/engine/test_quant.py: on the CPU through Triton's
interpreter, TRITON_INTERPRET=1).
Timings do not depend on the values, so the scales come from the random weights themselves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.attention import device_sms

try:  # Triton ships with CUDA builds of torch; CPU-only installs run the torch reference
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

GROUP = 128  # k per scale (GPTQ / AWQ / Marlin's usual group size)
PACK = 8  # 4-bit values per int32 word


# ---------------------------------------------------------------- packing and the torch reference
def quantize_int4(weight: torch.Tensor, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """(qweight [K/8, N] int32, scales [K/G, N]) of a [N, K] weight: symmetric 4-bit, a scale per group of k."""
    n, k = weight.shape
    if k % group or group % PACK:
        raise ValueError(f"int4 needs in_features ({k}) a multiple of the group size ({group})")
    w = weight.detach().float().t().reshape(k // group, group, n)  # [groups, G, N]
    scale = (w.abs().amax(dim=1) / 7.0).clamp(min=1e-8)  # [groups, N]
    q = (torch.round(w / scale[:, None, :]).clamp(-8, 7) + 8).to(torch.int64).reshape(k // PACK, PACK, n)
    shifts = (4 * torch.arange(PACK, device=weight.device, dtype=torch.int64))[None, :, None]
    words = (q << shifts).sum(dim=1)  # [K/8, N] in 0..2^32-1
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    return words.contiguous(), scale.to(weight.dtype).contiguous()


def unpack_int4(qweight: torch.Tensor) -> torch.Tensor:
    """The 4-bit values 0..15 of packed words, [K, N] int32 (k = 8·row + nibble)."""
    shifts = 4 * torch.arange(PACK, device=qweight.device, dtype=torch.int32)
    q = (qweight[:, None, :] >> shifts[None, :, None]) & 0xF
    return q.reshape(-1, qweight.shape[1])


def dequantize(qweight: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The [N, K] weight the packed one stands for: (q − 8)·s per group (the kernels' reference)."""
    q = unpack_int4(qweight).float() - 8.0  # [K, N]
    group = q.shape[0] // scales.shape[0]
    w = q * scales.float().repeat_interleave(group, dim=0)
    return w.t().to(dtype or scales.dtype).contiguous()


def w4a16_reference(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """y[M, N] = x[M, K] @ dequantize(W)^T, in fp32 then cast to x's dtype."""
    return (x.float() @ dequantize(qweight, scales, torch.float32).t()).to(x.dtype)


# ---------------------------------------------------------------- Triton kernels
if triton is not None:

    def _gemv_kernel(X, QW, S, Y, N, K, groups_per_split, BLOCK_N: tl.constexpr, GROUP_K: tl.constexpr):
        """One program: BLOCK_N output columns over its K-split's groups; the partial sum to Y[split, :]."""
        pid_n = tl.program_id(0)
        split = tl.program_id(1)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        rows = tl.arange(0, GROUP_K // 8)
        shifts = tl.arange(0, 8) * 4
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        g0 = split * groups_per_split
        g1 = tl.minimum(g0 + groups_per_split, K // GROUP_K)
        for g in range(g0, g1):
            wp = QW + (g * (GROUP_K // 8) + rows)[:, None] * N + offs_n[None, :]
            words = tl.load(wp, mask=mask_n[None, :], other=0)
            q = (words[:, None, :] >> shifts[None, :, None]) & 0xF
            q = tl.reshape(q, (GROUP_K, BLOCK_N))
            s = tl.load(S + g * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            x = tl.load(X + g * GROUP_K + tl.arange(0, GROUP_K)).to(tl.float32)
            acc += tl.sum((q.to(tl.float32) - 8.0) * x[:, None], axis=0) * s
        tl.store(Y + split * N + offs_n, acc.to(Y.dtype.element_ty), mask=mask_n)

    def _gemm_kernel(
        X, QW, S, Y, M, N, K, groups_per_split,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_K: tl.constexpr,
    ):  # fmt: skip
        """One program: a BLOCK_M x BLOCK_N tile over its K-split's groups (tl.dot in 16-bit, fp32 accumulator)."""
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        split = tl.program_id(2)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, GROUP_K)
        mask_m = offs_m < M
        mask_n = offs_n < N
        rows = tl.arange(0, GROUP_K // 8)
        shifts = tl.arange(0, 8) * 4
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        g0 = split * groups_per_split
        g1 = tl.minimum(g0 + groups_per_split, K // GROUP_K)
        for g in range(g0, g1):
            x = tl.load(
                X + offs_m[:, None] * K + (g * GROUP_K + offs_k)[None, :], mask=mask_m[:, None], other=0.0
            )
            wp = QW + (g * (GROUP_K // 8) + rows)[:, None] * N + offs_n[None, :]
            words = tl.load(wp, mask=mask_n[None, :], other=0)
            # q − 8 as a float without I2F (quarter rate): the nibble or-ed into 2^23's mantissa, 2^23 + 8 off
            q = ((words[:, None, :] >> shifts[None, :, None]) & 0xF) | 0x4B000000
            q = tl.reshape(q, (GROUP_K, BLOCK_N)).to(tl.float32, bitcast=True) - 8388616.0
            s = tl.load(S + g * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            w = (q * s[None, :]).to(x.dtype)
            acc = tl.dot(x, w, acc)
        out = Y + split * M * N + offs_m[:, None] * N + offs_n[None, :]
        tl.store(out, acc.to(Y.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])

    def _planes_kernel(
        X, QW, S, Y, M, N, K, groups_per_split,
        ROWS: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_K: tl.constexpr,
    ):  # fmt: skip
        """One program: up to ROWS token rows x BLOCK_N columns over its K-split's groups, one 4-bit plane of the
        words at a time (the module's docstring); the partial sums to Y[split, row, :]."""
        pid_n = tl.program_id(0)
        split = tl.program_id(1)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        rows = tl.arange(0, GROUP_K // 8)
        offs_m = tl.arange(0, ROWS)
        mask_m = offs_m < M
        acc = tl.zeros((ROWS, BLOCK_N), dtype=tl.float32)
        g0 = split * groups_per_split
        g1 = tl.minimum(g0 + groups_per_split, K // GROUP_K)
        for g in range(g0, g1):
            lo = tl.load(QW + (g * (GROUP_K // 8) + rows)[:, None] * N + offs_n[None, :], mask=mask_n[None, :],
                         other=0)  # fmt: skip
            hi = lo >> 16  # planes 4-7 at bits 0-15 (the sign bits above are masked off)
            xp = X + offs_m[:, None] * K + g * GROUP_K + rows[None, :] * 8  # [ROWS, G/8]: k = 8r (+ j below)
            part = tl.zeros((ROWS, GROUP_K // 8, BLOCK_N), dtype=tl.float32)
            for j in tl.static_range(4):
                # (2^23 + q·16^j) − (2^23 + 8·16^j) = (q − 8)·16^j, exactly
                f = ((lo & (15 << (4 * j))) | 0x4B000000).to(tl.float32, bitcast=True) - (
                    8388608.0 + 8.0 * 16**j
                )
                x = tl.load(xp + j, mask=mask_m[:, None], other=0.0).to(tl.float32) * (1.0 / 16**j)
                part += f[None, :, :] * x[:, :, None]
                f = ((hi & (15 << (4 * j))) | 0x4B000000).to(tl.float32, bitcast=True) - (
                    8388608.0 + 8.0 * 16**j
                )
                x = tl.load(xp + 4 + j, mask=mask_m[:, None], other=0.0).to(tl.float32) * (1.0 / 16**j)
                part += f[None, :, :] * x[:, :, None]
            s = tl.load(S + g * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            # a thread holds every word row of its columns (the load's layout): this sum stays in registers
            acc += tl.sum(part, axis=1) * s[None, :]
        ptr = Y + (split * M + offs_m[:, None]) * N + offs_n[None, :]
        tl.store(ptr, acc.to(Y.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])

    # bf16x2 dequantization of one packed word (PTX; sub.bf16x2 needs sm90: elsewhere ptxas refuses it and the
    # tuner drops the candidate): nibbles j and j + 4 sit at bits 0-3 of the two 16-bit halves after a shift by
    # 4j; one LOP3 masks them and or-s them into 0x4300 (bf16 128.0, 7 mantissa bits) = 128 + q exactly, one
    # sub gives q − 8 exactly: 3 shifts, 4 LOP3, 4 HSUB2 for 8 weights
    _DEQ_BF16X2 = tl.constexpr("""
    {
    .reg .b32 w4, w8, w12, mg;
    mov.b32 mg, 0x43084308;
    shr.u32 w4, $4, 4;
    shr.u32 w8, $4, 8;
    shr.u32 w12, $4, 12;
    lop3.b32 $0, $4, 0x000F000F, 0x43004300, 0xEA;
    lop3.b32 $1, w4, 0x000F000F, 0x43004300, 0xEA;
    lop3.b32 $2, w8, 0x000F000F, 0x43004300, 0xEA;
    lop3.b32 $3, w12, 0x000F000F, 0x43004300, 0xEA;
    sub.bf16x2 $0, $0, mg;
    sub.bf16x2 $1, $1, mg;
    sub.bf16x2 $2, $2, mg;
    sub.bf16x2 $3, $3, mg;
    }
    """)
    # x pairs (x[k], x[k + 4]) .. (x[k + 3], x[k + 7]) from the words a = (k, k + 1), b, c, d = (k + 6, k + 7) of
    # bf16 pairs: one PRMT each (bytes 0-1 of the first and of the second operand; bytes 2-3 of each)
    _PAIRS_BF16X2 = tl.constexpr("""
    prmt.b32 $0, $4, $6, 0x5410;
    prmt.b32 $1, $4, $6, 0x7632;
    prmt.b32 $2, $5, $7, 0x5410;
    prmt.b32 $3, $5, $7, 0x7632;
    """)

    def _dot_ptx(words: int) -> str:
        """PTX of `words` packed words' 8·words products with x pairs (x[k], x[k + 4]) as bf16x2 in one chain (x and
        q − 8 exact in bf16; the products and the 4·words-term lane sums rounded to bf16), the two lanes widened
        to fp32 (bf16 is fp32's top half) and added: operands $1.. the dequantized words' 4·words registers, then
        as many x pairs; $0 the fp32 sum."""
        n = 4 * words
        chain = [f"mul.rn.bf16x2 acc, $1, ${n + 1};"]
        chain += [f"fma.rn.bf16x2 acc, ${i}, ${n + i}, acc;" for i in range(2, n + 1)]
        return "\n".join(["{", ".reg .b32 acc, lo, hi;", ".reg .f32 flo, fhi;", *chain, "shl.b32 lo, acc, 16;",
                          "and.b32 hi, acc, 0xFFFF0000;", "mov.b32 flo, lo;", "mov.b32 fhi, hi;",
                          "add.f32 $0, flo, fhi;", "}"])  # fmt: skip

    _DOT_BF16X2 = tl.constexpr(_dot_ptx(1))
    # two words (word rows r and r + R/2) in one chain: a third fewer widening instructions a weight, twice the
    # terms rounded in bf16
    _DOT2_BF16X2 = tl.constexpr(_dot_ptx(2))

    @triton.jit
    def _x_pairs(X, m, M, K, ch, R: tl.constexpr, FIRST: tl.constexpr):
        """Row m's bf16 pairs (x[k + j], x[k + 4 + j]), j = 0..3, of the R word rows of chunk ch (X: int64 quads
        of bf16, rows past M read as 0): four [R] int32 tensors."""
        xp = X + m * (K // 4) + ch * (2 * R) + tl.arange(0, R) * 2
        if FIRST:  # row 0 always exists
            lo = tl.load(xp)
            hi = tl.load(xp + 1)
        else:
            live = tl.full((R,), m, tl.int32) < M
            lo = tl.load(xp, mask=live, other=0)
            hi = tl.load(xp + 1, mask=live, other=0)
        return tl.inline_asm_elementwise(
            _PAIRS_BF16X2, "=r,=r,=r,=r,r,r,r,r",
            [lo.to(tl.int32), (lo >> 32).to(tl.int32), hi.to(tl.int32), (hi >> 32).to(tl.int32)],
            dtype=(tl.int32,) * 4, is_pure=True, pack=1,
        )  # fmt: skip

    @triton.jit
    def _w4_chunk(
        acc, X, QW, M, N, K, ch, s, offs_n, mask_n, offs_m,
        ROWS: tl.constexpr, BLOCK_N: tl.constexpr, R: tl.constexpr, ASM: tl.constexpr, EVEN: tl.constexpr,
    ):  # fmt: skip
        """`_w4_kernel`'s step over chunk ch (R word rows), a word at a time: acc [ROWS, BLOCK_N] plus its sums."""
        rows = tl.arange(0, R)
        wp = QW + (ch * R + rows)[:, None] * N + offs_n[None, :]
        w = tl.load(wp) if EVEN else tl.load(wp, mask=mask_n[None, :], other=0)
        if ASM:
            t0, t1, t2, t3 = tl.inline_asm_elementwise(
                _DEQ_BF16X2, "=r,=r,=r,=r,r", [w], dtype=(tl.int32,) * 4, is_pure=True, pack=1
            )
        for m in tl.static_range(ROWS):
            live = tl.full((R,), m, tl.int32) < M  # row m exists (a bucket's top may be past M)
            if ASM:
                p0, p1, p2, p3 = _x_pairs(X, m, M, K, ch, R, m == 0)
                part = tl.inline_asm_elementwise(
                    _DOT_BF16X2, "=f,r,r,r,r,r,r,r,r",
                    [t0, t1, t2, t3, p0[:, None], p1[:, None], p2[:, None], p3[:, None]], dtype=tl.float32,
                    is_pure=True, pack=1,
                )  # fmt: skip
            else:
                xp = X + m * K + ch * (8 * R) + rows * 8
                part = tl.zeros((R, BLOCK_N), dtype=tl.float32)
                for j in tl.static_range(8):
                    f = (((w >> (4 * j)) & 0xF) | 0x4B000000).to(tl.float32, bitcast=True) - 8388616.0
                    x = tl.load(xp + j, mask=live, other=0.0).to(tl.float32)
                    part += f * x[:, None]
            col = tl.sum(part, axis=0) * s  # [BLOCK_N]: this row's chunk sum, scaled once
            if ROWS == 1:
                acc += col[None, :]
            else:
                acc = tl.where(offs_m[:, None] == m, acc + col[None, :], acc)
        return acc

    @triton.jit
    def _prefetch_l2(p):
        """Ask L2 for the lines at pointers p (no registers written, nothing waited for)."""
        return tl.inline_asm_elementwise(
            "prefetch.global.L2::evict_last [$1];\n mov.u32 $0, 0;",
            "=r,l",
            [p],
            dtype=tl.int32,
            is_pure=False,
            pack=1,
        )

    @triton.jit
    def _pdl_wait(
        QW, N, c0, c1, pid_n, R: tl.constexpr, BLOCK_N: tl.constexpr, PDL: tl.constexpr, PREFETCH: tl.constexpr
    ):  # fmt: skip
        """`_w4_kernel`'s start under programmatic dependent launch: it reads nothing an earlier kernel writes (x,
        the partials, the counters) before gdc_wait; the weights of its first PREFETCH chunks are asked of L2
        meanwhile (one word per 128-byte line). PDL 1: the next kernel may start now (2: once every program is
        past its main loop; 3: as each program ends)."""
        if PDL == 1:
            tl.extra.cuda.gdc_launch_dependents()
        if PREFETCH > 0:
            lines = tl.minimum(pid_n * BLOCK_N + tl.arange(0, BLOCK_N // 32) * 32, N - 1)
            for ch in range(c0, tl.minimum(c1, c0 + PREFETCH)):
                _prefetch_l2(QW + (ch * R + tl.arange(0, R))[:, None] * N + lines[None, :])
        tl.extra.cuda.gdc_wait()

    @triton.jit
    def _split_k_store(
        out, Y, P, CNT, M, N, split, pid_n, offs_m, offs_n, mask,
        ROWS: tl.constexpr, BLOCK_N: tl.constexpr, RB: tl.constexpr,
    ):  # fmt: skip
        """`_w4_kernel`'s end with split-K: this split's partial sums to P[split, row, :]; the last program of the
        column tile to arrive (an atomic counter per tile in CNT, reset by it) adds every split's, RB splits a
        load (their latencies overlap), and writes Y."""
        nsplit = tl.num_programs(1)
        tl.store(P + (split * M + offs_m[:, None]) * N + offs_n[None, :], out, mask=mask)
        tl.debug_barrier()  # every thread's partial stored before the (release) count
        old = tl.atomic_add(CNT + pid_n, 1, sem="acq_rel")
        if old == nsplit - 1:
            tot = tl.zeros((ROWS, BLOCK_N), dtype=tl.float32)
            sb = tl.arange(0, RB)
            for sp0 in range(0, nsplit, RB):
                sps = sp0 + sb
                off = (sps[:, None, None] * M + offs_m[None, :, None]) * N + offs_n[None, None, :]
                tot += tl.sum(tl.load(P + off, mask=(sps < nsplit)[:, None, None] & mask[None, :, :], other=0.0,
                                      cache_modifier=".cg"), axis=0)  # fmt: skip
            tl.store(Y + offs_m[:, None] * N + offs_n[None, :], tot.to(Y.dtype.element_ty), mask=mask)
            tl.atomic_xchg(CNT + pid_n, 0)

    def _w4_kernel(
        X, QW, S, Y, P, CNT, M, N, K, groups_per_split,
        ROWS: tl.constexpr, BLOCK_N: tl.constexpr, R: tl.constexpr, GROUP_K: tl.constexpr, ASM: tl.constexpr,
        SPLIT: tl.constexpr, EVEN: tl.constexpr, ACC2: tl.constexpr, PDL: tl.constexpr = 0,
        PREFETCH: tl.constexpr = 0, RB: tl.constexpr = 1,
    ):  # fmt: skip
        """One program: up to ROWS token rows x BLOCK_N columns over its K-split's groups, R word rows (8R k) at a
        time: ASM, bf16x2 arithmetic in PTX (`_DEQ_BF16X2` once per word, `_DOT_BF16X2` per row; X read as
        int64 quads of bf16); else plain Triton, the 2^23 trick in fp32 per nibble. A thread holds all R word
        rows of its columns (4 adjacent ones: 128-bit loads; BLOCK_N = 128·warps·c), so the sums over word rows
        stay in its registers, scaled once per chunk and row. EVEN: N is a multiple of BLOCK_N (no column
        masks). SPLIT: the partial sums go to P[split, row, :] and the last program of a column tile to arrive
        (an atomic counter per tile in CNT, reset by it) adds them, RB splits a load, and writes Y: one launch,
        deterministic, graph-capturable (launches of it must not run concurrently: one stream; `_split_k_store`).
        ACC2 (with ASM): word rows r and r + R/2 summed in one bf16x2 chain (`_DOT2_BF16X2`). PDL > 0: launched
        with programmatic dependent launch (`_pdl_wait`; sm90)."""
        pid_n = tl.program_id(0)
        split = tl.program_id(1)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        offs_m = tl.arange(0, ROWS)
        mask_m = offs_m < M
        acc = tl.zeros((ROWS, BLOCK_N), dtype=tl.float32)
        CPG: tl.constexpr = GROUP_K // 8 // R  # chunks per group
        c0 = split * groups_per_split * CPG
        c1 = tl.minimum(c0 + groups_per_split * CPG, (K // GROUP_K) * CPG)
        if PDL > 0:  # launched with programmatic dependent launch
            _pdl_wait(QW, N, c0, c1, pid_n, R, BLOCK_N, PDL, PREFETCH)
        for ch in range(c0, c1):
            sp = S + (ch // CPG) * N + offs_n
            s = (tl.load(sp) if EVEN else tl.load(sp, mask=mask_n, other=0.0)).to(tl.float32)
            if ASM and ACC2:
                half = tl.arange(0, R // 2)
                wp = QW + (ch * R + half)[:, None] * N + offs_n[None, :]
                if EVEN:
                    wa = tl.load(wp)
                    wb = tl.load(wp + (R // 2) * N)
                else:
                    wa = tl.load(wp, mask=mask_n[None, :], other=0)
                    wb = tl.load(wp + (R // 2) * N, mask=mask_n[None, :], other=0)
                a0, a1, a2, a3 = tl.inline_asm_elementwise(
                    _DEQ_BF16X2, "=r,=r,=r,=r,r", [wa], dtype=(tl.int32,) * 4, is_pure=True, pack=1
                )
                b0, b1, b2, b3 = tl.inline_asm_elementwise(
                    _DEQ_BF16X2, "=r,=r,=r,=r,r", [wb], dtype=(tl.int32,) * 4, is_pure=True, pack=1
                )
                for m in tl.static_range(ROWS):
                    pa0, pa1, pa2, pa3 = _x_pairs(X, m, M, K, 2 * ch, R // 2, m == 0)
                    pb0, pb1, pb2, pb3 = _x_pairs(X, m, M, K, 2 * ch + 1, R // 2, m == 0)
                    part = tl.inline_asm_elementwise(
                        _DOT2_BF16X2, "=f" + ",r" * 16,
                        [a0, a1, a2, a3, b0, b1, b2, b3, pa0[:, None], pa1[:, None], pa2[:, None], pa3[:, None],
                         pb0[:, None], pb1[:, None], pb2[:, None], pb3[:, None]], dtype=tl.float32, is_pure=True,
                        pack=1,
                    )  # fmt: skip
                    col = tl.sum(part, axis=0) * s
                    if ROWS == 1:
                        acc += col[None, :]
                    else:
                        acc = tl.where(offs_m[:, None] == m, acc + col[None, :], acc)
            else:
                acc = _w4_chunk(
                    acc, X, QW, M, N, K, ch, s, offs_n, mask_n, offs_m, ROWS, BLOCK_N, R, ASM, EVEN
                )
        out = acc
        mask = mask_m[:, None] & mask_n[None, :]
        if PDL == 2:
            tl.extra.cuda.gdc_launch_dependents()
        if SPLIT:
            _split_k_store(out, Y, P, CNT, M, N, split, pid_n, offs_m, offs_n, mask, ROWS, BLOCK_N, RB)
        else:
            tl.store(Y + offs_m[:, None] * N + offs_n[None, :], out.to(Y.dtype.element_ty), mask=mask)

    def _dequant_kernel(QW, S, W, N, K, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_K: tl.constexpr):
        """W[K, N] (16-bit, k-major: the transposed weight cuBLAS multiplies) from the packed words."""
        pid_r = tl.program_id(0)
        pid_n = tl.program_id(1)
        rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        nib = tl.arange(0, 8)
        mask = (rows < K // 8)[:, None] & (offs_n < N)[None, :]
        words = tl.load(QW + rows[:, None] * N + offs_n[None, :], mask=mask, other=0)
        q = (
            (words[:, None, :] >> (nib * 4)[None, :, None]) & 0xF
        ) | 0x4B000000  # q - 8 without I2F, as above
        s = tl.load(S + ((rows * 8) // GROUP_K)[:, None] * N + offs_n[None, :], mask=mask, other=0.0)
        w = (q.to(tl.float32, bitcast=True) - 8388616.0) * s.to(tl.float32)[:, None, :]
        k = rows[:, None] * 8 + nib[None, :]
        tl.store(
            W + k[:, :, None] * N + offs_n[None, None, :], w.to(W.dtype.element_ty), mask=mask[:, None, :]
        )


_KERNELS: list = []


def _kernels() -> tuple:
    """(gemv, gemm, planes, dequant, w4), jitted on first use (under TRITON_INTERPRET=1, Triton's interpreter)."""
    if not _KERNELS:
        _KERNELS.extend(
            triton.jit(f) for f in (_gemv_kernel, _gemm_kernel, _planes_kernel, _dequant_kernel, _w4_kernel)
        )
    return tuple(_KERNELS)


# ---------------------------------------------------------------- torch's int4 kernel (tinygemm, as gpt-fast runs it)
INNER_K_TILES = 8
_TINYGEMM: dict[str, object] = {}  # "order": the input layout the self-check found ("swap", "plain", "int32")


def tinygemm_available(dev: torch.device) -> bool:
    """torch's CUDA int4 ops are present and the GPU has bf16 tensor cores (sm80+)."""
    ops = torch.ops.aten
    return (
        dev.type == "cuda"
        and hasattr(ops, "_weight_int4pack_mm")
        and hasattr(ops, "_convert_weight_to_int4pack")
        and torch.cuda.get_device_capability(dev)[0] >= 8
    )


def _tinygemm_pack_order(qweight: torch.Tensor, scales: torch.Tensor, order: str):
    """(packed weight, scales_and_zeros [K/G, N, 2]) for aten._weight_int4pack_mm: its input is uint8 [N, K/2],
    two k per byte; our words hold k = 8r + j in nibble j, so byte p of a row holds k = 2p (low) and 2p + 1
    (high) — the kernel wants them swapped (gpt-fast: `w[:, ::2] << 4 | w[:, 1::2]`). It dequantizes
    (q − 8)·scale + zero: symmetric, zero = 0. order "int32": the values as int32 [N, K] (another torch's
    input, as its XPU build documents)."""
    if order == "int32":
        inp = unpack_int4(qweight).t().contiguous()
    else:
        inp = tinygemm_bytes(qweight, order == "swap")
    packed = torch.ops.aten._convert_weight_to_int4pack(inp, INNER_K_TILES)
    sz = torch.stack([scales, torch.zeros_like(scales)], dim=2).to(torch.bfloat16).contiguous()
    return packed, sz


def tinygemm_bytes(qweight: torch.Tensor, swap: bool) -> torch.Tensor:
    """uint8 [N, K/2] of a packed weight, two k per byte: (q[2p] << 4) | q[2p+1] with `swap` (gpt-fast's
    order), else q[2p] in the low nibble (our words' bytes as they are, little-endian)."""
    b = qweight.t().contiguous().view(torch.uint8)  # [N, K/2]
    return (((b & 0xF) << 4) | (b >> 4)).contiguous() if swap else b


def _tinygemm_mm(x: torch.Tensor, tg: tuple, group: int) -> torch.Tensor:
    return torch.ops.aten._weight_int4pack_mm(x, tg[0], group, tg[1])


def tinygemm_pack(qweight: torch.Tensor, scales: torch.Tensor) -> tuple | None:
    """torch's int4 layout of a packed weight, or None where the ops are missing, the shape does not fit
    (K a multiple of 16·inner k-tiles, N of 8, group 32..256) or a self-check on a small weight failed (both
    nibble orders and an int32 input are tried once; the failure is printed)."""
    k, n = qweight.shape[0] * PACK, qweight.shape[1]
    group = k // scales.shape[0]
    if (
        not tinygemm_available(qweight.device)
        or k % (16 * INNER_K_TILES)
        or n % 8
        or group not in (32, 64, 128, 256)
    ):
        return None
    if "order" not in _TINYGEMM:
        _TINYGEMM["order"] = None
        g = torch.Generator(device=qweight.device).manual_seed(0)
        w = torch.randn((256, 512), device=qweight.device, generator=g).to(torch.bfloat16) * 0.05
        x = torch.randn((3, 512), device=qweight.device, generator=g).to(torch.bfloat16)
        qw, sc = quantize_int4(w, 128)
        ref = w4a16_reference(x, qw, sc).float()
        errs = {}
        for order in ("swap", "plain", "int32"):
            try:
                y = _tinygemm_mm(x, _tinygemm_pack_order(qw, sc, order), 128).float()
                errs[order] = float((y - ref).abs().max() / ref.abs().max())
            except Exception as e:  # noqa: BLE001 - a signature or layout this torch does not have
                errs[order] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
            if isinstance(errs[order], float) and errs[order] < CHECK_TOL:
                _TINYGEMM["order"] = order
                break
        if _TINYGEMM["order"] is None:
            print(
                f"int4: torch's _weight_int4pack_mm left out (self-check against the reference: {errs})",
                flush=True,
            )
    if _TINYGEMM["order"] is None:
        return None
    return _tinygemm_pack_order(qweight, scales, _TINYGEMM["order"])


# ---------------------------------------------------------------- candidates and the tuner
# Each (rows bucket, n, k) is tuned once outside CUDA-graph capture (at the engine's warm-up, `tune_model`): every
# candidate is first checked against the reference on a slice of the output (dropped, with the reason printed,
# when it fails or raises), then replayed from a CUDA graph over enough copies of the weights to overflow L2 (as a
# model's layers stream them from memory); the fastest is kept.
# planes (rows <= 8): (BLOCK_N, programs per SM the K-split aims at (0: no split), warps, stages)
# Picked from sm90 SASS (Triton 3.9, ptxas, no GPU): a thread holds all 16 word rows of its columns, so x's
# loads and conversions are shared by its columns; 512 weights a thread (BLOCK_N / 32 / warps = 4 columns) came
# to ~5.6 instructions a weight at one row (no spills; 1,024 spilled), against ~8.6 at 128 and ~6.9 for the
# I2F GEMV. Few rows: x goes through shared memory, ~2.2-2.7 instructions per weight and row.
PLANES_ONE = [(256, 2, 2, 2), (128, 4, 1, 2), (512, 2, 4, 2), (256, 4, 4, 2), (256, 2, 2, 3)]
PLANES_FEW = {
    4: [(64, 4, 2, 2), (128, 2, 2, 2), (64, 8, 2, 2)],
    8: [(64, 4, 2, 2), (128, 4, 4, 2), (128, 2, 4, 2)],
}
PLANES_MAX_ROWS = 8
# word-at-a-time kernel (`_w4_kernel`), rows <= 8: (ROWS, BLOCK_N, word rows a step, programs per SM the K-split
# aims at, warps, stages); "w4asm": bf16x2 PTX (bf16 activations; the candidates), "w4": plain Triton (fp32 per
# nibble, any dtype: the variant the interpreter runs, ~5.8 instructions a weight in sm90 SASS, not a candidate)
W4_ONE = [
    (1, 256, 16, 2, 2, 2),
    (1, 512, 16, 2, 2, 2),
    (1, 512, 16, 4, 4, 2),
    (1, 256, 16, 4, 2, 2),
    (1, 128, 16, 4, 1, 2),
]
W4_ACC2_ONE = [(1, 256, 16, 2, 2, 2), (1, 512, 16, 2, 2, 2)]
W4_ACC2_FEW = {4: [(4, 128, 8, 2, 1, 2)], 8: [(8, 128, 8, 2, 1, 2)]}
_W4_KINDS = {"w4": 0, "w4asm": 1, "w4acc2": 2}
# w4asm with programmatic dependent launch (sm90+; a config's tail, `_w4`), not a candidate by default: measured on
# an H200 (benchmarks/int4_chain_gpu.py, int4_chain.md), Llama-3.1-8B's int4 GEMVs back to back ran 1-2% faster
# with it (the next kernel may start once every program is past its main loop) and 21-26% slower with the next
# kernel started at once or weights prefetched into L2 before the wait; the whole batch-1 decode step, where norms,
# attention and activations sit between the GEMVs, ran 1.7-2.9% slower with the tuner's PDL picks in three runs
PDL = False
PDL_VARIANTS = ((0, 2), (4, 2), (0, 3))  # (chunks prefetched, when the next kernel may start)
# split-K partials the last program of a column tile loads at once (over ROWS; 8 rows: 1): one split a load made
# that program's reduction a chain of 8-56 dependent loads at one row; 8 a load took Llama-3.1-8B's int4 GEMVs
# 1-8% faster on an H200 (benchmarks/results/engine_kernels_h200/int4_chain.md)
RB = 8
W4_FEW = {4: [(4, 128, 8, 2, 1, 2), (4, 256, 8, 2, 2, 2)], 8: [(8, 128, 4, 2, 1, 2), (8, 256, 4, 2, 2, 2)]}
# GEMV (one row, I2F conversions): (BLOCK_N, programs per SM of the K-split, warps); the first H200 run's best two
GEMV_CONFIGS = [(128, 8, 4), (128, 4, 4)]
# tiles: (BLOCK_N, warps, stages, programs per SM the K-split aims at); BLOCK_M from the rows (16/32/64/128)
GEMM_SMALL = [(128, 4, 3, 2), (64, 4, 3, 4), (64, 4, 4, 8), (128, 4, 4, 4)]
GEMM_CONFIGS = [(128, 8, 3, 2), (64, 4, 3, 2), (128, 4, 3, 2), (64, 8, 3, 2)]
# from this many rows only the first tile (the H200 run's fastest tile there, still 2.5-3x dequantize-then-
# cuBLAS) stays a candidate: tuning every bucket at warm-up must stay quick
FEW_TILES_ROWS = 256
# torch's int4 kernel from this many rows took 1.6-25x the best candidate on the H200 (first run's table)
TINYGEMM_MAX_ROWS = 16
DEQUANT_MIN_ROWS = 17  # dequantize-then-cuBLAS is a candidate from this many rows
CHECK_TOL = 2e-2  # max |error| / max |reference| a candidate may show (bf16 output rounding is ~4e-3)
_TUNED: dict[tuple, tuple] = {}
_TIMES: dict[tuple, dict[str, object]] = {}  # per key: candidate name -> seconds, or why it was dropped


def _bucket(m: int) -> int:
    """Rows bucket a choice holds for: 1, then powers of two from 4 (2-4, 5-8, 9-16, ...)."""
    if m == 1:
        return 1
    b = 4
    while b < m:
        b *= 2
    return b


def candidates(m: int, x: torch.Tensor, tg: tuple | None) -> list[tuple]:
    """(kind, config) pairs that can run `m` rows on x's device, the default first (the one a graph capture
    runs when no tuning happened)."""
    if not (triton is not None and x.is_cuda):
        return [("dequant_mm", ())]
    out: list[tuple] = []
    bm = 16 if m <= 16 else 32 if m <= 32 else 64 if m <= 64 else 128
    if m <= PLANES_MAX_ROWS:  # ROWS: the bucket's top, so every row count of a bucket runs the tuned kernel
        out += [("planes", (_bucket(m), *c)) for c in (PLANES_ONE if m == 1 else PLANES_FEW[_bucket(m)])]
        if x.dtype == torch.bfloat16:
            base = W4_ONE if m == 1 else W4_FEW[_bucket(m)]
            out += [("w4asm", c) for c in base]
            # sm90+: programmatic dependent launch
            if PDL and torch.cuda.get_device_capability(x.device)[0] >= 9:
                out += [("w4asm", (*c, *v, RB)) for c in base for v in PDL_VARIANTS]
            out += [("w4acc2", c) for c in (W4_ACC2_ONE if m == 1 else W4_ACC2_FEW[_bucket(m)])]
    if m == 1:
        out += [("gemv", c) for c in GEMV_CONFIGS]
    else:
        tiles = GEMM_SMALL if bm < 128 else GEMM_CONFIGS[:1] if m >= FEW_TILES_ROWS else GEMM_CONFIGS
        out += [("tile", (bm, *c)) for c in tiles]
    if tg is not None and x.dtype == torch.bfloat16 and m <= TINYGEMM_MAX_ROWS:
        out.append(("tinygemm", ()))
    if m >= DEQUANT_MIN_ROWS:
        out.append(("dequant_mm", ()))
    return out


def cand_name(c: tuple) -> str:
    return c[0] + ("(" + ",".join(str(v) for v in c[1]) + ")" if c[1] else "")


def run_candidate(c: tuple, x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, tg) -> torch.Tensor:
    kind, cfg = c
    if kind == "gemv":
        return _gemv(x, qweight, scales, cfg)
    if kind == "planes":
        return _planes(x, qweight, scales, cfg)
    if kind in _W4_KINDS:
        return _w4(x, qweight, scales, (_W4_KINDS[kind], *cfg))
    if kind == "tile":
        return _gemm(x, qweight, scales, cfg[0], cfg[1:])
    if kind == "tinygemm":
        return _tinygemm_mm(x, tg, x.shape[1] // scales.shape[0])
    if kind == "dequant_mm":
        if triton is not None and x.is_cuda:
            return torch.matmul(x, dequant_t(qweight, scales, x.dtype))
        return F.linear(x, dequantize(qweight, scales, x.dtype))
    raise ValueError(f"unknown int4 kernel {kind!r}")


def _check(c: tuple, x, qweight, scales, tg) -> str | None:
    """None when the candidate's output matches the reference on a slice (first 64 rows, first and last 128
    columns), else why not."""
    try:
        y = run_candidate(c, x, qweight, scales, tg)
    except Exception as e:  # noqa: BLE001 - a kernel that cannot run here is dropped, with the reason
        return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    n = qweight.shape[1]
    cols = torch.cat([torch.arange(min(128, n)), torch.arange(max(0, n - 128), n)]).to(x.device)
    rows = slice(0, min(64, x.shape[0]))
    ref = w4a16_reference(x[rows], qweight[:, cols], scales[:, cols]).float()
    if tuple(y.shape) != (x.shape[0], n):
        return f"output shape {tuple(y.shape)}, want {(x.shape[0], n)}"
    err = float((y[rows][:, cols].float() - ref).abs().max() / ref.abs().max().clamp(min=1e-30))
    return None if err < CHECK_TOL else f"error {err:.3g} against the reference (bar {CHECK_TOL})"


def _tuned(
    key: tuple, cands: list, x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, tg
) -> tuple:
    """The fastest correct candidate for this call's shape (the first one on the CPU or while a graph captures)."""
    c = _TUNED.get(key)
    if c is not None:
        return c
    if not x.is_cuda or torch.cuda.is_current_stream_capturing():
        return cands[0]
    from engine.timing import copies_for_cache, measure_graph, rotating

    nbytes = qweight.numel() * 4 + scales.numel() * scales.element_size()
    n = copies_for_cache(nbytes * (2 if tg is not None else 1), x.device, factor=2.0)

    def clone(t):
        return None if t is None else tuple(v.clone() for v in t)

    # small row counts stream the weights (copies past L2); from FEW_TILES_ROWS rows the GEMM is compute-bound
    # and two copies do (quicker tuning)
    big = x.shape[0] >= FEW_TILES_ROWS
    bufs = [(qweight, scales, tg)] + [
        (qweight.clone(), scales.clone(), clone(tg)) for _ in range((2 if big else min(n, 16)) - 1)
    ]
    times: dict[str, object] = {}
    best, best_t = None, float("inf")
    for c in cands:
        why = _check(c, x, qweight, scales, tg)
        if why is not None:
            times[cand_name(c)] = "dropped: " + why
            print(f"int4 {key[:4]}: {cand_name(c)} dropped ({why})", flush=True)
            continue
        fn = rotating(bufs, lambda qw, sc, t, c=c: run_candidate(c, x, qw, sc, t))
        try:
            t = measure_graph(
                fn, x.device, calls=2 if big else max(len(bufs), 4), repeat=3 if big else 5, warmup=2
            )
        except Exception as e:  # noqa: BLE001 - e.g. a kernel that cannot be captured in a graph: dropped
            times[cand_name(c)] = f"dropped: timing failed ({type(e).__name__}: {str(e)[:160]})"
            print(f"int4 {key[:4]}: {cand_name(c)} {times[cand_name(c)]}", flush=True)
            continue
        times[cand_name(c)] = t
        if t < best_t:
            best, best_t = c, t
    if best is None:
        raise RuntimeError(f"no int4 kernel passed its check for rows/n/k {key[:3]}: {times}")
    _TIMES[key] = times
    _TUNED[key] = best
    return best


def tuned_configs() -> dict[str, str]:
    """The kernel picked so far, by rows bucket / n / k / group / device (for the record of a benchmark)."""
    return {"/".join(str(v) for v in k): cand_name(c) for k, c in _TUNED.items()}


def tuning_record() -> dict[str, dict]:
    """Every tuned shape's candidate times (or why each was dropped), by rows bucket / n / k / group / device."""
    return {"/".join(str(v) for v in k): dict(t) for k, t in _TIMES.items()}


def tuning_times(m: int, n: int, k: int, group: int = GROUP, dev: int = 0, tinygemm: bool = True) -> dict:
    """Every candidate's measured seconds (or why it was dropped) for a tuned shape; {} if not tuned."""
    return dict(_TIMES.get((_bucket(m), n, k, group, dev, tinygemm), {}))


_PLAN: dict[tuple, tuple] = {}  # (rows, n, k, group, device, tinygemm) -> the tuned candidate (the hot path)


def w4a16(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, tg: tuple | None = None
) -> torch.Tensor:
    """y[M, N] = x[M, K] @ W^T with W packed int4 (`quantize_int4`; `tg`: the same weight in torch's int4 layout,
    `tinygemm_pack`, or None), on the fastest measured kernel for M's bucket (CUDA tensors; CPU tensors under
    TRITON_INTERPRET=1, set before Triton is imported: the tests)."""
    m, k = x.shape
    n = qweight.shape[1]
    group = k // scales.shape[0]
    x = x.contiguous()
    dev = x.device.index if x.is_cuda and x.device.index is not None else 0
    exact = (m, n, k, group, dev, tg is not None)
    c = _PLAN.get(exact)  # an eager step's int4 layers skip the lookups below (host time per launch)
    if c is not None:
        return run_candidate(c, x, qweight, scales, tg)
    cands = candidates(m, x, tg)
    key = (_bucket(m), n, k, group, dev, tg is not None)
    c = _tuned(key, cands, x, qweight, scales, tg)
    if c not in cands:  # a choice made for the bucket that this row count cannot run
        c = cands[0]
    if key in _TUNED:
        _PLAN[exact] = c
    return run_candidate(c, x, qweight, scales, tg)


def tune_buckets(max_rows: int) -> list[int]:
    """The rows buckets up to `max_rows` (1, 4, 8, 16, ...: `_bucket`), the row count each is tuned at."""
    out, b = [1], 4
    while max_rows > 1:
        out.append(b)
        if b >= max_rows:
            break
        b *= 2
    return out


def tune_model(model: nn.Module, max_rows: int, log=None) -> int:
    """Tune every rows bucket up to `max_rows` of every int4 weight shape in `model` before serving (what an
    engine does at start-up; the choice is cached per shape), so no step tunes while requests wait. Returns how
    many (bucket, shape) pairs were tuned now (0 on the CPU or without Triton, where there is nothing to pick)."""
    import time

    layers: dict[tuple, Int4Linear] = {}
    for mod in model.modules():
        if isinstance(mod, Int4Linear) and mod.qweight.is_cuda and triton is not None:
            layers.setdefault((mod.out_features, mod.in_features, mod.tg_weight is not None), mod)
    t0, tuned = time.perf_counter(), 0
    g = None
    for mod in layers.values():
        dev = mod.qweight.device
        g = g or torch.Generator(device=dev).manual_seed(0)
        for m in tune_buckets(max_rows):
            key = (m, mod.out_features, mod.in_features, mod.in_features // mod.scales.shape[0],
                   dev.index if dev.index is not None else 0, mod.tg_weight is not None)  # fmt: skip
            if key in _TUNED:
                continue
            try:
                x = torch.randn((m, mod.in_features), device=dev, generator=g).to(mod.scales.dtype)
                mod(x)
                tuned += 1
            # out of memory: the bucket is left to its first use (tuned then, as before warm-up tuning)
            except torch.cuda.OutOfMemoryError:
                if log:
                    log(
                        f"int4: {m} rows of {mod.in_features}x{mod.out_features}: not tuned at warm-up (memory)"
                    )
            x = None
        torch.cuda.empty_cache()
    if log and layers:
        log(f"int4: tuned {tuned} (rows bucket, shape) pairs of {len(layers)} weight shapes up to {max_rows} rows "
            f"in {time.perf_counter() - t0:.1f} s")  # fmt: skip
    return tuned


def _column_grid(x, qweight, scales, bn: int, per_sm: int) -> tuple[int, int, int, int]:
    """(group, column tiles, groups per K-split, K-splits) of a kernel with BLOCK_N columns a program whose
    K-split aims at `per_sm` programs per SM (0: no split)."""
    k, n = x.shape[1], qweight.shape[1]
    group = k // scales.shape[0]
    groups = k // group
    tiles = triton.cdiv(n, bn)
    split = _splits(tiles, groups, per_sm * device_sms(x.device, off_cuda=8)) if per_sm else 1
    per = triton.cdiv(groups, split)
    return group, tiles, per, triton.cdiv(groups, per)


def _planes(x, qweight, scales, cfg: tuple) -> torch.Tensor:
    rows, bn, per_sm, warps, stages = cfg
    (m, k), n = x.shape, qweight.shape[1]
    group, tiles, per, split = _column_grid(x, qweight, scales, bn, per_sm)
    y = torch.empty((split, m, n), device=x.device, dtype=torch.float32 if split > 1 else x.dtype)
    _kernels()[2][(tiles, split)](x, qweight, scales, y, m, n, k, per, ROWS=rows, BLOCK_N=bn, GROUP_K=group,
                                  num_warps=warps, num_stages=stages)  # fmt: skip
    return y.sum(0, dtype=x.dtype) if split > 1 else y[0]


# per device: the split-K arrival counters of `_w4` (zero between launches)
_COUNTERS: dict[int, torch.Tensor] = {}


def _w4(x, qweight, scales, cfg: tuple) -> torch.Tensor:
    """`_w4_kernel` with cfg (asm: 0 plain Triton, 1 PTX, 2 PTX with two-word chains; ROWS, BLOCK_N, R: word rows a
    step, programs per SM the K-split aims at (0: none), warps, stages), then optionally (chunks prefetched into L2
    under PDL, -1: no PDL; when the next kernel may start, `_pdl_wait`; split-K partials a load, default RB)."""
    asm, rows, bn, r, per_sm, warps, stages, *more = cfg
    prefetch, mode, rb = (*more, *(-1, 1, RB)[len(more) :])  # PDL off, early trigger, RB splits a load
    (m, k), n = x.shape, qweight.shape[1]
    rows = min(rows, triton.next_power_of_2(m))  # 2 rows of a bucket of 4 run a kernel for 2
    group, tiles, per, split = _column_grid(x, qweight, scales, bn, per_sm)
    y = torch.empty((m, n), device=x.device, dtype=x.dtype)
    p = torch.empty((split, m, n), device=x.device, dtype=torch.float32) if split > 1 else y
    dev = x.device.index or 0
    cnt = _COUNTERS.get(dev)
    if cnt is None or cnt.numel() < tiles:
        cnt = _COUNTERS[dev] = torch.zeros(max(tiles, 4096), device=x.device, dtype=torch.int32)
    xa = x.view(torch.int64) if asm else x  # bf16 quads as words (k: a multiple of the group)
    _kernels()[4][(tiles, split)](xa, qweight, scales, y, p, cnt, m, n, k, per, ROWS=rows, BLOCK_N=bn,
                                  R=min(r, group // PACK), GROUP_K=group, ASM=asm >= 1, SPLIT=split > 1,
                                  EVEN=n % bn == 0, ACC2=asm == 2, num_warps=warps, num_stages=stages,
                                  RB=max(1, rb // rows), **_pdl_args(prefetch, mode))  # fmt: skip
    return y


def _pdl_args(prefetch: int, mode: int) -> dict:
    """Launch arguments of a kernel with programmatic dependent launch (prefetch >= 0: that many chunks of
    weights asked of L2 before it waits on the kernel before it; mode: when the next kernel may start, 1 at
    once, 2 past the main loops, 3 as programs end); none for prefetch -1."""
    if prefetch < 0:
        return {}
    return {"PDL": mode, "PREFETCH": prefetch, "launch_pdl": True}


def dequant_t(qweight: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """W^T [K, N] in `dtype` from the packed weight (one Triton kernel; a fresh buffer from torch's caching
    allocator each call, so layers of one shape reuse the same memory)."""
    kp, n = qweight.shape
    group = kp * PACK // scales.shape[0]
    w = torch.empty((kp * PACK, n), device=qweight.device, dtype=dtype)
    br, bn = 4, 128
    _kernels()[3][(triton.cdiv(kp, br), triton.cdiv(n, bn))](
        qweight, scales, w, n, kp * PACK, BLOCK_R=br, BLOCK_N=bn, GROUP_K=group, num_warps=4
    )
    return w


def _splits(tiles: int, groups: int, target: int) -> int:
    """K-splits so that tiles x splits reaches `target` programs (each split keeps at least 2 groups)."""
    if tiles >= target or groups < 4:
        return 1
    return max(1, min(groups // 2, -(-target // tiles)))


def _gemv(x, qweight, scales, cfg: tuple) -> torch.Tensor:
    bn, per_sm, warps = cfg
    k, n = x.shape[1], qweight.shape[1]
    group = k // scales.shape[0]
    groups = k // group
    tiles = triton.cdiv(n, bn)
    split = _splits(tiles, groups, per_sm * device_sms(x.device, off_cuda=8)) if per_sm else 1
    per = triton.cdiv(groups, split)
    split = triton.cdiv(groups, per)
    y = torch.empty((split, n), device=x.device, dtype=torch.float32 if split > 1 else x.dtype)
    _kernels()[0][(tiles, split)](
        x, qweight, scales, y, n, k, per, BLOCK_N=bn, GROUP_K=group, num_warps=warps, num_stages=2
    )
    return y.sum(0, keepdim=True, dtype=x.dtype) if split > 1 else y  # one reduction kernel, cast included


def _gemm(x, qweight, scales, bm: int, cfg: tuple) -> torch.Tensor:
    bn, warps, stages, per_sm = cfg
    (m, k), n = x.shape, qweight.shape[1]
    group = k // scales.shape[0]
    groups = k // group
    tiles = triton.cdiv(m, bm) * triton.cdiv(n, bn)
    split = _splits(tiles, groups, per_sm * device_sms(x.device, off_cuda=8))
    per = triton.cdiv(groups, split)
    split = triton.cdiv(groups, per)
    y = torch.empty((split, m, n), device=x.device, dtype=torch.float32 if split > 1 else x.dtype)
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn), split)
    _kernels()[1][grid](x, qweight, scales, y, m, n, k, per, BLOCK_M=bm, BLOCK_N=bn, GROUP_K=group,
                        num_warps=warps, num_stages=stages)  # fmt: skip
    return y.sum(0, dtype=x.dtype) if split > 1 else y[0]


def int4_supported(x: torch.Tensor) -> bool:
    return triton is not None and x.is_cuda


# ---------------------------------------------------------------- the layer
class Int4Linear(nn.Module):
    """y = x W^T + b with W stored as packed int4 and group-wise scales (on CUDA the fastest measured kernel
    per rows bucket: Triton GEMV / tiles, torch's int4 kernel, or dequantize-then-cuBLAS)."""

    def __init__(self, linear: nn.Linear, group: int = GROUP) -> None:
        super().__init__()
        w = linear.weight.detach()
        qweight, scales = quantize_int4(w, group)
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        # torch's own int4 layout too (a candidate kernel; as many bytes again), packed now, before the engine
        # sizes its KV pool from the free memory
        tg = tinygemm_pack(qweight, scales) if triton is not None else None
        self.register_buffer("tg_weight", tg[0] if tg else None)
        self.register_buffer("tg_scales_zeros", tg[1] if tg else None)
        self.bias = linear.bias
        self.in_features, self.out_features = w.shape[1], w.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if int4_supported(x2):
            tg = (self.tg_weight, self.tg_scales_zeros) if self.tg_weight is not None else None
            y = w4a16(x2, self.qweight, self.scales, tg)
            if self.bias is not None:
                y = y + self.bias
        else:  # reference: dequantize, then a plain matmul
            y = F.linear(x2, dequantize(self.qweight, self.scales, x.dtype), self.bias)
        return y.reshape(*shape[:-1], -1)
