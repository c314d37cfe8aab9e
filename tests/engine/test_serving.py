"""The real serving loop on the CPU: every request finishes exactly, times are ordered, blocks balance,
preemption and KV compaction keep the greedy tokens right, and the fidelity benchmark runs end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.kv_cache import BlockPool
from core.records import StepStats
from core.requests import Requests
from engine.attention import split_waves
from engine.model import build_model
from engine.serving import Executor, Regions, physical_tokens, serve


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # toy kernels: more threads only add contention on a shared CI machine
    yield
    torch.set_num_threads(n)


def engine_conftest():
    """This folder's conftest, by path: another folder's conftest may already be imported as `conftest`."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("engine_conftest", Path(__file__).parent / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def model():
    from core.model_spec import spec_from_config

    return build_model(
        spec_from_config(engine_conftest().tiny_config(), name="tiny-llama"), dtype="fp32", device="cpu"
    )


def workload(n: int = 24, seed: int = 0, span_s: float = 0.3) -> Requests:
    rng = np.random.default_rng(seed)
    return Requests(np.sort(rng.uniform(0, span_s, n)), rng.integers(3, 50, n), rng.integers(1, 24, n))


def check_run(run, req: Requests, pool: BlockPool) -> None:
    t = run.table
    assert not run.unfinished
    assert (t.generated == req.output_tokens).all()
    assert [len(x) for x in run.token_times] == req.output_tokens.tolist()
    assert (t.arrival_s <= t.scheduled_s).all() and (t.scheduled_s < t.first_token_s).all()
    assert (t.first_token_s <= t.finish_s).all()
    for i, times in enumerate(run.token_times):
        assert times[0] == t.first_token_s[i] and times[-1] == t.finish_s[i]
        assert (np.diff(times) >= 0).all()
    assert pool.used == 0 and run.scheduler.n_decoding == 0 and not run.scheduler.running
    assert run.stats.itl_hist.sum() == int((req.output_tokens - 1).sum())


def greedy_matches(model, run, req: Requests, rids) -> None:
    """Each request's tokens are what a full forward of its stream from scratch picks (KV regions, recompute and
    compaction kept every sequence's cache right)."""
    from engine.attention import make_layout

    for rid in rids:
        p, o = int(req.prompt_tokens[rid]), int(req.output_tokens[rid])
        stream = run.ids[run.offsets[rid] : run.offsets[rid + 1]]
        n = p + o - 1
        lay = make_layout([n], [0], "cpu", starts=[0], kv_heads=model.spec.num_kv_heads)
        rows = torch.arange(p - 1, n)
        picked = model(torch.from_numpy(stream[:n].copy()), lay, rows).argmax(-1).numpy()
        assert (picked == run.output_ids(rid)).all(), rid


@pytest.mark.parametrize("chunked", [True, False])
@pytest.mark.parametrize("static", [False, True])
def test_every_request_finishes_exactly_in_order(model, chunked, static):
    """static: decode steps and steps with prompt chunks (up to 32 tokens) through the padded static buffers
    of the CUDA-graph paths (run eagerly on the CPU); steps over 32 tokens still eager."""
    req = workload()
    pool = BlockPool(500, 4)
    ex = Executor(model, physical_tokens(500, 4, req, 8), 8, device="cpu", static_decode=static,
                  mixed_graph_tokens=32, static_mixed=static)  # fmt: skip
    ex.warmup()
    run = serve(ex, req, pool, 8, 32 if chunked else 128, chunked, trace=True)
    check_run(run, req, pool)
    assert run.decode_graph_steps > 0 if static else run.decode_graph_steps == 0
    how = run.step_trace["graph"]
    assert len(how) == run.steps
    assert ((how == 2).sum() > 0) == static and ((how == 1).sum() > 0) == static
    if static and not chunked:
        assert (how == 0).sum() > 0  # prompts over 32 tokens
    assert (
        len(run.step_trace["compiles"]) == run.steps and (run.step_trace["compiles"] == 0).all()
    )  # no Triton here
    greedy_matches(model, run, req, range(0, len(req), 5) if not static else range(len(req)))


