"""Reports: a self-contained HTML file and Markdown with the plots, numbers matching the forecast."""

import base64
import re

import pytest

from simulator.cli import main
from simulator.report import build_report, latency_rows, load_curve, write_report
from simulator.scenario import parse_scenario
from simulator.simulation import simulate

pytest.importorskip("matplotlib")

SCENARIO = {
    "name": "report-test",
    "model": "llama-3.1-8b",
    "hardware": {"gpu": "h100-sxm"},
    "workload": {
        "arrival": {"process": "poisson", "rate_per_s": 4.0},
        "prompt_tokens": {"dist": "lognormal", "median": 500, "sigma": 0.6, "max": 4000},
        "output_tokens": {"dist": "lognormal", "median": 100, "sigma": 0.6, "max": 800},
        "num_requests": 120,
    },
    "slo": {"ttft_s": 0.5, "tpot_s": 0.05},
    "hosted_api": {"name": "some API", "usd_per_1m_input": 0.2, "usd_per_1m_output": 0.6},
}


@pytest.fixture(scope="module")
def forecast():
    return simulate(parse_scenario(SCENARIO))


@pytest.fixture(scope="module")
def report(forecast):
    return build_report(forecast)


def test_html_is_self_contained_with_five_plots(report):
    html = report.html
    imgs = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)
    assert len(imgs) == 5
    assert all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for b in imgs)
    assert not re.search(r"(src|href)=['\"]https?:", html)  # nothing fetched from elsewhere
    for caption in (
        "Latency CDFs",
        "latency vs offered load",
        "Cost per million tokens",
        "KV-cache occupancy",
        "Where the time goes: a typical prefill and decode step",
    ):
        assert caption in html
    assert "report-test" in html and "some API" in html


def test_numbers_match_the_forecast(forecast, report):
    s = forecast.summary
    p90_ttft = f"{s['latency_s']['ttft']['p90'] * 1e3:,.1f}"
    assert p90_ttft in report.html and p90_ttft in report.markdown
    assert f"{s['throughput']['requests_per_s']:.2f} req/s" in report.html
    assert f"${s['cost']['usd_per_1m_tokens']:,.3f} blended" in report.markdown
    rows = {r[0]: r for r in latency_rows(forecast)}
    assert rows["TTFT"][2] == p90_ttft and rows["TTFT"][6] == "500"


def test_load_curve_brackets_the_max_rate(forecast):
    curve = load_curve(forecast)
    rates = [p.rate_per_s for p in curve.probes]
    assert rates == sorted(rates) and len(rates) == 8
    assert any(v is not None for v in curve.breaks_at.values())  # the curve reaches past 1.25× the max rate


def test_markdown_references_written_images(report, tmp_path):
    paths = write_report(report, tmp_path)
    names = {p.name for p in paths}
    assert {
        "report.html",
        "report.md",
        "latency_cdf.png",
        "latency_vs_load.png",
        "cost.png",
        "timelines.png",
        "step_breakdown.png",
    } <= names
    for name in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.markdown):
        assert (tmp_path / name).stat().st_size > 1000


def test_model_that_does_not_fit_reports_the_numbers():
    f = simulate(parse_scenario(SCENARIO | {"model": "llama-3.1-70b", "hardware": {"gpu": "t4"}}))
    r = build_report(f)
    assert "NO: weights" in r.html and "<img" not in r.html and not r.images


def test_cli_report(tmp_path, capsys):
    import yaml

    sc = tmp_path / "s.yaml"
    sc.write_text(yaml.safe_dump(SCENARIO))
    assert main(["report", str(sc), "--out", str(tmp_path / "rep"), "--requests", "80"]) == 0
    html = (tmp_path / "rep" / "report.html").read_text()
    assert html.startswith("<!doctype html>") and "data:image/png;base64," in html
    assert (tmp_path / "rep" / "report.md").exists()


def test_the_report_has_capacity_where_the_time_goes_and_the_vllm_command(forecast, report):
    from simulator.breakdown import breakdown_rows, step_breakdown
    from simulator.deploy import vllm_serve
    from simulator.metrics import capacity_line

    cap = forecast.summary["capacity"]  # found once by build_report, and the load curve scaled by it
    assert cap["max_rate_per_s"] > 0
    assert capacity_line(cap).removeprefix("capacity: ") in report.markdown
    assert "Where the time goes" in report.html
    for row in breakdown_rows(step_breakdown(forecast)):
        assert "| " + " | ".join(row) + " |" in report.markdown
    line = vllm_serve(forecast.scenario).line
    assert line in report.markdown and "Deploy with vLLM" in report.html
