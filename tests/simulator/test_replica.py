"""The replica's step recording: its shortcuts (decode runs, inline ITL bookkeeping) against the plain path."""

import numpy as np
import pytest

from simulator import replica
from simulator.scenario import parse_scenario
from simulator.simulation import simulate


def scenario(serving: dict, rate: float, output_median: int = 60):
    return parse_scenario(
        {
            "seed": 3,
            "model": "qwen2.5-0.5b",
            "hardware": {"gpu": "t4"},
            "serving": serving,
            "workload": {
                "arrival": {"process": "poisson", "rate_per_s": rate},
                "prompt_tokens": {"dist": "lognormal", "median": 300, "sigma": 1.0, "max": 6000},
                "output_tokens": {"dist": "lognormal", "median": output_median, "sigma": 1.0, "max": 800},
                "num_requests": 150,
            },
        }
    )


CASES = [
    ({}, 8.0),
    ({"batching": {"chunked_prefill": False}}, 8.0),
    # prefill-only steps that nobody joins decoding from (one token)
    ({"batching": {"chunked_prefill": False}}, 30.0, 2),
    ({"memory": {"gpu_memory_utilization": 0.09, "runtime_reserved_gib": 0.0}}, 50.0),  # preemptions
    ({"speculative": {"method": "self", "num_speculative_tokens": 3, "acceptance_rate": 0.6}}, 8.0),
]


@pytest.mark.parametrize("case", CASES)
def test_decode_run_stats_equal_stepping_one_by_one(case):
    """Replica._decode_segment records a run of decode steps in one go (the busy time, steps, sequences
    per step and KV block-seconds the per-step recorder adds up step by step)."""
    sc = scenario(*case)
    fast, slow = simulate(sc), simulate(sc, step_by_step=True)
    a, b = fast.stats, slow.stats
    assert (
        a.steps == b.steps and a.batch_seq_steps == b.batch_seq_steps and a.prefill_tokens == b.prefill_tokens
    )
    for f in ("busy_s", "prefill_s", "decode_s"):
        assert getattr(a, f) == pytest.approx(getattr(b, f), rel=1e-9), f
    # KV block-seconds within 2% (0.7% here): a run counts the blocks it adds as held for half of it, the
    # stepper counts each step's blocks as they are after it
    assert a.kv_block_seconds == pytest.approx(b.kv_block_seconds, rel=0.02)


class AlwaysSet(list):
    """A list that is never falsy: the replica then takes _decode_itl at every decode step, never its inline copy."""

    def __bool__(self) -> bool:
        return True


@pytest.mark.parametrize("case", CASES)
def test_inline_decode_itl_equals_decode_itl(case, monkeypatch):
    """Replica._record_step and _decode_segment write _decode_itl out for a step where no sequence just joined;
    forcing the plain _decode_itl everywhere records the same ITL histogram, timeline and request times."""
    sc = scenario(*case)
    inline = simulate(sc)
    init = replica.Replica.__init__

    def plain_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.joined = AlwaysSet()

    monkeypatch.setattr(replica.Replica, "__init__", plain_init)
    plain = simulate(sc)
    assert isinstance(plain.engines[0].joined, AlwaysSet)
    assert np.array_equal(inline.stats.itl_hist, plain.stats.itl_hist)
    assert inline.stats.timeline == plain.stats.timeline
    for col in ("scheduled_s", "first_token_s", "finish_s"):
        assert np.array_equal(getattr(inline.table, col), getattr(plain.table, col), equal_nan=True)
    assert inline.summary["latency_s"]["itl"] == plain.summary["latency_s"]["itl"]
