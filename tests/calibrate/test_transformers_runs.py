"""calibrate.transformers_runs on the CPU: the row and summary builders on synthetic timings, the trace and
catalogue inputs, the one-line error without transformers, the committed H200 summary rebuilt from its raw
runs, and (where transformers is installed) a tiny end-to-end sweep."""

import importlib.util
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from calibrate import transformers_runs as tr

ROOT = Path(__file__).resolve().parents[2]
H200_RUNS = ROOT / "calibration_runs" / "transformers_h200"


def _request(i, arrival, first, finish, tokens, error=None):
    return {
        "index": i,
        "arrival_s": arrival,
        "submitted_s": arrival,
        "first_token_s": first,
        "finish_s": finish,
        "prompt_tokens": 10,
        "requested_output_tokens": tokens,
        "output_tokens": tokens if error is None else 0,
        "token_times_s": [],
        "error": error,
    }


def test_generate_row_takes_medians_and_spreads_the_difference_over_n():
    # The first T(N+1) run is the slow one on the H200 (decode path not warmed): the median drops it.
    row = tr.generate_row(4, 512, 64, ttft_runs_s=[0.030, 0.031, 0.029], full_runs_s=[5.0, 1.95, 2.03])
    assert row.status == "ok"
    assert row.ttft_s == pytest.approx(0.030)
    assert row.decode_s_per_token == pytest.approx((2.03 - 0.030) / 64)


@pytest.mark.parametrize("q", [0, 10, 50, 90, 99, 100])
def test_percentile_matches_numpy_linear(q):
    xs = [5.0, 1.0, 3.5, 2.0, 8.0, 0.5, 4.0]
    assert tr.percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))
    assert tr.percentile([], q) is None


def test_served_summary_closed_form():
    reqs = [
        _request(0, arrival=0.0, first=0.1, finish=1.1, tokens=11),  # TTFT 0.1, TPOT 0.1
        _request(1, arrival=0.5, first=0.8, finish=2.8, tokens=5),  # TTFT 0.3, TPOT 0.5
        _request(2, arrival=1.0, first=1.2, finish=1.2, tokens=1),  # TTFT 0.2, no TPOT
        _request(3, arrival=1.5, first=None, finish=None, tokens=7, error="no result"),
    ]
    s = tr.served_summary(reqs)
    assert (s["requests"], s["finished"], s["output_tokens"]) == (4, 3, 17)
    assert s["span_s"] == pytest.approx(2.8)
    assert s["output_tokens_per_s"] == pytest.approx(17 / 2.8)
    assert s["ttft_p50_s"] == pytest.approx(0.2)
    assert s["ttft_p90_s"] == pytest.approx(float(np.percentile([0.1, 0.3, 0.2], 90)))
    assert s["tpot_p50_s"] == pytest.approx(0.3)  # median of 0.1 and 0.5


def _synthetic_result(model="m", replay_requests=None):
    rows = [
        tr.generate_row(1, 128, 64, [0.03] * 3, [1.7] * 3),
        tr.generate_row(1, 512, 64, [0.04] * 3, [1.8] * 3),
        tr.generate_row(8, 128, 64, [0.05] * 3, [2.0] * 3),
        tr.GenerateRow(8, 512, "oom"),
    ]
    from dataclasses import asdict

    res = {
        "header": {"model": model, "settings": {"attn_implementation": "sdpa"}},
        "generate": [asdict(r) for r in rows],
    }
    if replay_requests is not None:
        res["replay"] = {"requests": replay_requests}
    return res


def test_markdown_summary_tables():
    reqs = [_request(0, 0.0, 0.1, 1.1, 11), _request(1, 0.5, None, None, 3, error="no result")]
    text = tr.markdown_summary([_synthetic_result("tiny", reqs)])
    assert "### tiny — `generate` (sdpa)" in text
    assert "| TTFT at batch 1, ms | 30.0 | 40.0 |" in text
    # decode ms/token: (1.7 - 0.03) / 64 = 26.1 ms at batch 1; the OOM point says only that.
    assert "| 128 | 26.1 | 30.5 |" in text
    assert "| 512 | 27.5 | oom |" in text
    assert "| replay | 1/2 (partial) | 100.0 / 100.0 | 100.0 / 100.0 | 10 |" in text


