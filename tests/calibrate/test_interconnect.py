"""Interconnect calibration on the CPU: 2 gloo processes measure the four collectives, the fit recovers a
known latency and bandwidth, and the profile it writes (to a scratch folder only) is what the cost
formulas then use."""

from __future__ import annotations

import argparse

import pytest

from calibrate.interconnect import COLLECTIVES, check_args, fit, run, wire_bytes
from core.errors import ConfigError
from core.hardware import PROFILE_DIR, read_profile
from core.parallelism import allreduce_time, send_time
from engine.distributed import spawn_local


def test_fit_recovers_latency_and_bandwidth():
    rows = []
    for name in COLLECTIVES:
        for size in [2**k for k in range(10, 24, 2)]:
            b = wire_bytes(name, size, 4)
            rows.append({"collective": name, "bytes": size, "wire_bytes": b, "seconds": 7e-6 + b / 300e9})
    fits = fit(rows, 4)
    for f in fits.values():
        assert f.latency_us == pytest.approx(7.0, rel=1e-6) and f.bandwidth_gbps == pytest.approx(
            300.0, rel=1e-6
        )
        assert f.holdout_median_pct < 1e-6
    assert wire_bytes("all_reduce", 1000, 4) == 1500 and wire_bytes("send", 1000, 4) == 1000


def test_cpu_run_writes_a_measured_profile_to_a_scratch_folder(tmp_path):
    args = argparse.Namespace(profile="h200", name="h200-gloo-test", out_dir=str(tmp_path), backend="gloo",
                              warmup=1, repeat=5)  # fmt: skip
    res = spawn_local(run, 2, args)
    rows = res[0]["rows"]
    assert len(rows) == len(res[1]["rows"]) == 4 * 6 and all(r["seconds"] > 0 for r in rows)
    prof = read_profile(tmp_path / "h200-gloo-test.yaml")
    m = prof.interconnect.measured
    assert set(m) == set(COLLECTIVES) and all(f.ranks == 2 and f.bandwidth_gbps > 0 for f in m.values())
    assert "gloo" in prof.sources["interconnect_measured"]
    # the formulas now charge the measured figures, not the datasheet's
    f = m["all_reduce"]
    assert allreduce_time(1e6, 2, prof.interconnect) == pytest.approx(
        f.latency_us * 1e-6 + 1e6 / (f.bandwidth_gbps * 1e9)
    )
    s = m["send"]
    assert send_time(1e6, prof.interconnect) == pytest.approx(
        s.latency_us * 1e-6 + 1e6 / (s.bandwidth_gbps * 1e9)
    )


def test_a_cpu_run_never_writes_the_committed_profiles():
    base = dict(profile="h200", name=None, backend="gloo", warmup=1, repeat=1)
    with pytest.raises(ConfigError, match="--out-dir"):
        check_args(argparse.Namespace(out_dir=None, **base))
    with pytest.raises(ConfigError, match="scratch"):
        check_args(argparse.Namespace(out_dir=str(PROFILE_DIR), **base))
    with pytest.raises(ConfigError):
        check_args(argparse.Namespace(out_dir="/tmp/x", **{**base, "profile": "no-such-gpu"}))
