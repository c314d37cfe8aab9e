"""Disaggregated prefill/decode on the CPU: a prefill process and a decode process over gloo, the prompt's
KV sent between them; every request finishes with the tokens a full forward of its stream picks."""

from __future__ import annotations

import numpy as np
import torch

from core.kv_cache import BlockPool
from core.model_spec import spec_from_config
from core.requests import Requests
from engine import distributed
from engine.attention import make_layout
from engine.disaggregated import PrefillExecutor, decode_loop, run_prefill
from engine.model import build_model
from engine.serving import Executor, physical_tokens

CONFIG = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 96, "vocab_size": 97,
          "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0}  # fmt: skip
SPEC = spec_from_config(CONFIG, name="tiny-llama")


def requests() -> Requests:
    rng = np.random.default_rng(5)
    n = 10
    out = rng.integers(2, 14, n)
    out[3] = 1  # one request is done with its first token: it never joins decoding
    return Requests(np.sort(rng.uniform(0, 0.05, n)), rng.integers(3, 40, n), out)


def _rank(rank, world, init):
    d = distributed.init("gloo", rank, world, init)
    model = build_model(SPEC, dtype="fp32", device="cpu")
    req = requests()
    if rank == 0:
        pool = BlockPool(30, 4)
        ex = PrefillExecutor(model, physical_tokens(30, 4, req, 8), 8, peer=1, control=d.control,
                             data=d.control, device="cpu")  # fmt: skip
        run = run_prefill(ex, req, pool, 8, 32, barrier_group=d.control)
        return run.table.first_token_s, pool.used
    blocks = 24  # tight: prefilled requests wait for blocks, and decoding preempts and recomputes
    pool = BlockPool(blocks, 4)
    ex = Executor(model, physical_tokens(blocks, 4, req, 8), 8, device="cpu")
    out = decode_loop(
        ex, req, pool, 8, 32, peer=0, control=d.control, data=d.control, barrier_group=d.control
    )
    return out, pool.used


def test_prefill_rank_to_decode_rank_gives_the_one_process_tokens():
    model = build_model(
        SPEC, dtype="fp32", device="cpu"
    )  # the reference (torch's lazy imports before the fork)
    model.allocate_kv(64)
    (ttft, prefill_used), (dec, decode_used) = distributed.spawn_local(_rank, 2)
    req, run = requests(), dec.run
    t = run.table
    assert not run.unfinished and prefill_used == decode_used == 0
    assert (t.generated == req.output_tokens).all()
    # the first token's time is when the prefill rank sent it: right after its step (one clock, both ranks
    # share one origin, distributed.common_origin; serve's own clock starts a little after the executor's)
    lag = t.first_token_s - np.asarray(ttft)
    assert (lag >= 0).all() and (lag < 0.25).all(), lag
    assert (t.first_token_s < t.finish_s).sum() == (req.output_tokens > 1).sum()
    # every prompt's KV crossed once, its bytes those of the prompt's K and V in every layer
    assert sorted(x.rid for x in dec.transfers) == list(range(len(req)))
    per_token = SPEC.num_layers * 2 * SPEC.num_kv_heads * SPEC.head_dim * 4
    assert all(x.nbytes == req.prompt_tokens[x.rid] * per_token for x in dec.transfers)
    assert all(x.sent_s <= x.landed_s + 0.05 and x.seen_s <= x.landed_s for x in dec.transfers)
    for rid in range(len(req)):
        p, o = int(req.prompt_tokens[rid]), int(req.output_tokens[rid])
        stream = run.ids[run.offsets[rid] : run.offsets[rid + 1]]
        n = p + o - 1
        lay = make_layout([n], [0], "cpu", starts=[0], kv_heads=SPEC.num_kv_heads)
        picked = model(torch.from_numpy(stream[:n].copy()), lay, torch.arange(p - 1, n)).argmax(-1).numpy()
        np.testing.assert_array_equal(picked, run.output_ids(rid), err_msg=str(rid))
