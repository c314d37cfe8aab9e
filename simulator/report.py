"""A shareable report of one scenario: a self-contained HTML file (plots inline as base64 PNG) and Markdown.

Holds the forecast's headline numbers, latency percentiles against the SLOs, latency CDFs, latency vs
load (the scenario re-simulated at multiples of its offered rate), cost per million tokens, KV and queue
timelines, and the scenario itself so a reader can rerun it.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from simulator import plots
from simulator.breakdown import BREAKDOWN_HEAD, BREAKDOWN_NOTE, breakdown_rows, step_breakdown
from simulator.day import DAY_COST_HEAD, DAY_HOUR_HEAD, day_cost_rows, day_hour_rows
from simulator.deploy import vllm_serve
from simulator.metrics import LATENCIES, capacity, capacity_line
from simulator.output import ResultFolder
from simulator.results import rejected_reasons
from simulator.search import LoadCurve, latency_vs_load
from simulator.simulation import Forecast

LOAD_MULTIPLES = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5)


@dataclass
class Report:
    title: str
    html: str
    markdown: str
    images: dict[str, bytes] = field(default_factory=dict)  # file name -> PNG


def offered_rate(f: Forecast) -> float:
    """Mean arrival rate of the simulated requests (req/s)."""
    a = f.requests.arrival_s
    return (len(a) - 1) / max(float(a[-1] - a[0]), 1e-9) if len(a) > 1 else 1.0


def load_curve(f: Forecast, multiples=LOAD_MULTIPLES) -> LoadCurve:
    """The scenario re-simulated at multiples of its maximum rate under the SLOs (or of its offered rate).

    Scaling by the maximum sustainable rate puts the points where the SLOs break on the plot.
    """
    data = f.scenario.model_dump(mode="json")
    r0, window = offered_rate(f), None
    cap = f.summary.get("capacity") or capacity(f.scenario, f.summary)  # the forecast's own search, once
    if cap.get("max_rate_per_s", 0) > 0 and cap["probe_requests"]:
        # each point as long (in time) as the run that found the max rate
        r0, window = cap["max_rate_per_s"], cap["probe_requests"] / cap["max_rate_per_s"]
    return latency_vs_load(data, [r0 * m for m in multiples], window_s=window)


def _fmt_ms(x) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x * 1e3:,.1f}"


def _fmt_usd(x) -> str:
    return "—" if x is None or not math.isfinite(x) else f"${x:,.3f}"


def headline(f: Forecast) -> list[tuple[str, str]]:
    """(label, value) pairs a reader looks at first."""
    s = f.summary
    hw, m = s["hardware"], s["model"]
    rows = [
        ("model", f"{m['name']} ({m['params'] / 1e9:.1f}B, weights {m['weight_dtype']}, KV {m['kv_dtype']})"),
        (
            "hardware",
            f"{hw['gpus']}× {hw['display_name']} ({'calibrated' if hw['calibrated'] else hw.get('profile_status', 'datasheet')} profile),"
            f" ${hw['price_per_gpu_hour_usd']:.2f}/GPU-hour",
        ),
        ("fits", ("yes: " if s["fits"] else "NO: ") + s["memory"]["explain"]),
    ]
    if "engine" in s:
        e = s["engine"]
        rows.insert(
            2,
            (
                "engine",
                f"{e['display_name']}; {e['validation']}"
                + (f"; {e['transferred']}" if e["transferred"] else ""),
            ),
        )
    if "expected_error" in s:
        rows.append(
            ("expected error", s["expected_error"]["line"].removeprefix("expected error").lstrip(": "))
        )
    st = s.get("stability")
    if st is not None:
        rows.append(
            (
                "stability",
                f"{st['verdict'].upper() if st['verdict'] == 'overloaded' else st['verdict']}: {st['reason']}",
            )
        )
    if not s["fits"]:
        return rows
    if "capacity" in s:
        rows.append(("capacity", capacity_line(s["capacity"]).removeprefix("capacity: ")))
    r, t, g, kv, c = s["requests"], s["throughput"], s["goodput"], s["kv_cache"], s["cost"]
    rows += [
        (
            "requests",
            f"{r['total']:,} total, {r['finished']:,} finished, {r['unfinished']:,} unfinished, "
            f"{r['rejected']:,} rejected{_rejected_why(s)}, {r['preemptions']:,} preemptions",
        ),
        (
            "throughput",
            f"{t['requests_per_s']:.2f} req/s, {t['input_tokens_per_s']:,.0f} input tok/s, "
            f"{t['output_tokens_per_s']:,.0f} output tok/s",
        ),
        (
            "goodput",
            f"{g['requests_per_s']:.2f} req/s ({g['fraction']:.1%} of finished requests meet the SLOs)",
        ),
        (
            "KV cache",
            f"{kv['blocks']:,} blocks; occupancy mean {kv['mean_occupancy']:.1%}, peak {kv['peak_occupancy']:.1%}",
        ),
        (
            "cost per 1M tokens",
            f"{_fmt_usd(c['usd_per_1m_input_tokens'])} input, {_fmt_usd(c['usd_per_1m_output_tokens'])} output, "
            f"{_fmt_usd(c['usd_per_1m_tokens'])} blended",
        ),
    ]
    if "hosted_api" in c:
        h = c["hosted_api"]
        rows.append(
            (
                f"vs {h['name']}",
                f"same tokens cost ${h['same_tokens_usd']:.2f} there, ${c['total_usd']:.2f} self-hosted "
                f"({h['self_hosted_over_api']:.2f}×)",
            )
        )
    return rows


def latency_rows(f: Forecast) -> list[list[str]]:
    """Latency table: metric, p50, p90, p95, p99, mean (ms), SLO and whether p90 meets it."""
    s = f.summary
    slo = f.scenario.slo.model_dump(exclude_none=True)
    out = []
    for key, label in LATENCIES:
        p = s["latency_s"][key]
        target = slo.get(f"{key}_s")
        verdict = "" if target is None else ("meets" if p["p90"] <= target else "misses")
        out.append(
            [
                label,
                *(_fmt_ms(p[q]) for q in ("p50", "p90", "p95", "p99", "mean")),
                "" if target is None else f"{target * 1e3:g}",
                verdict,
            ]
        )
    return out


LATENCY_HEAD = ["latency (ms)", "p50", "p90", "p95", "p99", "mean", "SLO (ms)", "p90 vs SLO"]


def build_report(f: Forecast, curve: LoadCurve | None = None) -> Report:
    """The report's HTML, Markdown and PNGs (the load curve is simulated here when not given)."""
    sc = f.scenario
    title = f"inferplan forecast: {sc.name}"
    images: dict[str, bytes] = {}
    captions: dict[str, str] = {}
    served = f.fits and f.table is not None and f.summary["requests"]["finished"] > 0
    day = f.summary.get("day")
    if day is not None:  # a day is not re-simulated at other rates; its Day section sizes the fleet
        f.summary.setdefault("capacity", {"skipped": "a day of traffic: see the Day section"})
    if f.fits and "capacity" not in f.summary:  # found once; the load curve below is scaled by it
        f.summary["capacity"] = capacity(sc, f.summary)
    if f.fits and f.table is not None:
        curve = curve or (load_curve(f) if served and day is None else None)
        images["latency_cdf.png"] = plots.png(plots.latency_cdfs(f))
        captions["latency_cdf.png"] = "Latency CDFs (dashed: SLO)"
        if curve is not None:
            images["latency_vs_load.png"] = plots.png(plots.latency_vs_load(curve))
            captions["latency_vs_load.png"] = (
                "p90 latency vs offered load (the same workload re-simulated at other rates)"
            )
        images["step_breakdown.png"] = plots.png(plots.step_breakdown(step_breakdown(f)))
        captions["step_breakdown.png"] = (
            "Where the time goes: a typical prefill and decode step by operation group"
        )
        images["cost.png"] = plots.png(plots.cost_bars(f))
        captions["cost.png"] = "Cost per million tokens"
        images["timelines.png"] = plots.png(plots.timelines(f))
        captions["timelines.png"] = "KV-cache occupancy and queue length over time"
        if f.day is not None:
            images["day_fleet.png"] = plots.png(plots.day_fleet(f))
            captions["day_fleet.png"] = "The day: offered load and replicas ready / starting"
    scenario_yaml = yaml.safe_dump(sc.model_dump(mode="json", exclude_none=True), sort_keys=False)
    breaks = verdict_lines(f, curve)
    return Report(
        title,
        _html(title, f, images, captions, breaks, scenario_yaml),
        _markdown(title, f, images, captions, breaks, scenario_yaml),
        images,
    )


