"""Tensor and pipeline parallel on the CPU: 2 processes over gloo serve the same requests as one process with
the simulator's scheduler and pick the same greedy tokens (preemption and KV compaction included)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.errors import ConfigError
from core.kv_cache import BlockPool
from core.model_spec import spec_from_config
from core.requests import Requests
from engine import distributed
from engine.distributed import Channel, LeaderExecutor, follow, spawn_local
from engine.model import build_model
from engine.parallel import build_stage_model, build_tp_model, kv_heads_of, stage_layers, tp_shard, tp_spec
from engine.serving import Executor, serve

BASE = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 96, "vocab_size": 97,
        "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0}  # fmt: skip
SPECS = {
    "llama": spec_from_config(BASE, name="tiny-llama"),
    # one KV head for two ranks (replicated), qkv bias, tied embeddings, a vocabulary tp does not divide
    "qwen2": spec_from_config(
        {**BASE, "model_type": "qwen2", "num_key_value_heads": 1, "tie_word_embeddings": True},
        name="tiny-qwen2",
    ),
}


def requests() -> Requests:
    rng = np.random.default_rng(3)
    n = 8  # all at t=0: the batches do not depend on timing
    return Requests(np.zeros(n), rng.integers(3, 40, n), rng.integers(2, 16, n))


def pool_and_tokens(req: Requests) -> tuple[BlockPool, int]:
    """A pool small enough to preempt and compact (as test_serving's compaction test)."""
    return BlockPool(20, 4), 80 + int((req.prompt_tokens + req.output_tokens).max())


def serve_one(model, ex_cls=Executor, **kw):
    req = requests()
    pool, tokens = pool_and_tokens(req)
    ex = ex_cls(model, tokens, 8, device="cpu", **kw)
    run = serve(ex, req, pool, 8, 32, True)
    return ex, run


def _tp_rank(rank, world, init):
    d = distributed.init("gloo", rank, world, init)
    out = {}
    for key, spec in SPECS.items():
        model = build_tp_model(spec, world, rank, dtype="fp32", device="cpu")
        channel = Channel(0, d.control)
        if rank == 0:
            ex, run = serve_one(model, LeaderExecutor, channel=channel)
            ex.stop()
            out[key] = (run.ids, run.scheduler.num_preemptions, ex.compactions)
        else:
            req = requests()
            ex = Executor(model, pool_and_tokens(req)[1], 8, device="cpu")
            out[key] = follow(ex, channel)
    return out


def test_tp2_greedy_tokens_equal_one_process():
    refs = {key: serve_one(build_model(spec, dtype="fp32", device="cpu")) for key, spec in SPECS.items()}
    res = spawn_local(_tp_rank, 2)  # forked after the one-process builds: torch's lazy imports are done
    for key, (ex, ref) in refs.items():
        ids, preemptions, compactions = res[0][key]
        assert preemptions == ref.scheduler.num_preemptions > 0 and compactions == ex.compactions > 0, key
        assert res[1][key] > 0  # the follower ran the steps
        np.testing.assert_array_equal(ids, ref.ids, err_msg=key)


def _pp_rank(rank, world, init):
    d = distributed.init("gloo", rank, world, init)
    out = {}
    for key, spec in SPECS.items():
        model = build_stage_model(spec, world, rank, dtype="fp32", device="cpu")
        channel = Channel(world - 1, d.control)  # the last stage holds the logits: it leads
        if rank == world - 1:
            ex, run = serve_one(model, LeaderExecutor, channel=channel)
            ex.stop()
            out[key] = (run.ids, list(model.layer_ids))
        else:
            ex = Executor(model, pool_and_tokens(requests())[1], 8, device="cpu")
            out[key] = (follow(ex, channel), list(model.layer_ids))
    return out


def test_pp2_greedy_tokens_equal_one_process():
    refs = {key: serve_one(build_model(spec, dtype="fp32", device="cpu"))[1] for key, spec in SPECS.items()}
    res = spawn_local(_pp_rank, 2)
    for key, ref in refs.items():
        ids, last_layers = res[1][key]
        steps, first_layers = res[0][key]
        assert first_layers == [0, 1] and last_layers == [2] and steps == ref.steps
        np.testing.assert_array_equal(ids, ref.ids, err_msg=key)


def test_tp_shards_are_the_one_process_weights():
    """The column shards of qkv / gate_up and row shards of o / down, put back together, are the full
    matrices (KV heads replicated where kv_heads < tp), so the two all-reduces sum to the full products."""
    spec = SPECS["qwen2"]
    full = build_model(spec, dtype="fp32", device="cpu")
    w = dict(full.named_parameters())
    parts = [tp_shard(spec, 2, r) for r in range(2)]
    assert kv_heads_of(spec, 2, 0) == kv_heads_of(spec, 2, 1) == [0]
    assert tp_spec(spec, 2).num_kv_heads == 1 and tp_spec(SPECS["llama"], 2).num_kv_heads == 1
    o = w["layers.0.attn.wo.weight"]
    torch.testing.assert_close(torch.cat([p("layers.0.attn.wo.weight", o) for p in parts], 1), o)
    gu = w["layers.1.mlp.gate_up.weight"]
    x = torch.randn(3, spec.hidden_size)
    ref = full.layers[1].mlp(x)
    from engine.fused import act_mul

    down = w["layers.1.mlp.down.weight"]
    summed = sum(act_mul(x @ p("mlp.gate_up.weight", gu).T) @ p("mlp.down.weight", down).T for p in parts)
    torch.testing.assert_close(summed, ref, rtol=1e-5, atol=1e-5)
    head = w["embed.weight"]  # tied: the LM head's rows
    shards = [p("lm_head.weight", head) for p in parts]
    assert shards[0].shape == shards[1].shape == (49, spec.hidden_size) and (shards[1][-1] == 0).all()
    torch.testing.assert_close(torch.cat(shards)[: spec.vocab_size], head)


def test_parallel_refuses_what_does_not_split():
    with pytest.raises(ConfigError, match="tp=3"):
        tp_spec(SPECS["llama"], 3)
    with pytest.raises(ConfigError, match="pp=4"):
        stage_layers(3, 4, 0)
    assert [list(stage_layers(5, 2, s)) for s in range(2)] == [[0, 1, 2], [3, 4]]
