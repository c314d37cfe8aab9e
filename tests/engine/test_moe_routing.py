"""Uniform expert routing (engine.moe.uniform_route): what the random-weight engine's MoE layers run by default, so
that they route like a trained, balanced router. Picks distinct and in range, balanced where the router is not,
equal rows alike, the gate weights the router's own, the Triton kernel identical to the torch path (interpreted)."""

import pytest
import torch

from core.model_spec import spec_from_config
from engine.model import MoE, build_model
from engine.moe import route, select_experts, uniform_route, uniform_route_reference
from tests.engine.interpreted import run_interpreted


def _collapsed(t: int, e: int, seed: int = 0) -> torch.Tensor:
    """Logits of tokens whose hidden states are nearly alike: the router's top-k is the same for nearly all."""
    g = torch.Generator().manual_seed(seed)
    return (torch.linspace(3, 0, e) + 0.01 * torch.randn(t, e, generator=g)).to(torch.bfloat16)


@pytest.mark.parametrize("e,k", [(8, 2), (64, 6), (5, 1), (160, 6)])
def test_picks_are_distinct_experts_and_balanced_where_the_router_is_not(e, k):
    t = 4000
    logits = _collapsed(t, e)
    _, rids = route(logits, k, True)
    assert torch.bincount(rids.reshape(-1), minlength=e).max() > 0.9 * t  # the router: the same experts
    w, ids = uniform_route(logits, k, True)
    assert ids.dtype == torch.int64 and ids.shape == (t, k) and w.shape == (t, k)
    assert ids.min() >= 0 and ids.max() < e
    assert all(len(set(row)) == k for row in ids.tolist())  # without replacement
    counts = torch.bincount(ids.reshape(-1), minlength=e).double()
    mean, p = t * k / e, k / e
    sd = (t * p * (1 - p)) ** 0.5
    assert (
        counts - mean
    ).abs().max() < 5 * sd  # binomial spread: a uniform draw, not the router's favourites


def test_equal_rows_pick_equal_experts_and_rows_differ():
    logits = torch.randn(64, 8).to(torch.bfloat16)
    rows = torch.cat([logits, logits[:1].expand(16, -1)])  # a graph's padding: one dummy row repeated
    _, ids = uniform_route(rows, 2, True)
    assert (ids[64:] == ids[0]).all()
    assert len({tuple(r) for r in ids[:64].tolist()}) > 10


@pytest.mark.parametrize("renormalize", [True, False])
def test_gate_weights_are_the_routers_scores_at_the_picks(renormalize):
    logits = torch.randn(200, 64, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    w, ids = uniform_route(logits, 6, renormalize)
    probs = torch.softmax(logits.float(), -1)
    at = probs.gather(-1, ids)
    want = at / at.sum(-1, keepdim=True) if renormalize else at
    assert torch.allclose(w, want, atol=1e-6)


def test_model_routes_uniformly_by_default_and_on_request_by_its_router():
    toy = {"model_type": "mixtral", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "intermediate_size": 48, "num_local_experts": 4, "num_experts_per_tok": 2,
           "vocab_size": 64, "max_position_embeddings": 128}  # fmt: skip
    model = build_model(spec_from_config(toy, "toy"), dtype="fp32", device="cpu")
    moes = [m for m in model.modules() if isinstance(m, MoE)]
    assert moes and all(m.routing == "uniform" for m in moes)
    x = torch.randn(10, 32)
    logits = moes[0].router(x)
    assert torch.equal(moes[0].select(x)[1], uniform_route(logits, 2, moes[0].renormalize)[1])
    model.set_moe_routing("router")
    assert torch.equal(moes[0].select(x)[1], route(logits, 2, moes[0].renormalize)[1])
    with pytest.raises(ValueError, match="moe routing 'balanced': pick one of uniform, router"):
        model.set_moe_routing("balanced")
    with pytest.raises(ValueError, match="pick one of"):
        select_experts(logits, 2, True, "zipf")


INTERPRETED = """
import torch
from engine.moe import uniform_route_reference, uniform_route_triton
g = torch.Generator().manual_seed(0)
for t, e, k, renorm in ((1, 8, 2, True), (37, 8, 2, True), (50, 64, 6, False), (9, 5, 1, True), (20, 160, 6, False), (4, 700, 8, True),
                        (30, 64, 6, True)):
    logits = torch.randn(t, e, generator=g).to(torch.bfloat16)
    logits[-1] = logits[0]
    a, b = uniform_route_triton(logits, k, renorm), uniform_route_reference(logits, k, renorm)
    assert torch.equal(a[1], b[1]), (t, e, k, a[1], b[1])
    assert torch.allclose(a[0], b[0], atol=1e-6), (t, e, k)
    print("ok", t, e, k)
"""


def test_triton_kernel_equals_the_torch_path_interpreted():
    assert run_interpreted(INTERPRETED).count("ok") == 7


def test_reference_is_what_uniform_route_runs_on_the_cpu():
    logits = torch.randn(30, 8).to(torch.bfloat16)
    a, b = uniform_route(logits, 2, True), uniform_route_reference(logits, 2, True)
    assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])
