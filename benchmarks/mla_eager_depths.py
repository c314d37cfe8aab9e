"""An MLA model's eager steps at several depths: is the host's launch time a layer the same at every depth?

    python benchmarks/mla_eager_depths.py --out $OUT/depths                 # on the GPU (about 3 min on an H200)
    python benchmarks/mla_eager_depths.py --out /tmp/d --cpu --tiny          # the same code on a toy (CPU)

Calibration prices DeepSeek-V2-Lite's eager steps (prompt chunks past the absorbed form's limit, run eagerly in the
plain form) at `eager_launch_mla_s_per_layer`, the slope of their median launch time between a 2- and a 6-layer
build (calibrate.serving.measure_mla_eager). The fidelity row's eager steps, on the 27-layer model, launched in
about 2.1 ms a layer where that slope read 2.97-3.44 ms. This runs the same measurement at more depths, the
model's own among them (`--depths`, default 2 6 14 27), and prints each depth's median launch and GPU time, and
the slope between each pair of neighbours and between the ends. Writes mla_eager_depths.json and .md under --out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import _checkout  # noqa: F401  (the checkout's root on sys.path)
import torch
from _gpu_cli import command_line, device_args, log, pick_device, write_report

from calibrate.serving import measure_mla_eager

DEPTHS = (2, 6, 14, 27)
TINY_DEPTHS = (2, 3)


def table(raw: dict) -> str:
    depths = sorted(int(d) for d in raw["median_s"])
    lines = [
        f"# MLA eager steps by depth ({raw['device']})",
        "",
        f"`{raw['command']}`; calibrate.serving.measure_mla_eager at each depth (prompt chunks past the absorbed "
        f"form's limit beside 8-64 decodes, after 20 decode-graph steps each; {raw['steps']} steps in all), medians.",
        "",
        "| layers | launch ms | GPU ms | launch slope from the previous depth, ms a layer |",
        "|---|---|---|---|",
    ]
    prev = None
    for d in depths:
        launch, gpu = raw["median_s"][str(d)], raw["gpu_s"][str(d)]
        slope = f"{(launch - raw['median_s'][str(prev)]) / (d - prev) * 1e3:.3f}" if prev is not None else "-"
        lines.append(f"| {d} | {launch * 1e3:.2f} | {gpu * 1e3:.2f} | {slope} |")
        prev = d
    lines += [
        "",
        f"Slope between {depths[0]} and {depths[-1]} layers: {raw['per_layer_s'] * 1e3:.3f} ms a layer.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--depths", type=int, nargs="+", help=f"layers of each build (default {DEPTHS})")
    device_args(ap, "a toy MLA model (calibrate.serving.TINY_MLA_CONFIG) instead of DeepSeek-V2-Lite")
    args = ap.parse_args(argv)
    dev = pick_device(args, paired=True)
    if dev is None:
        return 2
    depths = tuple(sorted(set(args.depths or (TINY_DEPTHS if args.tiny else DEPTHS))))
    if len(depths) < 2 or depths[0] < 1:
        print(
            "error: --depths needs two or more layer counts of at least 1 (e.g. --depths 2 6 27)",
            file=sys.stderr,
        )
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    got = measure_mla_eager(dev, log=log, depths=depths)
    raw = {
        "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
        "command": command_line("mla_eager_depths.py", argv),
        **{k: ({str(d): v for d, v in got[k].items()} if isinstance(got[k], dict) else got[k]) for k in got},
    }
    write_report(args.out, "mla_eager_depths", raw, table(raw))
    print(table(raw))
    return 0


if __name__ == "__main__":
    sys.exit(main())
