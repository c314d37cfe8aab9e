import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from calibrate.measurements import Record, Store, _line, identity
from calibrate.plan import Point
from calibrate.sweep import run_sweep
from core.errors import ConfigError
from core.model_spec import load_model

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


def rec(m: int, seconds: float = 1e-3) -> Record:
    p = Point("gemm", {"m": m, "k": 64, "n": 64, "dtype": "bf16"})
    return Record(p.key, p.kind, p.params, seconds)


def test_damaged_lines_are_skipped_and_counted_in_one_warning(tmp_path):
    path = tmp_path / "m.jsonl"
    store = Store.open(path, META)
    store.add(rec(1))
    with path.open("ab") as f:
        f.write(b'{"key": "b", "kind": "gemm", "par\n')  # cut off mid-line by a kill
        f.write(json.dumps({**_line(rec(3)), "seconds": -1}).encode() + b"\n")
        f.write(b"\xff\xfe not UTF-8 \x00\n")  # one bad byte used to stop every resume with a traceback
        f.write(json.dumps({**_line(rec(4)), "seconds": float("inf")}).encode() + b"\n")
        f.write(json.dumps({**_line(rec(5)), "params": [5]}).encode() + b"\n")  # JSON, but not a point
        f.write(json.dumps({**_line(rec(6)), "key": _line(rec(7))["key"]}).encode() + b"\n")  # garbled key
        f.write(b"[1, 2]\n")
    store.add(rec(2))
    warnings = []
    again = Store.open(path, META, warn=warnings.append)
    assert set(again.records) == {rec(1).key, rec(2).key}  # every readable point kept
    assert again.skipped_lines == 7 and len(warnings) == 1 and "7 corrupt measurement lines" in warnings[0]


def test_a_line_cut_off_by_a_kill_does_not_swallow_the_next_point(tmp_path):
    path = tmp_path / "m.jsonl"
    Store.open(path, META).add(rec(1))
    with path.open("ab") as f:
        f.write(b'{"key": "gemm:{\\"dtype')  # killed mid-write: no newline
    store = Store.open(path, META, warn=lambda _m: None)
    store.add(rec(2))
    assert set(Store.open(path, META, warn=lambda _m: None).records) == {rec(1).key, rec(2).key}


QWEN = identity("cpu", "cpu", load_model("qwen2.5-0.5b"), {"torch": "2.13.0+cpu"})
MISTRAL = identity("cpu", "cpu", load_model("mistral-7b"), {"torch": "2.13.0+cpu"})


def damage_first_line(path):
    lines = path.read_text().splitlines()
    lines[0] = lines[0][:25]
    path.write_text("\n".join(lines) + "\n")


def test_points_of_another_model_are_never_reused_even_with_the_meta_line_damaged(tmp_path):
    path = tmp_path / "m.jsonl"
    run_sweep(points(18), Store.open(path, QWEN), lambda p: 1e-3)
    with pytest.raises(
        ConfigError, match=r"qwen2.5-0.5b on cpu .*, not mistral-7b .*model, model_config differ.*--restart"
    ):
        Store.open(path, MISTRAL)
    damage_first_line(path)  # the case: 18 qwen timings were reused for mistral-7b
    with pytest.raises(
        ConfigError, match=r"18 stored measurements of another GPU, model or software.*--restart"
    ):
        Store.open(path, MISTRAL, warn=lambda _m: None)
    with pytest.raises(ConfigError, match="missing or damaged"):  # a refit cannot tell what they are
        Store.open(path, warn=lambda _m: None)
    # the same model finds all its points, and the meta line is written again
    same = Store.open(path, QWEN, warn=lambda _m: None)
    assert len(same.records) == 18 and Store.open(path).identity == QWEN


def test_another_torch_version_is_another_identity(tmp_path):
    path = tmp_path / "m.jsonl"
    Store.open(path, QWEN).add(rec(1))
    with pytest.raises(ConfigError, match="torch differs"):
        Store.open(path, {**QWEN, "torch": "2.14.0+cpu"})


