"""calibrate.transformers_runs on the CPU: the row and summary builders on synthetic timings, the trace and
catalogue inputs, the one-line error without transformers, the committed H200 summary rebuilt from its raw
runs, and (where transformers is installed) a tiny end-to-end sweep."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

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
    reqs = tr.trace_requests(tr.CONVERSATION_TRACE, 200, plan)
    assert len(reqs) == 200
    assert reqs[0][0] == 0.0
    assert all(b >= a for (a, _, _), (b, _, _) in zip(reqs, reqs[1:]))
    assert max(o for _, _, o in reqs) == plan.cb_output_cap_tokens
    assert min(o for _, _, o in reqs) >= 1
    # The trace's first rows (arrived_at, prefill, decode): 0.0,374,44 and 4.314579,396,109.
    assert reqs[0][1:] == (374, 44) and reqs[1] == pytest.approx((4.314579, 396, 109))
    quick = tr.trace_requests(tr.CONVERSATION_TRACE, 6, tr.SweepPlan.quick())
    assert quick[1][0] == pytest.approx(0.04314579)
    assert max(p for _, p, _ in quick) <= 48


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
    assert "transformers is not installed" in _one_line(r.stderr)
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


def test_tiny_sweep_on_the_cpu(tmp_path, tiny_config):
    """With transformers: the quick sweep end to end (continuous batching too where psutil lets the manager
    size its cache on the CPU). Without it: the same command gives the one-line error."""
    cmd = [sys.executable, "-m", "calibrate.transformers_runs", "--out", str(tmp_path), "--quick"]
    cmd += ["--device", "cpu", "--models", str(tiny_config)]
    if importlib.util.find_spec("transformers") is None:
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert r.returncode == 2 and "transformers is not installed" in _one_line(r.stderr)
        return
    with_cb = importlib.util.find_spec("psutil") is not None
    phases = "generate,replay,batch" if with_cb else "generate"
    r = subprocess.run(cmd + ["--phases", phases], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "transformers_tiny_h200.json").read_text())
    plan = tr.SweepPlan.quick()
    rows = res["generate"]
    assert {(x["batch_size"], x["prompt_tokens"]) for x in rows} == {
        (b, p) for b in plan.batch_sizes for p in plan.prompt_tokens
    }
    for row in rows:
        assert row["status"] == "ok", row
        assert len(row["ttft_runs_s"]) == len(row["full_runs_s"]) == plan.repeats
        assert row["ttft_s"] > 0 and math.isfinite(row["decode_s_per_token"])
        assert row["cache_class"]
    assert res["header"]["model_info"]["first_matrix_zero_fraction"] < 0.01  # random, not zeros
    assert res["header"]["settings"]["attn_implementation"] == "sdpa"
    assert "TTFT at batch 1" in r.stdout and (tmp_path / "summary.md").exists()
    if with_cb:
        for name in ("replay", "generate_batch"):
            run = res[name]
            assert run["summary"]["finished"] == plan.cb_requests
            assert all(q["output_tokens"] == q["requested_output_tokens"] for q in run["requests"])
            assert run["settings"]["num_blocks"] == plan.cb_num_blocks
        assert res["replay"]["settings"]["attn_implementation_during_run"].startswith("paged|")
