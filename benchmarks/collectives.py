"""NCCL all-reduce and send/recv between the GPUs of one host, against the cost model's formulas.

    torchrun --nproc_per_node=2 benchmarks/collectives.py --out benchmarks/results/collectives_h200x2.md

Rank 0 prints and writes the table: measured time (median of CUDA-event timings after warm-up, random
bf16 data) and bus bandwidth per message size, beside `core.parallelism.allreduce_time` /
`send_time` for the profile's interconnect. NVLink multicast (NVLS) stays off.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import _checkout  # noqa: F401  (first: the checkout's root on sys.path)

os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

SIZES = [2**k for k in range(12, 29, 2)]  # 4 KiB .. 256 MiB


def timed(fn, warmup: int = 5, repeat: int = 20) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        dist.barrier()
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    t = torch.tensor([sorted(times)[len(times) // 2]], device="cuda")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)  # the slowest rank's median
    return float(t.item())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="h200")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(rank % torch.cuda.device_count())
    rows = []
    for nbytes in SIZES:
        x = torch.randn(nbytes // 2, dtype=torch.bfloat16, device="cuda")
        ar = timed(lambda x=x: dist.all_reduce(x))
        if rank == 0:
            sr = timed(lambda x=x: dist.send(x, 1)) if world >= 2 else float("nan")
        elif rank == 1:
            sr = timed(lambda x=x: dist.recv(x, 0))
        else:
            sr = timed(lambda: None)
        rows.append((nbytes, ar, sr))
    if rank == 0:
        from core.hardware import load_profile
        from core.parallelism import allreduce_time, send_time

        ic = load_profile(args.profile).interconnect
        lines = [
            f"NCCL on {world}× {torch.cuda.get_device_name(0)}, torch {torch.__version__}; profile `{args.profile}`"
            f" interconnect {ic.bandwidth_gbps:g} GB/s, efficiency {ic.efficiency:g}, latency {ic.latency_us:g} µs",
            "",
            "| bytes | all-reduce (µs) | bus BW (GB/s) | model (µs) | error | send/recv (µs) | model (µs) |",
            "|---|---|---|---|---|---|---|",
        ]
        for n, ar, sr in rows:
            bus = 2 * (world - 1) / world * n / ar / 1e9
            m_ar, m_sr = allreduce_time(n, world, ic), send_time(n, ic)
            lines.append(
                f"| {n:,} | {ar * 1e6:.1f} | {bus:.0f} | {m_ar * 1e6:.1f} | {m_ar / ar - 1:+.0%} | "
                f"{sr * 1e6:.1f} | {m_sr * 1e6:.1f} |"
            )
        text = "\n".join(lines)
        print(text, flush=True)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(
                "# NCCL collectives\n\n`torchrun --nproc_per_node=2 benchmarks/collectives.py`\n\n"
                + text
                + "\n"
            )
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
