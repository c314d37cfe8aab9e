"""Timing a GPU (or CPU) callable honestly: warm-up, device events, median."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], device: str | torch.device, warmup: int = 3, repeat: int = 20) -> float:
    """Median seconds of one call of `fn` after `warmup` calls.

    On CUDA each call is bracketed by events (device time, launch gaps included); on the CPU by
    perf_counter. `fn` is responsible for rotating its inputs when caches would flatter it.
    """
    dev = torch.device(device)
    for _ in range(warmup):
        fn()
    synchronize(dev)
    times: list[float] = []
    if dev.type == "cuda":
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeat)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeat)]
        for s, e in zip(starts, ends, strict=True):
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize(dev)
        times = [s.elapsed_time(e) * 1e-3 for s, e in zip(starts, ends, strict=True)]
    else:
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def rotating(buffers: list, fn: Callable[..., object]) -> Callable[[], object]:
    """A no-argument callable that calls `fn(*buffers[i])`, moving to the next buffer set each call.

    Rotating among sets whose total size exceeds the last-level cache keeps a small problem's
    timing from measuring the cache instead of device memory.
    """
    state = {"i": 0}

    def call():
        i = state["i"]
        state["i"] = (i + 1) % len(buffers)
        return fn(*buffers[i])

    return call


def copies_for_cache(nbytes_one: float, device: str | torch.device, factor: float = 3.0) -> int:
    """How many copies of an input of `nbytes_one` bytes to rotate so that they overflow L2 `factor` times."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return 1
    l2 = getattr(torch.cuda.get_device_properties(dev), "L2_cache_size", 50 * 2**20)
    return max(1, min(64, int(factor * l2 // max(nbytes_one, 1)) + 1))


def random_like_nonzero(
    shape, dtype: torch.dtype, device, scale: float = 1.0, generator=None
) -> torch.Tensor:
    """Random values with no exact zeros (uniform magnitude in [0.5, 1.5)·scale, random sign)."""
    if dtype.is_floating_point and dtype.itemsize >= 2:
        mag = torch.rand(shape, device=device, dtype=torch.float32, generator=generator) + 0.5
        sign = torch.randint(0, 2, shape, device=device, generator=generator).mul_(2).sub_(1)
        return (mag * sign * scale).to(dtype)
    if dtype.is_floating_point:  # fp8: make in float32, cast
        return random_like_nonzero(shape, torch.float32, device, scale, generator).to(dtype)
    lo, hi = (1, 64) if dtype == torch.int8 else (1, 1 << 15)
    mag = torch.randint(lo, hi, shape, device=device, generator=generator)
    sign = torch.randint(0, 2, shape, device=device, generator=generator).mul_(2).sub_(1)
    return (mag * sign).to(dtype)


def measure_graph(
    fn: Callable[[], object], device: str | torch.device, calls: int = 10, repeat: int = 10, warmup: int = 2
) -> float:
    """Median seconds of one call of `fn` when `calls` calls are replayed back to back from a CUDA graph.

    This is how a kernel runs inside a captured decode step: no host launch gap between kernels.
    On the CPU it falls back to `measure`.
    """
    dev = torch.device(device)
    if dev.type != "cuda":
        return measure(fn, dev, warmup=warmup, repeat=repeat)
    stream = torch.cuda.Stream(dev)
    stream.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream(dev).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return measure(graph.replay, dev, warmup=2, repeat=repeat) / calls
