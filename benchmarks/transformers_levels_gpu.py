"""What transformers' manager waits on in its slow steps: one GPU run that decides it (issue 11).

    python benchmarks/transformers_levels_gpu.py --out $OUT/levels          # H200, about 3 minutes
    python benchmarks/transformers_levels_gpu.py --out /tmp/lv --device cpu --models tests/tiny.json --quick

benchmarks/results/transformers_residuals.md shows the manager's small decode steps at three levels (about 28, 66
and 104 ms on the H200 for Llama-3.1-8B and Qwen2.5-7B alike) for seconds at a time, with the Python scheduling
around the forward at one speed, and the runs differing by the share of time at the slow level. This run puts
Llama and Qwen in one process and alternates them (model A, B, A, B): per model a batch-1 `generate` (the fast
level's reference), then the manager with one request decoding, then four at once. Each manager step records,
besides the StepRecorder fields (calibrate/transformers_runs.py):

- `forward_cpu_s`: the manager thread's CPU time during the forward (time.thread_time);
- `forward_runq_s`: the thread's time runnable but not running (/proc/self/task/<tid>/schedstat): a busy host;
- `sync_s`: time in the forward blocked on the device (Stream/Event/device synchronize, tolist/item/cpu);
- `sm_mhz`, `mem_mhz`, `gpu_util`, `power_w`, `clock_reasons`: NVML at the forward's end (pynvml);
- `gc_collections`, `alloc_retries`, `device_allocs`: collections and caching-allocator events in the step.

What it decides: slow steps whose extra time is `sync_s` at low `sm_mhz` are the GPU's clocks (power
management of a mostly idle GPU); extra time in `forward_cpu_s` without sync is host work inside the forward;
extra time in `forward_runq_s`, or in none of these (the thread blocked elsewhere: the GIL, a lock), is the host
machine. Whether the slow-level share follows the model (Qwen's runs spent 74% of small steps slow, Llama's
14-37%) or the time in the process (the alternation) says if a model term or a session term is the right one.
Writes levels.json (every step) and levels.md (the tables) under --out, after every segment.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import _checkout  # noqa: F401  (first: the checkout's root on sys.path)

from calibrate import transformers_runs as tr  # noqa: E402  (imports neither torch nor transformers)

MODELS = ("llama-3.1-8b", "qwen2.5-7b")
LEVEL_EDGES_MS = (45.0, 85.0)  # benchmarks/transformers_residuals.py: the H200 runs' empty bins
SMALL_BATCH = 4
WORST_STEP_S = 0.13  # the slow level's step, for the budget's estimates


@dataclass(frozen=True, slots=True)
class Plan:
    prompt_tokens: int = 400
    generate_tokens: int = 48
    decode_tokens: int = 180  # the manager's one request
    batch: int = 4
    batch_tokens: int = 90  # each of the batch's requests
    rounds: int = 2  # model A, B, A, B
    # the manager's own defaults (cache from 90% of free memory, 8,192 tokens a step), as in the replays: a level
    # that depends on the cache's size must not be hidden by a small one
    num_blocks: int | None = None
    max_batch_tokens: int | None = None

    @staticmethod
    def quick() -> Plan:
        return Plan(prompt_tokens=40, generate_tokens=6, decode_tokens=12, batch_tokens=8, rounds=2,
                    num_blocks=32, max_batch_tokens=256)  # fmt: skip

    def segment_s(self) -> float:
        """Worst-case seconds of one model's three segments (every step at the slow level)."""
        return 2 * self.generate_tokens * 0.04 + (self.decode_tokens + self.batch_tokens) * WORST_STEP_S + 8.0


