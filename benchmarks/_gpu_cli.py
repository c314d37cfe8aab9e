"""The device arguments every GPU script here shares: `--cpu --tiny` runs the same code on toy configs (Triton
interpreted), and without `--cpu` a machine with no CUDA device gets one line naming that path; and their
timestamped progress line (`log`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def log(msg: str) -> None:
    """One progress line, timestamped and flushed (a device run's output arrives as it goes)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def device_args(p: argparse.ArgumentParser, tiny_help: str) -> None:
    p.add_argument("--cpu", action="store_true", help="run on the CPU (Triton interpreted); with --tiny")
    p.add_argument("--tiny", action="store_true", help=tiny_help)


def pick_device(args: argparse.Namespace, paired: bool = False) -> str | None:
    """ "cpu" or "cuda"; None after one line on stderr when the run cannot go ahead (`paired`: --cpu and --tiny
    must come together, full-size models needing the GPU)."""
    if paired and args.cpu != args.tiny:
        print("error: --cpu and --tiny go together (full-size models need the GPU)", file=sys.stderr)
        return None
    dev = "cpu" if args.cpu else "cuda"
    if dev == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device; run with --cpu --tiny for the pipeline check", file=sys.stderr)
        return None
    return dev


def command_line(script: str, argv: list[str] | None) -> str:
    """The command a run was given, for its tables: `python benchmarks/<script>` and its arguments."""
    return f"python benchmarks/{script} " + " ".join(argv if argv is not None else sys.argv[1:])


def write_report(out: Path, stem: str, raw: dict, text: str) -> None:
    """`<stem>.json` (everything measured) and `<stem>.md` (its tables) under `out`."""
    (out / f"{stem}.json").write_text(json.dumps(raw, indent=1))
    (out / f"{stem}.md").write_text(text)


def open_report(
    out: Path, stem: str, script: str, argv: list[str] | None, dev: str, fresh: bool
) -> tuple[Path, dict]:
    """(the folder, made; the run's record): what an earlier run left in `<stem>.json` there (unless `fresh`), so a
    resumed run keeps it, stamped with this run's command, torch and device."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}.json"
    raw: dict = json.loads(path.read_text()) if path.exists() and not fresh else {}
    raw.update(command=command_line(script, argv), torch=torch.__version__,
               device=torch.cuda.get_device_name() if dev == "cuda" else "cpu")  # fmt: skip
    return out, raw