def _rejected_why(s: dict) -> str:
    why = rejected_reasons(s)
    return f" ({why})" if why else ""


def verdict_lines(f: Forecast, curve: LoadCurve | None) -> list[str]:
    """What the report says about the SLOs and load: where each SLO breaks, where the queue stops
    keeping up, and never an SLO 'break' where no request was served or the run was overloaded."""
    s = f.summary
    if not s["fits"] or f.table is None:
        return []
    r, st = s["requests"], s.get("stability", {})
    if r["finished"] == 0:
        return [
            f"No request was served: {r['rejected']:,} of {r['total']:,} were rejected{_rejected_why(s)}, "
            "so no latency or SLO can be judged; change the workload or the serving limits."
        ]
    out = []
    if st.get("verdict") == "overloaded":
        out.append(
            f"This run is OVERLOADED at its offered rate: {st['reason']}. Its latency percentiles only "
            "measure how long the run was."
        )
    if curve is None:
        return out
    top = curve.probes[-1].rate_per_s
    for name, rate in curve.breaks_at.items():
        what = f"{name[:-2].upper()} p90 ({curve.slo[name] * 1e3:g} ms SLO)"
        if rate is None:
            out.append(f"{what} holds at every rate tried (up to {top:.3g} req/s)")
        elif curve.unstable_at is not None and rate >= curve.unstable_at:
            low = curve.probes[0].rate_per_s
            out.append(
                f"{what} cannot be judged: every rate tried ({low:.3g}–{top:.3g} req/s) overloads the queue"
                if curve.unstable_at <= low
                else f"{what} holds while the queue keeps up, up to the overload at {curve.unstable_at:.3g} req/s"
            )
        else:
            out.append(f"{what} breaks at {rate:.3g} req/s")
    if curve.unstable_at is not None:
        out.append(
            f"From {curve.unstable_at:.3g} req/s the queue grows without bound (overloaded): latencies there "
            "only measure how long the run was"
        )
    return out


