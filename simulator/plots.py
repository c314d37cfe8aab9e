"""Matplotlib figures of a forecast: latency CDFs, latency vs load, cost per 1M tokens, KV and queue timelines.

matplotlib is optional (the `report` extra) and imported only when a figure is drawn.
"""

from __future__ import annotations

import io

import numpy as np

from simulator.simulation import Forecast

LATENCIES = (("ttft", "TTFT"), ("tpot", "TPOT"), ("e2e", "end-to-end"))


def _plt():
    try:
        import matplotlib
    except ImportError:
        from core.errors import ConfigError

        raise ConfigError("plots need matplotlib: pip install 'inferplan[report]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def request_latencies(f: Forecast) -> dict[str, np.ndarray]:
    """Per-request TTFT, TPOT and end-to-end latency in seconds (finished requests only)."""
    t = f.table
    done = np.isfinite(t.finish_s)
    outs = t.output_tokens.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(outs > 1, (t.finish_s - t.first_token_s) / (outs - 1), np.nan)
    return {
        "ttft": (t.first_token_s - t.arrival_s)[done],
        "tpot": tpot[done & np.isfinite(tpot)],
        "e2e": (t.finish_s - t.arrival_s)[done],
    }


def timeline(f: Forecast) -> dict[str, np.ndarray]:
    """Sampled queue length, running sequences and KV occupancy over simulated time."""
    if f.stats is None or not f.stats.timeline:
        return {k: np.zeros(0) for k in ("time_s", "waiting", "running", "kv_occupancy")}
    a = np.array(f.stats.timeline, dtype=float)
    return {
        "time_s": a[:, 0],
        "waiting": a[:, 1],
        "running": a[:, 2],
        "kv_occupancy": a[:, 3] / max(f.memory.num_blocks, 1),
    }


def latency_cdfs(f: Forecast):
    """Empirical CDFs of TTFT, TPOT and end-to-end latency, with the SLO targets marked."""
    plt = _plt()
    lat = request_latencies(f)
    slo = f.scenario.slo.model_dump(exclude_none=True)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, (key, label) in zip(axes, LATENCIES):
        x = np.sort(lat[key]) * 1e3
        if len(x):
            ax.plot(x, np.arange(1, len(x) + 1) / len(x), lw=1.6)
        target = slo.get(f"{key}_s")
        if target is not None:
            ax.axvline(target * 1e3, color="crimson", ls="--", lw=1, label=f"SLO {target * 1e3:g} ms")
            ax.legend(fontsize=8, loc="lower right")
        ax.set(xlabel=f"{label} (ms)", ylabel="fraction of requests", title=f"{label} CDF", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def latency_vs_load(curve, title: str = ""):
    """p90 latencies against offered rate (a search.LoadCurve), SLO targets and break points marked."""
    plt = _plt()
    rates = [p.rate_per_s for p in curve.probes]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, (key, label) in zip(axes, LATENCIES):
        ax.plot(rates, [getattr(p, f"{key}_p90_s") * 1e3 for p in curve.probes], "o-", ms=4)
        target = curve.slo.get(f"{key}_s")
        if target is not None:
            ax.axhline(target * 1e3, color="crimson", ls="--", lw=1, label=f"SLO {target * 1e3:g} ms")
            brk = curve.breaks_at.get(f"{key}_s")
            if brk is not None:
                ax.axvline(brk, color="grey", ls=":", lw=1, label=f"breaks at {brk:.3g} req/s")
            ax.legend(fontsize=8, loc="upper left")
        ax.set(xlabel="offered load (req/s)", ylabel=f"{label} p90 (ms)", title=f"{label} p90 vs load")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def cost_bars(f: Forecast):
    """Cost per million input, output and blended tokens, beside the hosted API's prices if given."""
    plt = _plt()
    c = f.summary["cost"]
    labels = ["input", "output", "blended"]
    ours = [c["usd_per_1m_input_tokens"], c["usd_per_1m_output_tokens"], c["usd_per_1m_tokens"]]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    x = np.arange(len(labels))
    api = f.scenario.hosted_api
    w = 0.38 if api else 0.6
    bars = ax.bar(x - (w / 2 if api else 0), ours, w, label="self-hosted (simulated)")
    ax.bar_label(bars, fmt="$%.3f", fontsize=8)
    if api:
        s = f.summary
        tin = s["throughput"]["input_tokens_per_s"]
        tout = s["throughput"]["output_tokens_per_s"]
        blend = (tin * api.usd_per_1m_input + tout * api.usd_per_1m_output) / max(tin + tout, 1e-12)
        b2 = ax.bar(x + w / 2, [api.usd_per_1m_input, api.usd_per_1m_output, blend], w, label=api.name)
        ax.bar_label(b2, fmt="$%.3f", fontsize=8)
    ax.set_xticks(x, labels)
    ax.set(ylabel="USD per 1M tokens", title="cost per million tokens")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def timelines(f: Forecast):
    """KV-cache occupancy and queue length (waiting and running sequences) over simulated time."""
    plt = _plt()
    tl = timeline(f)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 3.4))
    a1.plot(tl["time_s"], tl["kv_occupancy"] * 100, lw=1)
    a1.set(xlabel="time (s)", ylabel="KV blocks used (%)", title="KV-cache occupancy", ylim=(0, 105))
    a2.plot(tl["time_s"], tl["waiting"], lw=1, label="waiting")
    a2.plot(tl["time_s"], tl["running"], lw=1, label="running")
    a2.set(xlabel="time (s)", ylabel="sequences", title="queue length")
    a2.legend(fontsize=8)
    for a in (a1, a2):
        a.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def step_breakdown(bd: dict):
    """Where the time goes: a typical prefill and decode step as stacked bars of operation groups (ms),
    each segment labelled with its share and bound (simulator/breakdown.py)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 3.0))
    colors = {}
    for y, step in enumerate(bd.values()):
        left = 0.0
        for g in sorted(step["groups"], key=lambda g: -g["time_s"]):
            ms = g["time_s"] * 1e3
            c = colors.setdefault(g["label"], f"C{len(colors)}")
            ax.barh(
                y,
                ms,
                left=left,
                color=c,
                label=g["label"] if g["label"] not in ax.get_legend_handles_labels()[1] else None,
            )
            if g["share"] >= 0.12:
                ax.text(
                    left + ms / 2, y, f"{g['share']:.0%} {g['bound']}", ha="center", va="center", fontsize=7
                )
            left += ms
    ax.set_yticks(range(len(bd)), [f"{k} step" for k in bd])
    ax.set(xlabel="ms per step", title="where the time goes")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


def png(fig) -> bytes:
    """The figure as PNG bytes (and closed)."""
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def day_fleet(f: Forecast):
    """Offered load (req/s) and the replicas ready and starting over the run (a schedule or autoscaling)."""
    plt = _plt()
    d = f.day
    h = d.time_s / 3600
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.step(h, d.arrived_per_s, where="post", color="#bbb", lw=0.6, label="arrived")
    ax.step(h, d.offered_per_s, where="post", color="#1f77b4", lw=1.5, label="offered (schedule)")
    ax.set_xlabel("hour")
    ax.set_ylabel("requests / s")
    ax2 = ax.twinx()
    ax2.step(h, d.fleet[:, 0], where="post", color="#d62728", label="ready")
    ax2.step(
        h, d.fleet[:, 0] + d.fleet[:, 1], where="post", color="#ff7f0e", ls="--", label="ready + starting"
    )
    ax2.set_ylabel("replicas")
    ax2.set_ylim(0, max(1, int(d.fleet[:, :2].sum(axis=1).max())) + 1)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig
