"""How fast tensor-core GEMMs run under sustained load: the GPU's clocks fall when its power limit binds.

    python benchmarks/gemm_clocks.py --out $OUT/clocks        # on the GPU (about 60 s on an H200)
    python benchmarks/gemm_clocks.py --out /tmp/c --cpu --tiny  # the same code on toy shapes

A calibration microbenchmark times one GEMM 20 times in a row; inside a model step GEMMs run between
memory-bound kernels (attention, norms) for as long as the step lasts. When a GEMM is dense enough the GPU draws
more than its power limit and lowers its clocks after a few milliseconds, so the same kernel is faster alone in
a short burst than in a long prefill step. This measures that directly:

1. **Ramp.** After an idle second, one GEMM (Llama-3.1-8B's gate_up, 4,096 -> 28,672, at 8,192 rows: about
   2.6 ms) back to back for `--ramp-s` seconds; each call's time (CUDA events) against the time since the load
   began, and the SM clock / power (NVML) sampled beside it.
2. **Duty cycle.** The same weight shape at 256, 1,024 and 4,096 rows, each followed by a device copy sized so that
   the GEMMs take a fraction `duty` of the pattern's time (1.0, 0.75, 0.5, 0.25, 0.1), for `--window-s` after an
   idle half second: the GEMM's median time over the window's first 5 calls (burst) and its second half
   (steady), as TFLOP/s and as a share of the bf16 datasheet peak of the profile (`--profile`).

Writes gemm_clocks.json (every call's time) and gemm_clocks.md (the tables) under --out, rewritten after each
phase, so a cut run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from functools import partial
from pathlib import Path

import _checkout  # noqa: F401  (the checkout's root on sys.path)
import torch
from _gpu_cli import device_args, log, pick_device

K, N = 4096, 28672
RAMP_M = 8192
DUTY_M = (256, 1024, 4096)
DUTIES = (1.0, 0.75, 0.5, 0.25, 0.1)
TINY = {"k": 64, "n": 96, "ramp_m": 32, "duty_m": (8, 32)}
BURST_CALLS = 5


class Sampler:
    """SM clock (MHz) and board power (W) every `period_s` in a thread, through NVML where it is installed."""

    def __init__(self, period_s: float = 0.002) -> None:
        self.period_s, self.rows, self._stop = period_s, [], threading.Event()
        self.handle, self.t0 = None, time.perf_counter()
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        except Exception:  # noqa: BLE001 - no NVML (CPU path, or a build without it): no clock rows
            self.nvml = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            nv, h = self.nvml, self.handle
            mhz = nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)
            watts = nv.nvmlDeviceGetPowerUsage(h) / 1000.0
            self.rows.append((time.perf_counter() - self.t0, mhz, watts))
            time.sleep(self.period_s)

    def __enter__(self) -> Sampler:
        self.t0 = time.perf_counter()
        if self.handle is not None:
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join()

    def between(self, t0: float, t1: float) -> tuple[float | None, float | None]:
        """Median SM clock and power over [t0, t1) seconds since the sampler started."""
        sel = sorted((r[1], r[2]) for r in self.rows if t0 <= r[0] < t1)
        if not sel:
            return None, None
        mid = sel[len(sel) // 2]
        return float(mid[0]), float(sorted(s[1] for s in sel)[len(sel) // 2])


def timed_calls(fn, copy, seconds: float, dev: str) -> list[tuple[float, float]]:
    """(start offset s, GEMM seconds) of each call of `fn` (each followed by `copy` if given) for `seconds`; the
    offset is device time since the first call began (CUDA events), host time on the CPU."""
    out, t0 = [], time.perf_counter()
    cuda = dev == "cuda"
    if cuda:
        start = torch.cuda.Event(enable_timing=True)
        start.record()
    while time.perf_counter() - t0 < seconds:
        batch = []
        for _ in range(8):  # record events in small batches: the host stays ahead of the device
            if cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
            else:
                s = time.perf_counter()
                fn()
                a, b = s, time.perf_counter()
            if copy is not None:
                copy()
            batch.append((a, b))
        if cuda:
            torch.cuda.synchronize()
        for a, b in batch:
            if cuda:
                out.append((start.elapsed_time(a) / 1e3, a.elapsed_time(b) / 1e3))
            else:
                out.append((a - t0, b - a))
    return out


def idle(seconds: float, dev: str) -> None:
    if dev == "cuda":
        torch.cuda.synchronize()
    time.sleep(seconds)


def ramp(x, w, seconds: float, sampler: Sampler, dev: str) -> dict:
    idle(1.0 if dev == "cuda" else 0.0, dev)
    t_start = time.perf_counter() - sampler.t0
    calls = timed_calls(lambda: torch.nn.functional.linear(x, w), None, seconds, dev)
    flops = 2.0 * x.shape[0] * x.shape[1] * w.shape[0]
    rows = []
    edges = [0.0, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 1e9]
    for lo, hi in zip(edges, edges[1:]):
        sel = [s for at, s in calls if lo <= at < hi]
        if sel:
            mhz, watts = sampler.between(t_start + lo, t_start + hi)
            rows.append(
                {
                    "from_s": lo,
                    "to_s": hi,
                    "calls": len(sel),
                    "tflops": flops / statistics.median_high(sel) / 1e12,
                    "sm_mhz": mhz,
                    "w": watts,
                }
            )
    return {"m": x.shape[0], "k": x.shape[1], "n": w.shape[0], "calls": calls, "windows": rows}


def copy_for(seconds: float, dev: str, rate: float) -> tuple:
    """A device copy taking about `seconds` at `rate` bytes moved a second, and the bytes it copies."""
    n = max(int(seconds * rate / 2), 1024)  # bytes read + written
    src = torch.empty(n, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    return (lambda: dst.copy_(src)), n


def copy_rate(dev: str) -> float:
    """Bytes moved (read + written) per second by a 1 GiB device copy (64 KiB on the CPU)."""
    from engine.kernels import time_copy

    seconds, moved = time_copy((1 << 30) if dev == "cuda" else (1 << 16), dev)
    return moved / seconds


def duty_rows(
    k: int, n: int, ms, window_s: float, peak: float, sampler: Sampler, dev: str, on_row
) -> list[dict]:
    from engine.timing import measure

    g = torch.Generator(device=dev).manual_seed(0)
    dt = torch.bfloat16 if dev == "cuda" else torch.float32
    w = (torch.randn((n, k), device=dev, generator=g) * k**-0.5).to(dt)
    rate = copy_rate(dev)
    rows = []
    for m in ms:
        x = torch.randn((m, k), device=dev, generator=g).to(dt)
        fn = partial(torch.nn.functional.linear, x, w)
        alone = measure(fn, dev, warmup=3, repeat=10)
        flops = 2.0 * m * k * n
        for duty in DUTIES:
            copy, nbytes = (None, 0) if duty >= 1.0 else copy_for(alone * (1 - duty) / duty, dev, rate)
            idle(0.5 if dev == "cuda" else 0.0, dev)
            t_start = time.perf_counter() - sampler.t0
            calls = timed_calls(fn, copy, window_s, dev)
            times = [s for _, s in calls]
            half = [s for at, s in calls if at >= window_s / 2] or times
            mhz, watts = sampler.between(t_start + window_s / 2, t_start + window_s)
            burst, steady = statistics.median_high(times[:BURST_CALLS]), statistics.median_high(half)
            row = {
                "m": m, "k": k, "n": n, "duty": duty, "copy_bytes": nbytes, "calls": len(calls),
                "alone_s": alone, "burst_s": burst, "steady_s": steady,
                "burst_tflops": flops / burst / 1e12, "steady_tflops": flops / steady / 1e12,
                "steady_of_peak": flops / steady / peak, "burst_of_peak": flops / burst / peak,
                "sm_mhz": mhz, "w": watts,
            }  # fmt: skip
            rows.append(row)
            on_row(row)
            log(
                f"m={m} duty={duty}: burst {row['burst_tflops']:.0f} TFLOP/s, steady {row['steady_tflops']:.0f} ({mhz} MHz, {watts} W)"
            )
        del fn, x
    return rows


def table(res: dict) -> str:
    lines = [f"# GEMM rate under sustained load on {res['device']} (torch {res['torch']})", ""]
    lines += [f"`{res['command']}`; bf16 GEMM {res['k']} -> {res['n']}; share of the profile's bf16 peak "
              f"({res['peak_tflops']:.0f} TFLOP/s, `{res['profile']}`).", ""]  # fmt: skip
    if res.get("ramp"):
        r = res["ramp"]
        lines += [f"## Ramp: {r['m']} rows back to back after an idle second", ""]
        lines += [
            "| from s | to s | calls | TFLOP/s | of peak | SM MHz | W |",
            "|---|---|---|---|---|---|---|",
        ]
        for w in r["windows"]:
            lines.append(
                f"| {w['from_s']:g} | {w['to_s']:g} | {w['calls']} | {w['tflops']:.0f} | {w['tflops'] * 1e12 / res['peak']:.3f} "
                f"| {w['sm_mhz'] if w['sm_mhz'] is not None else '—'} | {w['w'] if w['w'] is not None else '—'} |"
            )
        lines.append("")
    if res.get("duty"):
        lines += ["## Duty cycle: the GEMM, then a copy taking (1 − duty) of the pattern", ""]
        lines += [
            "| rows | duty | GEMM alone µs | burst TFLOP/s | steady TFLOP/s | steady of peak | steady / burst | SM MHz | W |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for d in res["duty"]:
            lines.append(
                f"| {d['m']} | {d['duty']:g} | {d['alone_s'] * 1e6:.1f} | {d['burst_tflops']:.0f} | {d['steady_tflops']:.0f} "
                f"| {d['steady_of_peak']:.3f} | {d['burst_s'] / d['steady_s']:.3f} | {d['sm_mhz'] or '—'} | {d['w'] or '—'} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for gemm_clocks.json / .md")
    p.add_argument(
        "--profile", default="h200", help="the profile whose bf16 peak the shares are of (default h200)"
    )
    p.add_argument(
        "--ramp-s", type=float, default=3.0, help="seconds of back-to-back GEMMs in the ramp (default 3)"
    )
    p.add_argument("--window-s", type=float, default=0.4, help="seconds per duty-cycle pattern (default 0.4)")
    device_args(p, "toy shapes (with --cpu)")
    a = p.parse_args(argv)
    dev = pick_device(a, paired=True)
    if dev is None:
        return 2
    from core.errors import ConfigError
    from core.hardware import load_profile

    try:
        prof = load_profile(a.profile)
    except ConfigError as e:
        print(f"error: --profile: {e}", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    k, n = (TINY["k"], TINY["n"]) if a.tiny else (K, N)
    peak = prof.peak_flops("bf16")
    res = {
        "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
        "torch": torch.__version__,
        "command": "python benchmarks/gemm_clocks.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "profile": a.profile, "peak": peak, "peak_tflops": peak / 1e12, "k": k, "n": n,
    }  # fmt: skip

    def save() -> None:
        (out / "gemm_clocks.json").write_text(json.dumps(res, indent=1))
        (out / "gemm_clocks.md").write_text(table(res))

    window = a.window_s if dev == "cuda" else 0.05
    with Sampler() as sampler:
        g = torch.Generator(device=dev).manual_seed(1)
        dt = torch.bfloat16 if dev == "cuda" else torch.float32
        m = TINY["ramp_m"] if a.tiny else RAMP_M
        x = torch.randn((m, k), device=dev, generator=g).to(dt)
        w = (torch.randn((n, k), device=dev, generator=g) * k**-0.5).to(dt)
        torch.nn.functional.linear(x, w)  # cuBLAS's first-call set-up outside the ramp
        log(f"ramp: {m} x {k} -> {n} for {a.ramp_s if dev == 'cuda' else 0.05} s")
        res["ramp"] = ramp(x, w, a.ramp_s if dev == "cuda" else 0.05, sampler, dev)
        del x, w
        save()
        res["duty"] = []
        ms = TINY["duty_m"] if a.tiny else DUTY_M
        duty_rows(k, n, ms, window, peak, sampler, dev, lambda r: (res["duty"].append(r), save()))
        res["samples"] = sampler.rows
    save()
    print(table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