# ---------------------------------------------------------------------------------------------- per-step probes
class SyncClock:
    """Wall time the current thread spends in calls that wait for the device, while `on` (thread-local)."""

    PATCHED = (
        ("cuda.Stream", "synchronize"),
        ("cuda.Event", "synchronize"),
        ("cuda", "synchronize"),
        ("Tensor", "tolist"),
        ("Tensor", "item"),
        ("Tensor", "cpu"),
    )

    def __init__(self, torch: Any) -> None:
        self.torch = torch
        self.local = threading.local()
        self.saved: list[tuple[Any, str, Any]] = []

    def install(self) -> None:
        for path, name in self.PATCHED:
            owner = self.torch
            for part in path.split("."):
                owner = getattr(owner, part)
            original = getattr(owner, name)
            self.saved.append((owner, name, original))
            setattr(owner, name, self._timed(original))

    def remove(self) -> None:
        for owner, name, original in reversed(self.saved):
            setattr(owner, name, original)
        self.saved.clear()

    def _timed(self, fn: Any) -> Any:
        local = self.local

        def wrapper(*a: Any, **k: Any) -> Any:
            if not getattr(local, "on", False) or getattr(local, "inside", False):
                return fn(*a, **k)
            local.inside = True
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                local.acc += time.perf_counter() - t
                local.inside = False

        return wrapper

    def start(self) -> None:
        self.local.on, self.local.acc, self.local.inside = True, 0.0, False

    def stop(self) -> float:
        self.local.on = False
        return float(getattr(self.local, "acc", 0.0))


def schedstat() -> tuple[float, float] | None:
    """(seconds on a CPU, seconds runnable but waiting) of the calling thread, or None where /proc lacks it."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as f:
            run, wait, _ = f.read().split()
        return int(run) / 1e9, int(wait) / 1e9
    except (OSError, ValueError):
        return None


class Nvml:
    """SM and memory clocks, utilisation, power and clock-event reasons of the device, or {} without NVML."""

    def __init__(self, torch: Any, device: str) -> None:
        self.h = None
        if not device.startswith("cuda"):
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nv = pynvml
            self.h = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        except Exception:  # NVML only adds detail
            self.h = None

    def read(self) -> dict:
        if self.h is None:
            return {}
        nv, h, out = self.nv, self.h, {}
        for key, call in (
            ("sm_mhz", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)),
            ("mem_mhz", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM)),
            ("gpu_util", lambda: nv.nvmlDeviceGetUtilizationRates(h).gpu),
            ("power_w", lambda: nv.nvmlDeviceGetPowerUsage(h) / 1000),
            ("clock_reasons", lambda: int(nv.nvmlDeviceGetCurrentClocksThrottleReasons(h))),
        ):
            try:
                out[key] = call()
            except Exception:
                out[key] = None
        return out


class LevelProbe(tr.StepRecorder):
    """StepRecorder plus, per step, the forward's CPU time, run-queue wait, device waits, NVML and allocator."""

    def __init__(self, torch: Any, device: str, sync: SyncClock, nvml: Nvml) -> None:
        super().__init__()
        self.torch, self.cuda, self.sync, self.nvml = torch, device.startswith("cuda"), sync, nvml
        self.gc_count = 0

    def _alloc(self) -> tuple[int, int]:
        if not self.cuda:
            return 0, 0
        s = self.torch.cuda.memory_stats()
        return int(s.get("num_alloc_retries", 0)), int(s.get("num_device_alloc", 0))

    def attach(self, manager: Any) -> str | None:
        why = super().attach(manager)
        if why is not None:
            return why
        recorded = manager._generation_step  # the recorder's timed step

        def probed_step() -> None:
            sched0, cpu0, alloc0, gc0 = schedstat(), time.thread_time(), self._alloc(), self.gc_count
            self.sync.start()
            try:
                recorded()
            finally:
                sync_s = self.sync.stop()
            cpu, sched1, alloc1 = time.thread_time() - cpu0, schedstat(), self._alloc()
            rec = self._pending if self._pending is not None else {}
            rec.update(
                forward_cpu_s=round(cpu, 6),
                forward_runq_s=None if not (sched0 and sched1) else round(sched1[1] - sched0[1], 6),
                sync_s=round(sync_s, 6),
                gc_collections=self.gc_count - gc0,
                alloc_retries=alloc1[0] - alloc0[0],
                device_allocs=alloc1[1] - alloc0[1],
                **self.nvml.read(),
            )

        manager._generation_step = probed_step
        return None

    def on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self.gc_count += 1