def test_trace_requests_cap_and_scale():
    plan = tr.SweepPlan.full()
    conv = next(r for r in plan.replays if r.name == "conv_trace_rate")
    reqs = tr.trace_requests(conv)
    assert len(reqs) == conv.requests
    assert reqs[0][0] == 0.0
    assert all(b >= a for (a, _, _), (b, _, _) in zip(reqs, reqs[1:]))
    assert max(o for _, _, o in reqs) == conv.output_cap_tokens
    assert min(o for _, _, o in reqs) >= 1
    # The trace's first rows (arrived_at, prefill, decode): 0.0,374,44 and 4.314579,396,109.
    assert reqs[0][1:] == (374, 44) and reqs[1] == pytest.approx((4.314579, 396, 109))
    stretched = next(r for r in plan.replays if r.name == "conv_moderate")
    assert tr.trace_requests(stretched)[1][0] == pytest.approx(4.314579 * stretched.time_scale)
    quick = tr.trace_requests(tr.SweepPlan.quick().replays[0])
    assert quick[1][0] == pytest.approx(0.04314579)
    assert max(p for _, p, _ in quick) <= 48


def test_full_plan_replays_both_traces_at_their_rate_and_stretched():
    specs = {s.name: s for s in tr.SweepPlan.full().replays}
    traces = {s.trace for s in specs.values()}
    assert traces == {tr.CONVERSATION_TRACE, tr.CODE_TRACE}
    for trace in traces:
        scales = sorted(s.time_scale for s in specs.values() if s.trace == trace)
        assert scales[0] == 1.0 and scales[-1] > 1.0
    # The code trace's first 63 rows arrive within 40 s; its 64th only at 183 s (a replay would idle for minutes).
    code = tr.trace_requests(specs["code_trace_rate"])
    assert code[-1][0] < 40.0
    longer = tr.ReplaySpec("x", tr.CODE_TRACE, 64, 128, 1.0, 1.0)
    assert tr.trace_requests(longer)[-1][0] > 180.0
    assert all((tr.REPO_ROOT / s.trace).is_file() for s in specs.values())


def test_full_plan_points_batch1_sweep_first_then_static_batches():
    plan = tr.SweepPlan.full()
    pts = plan.points()
    assert pts[:6] == [(1, p) for p in (128, 512, 1024, 2048, 4096, 8192)]
    assert pts[6:] == [(b, p) for p in (512, 2048) for b in (4, 16, 64)]
    assert len(set(pts)) == len(pts)


def test_full_plan_fits_one_device_call_on_last_sessions_llama_timings():
    """The plan's own estimate (generate points from the 2026-12-02 Llama-3.1-8B H200 timings, replays at their
    expected time plus start-up) leaves room for the model build inside --budget-s 540."""
    plan = tr.SweepPlan.full()
    rows = json.loads((H200_RUNS / "transformers_llama-3.1-8b_h200.json").read_text())["generate"]
    ok = [r for r in rows if r["status"] == "ok"]

    def nearest(b, p):
        return min(
            ok,
            key=lambda r: (abs(math.log(r["batch_size"] * r["prompt_tokens"] / (b * p))), -r["batch_size"]),
        )

    gen_s = 0.0
    for b, p in plan.points():
        r = nearest(b, p)
        t1 = r["ttft_s"] * (b * p) / (r["batch_size"] * r["prompt_tokens"])
        tn = t1 + plan.decode_tokens * r["decode_s_per_token"]
        gen_s += (1 + plan.repeats) * tn + plan.repeats * t1
    build_s = 12.0  # 8.5 s measured for Llama on 2026-12-02
    total = build_s + gen_s + tr.replays_reserve_s(plan.replays, {})
    assert 60.0 < gen_s < 150.0, gen_s
    assert total < 540.0, (gen_s, total)


def test_config_json_path(tiny_config):
    assert tr.config_json_path("llama-3.1-8b").name == "llama-3.1-8b.json"
    assert tr.config_json_path(str(tiny_config)) == tiny_config
    assert tr.model_label(str(tiny_config)) == "tiny"
    with pytest.raises(ValueError, match="unknown model"):
        tr.config_json_path("no-such-model")


