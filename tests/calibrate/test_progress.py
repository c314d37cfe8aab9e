"""The sweep's time left: each remaining point's prior, corrected online, on a fake clock (no sleeping)."""

import io
import re

import pytest

from calibrate.measurements import Record, Store
from calibrate.plan import Limits, Point, make_plan
from calibrate.progress import Eta, Item, Progress, fit_line
from calibrate.serving import QUANTITIES
from calibrate.sweep import BenchTiming, point_costs, prior_cost_model, run_sweep
from core.hardware import load_profile
from core.model_spec import load_model

META = {"gpu": "Fake GPU", "model": "tiny", "device": "cuda"}
CHEAP, DEAR = 90, 10  # kernel points first, whole-model steps last, as a calibration plan runs them


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def jitter(i: int) -> float:
    """A deterministic ±10% spread, so that no point takes exactly its prior times a constant."""
    return 1.0 + 0.1 * ((i * 7) % 5 - 2) / 2


def synthetic_sweep() -> tuple[list[Item], list[float]]:
    """90 cheap points that take twice their prior, then 10 dear ones that take 1.5 times theirs."""
    items = [Item("gemm", 0.01) for _ in range(CHEAP)] + [Item("step_decode", 1.0, family="step")] * DEAR
    took = [0.02 * jitter(i) for i in range(CHEAP)] + [1.5 * jitter(i) for i in range(DEAR)]
    return items, took


def left_in_line(line: str) -> float:
    m = re.search(r"(\d+)m(\d\d)s left", line)
    assert m, line
    return 60 * int(m[1]) + int(m[2])


def test_time_left_follows_the_cost_of_the_points_left_not_their_count():
    items, took = synthetic_sweep()
    clock = Clock()
    bar = Progress(items, "sweep", stream=io.StringIO(), clock=clock)
    checked = 0
    for i, t in enumerate(took):
        clock.now += t
        bar.advance()
        done = i + 1
        actual = sum(took[done:])
        count_based = clock.now / done * (len(took) - done)  # the estimate this replaces
        if CHEAP + 3 <= done < len(took):  # a few points of each kind measured
            assert bar.left_s() == pytest.approx(actual, rel=0.2)
            assert count_based < 0.2 * actual  # "seconds left when minutes remain"
            checked += 1
        if done == CHEAP:  # no step measured yet: the steps' priors as they are (each took 1.5x its prior)
            assert bar.left_s() == pytest.approx(actual / 1.5, rel=0.1)
    assert checked == DEAR - 3
    assert bar.left_s() == 0.0


def test_the_bar_shows_the_predicted_work_done_and_the_time_left_on_a_log_stream():
    items, took = synthetic_sweep()
    clock, out = Clock(), io.StringIO()
    bar = Progress(items, "quick sweep", stream=out, clock=clock, log_every_s=0.0)
    for t in took[: CHEAP + 3]:
        clock.now += t
        bar.advance("step_decode batch=8")
    line = out.getvalue().splitlines()[-1]
    assert "\r" not in out.getvalue()  # not a terminal: plain lines, one per log interval
    assert line.startswith(f"quick sweep {CHEAP + 3}/{CHEAP + DEAR} ") and line.endswith(
        "step_decode batch=8"
    )
    assert left_in_line(line) == pytest.approx(sum(took[CHEAP + 3 :]), abs=1.5)
    pct = int(re.search(r"(\d+)%", line)[1])
    assert pct == pytest.approx(
        100 * clock.now / sum(took), abs=8
    )  # of the work (~30%), not of the points (93%)


def test_a_terminal_gets_one_line_redrawn_in_place():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    out, clock = Tty(), Clock()
    bar = Progress([Item("gemm", 1.0)] * 4, "sweep", stream=out, clock=clock)
    clock.now = 1.0
    bar.advance("gemm m=1")
    bar.close()
    assert out.getvalue().count("\r") == 1 and out.getvalue().endswith("\n")
    assert "[######" in out.getvalue() and "0m03s left" in out.getvalue()


def test_no_points_and_one_point():
    out = io.StringIO()
    empty = Progress([], "sweep", stream=out, clock=Clock())
    empty.show("done")
    empty.close()
    assert empty.left_s() == 0.0 and "0/0 100% 0m00s elapsed, 0m00s left" in out.getvalue()
    assert Progress(0, stream=io.StringIO()).left_s() == 0.0

    clock, out = Clock(), io.StringIO()
    one = Progress([Item("step_prefill", 42.0)], "sweep", stream=out, clock=clock, log_every_s=0.0)
    assert one.left_s() == 42.0  # before it runs: its prior
    clock.now = 30.0
    assert one.left_s() == 12.0  # while it runs: what the prior leaves
    clock.now = 50.0
    assert one.left_s() == 0.0  # running past its prior says nothing negative
    one.advance()
    assert one.left_s() == 0.0 and "1/1 100%" in out.getvalue()


