"""GPU correctness checks of the engine's fast paths against their references (run on a CUDA machine).

Flash varlen attention vs masked SDPA (decode with mixed contexts, chunked prefill, sliding window),
the Triton kernels vs torch, and CUDA-graph decode steps vs full prefills for dense, MoE and Gemma
layers. Prints one line per check and exits non-zero if any fails.
"""

from __future__ import annotations

import sys

import _checkout  # noqa: F401  (first: the checkout's root on sys.path)
import torch

from core.model_spec import load_model, spec_from_config
from engine.attention import make_layout, reference_attention, varlen_attention
from engine.fused import (
    act_mul,
    act_mul_ref,
    add_rmsnorm,
    add_rmsnorm_ref,
    gemv,
    rope_and_cache,
    rope_cache_ref,
)
from engine.model import build_model, rope_tables
from engine.steps import StepRunner

FAILED: list[str] = []


def rel(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def check(name: str, err: float, tol: float) -> None:
    ok = err == err and err < tol
    print(f"{'ok  ' if ok else 'FAIL'} {name}: rel err {err:.2e} (tol {tol:.0e})", flush=True)
    if not ok:
        FAILED.append(name)


def attention_checks(dev):
    torch.manual_seed(0)
    bf = torch.bfloat16
    for name, q_lens, prior, window in [
        ("triton decode, mixed contexts", [1, 1, 1, 1], [0, 17, 300, 4095], 0),
        ("triton decode, window 100", [1, 1, 1], [50, 99, 1000], 100),
        ("triton decode, batch 40", [1] * 40, list(range(0, 4000, 100)), 0),
        ("chunked prefill + decodes", [64, 1, 129], [100, 50, 0], 0),
        ("sliding window 32", [1, 40, 1], [200, 70, 5], 32),
        ("fresh prompts", [300, 300], [0, 0], 0),
        ("mixed: chunks then decodes (split)", [64, 100, 1, 1, 1], [100, 0, 50, 3000, 7], 0),
        ("mixed: fresh prompts then decodes", [300, 300, 1, 1], [0, 0, 40, 9000], 0),
        ("mixed: window 100", [40, 1, 1], [70, 5, 1000], 100),
        ("triton decode, ragged 40 seqs", [1] * 40, [16] * 39 + [30000], 0),
        ("long fresh prompt (cuDNN, padded)", [2100], [0], 0),
        (
            "long fresh prompts between chunks, then decodes",
            [2300, 64, 3000, 2049, 1, 1],
            [0, 100, 5, 0, 50, 3000],
            0,
        ),
        ("long fresh prompt, window 100 (FA2)", [2200, 1], [0, 70], 100),
    ]:
        lay = make_layout(q_lens, prior, dev)
        for nh, nkv, d in ((8, 2, 128), (4, 4, 64)):
            k = torch.randn(sum(lay.k_lens) + 8, nkv, d, device=dev, dtype=bf)
            v = torch.randn_like(k)
            q = torch.randn(sum(q_lens), nh, d, device=dev, dtype=bf)
            out = varlen_attention(q, k, v, lay, d**-0.5, window)
            ref = reference_attention(q, k, v, lay, d**-0.5, window)
            check(f"attention {name} ({nh}/{nkv} heads, d {d})", rel(out, ref), 2e-2)


def fused_checks(dev):
    bf = torch.bfloat16
    x, r = torch.randn(37, 4096, device=dev, dtype=bf), torch.randn(37, 4096, device=dev, dtype=bf)
    w = torch.rand(4096, device=dev, dtype=bf) + 0.5
    (y, h), (yr, hr) = add_rmsnorm(x, r, w, 1e-5), add_rmsnorm_ref(x, r, w, 1e-5)
    check("triton add+rmsnorm", max(rel(y, yr), rel(h, hr)), 1e-2)
    gu = torch.randn(37, 2 * 14336, device=dev, dtype=bf)
    check("triton silu·mul", rel(act_mul(gu), act_mul_ref(gu)), 1e-2)
    check("triton gelu_tanh·mul", rel(act_mul(gu, "gelu_tanh"), act_mul_ref(gu, "gelu_tanh")), 1e-2)
    cos, sin = rope_tables(128, 500000.0, 4096, dev)
    qkv = torch.randn(37, 48, 128, device=dev, dtype=bf)
    pos = torch.randint(0, 4096, (37,), device=dev)
    slots = torch.randperm(64, device=dev)[:37]
    pools = [torch.full((64, 8, 128), float("nan"), device=dev, dtype=bf) for _ in range(4)]
    qa = rope_and_cache(qkv[:, :32], qkv[:, 32:40], qkv[:, 40:], cos, sin, pos, slots, pools[0], pools[1])
    qb = rope_cache_ref(qkv[:, :32], qkv[:, 32:40], qkv[:, 40:], cos, sin, pos, slots, pools[2], pools[3])
    check(
        "triton rope+KV write",
        max(rel(qa, qb), rel(pools[0][slots], pools[2][slots]), rel(pools[1][slots], pools[3][slots])),
        1e-2,
    )
    xv, wv = torch.randn(1, 4096, device=dev, dtype=bf), torch.randn(6144, 4096, device=dev, dtype=bf)
    b = torch.randn(6144, device=dev, dtype=bf)
    check(
        "triton gemv",
        rel(gemv(xv, wv, b), torch.nn.functional.linear(xv.float(), wv.float(), b.float())),
        1e-2,
    )


def step_checks(dev, spec, label):
    model = build_model(spec, dtype="bf16", device=dev)
    for graphs in (True, False):
        r = StepRunner(model, max_batch=4, max_context=256, device=dev, cuda_graphs=graphs, kv_tokens=1024)
        lens, starts = [5, 40, 17], [0, 64, 128]
        toks = [torch.randint(1, spec.vocab_size, (n,)) for n in lens]
        full = r.logits(lens, [0, 0, 0], torch.cat(toks), starts).float()
        pre = [n - 1 for n in lens]
        r.logits(pre, [0, 0, 0], torch.cat([t[:-1] for t in toks]), starts)
        inc = r.logits([1, 1, 1], pre, torch.stack([t[-1] for t in toks]), starts).float()
        check(
            f"{label}: decode step == full prefill ({'graphs' if graphs else 'eager'})", rel(inc, full), 3e-2
        )
        # a mixed step: a fresh 40-token chunk (slot 192) beside the three decodes above
        a = torch.randint(1, spec.vocab_size, (40,))
        r.logits(pre, [0, 0, 0], torch.cat([t[:-1] for t in toks]), starts)
        mix = r.logits(
            [40, 1, 1, 1], [0] + pre, torch.cat([a, torch.stack([t[-1] for t in toks])]), [192] + starts
        ).float()
        alone = r.logits([40], [0], a, [192]).float()
        check(
            f"{label}: mixed step == prefill + decodes ({'graphs' if graphs else 'eager'})",
            max(rel(mix[:1], alone), rel(mix[1:], full)),
            3e-2,
        )
    r.model.allocate_kv(1)  # free the pool


def main() -> int:
    dev = "cuda"
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}", flush=True)
    attention_checks(dev)
    fused_checks(dev)
    tiny = {
        "hidden_size": 512,
        "num_hidden_layers": 2,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "intermediate_size": 1024,
        "vocab_size": 1000,
        "max_position_embeddings": 1024,
    }
    step_checks(dev, spec_from_config({"model_type": "llama", **tiny}, name="tiny-llama"), "llama")
    step_checks(dev, spec_from_config({"model_type": "qwen2", **tiny}, name="tiny-qwen2"), "qwen2 (bias)")
    moe = {"model_type": "mixtral", **tiny, "num_local_experts": 8, "num_experts_per_tok": 2}
    step_checks(dev, spec_from_config(moe, name="tiny-mixtral"), "mixtral (grouped experts)")
    g = dict(load_model("gemma-3-12b").config)
    inner = dict(g.get("text_config", g))
    inner.update(tiny, sliding_window=16, layer_types=["sliding_attention", "full_attention"])
    g = {**g, "text_config": inner} if "text_config" in g else inner
    step_checks(dev, spec_from_config(g, name="tiny-gemma3"), "gemma3 (sliding+global)")
    print("FAILED: " + ", ".join(FAILED) if FAILED else "all checks passed", flush=True)
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