# ---------------------------------------------------------------------------------------------- segments
def generate_segment(torch: Any, model: Any, device: str, plan: Plan) -> dict:
    """Batch-1 generate with a stamp per token (a streamer's put): the forward without the manager."""
    from transformers.generation.streamers import BaseStreamer

    class Stamps(BaseStreamer):
        def __init__(self) -> None:
            self.t: list[float] = []

        def put(self, value: Any) -> None:
            self.t.append(time.perf_counter())

        def end(self) -> None:
            pass

    g = torch.Generator(device="cpu").manual_seed(11)
    ids = torch.randint(0, model.config.vocab_size, (1, plan.prompt_tokens), generator=g).to(device)
    n = plan.generate_tokens
    kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)  # warm-up at the timed length
    s = Stamps()
    model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=s, **kw)
    gaps = [b - a for a, b in zip(s.t[1:], s.t[2:])]  # put 0 is the prompt, put 1 the first token
    return {"kind": "generate", "token_gaps_s": [round(x, 6) for x in gaps]}


def manager_segment(
    torch: Any,
    model: Any,
    device: str,
    plan: Plan,
    transformers: Any,
    batch: int,
    tokens: int,
    probe_args: tuple,
) -> dict:
    """`batch` requests of `tokens` new tokens added at once to a fresh manager, every step probed."""
    cfg = transformers.ContinuousBatchingConfig(
        num_blocks=plan.num_blocks, max_batch_tokens=plan.max_batch_tokens
    )
    gen_cfg = transformers.GenerationConfig(
        max_new_tokens=tokens, do_sample=False, eos_token_id=-1, pad_token_id=0
    )
    manager = model.init_continuous_batching(generation_config=gen_cfg, continuous_batching_config=cfg)
    probe = LevelProbe(torch, device, *probe_args)
    why = probe.attach(manager)
    gc.callbacks.append(probe.on_gc)
    manager.start()
    prompts = tr._random_prompts(torch, model.config.vocab_size, [plan.prompt_tokens] * (batch + 1), 21)
    try:
        manager.add_request(
            prompts[0], request_id="w", max_new_tokens=4, eos_token_id=-1
        )  # warm the paged path
        _wait(manager, {"w"}, time.perf_counter() + 60)
        t0 = time.perf_counter()
        for i, ids in enumerate(prompts[1:]):
            manager.add_request(ids, request_id=f"r{i}", max_new_tokens=tokens, eos_token_id=-1)
        done = _wait(manager, {f"r{i}" for i in range(batch)}, t0 + tokens * batch * WORST_STEP_S + 30)
    finally:
        gc.callbacks.remove(probe.on_gc)
        manager.stop(block=True, timeout=30)
        steps = probe.records(t0)
        probe.detach(manager)
        manager.destroy()
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()  # the next manager sizes its cache from the free memory
    return {"kind": f"manager b{batch}", "finished": done, "steps_source": why or "probed", "steps": steps}


def _wait(manager: Any, ids: set[str], stop_at: float) -> int:
    got: set[str] = set()
    while got != ids and time.perf_counter() < stop_at:
        res = manager.get_result(timeout=0.5)
        if res is not None and res.is_finished() and res.request_id in ids:
            got.add(res.request_id)
        elif res is None and not manager.is_running():
            break
    return len(got)


# ---------------------------------------------------------------------------------------------- the tables
def level(ms: float) -> int:
    return int(ms >= LEVEL_EDGES_MS[0]) + int(ms >= LEVEL_EDGES_MS[1])


def _med(xs: list, scale: float = 1e3) -> str:
    xs = [x for x in xs if x is not None]
    return "—" if not xs else f"{statistics.median(xs) * scale:.1f}"


def _small_decode(step: dict, seg: dict) -> bool:
    """A decode-only step of 1..SMALL_BATCH sequences; where the batch could not be read (another transformers'
    objects), every step but the segment's first (its prompts) of a segment of at most SMALL_BATCH requests."""
    if "n_decode" in step:
        return step["prefill_tokens"] == 0 and 1 <= step["n_decode"] <= SMALL_BATCH
    return step is not seg["steps"][0] and int(seg["kind"].split("b")[-1]) <= SMALL_BATCH


