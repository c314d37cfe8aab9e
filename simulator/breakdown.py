"""Where the time goes: a typical prefill step and decode step of a forecast, by the cost model's operation
groups (GEMMs, attention, element-wise, communication, host and launch overhead), each with what bounds it."""

from __future__ import annotations

import numpy as np

from core.cost_model import BatchShape, CostModel
from simulator.cluster import plan_groups
from simulator.simulation import Forecast

GROUPS = {
    "gemm": "GEMMs (weights, experts, LM head)",
    "attention_prefill": "attention (prefill)",
    "attention_decode": "attention (decode)",
    "elementwise": "element-wise (norms, residuals, RoPE, activation)",
    "communication": "communication (collectives)",
    "overhead": "per-step overhead (GPU fixed + serving host)",
    "launch_wait": "eager launch wait (host issuing kernels)",
    "host_overlapped": "host work overlapped with GPU work (subtracted)",
}
# A group is bound by a resource when doubling it shortens the group by more than this share, and by the
# larger of the two; below it on both, the group's time is fixed (launches, host, interconnect latency).
BOUND_MIN_SAVING = 0.10


def typical_steps(f: Forecast) -> dict[str, BatchShape]:
    """A prefill step (one fresh median prompt, chunked as the serving settings chunk it) and a decode step
    (the run's mean batch, each sequence at the median prompt plus half the median output)."""
    sv, s = f.scenario.serving, f.summary
    prompt = int(np.median(f.requests.prompt_tokens)) if f.requests is not None and len(f.requests) else 512
    output = int(np.median(f.requests.output_tokens)) if f.requests is not None and len(f.requests) else 128
    chunk = min(prompt, sv.batching.max_num_batched_tokens) if sv.batching.chunked_prefill else prompt
    n = max(1, round(s.get("utilisation", {}).get("mean_batch_seqs", 1.0)))
    window = f.model.sliding_window if f.model.sliding_layers else 0
    cm = _cost_model(f, "prefill")
    return {
        "prefill": BatchShape.of([(chunk, 0)], window=window, fresh=cm.fresh),
        "decode": BatchShape.of([], [prompt + output // 2] * n, window=window),
    }


def _cost_model(f: Forecast, role: str) -> CostModel:
    groups = plan_groups(f.scenario, f.model)
    g = next((g for g in groups if g.role == role), groups[0])  # disaggregated: that pool's GPUs
    return g.cost_model(f.model, f.scenario.workload.moe_routing_skew)


def bound(cm: CostModel, b: BatchShape) -> dict[str, str]:
    """What bounds each group of a step: compute, memory, or fixed (what doubling each would save)."""
    base = cm.breakdown(b)
    faster_c = cm.scaled(compute=2.0).breakdown(b)
    faster_m = cm.scaled(memory=2.0).breakdown(b)
    out = {}
    for k, t in base.items():
        save_c, save_m = t - faster_c[k], t - faster_m[k]
        if k in ("overhead", "launch_wait", "host_overlapped"):
            out[k] = "host/launch"
        elif k == "communication" and t > 0:
            out[k] = "interconnect"
        elif max(save_c, save_m) <= BOUND_MIN_SAVING * t:
            out[k] = "fixed (launch)" if t > 0 else "—"
        else:
            out[k] = "compute" if save_c > save_m else "memory"
    return out


def step_breakdown(f: Forecast) -> dict | None:
    """{"prefill"|"decode": {"shape": …, "total_s": …, "groups": [{group, label, time_s, share, bound}]}},
    or None for a model that does not fit."""
    if not f.fits:
        return None
    out = {}
    for kind, b in typical_steps(f).items():
        cm = _cost_model(f, kind)
        times, bounds = cm.breakdown(b), bound(cm, b)
        total = sum(times.values())
        out[kind] = {
            "shape": (
                {"prompt_tokens": b.prefill_tokens}
                if kind == "prefill"
                else {
                    "sequences": b.decode_seqs,
                    "context_tokens_each": b.decode_context_tokens // b.decode_seqs,
                }
            ),
            "total_s": total,
            "groups": [
                {
                    "group": k,
                    "label": GROUPS.get(k, k),
                    "time_s": t,
                    "share": t / total if total else 0.0,
                    "bound": bounds[k],
                }  # fmt: skip
                for k, t in times.items()
                if t != 0  # (host_overlapped is negative: the host time that ran under GPU work)
            ],
        }
    return out


def breakdown_lines(bd: dict) -> list[str]:
    """The breakdown as a terminal table."""
    lines = []
    for kind, step in bd.items():
        shape = ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in step["shape"].items())
        lines.append(f"typical {kind} step ({shape}): {step['total_s'] * 1e3:,.2f} ms")
        for g in sorted(step["groups"], key=lambda g: -g["time_s"]):
            lines.append(
                f"  {g['label']:<50}  {g['time_s'] * 1e3:>9,.3f} ms  {g['share']:>6.1%}  {g['bound']}"
            )
    return lines


BREAKDOWN_NOTE = (
    "A typical prefill step (one median prompt) and decode step (the run's mean batch at the median context) "
    "by the cost model's operation groups; bound: the resource that, doubled, would shorten the group more "
    "(compute or memory bandwidth), or a fixed time (kernel launches, the serving host, the interconnect)."
)
BREAKDOWN_HEAD = ["step", "operation group", "ms", "share", "bound"]


def breakdown_rows(bd: dict) -> list[list[str]]:
    """The breakdown as table rows (report, app), the longest group of each step first."""
    return [
        [kind, g["label"], f"{g['time_s'] * 1e3:,.3f}", f"{g['share']:.1%}", g["bound"]]
        for kind, step in bd.items()
        for g in sorted(step["groups"], key=lambda g: -g["time_s"])
    ]
