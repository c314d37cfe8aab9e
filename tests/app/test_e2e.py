"""End to end: `streamlit run app.py` on a free localhost port, opened in headless Debian chromium.

The browser runs the default Plan scenario, starts from an uploaded scenario, removes its SLO, and then
runs a Compare; screenshots are saved (under
$INFERPLAN_SCREENSHOTS when set, else the test's tmp folder) and checked: not blank, the forecast's
title in the page, no traceback.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)"
)
ROOT = Path(__file__).resolve().parents[2]
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server():
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app.py",
            "--server.headless",
            "true",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--browser.gatherUsageStats",
            "false",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("streamlit did not start: " + proc.stdout.read1().decode(errors="replace")[-2000:])
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def not_blank(png: Path) -> bool:
    from PIL import Image

    img = Image.open(png).convert("L")
    lo, hi = img.getextrema()
    colors = img.resize((64, 64)).getcolors(maxcolors=4096)
    return hi - lo > 100 and (colors is None or len(colors) > 8)


def test_app_in_headless_chromium(server, tmp_path):
    from playwright.sync_api import sync_playwright

    out = Path(os.environ.get("INFERPLAN_SCREENSHOTS", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1500})
        try:
            page.goto(server, timeout=120_000)
            page.get_by_text("Forecast: my-plan").first.wait_for(timeout=120_000)
            page.get_by_text("Latency against the SLOs").first.wait_for(timeout=60_000)
            page.locator("[data-testid='stDownloadButton']").first.wait_for(timeout=60_000)
            page.wait_for_timeout(1500)  # let the charts draw
            page.screenshot(path=str(out / "plan.png"), full_page=True)
            text = page.inner_text("body")
            assert "Traceback" not in text and "Error" not in text.split("Forecast")[0]
            assert (
                "throughput (req/s)" in text
                and "Fits: weights" in text
                and "Latency against the SLOs" in text
            )

            # start from an uploaded scenario: every box takes its values, its missing SLO stays empty
            scenario = tmp_path / "uploaded.yaml"
            scenario.write_text(
                "name: uploaded-plan\nmodel: qwen2.5-0.5b\nhardware: {gpu: a100-80gb-sxm}\n"
                "workload: {arrival: {process: poisson, rate_per_s: 2}, num_requests: 60}\n"
                "slo: {ttft_s: 0.3}\n"
            )
            page.locator("[data-testid='stSidebar'] input[type='file']").first.set_input_files(str(scenario))
            page.get_by_text("Forecast: uploaded-plan").first.wait_for(timeout=120_000)
            assert page.get_by_role("spinbutton", name="TTFT SLO (ms)").input_value() == "300"
            assert page.get_by_role("spinbutton", name="TPOT SLO (ms)").input_value() == ""
            assert "A100" in page.inner_text("body")
            # remove the last SLO by hand: the forecast runs with none (and says capacity needs one)
            ttft = page.get_by_role("spinbutton", name="TTFT SLO (ms)")
            ttft.fill("")
            ttft.press("Enter")
            page.get_by_text("Capacity not computed").first.wait_for(timeout=120_000)
            page.screenshot(path=str(out / "plan_uploaded.png"), full_page=True)
            text = page.inner_text("body")
            assert "Traceback" not in text and "sets no SLO" in text

            page.get_by_text("Compare", exact=True).first.click()
            page.get_by_text("Side by side").first.wait_for(timeout=120_000)
            # the caption under the break-even table: the table's own header cell matches "break-even" too,
            # but the data grid keeps it hidden, and waiting on it timed out on a loaded machine
            page.get_by_text("Break-even: the monthly token volume").first.wait_for(timeout=60_000)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(out / "compare.png"), full_page=True)
            text = page.inner_text("body")
            assert "Traceback" not in text and "best TTFT p99" in text

            # a page opened by its own URL gets the same four-page navigation
            page.goto(f"{server}/calibration", timeout=120_000)
            page.get_by_text("Fit errors", exact=False).first.wait_for(timeout=120_000)
            nav = page.inner_text("[data-testid='stSidebarNav']").split()
            assert nav == ["Plan", "Compare", "Capacity", "Calibration"]
        finally:
            browser.close()
    for name in ("plan.png", "plan_uploaded.png", "compare.png"):
        assert (out / name).stat().st_size > 20_000 and not_blank(out / name)