def summary(data: dict) -> str:
    lines = [
        "# transformers' manager: what its slow steps wait on",
        "",
        f"`{data['header']['command']}` on {data['header']['gpu'].get('name')}. Decode-only manager steps of 1-"
        f"{SMALL_BATCH} sequences by forward level (cut at {LEVEL_EDGES_MS[0]:.0f} / {LEVEL_EDGES_MS[1]:.0f} ms); "
        "medians; forward, device waits (sync), thread CPU time and run-queue wait in ms.",
        "",
        "| # | model | segment | level | steps | forward | sync | CPU | run-queue | SM MHz | mem MHz | util % | gc | "
        "alloc retries |",
        "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    names = ("fast", "mid", "slow")
    for k, seg in enumerate(data["segments"]):
        if seg["kind"] == "generate":
            g = seg["token_gaps_s"]
            lines.append(
                f"| {k} | {seg['model']} | generate b1 | per token | {len(g)} | {_med(g)} | | | | | | | | |"
            )
            continue
        small = [s for s in seg["steps"] if _small_decode(s, seg)]
        for lv in range(3):
            sel = [s for s in small if level((s["forward_end_s"] - s["forward_start_s"]) * 1e3) == lv]
            if not sel:
                continue

            def col(key: str, scale: float = 1e3, sel: list = sel) -> str:
                return _med([s.get(key) for s in sel], scale)

            fwd = [s["forward_end_s"] - s["forward_start_s"] for s in sel]
            lines.append(
                f"| {k} | {seg['model']} | {seg['kind']} | {names[lv]} | {len(sel)} | {_med(fwd)} | {col('sync_s')} | "
                f"{col('forward_cpu_s')} | {col('forward_runq_s')} | {col('sm_mhz', 1)} | {col('mem_mhz', 1)} | "
                f"{col('gpu_util', 1)} | {sum(s.get('gc_collections', 0) for s in sel)} | "
                f"{sum(s.get('alloc_retries', 0) for s in sel)} |"
            )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- main
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument(
        "--models", default=",".join(MODELS), help="catalogue names or config.json paths, comma-separated"
    )
    p.add_argument("--device", default="cuda")
    p.add_argument("--budget-s", type=float, default=230.0, help="start no segment that could end past this")
    p.add_argument("--quick", action="store_true", help="a few tokens per segment (the CPU test)")
    return p


def main(argv: list[str] | None = None) -> int:
    t_start = time.perf_counter()
    args = _parser().parse_args(argv)
    plan = Plan.quick() if args.quick else Plan()
    try:
        torch, transformers = tr._import_stack()
        tr.check_api(transformers)
    except (tr.MissingTransformers, tr.IncompatibleTransformers) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    models = {}
    for name in names:
        path = Path(name) if name.endswith(".json") else tr.config_json_path(name)
        models[name], _ = tr.build_model(torch, transformers, path, args.device, "sdpa")
    sync, nvml = SyncClock(torch), Nvml(torch, args.device)
    data = {
        "header": {
            "command": "python benchmarks/transformers_levels_gpu.py "
            + " ".join(sys.argv[1:] if argv is None else argv),
            "gpu": tr._gpu_header(torch, args.device),
            "versions": {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "python": sys.version.split()[0],
            },  # fmt: skip
            "plan": asdict(plan),
            "cpus": os.cpu_count(),
            "switch_interval_s": sys.getswitchinterval(),
        },
        "segments": [],
    }
    sync.install()
    try:
        for rnd in range(plan.rounds):
            for name, model in models.items():
                if time.perf_counter() - t_start + plan.segment_s() > args.budget_s:
                    data["header"]["stopped"] = f"budget: round {rnd}, {name} not run"
                    break
                probes = (sync, nvml)
                for fn, more in (
                    (generate_segment, ()),
                    (manager_segment, (transformers, 1, plan.decode_tokens, probes)),
                    (manager_segment, (transformers, plan.batch, plan.batch_tokens, probes)),
                ):
                    t = time.perf_counter() - t_start
                    block = fn(torch, model, args.device, plan, *more)
                    block.update(model=name, round=rnd, started_s=round(t, 3))
                    data["segments"].append(block)
                    (out / "levels.json").write_text(json.dumps(data, indent=1) + "\n")
                    print(
                        f"[{time.perf_counter() - t_start:6.1f} s] {name} round {rnd}: {block['kind']}",
                        flush=True,
                    )
    finally:
        sync.remove()
    text = summary(data)
    (out / "levels.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
