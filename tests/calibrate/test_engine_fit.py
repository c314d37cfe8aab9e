"""Engine fit: host terms recovered from synthetic rows, steps rebuilt from synthetic token stamps, held-out rows
never fitted, and the command end to end on a small folder of raw runs (no torch, no GPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from calibrate.engine_fit import (
    STEP_GAP_S,
    Row,
    Split,
    TrainSet,
    fit_engine,
    fit_host,
    main,
    newest_files,
    predict,
    read_runs,
    reconstruct_steps,
)
from core.engine_profile import load_engine_profile

TRUE_HOST_S = np.array([0.7e-3, 0.04e-3, 1.2e-6])  # per layer: step, sequence, prompt token


def synthetic_rows(
    seed: int, models=("a", "b"), n: int = 40, host=TRUE_HOST_S, noise: float = 0.0
) -> list[Row]:
    """Rows whose measured time is GPU time + known per-layer host terms (times a little noise)."""
    rng = np.random.default_rng(seed)
    rows = []
    for m, layers in zip(models, (32, 28, 48)):
        for k in range(n):
            seqs, prompt = int(rng.integers(1, 128)), int(rng.integers(0, 4000))
            gpu = rng.uniform(0.1e-3, 20e-3, 5)
            t = gpu.sum() + layers * (host[0] + host[1] * seqs + host[2] * prompt)
            t *= 1 + noise * rng.standard_normal()
            rows.append(Row(m, "replay", "step_s", f"{m} {k}", t, 0.1, gpu, seqs, prompt, layers))
    return rows


def test_fit_recovers_known_host_terms():
    rows = synthetic_rows(1)
    fit = fit_host(rows)
    np.testing.assert_allclose(fit.host_s, TRUE_HOST_S, rtol=1e-3)
    np.testing.assert_allclose(predict(rows, fit), [r.measured_s for r in rows], rtol=1e-4)
    # with 2% noise the terms stay within a few percent, and a per-step fit (no layers) cannot match two models
    noisy = fit_host(synthetic_rows(2, noise=0.02))
    np.testing.assert_allclose(noisy.host_s, TRUE_HOST_S, rtol=0.08)
    flat = fit_engine("x", synthetic_rows(3, models=("a", "c")), {"a"}, per_layer=False)
    layered = fit_engine("x", synthetic_rows(3, models=("a", "c")), {"a"}, per_layer=True)
    assert (
        np.median(np.abs(layered.checks[0].errors_pct)) < 0.1 < np.median(np.abs(flat.checks[0].errors_pct))
    )


def test_fit_can_recover_a_kernel_factor_when_asked():
    rows = synthetic_rows(4)
    for r in rows:  # the engine's GEMMs 1.5x slower than the GPU profile's curve
        r.measured_s += 0.5 * r.gpu_s[0]
    fit = fit_host(rows, fit_factors=True)
    assert fit.factors[0] == pytest.approx(1.5, rel=1e-3)
    np.testing.assert_allclose(fit.host_s, TRUE_HOST_S, rtol=1e-3)


def test_an_overlapping_fit_recovers_max_of_gpu_and_host_plus_serial():
    rows = synthetic_rows(5)
    serial = 3e-3
    for r in rows:  # the host's launches run alongside the GPU: the longer of the two, plus a serial part
        host = r.layers * (TRUE_HOST_S[0] + TRUE_HOST_S[1] * r.seqs + TRUE_HOST_S[2] * r.prompt_tokens)
        r.measured_s = max(float(r.gpu_s.sum()), host) + serial
    fit = fit_host(rows, overlap=True)
    assert fit.serial_s == pytest.approx(serial, rel=1e-3)
    np.testing.assert_allclose(fit.host_s, TRUE_HOST_S, rtol=1e-3)
    np.testing.assert_allclose(predict(rows, fit), [r.measured_s for r in rows], rtol=1e-4)
    # the additive fit cannot match these rows
    add = fit_host(rows)
    assert np.median(np.abs(predict(rows, add) / [r.measured_s for r in rows] - 1)) > 0.01


def test_held_out_rows_are_never_fitted():
    rows = synthetic_rows(5, models=("a", "b", "c"))
    split = Split.by_model(rows, {"a"})
    assert not set(split.train) & set(split.held_out)
    assert sorted([*split.train, *split.held_out]) == list(range(len(rows)))
    assert {rows[i].model for i in split.train} == {"a"}
    before = fit_engine("x", rows, {"a"})
    for i in split.held_out:  # whatever the held-out rows measured, the fitted terms do not move
        rows[i].measured_s *= 3.0
    after = fit_engine("x", rows, {"a"})
    np.testing.assert_array_equal(before.fit.host_s, after.fit.host_s)
    assert after.fit.train_rows == len(split.train)
    # ... and only they are reported as checks: 3x slower shows as about -67%
    assert sum(len(c.errors_pct) for c in after.checks if c.metric == "step_s") == len(split.held_out)
    assert {c.metric for c in after.checks} == {"step_s", "step_s, >= 2048 prompt tokens", "busy_s"}
    assert all(np.allclose(c.errors_pct, -66.67, atol=0.1) for c in after.checks)  # subsets and sums too
    assert not any(label.startswith("a") for c in after.checks for label in c.labels)


def _request(submitted: float, prompt: int, stamps: list[float]) -> dict:
    return {"submitted_s": submitted, "prompt_tokens": prompt, "token_times_s": stamps}


def test_steps_rebuilt_from_token_stamps():
    """Three requests through a manager with a budget of 100 tokens per step. Steps end at 0.10, 0.13, 0.16,
    0.19 (tokens within 0.3 ms of each other), then the manager idles and a fourth request arrives at 1.0.

    r0 (prompt 50) prefills in step 0, decodes in steps 1-3. r1 (prompt 120, arrives with r0) cannot fit: 50 of
    its tokens run hidden in step 0, the other 70 (with r0's decode: 71 <= 100) in step 1, where its first
    token comes. r2 (prompt 10) arrives during step 1 and prefills in step 2."""
    jitter = 0.0003
    r0 = _request(0.0, 50, [0.10, 0.13 + jitter, 0.16, 0.19 + jitter])
    r1 = _request(0.0, 120, [0.13, 0.16 + jitter, 0.19])
    r2 = _request(0.11, 10, [0.16 + jitter / 2, 0.19 + jitter / 2])
    r3 = _request(1.0, 30, [1.05, 1.08])
    steps, st = reconstruct_steps([r0, r1, r2, r3], max_batch_tokens=100)
    assert [round(s.end_s, 4) for s in steps] == [0.1, 0.1303, 0.1603, 0.1903, 1.05, 1.08]
    assert steps[0].chunks == [(50, 0), (50, 0)] and steps[0].decode_contexts == []
    assert steps[1].chunks == [(70, 50)] and steps[1].decode_contexts == [51]
    assert steps[2].chunks == [(10, 0)] and sorted(steps[2].decode_contexts) == [52, 121]
    assert steps[3].chunks == [] and sorted(steps[3].decode_contexts) == [11, 53, 122]
    assert steps[1].end_s - steps[1].start_s == pytest.approx(0.0303)
    # the first step and the one after the idle gap have no known start: not used
    assert [s.usable for s in steps] == [False, True, True, True, False, True]
    assert steps[4].start_s == 1.0
    assert (st.steps, st.tokens, st.hidden_chunks, st.idle, st.late, st.over_budget) == (6, 11, 1, 1, 0, 0)
    assert st.ambiguous_gaps == 0 and st.skipped == 0 and st.repeated == 0


def test_step_rebuild_reports_what_it_cannot_explain():
    # two steps' stamps closer than the gap merge: a request appears twice in one step
    merged = [_request(0.0, 10, [0.1, 0.1 + STEP_GAP_S / 2])]
    _, st = reconstruct_steps(merged, 100)
    assert st.repeated == 1 and st.ambiguous_gaps == 1
    # a request that never finished: steps after its submission are cut (its tokens are missing from them)
    cut = [
        _request(0.0, 10, [0.1, 0.2, 0.3, 0.4]),
        {"submitted_s": 0.25, "prompt_tokens": 10, "token_times_s": []},
    ]
    steps, st = reconstruct_steps(cut, 100)
    assert [s.end_s for s in steps] == [0.1, 0.2, 0.3] and st.cut == 1


def _raw_file(folder: Path, model: str, host_step_s: float) -> None:
    """A raw run in calibrate.transformers_runs' layout with made-up times."""
    gen = []
    for b, p in [(1, 128), (4, 512), (16, 2048)]:
        t = host_step_s + 1e-6 * b * p
        gen.append(
            {"batch_size": b, "prompt_tokens": p, "status": "ok", "new_tokens": 8,
             "ttft_runs_s": [t, t * 1.01, t * 0.99], "full_runs_s": [9 * t * 3, 9 * t, 9 * t * 1.02]}
        )  # fmt: skip
    gen.append(
        {"batch_size": 64, "prompt_tokens": 8192, "status": "oom", "ttft_runs_s": [], "full_runs_s": []}
    )
    reqs = [_request(0.0, 100, [0.1 + 0.05 * k for k in range(6)]), _request(0.12, 300, [0.2, 0.25, 0.3])]
    data = {
        "header": {"model": model, "date_utc": "2026-12-02T05:53:00+00:00", "command": "runs",
                   "gpu": {"name": "NVIDIA H200"}, "versions": {"transformers": "5.17.0", "torch": "2"}},
        "generate": gen,
        "replay": {"settings": {"block_size": 256, "max_batch_tokens": 8192, "use_cuda_graph": [False, False],
                                "max_requests_per_batch": 1024}, "requests": reqs},
    }  # fmt: skip
    (folder / f"transformers_{model}_h200.json").write_text(json.dumps(data))


def test_command_writes_loadable_profiles_and_a_table(tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    _raw_file(runs, "llama-3.1-8b", 0.02)
    _raw_file(runs, "qwen2.5-7b", 0.02)
    (runs / "point.json").write_text(json.dumps({"model": "llama-3.1-8b", "rows": []}))  # no header: skipped
    out, table = tmp_path / "profiles", tmp_path / "fit.md"
    argv = [str(runs), "--gpu", "h200", "--out", str(out), "--table", str(table), "--train-runs", "replay"]
    assert main(argv) == 0
    for name in ("transformers", "transformers-generate"):
        p = load_engine_profile(str(out / f"{name}.yaml"))
        assert p.gpu == "h200" and p.version == "5.17.0" and p.validation is not None
        assert "qwen2.5-7b" in p.validation.held_out and p.sources["fit"].raw == [
            str(runs / "transformers_llama-3.1-8b_h200.json")
        ]
    assert load_engine_profile(str(out / "transformers.yaml")).scheduling.block_size == 256
    text = table.read_text()
    assert "Held-out errors" in text and "qwen2.5-7b" in text
    assert not list(out.glob(".*partial"))


def test_bad_inputs_are_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "absent"), "--gpu", "h200", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "not a folder" in err
    assert main([str(tmp_path)]) == 2  # no --gpu: argparse's complaint, as one line too
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--gpu" in err and "--help" in err
    assert main([str(tmp_path), "--gpu", "h900"]) == 2
    assert "h900" in capsys.readouterr().err
    runs = tmp_path / "runs"
    runs.mkdir()
    _raw_file(runs, "qwen2.5-7b", 0.02)
    assert (
        main([str(runs), "--gpu", "h200", "--out", str(tmp_path / "o"), "--table", str(tmp_path / "t.md")])
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--train llama-3.1-8b" in err and "qwen2.5-7b" in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "t.md").exists()  # nothing half-written
    # a replay name the runs do not have: nothing to fit, said in one line naming the runs there are
    _raw_file_v2(runs, "llama-3.1-8b")
    argv = [str(runs), "--gpu", "h200", "--out", str(tmp_path / "o"), "--table", str(tmp_path / "t.md")]
    assert main([*argv, "--train-runs", "conv_nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--train-runs" in err and "llama-3.1-8b code_trace_rate" in err
    # a malformed step record: one line naming the file and the block
    data = json.loads((runs / "transformers_llama-3.1-8b_h200.json").read_text())
    data["replays"]["conv_trace_rate"]["steps"][1]["prefill"] = [["r0"]]
    (runs / "transformers_llama-3.1-8b_h200.json").write_text(json.dumps(data))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "conv_trace_rate.steps" in err and "malformed" in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "t.md").exists()


def test_generate_rows_drop_the_slow_first_decode_run_and_failed_points():
    from calibrate.engine_fit import generate_rows
    from core.cost_model import CostModel
    from core.hardware import load_profile
    from core.model_spec import load_model

    cm = CostModel(load_profile("h200"), load_model("llama-3.1-8b"), serving_host=False)
    points = [
        {"batch_size": 4, "prompt_tokens": 512, "status": "ok", "new_tokens": 64,
         "ttft_runs_s": [0.06, 0.05, 0.07], "full_runs_s": [5.0, 1.65, 1.85]},
        {"batch_size": 64, "prompt_tokens": 8192, "status": "oom", "ttft_runs_s": [], "full_runs_s": []},
    ]  # fmt: skip
    ttft, decode = generate_rows("llama-3.1-8b", cm, points)
    assert (ttft.metric, ttft.measured_s, ttft.seqs, ttft.prompt_tokens, ttft.layers) == (
        "ttft_s",
        0.06,
        4,
        2048,
        32,
    )
    assert decode.metric == "decode_s_per_token" and decode.prompt_tokens == 0
    assert decode.measured_s == pytest.approx((1.75 - 0.06) / 64)  # the 5 s first run is left out
    assert decode.gpu_s[2] > 0 and ttft.gpu_s[1] > 0  # decode attention; prefill attention


def test_packed_layout_costs_one_attention_over_the_steps_padded_queries_and_keys():
    from calibrate.engine_fit import Layout, Step, packed_attention_time, step_rows
    from core.cost_model import CostModel
    from core.hardware import load_profile
    from core.model_spec import load_model

    settings = {"attn_implementation_during_run": "paged|sdpa", "q_padding_interval_size": 64,
                "kv_padding_interval_size": 16384}  # fmt: skip
    assert Layout.of(settings) == Layout(True, 1, 1)  # the manager pads only static-shape runs
    settings["use_cuda_graph"] = [False, True]
    assert Layout.of(settings) == Layout(True, 64, 16384)
    assert (
        Layout.of({**settings, "use_cuda_graph": None, "varlen_compile_config": {"mode": "x"}}).q_padding
        == 64
    )
    assert not Layout.of({**settings, "attn_implementation_during_run": "paged|flash_attention_2"}).packed
    assert not Layout.of({}).packed
    cm = CostModel(load_profile("h200"), load_model("llama-3.1-8b"), serving_host=False)
    steps = [
        Step(0.1, 0.0, [], [(10, 0)], usable=True),
        Step(0.3, 0.1, [20000, 1000], [(3000, 0)], usable=True),  # 3,002 queries over 24,000 keys
    ]
    small, big = step_rows("llama-3.1-8b", cm, steps, "replay", Layout.of(settings))
    assert small.gpu_s[1] == packed_attention_time(cm, 64, 16384) and small.gpu_s[2] == 0.0
    assert big.gpu_s[1] == packed_attention_time(cm, 3008, 32768)
    flat_small, flat_big = step_rows("llama-3.1-8b", cm, steps, "replay")
    # the padded dense attention costs far more than per-sequence attention at these sizes
    assert big.gpu_s[1] > 3 * (flat_big.gpu_s[1] + flat_big.gpu_s[2]) and flat_big.gpu_s[2] > 0
    np.testing.assert_array_equal(big.gpu_s[[0, 3, 4]], flat_big.gpu_s[[0, 3, 4]])  # the rest unchanged


def test_parts_found_by_their_shape_and_absent_parts_tolerated(tmp_path):
    """A later harness's files: a batch-1 prompt sweep with only TTFT medians under a new name, a code-trace
    replay under another, no generate sweep; only what is there is fitted."""
    from calibrate.engine_fit import read_runs

    runs = tmp_path / "runs"
    runs.mkdir()
    reqs = [_request(0.0, 100, [0.1 + 0.05 * k for k in range(6)]), _request(0.12, 300, [0.2, 0.25, 0.3])]
    data = {
        "header": {"model": "llama-3.1-8b"},
        "prompt_sweep": [
            {"batch_size": 1, "prompt_tokens": p, "ttft_s": 0.02 + p * 1e-5} for p in (128, 1024)
        ],
        "replay_code": {"requests": reqs},
    }
    (runs / "new.json").write_text(json.dumps(data))
    raw = read_runs(runs, "h200")
    kinds = [(r.run, r.metric) for r in raw.rows]
    assert (
        kinds == [("prompt_sweep", "ttft_s")] * 2 + [("replay_code", "step_s")] * 5
    )  # 6 steps, the first unused
    assert raw.rows[1].measured_s == pytest.approx(0.02 + 1024e-5) and raw.rows[1].sigma == 0.1
    assert "llama-3.1-8b replay_code (runs)" in raw.stats  # a header without a start time: the folder's name


# ---------------------------------------------------------------- the second harness's files (recorded steps)
SDPA = {"attn_implementation_during_run": "paged|sdpa", "q_padding_interval_size": 64,
        "kv_padding_interval_size": 16384, "use_cuda_graph": [False, False], "max_batch_tokens": 8192,
        "block_size": 256, "max_requests_per_batch": 1024}  # fmt: skip


def _step(t0: float, n_decode: int, past: int, prefill: list[list], dt: float = 0.08) -> dict:
    """One step record as calibrate.transformers_runs' StepRecorder writes it."""
    q = n_decode + sum(c[1] for c in prefill)
    return {
        "n_decode": n_decode, "decode_context_tokens": past, "prefill_tokens": q - n_decode, "prefill": prefill,
        "out_tokens": q, "q_tokens": q, "kv_read_tokens": past + sum(c[2] for c in prefill), "waiting": 0,
        "active": n_decode + len(prefill), "free_blocks": 100, "start_s": t0, "forward_start_s": t0 + 0.002,
        "forward_end_s": t0 + dt - 0.001, "end_s": t0 + dt,
    }  # fmt: skip


def _replay(steps: list[dict]) -> dict:
    reqs = [_request(0.0, 100, [s["end_s"] for s in steps])]  # token stamps: present, not used for the steps
    return {
        "status": "ok",
        "settings": SDPA,
        "steps_source": "StepRecorder",
        "requests": reqs,
        "steps": steps,
    }


def _raw_file_v2(folder: Path, model: str, date: str = "2026-12-02T09:40:16+00:00") -> Path:
    """A raw run in the second harness's layout: a warmed generate sweep and a `replays` dict."""
    gen = [
        {"batch_size": b, "prompt_tokens": p, "status": "ok", "new_tokens": 32,
         "ttft_runs_s": [0.03 + 1e-5 * b * p] * 3, "full_runs_s": [1.0 + 0.01 * b, 1.0, 1.0]}
        for b, p in [(1, 128), (1, 512), (1, 1024), (1, 2048), (4, 512), (4, 2048)]
    ]  # fmt: skip
    conv = [_step(0.0, 0, 0, [["r0", 300, 0]]), _step(0.1, 1, 300, []), _step(0.2, 2, 650, [["r2", 40, 0]])]
    code = [_step(0.0, 0, 0, [["r0", 4000, 0]], dt=0.3), _step(0.5, 1, 4000, [["r1", 2000, 1000]], dt=0.2)]
    data = {
        "header": {"model": model, "date_utc": date, "command": "runs v2", "gpu": {"name": "NVIDIA H200"},
                   "versions": {"transformers": "5.17.0", "torch": "2"},
                   "settings": {"generate_warmup": "one untimed generate with the timed runs' max_new_tokens"}},
        "generate": gen,
        "replays": {"conv_trace_rate": _replay(conv), "code_trace_rate": _replay(code)},
    }  # fmt: skip
    path = folder / f"transformers_{model}_h200.json"
    path.write_text(json.dumps(data))
    return path


def test_recorded_steps_are_read_whole_and_preferred_to_rebuilt_ones(tmp_path):
    runs = tmp_path / "runs"
    (runs / "session5").mkdir(parents=True)
    path = _raw_file_v2(runs / "session5", "llama-3.1-8b")
    raw = read_runs(runs, "h200")  # found in a sub-folder
    steps = [r for r in raw.rows if r.metric == "step_s"]
    # every recorded step is a row (the first too: its start is recorded), named by its replay
    assert [r.run for r in steps] == ["conv_trace_rate"] * 3 + ["code_trace_rate"] * 2
    assert [r.measured_s for r in steps] == pytest.approx([0.08, 0.08, 0.08, 0.3, 0.2])
    assert [r.forward_s for r in steps] == pytest.approx([0.077, 0.077, 0.077, 0.297, 0.197])
    assert [(r.seqs, r.prompt_tokens) for r in steps] == [(1, 300), (1, 0), (3, 40), (1, 4000), (2, 2000)]
    # packed attention over the step's queries and the KV read plus the new tokens, unpadded (no graphs)
    assert steps[4].pairs == 2001 * (4000 + 1000 + 2001) and steps[1].pairs == 1 * 301
    assert all(key.endswith("(2026-12-02T09:40)") for key in raw.steps_source)
    assert all("recorded" in how for how in raw.steps_source.values()) and not raw.stats
    # a warmed sweep keeps all three decode runs: (mean(1.04, 1, 1) - ttft) / 32 at batch 4
    dec = next(r for r in raw.rows if r.metric == "decode_s_per_token" and r.point == (4, 512))
    assert dec.measured_s == pytest.approx((np.mean([1.04, 1.0, 1.0]) - (0.03 + 1e-5 * 2048)) / 32)
    assert {r.file for r in raw.rows} == {str(path)}


def test_recorded_steps_skip_failed_records_and_spread_the_decode_context():
    from calibrate.engine_fit import recorded_steps

    recs = [_step(0.0, 3, 10, [["r9", 5, 2]]), {"composition_error": "boom", "start_s": 0.1, "end_s": 0.2}]
    (s,) = recorded_steps(recs)
    assert sorted(s.decode_contexts) == [4, 4, 5] and sum(s.decode_contexts) == 10 + 3  # + each new token
    assert s.chunks == [(5, 2)] and s.usable and (s.q_tokens, s.kv_read_tokens) == (8, 12)


def test_split_fits_one_session_and_trace_and_holds_out_the_rest(tmp_path):
    runs = tmp_path / "runs"
    (runs / "session5").mkdir(parents=True)
    new = _raw_file_v2(runs / "session5", "llama-3.1-8b")
    _raw_file(runs, "llama-3.1-8b", 0.02)  # an earlier session of the same model
    _raw_file_v2(runs / "session5", "qwen2.5-7b")  # another model, same harness
    raw = read_runs(runs, "h200")
    files = newest_files(raw, {"llama-3.1-8b"})
    assert files == {str(new)}
    served = [r for r in raw.rows if r.metric == "step_s"]
    ts = TrainSet(frozenset({"llama-3.1-8b"}), files, frozenset({"conv_trace_rate"}))
    split = Split.of(served, ts)
    fitted = [served[i] for i in split.train]
    assert {(r.model, r.run, r.file) for r in fitted} == {("llama-3.1-8b", "conv_trace_rate", str(new))}
    held = {(r.model, r.run, Path(r.file).parent.name) for r in (served[i] for i in split.held_out)}
    assert ("llama-3.1-8b", "code_trace_rate", "session5") in held and (
        "llama-3.1-8b",
        "replay",
        "runs",
    ) in held
    assert ("qwen2.5-7b", "conv_trace_rate", "session5") in held
    assert sorted([*split.train, *split.held_out]) == list(range(len(served)))
    # generate: every other prompt length per batch size from the shortest, of the newest llama file only
    static = [r for r in raw.rows if r.metric != "step_s"]
    gs = Split.of(static, TrainSet(frozenset({"llama-3.1-8b"}), files, alternate=True))
    assert {static[i].point for i in gs.train} == {(1, 128), (1, 1024), (4, 512)}
    assert {static[i].file for i in gs.train} == {str(new)}
    assert {static[i].point for i in gs.held_out if static[i].file == str(new)} == {
        (1, 512),
        (1, 2048),
        (4, 2048),
    }
    # the held-out rows do not move the fit
    before = fit_engine("transformers", served, ts, attention_factor=True)
    for i in split.held_out:
        served[i].measured_s *= 2.0
    after = fit_engine("transformers", served, ts, attention_factor=True)
    np.testing.assert_array_equal(before.fit.host_s, after.fit.host_s)
    np.testing.assert_array_equal(before.fit.factors, after.fit.factors)
    # and only they are checks: no fitted (llama, conv_trace_rate, newest file) row among them
    assert not any(c.run.startswith("conv_trace_rate, llama-3.1-8b, session5") for c in after.checks)
    assert sum(len(c.errors_pct) for c in after.checks if c.metric == "step_s") == len(split.held_out)


def test_command_on_a_session_folder_fits_the_conversation_replays(tmp_path):
    runs = tmp_path / "runs"
    (runs / "session5").mkdir(parents=True)
    new = _raw_file_v2(runs / "session5", "llama-3.1-8b")
    _raw_file(runs, "qwen2.5-7b", 0.02)
    out, table = tmp_path / "profiles", tmp_path / "fit.md"
    assert main([str(runs), "--gpu", "h200", "--out", str(out), "--table", str(table)]) == 0
    p = load_engine_profile(str(out / "transformers.yaml"))
    assert p.sources["fit"].raw == [str(new)] and p.kernels.attention_layout == "packed"
    assert (p.kernels.q_padding_tokens, p.kernels.kv_padding_tokens) == (1, 1)
    assert "code_trace_rate" in p.validation.held_out and "qwen2.5-7b replay" in p.validation.held_out
    assert any("code_trace_rate, llama-3.1-8b" in m.metric for m in p.validation.metrics)
    assert not any("conv_trace_rate, " in m.metric for m in p.validation.metrics)  # fitted: never a check
    g = load_engine_profile(str(out / "transformers-generate.yaml"))
    assert "every other prompt length" in g.validation.held_out
    text = table.read_text()
    assert "## Forward against the whole step" in text and "busy time" in text