def test_a_store_from_before_fingerprints_is_checked_on_its_meta_line_and_upgraded(tmp_path):
    path = tmp_path / "m.jsonl"
    legacy = {"kind": "meta", "gpu": "cpu", "model": "qwen2.5-0.5b", "device": "cpu", "base": "cpu"}
    path.write_text("\n".join(json.dumps(d) for d in [legacy, _line(rec(1)), _line(rec(2))]) + "\n")
    assert len(Store.open(path).records) == 2  # a refit reads it as before
    with pytest.raises(ConfigError, match="not mistral-7b"):
        Store.open(path, MISTRAL)
    store = Store.open(path, QWEN)  # a resume stamps the old points with their identity
    store.add(rec(3))
    assert {r.fingerprint for r in Store.open(path, QWEN).records.values()} == {store.fingerprint}
    assert Store.open(path).meta["base"] == "cpu"
    path.write_text("\n".join(json.dumps(d) for d in [{"kind": "met"}, _line(rec(1))]) + "\n")
    with pytest.raises(ConfigError, match="do not say what was measured"):
        Store.open(path, QWEN)


def test_measurements_of_another_gpu_are_refused(tmp_path):
    path = tmp_path / "m.jsonl"
    Store.open(path, META)
    with pytest.raises(ConfigError, match="--restart"):
        Store.open(path, {**META, "gpu": "Other GPU"})
    assert not Store.open(path, {**META, "gpu": "Other GPU"}, restart=True).records


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
    # a filter drops only the kind's points whose parameters match (compared as text)
    store = Store.open(path, META)
    assert (
        store.forget({"elementwise": [{"tokens": "8"}, {"tokens": "9"}]}) == 1
        and store.forget({"elementwise": [{"tokens": "8"}]}) == 0
    )
    assert sorted(
        r.params["tokens"] for r in Store.open(path, META).records.values() if r.kind == "elementwise"
    ) == [1]


def test_points_record_the_engine_code_they_ran_and_a_store_names_the_others(tmp_path):
    """Each point added carries the store's engine code (core.provenance.engine_code, set by the sweep's caller);
    reread, the store says by kind which points ran other code (or none recorded); old lines without it parse."""
    from calibrate.calibration import stale_engine_line

    path = tmp_path / "m.jsonl"
    store = Store.open(path, META)
    store.engine = "aaaaaaaaaaaa"
    run_sweep(points(3), store, lambda p: 1e-3)
    store = Store.open(path, META)
    assert {r.engine for r in store.records.values()} == {"aaaaaaaaaaaa"}
    store.engine = "bbbbbbbbbbbb"
    elem = [Point("elementwise", {"tokens": t, "hidden": 64, "intermediate": 128}) for t in (1, 8)]
    run_sweep(points(3) + elem, store, lambda p: 2e-3)  # the gemm points are kept, the new ones stamped b
    again = Store.open(path, META)
    assert again.other_engine("bbbbbbbbbbbb") == {"gemm": 3} and again.other_engine("aaaaaaaaaaaa") == {
        "elementwise": 2
    }
    line = stale_engine_line(again.other_engine("bbbbbbbbbbbb"), "bbbbbbbbbbbb")
    assert line.startswith("3 stored measurements (gemm) ran other engine code") and "--redo" in line
    # a line written before points carried it: no engine, still a valid record, counted as other code
    rec = Record("gemm:x", "gemm", {}, 1e-3)
    assert "engine" not in _line(rec)
    old = _line(Record(points(1)[0].key, "gemm", points(1)[0].params, 1e-3, fingerprint=again.fingerprint))
    path.write_text(path.read_text().split("\n", 1)[0] + "\n" + json.dumps(old) + "\n")
    assert Store.open(path, META).other_engine("bbbbbbbbbbbb") == {"gemm": 1}


def test_points_record_the_engine_code_their_kind_runs(tmp_path):
    """A store given one code per kind stamps each point with its kind's (calibrate.plan.kind_engine_code): an MLA
    change moves only the codes of kinds that run MLA (its points, whole steps of an MLA sweep model, the serving
    run's eager MLA steps), and a resumed store names only those as other code."""
    from calibrate.plan import KINDS, kind_engine_code
    from core.model_spec import load_model

    (tmp_path / "engine").mkdir()
    for name in ("fused.py", "mla.py", "moe.py"):
        (tmp_path / "engine" / name).write_text(f"# {name}\n")
    llama, deepseek = load_model("llama-3.1-8b"), load_model("deepseek-v2-lite")

    def codes(spec):
        return {k: kind_engine_code(k, spec, tmp_path) for k in KINDS}

    before = codes(llama)
    assert before["gemm"] == before["step_decode"] != before["moe"] != before["mla_decode"]
    assert codes(deepseek)["step_decode"] == codes(deepseek)["serving"] == before["serving"]
    (tmp_path / "engine" / "mla.py").write_text("# changed\n")
    after = codes(llama)
    assert sorted(k for k in KINDS if after[k] != before[k]) == ["mla_decode", "mla_prefill", "serving"]
    assert codes(deepseek)["step_decode"] != before["serving"]
    path = tmp_path / "m.jsonl"
    store = Store.open(path, META)
    store.engine = before
    elem = [Point("elementwise", {"tokens": t, "hidden": 64, "intermediate": 128}) for t in (1, 8)]
    run_sweep(points(2) + elem, store, lambda p: 1e-3)
    again = Store.open(path, META)
    assert {r.engine for r in again.records.values()} == {before["gemm"]} and not again.other_engine(after)


