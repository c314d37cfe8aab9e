"""benchmarks/transformers_levels_gpu.py without a GPU: the device-wait clock, the per-step probe on a fake
manager, the level table, and the plan's time against the four minutes it is meant to take."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import transformers_levels_gpu as lv  # noqa: E402


def _fake_torch():
    class Stream:
        def __init__(self, wait_s: float = 0.02):
            self.wait_s = wait_s

        def synchronize(self):
            time.sleep(self.wait_s)

    class Event:
        def synchronize(self):
            time.sleep(0.001)

    class Tensor:
        def tolist(self):
            return [1]

        def item(self):
            return 1

        def cpu(self):
            return self

    def synchronize():
        time.sleep(0.001)

    cuda = SimpleNamespace(Stream=Stream, Event=Event, synchronize=synchronize)
    return SimpleNamespace(cuda=cuda, Tensor=Tensor)


OTHER_S = 0.3


def test_sync_clock_counts_device_waits_of_its_own_thread_while_on():
    torch = _fake_torch()
    original = torch.cuda.Stream.synchronize
    clock = lv.SyncClock(torch)
    clock.install()
    try:
        # waits that must not count are 15x the one that must, so a loaded machine's slow sleeps cannot pass for
        # them (a 20-ms sleep once took 80 ms beside another test run on two cores)
        torch.cuda.Stream(OTHER_S).synchronize()  # off: not counted
        clock.start()
        other = threading.Thread(
            target=lambda: torch.cuda.Stream(OTHER_S).synchronize()
        )  # another thread: not counted
        other.start()
        other.join()
        torch.cuda.Stream().synchronize()
        assert torch.Tensor().tolist() == [1]  # wrapped calls still return what they return
        waited = clock.stop()
    finally:
        clock.remove()
    assert 0.018 <= waited < OTHER_S  # the one 20-ms wait of this thread while on
    assert torch.cuda.Stream.synchronize is original  # put back


class _Manager:
    """transformers 5.17's loop shape: the body schedules, calls self._generation_step(), then updates."""

    def __init__(self, torch, steps):
        self.torch, self.steps, self.batch_processor = torch, steps, None

    def _generation_step(self):
        time.sleep(0.003)
        self.torch.cuda.Stream().synchronize()  # the forward's outputs to the host

    def _generation_loop_body(self, batch_processor, bootstrapping):
        if not self.steps:
            return False
        self.steps -= 1
        self._generation_step()
        return True


def test_the_probe_adds_cpu_time_device_waits_and_counters_to_each_step():
    torch = _fake_torch()
    clock = lv.SyncClock(torch)
    clock.install()
    try:
        m = _Manager(torch, 3)
        probe = lv.LevelProbe(torch, "cpu", clock, lv.Nvml(torch, "cpu"))
        assert probe.attach(m) is None
        t0 = time.perf_counter()
        while m._generation_loop_body(None, bootstrapping=False):
            pass
        steps = probe.records(t0)
        probe.detach(m)
    finally:
        clock.remove()
    assert len(steps) == 3
    for s in steps:
        forward = s["forward_end_s"] - s["forward_start_s"]
        assert 0.018 <= s["sync_s"] <= forward  # the wait is inside the forward
        assert 0 <= s["forward_cpu_s"] < forward  # sleeping is not CPU time
        assert s["gc_collections"] == 0 and s["alloc_retries"] == 0
        assert "composition_error" in s  # the fake has no batch to read; the times stand
    assert "_generation_step" not in vars(m)


def _step(start, forward_ms, n_decode=1, prefill=0, **extra):
    return {"start_s": start, "forward_start_s": start, "forward_end_s": start + forward_ms / 1e3,
            "end_s": start + forward_ms / 1e3, "n_decode": n_decode, "prefill_tokens": prefill, **extra}  # fmt: skip


def test_the_table_splits_small_decode_steps_by_level():
    steps = [_step(0, 200, 0, 400)] + [
        _step(1 + k, ms, sync_s=ms / 2e3) for k, ms in enumerate([28, 30, 70, 104])
    ]
    data = {
        "header": {"command": "python benchmarks/transformers_levels_gpu.py --out x", "gpu": {"name": "H200"}},
        "segments": [
            {"kind": "generate", "model": "m", "token_gaps_s": [0.025, 0.027]},
            {"kind": "manager b1", "model": "m", "steps": steps},
            {"kind": "manager b1", "model": "m", "steps": [{k: v for k, v in s.items() if k not in ("n_decode", "prefill_tokens")} for s in steps]},
        ],
    }  # fmt: skip
    text = lv.summary(data)
    rows = [r.split(" | ") for r in text.splitlines() if r.startswith("| 1 ")]
    assert [(r[3], r[4], r[5], r[6]) for r in rows] == [
        ("fast", "2", "29.0", "14.5"),  # the 400-token prompt step is not a decode step
        ("mid", "1", "70.0", "35.0"),
        ("slow", "1", "104.0", "52.0"),
    ]
    assert "| 0 | m | generate b1 | per token | 2 | 26.0 |" in text
    # without the batch (another transformers' objects) the segment's first step is its prompts
    assert [r.split(" | ")[4] for r in text.splitlines() if r.startswith("| 2 ")] == ["2", "1", "1"]


def test_the_full_plan_fits_four_minutes_at_the_slow_level():
    plan = lv.Plan()
    build_and_imports_s = 45.0  # two 8B models built on the H200 (~11 s each, logs) and the imports
    assert plan.rounds * 2 * plan.segment_s() + build_and_imports_s <= 240.0
    assert lv.Plan.quick().num_blocks  # the CPU run cannot size a cache from free memory
