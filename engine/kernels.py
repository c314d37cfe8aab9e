"""Microbenchmarks of the kernels a model step is made of; each returns median seconds.

GEMMs per weight matrix, attention prefill and decode (the engine's varlen flash kernel over a
token-pool KV cache), the fused element-wise set, a device copy (the bandwidth ceiling), and
NCCL collectives when more than one GPU is present. Inputs are random and non-zero, and small
problems rotate among several input copies so that L2 does not flatter them.
"""

from __future__ import annotations

import os
import tempfile

import torch
import torch.nn.functional as F

from engine.attention import make_layout, varlen_attention
from engine.fused import act_mul, add_rmsnorm, gemv, rope_and_cache
from engine.model import rope_tables
from engine.quantize import FP8
from engine.timing import copies_for_cache, measure, measure_graph, random_like_nonzero, rotating

TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Steps of up to this many tokens run as CUDA graphs (engine.steps.StepRunner's graph_max_tokens);
# their attention is timed replayed from a graph too, so host-side launch work is out of the
# small-prefill figures, as in a step.
GRAPH_STEP_TOKENS = 512


def _dtype(name: str) -> torch.dtype:
    try:
        return TORCH_DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype {name!r}: use one of {', '.join(TORCH_DTYPES)}") from None


# ---------------------------------------------------------------- GEMM
def time_gemm(
    m: int,
    k: int,
    n: int,
    dtype: str = "bf16",
    device: str = "cuda",
    kernel: str = "auto",
    warmup: int = 3,
    repeat: int = 20,
) -> float:
    """y[m, n] = x[m, k] @ W[n, k]^T with W in `dtype` ('bf16', 'fp16', 'fp32', 'fp8', 'int8', 'int4').

    kernel 'auto' is what the engine runs (cuBLAS; fp8 via _scaled_mm, int8 via _int_mm, whose CUDA
    kernel needs m > 16, so smaller m are timed at 17 rows); 'triton_gemv' times the engine's
    batch-1 weight-streaming kernel (m must be 1).
    """
    dev = torch.device(device)
    if dtype == "int4":
        return _time_int4_gemm(m, k, n, dev, warmup, repeat)
    wbytes = {"fp8": 1, "int8": 1}.get(dtype, 0) or _dtype(dtype).itemsize
    copies = copies_for_cache(k * n * wbytes + m * k * 2, dev)
    if dtype == "fp8":
        if dev.type != "cuda":
            raise ValueError("fp8 GEMMs need a CUDA GPU with fp8 tensor cores (Ada/Hopper or newer)")
        one = torch.ones((), device=dev)
        bufs = [
            (random_like_nonzero((m, k), FP8, dev), random_like_nonzero((n, k), FP8, dev))
            for _ in range(copies)
        ]
        fn = rotating(
            bufs, lambda x, w: torch._scaled_mm(x, w.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
        )
    elif dtype == "int8":
        rows = max(m, 17) if dev.type == "cuda" else m
        bufs = [
            (
                random_like_nonzero((rows, k), torch.int8, dev),
                random_like_nonzero((n, k), torch.int8, dev).t(),
            )
            for _ in range(copies)
        ]
        fn = rotating(bufs, torch._int_mm)
    else:
        td = _dtype(dtype)
        bufs = [
            (random_like_nonzero((m, k), td, dev), random_like_nonzero((n, k), td, dev, scale=k**-0.5))
            for _ in range(copies)
        ]
        if kernel == "triton_gemv":
            if m != 1 or dev.type != "cuda":
                raise ValueError("kernel 'triton_gemv' times a single row (m=1) on CUDA")
            fn = rotating(bufs, gemv)
        else:
            fn = rotating(bufs, F.linear)
    if m <= 512:  # decode-sized GEMMs run inside CUDA graphs in the engine: time them that way
        return measure_graph(fn, dev, calls=max(copies, 4), repeat=repeat, warmup=warmup)
    return measure(fn, dev, warmup=warmup, repeat=repeat)


def _time_int4_gemm(m: int, k: int, n: int, dev: torch.device, warmup: int, repeat: int) -> float:
    """The engine's int4 weight-only GEMM (engine/quant.py: Triton W4A16 on CUDA, the dequantize-then-matmul
    reference on the CPU), weights packed with group-wise scales, bf16 activations."""
    from engine.quant import GROUP, dequantize, int4_supported, quantize_int4, tinygemm_pack, w4a16

    if k % GROUP:
        raise ValueError(f"int4 GEMMs need k a multiple of {GROUP} (got {k})")
    copies = copies_for_cache(k * n // 2 + m * k * 2, dev)
    bufs = []
    for _ in range(copies):
        qw, sc = quantize_int4(random_like_nonzero((n, k), torch.bfloat16, dev, scale=k**-0.5))
        # torch's int4 layout too, as Int4Linear keeps it: the same candidates the serving engine picks from
        tg = tinygemm_pack(qw, sc) if dev.type == "cuda" else None
        bufs.append((random_like_nonzero((m, k), torch.bfloat16, dev), qw, sc, tg))
    if int4_supported(bufs[0][0]):
        fn = rotating(bufs, w4a16)
    else:
        fn = rotating(bufs, lambda x, qw, sc, tg: F.linear(x, dequantize(qw, sc, x.dtype)))
    if m <= 512 and dev.type == "cuda":
        return measure_graph(fn, dev, calls=max(copies, 4), repeat=repeat, warmup=warmup)
    return measure(fn, dev, warmup=warmup, repeat=repeat)


# ---------------------------------------------------------------- attention
def _pools(tokens: int, num_kv_heads: int, head_dim: int, dtype, dev, copies: int):
    return [
        (
            random_like_nonzero((tokens, num_kv_heads, head_dim), dtype, dev),
            random_like_nonzero((tokens, num_kv_heads, head_dim), dtype, dev),
        )
        for _ in range(copies)
    ]


def time_attention_prefill(
    chunk: int,
    prior: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    device: str = "cuda",
    batch: int = 1,
    window: int = 0,
    dtype: str = "bf16",
    warmup: int = 3,
    repeat: int = 10,
) -> float:
    """`batch` chunks of `chunk` new tokens, each attending causally to `prior` cached tokens and itself."""
    dev, td = torch.device(device), _dtype(dtype)
    lay = make_layout([chunk] * batch, [prior] * batch, dev)
    kv_tok = batch * (prior + chunk)
    copies = copies_for_cache(2 * kv_tok * num_kv_heads * head_dim * td.itemsize, dev, factor=1.5)
    pools = _pools(kv_tok, num_kv_heads, head_dim, td, dev, copies)
    q = random_like_nonzero((batch * chunk, num_heads, head_dim), td, dev)
    scale = head_dim**-0.5
    fn = rotating(pools, lambda k, v: varlen_attention(q, k, v, lay, scale, window))
    if batch * chunk <= GRAPH_STEP_TOKENS:  # such steps run as CUDA graphs: no host launch time inside
        return measure_graph(fn, dev, calls=max(copies, 4), repeat=repeat, warmup=warmup)
    return measure(fn, dev, warmup=warmup, repeat=repeat)


def time_attention_decode(
    batch: int,
    context: int | list[int],
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    device: str = "cuda",
    kv_dtype: str = "bf16",
    window: int = 0,
    warmup: int = 3,
    repeat: int = 10,
) -> float:
    """One new query per sequence over its `context` keys (int for all, or a list per sequence).

    Timed as the kernel runs inside a captured decode step: replayed from a CUDA graph.
    """
    dev = torch.device(device)
    if kv_dtype not in ("bf16", "fp16"):
        raise ValueError(f"kv_dtype {kv_dtype!r}: torch's flash attention reads 16-bit KV only (bf16, fp16)")
    td = _dtype(kv_dtype)
    ctx = [int(context)] * batch if isinstance(context, int) else [int(c) for c in context]
    if len(ctx) != batch or min(ctx) < 1:
        raise ValueError("context must be a positive int or a list of `batch` positive ints")
    lay = make_layout([1] * batch, [c - 1 for c in ctx], dev, kv_heads=num_kv_heads)
    bufs = decode_inputs(ctx, num_heads, num_kv_heads, head_dim, td, dev)
    scale = head_dim**-0.5
    fn = rotating(bufs, lambda q, k, v: varlen_attention(q, k, v, lay, scale, window))
    return measure_graph(fn, dev, calls=max(len(bufs), 8), repeat=repeat, warmup=warmup)


def decode_inputs(
    ctx: list[int], num_heads: int, num_kv_heads: int, head_dim: int, dtype, dev
) -> list[tuple]:
    """(q, k_pool, v_pool) copies for one decode step over contexts `ctx`, as many as overflow the L2 1.5 times
    (random, non-zero; the pools first, then the queries)."""
    copies = copies_for_cache(2 * sum(ctx) * num_kv_heads * head_dim * dtype.itemsize, dev, factor=1.5)
    pools = _pools(sum(ctx), num_kv_heads, head_dim, dtype, dev, copies)
    qs = [random_like_nonzero((len(ctx), num_heads, head_dim), dtype, dev) for _ in range(copies)]
    return [(q, k, v) for q, (k, v) in zip(qs, pools, strict=True)]


# ---------------------------------------------------------------- element-wise and copy
def elementwise_bytes(
    tokens: int,
    hidden: int,
    intermediate: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    itemsize: int = 2,
) -> int:
    """Bytes the representative set moves: two add+RMSNorm, rope+KV write, act·mul."""
    norm = 4 * tokens * hidden * itemsize  # read x, residual; write y, residual
    rope = 2 * tokens * (num_heads + 2 * num_kv_heads) * head_dim * itemsize
    act = 3 * tokens * intermediate * itemsize
    return 2 * norm + rope + act


def time_elementwise(
    tokens: int,
    hidden: int,
    device: str = "cuda",
    intermediate: int | None = None,
    head_dim: int = 128,
    dtype: str = "bf16",
    warmup: int = 3,
    repeat: int = 10,
) -> tuple[float, int]:
    """(seconds, bytes moved) of one layer's element-wise kernels for `tokens` tokens.

    The set: add+RMSNorm twice, rope on q and k with the KV-cache write, act·mul of gate_up
    (intermediate defaults to 3.5·hidden, the Llama ratio; heads = hidden/head_dim, kv heads = heads/4).
    """
    dev, td = torch.device(device), _dtype(dtype)
    inter = intermediate or int(3.5 * hidden)
    nh = max(1, hidden // head_dim)
    nkv = max(1, nh // 4)
    nbytes = elementwise_bytes(tokens, hidden, inter, nh, nkv, head_dim, td.itemsize)
    copies = copies_for_cache(nbytes, dev, factor=1.5)
    w = random_like_nonzero((hidden,), td, dev)
    cos, sin = rope_tables(head_dim, 10000.0, max(tokens, 16), dev)
    pos = torch.arange(tokens, device=dev)
    bufs = []
    for _ in range(copies):
        x, r = random_like_nonzero((tokens, hidden), td, dev), random_like_nonzero((tokens, hidden), td, dev)
        qkv = random_like_nonzero((tokens, nh + 2 * nkv, head_dim), td, dev)
        kp, vp = torch.empty((tokens, nkv, head_dim), dtype=td, device=dev), torch.empty_like(qkv[:, :nkv])
        gu = random_like_nonzero((tokens, 2 * inter), td, dev)
        bufs.append((x, r, qkv, kp, vp, gu))

    def layer(x, r, qkv, kp, vp, gu):
        y, h = add_rmsnorm(x, r, w, 1e-5)
        rope_and_cache(qkv[:, :nh], qkv[:, nh : nh + nkv], qkv[:, nh + nkv :], cos, sin, pos, pos, kp, vp)
        add_rmsnorm(y, h, w, 1e-5)
        act_mul(gu)

    return measure_graph(
        rotating(bufs, layer), dev, calls=max(copies, 4), repeat=repeat, warmup=warmup
    ), nbytes


def time_copy(nbytes: int, device: str = "cuda", warmup: int = 3, repeat: int = 20) -> tuple[float, int]:
    """(seconds, bytes read + written) of a device-to-device copy of `nbytes` bytes."""
    dev = torch.device(device)
    n = max(1, nbytes // 2)
    src = random_like_nonzero((n,), torch.bfloat16, dev)
    dst = torch.empty_like(src)
    return measure(lambda: dst.copy_(src), dev, warmup=warmup, repeat=repeat), 2 * n * 2


# ---------------------------------------------------------------- collectives
def _collective_worker(
    rank: int, world: int, op: str, nbytes: int, init_file: str, result_file: str, warmup: int, repeat: int
) -> None:
    import torch.distributed as dist

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        seconds = _time_collective(op, nbytes, rank, world, warmup, repeat)
        if rank == 0:
            with open(result_file, "w") as f:
                f.write(repr(seconds))
    finally:
        dist.destroy_process_group()


def _time_collective(op: str, nbytes: int, rank: int, world: int, warmup: int, repeat: int) -> float:
    import torch.distributed as dist

    dev = torch.device("cuda", torch.cuda.current_device())
    buf = random_like_nonzero((max(1, nbytes // 2),), torch.bfloat16, dev)
    if op == "allreduce":

        def fn():
            dist.all_reduce(buf)
    else:  # send/recv between ranks 0 and 1; the others idle

        def fn():
            if rank == 0:
                dist.send(buf, 1)
            elif rank == 1:
                dist.recv(buf, 0)

    t = measure(fn, dev, warmup=warmup, repeat=repeat)
    # every rank agrees on the slowest rank's median
    tt = torch.tensor([t], device=dev)
    dist.all_reduce(tt, op=dist.ReduceOp.MAX)
    return float(tt.item())


def _run_collective(op: str, nbytes: int, world_size: int | None, warmup: int, repeat: int) -> float | None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():  # already under torchrun
        return _time_collective(op, nbytes, dist.get_rank(), dist.get_world_size(), warmup, repeat)
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        return None
    world = world_size or torch.cuda.device_count()
    # NVLink multicast (NVLS) can take shared hosts' GPUs down; keep it off unless the user chose
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        init, result = os.path.join(tmp, "init"), os.path.join(tmp, "result")
        mp.spawn(_collective_worker, args=(world, op, nbytes, init, result, warmup, repeat), nprocs=world)
        with open(result) as f:
            return float(f.read())


def time_allreduce(
    nbytes: int, world_size: int | None = None, warmup: int = 5, repeat: int = 20
) -> float | None:
    """Seconds of an NCCL all-reduce of `nbytes` bytes over `world_size` GPUs (all by default).

    Runs in-process under torchrun, else spawns one process per GPU; None with fewer than two GPUs.
    """
    return _run_collective("allreduce", nbytes, world_size, warmup, repeat)


def time_sendrecv(nbytes: int, warmup: int = 5, repeat: int = 20) -> float | None:
    """Seconds to send `nbytes` bytes from GPU 0 to GPU 1 through NCCL; None with fewer than two GPUs."""
    return _run_collective("sendrecv", nbytes, 2, warmup, repeat)
