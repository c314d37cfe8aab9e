"""int4 weight-only linear layers (W4A16): 4-bit weights with group-wise scales, 16-bit activations and compute.

A [N, K] weight is stored as GPTQ lays it out for a Triton kernel: `qweight` [K/8, N] int32, eight 4-bit
values per word along K (nibble j of word r holds row k = 8r + j), and `scales` [K/G, N] in the activation
dtype, one per group of G = 128 consecutive k (symmetric: w = (q - 8)·s, q in 0..15). The kernels read
the packed words, unpack and dequantize them in registers and multiply in 16-bit (tensor cores for
tiles of tokens, FMAs for a single row), so a decode step reads half a byte per weight:

- `_gemv_kernel`: one token row (batch-1 decode), a program per BLOCK_N columns and K-split, partial sums
  in fp32 summed after (split-K), so even a 4096-wide matrix spreads over every SM;
- `_gemm_kernel`: tiles of BLOCK_M tokens x BLOCK_N columns with tl.dot, the weights re-read and
  dequantized once per token tile (as Marlin re-runs them per 64 rows), split-K when there are few tiles.

Launch configurations are tuned once per shape on the GPU (`_tuned`).

On the CPU (and without Triton) the layer dequantizes and runs a plain matmul: `dequantize` is the
reference the kernels are tested against (tests/engine/test_quant.py: on the CPU through Triton's
interpreter, TRITON_INTERPRET=1).
Timings do not depend on the values, so the scales come from the random weights themselves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

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
            q = (words[:, None, :] >> shifts[None, :, None]) & 0xF
            q = tl.reshape(q, (GROUP_K, BLOCK_N))
            s = tl.load(S + g * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            w = ((q.to(tl.float32) - 8.0) * s[None, :]).to(x.dtype)
            acc = tl.dot(x, w, acc)
        out = Y + split * M * N + offs_m[:, None] * N + offs_n[None, :]
        tl.store(out, acc.to(Y.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


_KERNELS: list = []


def _kernels() -> tuple:
    """(gemv, gemm), jitted on first use (under TRITON_INTERPRET=1, Triton's interpreter: CPU tensors)."""
    if not _KERNELS:
        _KERNELS.extend((triton.jit(_gemv_kernel), triton.jit(_gemm_kernel)))
    return tuple(_KERNELS)


# Launch configurations, the first of each list the default. Each (kernel, rows bucket, n, k) is tuned once on
# first use outside CUDA-graph capture (the engine's warm-up runs each step shape before capturing it): every
# candidate replayed from a CUDA graph over enough copies of the weights to overflow L2 (as a model's layers
# stream them from memory), the fastest kept.
# GEMV: (BLOCK_N, programs per SM the K-split aims at (0: no split), warps)
GEMV_CONFIGS = [(64, 4, 4), (32, 4, 4), (128, 4, 4), (64, 2, 4), (64, 8, 4), (32, 8, 4), (128, 8, 4),
                (64, 4, 2), (64, 4, 8), (32, 0, 4), (16, 0, 2), (64, 0, 4)]  # fmt: skip
# tiles: (BLOCK_N, warps, stages, programs per SM the K-split aims at); BLOCK_M from the rows (16/32/64/128);
# the small-row tiles keep the first (split-K fills the SMs), the 128-row tiles (prefill) are tuned
GEMM_SMALL = [(128, 4, 3, 2)]
GEMM_CONFIGS = [(128, 8, 3, 2), (64, 4, 3, 2), (128, 4, 3, 2), (64, 8, 3, 2)]
_TUNED: dict[tuple, tuple] = {}


def _splits(tiles: int, groups: int, target: int) -> int:
    """K-splits so that tiles x splits reaches `target` programs (each split keeps at least 2 groups)."""
    if tiles >= target or groups < 4:
        return 1
    return max(1, min(groups // 2, -(-target // tiles)))


_SMS: dict[int, int] = {}


def _sm_count(dev: torch.device) -> int:
    if dev.type != "cuda":
        return 8
    i = dev.index if dev.index is not None else torch.cuda.current_device()
    if i not in _SMS:
        _SMS[i] = torch.cuda.get_device_properties(i).multi_processor_count
    return _SMS[i]


def _tuned(
    key: tuple, configs: list, run, x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor
) -> tuple:
    """The fastest of `configs` for this call's shape (the first one on the CPU or while a graph captures).
    `run(cfg, qweight, scales)` launches one call."""
    cfg = _TUNED.get(key)
    if cfg is not None:
        return cfg
    if not x.is_cuda or torch.cuda.is_current_stream_capturing() or len(configs) == 1:
        return configs[0]
    from engine.timing import copies_for_cache, measure_graph, rotating

    n = copies_for_cache(qweight.numel() * 4 + scales.numel() * scales.element_size(), x.device, factor=2.0)
    bufs = [(qweight, scales)] + [(qweight.clone(), scales.clone()) for _ in range(min(n, 16) - 1)]
    times = []
    for c in configs:
        fn = rotating(bufs, lambda qw, sc, c=c: run(c, qw, sc))
        times.append(measure_graph(fn, x.device, calls=max(len(bufs), 4), repeat=5, warmup=2))
    cfg = _TUNED[key] = configs[min(range(len(configs)), key=times.__getitem__)]
    return cfg


def tuned_configs() -> dict[str, tuple]:
    """The launch configurations picked so far, by shape (for the record of a benchmark)."""
    return {"/".join(str(v) for v in k): c for k, c in _TUNED.items()}


def w4a16(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """y[M, N] = x[M, K] @ W^T with W packed int4 (`quantize_int4`), on the Triton kernels (CUDA tensors;
    CPU tensors under TRITON_INTERPRET=1, set before Triton is imported: the tests)."""
    m, k = x.shape
    n = qweight.shape[1]
    group = k // scales.shape[0]
    x = x.contiguous()
    dev = x.device.index if x.is_cuda and x.device.index is not None else 0
    if m == 1:
        run = lambda c, qw, sc: _gemv(x, qw, sc, c)  # noqa: E731
        cfg = _tuned(("gemv", n, k, group, dev), GEMV_CONFIGS, run, x, qweight, scales)
        return _gemv(x, qweight, scales, cfg)
    bm = 16 if m <= 16 else 32 if m <= 32 else 64 if m <= 64 else 128
    configs = GEMM_CONFIGS if bm == 128 else GEMM_SMALL
    run = lambda c, qw, sc: _gemm(x, qw, sc, bm, c)  # noqa: E731
    cfg = _tuned(("gemm", bm, n, k, group, dev), configs, run, x, qweight, scales)
    return _gemm(x, qweight, scales, bm, cfg)


def _gemv(x, qweight, scales, cfg: tuple) -> torch.Tensor:
    bn, per_sm, warps = cfg
    k, n = x.shape[1], qweight.shape[1]
    group = k // scales.shape[0]
    groups = k // group
    tiles = triton.cdiv(n, bn)
    split = _splits(tiles, groups, per_sm * _sm_count(x.device)) if per_sm else 1
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
    split = _splits(tiles, groups, per_sm * _sm_count(x.device))
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
    """y = x W^T + b with W stored as packed int4 and group-wise scales (the Triton kernels on CUDA)."""

    def __init__(self, linear: nn.Linear, group: int = GROUP) -> None:
        super().__init__()
        w = linear.weight.detach()
        qweight, scales = quantize_int4(w, group)
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        self.bias = linear.bias
        self.in_features, self.out_features = w.shape[1], w.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if int4_supported(x2):
            y = w4a16(x2, self.qweight, self.scales)
            if self.bias is not None:
                y = y + self.bias
        else:  # reference: dequantize, then a plain matmul
            y = F.linear(x2, dequantize(self.qweight, self.scales, x.dtype), self.bias)
        return y.reshape(*shape[:-1], -1)
