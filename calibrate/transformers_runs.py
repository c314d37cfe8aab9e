"""Raw timings of Hugging Face transformers' own serving paths on catalogue models with random weights.

`python -m calibrate.transformers_runs --out DIR [--quick] [--models ...]` times, per model:
  * `generate` (static batches, the stack most users start with): TTFT and decode time per output token over
    batch sizes x prompt lengths;
  * its continuous-batching manager, replaying the conversation trace with requests submitted at their
    arrival times from a feeder thread, and one all-at-once `generate_batch` of the same prompts.
It writes one JSON per model (header + rows) and prints a Markdown summary. Nothing is fitted here: a later
step turns these rows into an engine profile and checks the simulator against them (issue 11).
torch and transformers are imported only when a run starts, so the row and summary builders work without them.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import platform
import shlex
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
CATALOGUE_DIR = REPO_ROOT / "core" / "catalogue"
CONVERSATION_TRACE = REPO_ROOT / "simulator" / "traces" / "splitwise_conv.csv"

DEFAULT_MODELS = ("llama-3.1-8b", "qwen2.5-7b")


@dataclass(slots=True)
class SweepPlan:
    """What one run measures; `full()` is the H200 sweep of issue 11, `quick()` a CPU smoke test."""

    batch_sizes: tuple[int, ...]
    prompt_tokens: tuple[int, ...]
    decode_tokens: int  # N in (T(N+1) - T(1)) / N
    repeats: int  # timed runs per point, after one warm-up; the median is reported
    cb_requests: int  # first requests of the conversation trace replayed through continuous batching
    # Output tokens per replayed request are min(trace, cap): the whole trace's outputs would not fit the device time.
    cb_output_cap_tokens: int
    cb_batch_new_tokens: int  # generate_batch takes one max_new_tokens for all requests
    cb_time_scale: float  # arrival times are multiplied by this (1.0 = real time)
    cb_prompt_cap_tokens: int | None = None  # only the CPU smoke test shortens prompts
    # None = the manager sizes its paged cache from free GPU memory (what a user gets); the CPU smoke test must
    # name them, since the manager cannot read free memory on the CPU.
    cb_num_blocks: int | None = None
    cb_max_batch_tokens: int | None = None

    @staticmethod
    def full() -> SweepPlan:
        return SweepPlan(
            batch_sizes=(1, 4, 16, 64),
            prompt_tokens=(128, 512, 2048, 8192),
            decode_tokens=64,
            repeats=3,
            cb_requests=200,
            cb_output_cap_tokens=256,
            cb_batch_new_tokens=128,
            cb_time_scale=1.0,
        )

    @staticmethod
    def quick() -> SweepPlan:
        return SweepPlan(
            batch_sizes=(1, 2),
            prompt_tokens=(8, 32),
            decode_tokens=4,
            repeats=3,
            cb_requests=6,
            cb_output_cap_tokens=8,
            cb_batch_new_tokens=4,
            cb_time_scale=0.01,
            cb_prompt_cap_tokens=48,
            cb_num_blocks=16,
            cb_max_batch_tokens=128,
        )


# ---------------------------------------------------------------------------------------------------------------
# Rows and summaries: plain data, no torch, so they are tested on synthetic timings without a GPU.


@dataclass(slots=True)
class GenerateRow:
    """One (batch size, prompt length) point of the `generate` sweep; times in seconds, raw runs kept."""

    batch_size: int
    prompt_tokens: int
    status: str  # "ok", "oom", "skipped: <why>"
    new_tokens: int = 0
    ttft_runs_s: list[float] = field(default_factory=list)  # generate(max_new_tokens=1)
    full_runs_s: list[float] = field(default_factory=list)  # generate(max_new_tokens=N+1)
    ttft_s: float | None = None
    decode_s_per_token: float | None = None
    peak_memory_bytes: int | None = None
    cache_class: str | None = None


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def generate_row(
    batch_size: int, prompt_tokens: int, new_tokens: int, ttft_runs_s: list[float], full_runs_s: list[float]
) -> GenerateRow:
    """A measured row: TTFT = median T(1); decode per token = (median T(N+1) - median T(1)) / N."""
    ttft = median(ttft_runs_s)
    return GenerateRow(
        batch_size=batch_size,
        prompt_tokens=prompt_tokens,
        status="ok",
        new_tokens=new_tokens,
        ttft_runs_s=ttft_runs_s,
        full_runs_s=full_runs_s,
        ttft_s=ttft,
        decode_s_per_token=(median(full_runs_s) - ttft) / new_tokens,
    )


@dataclass(slots=True)
class ServedRequest:
    """One request served by continuous batching; times in seconds from the start of the run."""

    index: int
    arrival_s: float  # when the trace says it arrives (scaled)
    submitted_s: float  # when the feeder thread actually called add_request
    first_token_s: float | None
    finish_s: float | None
    prompt_tokens: int
    requested_output_tokens: int
    output_tokens: int
    token_times_s: list[float] = field(default_factory=list)
    error: str | None = None


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]; None for no values."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def served_summary(requests: Sequence[dict]) -> dict[str, float | int | None]:
    """TTFT (first token - arrival), TPOT ((finish - first token) / (tokens - 1)) p50/p90, and output tok/s
    over the span from the first arrival to the last finish, over the finished requests; `requests` counts all."""
    done = [
        r
        for r in requests
        if r["error"] is None and r["finish_s"] is not None and r["first_token_s"] is not None
    ]
    ttft = [r["first_token_s"] - r["arrival_s"] for r in done]
    tpot = [
        (r["finish_s"] - r["first_token_s"]) / (r["output_tokens"] - 1)
        for r in done
        if r["output_tokens"] > 1
    ]
    out_tokens = sum(r["output_tokens"] for r in done)
    span = max((r["finish_s"] for r in done), default=0.0) - min(
        (r["arrival_s"] for r in requests), default=0.0
    )
    return {
        "requests": len(requests),
        "finished": len(done),
        "output_tokens": out_tokens,
        "span_s": span,
        "output_tokens_per_s": out_tokens / span if span > 0 else None,
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p90_s": percentile(ttft, 90),
        "tpot_p50_s": percentile(tpot, 50),
        "tpot_p90_s": percentile(tpot, 90),
    }


def _ms(x: float | None) -> str:
    return "—" if x is None else f"{x * 1e3:.1f}"


def markdown_summary(results: Sequence[dict]) -> str:
    """Three small tables from the per-model result dicts: batch-1 TTFT by prompt length, decode ms per output
    token by batch size (one row per prompt length), continuous-batching TTFT/TPOT and throughput."""
    lines: list[str] = []
    for res in results:
        model, rows = res["header"]["model"], res.get("generate", [])
        ok = [r for r in rows if r["status"] == "ok"]
        prompts = sorted({r["prompt_tokens"] for r in rows})
        batches = sorted({r["batch_size"] for r in rows})
        lines.append(f"### {model} — `generate` ({res['header']['settings'].get('attn_implementation')})")
        lines.append("")
        lines.append("| prompt tokens | " + " | ".join(str(p) for p in prompts) + " |")
        lines.append("|---|" + "---:|" * len(prompts))
        b1 = {r["prompt_tokens"]: r["ttft_s"] for r in ok if r["batch_size"] == 1}
        lines.append("| TTFT at batch 1, ms | " + " | ".join(_ms(b1.get(p)) for p in prompts) + " |")
        lines.append("")
        lines.append("| decode ms/token at prompt \\ batch | " + " | ".join(str(b) for b in batches) + " |")
        lines.append("|---|" + "---:|" * len(batches))
        by_point = {(r["batch_size"], r["prompt_tokens"]): r for r in rows}
        for p in prompts:
            cells = []
            for b in batches:
                r = by_point.get((b, p))
                # The table says only "oom" or "skipped"; the row in the JSON says why.
                cells.append(
                    _ms(r["decode_s_per_token"])
                    if r and r["status"] == "ok"
                    else (r or {}).get("status", "—").split(":")[0]
                )
            lines.append(f"| {p} | " + " | ".join(cells) + " |")
        lines.append("")
        cb = [(name, res[name]) for name in ("replay", "generate_batch") if res.get(name)]
        if cb:
            lines.append(
                "| continuous batching | requests done | TTFT p50/p90 ms | TPOT p50/p90 ms | output tok/s |"
            )
            lines.append("|---|---:|---:|---:|---:|")
            for name, run in cb:
                # Recomputed from the raw requests, so a stored file's summary can be rebuilt (--summarize).
                s = served_summary(run["requests"])
                tps = s["output_tokens_per_s"]
                # A run stopped at the time budget reports only the requests that finished, which are biased
                # towards early arrivals: say so next to the figures.
                done = f"{s['finished']}/{s['requests']}" + (
                    "" if s["finished"] == s["requests"] else " (partial)"
                )
                lines.append(
                    f"| {name} | {done} | {_ms(s['ttft_p50_s'])} / {_ms(s['ttft_p90_s'])} "
                    f"| {_ms(s['tpot_p50_s'])} / {_ms(s['tpot_p90_s'])} | {'—' if tps is None else f'{tps:.0f}'} |"
                )
            lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Inputs: catalogue configs and the conversation trace.


def config_json_path(model: str) -> Path:
    """A catalogue short name (llama-3.1-8b) or a path to a config.json / a folder holding one."""
    p = Path(model)
    if p.is_dir():
        p = p / "config.json"
    if p.is_file():
        return p
    cat = CATALOGUE_DIR / f"{model.lower()}.json"
    if cat.is_file():
        return cat
    names = ", ".join(sorted(f.stem for f in CATALOGUE_DIR.glob("*.json")))
    raise ValueError(f"unknown model {model!r}: not a config.json path nor a catalogue name ({names})")


def model_label(model: str) -> str:
    p = Path(model)
    return p.parent.name if p.name == "config.json" else p.stem if p.suffix == ".json" else model


def trace_requests(path: Path, count: int, plan: SweepPlan) -> list[tuple[float, int, int]]:
    """(arrival_s from the first request, prompt tokens, output tokens) of the trace's first `count` rows,
    output capped and arrivals scaled by the plan."""
    rows: list[tuple[float, int, int]] = []
    with path.open() as f:
        for rec in csv.DictReader(f):
            if len(rows) == count:
                break
            prompt = int(rec["num_prefill_tokens"])
            if plan.cb_prompt_cap_tokens is not None:
                prompt = min(prompt, plan.cb_prompt_cap_tokens)
            output = max(1, min(int(rec["num_decode_tokens"]), plan.cb_output_cap_tokens))
            rows.append((float(rec["arrived_at"]), max(1, prompt), output))
    t0 = rows[0][0] if rows else 0.0
    return [((a - t0) * plan.cb_time_scale, p, o) for a, p, o in rows]


# ---------------------------------------------------------------------------------------------------------------
# The GPU side: torch and transformers come in here, lazily.


class MissingTransformers(RuntimeError):
    pass


def _import_stack() -> tuple[Any, Any]:
    try:
        import transformers
    except ImportError as e:
        raise MissingTransformers(
            "transformers is not installed: `pip install transformers` (not a project dependency) to time it"
        ) from e
    import torch

    return torch, transformers


def _sync(torch: Any, device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build_model(torch: Any, transformers: Any, config_json: Path, device: str, attn: str) -> tuple[Any, dict]:
    """A bf16 model of the config's shapes with transformers' own random initialisation (normal, std =
    initializer_range), built on the device; multimodal configs (Gemma 3) give their text model."""
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "config.json").write_text(config_json.read_text())
        cfg = transformers.AutoConfig.from_pretrained(d)
    text_cfg = cfg.get_text_config()
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(
            text_cfg, dtype=torch.bfloat16, attn_implementation=attn
        )
    model.eval()
    # Timing on zeros hides wrong indexing and runs faster (METHOD.md): check the weights are really random.
    w = model.get_input_embeddings().weight.detach()
    mlp_w = next(p for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n).detach()
    info = {
        "model_class": type(model).__name__,
        "config_class": type(text_cfg).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "attn_implementation": model.config._attn_implementation,
        "embedding_std": float(w.float().std()),
        "first_matrix_std": float(mlp_w.float().std()),
        "first_matrix_zero_fraction": float((mlp_w == 0).float().mean()),
    }
    # eos disabled so that every sequence generates exactly the tokens asked for.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model, info


def _timed_generate(torch: Any, model: Any, ids: Any, new_tokens: int, device: str) -> tuple[float, str]:
    """Seconds for one generate call, and the class of the KV cache it used. The output is dropped here so that
    no cache outlives its call (at batch 64 x 8k one cache is tens of GB)."""
    _sync(torch, device)
    t = time.perf_counter()
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
        return_dict_in_generate=True,
    )
    _sync(torch, device)
    elapsed = time.perf_counter() - t
    made = out.sequences.shape[1] - ids.shape[1]
    if made != new_tokens:
        raise RuntimeError(f"generate made {made} tokens, asked for {new_tokens}: eos was not disabled")
    return elapsed, type(out.past_key_values).__name__


def _sweep_order(plan: SweepPlan) -> list[tuple[int, int]]:
    """Batch 1 first (the headline), then larger batches from short to long prompts, so that a time budget
    cuts the least needed points."""
    b1 = [(1, p) for p in plan.prompt_tokens if 1 in plan.batch_sizes]
    rest = [(b, p) for p in plan.prompt_tokens for b in plan.batch_sizes if b != 1]
    return b1 + rest


def run_generate_sweep(
    torch: Any, model: Any, plan: SweepPlan, device: str, deadline: float, log: Callable[[str], None]
) -> list[GenerateRow]:
    vocab = model.config.vocab_size
    rows: list[GenerateRow] = []
    oom_at: dict[int, int] = {}  # batch size -> shortest prompt that ran out of memory
    est_s_per_token: dict[int, float] = {}  # batch size -> last decode time, to skip points past the budget
    prefill_tok_per_s: float | None = None
    n = plan.decode_tokens
    for batch, prompt in _sweep_order(plan):
        if any(b <= batch and p <= prompt for b, p in oom_at.items()):
            rows.append(GenerateRow(batch, prompt, "skipped: a smaller point ran out of memory"))
            continue
        d_est = est_s_per_token.get(batch, max(est_s_per_token.values(), default=0.0))
        p_est = batch * prompt / prefill_tok_per_s if prefill_tok_per_s else 0.0
        cost_est = (1 + 2 * plan.repeats) * p_est + plan.repeats * n * d_est
        if time.perf_counter() + cost_est > deadline:
            rows.append(GenerateRow(batch, prompt, f"skipped: time budget (estimated {cost_est:.0f} s)"))
            log(f"  b={batch} p={prompt}: skipped, estimated {cost_est:.0f} s left no room")
            continue
        g = torch.Generator(device="cpu").manual_seed(batch * 100_003 + prompt)
        ids = torch.randint(0, vocab, (batch, prompt), generator=g).to(device)
        out_of_memory = False
        try:
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            # One warm-up of the 1-token path. On the H200 (2026-12-02) the first N+1-token run at each point
            # still took 2-4x the next two (the decode path was not warmed); the median of 3 drops it.
            _, cache_class = _timed_generate(torch, model, ids, 1, device)
            ttft = [_timed_generate(torch, model, ids, 1, device)[0] for _ in range(plan.repeats)]
            full = [_timed_generate(torch, model, ids, n + 1, device)[0] for _ in range(plan.repeats)]
        except torch.OutOfMemoryError:
            out_of_memory = True
        if out_of_memory:
            # Freed only here, outside the except block, whose traceback still holds generate's tensors.
            del ids
            torch.cuda.empty_cache()
            oom_at[batch] = prompt
            rows.append(GenerateRow(batch, prompt, "oom"))
            log(f"  b={batch} p={prompt}: out of memory")
            continue
        row = generate_row(batch, prompt, n, ttft, full)
        row.cache_class = cache_class
        if device.startswith("cuda"):
            row.peak_memory_bytes = int(torch.cuda.max_memory_allocated())
        rows.append(row)
        est_s_per_token[batch] = max(row.decode_s_per_token or 0.0, 0.0)
        prefill_tok_per_s = max(prefill_tok_per_s or 0.0, batch * prompt / row.ttft_s)
        log(
            f"  b={batch} p={prompt}: TTFT {row.ttft_s * 1e3:.1f} ms, "
            f"decode {(row.decode_s_per_token or 0) * 1e3:.2f} ms/token"
        )
        del ids
    return rows


def _jsonable(x: Any) -> Any:
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    return repr(x)


def _cb_settings(manager: Any, model: Any, with_attn: bool) -> dict:
    """The manager's resolved settings (num_blocks, max_batch_tokens, block_size, CUDA graphs…) as it reports them;
    with_attn adds the model's attn_implementation, which the manager swaps for a paged one only while it runs."""
    cfg = manager.continuous_batching_config
    fields = getattr(cfg, "__dataclass_fields__", None)
    settings = {k: getattr(cfg, k) for k in fields} if fields else dict(vars(cfg))
    if with_attn:
        settings["attn_implementation_during_run"] = model.config._attn_implementation
    cache = getattr(getattr(manager, "batch_processor", None), "cache", None)
    if cache is not None:
        for k in ("num_blocks", "block_size", "max_batch_tokens", "num_groups", "use_prefix_sharing"):
            settings[f"cache.{k}"] = getattr(cache, k, None)
    return _jsonable(settings)


