"""Interconnect calibration: all-reduce, all-gather, all-to-all and send/recv timed over message sizes between
the processes of one host, each fitted as latency + bytes / bandwidth, written into the GPU profile.

    NCCL_NVLS_ENABLE=0 torchrun --nproc_per_node=2 -m calibrate interconnect --profile h200

Every rank joins (NCCL on GPUs, gloo on the CPU); each size is timed `repeat` times after warm-up (CUDA
events on GPUs, the wall clock on the CPU, a barrier before each), the median taken, the slowest rank's
median kept. The bytes fitted are those core.parallelism's formulas count for the collective (ring
all-reduce 2(n−1)/n of the buffer, all-gather and all-to-all (n−1)/n, a send all of it), so the fitted
latency and bandwidth drop straight into them (`Interconnect.measured`). Every other size is held out of the
fit and its median error reported. NVLink multicast stays off (NCCL_NVLS_ENABLE=0, set before NCCL starts).

Rank 0 writes `<out-dir>/<name>.yaml`: the base profile with `interconnect.measured` and a source line. A
CPU (gloo) run never writes into hardware_profiles/: it needs --out-dir, a scratch folder (tests use one).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from core.errors import ConfigError
from core.hardware import PROFILE_DIR, CollectiveFit, load_profile, write_profile
from engine import distributed

COLLECTIVES = ("all_reduce", "all_gather", "all_to_all", "send")
GPU_SIZES = [2**k for k in range(12, 29, 2)]  # 4 KiB .. 256 MiB a rank
CPU_SIZES = [2**k for k in range(10, 21, 2)]  # 1 KiB .. 1 MiB: gloo over loopback, for tests


def wire_bytes(name: str, nbytes: int, n: int) -> float:
    """The bytes core.parallelism charges the collective for an `nbytes` message on n ranks."""
    return {"all_reduce": 2 * (n - 1) / n, "all_gather": (n - 1) / n, "all_to_all": (n - 1) / n, "send": 1.0}[
        name
    ] * nbytes


def _op(name: str, nbytes: int, rank: int, n: int, device: str):
    """A closure running the collective once on an `nbytes` buffer (per rank's full message)."""
    elems = max(n, nbytes // 2) // n * n  # bf16 elements, a multiple of n
    x = torch.randn(elems, device=device).to(torch.bfloat16)
    if name == "all_reduce":
        return lambda: dist.all_reduce(x)
    if name == "all_gather":
        part, out = x[: elems // n].clone(), torch.empty_like(x)
        return lambda: dist.all_gather_into_tensor(out, part)
    if name == "all_to_all":
        out = torch.empty_like(x)
        return lambda: dist.all_to_all_single(out, x)
    peer = rank ^ 1  # pairs (0,1), (2,3), ...: each sends to its pair and receives its pair's message
    if peer >= n:
        return lambda: None

    def send_recv():
        if rank % 2 == 0:
            dist.send(x, peer)
        else:
            dist.recv(x, peer)

    return send_recv


def _median_s(fn, device: str, warmup: int, repeat: int) -> float:
    cuda = device.startswith("cuda")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        dist.barrier(group=_cpu_group)
        if cuda:
            torch.cuda.synchronize()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    t = torch.tensor([float(np.median(times))], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_cpu_group)
    return float(t.item())


_cpu_group = None


def measure(
    rank: int, n: int, device: str, sizes: list[int], warmup: int = 3, repeat: int = 10
) -> list[dict]:
    """Rows {collective, bytes, wire_bytes, seconds} for every collective and size (every rank the same)."""
    rows = []
    for name in COLLECTIVES:
        for size in sizes:
            s = _median_s(_op(name, size, rank, n, device), device, warmup, repeat)
            rows.append(
                {"collective": name, "bytes": size, "wire_bytes": wire_bytes(name, size, n), "seconds": s}
            )
    return rows


def fit(rows: list[dict], ranks: int) -> dict[str, CollectiveFit]:
    """Per collective: least squares of seconds = latency + wire_bytes / bandwidth on every other size
    (relative errors weighted equally), the rest held out."""
    fits = {}
    for name in COLLECTIVES:
        r = [x for x in rows if x["collective"] == name]
        b = np.array([x["wire_bytes"] for x in r], dtype=float)
        t = np.array([x["seconds"] for x in r], dtype=float)
        train = np.arange(len(r)) % 2 == 0
        a = np.stack([np.ones(train.sum()), b[train]], axis=1) / t[train, None]  # relative residuals
        (lat, inv_bw), *_ = np.linalg.lstsq(a, np.ones(train.sum()), rcond=None)
        lat, inv_bw = max(lat, 0.0), max(inv_bw, 1e-15)
        err = np.abs(lat + b[~train] * inv_bw - t[~train]) / t[~train] * 100
        fits[name] = CollectiveFit(
            latency_us=lat * 1e6,
            bandwidth_gbps=1.0 / inv_bw / 1e9,
            ranks=ranks,
            holdout_median_pct=round(float(np.median(err)), 2) if len(err) else None,
        )
    return fits


def write(base: str, fits: dict[str, CollectiveFit], out_dir: Path, name: str | None, note: str) -> Path:
    """The base profile with the measured fits, as `<out_dir>/<name>.yaml`."""
    p = load_profile(base)
    ic = p.interconnect.model_copy(update={"measured": fits})
    sources = dict(p.sources)
    sources["interconnect_measured"] = note
    prof = p.model_copy(update={"interconnect": ic, "sources": sources, "name": name or p.name})
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{prof.name}.yaml"
    write_profile(prof, path)
    return path


def run(rank: int, world: int, init_method: str | None, args: argparse.Namespace) -> dict:
    """One rank's calibration (torchrun's environment, or spawn_local's rank and rendezvous)."""
    global _cpu_group
    d = distributed.init(args.backend, rank, world, init_method)
    _cpu_group = d.control
    sizes = CPU_SIZES if d.device == "cpu" else GPU_SIZES
    rows = measure(d.rank, d.world, d.device, sizes, args.warmup, args.repeat)
    out = {"rows": rows}
    if d.rank == 0:
        fits = fit(rows, d.world)
        gpu = torch.cuda.get_device_name() if d.device != "cpu" else "CPU (gloo)"
        note = (f"measured by python -m calibrate interconnect on {d.world} x {gpu}, backend {d.backend}, "
                f"NCCL_NVLS_ENABLE={os.environ.get('NCCL_NVLS_ENABLE')}, {dt.date.today().isoformat()}; sizes "
                f"{sizes[0]}-{sizes[-1]} bytes, median of {args.repeat}, every other size held out")  # fmt: skip
        out["fits"] = {k: v.model_dump() for k, v in fits.items()}
        out["path"] = str(write(args.profile, fits, Path(args.out_dir), args.name, note))
        for k, v in fits.items():
            print(f"{k:>10}: {v.latency_us:8.1f} µs + bytes / {v.bandwidth_gbps:8.2f} GB/s "
                  f"(held-out median error {v.holdout_median_pct}%)")  # fmt: skip
        print(f"wrote {out['path']}")
    return out


def parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{prog} interconnect", description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", required=True, help="base GPU profile (name or path), e.g. h200")
    p.add_argument("--name", help="profile name to write (default: the base's)")
    p.add_argument(
        "--out-dir", help="folder for the profile (default: hardware_profiles; required on the CPU)"
    )
    p.add_argument("--backend", choices=["nccl", "gloo"], help="default: nccl with CUDA, else gloo")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeat", type=int, default=10)
    return p


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    cpu = args.backend == "gloo" or not torch.cuda.is_available()
    if args.out_dir is None:
        if cpu:
            raise ConfigError(
                "calibrate interconnect: a CPU (gloo) run does not write hardware_profiles/; give --out-dir DIR"
            )
        args.out_dir = str(PROFILE_DIR)
    elif cpu and Path(args.out_dir).resolve() == Path(PROFILE_DIR).resolve():
        raise ConfigError(
            "calibrate interconnect: --out-dir hardware_profiles is for GPU runs; give a scratch folder"
        )
    load_profile(args.profile)  # one clear line for an unknown profile
    return args


def main(argv: list[str], prog: str = "python -m calibrate") -> int:
    """The `interconnect` verb, under torchrun (a one-process run has nothing to measure)."""
    args = check_args(parser(prog).parse_args(argv))
    if int(os.environ.get("WORLD_SIZE", 1)) < 2:
        raise ConfigError(
            "calibrate interconnect needs 2 or more processes: torchrun --nproc_per_node=2 -m calibrate interconnect ..."
        )
    run(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), None, args)
    dist.destroy_process_group()
    return 0