CHILD = """
import sys, time
from calibrate.measurements import Store
from calibrate.plan import Point
from calibrate.sweep import run_sweep
pts = [Point("gemm", {"m": m, "k": 64, "n": 64, "dtype": "bf16"}) for m in range(1, 31)]
store = Store.open(sys.argv[1], {"gpu": "Fake GPU", "model": "tiny", "device": "cuda"})
run_sweep(pts, store, lambda p: time.sleep(0.002) or 1e-3 * p.params["m"], stream=open("/dev/null", "w"))
"""


def test_the_store_survives_sigint_and_two_sigkills_with_no_point_lost(tmp_path):
    path = tmp_path / "m.jsonl"
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    seen: set[str] = set()
    for sig in (signal.SIGINT, signal.SIGKILL, signal.SIGKILL):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], env=env, stderr=subprocess.PIPE)
        target = len(seen) + 6  # let a few more points land, then stop it mid-sweep
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and child.poll() is None:
            if path.exists() and len(Store.open(path, META, warn=lambda _m: None).records) >= target:
                break
            time.sleep(0.01)
        child.send_signal(sig)
        child.communicate(timeout=20)
        now = Store.open(path, META, warn=lambda _m: None)
        assert seen < set(now.records)  # nothing measured before a signal is lost
        seen = set(now.records)
    measured = []
    run_sweep(
        points(30),
        Store.open(path, META, warn=lambda _m: None),
        lambda p: measured.append(p.key) or 1e-3 * p.params["m"],
    )
    now = Store.open(path, META)
    assert len(now.records) == 30 and not (seen & set(measured))  # the rest, each point once
    assert all(r.seconds == 1e-3 * r.params["m"] for r in now.records.values())


def test_fit_gemv_holds_points_out_or_leaves_one_out():
    """calibrate.fit.fit_gemv: the one-row bf16 GEMM points (gemm and gemv kinds; other rows and dtypes left
    alone), fitted on a memory-bound curve; held-out errors from the plan's held-out points, or leave-one-out."""
    from calibrate.fit import fit_gemv, gemv_points
    from calibrate.measurements import Record
    from core.cost_model import CostModel
    from core.hardware import load_profile
    from core.model_spec import load_model

    prof = load_profile("h100-sxm")
    cm = CostModel(prof, load_model("llama-3.1-8b"), "bf16", "bf16")
    bw = 0.8 * prof.memory_bandwidth

    def rec(kind, k, n, m=1, dtype="bf16", hold=False):
        t = (k * n * 2 + m * (k + n) * 2) / bw + 3e-6
        return Record(
            f"{kind}{k}x{n}m{m}{dtype}", kind, {"m": m, "k": k, "n": n, "dtype": dtype}, t, holdout=hold
        )

    shapes = [(4096, 4096), (4096, 6144), (4096, 28672), (14336, 4096), (4096, 128256)]
    recs = [rec("gemm", k, n) for k, n in shapes] + [
        rec("gemm", 4096, 4096, m=2),
        rec("gemm", 4096, 4096, dtype="fp8"),
    ]
    pts = gemv_points(recs)
    assert len(pts) == 5
    fit = fit_gemv(cm, pts, prof.efficiency.gemm)
    assert fit.holdout.n == 5 and fit.holdout.median_pct < 1.0  # leave-one-out over an exact line
    assert abs(fit.eff.memory * prof.memory_bandwidth / bw - 1) < 0.02
    more = pts + [rec("gemv", 1024, 1024), rec("gemv", 2048, 1024, hold=True), rec("gemv", 4096, 16)]
    fit2 = fit_gemv(cm, gemv_points(more), prof.efficiency.gemm)
    assert fit2.holdout.n == 1 and fit2.train.n == 7  # the plan's own held-out point
    assert fit_gemv(cm, pts[:3], prof.efficiency.gemm).eff is None  # too few to fit and check