def _cb_config(transformers: Any, plan: SweepPlan) -> Any:
    return transformers.ContinuousBatchingConfig(
        num_blocks=plan.cb_num_blocks, max_batch_tokens=plan.cb_max_batch_tokens
    )


def _served(
    index: int, arrival: float, submitted: float, prompt: int, asked: int, out: Any, t0: float
) -> ServedRequest:
    if out is None:
        return ServedRequest(index, arrival, submitted, None, None, prompt, asked, 0, error="no result")
    stamps = [s - t0 for s in (out.timestamps or [])]
    return ServedRequest(
        index=index,
        arrival_s=arrival,
        submitted_s=submitted,
        first_token_s=stamps[0] if stamps else None,
        finish_s=stamps[-1] if stamps else None,
        prompt_tokens=prompt,
        requested_output_tokens=asked,
        output_tokens=len(out.generated_tokens),
        token_times_s=[round(s, 6) for s in stamps],
        error=None if out.error is None else str(out.error),
    )


def _random_prompts(torch: Any, model: Any, requests: list[tuple[float, int, int]]) -> list[list[int]]:
    """Token ids of each request's prompt length, the same for the replay and generate_batch (seed 7)."""
    g = torch.Generator(device="cpu").manual_seed(7)
    return [torch.randint(0, model.config.vocab_size, (p,), generator=g).tolist() for _, p, _ in requests]


