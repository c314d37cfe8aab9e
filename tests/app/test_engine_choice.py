"""Plan's engine selector: the engine's scheduling settings become the serving form's defaults, the forecast is
the simulator's for that engine, and the caption names it (with a transferred warning off its GPU)."""

import json
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from simulator import api  # noqa: E402

APP = str(Path(__file__).resolve().parents[2] / "app.py")
CHAT = "chat (Poisson, lognormal lengths)"


def test_plan_forecasts_with_the_chosen_engine():
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["plan.capacity"] = False
    at.run()
    at.number_input(key="plan.n").set_value(60).run()
    at.selectbox(key="plan.engine").set_value("transformers").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.number_input(key="plan.serving.transformers.batching.max_num_seqs").value == 1024
    assert at.number_input(key="plan.serving.transformers.memory.block_size").value == 256
    expect = api.forecast(
        {
            "name": "my-plan",
            "model": "llama-3.1-8b",
            "hardware": {"gpu": "h100-sxm"},
            "engine": "transformers",
            "workload": json.loads(json.dumps(api.WORKLOADS[CHAT])) | {"num_requests": 60},
            "slo": {"ttft_s": 0.5, "tpot_s": 0.05},
        }
    ).summary
    table = at.dataframe[0].value
    assert table.loc["TPOT", "p50"] == f"{expect['latency_s']['tpot']['p50'] * 1e3:,.1f}"
    assert any("engine Hugging Face transformers" in c.value for c in at.caption)
    assert any("transferred" in w.value for w in at.warning)  # measured on an H200, used on the H100