def write_report(report: Report, out: str | Path | ResultFolder) -> list[Path]:
    """report.html (self-contained), report.md and its PNGs in `out`, replacing the folder whole.

    Given a ResultFolder already entered, the files go into its work folder and the caller commits.
    """
    if not isinstance(out, ResultFolder):
        with ResultFolder(out) as folder:
            paths = write_report(report, folder)
            folder.commit()
        return paths
    files = {"report.html": report.html.encode(), "report.md": report.markdown.encode()} | report.images
    for name, data in files.items():
        (out.work / name).write_bytes(data)
    return [out.path / name for name in files]


def _html(title, f, images, captions, breaks, scenario_yaml) -> str:
    e = html.escape
    head = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in headline(f))
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{e(title)}</title><style>"
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 10px;text-align:left}"
        "td.n{text-align:right}img{max-width:100%}pre{background:#f5f5f5;padding:1em}"
        ".misses{color:#b00020;font-weight:600}.meets{color:#1b7f3b}"
        "</style></head><body>",
        f"<h1>{e(title)}</h1><table>{head}</table>",
    ]
    if f.fits and f.table is not None:
        rows = "".join(
            "<tr>"
            + "".join(f"<td class='{'n' if 0 < i < 7 else e(c)}'>{e(c)}</td>" for i, c in enumerate(r))
            + "</tr>"
            for r in latency_rows(f)
        )
        parts.append(
            "<h2>Latency</h2><table><tr>"
            + "".join(f"<th>{e(h)}</th>" for h in LATENCY_HEAD)
            + f"</tr>{rows}</table>"
        )
        if breaks:
            parts.append("<ul>" + "".join(f"<li>{e(b)}</li>" for b in breaks) + "</ul>")
        if "day" in f.summary:
            parts += [
                f"<h2>{e(h)}</h2>{_html_table(head, rows)}" for h, head, rows in _day_tables(f.summary["day"])
            ]
        bd = step_breakdown(f)
        parts.append(
            f"<h2>Where the time goes</h2><p>{e(BREAKDOWN_NOTE)}</p><table><tr>"
            + "".join(f"<th>{e(h)}</th>" for h in BREAKDOWN_HEAD)
            + "</tr>"
            + "".join(
                "<tr>"
                + "".join(f"<td class='{'n' if i in (2, 3) else ''}'>{e(c)}</td>" for i, c in enumerate(r))
                + "</tr>"
                for r in breakdown_rows(bd)
            )
            + "</table>"
        )
        for name, data in images.items():
            b64 = base64.b64encode(data).decode()
            parts.append(
                f"<h3>{e(captions[name])}</h3><img alt='{e(captions[name])}' src='data:image/png;base64,{b64}'>"
            )
    serve = vllm_serve(f.scenario)
    parts.append(
        f"<h2>Deploy with vLLM</h2><pre>{e(serve.line)}</pre>"
        + "".join(f"<p><small>{e(n)}</small></p>" for n in serve.notes)
    )
    parts.append(f"<h2>Scenario</h2><pre>{e(scenario_yaml)}</pre>")
    parts.append(
        "<p><small>Made by inferplan: <code>python -m simulator report SCENARIO.yaml</code></small></p>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def _day_tables(d: dict | None) -> list[tuple[str, tuple, list[list[str]]]]:
    """The Day section's tables: the day's cost beside the fixed fleets, and one row per hour."""
    if d is None:
        return []
    title = f"The day: {d['gpu_hours']:.1f} GPU-hours, {d['slo_attainment']:.1%} of requests within the SLOs"
    return [(title, DAY_COST_HEAD, day_cost_rows(d)), ("Hour by hour", DAY_HOUR_HEAD, day_hour_rows(d))]


def _html_table(head: tuple, rows: list[list[str]]) -> str:
    e = html.escape
    cells = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return "<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + f"</tr>{cells}</table>"


def _markdown(title, f, images, captions, breaks, scenario_yaml) -> str:
    lines = [f"# {title}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in headline(f)]
    if f.fits and f.table is not None:
        lines += [
            "",
            "## Latency",
            "",
            "| " + " | ".join(LATENCY_HEAD) + " |",
            "|" + "---|" * len(LATENCY_HEAD),
        ]
        lines += ["| " + " | ".join(r) + " |" for r in latency_rows(f)]
        if breaks:
            lines += [""] + [f"- {b}" for b in breaks]
        for h, head, rows in _day_tables(f.summary.get("day")):
            lines += ["", f"## {h}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines += [
            "",
            "## Where the time goes",
            "",
            BREAKDOWN_NOTE,
            "",
            "| " + " | ".join(BREAKDOWN_HEAD) + " |",
        ]
        lines += ["|" + "---|" * len(BREAKDOWN_HEAD)]
        lines += ["| " + " | ".join(r) + " |" for r in breakdown_rows(step_breakdown(f))]
        for name in images:
            lines += ["", f"### {captions[name]}", "", f"![{captions[name]}]({name})"]
    serve = vllm_serve(f.scenario)
    lines += ["", "## Deploy with vLLM", "", "```bash", serve.line, "```", *(f"- {n}" for n in serve.notes)]
    lines += ["", "## Scenario", "", "```yaml", scenario_yaml.rstrip(), "```", ""]
    return "\n".join(lines)