def run_replay(
    torch: Any,
    transformers: Any,
    model: Any,
    plan: SweepPlan,
    requests: list[tuple[float, int, int]],
    device: str,
    deadline: float,
    log: Callable[[str], None],
) -> dict:
    """Requests submitted from a feeder thread at their (scaled) trace times to a running manager; per-token
    timestamps are the manager's own (record_timestamps, perf_counter, read when each token reaches the host)."""
    prompts = _random_prompts(torch, model, requests)
    gen_cfg = transformers.GenerationConfig(
        max_new_tokens=max(o for _, _, o in requests), do_sample=False, eos_token_id=-1, pad_token_id=0
    )
    t_init = time.perf_counter()
    manager = model.init_continuous_batching(
        generation_config=gen_cfg, continuous_batching_config=_cb_config(transformers, plan)
    )
    manager.warmup()  # as continuous_batching_context_manager does by default: CUDA graphs captured before serving
    warmup_s = time.perf_counter() - t_init
    manager.start()
    t0 = time.perf_counter()
    submitted: dict[str, tuple[int, float]] = {}

    def feed() -> None:
        for i, ((arrival, _, out_tokens), ids) in enumerate(zip(requests, prompts)):
            delay = t0 + arrival - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            rid = f"r{i}"
            submitted[rid] = (i, time.perf_counter() - t0)
            # eos_token_id=-1: the manager's own "no eos", so every request generates exactly out_tokens.
            manager.add_request(
                ids, request_id=rid, max_new_tokens=out_tokens, record_timestamps=True, eos_token_id=-1
            )

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    results: dict[str, Any] = {}
    while len(results) < len(requests) and time.perf_counter() < deadline:
        res = manager.get_result(timeout=0.5)
        if res is not None and res.is_finished():
            results[res.request_id] = res
        elif res is None and not manager.is_running():
            break
    wall_s = time.perf_counter() - t0
    settings = _cb_settings(manager, model, with_attn=True)
    manager.stop(block=True, timeout=30, hard_stop=len(results) < len(requests))
    manager.destroy()
    feeder.join(timeout=1)
    served = [
        _served(
            i,
            requests[i][0],
            submitted.get(f"r{i}", (i, float("nan")))[1],
            requests[i][1],
            requests[i][2],
            results.get(f"r{i}"),
            t0,
        )
        for i in range(len(requests))
    ]
    rows = [asdict(s) for s in served]
    log(f"  replay: {len(results)}/{len(requests)} finished in {wall_s:.1f} s (warm-up {warmup_s:.1f} s)")
    return {
        "settings": settings,
        "warmup_s": warmup_s,
        "wall_s": wall_s,
        "requests": rows,
        "summary": served_summary(rows),
    }


