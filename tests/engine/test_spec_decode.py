"""Speculative decoding in the serving loop (engine/speculative.py) on the CPU with tiny models.

α = 1 and α = 0 give k + 1 and 1 tokens a round; greedy verification keeps exactly the target's greedy tokens
whatever the draft (a full forward of each stream picks them), and with a draft identical to the target
accepts every draft; in a drawn round the target's own token (the last of each round) is still the target's
greedy pick after the kept tokens (the rejected positions' KV was rolled back); above max_batch the scheduler
switches speculation off.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from core.kv_cache import BlockPool
from core.model_spec import spec_from_config
from core.requests import Requests
from engine.model import build_model
from engine.serving import Executor, physical_tokens, serve
from engine.speculative import SpecRun

_conf = importlib.util.spec_from_file_location(
    "engine_conftest_spec_decode", Path(__file__).parent / "conftest.py"
)
conf = importlib.util.module_from_spec(_conf)
_conf.loader.exec_module(conf)

K = 3


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(layers: int = 2, seed: int = 0):
    spec = spec_from_config(conf.tiny_config(num_hidden_layers=layers), name=f"tiny-{layers}")
    return build_model(spec, dtype="fp32", device="cpu", seed=seed)


def workload(n: int = 12, seed: int = 0, span_s: float = 0.05) -> Requests:
    rng = np.random.default_rng(seed)
    return Requests(np.sort(rng.uniform(0, span_s, n)), rng.integers(3, 40, n), rng.integers(2, 20, n))


def run_spec(
    req,
    alpha=1.0,
    acceptance="draw",
    draft=None,
    max_batch=64,
    blocks=500,
    max_seqs=8,
    static=True,
    graphs=False,
):
    target = tiny()
    draft = draft if draft is not None else tiny(1, seed=7)
    pool_tokens = physical_tokens(blocks, 4, req, max_seqs, extra=K)
    kw = {"device": "cpu", "static_decode": static, "mixed_graph_tokens": 64 if static else 0,
          "static_mixed": static, "mixed_seqs": max_seqs + 8}  # fmt: skip
    ex = Executor(target, pool_tokens, max_seqs, **kw)
    dex = Executor(draft, pool_tokens, max_seqs, **kw)
    ex.warmup()
    dex.warmup()
    pool = BlockPool(blocks, 4)
    spec = SpecRun(dex, K, max_batch, alpha, acceptance)
    if graphs:  # round graphs (on the CPU: their static buffers run eagerly)
        spec.warmup(ex)
        assert sorted(spec.graphs) == [1, 2, 4, 8][: len(spec.graphs)] and spec.graphs
    run = serve(ex, req, pool, max_seqs, 64, True, spec=spec, trace=True, seed=3)
    assert not run.unfinished and (run.table.generated == req.output_tokens).all()
    assert pool.used == 0 and not run.scheduler.running
    assert [len(t) for t in run.token_times] == req.output_tokens.tolist()
    return run, target


def round_sizes(times: np.ndarray) -> list[int]:
    """Tokens per step of one request (tokens of a round arrive together), the first token's step first."""
    _, counts = np.unique(times, return_counts=True)
    return counts.tolist()


def full_forward_picks(model, run, rid: int) -> np.ndarray:
    """The target's greedy pick after each prefix of request rid's stream (a full forward from scratch)."""
    from engine.attention import make_layout

    p, o = int(run.table.prompt_tokens[rid]), int(run.table.output_tokens[rid])
    stream = run.ids[run.offsets[rid] : run.offsets[rid + 1]]
    n = p + o - 1
    lay = make_layout([n], [0], "cpu", starts=[0], kv_heads=model.spec.num_kv_heads)
    return model(torch.from_numpy(stream[:n].copy()), lay, torch.arange(p - 1, n)).argmax(-1).numpy()


