"""A speculation row's rounds, step by step: what each took on the engine beside the simulator's price, by context.

    python benchmarks/spec_round_steps.py benchmarks/results/spec_int4/spec_int4_h200_session21.json \
        --steps benchmarks/results/spec_int4/session21_steps [--out FILE.md]

`benchmarks/spec_int4_gpu.py` writes each speculation row's step trace (`steps_<row>.csv`, engine.serving's trace:
a line a step) beside its JSON. This prices every speculative step that verifies nothing but the round's sequences
(no prompt chunk beside it) as the simulator does, on the same scenario the comparison builds
(`compare_spec_int4.py`): the verification step (`CostModel.step_time` of the step's own shape: k + 1 decode rows a
sequence, row j over its context and the j tokens before it, as engine.speculative.verify_rows runs it) plus the
drafting (`simulator.speculative.DraftCost`: the draft's k steps and the
profile's `spec_round_s`). It prints, by sequences and context per sequence, the median of the engine's loop time a
step (schedule, prepare, execute, record) beside that price. No device needed.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

import _checkout  # noqa: F401  (the checkout's root on sys.path)
import compare_spec_int4 as csi
import fidelity as fd
import numpy as np
import spec_int4_gpu as gpu

from core.cost_model import BatchShape
from core.requests import Requests
from simulator.simulation import simulate

CONTEXT_BINS = (0, 300, 1000, 2000, 3000, 5000, 1 << 30)
MIN_STEPS = 3  # a bucket with fewer steps is left out


def row_pricer(rec: dict, refs: dict, raw: dict):
    """The simulator's cost model and drafting cost for one speculation row (its scenario as the comparison's)."""
    base = fd.Row(refs["model"], "bf16", "conversation", rec["load"])
    sr = gpu.SpecRow(rec["alpha"], rec["k"], rec["load"])
    sc = fd.scenario_for(base, rec["rate_per_s"], rec["duration_s"], refs["profile"], refs["model"],
                         rec["gpu_memory_utilization"])  # fmt: skip
    sc = gpu.spec_scenario(sc, sr, refs["draft"], raw["spec_max_batch"], raw.get("round_graphs", False))
    r = rec["requests"]
    one = Requests(
        np.array(r["arrival_s"][:1]), np.array(r["prompt_tokens"][:1]), np.array(r["output_tokens"][:1])
    )
    replica = simulate(sc, requests=one).engines[0]  # one request: only its cost objects are wanted
    return replica.cost, replica.draft_time


def round_steps(path: Path, cost, draft, k: int) -> np.ndarray:
    """[sequences, context a sequence, engine loop s, price s] of the trace's speculative steps without prompts.
    Their shape is the verification's k + 1 decode rows a sequence (core.scheduler: row j over its context and the
    j tokens before it), so a sequence's context is recovered from the rows' total."""
    out, q = [], k + 1
    with path.open() as f:
        for s in csv.DictReader(f):
            n = int(float(s["spec_seqs"]))
            if not n or int(float(s["prefill_seqs"])):
                continue
            rows, rows_ctx = int(float(s["decode_seqs"])), int(float(s["decode_context_tokens"]))
            shape = BatchShape(decode_seqs=rows, decode_context_tokens=rows_ctx, logits_tokens=rows)
            ctx = (
                rows_ctx - n * q * (q - 1) // 2
            ) // q  # the sequences' contexts with their new token, in all
            loop = sum(float(s[c]) for c in ("schedule_s", "prepare_s", "execute_s", "record_s"))
            out.append((n, ctx / n, loop, cost.step_time(shape) + draft(n, ctx)))
    return np.array(out, float).reshape(-1, 4)


def table(raw: dict, steps_dir: Path, src: str) -> str:
    refs = csi.resolve(raw, Path(tempfile.mkdtemp()))
    lines = [
        f"# Speculative rounds by context ({raw.get('profile', '?')})",
        "",
        f"`python benchmarks/spec_round_steps.py {src} --steps {steps_dir}`; steps that verify the round's sequences "
        "only; medians; price = the simulator's verification step + drafting (incl. spec_round_s).",
        "",
        "| row | sequences | context a sequence | steps | engine ms | price ms | price / engine − 1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for rec in raw["spec_rows"]:
        path = steps_dir / f"steps_{rec['row']}.csv"
        if not path.exists():
            continue
        cost, draft = row_pricer(rec, refs, raw)
        a = round_steps(path, cost, draft, rec["k"])
        for n in sorted({int(x) for x in a[:, 0]}):
            for lo, hi in zip(CONTEXT_BINS, CONTEXT_BINS[1:]):
                m = (a[:, 0] == n) & (a[:, 1] >= lo) & (a[:, 1] < hi)
                if m.sum() < MIN_STEPS:
                    continue
                eng, price = np.median(a[m, 2]), np.median(a[m, 3])
                span = f"{lo}-{hi}" if hi < CONTEXT_BINS[-1] else f"{lo}+"
                lines.append(f"| {rec['row']} | {n} | {span} | {int(m.sum())} | {eng * 1e3:.2f} | {price * 1e3:.2f} "
                             f"| {price / eng - 1:+.1%} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("raw", type=Path, help="spec_int4_gpu.py's JSON")
    ap.add_argument(
        "--steps", type=Path, help="the folder of its steps_<row>.csv (default: the JSON's folder)"
    )
    ap.add_argument("--out", type=Path, help="also write the table here")
    args = ap.parse_args(argv)
    steps_dir = args.steps or args.raw.parent
    try:
        raw = json.loads(args.raw.read_text())
    except (OSError, ValueError) as e:
        print(f"error: {args.raw}: {e}; pass spec_int4_gpu.py's JSON", file=sys.stderr)
        return 2
    if not any((steps_dir / f"steps_{r['row']}.csv").exists() for r in raw.get("spec_rows", [])):
        print(f"error: --steps {steps_dir}: no steps_<row>.csv of this run's rows; pass the folder the run wrote them "
              "to (spec_int4_gpu.py writes them beside its JSON)", file=sys.stderr)  # fmt: skip
        return 2
    text = table(raw, steps_dir, str(args.raw))
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