def run_generate_batch(
    torch: Any,
    transformers: Any,
    model: Any,
    plan: SweepPlan,
    requests: list[tuple[float, int, int]],
    new_tokens: int,
    log: Callable[[str], None],
) -> dict:
    """All prompts at once through `generate_batch` (its defaults: warm-up, workload hints); one max_new_tokens
    for every request, as that API takes. Arrival = the call's start, so TTFT includes the warm-up; the
    throughput span starts at the first request's creation, after the warm-up."""
    prompts = _random_prompts(torch, model, requests)
    gen_cfg = transformers.GenerationConfig(
        max_new_tokens=new_tokens, do_sample=False, eos_token_id=-1, pad_token_id=0
    )
    t0 = time.perf_counter()
    # persistent_manager=True only keeps the manager after the call, so that the settings generate_batch resolved
    # from its workload hints can be read back; it is destroyed right after.
    out = model.generate_batch(
        prompts,
        generation_config=gen_cfg,
        continuous_batching_config=_cb_config(transformers, plan),
        max_new_tokens=new_tokens,
        record_timestamps=True,
        persistent_manager=True,
    )
    wall_s = time.perf_counter() - t0
    manager = getattr(model, "_cached_continuous_batching_manager", None)
    # Read after the call, when stop() has already taken the paged attn_implementation away again.
    settings = (
        _cb_settings(manager, model, with_attn=False)
        if manager is not None
        else {"error": "manager not kept"}
    )
    model.destroy_cached_continuous_batching_manager()
    by_order = list(out.values())
    created = min((o.created_time for o in by_order), default=t0)
    served = [
        asdict(
            _served(
                i,
                created - t0,
                created - t0,
                len(prompts[i]),
                new_tokens,
                by_order[i] if i < len(by_order) else None,
                t0,
            )
        )
        for i in range(len(prompts))
    ]
    log(f"  generate_batch: {len(by_order)}/{len(prompts)} finished in {wall_s:.1f} s")
    return {
        "settings": settings,
        "wall_s": wall_s,
        "warmup_s": created - t0,
        "new_tokens": new_tokens,
        "requests": served,
        "summary": served_summary(served),
    }