def test_the_line_fit_shrugs_off_a_compile_and_needs_spread_priors():
    x = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    y = [0.5 + 2 * v for v in x]
    y[0] = 200.0  # the first point of a kind compiled its kernel
    a, b = fit_line(x, y)
    assert a == pytest.approx(0.5, abs=0.2) and b == pytest.approx(2.0, rel=0.05)
    assert fit_line([1.0, 1.1, 1.2, 1.05], [3.0, 3.3, 3.6, 3.15]) == (0.0, pytest.approx(3.0))  # no spread
    assert fit_line([1.0, 4.0], [2.0, 8.0]) == (0.0, pytest.approx(2.0))  # too few for a line


def test_a_group_borrows_its_familys_ratio_and_one_offs_are_not_samples():
    items = [Item("step_prefill", 10.0, one_off_s=8.0, family="step"), Item("step_prefill", 2.0, family="step"),
             Item("step_decode", 1.0, family="step"), Item("gemm", 1.0)]  # fmt: skip
    eta = Eta(items)
    assert eta.left_s() == pytest.approx(14.0)  # the priors as they are
    eta.record(30.0)  # a slow build: not a sample of the steps' rate
    assert eta.left_s() == pytest.approx(4.0)
    eta.record(6.0)  # the steps take 3x their priors here
    assert eta.predict(items[2]) == pytest.approx(3.0) and eta.predict(items[3]) == pytest.approx(1.0)


def gemm(m: int) -> Point:
    return Point("gemm", {"m": m, "k": 64, "n": 64, "dtype": "bf16"})


def step(b: int) -> Point:
    return Point("step_decode", {"context_lens": [256] * b})


def test_a_resumed_sweep_times_only_what_is_left(tmp_path):
    """The cheap half already in the store: the time left is the steps', from their own rate."""
    cheap, dear = [gemm(m) for m in range(1, 61)], [step(b) for b in range(1, 9)]
    store = Store.open(tmp_path / "m.jsonl", META)
    for p in cheap:
        store.add(Record(p.key, p.kind, p.params, 1e-3))
    clock, out = Clock(), io.StringIO()
    took = {p.key: 30.0 * jitter(i) for i, p in enumerate(dear)}  # each step 30 s: one log line a point

    def measure(p):
        clock.now += took[p.key]
        return 1e-3

    def prior(todo):
        assert todo == dear  # the stored points are neither measured nor predicted again
        return [Item(p.kind, 10.0, family="step") for p in todo]  # a prior 3x too fast

    rep = run_sweep(cheap + dear, store, measure, stream=out, prior=prior, clock=clock)
    assert rep.skipped == len(cheap) and rep.measured == len(dear)
    lines = [line for line in out.getvalue().splitlines() if " left" in line]
    assert "60 points already measured, 8 to go" in out.getvalue()
    checked = 0
    for line in lines:
        done = int(re.search(r"(\d+)/8", line)[1])
        if 2 <= done < 8:
            assert left_in_line(line) == pytest.approx(sum(list(took.values())[done:]), rel=0.2), line
            checked += 1
    assert checked == 6


def test_priors_put_the_work_where_the_sweep_spends_it():
    spec = load_model("llama-3.1-8b")
    cm = prior_cost_model(spec, load_profile("h200"))
    plan = make_plan(spec, "full", ["bf16", "fp8", "int8"], Limits(max_kv_tokens=800_000))
    items = point_costs(plan, cm, BenchTiming(20, 3, cpu=False, kv_tokens=800_000))
    assert len(items) == len(plan) and all(i.prior_s >= 0 for i in items)
    steps = sum(
        i.prior_s for p, i in zip(plan, items, strict=True) if p.kind.startswith(("step_", "serving"))
    )
    # on the H200 the steps and the serving run were 77% of the full sweep's 83 s, in 10% of its points
    assert steps > 0.6 * sum(i.prior_s for i in items)
    assert [p.kind for p, i in zip(plan, items, strict=True) if i.one_off_s > 0] == [
        "step_prefill"
    ]  # the build
    serving = [i.prior_s for p, i in zip(plan, items, strict=True) if p.kind == "serving"]
    assert serving[0] > 10 and serving[1:] == [0.0] * (len(QUANTITIES) - 1)  # one run gives them all
    # resumed among the steps: the first step left builds the model; after them, the serving run does
    k = next(i for i, p in enumerate(plan) if p.kind == "step_decode")
    assert point_costs(plan[k:], cm, BenchTiming(20, 3, cpu=False))[0].one_off_s > 0
    last = point_costs(plan[-len(QUANTITIES) :], cm, BenchTiming(20, 3, cpu=False))
    assert last[0].one_off_s > 0 and last[0].prior_s > serving[0]


def test_cpu_priors_come_without_a_profile(tiny_config):
    spec = load_model(str(tiny_config))
    plan = make_plan(spec, "cpu", ["bf16"], Limits(4096, 8, 512))
    items = point_costs(plan, prior_cost_model(spec), BenchTiming(3, 1, cpu=True, kv_tokens=4096))
    assert all(0 <= i.prior_s < 60 for i in items) and sum(i.prior_s for i in items) > 0