def _run_module_without_transformers(*args):
    # sys.modules[name] = None makes `import transformers` raise ImportError whether or not it is installed.
    code = (
        "import sys, runpy; sys.modules['transformers'] = None; "
        "sys.argv = ['transformers_runs', *sys.argv[1:]]; "
        "runpy.run_module('calibrate.transformers_runs', run_name='__main__')"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


def _one_line(stderr):
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_missing_transformers_is_one_line_and_exit_2(tmp_path):
    r = _run_module_without_transformers("--out", str(tmp_path), "--quick", "--device", "cpu")
    assert r.returncode == 2
    assert "transformers: not installed" in _one_line(r.stderr)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_summarize_needs_no_transformers(tmp_path):
    (tmp_path / "transformers_m_h200.json").write_text(json.dumps(_synthetic_result("m")))
    r = _run_module_without_transformers("--summarize", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "| TTFT at batch 1, ms | 30.0 | 40.0 |" in r.stdout
    empty = _run_module_without_transformers("--summarize", str(tmp_path / "nothing"))
    assert empty.returncode == 2 and "no transformers_*.json" in _one_line(empty.stderr)


def test_committed_h200_summary_is_rebuilt_from_its_raw_runs():
    files = sorted(H200_RUNS.glob("transformers_*.json"))
    assert {f.name for f in files} >= {
        "transformers_llama-3.1-8b_h200.json",
        "transformers_qwen2.5-7b_h200.json",
    }
    results = [json.loads(f.read_text()) for f in files]
    assert (H200_RUNS / "summary.md").read_text().strip() == tr.markdown_summary(results).strip()
    for res in results:
        assert res["header"]["gpu"]["name"] == "NVIDIA H200"
        for row in res["generate"]:
            if row["status"] == "ok":
                # The stored medians are what the raw runs give.
                again = tr.generate_row(
                    row["batch_size"],
                    row["prompt_tokens"],
                    row["new_tokens"],
                    row["ttft_runs_s"],
                    row["full_runs_s"],
                )
                assert again.decode_s_per_token == pytest.approx(row["decode_s_per_token"])


# ---------------------------------------------------------------------------------------------------------------
# The budget and resume rules, on injected measuring functions and a fake clock.


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _fake_measure(clock, seconds_per_point=1.0, oom=(), calls=None):
    def measure(b, p):
        if calls is not None:
            calls.append((b, p))
        clock.now += seconds_per_point
        if (b, p) in oom:
            raise tr.OutOfMemory(f"{b}x{p}")
        # TTFT grows with the batch's tokens, decode 10 ms/token at every point.
        ttft = 1e-5 * b * p
        return tr.generate_row(b, p, 4, [ttft] * 2, [ttft + 0.04] * 2)

    return measure


def test_generate_sweep_measures_in_plan_order_and_writes_after_each_point():
    plan, clock, calls, written = tr.SweepPlan.quick(), FakeClock(), [], []
    rows = tr.run_generate_sweep(
        _fake_measure(clock, calls=calls), plan, clock.now + 1e6, lambda m: None, None, written.append, clock
    )
    assert calls == plan.points()
    assert [(r["batch_size"], r["prompt_tokens"]) for r in rows] == plan.points()
    assert [len(w) for w in written] == list(range(1, len(plan.points()) + 1))  # one write per point
    assert all(r["status"] == "ok" for r in rows)


def test_generate_sweep_continues_a_file_keeping_measured_points():
    plan, clock = tr.SweepPlan.quick(), FakeClock()
    first = tr.run_generate_sweep(_fake_measure(clock), plan, clock.now + 1e6, lambda m: None, clock=clock)
    pts = plan.points()
    # The stored file: the first point measured, the second skipped for time, the third not reached.
    done = {pts[0]: first[0], pts[1]: {**first[1], "status": "skipped: time budget (estimated 9 s)"}}
    calls = []
    rows = tr.run_generate_sweep(
        _fake_measure(clock, calls=calls), plan, clock.now + 1e6, lambda m: None, done, clock=clock
    )
    assert calls == pts[1:]  # the measured point is kept, the skipped one measured again
    assert rows[0] == first[0]


def test_generate_sweep_skips_points_past_the_deadline_and_after_oom():
    plan = tr.SweepPlan(
        batch1_prompt_tokens=(100, 200),
        batch_sizes=(4, 8),
        batch_prompt_tokens=(100, 200),
        decode_tokens=4,
        repeats=2,
        replays=(),
    )
    clock, calls, log = FakeClock(), [], []
    # b=4 x 100 runs out of memory: b=8 x 100, 4 x 200 and 8 x 200 are not tried.
    rows = tr.run_generate_sweep(
        _fake_measure(clock, oom={(4, 100)}, calls=calls), plan, clock.now + 1e6, log.append, clock=clock
    )
    status = {(r["batch_size"], r["prompt_tokens"]): r["status"] for r in rows}
    assert calls == [(1, 100), (1, 200), (4, 100)]
    assert status[(4, 100)] == "oom"
    assert all(status[pt].startswith("skipped: a smaller point") for pt in [(8, 100), (4, 200), (8, 200)])
    # A deadline just after the first point: the second point's estimate (decode 10 ms x 4, 3 runs) does not fit.
    clock, calls = FakeClock(), []
    rows = tr.run_generate_sweep(
        _fake_measure(clock, calls=calls), plan, clock.now + 1.05, log.append, clock=clock
    )
    assert calls == [(1, 100)]
    assert all(r["status"].startswith("skipped: time budget") for r in rows[1:])
    assert any("left no room" in m for m in log)


def test_each_point_is_warmed_with_the_timed_runs_length(monkeypatch):
    """The first session warmed only the 1-token path and its first T(65) ran 1.1-3.5x slow: the warm-up is now
    a generate of the timed length, then the timed T(1) and T(N+1) runs."""
    import torch  # the calibrate extra, installed with the test suite (README)

    calls = []

    def fake_timed(torch_, model, ids, new_tokens, device):
        calls.append((tuple(ids.shape), new_tokens))
        return 0.01 * new_tokens, "DynamicCache"

    monkeypatch.setattr(tr, "_timed_generate", fake_timed)
    plan = tr.SweepPlan.full()
    model = SimpleNamespace(config=SimpleNamespace(vocab_size=1000))
    row = tr.measure_generate_point(torch, model, plan, "cpu", 4, 16)
    n, r = plan.decode_tokens, plan.repeats
    assert calls == [((4, 16), n + 1)] + [((4, 16), 1)] * r + [((4, 16), n + 1)] * r
    assert row.warmup_s == pytest.approx(0.01 * (n + 1)) and row.full_runs_s == [0.01 * (n + 1)] * r
    assert row.decode_s_per_token == pytest.approx(0.01)


def _spec(name, expected_s):
    return tr.ReplaySpec(name, tr.CONVERSATION_TRACE, 3, 4, 1.0, expected_s)


def test_replays_skip_what_does_not_fit_and_stop_at_the_limit():
    clock, started, written = FakeClock(), [], []
    specs = [_spec("a", 100.0), _spec("b", 300.0), _spec("c", 10.0)]

    def run_one(spec, stop_at):
        started.append((spec.name, stop_at - clock.now))
        clock.now += spec.expected_s
        return {"spec": {}, "status": "ok"}

    deadline = clock.now + 200.0
    runs = tr.run_replays(run_one, specs, deadline, lambda m: None, None, written.append, clock)
    # a: 100 s + start-up fits, stopped at 1.5 x expected; b: 300 s does not fit in what is left; c fits, its stop
    # time is the deadline's (95 s left) rather than 1.5 x 10 s + start-up only if that is sooner.
    assert started[0] == ("a", pytest.approx(tr.REPLAY_OVERHEAD_S + 1.5 * 100.0))
    assert [n for n, _ in started] == ["a", "c"]
    assert started[1][1] == pytest.approx(tr.REPLAY_OVERHEAD_S + 1.5 * 10.0)
    assert runs["b"]["status"].startswith("skipped: time budget")
    assert list(runs) == ["a", "b", "c"] and len(written) == 3
    # Too little time: the stop time is the deadline.
    clock2, got = FakeClock(), []
    tr.run_replays(
        lambda spec, stop_at: got.append(stop_at) or {"status": "ok"},
        [_spec("d", 100.0)],
        clock2.now + 120.0,
        lambda m: None,
        clock=clock2,
    )
    assert got == [clock2.now + 120.0]


def test_replays_continue_a_file_and_keep_an_interrupted_run():
    clock, started, written = FakeClock(), [], []
    specs = [_spec("a", 10.0), _spec("b", 10.0), _spec("c", 10.0)]
    done = {"a": {"status": "ok", "kept": True}, "b": {"status": "partial: stop time"}}

    def run_one(spec, stop_at):
        started.append(spec.name)
        return {"status": "interrupted" if spec.name == "c" else "ok"}

    with pytest.raises(KeyboardInterrupt):
        tr.run_replays(run_one, specs, clock.now + 1e6, lambda m: None, done, written.append, clock)
    assert started == ["b", "c"]  # a finished before; b was partial, so it runs again
    assert written[-1]["a"]["kept"] and written[-1]["c"]["status"] == "interrupted"
    assert tr.replays_reserve_s(specs, done) == pytest.approx(2 * (10.0 + tr.REPLAY_OVERHEAD_S))


# ---------------------------------------------------------------------------------------------------------------
# The step recorder, on stand-ins for transformers 5.x's manager objects.


def _future(rid, query, past, generated, new_token=True):
    state = SimpleNamespace(
        request_id=rid, position_offset=past + query, generated_len=lambda: generated, query=query
    )
    return SimpleNamespace(state=state, query_length=query, has_new_token=new_token)


def _processor(batch):
    return SimpleNamespace(
        inputs_and_outputs=SimpleNamespace(
            requests_in_batch=batch,
            num_q_tokens=sum(f.query_length for f in batch),
            max_kv_read=sum(f.state.position_offset - f.query_length for f in batch),
        ),
        scheduler=SimpleNamespace(waiting_requests={"z": 1}, active_requests={"a": 1, "b": 2, "c": 3}),
        cache=SimpleNamespace(get_num_free_blocks=lambda: 42),
    )


def test_batch_composition_splits_decodes_from_prefill_chunks():
    batch = [
        _future("a", 1, 300, generated=5),  # decoding
        _future("b", 1, 40, generated=2),  # decoding
        _future("c", 256, 512, generated=0, new_token=False),  # middle chunk of a split prompt
        _future("d", 100, 0, generated=0),  # a whole short prompt
    ]
    rec = tr.batch_composition(_processor(batch))
    assert (rec["n_decode"], rec["decode_context_tokens"]) == (2, 340)
    assert rec["prefill"] == [["c", 256, 512], ["d", 100, 0]]
    assert rec["prefill_tokens"] == 356 and rec["out_tokens"] == 3
    assert (rec["q_tokens"], rec["kv_read_tokens"]) == (358, 852)
    assert (rec["waiting"], rec["active"], rec["free_blocks"]) == (1, 3, 42)


class FakeManager:
    """transformers 5.17's loop shape: the body schedules, calls self._generation_step(), then updates."""

    def __init__(self, batches):
        self.batches = list(batches)
        self.batch_processor = None
        self.stamps = []

    def _generation_step(self):
        time.sleep(0.002)

    def _generation_loop_body(self, batch_processor, bootstrapping):
        if not self.batches:  # idle: no step, as when the manager waits for requests
            return False
        self.batch_processor = _processor(self.batches.pop(0))
        self._generation_step()
        self.stamps.append(time.perf_counter())  # update_batch stamps the tokens
        return True


def test_step_recorder_times_each_step_and_ignores_idle_iterations():
    m = FakeManager([[_future("a", 64, 0, 0)], [_future("a", 1, 64, 1), _future("b", 10, 0, 0)]])
    rec = tr.StepRecorder()
    assert rec.attach(m) is None
    t0 = time.perf_counter()
    while m._generation_loop_body(None, bootstrapping=False):
        pass
    m._generation_loop_body(None, bootstrapping=False)  # idle iteration: no record
    steps = rec.records(t0)
    assert len(steps) == 2
    for s, stamp in zip(steps, m.stamps):
        assert 0 <= s["start_s"] <= s["forward_start_s"] < s["forward_end_s"] <= s["end_s"]
        assert s["forward_end_s"] - s["forward_start_s"] >= 0.0015  # the step's own 2 ms
        assert s["forward_end_s"] - 1e-6 <= stamp - t0 <= s["end_s"] + 1e-6  # tokens stamped inside the step
    assert steps[1]["n_decode"] == 1 and steps[1]["prefill"] == [["b", 10, 0]]
    assert rec.records(time.perf_counter()) == []  # steps before t0 are the warm-up's
    rec.detach(m)
    assert "_generation_step" not in vars(m) and m._generation_step.__func__ is FakeManager._generation_step
    assert tr.StepRecorder().attach(object()) is not None  # no such methods: says why
    # A batch the recorder cannot read (another version's objects) still runs, and its step keeps its times.
    unreadable = SimpleNamespace(request_id="x", position_offset=3, generated_len=None)
    m = FakeManager([[SimpleNamespace(state=unreadable, query_length=1, has_new_token=True)]])
    rec = tr.StepRecorder()
    rec.attach(m)
    assert m._generation_loop_body(None, bootstrapping=False) is True
    (step,) = rec.records(t0)
    assert "TypeError" in step["composition_error"] and step["end_s"] >= step["forward_end_s"]


# ---------------------------------------------------------------------------------------------------------------
# Continuing a file, bad choices, what the script imports.


def test_load_previous_accepts_only_the_same_plan_and_gpu(tmp_path):
    plan = tr.SweepPlan.quick()
    path = tmp_path / "transformers_m_h200.json"
    assert tr.load_previous(path, plan, "NVIDIA H200") is None
    path.write_text(json.dumps({"header": {"plan": tr.plan_as_json(plan), "gpu": {"name": "NVIDIA H200"}}}))
    assert tr.load_previous(path, plan, "NVIDIA H200")["header"]["gpu"]["name"] == "NVIDIA H200"
    with pytest.raises(tr.ResumeMismatch, match="measured on NVIDIA H200"):
        tr.load_previous(path, plan, "NVIDIA H100")
    with pytest.raises(tr.ResumeMismatch, match="another plan"):
        tr.load_previous(path, tr.SweepPlan.full(), "NVIDIA H200")
    path.write_text("{not json")
    with pytest.raises(tr.ResumeMismatch, match="not a result file"):
        tr.load_previous(path, plan, "NVIDIA H200")


@pytest.mark.parametrize(
    "args, where",
    [
        (["--phases", "generate,decode"], "--phases: unknown ['decode']"),
        (["--replays", "conv_trace_rate,nope"], "--replays: unknown ['nope']"),
        (["--models", "no-such-model"], "--models: unknown model 'no-such-model'"),
    ],
)
def test_bad_choices_are_one_line_and_exit_2(tmp_path, capsys, args, where):
    assert tr.main(["--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: calibrate.transformers_runs: " + where)
    assert err.count("\n") == 1 and not (tmp_path / "o").exists()


# The GPU machine has torch, transformers and numpy only: nothing of the simulator's stack may be imported.
BLOCKED = ("pydantic", "simpy", "simulator", "scipy", "rich")


def _run_blocked(args, timeout=300):
    code = (
        "import sys, runpy\n"
        f"for name in {BLOCKED!r}: sys.modules[name] = None\n"
        "sys.argv = ['transformers_runs', *sys.argv[1:]]\n"
        "runpy.run_module('calibrate.transformers_runs', run_name='__main__')\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout
    )


def test_the_script_imports_nothing_of_the_simulators_stack(tmp_path):
    (tmp_path / "transformers_m_h200.json").write_text(json.dumps(_synthetic_result("m")))
    r = _run_blocked(["--summarize", str(tmp_path)])
    assert r.returncode == 0, r.stderr
    assert "| TTFT at batch 1, ms |" in r.stdout


def test_tiny_plan_on_the_cpu_end_to_end(tmp_path, tiny_config):
    """LONG (6 s to 2 min: two processes import transformers, which takes 40 s on a loaded 2-core machine). With transformers: the quick plan in two calls, as
    the device would run it split — `generate` first, then everything, which keeps the measured points and adds
    the replays — with pydantic, simpy and the simulator unimportable. Checks the JSON's shape, and that every
    recorded manager step holds exactly the tokens stamped between its forward's end and its own end. Without
    transformers: the same command gives the one-line error."""
    cmd = ["--out", str(tmp_path), "--quick", "--device", "cpu", "--models", str(tiny_config)]
    if importlib.util.find_spec("transformers") is None:
        r = _run_blocked(cmd)
        assert r.returncode == 2 and "transformers: not installed" in _one_line(r.stderr)
        return
    out = tmp_path / "transformers_tiny_h200.json"
    r = _run_blocked(cmd + ["--phases", "generate"])
    assert r.returncode == 0, r.stderr[-3000:]
    first = json.loads(out.read_text())
    assert first["replays"] == {}
    plan = tr.SweepPlan.quick()
    rows = first["generate"]
    assert [(x["batch_size"], x["prompt_tokens"]) for x in rows] == plan.points()
    for row in rows:
        assert row["status"] == "ok", row
        assert len(row["ttft_runs_s"]) == len(row["full_runs_s"]) == plan.repeats
        assert row["ttft_s"] > 0 and math.isfinite(row["decode_s_per_token"]) and row["warmup_s"] > 0
        assert row["cache_class"]
    assert first["header"]["model_info"]["first_matrix_zero_fraction"] < 0.01  # random, not zeros
    assert first["header"]["plan"] == tr.plan_as_json(plan)

    with_cb = (
        importlib.util.find_spec("psutil") is not None
    )  # the manager sizes nothing on the CPU without it
    r = _run_blocked(cmd if with_cb else cmd + ["--phases", "generate"])
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["generate"] == rows  # kept, not measured again
    assert len(res["header"]["continued"]) == 1
    assert "TTFT at batch 1" in r.stdout and (tmp_path / "summary.md").exists()
    if not with_cb:
        return
    assert list(res["replays"]) == [s.name for s in plan.replays]
    for spec in plan.replays:
        run = res["replays"][spec.name]
        assert run["status"] == "ok" and run["summary"]["finished"] == spec.requests
        assert run["spec"]["time_scale"] == spec.time_scale
        assert run["settings"]["num_blocks"] == plan.cb_num_blocks
        assert run["settings"]["attn_implementation_during_run"].startswith("paged|")
        assert run["settings"]["scheduler.class"] == "FIFOScheduler"
        for q in run["requests"]:
            assert q["output_tokens"] == q["requested_output_tokens"] == len(q["token_times_s"])
            assert q["submitted_s"] >= q["arrival_s"] - 1e-3 and q["scheduled_s"] <= q["first_token_s"]
        stamps = sorted(t for q in run["requests"] for t in q["token_times_s"])
        steps = run["steps"]
        assert sum(s["out_tokens"] for s in steps) == len(stamps)
        for s in steps:
            inside = [t for t in stamps if s["forward_end_s"] - 2e-6 <= t <= s["end_s"] + 2e-6]
            assert len(inside) == s["out_tokens"], s
            assert s["q_tokens"] == s["n_decode"] + s["prefill_tokens"]
        # Every prompt token was scheduled exactly once, in chunks of at most the token budget.
        prefilled = {}
        for s in steps:
            assert s["q_tokens"] <= plan.cb_max_batch_tokens
            for rid, tokens, past in s["prefill"]:
                assert past == prefilled.get(rid, 0)
                prefilled[rid] = past + tokens
        assert prefilled == {f"r{q['index']}": q["prompt_tokens"] for q in run["requests"]}
    # The code replay's prompts (200 tokens) exceed the 128-token budget: chunked prefill was recorded.
    assert any(past > 0 for s in res["replays"]["code_trace_rate"]["steps"] for _, _, past in s["prefill"])