def test_mla_steps_with_prompt_chunks_take_the_mixed_step_graphs():
    """DeepSeek-V2 (MLA): steps with prompt chunks go through the mixed-step graphs' static buffers too (on CUDA
    the absorbed prompt kernel reads only device metadata, engine.mla), and the greedy tokens stay right."""
    from tests.engine.test_mla import tiny_deepseek

    # dense MLPs: a toy's routed experts flip on float noise, and the check is of the attention
    mla = build_model(tiny_deepseek(first_k_dense_replace=2), dtype="fp32", device="cpu")
    req = workload(12, seed=3)
    pool = BlockPool(300, 4)
    ex = Executor(mla, physical_tokens(300, 4, req, 8), 8, device="cpu", static_decode=True,
                  mixed_graph_tokens=32, static_mixed=True)  # fmt: skip
    ex.warmup()
    run = serve(ex, req, pool, 8, 32, True, trace=True)
    check_run(run, req, pool)
    assert (run.step_trace["graph"] == 2).sum() > 0
    # each token is the argmax of a full forward over its stream, up to float ties (a toy's logits sit close)
    from engine.attention import make_layout

    for rid in range(len(req)):
        p, o = int(req.prompt_tokens[rid]), int(req.output_tokens[rid])
        stream = run.ids[run.offsets[rid] : run.offsets[rid + 1]]
        n = p + o - 1
        logits = mla(torch.from_numpy(stream[:n].copy()), make_layout([n], [0], "cpu", kv_heads=1),
                     torch.arange(p - 1, n))  # fmt: skip
        got = logits.gather(1, torch.from_numpy(run.output_ids(rid).copy())[:, None])[:, 0]
        assert (got >= logits.max(-1).values - 1e-2).all(), rid


@pytest.mark.parametrize("chunked", [True, False])
def test_preemption_under_a_tiny_pool_still_finishes_everything(model, chunked):
    req = workload(seed=1)
    blocks = 20  # 80 tokens: a few sequences at a time; the longest request needs 18 blocks
    pool = BlockPool(blocks, 4)
    ex = Executor(model, physical_tokens(blocks, 4, req, 8), 8, device="cpu", static_decode=True,
                  mixed_graph_tokens=64, static_mixed=True)  # fmt: skip
    run = serve(ex, req, pool, 8, 32 if chunked else 128, chunked)
    check_run(run, req, pool)
    assert run.scheduler.num_preemptions > 0 and run.table.preemptions.sum() == run.scheduler.num_preemptions
    assert ex.regions.free_tokens == ex.regions.tokens
    greedy_matches(model, run, req, [i for i in range(len(req)) if run.table.preemptions[i]][:4])


@pytest.mark.parametrize("chunked, blocks", [(False, 500), (True, 20)])
def test_recorded_itl_is_the_gap_between_each_requests_tokens(model, chunked, blocks):
    """The shared step recorder (the simulator's ITL rule) gives exactly the gaps between each request's
    token times, prefill-only steps, preemptions and recomputed prompts included."""
    req = workload(seed=1)
    pool = BlockPool(blocks, 4)
    ex = Executor(model, physical_tokens(blocks, 4, req, 8), 8, device="cpu", mixed_graph_tokens=0)
    run = serve(ex, req, pool, 8, 32 if chunked else 128, chunked)
    check_run(run, req, pool)
    assert blocks > 100 or run.scheduler.num_preemptions > 0
    gaps = StepStats(1.0)
    for times in run.token_times:
        for gap in np.diff(times).tolist():
            gaps.add_itl(gap, 1)
    assert (run.stats.itl_hist == gaps.itl_hist).all()


def test_compaction_moves_live_kv(model):
    req = workload(seed=2, span_s=0.0)  # all at once: the batches do not depend on timing
    longest = int((req.prompt_tokens + req.output_tokens).max())
    pool = BlockPool(40, 4)
    ex = Executor(model, 160 + 2 * longest, 8, device="cpu")  # a little above the scheduler's 160 tokens
    run = serve(ex, req, pool, 8, 32, True)
    check_run(run, req, pool)
    assert ex.compactions > 0
    greedy_matches(model, run, req, range(len(req)))


def test_regions_best_fit_and_merge():
    r = Regions(100)
    a, b, c = r.allocate(30), r.allocate(20), r.allocate(50)
    assert (a, b, c) == (0, 30, 50) and r.allocate(1) is None
    r.free(a, 30)
    r.free(c, 50)
    assert r.allocate(25) == 0  # the smaller hole
    r.free(0, 25)
    r.free(b, 20)
    assert r.starts == [0] and r.sizes == [100]