@pytest.mark.parametrize("static", [True, False])
def test_alpha_one_yields_k_plus_one_tokens_a_round(static):
    req = workload()
    run, target = run_spec(req, alpha=1.0, static=static)
    for i, times in enumerate(run.token_times):
        sizes = round_sizes(times)
        rest = (
            int(req.output_tokens[i]) - 1
        )  # tokens after the first, in rounds of k + 1 (the last one capped)
        assert sizes[0] == 1 and sizes[1:] == [K + 1] * (rest // (K + 1)) + (
            [rest % (K + 1)] if rest % (K + 1) else []
        )
    s = run.spec
    assert s["accepted"] == s["drafted"] and s["rounds"] == sum(
        -(-(int(o) - 1) // (K + 1)) for o in req.output_tokens
    )
    assert run.scheduler.spec_yield == int((req.output_tokens - 1).sum())
    # the target's token closing each round is its greedy pick after the kept tokens (KV rolled back right)
    for rid in range(len(req)):
        picks, out = full_forward_picks(target, run, rid), run.output_ids(rid)
        ends = np.cumsum(round_sizes(run.token_times[rid])) - 1
        full = ends[1:][np.diff(ends) == K + 1]  # full rounds: their last token is the target's
        assert (picks[full] == out[full]).all()


def test_alpha_zero_yields_one_token_a_round_and_the_target_picks_every_token():
    req = workload(seed=1)
    run, target = run_spec(req, alpha=0.0)
    assert all(set(round_sizes(t)) == {1} for t in run.token_times)
    assert run.spec["accepted"] == 0 and run.spec["rounds"] == int((req.output_tokens - 1).sum())
    for rid in range(len(req)):  # no draft kept: every token is the target's greedy pick
        assert (full_forward_picks(target, run, rid) == run.output_ids(rid)).all()


def test_greedy_verification_keeps_the_targets_greedy_tokens():
    """Greedy acceptance keeps only drafts the target agrees with: the tokens equal a run without speculation
    (each is the full forward's pick) whatever the draft; with a draft identical to the target, every draft
    is accepted and rounds yield k + 1 tokens."""
    req = workload(seed=2)
    plain_target = tiny()
    ex = Executor(plain_target, physical_tokens(500, 4, req, 8), 8, device="cpu")
    plain = serve(ex, req, BlockPool(500, 4), 8, 64, True, seed=3)
    run, target = run_spec(req, acceptance="greedy")  # a 1-layer draft with other weights
    for rid in range(len(req)):
        assert (run.output_ids(rid) == plain.output_ids(rid)).all(), rid
    same, _ = run_spec(req, acceptance="greedy", draft=tiny())
    assert same.spec["accepted"] == same.spec["drafted"] > 0
    assert run.spec["accepted"] < same.spec["accepted"]
    for rid in range(len(req)):
        assert (same.output_ids(rid) == plain.output_ids(rid)).all(), rid


def test_speculation_switches_off_above_max_batch():
    req = workload(n=16, seed=4, span_s=0.0)  # all at once: many sequences decode together
    run, _ = run_spec(req, alpha=0.8, max_batch=2)
    tr = run.step_trace
    assert (tr["spec_seqs"] > 0).any() and (tr["spec_seqs"] <= 2).all()
    assert (tr["decode_seqs"] > 2).any()  # plain decode steps above the limit
    assert 0 < run.spec["accepted"] < run.spec["drafted"]


def test_round_graphs_give_the_step_by_step_rounds_tokens():
    """Rounds through RoundGraph's static buffers (the CUDA graph's twin on the CPU: the draft's two-token catch-up,
    its decode steps fed on the device, the verification): greedy verification still keeps exactly the target's
    greedy tokens (a run without speculation's) whatever the draft, a draft identical to the target has every draft
    accepted, α = 1 yields k + 1 tokens a round; most rounds take the graph (the rest: prompt chunks in the step)."""
    req = workload(seed=2)
    ex = Executor(tiny(), physical_tokens(500, 4, req, 8), 8, device="cpu")
    plain = serve(ex, req, BlockPool(500, 4), 8, 64, True, seed=3)
    run, _ = run_spec(req, acceptance="greedy", graphs=True)
    same, _ = run_spec(req, acceptance="greedy", draft=tiny(), graphs=True)
    for r in (run, same):
        assert r.spec["graph_rounds"] > r.spec["rounds"] / len(req) / 2, r.spec
        assert (r.step_trace["graph"] == 3).sum() == r.spec["graph_rounds"]
        for rid in range(len(req)):
            assert (r.output_ids(rid) == plain.output_ids(rid)).all(), rid
    assert same.spec["accepted"] == same.spec["drafted"] > run.spec["accepted"]
    one, _ = run_spec(workload(), alpha=1.0, graphs=True)
    assert one.spec["graph_rounds"] > 0 and one.spec["accepted"] == one.spec["drafted"]
    for i, times in enumerate(one.token_times):
        rest = int(one.table.output_tokens[i]) - 1
        assert round_sizes(times)[1:] == [K + 1] * (rest // (K + 1)) + (
            [rest % (K + 1)] if rest % (K + 1) else []
        )


def test_a_compaction_moves_the_drafts_kv_with_the_targets():
    """A pool a little above what the scheduler holds makes the target's executor compact its regions mid-run; the
    draft's KV sits at the same slots of its own pool, so it must move too (`Executor.followers`). With a draft
    identical to the target every draft is then still accepted (before session 15 the draft's pool stayed put and
    the drafts of every moved sequence went wrong)."""
    req = workload(seed=2, span_s=0.0)  # all at once: the batches do not depend on timing
    tokens = (
        160 + int((req.prompt_tokens + req.output_tokens).max()) + K
    )  # the scheduler's 160 and one region
    kw = {
        "device": "cpu",
        "static_decode": True,
        "mixed_graph_tokens": 64,
        "static_mixed": True,
        "mixed_seqs": 16,
    }
    ex, dex = Executor(tiny(), tokens, 8, **kw), Executor(tiny(), tokens, 8, **kw)
    ex.warmup()
    dex.warmup()
    run = serve(ex, req, BlockPool(40, 4), 8, 32, True, spec=SpecRun(dex, K, 64, 1.0, "greedy"), seed=3)
    assert not run.unfinished and ex.compactions > 0 and ex.followers == [dex.model]
    assert run.spec["accepted"] == run.spec["drafted"] > 0


def test_verify_rows_lay_each_sequences_positions_out_as_decode_rows():
    """k + 1 rows a sequence, in order: the same region start, the context growing by one a row (row j attends to
    the sequence's context and the j tokens before it), the row's token."""
    from engine.speculative import verify_rows

    starts, ctx = np.array([0, 500]), np.array([10, 3])
    tokens = np.array([[7, 1, 2], [8, 3, 4]])
    s, c, t = verify_rows(starts, ctx, tokens)
    assert s.tolist() == [0, 0, 0, 500, 500, 500]
    assert c.tolist() == [10, 11, 12, 3, 4, 5] and t.tolist() == [7, 1, 2, 8, 3, 4]