def _gpu_header(torch: Any, device: str) -> dict:
    if not device.startswith("cuda"):
        return {"name": platform.processor() or platform.machine(), "device": device}
    info: dict[str, Any] = {"name": torch.cuda.get_device_name(), "device": device}
    try:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        info["driver"] = pynvml.nvmlSystemGetDriverVersion()
        info["memory_bytes"] = int(pynvml.nvmlDeviceGetMemoryInfo(h).total)
        info["sm_clock_max_mhz"] = pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM)
    except Exception as e:  # NVML only adds detail; the timings stand without it
        info["nvml_error"] = repr(e)
    return info


def run_model(
    model: str,
    plan: SweepPlan,
    args: argparse.Namespace,
    out_dir: Path,
    deadline: float,
    log: Callable[[str], None],
) -> dict:
    torch, transformers = _import_stack()
    config_json = config_json_path(model)
    name = model_label(model)
    t_build = time.perf_counter()
    m, info = build_model(torch, transformers, config_json, args.device, args.attn)
    log(
        f"{name}: built {info['model_class']} ({info['parameters'] / 1e9:.2f}B) in {time.perf_counter() - t_build:.1f} s"
    )
    gpu = _gpu_header(torch, args.device)
    header = {
        "model": name,
        "config": str(config_json.relative_to(REPO_ROOT))
        if config_json.is_relative_to(REPO_ROOT)
        else str(config_json),
        "gpu": gpu,
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m calibrate.transformers_runs " + shlex.join(sys.argv[1:]),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "transformers": transformers.__version__,
        },
        "model_info": info,
        "settings": {
            **asdict(plan),
            "dtype": "bfloat16",
            "attn_implementation": info["attn_implementation"],
            "weights": "random (transformers' own init, torch.manual_seed(0))",
            "generate_cache_implementation": m.generation_config.cache_implementation,
            "generate_kwargs": "do_sample=False, min_new_tokens=max_new_tokens, eos_token_id=None, pad_token_id=0",
            "timer": "host perf_counter with torch.cuda.synchronize() before and after each generate call",
            "trace": str(CONVERSATION_TRACE.relative_to(REPO_ROOT)),
        },
    }
    result: dict[str, Any] = {"header": header}
    path = out_dir / f"transformers_{name}_{args.gpu_tag}.json"

    def save() -> None:
        path.write_text(json.dumps(result, indent=1))

    phases = set(args.phases.split(","))
    reserve = args.cb_reserve_s if phases & {"replay", "batch"} else 0.0
    if "generate" in phases:
        result["generate"] = [
            asdict(r) for r in run_generate_sweep(torch, m, plan, args.device, deadline - reserve, log)
        ]
        save()
    requests = trace_requests(args.trace, plan.cb_requests, plan) if phases & {"replay", "batch"} else []
    if "replay" in phases:
        result["replay"] = run_replay(torch, transformers, m, plan, requests, args.device, deadline, log)
        save()
    # generate_batch is one blocking call: start it only if the replay's pace says it ends before the deadline.
    batch_est_s = 20.0
    if result.get("replay"):
        tps = result["replay"]["summary"]["output_tokens_per_s"] or 1.0
        batch_est_s = result["replay"]["warmup_s"] + len(requests) * plan.cb_batch_new_tokens / tps
    if "batch" in phases and time.perf_counter() + batch_est_s > deadline:
        log(f"  generate_batch: skipped, estimated {batch_est_s:.0f} s left no room")
    elif "batch" in phases:
        result["generate_batch"] = run_generate_batch(
            torch, transformers, m, plan, requests, plan.cb_batch_new_tokens, log
        )
        save()
    del m
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    log(f"{name}: wrote {path}")
    return result


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m calibrate.transformers_runs",
        description="Time transformers' generate and continuous batching on catalogue models (random weights); "
        "write raw JSON per model and print a Markdown summary.",
    )
    p.add_argument(
        "--out", type=Path, help="folder for transformers_<model>_<gpu>.json (required to measure)"
    )
    p.add_argument(
        "--summarize",
        type=Path,
        metavar="DIR",
        help="no device: print the summary of the transformers_*.json in DIR",
    )
    p.add_argument("--quick", action="store_true", help="a tiny sweep (CPU smoke test)")
    p.add_argument(
        "--models", nargs="+", default=list(DEFAULT_MODELS), help="catalogue names or config.json paths"
    )
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--attn", default="sdpa", help="attn_implementation for generate (default sdpa)")
    p.add_argument("--phases", default="generate,replay,batch", help="any of generate,replay,batch")
    p.add_argument(
        "--trace",
        type=Path,
        default=CONVERSATION_TRACE,
        help="CSV: arrived_at, num_prefill_tokens, num_decode_tokens",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=540.0,
        help="stop starting work after this many seconds in all (default: inside a 10-minute device call)",
    )
    p.add_argument(
        "--cb-reserve-s",
        type=float,
        default=0.0,
        help="time per model kept back from the generate sweep for continuous batching",
    )
    p.add_argument("--gpu-tag", default="h200", help="file name suffix naming the GPU")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.summarize is not None:
        files = sorted(args.summarize.glob("transformers_*.json"))
        if not files:
            print(f"calibrate.transformers_runs: no transformers_*.json in {args.summarize}", file=sys.stderr)
            return 2
        print(markdown_summary([json.loads(f.read_text()) for f in files]))
        return 0
    if args.out is None:
        parser.error("--out DIR is required to measure (or --summarize DIR)")
    try:
        _import_stack()
        for m in args.models:
            config_json_path(m)
    except (MissingTransformers, ValueError) as e:
        print(f"calibrate.transformers_runs: {e}", file=sys.stderr)
        return 2
    plan = SweepPlan.quick() if args.quick else SweepPlan.full()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {msg}", flush=True)

    results = []
    for i, m in enumerate(args.models):
        # Each model gets an even share of what is left, so a slow first model cannot starve the rest.
        left = args.budget_s - (time.perf_counter() - start)
        deadline = time.perf_counter() + left / (len(args.models) - i)
        results.append(run_model(m, plan, args, args.out, deadline, log))
    summary = markdown_summary(results)
    (args.out / "summary.md").write_text(summary + "\n")
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
