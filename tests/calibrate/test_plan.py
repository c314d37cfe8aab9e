from calibrate.plan import TOKENS_FULL, Limits, make_plan, step_plan
from core.model_spec import load_model

LIMITS = Limits(max_kv_tokens=380_000, max_batch=256, max_context=32_768)


def plans():
    spec = load_model("llama-3.1-8b")
    dtypes = ["bf16", "fp8", "int8"]
    return make_plan(spec, "quick", dtypes, LIMITS), make_plan(spec, "full", dtypes, LIMITS)


def test_quick_is_a_subset_of_full_with_the_same_roles():
    quick, full = plans()
    roles = {p.key: p.holdout for p in full}
    assert {p.key for p in quick} <= set(roles)
    assert all(roles[p.key] == p.holdout for p in quick)
    assert len(quick) < 0.5 * len(full)


def test_sizes_are_sane():
    quick, full = plans()
    # (quick: what runs in under 2 minutes on an H200; the MoE and MLA kernel points are a few ms each)
    assert 100 < len(quick) < 330 and 300 < len(full) < 1000
    kinds = {p.kind for p in full}
    assert {
        "copy",
        "ceiling_gemm",
        "gemm",
        "attention_prefill",
        "attention_decode",
        "elementwise",
        "step_prefill",
        "step_decode",
        "step_mixed",
    } <= kinds
    ms = [p.params["m"] for p in full if p.kind == "gemm"]
    assert min(ms) == 1 and max(ms) == 16384 == TOKENS_FULL[-1]
    assert {p.params["dtype"] for p in full if p.kind == "gemm"} == {"bf16", "fp8", "int8"}
    for plan in (quick, full):  # every group and the steps keep points out of the fit
        for kind in ("gemm", "attention_prefill", "attention_decode", "elementwise", "step_decode"):
            pts = [p for p in plan if p.kind == kind]
            assert 0.1 < sum(p.holdout for p in pts) / len(pts) < 0.5, kind
    assert len({p.key for p in full}) == len(full)


def test_steps_respect_the_device_limits():
    small = Limits(max_kv_tokens=50_000, max_batch=64, max_context=8192)
    for p in step_plan("full", small):
        q = p.params
        ctx = (
            q.get("context_lens", [])
            + q.get("decode_context_lens", [])
            + [a + b for a, b in zip(q.get("prompt_lens", []), q.get("prior_lens", []), strict=True)]
        )
        assert len(ctx) <= 64 and sum(ctx) <= 50_000 and max(ctx) <= 8192


def test_cpu_plan_is_tiny(tiny_config):
    spec = load_model(str(tiny_config))
    plan = make_plan(spec, "cpu", ["bf16"], Limits(4096, 8, 512))
    assert len(plan) < 100
    assert max(p.params.get("m", 0) for p in plan) <= 512
    assert not any(p.kind == "allreduce" for p in plan)
    multi = make_plan(spec, "quick", ["bf16"], LIMITS, n_gpus=2)
    assert any(p.kind == "allreduce" for p in multi)
