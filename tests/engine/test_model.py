import pytest
import torch

from core.model_spec import catalogue_names, spec_from_config
from engine.attention import make_layout
from engine.model import build_model, sliding_layer_ids
from tests.engine.conftest import shrink, tiny_config

ARCHS = [
    n
    for n in ("llama-3.1-8b", "qwen2.5-0.5b", "mistral-7b", "gemma-3-12b", "mixtral-8x7b", "qwen3-14b")
    if n in catalogue_names()
]


def _full_and_incremental(spec, lens, seed=0):
    """Logits of each sequence's last token: one full prefill vs prefill of all but one token, then decode."""
    model = build_model(spec, dtype="fp32", device="cpu", seed=seed)
    g = torch.Generator().manual_seed(seed + 7)
    seqs = [torch.randint(1, spec.vocab_size, (n,), generator=g) for n in lens]
    model.allocate_kv(sum(lens) + 8)
    starts = [sum(lens[:i]) for i in range(len(lens))]  # each sequence keeps its region across steps
    lay = make_layout(lens, [0] * len(lens), "cpu")
    full = model(torch.cat(seqs), lay, (lay.cu_q[1:] - 1).long())
    model.allocate_kv(sum(lens) + 8, seed=123)  # a new random cache: nothing carried over
    pre = [n - 1 for n in lens]
    lay = make_layout(pre, [0] * len(lens), "cpu", starts=starts)
    model(torch.cat([s[:-1] for s in seqs]), lay)
    lay = make_layout([1] * len(lens), pre, "cpu", starts=starts)
    inc = model(torch.stack([s[-1] for s in seqs]), lay)
    return full, inc


def test_decode_with_cache_matches_full_forward(tiny_spec):
    full, inc = _full_and_incremental(tiny_spec, [5, 11, 3])
    assert full.shape == (3, tiny_spec.vocab_size)
    assert torch.allclose(full, inc, rtol=1e-4, atol=1e-4)
    assert full.abs().sum() > 0


def test_chunked_prefill_matches_one_prefill(tiny_spec):
    model = build_model(tiny_spec, dtype="fp32", device="cpu")
    toks = torch.randint(1, tiny_spec.vocab_size, (12,))
    model.allocate_kv(16)
    one = model(toks, make_layout([12], [0], "cpu"))
    model(toks[:7], make_layout([7], [0], "cpu"))
    two = model(toks[7:], make_layout([5], [7], "cpu"))
    assert torch.allclose(one[7:], two, rtol=1e-4, atol=1e-4)
    # a wrong prefix changes the answer: the chunk really reads its cached context
    model.kv[0][0][:7].mul_(-1.0)
    three = model(toks[7:], make_layout([5], [7], "cpu"))
    assert not torch.allclose(two, three, atol=1e-3)


def test_qwen_bias_and_sliding_window_decode_consistent():
    spec = spec_from_config(
        tiny_config(
            model_type="qwen2", sliding_window=4, use_sliding_window=True, max_position_embeddings=64
        ),
        name="tiny-qwen-swa",
    )
    assert spec.qkv_bias and spec.sliding_layers == 2
    full, inc = _full_and_incremental(spec, [9, 6])
    assert torch.allclose(full, inc, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ARCHS)
def test_every_catalogue_architecture_builds_and_decodes(name):
    spec = shrink(name)
    full, inc = _full_and_incremental(spec, [6, 4])
    assert torch.isfinite(full).all()
    assert torch.allclose(full, inc, rtol=1e-3, atol=1e-3)


def test_gemma_layers_mix_sliding_and_global():
    from core.model_spec import load_model

    spec = load_model("gemma-3-12b")
    ids = sliding_layer_ids(spec)
    assert len(ids) == spec.sliding_layers and 0 < len(ids) < spec.num_layers
    model = build_model(shrink("gemma-3-12b"), dtype="fp32", device="cpu")
    assert model.embed_scale == pytest.approx(8.0) and model.layers[0].post_norms


def test_partial_build_and_weights_nonzero(tiny_spec):
    m = build_model(tiny_spec, dtype="bf16", device="cpu", num_layers=1)
    assert len(m.layers) == 1
    for name, p in m.named_parameters():
        assert (p != 0).float().mean() > 0.99, name
    with pytest.raises(ValueError):
        build_model(tiny_spec, device="cpu", num_layers=5)


def test_tied_embeddings_share_weight():
    spec = spec_from_config(tiny_config(tie_word_embeddings=True), name="tiny-tied")
    m = build_model(spec, dtype="fp32", device="cpu")
    assert m.lm_head.weight.data_ptr() == m.embed.weight.data_ptr()


def test_int8_model_runs_on_cpu(tiny_spec):
    m = build_model(tiny_spec, dtype="int8", device="cpu")
    m.allocate_kv(8)
    out = m(torch.tensor([3, 4, 5]), make_layout([3], [0], "cpu"))
    assert torch.isfinite(out).all() and out.shape == (3, tiny_spec.vocab_size)


def test_mla_catalogue_model_builds_with_a_latent_cache():
    from core.model_spec import catalogue_names, load_model

    mla = [n for n in catalogue_names() if load_model(n).is_mla]
    assert mla, "the catalogue has MLA models (DeepSeek)"
    spec = load_model("deepseek-v2-lite")
    from engine.model import Transformer

    with torch.device("meta"):  # the full-size layer shapes, no memory
        model = Transformer(spec, 2)
    assert model.layers[1].attn.kv_b.weight.shape == (16 * (128 + 128), 512)
    assert model.layers[1].attn.kv_a.weight.shape == (512 + 64, 2048)
    assert model.layers[0].mlp.gate_up.weight.shape == (2 * 10944, 2048)  # first_k_dense_replace
    assert model.layers[1].mlp.w_gate_up.shape == (64, 2 * 1408, 2048)
    # one 576-wide latent + rope-key vector per token per layer, as the cost model counts
    assert spec.kv_elems_per_token_per_layer == 576
