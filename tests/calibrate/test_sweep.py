import json

import pytest

from calibrate.measurements import Record, Store
from calibrate.plan import Point
from calibrate.sweep import run_sweep
from simulator.errors import ConfigError

META = {"gpu": "Fake GPU", "model": "tiny", "device": "cuda"}


def points(n=12):
    return [
        Point("gemm", {"m": m, "k": 64, "n": 64, "dtype": "bf16"}, holdout=m % 4 == 2)
        for m in range(1, n + 1)
    ]


class OutOfMemoryError(RuntimeError):
    """Stands in for torch.cuda.OutOfMemoryError (matched by name, as the sweep does)."""


def test_resume_after_an_interruption_measures_each_point_once(tmp_path):
    path = tmp_path / "m.jsonl"
    calls: list[str] = []
    pts = points()

    def flaky(p):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(p.key)
        return 1e-3 * p.params["m"]

    with pytest.raises(KeyboardInterrupt):
        run_sweep(pts, Store.open(path, META), flaky)
    assert len(calls) == 5

    def steady(p):
        calls.append(p.key)
        return 1e-3 * p.params["m"]

    store = Store.open(path, META)
    rep = run_sweep(pts, store, steady)
    assert rep.skipped == 5 and rep.measured == len(pts) - 5
    assert sorted(calls) == sorted(p.key for p in pts)  # no point measured twice, none missing
    again = Store.open(path, META)
    assert len(again.ok()) == len(pts)
    assert all(again.records[p.key].holdout == p.holdout for p in pts)


def test_an_out_of_memory_point_is_recorded_and_skipped(tmp_path):
    path = tmp_path / "m.jsonl"
    recovered = []

    def measure(p):
        if p.params["m"] == 7:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
        return 1e-3

    rep = run_sweep(points(), Store.open(path, META), measure, recover=lambda: recovered.append(1))
    assert rep.oom == 1 and rep.measured == 11 and recovered == [1]
    store = Store.open(path, META)
    oom = [r for r in store.records.values() if r.status == "oom"]
    assert len(oom) == 1 and oom[0].params["m"] == 7 and oom[0].seconds is None

    rep = run_sweep(points(), store, lambda p: pytest.fail("nothing should be measured again"))
    assert rep.skipped == 12


def test_a_failing_point_is_recorded_and_retried_later(tmp_path):
    path = tmp_path / "m.jsonl"
    rep = run_sweep(
        points(3),
        Store.open(path, META),
        lambda p: (_ for _ in ()).throw(ValueError("fp8 not here")) if p.params["m"] == 2 else 1e-3,
    )
    assert rep.errors == 1
    seen = []
    run_sweep(points(3), Store.open(path, META), lambda p: seen.append(p.params["m"]) or 1e-3)
    assert seen == [2]


def test_corrupt_lines_are_skipped_with_a_warning(tmp_path):
    path = tmp_path / "m.jsonl"
    store = Store.open(path, META)
    store.add(Record("a", "gemm", {"m": 1}, 1e-3))
    with path.open("a") as f:
        f.write('{"key": "b", "kind": "gemm", "par\n')  # cut off mid-line by a kill
        f.write(json.dumps({"key": "c", "kind": "gemm", "params": {}, "seconds": -1}) + "\n")
    store.add(Record("d", "gemm", {"m": 2}, 2e-3))
    warnings = []
    again = Store.open(path, META, warn=warnings.append)
    assert set(again.records) == {"a", "d"}
    assert len(warnings) == 2 and all("corrupt" in w for w in warnings)


def test_measurements_of_another_gpu_are_refused(tmp_path):
    path = tmp_path / "m.jsonl"
    Store.open(path, META)
    with pytest.raises(ConfigError, match="--fresh"):
        Store.open(path, {**META, "gpu": "Other GPU"})
    assert not Store.open(path, {**META, "gpu": "Other GPU"}, fresh=True).records


def test_forget_drops_a_kind_and_the_sweep_measures_only_it_again(tmp_path):
    path = tmp_path / "m.jsonl"
    pts = points(6) + [Point("elementwise", {"tokens": t, "hidden": 64, "intermediate": 128}) for t in (1, 8)]
    run_sweep(pts, Store.open(path, META), lambda p: 1e-3)
    store = Store.open(path, META)
    assert store.forget({"elementwise"}) == 2 and store.forget({"elementwise"}) == 0
    reread = Store.open(path, META)
    assert reread.meta["gpu"] == "Fake GPU" and len(reread.records) == 6 and not reread.skipped_lines
    calls = []
    rep = run_sweep(pts, reread, lambda p: calls.append(p.kind) or 2e-3)
    assert calls == ["elementwise", "elementwise"] and rep.skipped == 6
    assert [r.seconds for r in Store.open(path, META).ok("elementwise")] == [2e-3, 2e-3]
