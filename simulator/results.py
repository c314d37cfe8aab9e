"""Result files a user owns: summary.json, requests.csv (one row per request), timeline.csv, and the text table."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import yaml

from simulator.breakdown import breakdown_lines, step_breakdown
from simulator.day import day_lines
from simulator.deploy import vllm_serve
from simulator.engines import engine_line, engine_profile
from simulator.metrics import LATENCIES, capacity_line
from simulator.output import ResultFolder
from simulator.simulation import Forecast


def write_results(f: Forecast, out: str | Path | ResultFolder) -> Path:
    """Write the forecast's files into `out`, replacing the folder whole; returns the folder.

    Given a ResultFolder already entered (the CLI takes the lock before simulating), the files go into
    its work folder and the caller commits; given a path, this writes and commits on its own.
    """
    if not isinstance(out, ResultFolder):
        with ResultFolder(out, "output.dir") as folder:
            write_results(f, folder)
            folder.commit()
        return folder.path
    d = out.work
    (d / "scenario.yaml").write_text(yaml.safe_dump(f.scenario.model_dump(mode="json"), sort_keys=False))
    (d / "summary.json").write_text(json.dumps(_clean(f.summary), indent=2) + "\n")
    if f.table is not None and f.scenario.output.per_request_csv:
        t = f.table
        with np.errstate(invalid="ignore"):
            cols = {
                "request_id": np.arange(len(t)),
                "replica": t.replica,
                "arrival_s": t.arrival_s,
                "prompt_tokens": t.prompt_tokens,
                "output_tokens": t.output_tokens,
                "scheduled_s": t.scheduled_s,
                "first_token_s": t.first_token_s,
                "finish_s": t.finish_s,
                "ttft_s": t.first_token_s - t.arrival_s,
                "tpot_s": np.where(
                    t.output_tokens > 1,
                    (t.finish_s - t.first_token_s) / np.maximum(t.output_tokens - 1, 1),
                    np.nan,
                ),
                "e2e_s": t.finish_s - t.arrival_s,
                "preemptions": t.preemptions,
                "class_id": t.class_id,
                "cached_tokens": t.cached_tokens,
                "rejected": t.rejected.astype(int),
            }
        _write_csv(d / "requests.csv", cols)
    if f.stats is not None and f.stats.timeline:
        arr = np.array(f.stats.timeline)
        names = ["time_s", "waiting", "running", "kv_blocks_used", "batch_seqs"]
        cols = {n: arr[:, i] if i == 0 else arr[:, i].astype(np.int64) for i, n in enumerate(names)}
        cols["kv_occupancy"] = arr[:, 3] / max(f.memory.num_blocks, 1)
        _write_csv(d / "timeline.csv", cols)
    if f.day is not None:  # the offered load and the fleet, beside each other
        rec = f.day
        cols = {"time_s": rec.time_s, "offered_per_s": rec.offered_per_s, "arrived_per_s": rec.arrived_per_s}
        cols |= {k: rec.fleet[:, i].astype(np.int64) for i, k in enumerate(("ready", "starting", "draining"))}
        _write_csv(d / "day_timeline.csv", cols)
    return out.path


# rows formatted at a time, so a fleet's 72 million rows never sit in memory as text (byte-equal to formatting
# them whole: tests/simulator/test_results_csv.py)
CSV_CHUNK_ROWS = 500_000


def _write_csv(path: Path, cols: dict[str, np.ndarray], chunk_rows: int = CSV_CHUNK_ROWS) -> None:
    names = list(cols)
    fmts = ["%d" if np.issubdtype(np.asarray(c).dtype, np.integer) else "%.6f" for c in cols.values()]
    n = len(next(iter(cols.values()))) if cols else 0
    with path.open("w") as f:
        f.write(",".join(names) + "\n")
        for lo in range(0, n, chunk_rows):
            data = np.column_stack([np.asarray(c[lo : lo + chunk_rows], dtype=float) for c in cols.values()])
            buf = io.StringIO()
            np.savetxt(buf, data, delimiter=",", fmt=fmts)
            # NaN renders as 'nan'; empty cells read better in spreadsheets
            f.write(("\n" + buf.getvalue()).replace(",nan", ",").replace("\nnan,", "\n,")[1:])


def _clean(x):
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def _rate(x: float | None) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:,.1f}"


def _ms(x: float) -> str:
    return "—" if x is None or not math.isfinite(x) else (f"{x * 1e3:,.1f}" if x < 100 else f"{x * 1e3:,.0f}")


def _latency(x: float) -> str:
    """A latency with its unit: ms below 10 s, seconds above (a cell of the latency table)."""
    if x is None or not math.isfinite(x):
        return "—"
    return f"{x * 1e3:,.1f} ms" if x < 10 else f"{x:,.1f} s" if x < 1e4 else f"{x:,.0f} s"


def rejected_reasons(s: dict) -> str:
    """'200 longer than max model len, 3 queue full': why requests were rejected ('' when none were)."""
    reasons = {k: v for k, v in s.get("rejected_reasons", {}).items() if v}
    return ", ".join(f"{n:,} {why.replace('_', ' ')}" for why, n in reasons.items())


def stability_lines(s: dict) -> list[str]:
    """The stability verdict for a terminal (an OVERLOADED line with offered and sustained rates)."""
    st = s.get("stability")
    if not st:
        return []
    if st["verdict"] == "stable":
        return [f"stable: {st['reason']}"]
    if st["verdict"] == "overloaded":
        return [
            f"OVERLOADED: {st['reason']}",
            "  the queue grows without bound: the latency percentiles below only measure how long the run was",
        ]
    return [f"stability inconclusive: {st['reason']}"]


def _latency_table(lat: dict) -> list[str]:
    # two spaces before every cell, whatever its width: huge values never run together
    quantiles = ("p50", "p90", "p99", "mean")
    lines = [f"{'latency':<14}" + "".join(f"  {q:>12}" for q in quantiles)]
    for key, label in LATENCIES:
        lines.append(f"{label:<14}" + "".join(f"  {_latency(lat[key][q]):>12}" for q in quantiles))
    return lines


def _feature_lines(s: dict) -> list[str]:
    """Prefix cache, traffic classes and the hosted API, where the scenario has them."""
    lines = []
    pc, c = s.get("prefix_cache", {}), s["cost"]
    if pc.get("enabled"):
        lines.append(
            f"prefix cache: {pc['hit_rate']:.1%} of prompt tokens served from cache "
            f"({pc['prefill_tokens_saved']:,} prefill tokens saved, {pc['evicted_blocks']:,} blocks evicted)"
        )
    for name, k in s.get("classes", {}).items():
        lines.append(
            f"  class {name}: {k['finished']:,} finished, TTFT p50/p99 {_ms(k['ttft']['p50'])}/{_ms(k['ttft']['p99'])} ms, "
            f"TPOT p50 {_ms(k['tpot']['p50'])} ms, goodput {k['goodput_fraction']:.1%}"
        )
    if "hosted_api" in c:
        h = c["hosted_api"]
        lines.append(
            f"vs {h['name']}: the same tokens cost ${h['same_tokens_usd']:.2f} there, ${c['total_usd']:.2f} self-hosted "
            f"({h['self_hosted_over_api']:.2f}×)"
        )
    return lines


def format_summary(f: Forecast) -> str:
    """A terminal table of the forecast."""
    s = f.summary
    hw, m = s["hardware"], s["model"]
    cal = "calibrated" if hw["calibrated"] else hw.get("profile_status", "datasheet")
    lines = [
        f"{s['scenario']}: {m['name']} ({m['params'] / 1e9:.1f}B, weights {m['weight_dtype']}, KV {m['kv_dtype']})"
        f" on {hw['gpus']}× {hw['display_name']} [{cal} profile]",
    ]
    for key in ("format_note", "kv_format_note"):
        if hw.get(key):
            lines.append(f"note: {hw[key]}")
    lines.append(engine_line(engine_profile(f.scenario), hw["gpu"]))
    if "expected_error" in s:
        lines.append(s["expected_error"]["line"])
    if not s["fits"]:
        lines.append(f"DOES NOT FIT: {s['memory']['explain']}")
        return "\n".join(lines)
    mem = s["memory"]
    lines.append(f"memory per GPU: {mem['explain']}")
    r = s["requests"]
    lines.append(
        f"requests: {r['total']:,} total, {r['finished']:,} finished, {r['unfinished']:,} unfinished, "
        f"{r['rejected']:,} rejected, {r['preemptions']:,} preemptions"
    )
    why = rejected_reasons(s)
    if r["rejected"] and why:
        lines.append(f"rejected: {why}")
    w = s.get("client_wait")
    if w is not None and w["requests"]:
        lines.append(
            f"client: at most {w['max_in_flight']} in flight; {w['waited']:,} of {w['requests']:,} requests waited "
            f"to be sent (mean {w['mean_s']:.3g} s, p99 {w['p99_s']:.3g} s), not counted in TTFT (as vLLM bench serve)"
        )
    lines += stability_lines(s)
    if "capacity" in s:
        lines.append(capacity_line(s["capacity"]))
    lines += ["", *_latency_table(s["latency_s"])]
    t, g, u, kv, c = s["throughput"], s["goodput"], s["utilisation"], s["kv_cache"], s["cost"]
    lines.append("")
    lines.append(
        f"throughput: {t['requests_per_s']:.2f} req/s, {t['input_tokens_per_s']:,.0f} input tok/s, "
        f"{t['output_tokens_per_s']:,.0f} output tok/s over {t['duration_s']:,.0f} s"
        f" ({t['output_tokens_per_s_per_gpu']:,.0f} output tok/s per GPU, {_rate(t['per_user_output_tokens_per_s'])} "
        "tok/s per user while streaming)"
    )
    slo = ", ".join(f"{k} ≤ {v * 1e3:g} ms" for k, v in g["slo"].items()) or "no SLO set"
    if s.get("classes"):
        slo = "their class's SLO"
    lines.append(f"goodput: {g['requests_per_s']:.2f} req/s ({g['fraction']:.1%} of finished meet {slo})")
    lines.append(
        f"GPU busy {u['busy_fraction']:.1%} (time with a step running, not saturation), mean batch {u['mean_batch_seqs']:.1f} seqs, {u['steps']:,} steps; "
        f"KV cache {kv['blocks']:,} blocks, occupancy mean {kv['mean_occupancy']:.1%} / peak {kv['peak_occupancy']:.1%}"
    )
    lines.append(
        f"cost: ${c['usd_per_1m_input_tokens']:.3f} per 1M input tokens, ${c['usd_per_1m_output_tokens']:.3f} per 1M "
        f"output tokens (${c['usd_per_1m_tokens']:.3f} per 1M blended) at ${hw['price_per_gpu_hour_usd']:.2f}/GPU-hour"
    )
    lines += ["", "where the time goes (bound: what, doubled, would shorten it most):"]
    lines += ["  " + x for x in breakdown_lines(step_breakdown(f))]
    lines += _feature_lines(s)
    lines += day_lines(s)
    if engine_profile(f.scenario).engine in ("ours", "vllm"):  # a vLLM command line fits a vLLM-like forecast
        serve = vllm_serve(f.scenario)
        lines += [
            "",
            "deploy with vLLM (one replica):",
            f"  {serve.line}",
            *(f"  note: {n}" for n in serve.notes),
        ]
    sim = s["simulation"]
    lines.append(
        f"simulated in {sim['wall_s']:.2f} s ({sim['requests_per_wall_s']:,.0f} requests/s, "
        f"{sim['steps_per_wall_s']:,.0f} steps/s)"
        + (f" in {sim['shards']} shards" if "shards" in sim else "")
    )
    if "sharding" in s:
        lines.append(f"one process: {s['sharding']['why_one_process']}")
    return "\n".join(lines)
