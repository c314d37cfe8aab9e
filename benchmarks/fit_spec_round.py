"""A speculative round's own cost (efficiency.spec_round_s), from the engine's component timings of fit-side rows.

The H200 run (benchmarks/spec_int4_gpu.py) records per speculation row where a round's time goes: the mean
`execute` of a speculative step (host until launched + GPU), the GPU span of the round's graph, the drafting of
step-by-step rounds. Against the cost model's price of the same rounds (k draft steps, then one verification
step of k + 1 positions per sequence, DraftCost + CostModel.step_time) the draft steps are priced right: the GPU
time per further draft step, from k = 4 vs k = 2 at the same load, is 0.73-0.84 ms, the cost model's 0.82-0.84 ms.
What is missing is a fixed part of each round (the verification's k + 1-position step beyond a decode's price,
the round graph's sampling and copies, the host's acceptance work): about 2 ms a round, without a clear trend in
k or in the batch. This takes it as one constant: the mean, over the fit rows (α = 0.6 by default) only, of the
engine's mean round (`rounds.execute_ms`) less the simulator's mean speculative step for the same requests; the
α = 0.8 rows are the check (compare_spec_int4.py's table).

    python benchmarks/fit_spec_round.py benchmarks/results/spec_int4/spec_int4_h200.json \
        --profile hardware_profiles/h200.yaml --date 2026-12-02 [--write]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare_spec_int4 as cmp  # noqa: E402

from core.errors import ConfigError  # noqa: E402
from simulator import replica, speculative  # noqa: E402

FIT_ALPHAS = (0.6,)


def round_gaps(raw: dict, alphas=FIT_ALPHAS) -> list[dict]:
    """Per row with α in `alphas`: the engine's mean speculative step and the simulator's (its own run of the
    row's requests, rounds priced without spec_round_s, so a rerun gives the same value), in seconds."""
    steps: list[float] = []
    orig = replica.Replica._with_drafting
    orig_call = speculative.DraftCost.__call__

    def unfitted(self, n, context):
        return orig_call(self, n, context) - self.round_s

    def traced(self, batch, dt, prefill_s):
        out = orig(self, batch, dt, prefill_s)
        if batch.spec_k:
            steps.append(out[0])
        return out

    out = []
    replica.Replica._with_drafting = traced
    speculative.DraftCost.__call__ = unfitted
    try:
        with tempfile.TemporaryDirectory() as td:
            refs = cmp.resolve(raw, Path(td))
            for rec in raw["spec_rows"]:
                if rec["alpha"] not in alphas or not rec.get("rounds"):
                    continue
                steps.clear()
                cmp.simulate_spec(rec, refs, raw)
                eng = rec["rounds"]["execute_ms"] / 1e3
                out.append(
                    {
                        "row": rec["row"],
                        "engine_s": eng,
                        "sim_s": float(np.mean(steps)),
                        "sim_steps": len(steps),
                    }
                )
    finally:
        replica.Replica._with_drafting = orig
        speculative.DraftCost.__call__ = orig_call
    return out


def write_profile(path: Path, value: float, source: dict) -> None:
    """Set efficiency.spec_round_s (after eager_launch_s_per_layer) and calibration.spec_round_source, leaving
    every other line as it was."""
    import yaml

    lines = path.read_text().splitlines(keepends=True)
    keep = [ln for ln in lines if not ln.startswith("  spec_round_s:")]
    try:
        at = next(i for i, ln in enumerate(keep) if ln.startswith("  eager_launch_s_per_layer:")) + 1
    except StopIteration:
        raise ConfigError(
            f"{path}: no efficiency.eager_launch_s_per_layer to put spec_round_s after"
        ) from None
    keep.insert(at, f"  spec_round_s: {value!r}\n")
    src = yaml.safe_dump({"spec_round_source": source}, sort_keys=False, width=1000)
    start = next((i for i, ln in enumerate(keep) if ln == "  spec_round_source:\n"), None)
    if start is not None:  # replace the previous source block
        end = start + 1
        while end < len(keep) and keep[end].startswith("    "):
            end += 1
        del keep[start:end]
    keep += ["  " + ln + "\n" for ln in src.splitlines()]
    path.write_text("".join(keep))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python benchmarks/fit_spec_round.py", description=__doc__.split("\n")[0]
    )
    ap.add_argument("run", help="spec_int4_<profile>.json from benchmarks/spec_int4_gpu.py")
    ap.add_argument("--profile", required=True, help="the profile YAML the run's refs.profile names")
    ap.add_argument("--date", required=True, help="date of the GPU run (YYYY-MM-DD)")
    ap.add_argument(
        "--write", action="store_true", help="write spec_round_s into --profile (else only report)"
    )
    a = ap.parse_args(argv)
    try:
        raw = json.loads(Path(a.run).read_text())
        from core.hardware import read_profile

        current = read_profile(Path(a.profile)).efficiency.spec_round_s
        gaps = round_gaps(raw)
        if not gaps:
            raise ConfigError(f"no speculation rows with α in {FIT_ALPHAS} and round timings in {a.run}")
        for g in gaps:
            print(f"{g['row']}: engine round {g['engine_s'] * 1e3:.2f} ms, simulator {g['sim_s'] * 1e3:.2f} ms "
                  f"({g['sim_steps']} steps) -> {(g['engine_s'] - g['sim_s']) * 1e3:+.2f} ms")  # fmt: skip
        value = float(np.mean([g["engine_s"] - g["sim_s"] for g in gaps]))
        print(f"spec_round_s: {current * 1e3:.3f} -> {value * 1e3:.3f} ms (fit rows: α in {FIT_ALPHAS})")
        if a.write:
            source = {
                "command": f"python benchmarks/fit_spec_round.py {a.run} --profile {a.profile} --date {a.date} --write",
                "run_command": raw.get("command", ""),
                "date": a.date,
                "gpu": raw.get("gpu", ""),
                "file": a.run,
                "fit_rows": [g["row"] for g in gaps],
                "note": "mean of (engine's mean speculative step - simulator's) over the fit rows; the other "
                "alpha's rows are the check (benchmarks/compare_spec_int4.py)",
            }
            write_profile(Path(a.profile), max(value, 0.0), source)
            print(f"wrote efficiency.spec_round_s into {a.profile}")
    except (ConfigError, OSError, KeyError, ValueError) as e:
        print(f"error: {e}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
