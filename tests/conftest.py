import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


_group_s: dict[str, float] = {}


def pytest_runtest_logreport(report):
    """Sum each test's setup, call and teardown time by its folder (the package it tests)."""
    group = report.nodeid.split("::")[0].rsplit("/", 1)[0]
    _group_s[group] = _group_s.get(group, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    if not _group_s:
        return
    terminalreporter.write_sep("-", "time per test group (summed over workers)")
    for group, secs in sorted(_group_s.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"{group:<24}{secs:8.1f} s")
