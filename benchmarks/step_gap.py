"""A CUDA-graph step's GPU time outside its kernels, measured: efficiency.step_overhead_s and per_sequence_s.

    python benchmarks/step_gap.py benchmarks/results/engine_kernels_h200/kernel_profile_2026-12-03c.json \
        --profile hardware_profiles/h200.yaml [--write]

`benchmarks/kernel_profile.py` times each case's step through the serving runner's CUDA graph ("served") and,
run eagerly under torch.profiler, sums its kernels' device time. For a dense model's decode step both run the
same kernels, so served − kernel sum is what a replay spends between and around them: the step's fixed GPU
cost beside the operation groups, which the cost model adds as `step_overhead_s + per_sequence_s · sequences`.
Calibration fits those two on its whole steps with everything else (stage 2), where a constant cannot be told
from a bias of the groups' curves; here they are measured: the least-squares line of the gap over the
sequences in the step (both clipped at 0). MoE and MLA cases are left out (eager and graphed steps can pick
different kernels for them) but shown.

Writes `benchmarks/results/step_gap_<profile>.md`: per case the served step, the kernel sum, the gap, and the
kernels' time by group beside the cost model's (the committed profile's, before any --write). With --write,
sets the two efficiencies and `calibration.step_overhead_source` in --profile, every other line as it was.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import _checkout  # noqa: F401  (the checkout's root on sys.path)
import numpy as np
from kernel_profile import CASES

from calibrate.accounting import step_shape
from calibrate.group_from_run import write_terms
from core.cost_model import BatchShape, CostModel
from core.errors import ConfigError
from core.graphs import SERVING_GRAPHS
from core.hardware import read_profile
from core.model_spec import load_model

RESULTS = Path(__file__).resolve().parent / "results"
SHAPES = {c[0]: c[1:] for c in CASES}


def kernel_group(name: str) -> str:
    """A kernel's operation group, from its name: GEMMs (cuBLAS, CUTLASS, the engine's GEMV / int4 / MoE
    kernels), attention (FlashAttention, the engine's decode and MLA kernels), the rest element-wise."""
    k = name.lower()
    if "flash" in k or "mla_prefill" in k:
        return "attention"
    if any(x in k for x in ("decode_attn", "combine", "mla_decode")):
        return "attention"
    if any(x in k for x in ("nvjet", "cutlass", "gemv", "_w4_", "tinygemm", "moe_gemm", "splitk", "gemm")):
        return "gemm"
    return "elementwise"


def shape_of(cm: CostModel, kind: str, shape: list) -> BatchShape:
    """A kernel_profile case's step as calibration prices its whole steps (calibrate.accounting.step_shape)."""
    if kind == "decode":
        return step_shape(cm, "step_decode", {"context_lens": list(shape)})
    if kind == "prefill":
        return step_shape(cm, "step_prefill", {"prompt_lens": [int(shape[0])], "prior_lens": [0]})
    chunks = [[int(n), int(p)] for n, p in shape if n > 1]
    return step_shape(
        cm, "step_mixed", {"chunks": chunks, "decode_context_lens": [int(p) for n, p in shape if n == 1]}
    )


def case_rows(run: dict, profile) -> list[dict]:
    """Per case: sequences, served step, kernel sum, gap, and kernels vs cost model by group (ms)."""
    out = []
    for name, c in run["cases"].items():
        if name not in SHAPES or "served_step_s" not in c:
            continue
        model, dtype, kind, shape = SHAPES[name]
        spec = load_model(model)
        # the served (graphed) step's own kernels where the run profiled them (session 18 on), else the eager step's
        served = "served_kernel_sum_us" in c
        top, total = (
            (c["served_top"], c["served_kernel_sum_us"]) if served else (c["top"], c["kernel_sum_us"])
        )
        by: dict[str, float] = {}
        for t in top:
            g = kernel_group(t["kernel"])
            by[g] = by.get(g, 0.0) + t["us_per_step"] / 1e3
        by["elementwise"] = by.get("elementwise", 0.0) + (total - sum(t["us_per_step"] for t in top)) / 1e3
        cm = CostModel(profile, spec, dtype, "bf16", graph_padding=SERVING_GRAPHS, serving_host=False)
        parts = cm.breakdown(shape_of(cm, kind, shape))
        priced = {"gemm": parts["gemm"], "attention": parts["attention_prefill"] + parts["attention_decode"],
                  "elementwise": parts["elementwise"], "overhead": parts.get("overhead", 0.0)}  # fmt: skip
        out.append({"case": name, "model": model, "dtype": dtype, "kind": kind, "seqs": len(shape),
                    "served_ms": c["served_step_s"] * 1e3, "kernels_ms": total / 1e3, "kernels_of": served,
                    "gap_ms": c["served_step_s"] * 1e3 - total / 1e3,
                    "measured": by, "priced": {k: v * 1e3 for k, v in priced.items()},
                    "priced_ms": sum(parts.values()) * 1e3,
                    "used": kind == "decode" and not spec.is_moe and not spec.is_mla})  # fmt: skip
    return out


def fit_gap(rows: list[dict]) -> tuple[float, float]:
    """(step s, per-sequence s): the least-squares line of the used cases' gaps over their sequences, each ≥ 0."""
    used = [r for r in rows if r["used"]]
    if len(used) < 2:
        raise ConfigError(
            "fewer than two dense decode cases with a served time in the run; rerun kernel_profile.py"
        )
    n = np.array([r["seqs"] for r in used], float)
    gap = np.array([r["gap_ms"] for r in used], float) / 1e3
    if np.ptp(n) == 0:
        return max(float(gap.mean()), 0.0), 0.0
    slope, icpt = np.polyfit(n, gap, 1)
    if slope < 0:  # no growth with the batch: the mean gap is the constant
        return max(float(gap.mean()), 0.0), 0.0
    return max(float(icpt), 0.0), float(slope)


def fitted_line(step_s: float, seq_s: float) -> str:
    """The table's sentence on the fitted gap (none where the run has fewer than two dense decode cases)."""
    if np.isnan(step_s):
        return "No line fitted: the run has fewer than two dense decode cases (the profile's step term is priced)."
    return f"Fitted on the dense decode cases (used): {step_s * 1e6:.0f} µs a step + {seq_s * 1e6:.2f} µs a sequence."


def table(rows: list[dict], run_file: str, profile_name: str, step_s: float, seq_s: float) -> str:
    lines = [f"# GPU time of a CUDA-graph step outside its kernels ({profile_name})", "",
             f"`python benchmarks/step_gap.py {run_file} --profile ...`; the served step (CUDA graph) and its "
             "kernels' device time (torch.profiler: the graph replay's own kernels where the run has them, marked "
             "g, else the same step run eagerly) from `benchmarks/kernel_profile.py`; the cost model's "
             f"groups with the profile as it was. {fitted_line(step_s, seq_s)}", "",
             "| case | seqs | used | served ms | kernels ms | gap ms | GEMMs meas / priced | attention meas / priced "
             "| element-wise meas / priced | priced overhead | priced step (no host) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        m, p = r["measured"], r["priced"]
        err = r["priced_ms"] / r["served_ms"] - 1
        lines.append(f"| {r['case']} | {r['seqs']} | {'yes' if r['used'] else ''} | {r['served_ms']:.2f} | "
                     f"{r['kernels_ms']:.2f}{' g' if r['kernels_of'] else ''} | {r['gap_ms']:+.2f} | {m.get('gemm', 0):.2f} / {p['gemm']:.2f} | "
                     f"{m.get('attention', 0):.2f} / {p['attention']:.2f} | {m.get('elementwise', 0):.2f} / "
                     f"{p['elementwise']:.2f} | {p['overhead']:.2f} | {r['priced_ms']:.2f} ({err:+.1%}) |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/step_gap.py", description=__doc__.split("\n")[0])
    ap.add_argument(
        "run", help="kernel_profile.json from benchmarks/kernel_profile.py (with served step times)"
    )
    ap.add_argument("--profile", required=True, help="the GPU's profile YAML (the run's GPU)")
    ap.add_argument("--date", help="date of the GPU run (YYYY-MM-DD; with --write)")
    ap.add_argument("--write", action="store_true", help="write the two efficiencies into --profile")
    ap.add_argument(
        "--out", default=None, help="the table (default benchmarks/results/step_gap_<profile>.md)"
    )
    a = ap.parse_args(argv)
    try:
        if a.write and not a.date:
            raise ConfigError("--write needs --date (the GPU run's date, YYYY-MM-DD)")
        run = json.loads(Path(a.run).read_text())
        profile = read_profile(Path(a.profile))
        want = (profile.calibration.gpu if profile.calibration else "") or ""
        if want and run.get("device") and run["device"] not in want:
            raise ConfigError(
                f"{a.run}: measured on {run['device']}, but {a.profile} is {want}; use that GPU's run"
            )
        rows = case_rows(run, profile)
        if a.write or sum(r["used"] for r in rows) >= 2:
            step_s, seq_s = fit_gap(rows)
        else:  # a run of other cases (mixed steps, MoE): the table alone
            step_s = seq_s = float("nan")
        text = table(rows, a.run, profile.name, step_s, seq_s)
        out = Path(a.out) if a.out else RESULTS / f"step_gap_{profile.name}.md"
        out.write_text(text)
        print(text)
        e = profile.efficiency
        if not np.isnan(step_s):
            print(f"step_overhead_s {e.step_overhead_s * 1e6:.1f} -> {step_s * 1e6:.1f} µs; "
                  f"per_sequence_s {e.per_sequence_s * 1e6:.2f} -> {seq_s * 1e6:.2f} µs")  # fmt: skip
        if a.write:
            used = [r["case"] for r in rows if r["used"]]
            source = {"command": f"python benchmarks/step_gap.py {a.run} --profile {a.profile} --date {a.date} --write",
                      "date": a.date, "gpu": run.get("device", ""), "torch": run.get("torch", ""), "file": a.run,
                      "cases": used, "note": "served CUDA-graph step minus its kernels' device time, least-squares "
                      "line over the sequences in the step (measured, not fitted with the curves)"}  # fmt: skip
            write_terms(
                Path(a.profile),
                {"step_overhead_s": step_s, "per_sequence_s": seq_s},
                "step_overhead_source",
                source,
            )
            print(f"wrote efficiency.step_overhead_s and per_sequence_s into {a.profile}")
    except (ConfigError, OSError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