def test_fidelity_cpu_quick_writes_its_table(tmp_path, capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import fidelity

    assert fidelity.main(["--device", "cpu", "--quick", "--duration", "1", "--out-dir", str(tmp_path)]) == 0
    md = (tmp_path / "fidelity_cpu.md").read_text()
    assert "tiny-fp32-conversation-80pct-chunked" in md and "unchunked" in md
    # the prefix-heavy row replays with prefix caching on both sides: the engine's scheduler finds the hits
    assert "tiny-fp32-prefix-80pct-chunked" in md and "| prefix-cache hit rate |" in md
    assert "| TTFT p50 (ms) |" in md
    raw = tmp_path / "fidelity" / "cpu" / "tiny-fp32-conversation-80pct-chunked"
    assert (raw / "engine_requests.csv").exists() and (raw / "simulator_requests.csv").exists()
    steps = (raw / "engine_steps.csv").read_text().splitlines()
    assert len(steps) > 10 and steps[0].startswith("end_s,") and steps[0].endswith(",model_s")
    assert "## Where the engine's steps went" in md and "## Decode throughput at large batch" in md
    assert "; 0 steps compiled a Triton kernel during the run" in md  # (the CPU runs no Triton kernel)
    assert "Engine code: every row ran on this checkout's engine" in md  # each row records engine/*.py's hash

    # the simulator's side again from the stored engine runs, no engine: same engine figures, same rows
    import json

    before = json.loads((raw / "row.json").read_text())
    assert fidelity.main(["--device", "cpu", "--quick", "--out-dir", str(tmp_path), "--resimulate"]) == 0
    after = json.loads((raw / "row.json").read_text())
    assert after["engine"] == before["engine"] and after["requests"] == before["requests"]
    assert after["simulator"]["finished"] == before["simulator"]["finished"]
    assert after["simulator"]["output_tokens_per_s"] == pytest.approx(
        before["simulator"]["output_tokens_per_s"]
    )
    # each row again with the step prices moved by fidelity.SENSITIVITY: its band in the table, nothing written
    assert "sensitivity" not in after
    md = (tmp_path / "fidelity_cpu.md").read_text()
    band = md.split("## How far these errors move")[1].split("## ")[0]
    assert sum(line.startswith("| tiny-") for line in band.splitlines()) == len(
        list(raw.parent.glob("*/row.json"))
    )
    assert "median" in band and "…" in band

    # a row with results is kept unless --rerun; --fresh, its old name, is still taken, with a note
    one = ["--device", "cpu", "--quick", "--duration", "1", "--out-dir", str(tmp_path), "--only", raw.name]
    capsys.readouterr()
    assert fidelity.main(one) == 0
    assert f"{raw.name}: kept from" in capsys.readouterr().out
    assert fidelity.main([*one, "--fresh"]) == 0
    out = capsys.readouterr()
    assert "kept from" not in out.out and "TTFT p50" in out.out and "--fresh is now called --rerun" in out.err


def test_prefix_caching_skips_the_cached_prompt_tokens(model):
    """With a shared system prompt and prefix caching, the scheduler finds hits and the executor computes only
    the rest of each prompt; every request still finishes exactly (greedy tokens of hits are not checked:
    the cached part of a region is not the prefix's KV)."""
    from core.requests import PrefixKeys
    from simulator.scenario import parse_scenario
    from simulator.workload import generate

    sc = parse_scenario({"model": "qwen2.5-0.5b", "hardware": {"gpu": "h100-sxm"}, "seed": 3,
                         "workload": {"arrival": {"process": "poisson", "rate_per_s": 80}, "num_requests": 24,
                                      "classes": [{"name": "a", "share": 1.0, "shared_prefix_tokens": 32,
                                                   "prompt_tokens": {"dist": "uniform", "min": 3, "max": 20},
                                                   "output_tokens": {"dist": "uniform", "min": 1, "max": 12}}]}})  # fmt: skip
    req = generate(sc.workload, sc.seed)
    pool = BlockPool(400, 4, prefix_caching=True)
    ex = Executor(model, physical_tokens(400, 4, req, 8), 8, device="cpu")
    run = serve(ex, req, pool, 8, 32, True, block_keys=PrefixKeys(req, 4))
    check_run(run, req, pool)
    cached = np.asarray(run.table.cached_tokens)
    assert cached.sum() >= 28 * (
        len(req) - 8
    )  # all but the first few find the 32-token prompt (7 blocks of 4)
    assert run.stats.prefill_tokens == int(req.prompt_tokens.sum() - cached.sum())


def test_busy_time_splits_by_the_cost_model_when_given():
    """With a cost model the engine splits a step's measured time as the simulator does (by the cost
    model's prompt part); without one, by token share."""
    from types import SimpleNamespace

    from core.cost_model import BatchShape
    from core.scheduler import Batch
    from engine.serving import _Replay

    batch = Batch(shape=BatchShape(30, 1, 0, 0, 0, 10, 100, 11))  # 30 prompt tokens, 10 decodes
    replay = SimpleNamespace(cost=SimpleNamespace(step_split=lambda shape: (2.0, 0.5)))
    assert _Replay.prefill_s(replay, batch, 1.0) == 0.25
    replay.cost = None
    assert _Replay.prefill_s(replay, batch, 1.0) == 0.75  # 30 of 40 tokens


def test_the_compile_count_finds_the_engines_triton_kernels():
    """serve(trace=True) counts Triton compiles per step over engine.fused.jit_functions(): every kernel the
    engine launches is in it (int4's too, jitted on first use into a module list)."""
    pytest.importorskip("triton")
    from engine import quant
    from engine.fused import compiled_variants, jit_functions

    quant._kernels()
    names = {f.fn.__name__ for f in jit_functions()}
    want = {"_add_rmsnorm_kernel", "_rope_cache_kernel", "_decode_attn_kernel", "_decode_combine_kernel",
            "_mla_decode_kernel", "_mla_prefill_kernel", "_moe_gemm_kernel", "_align_kernel", "_w4_kernel"}  # fmt: skip
    assert want <= names
    assert compiled_variants(jit_functions()) >= 0
    assert compiled_variants([object()]) == -1  # a cache this code cannot read: said, not miscounted


def test_uneven_decode_steps_take_the_split_graph(model):
    """A decode graph size whose sequences fill the GPU one unit each keeps a second, split graph: a step with one
    context far longer than the others replays it (engine.attention.balanced_units), an even step the whole one."""
    from engine.attention import whole_units

    ex = Executor(model, 4096, 32, device="cpu", static_decode=True)
    ex.warmup()
    size = next(s for s in ex.sizes if whole_units(s, ex.target))
    assert size in ex.split_graphs and not ex.split_graphs[size].layout.whole_units
    assert (
        ex.graphs[size].layout.whole_units
        and ex.split_graphs[size].cap == ex.target * split_waves(size, ex.target) + size
    )
    seen = []
    fill = ex._fill
    ex._fill = lambda g, *a: (seen.append(g.layout.whole_units), fill(g, *a))
    starts = np.arange(size, dtype=np.int64) * 100
    tokens = np.ones(size, dtype=np.int64)
    ex._decode(starts, np.full(size, 20, dtype=np.int64), tokens)
    ex._decode(starts, np.array([90] + [3] * (size - 1), dtype=np.int64), tokens)
    assert seen == [True, False]


def test_uneven_decodes_of_a_mixed_step_take_the_split_graph(model):
    """A mixed-step size whose graph runs one decode unit per sequence keeps a second, split graph (session 18):
    a step whose decodes' contexts are uneven replays it, an even one the whole one, and both give the eager
    step's tokens; engine.serving.SPLIT_MIXED off keeps the one graph."""
    from engine import serving
    from engine.attention import whole_units

    ex = Executor(model, 4096, 32, device="cpu", static_mixed=True, mixed_graph_tokens=128)
    ex.warmup()
    size = next(s for s in ex.mixed_sizes if whole_units(s - 2, ex.target))
    assert size in ex.split_mixed_graphs and not ex.split_mixed_graphs[size].layout.whole_units
    assert ex.mixed_graphs[size].layout.whole_units
    seen = []
    fill = ex._fill_mixed
    ex._fill_mixed = lambda g, *a: (seen.append(g.layout.whole_units), fill(g, *a))[1]
    n = size - 2  # two prompt tokens and n decodes fill the graph: no dummies
    starts = np.arange(n, dtype=np.int64) * 40
    tokens = np.arange(1, n + 1, dtype=np.int64) % 50 + 1
    chunk = [(n * 40 + 100, 0, 2, np.array([3, 4], dtype=np.int64), True)]
    for ctx in (np.full(n, 20, dtype=np.int64), np.array([3] * (n - 1) + [90], dtype=np.int64)):
        ids = ex._mixed(chunk, (starts, ctx, tokens)).cpu().numpy()
        eager = ex._eager(chunk, (starts, ctx, tokens)).cpu().numpy()
        assert (ids == eager).all()
    assert seen == [True, False]
    serving.SPLIT_MIXED = False
    try:
        seen.clear()
        ex._mixed(chunk, (starts, np.array([3] * (n - 1) + [90], dtype=np.int64), tokens))
        assert seen == [True]
    finally:
        serving.SPLIT_MIXED = True


@pytest.mark.parametrize("blocks", [500, 20])
def test_async_scheduling_keeps_every_token_and_record(model, blocks, monkeypatch):
    """Async scheduling (decode steps launched before the one in flight is recorded, their input tokens gathered
    on the device) yields the very tokens of the loop that waits for each step, with preemption under a tiny
    pool too, and the same records: every request finishes, blocks balance, ITL samples are each request's gaps."""
    req = workload(seed=3, span_s=0.0)  # all at once: the batches do not depend on timing
    launches = {"gathered": 0, "from_host": 0}
    launch = Executor.launch_decode

    def counted(self, *args, prev=None, rows=None):
        launches["gathered" if prev is not None else "from_host"] += 1
        return launch(self, *args, prev=prev, rows=rows)

    monkeypatch.setattr(Executor, "launch_decode", counted)
    runs = []
    for overlap in (False, True):
        pool = BlockPool(blocks, 4)
        ex = Executor(model, physical_tokens(blocks, 4, req, 8), 8, device="cpu", static_decode=True,
                      mixed_graph_tokens=64, static_mixed=True)  # fmt: skip
        run = serve(ex, req, pool, 8, 32, True, async_scheduling=overlap, trace=True)
        check_run(run, req, pool)
        runs.append(run)
    sync, over = runs
    # most decode steps took their input tokens from the step in flight, on the device
    assert launches["gathered"] > 2 * launches["from_host"] > 0
    assert (sync.ids == over.ids).all()
    assert sync.steps == over.steps and sync.scheduler.num_preemptions == over.scheduler.num_preemptions
    assert blocks > 100 or over.scheduler.num_preemptions > 0
    tr = over.step_trace
    decode_graph = (tr["graph"] == 1) & (tr["prefill_tokens"] == 0)
    assert decode_graph.sum() >= 10  # the overlapped kind of step is most of the run
    assert (np.diff(tr["end_s"]) >= 0).all()
    gaps = StepStats(1.0)
    for times in over.token_times:
        for gap in np.diff(times).tolist():
            gaps.add_itl(gap, 1)
    assert (over.stats.itl_hist == gaps.itl_hist).all()


def test_async_scheduling_refuses_speculation(model):
    from engine.speculative import SpecRun

    req = workload(n=2)
    ex = Executor(model, 4096, 8, device="cpu", static_decode=True)
    with pytest.raises(ValueError, match="async_scheduling"):
        serve(ex, req, BlockPool(100, 4), 8, 32, True, async_scheduling=True, spec=SpecRun.__new__(SpecRun))


def _catalogue_cases() -> list:
    from core.model_spec import catalogue_names

    cases = [pytest.param(n, "fp32", id=n) for n in catalogue_names()]
    # the coverage rows' one 8-bit format (Llama-3.1-70B fits one H200 in fp8 only)
    # Mistral-7B v0.1's config: a sliding window on every layer (no full layer to size blocks by: sliding_terms)
    return cases + [
        pytest.param("llama-3.1-70b", "fp8", id="llama-3.1-70b-fp8"),
        pytest.param("mistral-7b", "fp32", id="mistral-7b-every-layer-sliding"),
    ]


# layers a toy model keeps: enough for Gemma 3's first global layer (every sixth) and DeepSeek-V3's first MoE layer
# (after first_k_dense_replace dense ones)
TOY_LAYERS = {"gemma-3-12b": 6, "deepseek-v3": 4}


@pytest.mark.parametrize("name,dtype", _catalogue_cases())
def test_every_catalogue_architecture_serves_its_requests_exactly(name, dtype):
    """Each catalogue model at toy size (tests/engine/conftest.shrink: its structure, tiny widths) through the
    serving loop on the CPU: chunked prompts beside decodes, a pool small enough to preempt, every request
    finishing with the tokens a full forward of its stream picks (MoE routing, MLA, sliding windows, q/k norms,
    tied embeddings and 8-bit layers on the paths the fidelity rows' models take)."""
    mod = engine_conftest()
    spec = mod.shrink(name, TOY_LAYERS.get(name, 2))
    if name == "mistral-7b":
        from core.model_spec import spec_from_config

        spec = spec_from_config(dict(spec.config, sliding_window=8), name="tiny-mistral-v0.1")
        assert spec.sliding_layers == spec.num_layers and spec.sliding_window == 8
    m = build_model(spec, dtype=dtype, device="cpu", seed=1)
    if m.spec.is_moe:  # what the model's router picks, so the full forward picks the same experts
        m.set_moe_routing("router")
    req = workload(12, seed=3)
    pool = BlockPool(60, 4)
    ex = Executor(m, physical_tokens(60, 4, req, 6), 6, device="cpu")
    run = serve(ex, req, pool, 6, 24, True)
    check_run(run, req, pool)
    greedy_matches(m, run, req, range(len(req)))
