"""Multi-GPU runs of the engine beside the simulator's forecast: interconnect calibration, a tensor-parallel
row and a disaggregated 1 prefill + 1 decode row, in one command on a host with 2 GPUs.

    NCCL_NVLS_ENABLE=0 torchrun --nproc_per_node=2 benchmarks/multi_gpu.py --profile h200 --out $OUT/multi_gpu
    python benchmarks/multi_gpu.py --device cpu --out /tmp/multi_gpu     # tiny model, 2 gloo processes

1. Interconnect: `calibrate.interconnect` (all-reduce, all-gather, all-to-all, send/recv over sizes, fitted
   latency + bytes / bandwidth) writes `<out>/profiles/<profile>-measured.yaml`; the forecasts below use it.
2. TP row: `--tp-model` (default qwen2.5-32b, bf16) split over the 2 ranks (engine/parallel.py); rank 0
   runs the serving loop with the simulator's scheduler, rank 1 follows its steps; the same requests are
   forecast with hardware.gpus_per_replica: 2 on the measured profile.
3. Disaggregated row: `--pd-model` (default llama-3.1-8b) prefilled on rank 0, decoded on rank 1, the
   prompt's KV sent over NCCL (engine/disaggregated.py); forecast with disaggregation prefill 1 + decode 1,
   the link the measured send fit. Each transfer is written beside the link model's time for its bytes.

The workload is the fidelity benchmark's conversation trace (CPU: its toy lengths) at `--rate` requests/s
for `--duration` seconds; both sides get the same requests and KV blocks (gpu_memory_utilization --util).
Rank 0 writes `<out>/multi_gpu.md` (TTFT, TPOT, end-to-end p50/p90, throughput: engine, simulator, error)
and per row the requests CSVs; the bar is the fidelity table's (latency within 10%, throughput 5%).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import _checkout  # noqa: F401  (first: the checkout's root on sys.path)

os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # NVLink multicast off, as the lent machines' notes require

import numpy as np  # noqa: E402
import torch  # noqa: E402
from fidelity import BAR_LATENCY, BAR_THROUGHPUT, CPU_LENGTHS, TINY_CONFIG, cpu_setup, error  # noqa: E402

from calibrate import interconnect  # noqa: E402
from core.hardware import load_profile  # noqa: E402
from core.kv_cache import BlockPool  # noqa: E402
from core.model_spec import load_model, spec_from_config  # noqa: E402
from simulator.memory import plan_memory  # noqa: E402
from simulator.scenario import parse_scenario  # noqa: E402
from simulator.simulation import simulate  # noqa: E402
from simulator.workload import generate  # noqa: E402

QUANTILES = (50, 90)


def scenario(model: str, profile: str, args, tp: int = 1, link: dict | None = None):
    """The row's scenario: one TP group of `tp` GPUs, or with `link` a 1 + 1 disaggregated deployment."""
    cpu = args.device == "cpu"
    batching = {"max_num_seqs": 16 if cpu else 256, "max_num_batched_tokens": 256 if cpu else 8192}
    serving = {"batching": batching, "memory": {"block_size": 16, "gpu_memory_utilization": args.util},
               "precision": {"weight_dtype": "bf16"}}  # fmt: skip
    if cpu:
        p, o = CPU_LENGTHS["conversation"]
        workload = {"prompt_tokens": p, "output_tokens": o}
    else:
        workload = {
            "trace": "conversation",
            "prompt_tokens": {"dist": "trace"},
            "output_tokens": {"dist": "trace"},
        }
    workload |= {"arrival": {"process": "poisson" if cpu else "trace", "rate_per_s": args.rate},
                 "duration_s": args.duration}  # fmt: skip
    data = {"name": f"{'pd' if link else f'tp{tp}'}-{Path(model).stem}", "seed": 0, "model": model,
            "hardware": {"gpu": profile, "gpus_per_replica": tp}, "serving": serving, "workload": workload, "slo": {}}  # fmt: skip
    if link:
        data["disaggregation"] = {"prefill": {"gpu": profile, "count": 1}, "decode": {"gpu": profile, "count": 1},
                                  "link": link}  # fmt: skip
    return parse_scenario(data, data["name"])


def latency_figures(table, wall_s: float) -> dict[str, float]:
    """TTFT, TPOT and end-to-end percentiles and throughput from a request table (engine and simulator alike)."""
    arr, first, fin = (
        np.asarray(x, dtype=float) for x in (table.arrival_s, table.first_token_s, table.finish_s)
    )
    out_tok = np.asarray(table.output_tokens, dtype=float)
    ok = np.isfinite(fin)
    tpot = (fin - first)[ok & (out_tok > 1)] / (out_tok[ok & (out_tok > 1)] - 1)
    out = {"finished": int(ok.sum()), "requests_per_s": ok.sum() / wall_s if wall_s > 0 else float("nan")}
    for name, v in (("ttft", (first - arr)[ok]), ("tpot", tpot), ("e2e", (fin - arr)[ok])):
        for q in QUANTILES:
            out[f"{name}_p{q}"] = float(np.percentile(v, q)) if len(v) else float("nan")
    return out


def write_requests(path: Path, table) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["request", "arrival_s", "prompt_tokens", "output_tokens", "first_token_s", "finish_s"])
        for i in range(len(table.arrival_s)):
            w.writerow([i, table.arrival_s[i], int(table.prompt_tokens[i]), int(table.output_tokens[i]),
                        table.first_token_s[i], table.finish_s[i]])  # fmt: skip


def _engine_model(spec, args, d, tp: int):
    from engine.model import build_model
    from engine.parallel import build_tp_model

    dtype = "fp32" if d.device == "cpu" else "bf16"
    if tp > 1:
        return build_tp_model(spec, tp, d.rank, dtype=dtype, device=d.device, max_position=32768)
    return build_model(spec, dtype=dtype, device=d.device, max_position=32768)


def _pool(sc, spec, profile, reqs, tp: int):
    from engine.serving import physical_tokens

    mem = plan_memory(profile, spec, sc.serving, tp=tp)
    b = sc.serving.batching
    return mem, physical_tokens(mem.num_blocks, sc.serving.memory.block_size, reqs, b.max_num_seqs)


def tp_row(d, args, model: str, spec, profile_path: str) -> dict | None:
    """The TP=world row: rank 0 leads the serving loop, the others follow; rank 0 returns the record."""
    from engine.distributed import Channel, LeaderExecutor, follow
    from engine.serving import Executor, serve

    tp = d.world
    sc = scenario(model, profile_path, args, tp=tp)
    reqs = generate(sc.workload, sc.seed)
    profile = load_profile(profile_path)
    mem, tokens = _pool(sc, spec, profile, reqs, tp)
    b = sc.serving.batching
    m = _engine_model(spec, args, d, tp)
    kw = {"device": d.device, "cuda_graphs": not args.eager and d.device != "cpu", "max_context": 32768}
    channel = Channel(0, d.control)
    if d.rank:
        ex = Executor(m, tokens, b.max_num_seqs, **kw)
        ex.warmup(max_prompt=b.max_num_batched_tokens)
        follow(ex, channel)
        return None
    ex = LeaderExecutor(m, tokens, b.max_num_seqs, channel, **kw)
    ex.warmup(print, max_prompt=b.max_num_batched_tokens)
    pool = BlockPool(mem.num_blocks, sc.serving.memory.block_size)
    run = serve(ex, reqs, pool, b.max_num_seqs, b.max_num_batched_tokens, True, log=print,
                deadline_s=args.duration * 1.5 + 20)  # fmt: skip
    ex.stop()
    fc = simulate(sc, requests=reqs)
    return _record(sc.name, run.table, run.wall_s, fc, args, {"kv_blocks": mem.num_blocks, "tp": tp})


def pd_row(d, args, model: str, spec, profile_path: str, fits: dict) -> dict | None:
    """The 1 + 1 disaggregated row: rank 0 prefills, rank 1 decodes; rank 1 returns the record."""
    from engine.disaggregated import PrefillExecutor, decode_loop, run_prefill
    from engine.serving import Executor

    send = fits["send"]
    link = {"bandwidth_gbps": send["bandwidth_gbps"], "latency_s": send["latency_us"] * 1e-6, "per": "pool"}
    sc = scenario(model, profile_path, args, link=link)
    reqs = generate(sc.workload, sc.seed)
    profile = load_profile(profile_path)
    mem, tokens = _pool(sc, spec, profile, reqs, 1)
    b = sc.serving.batching
    m = _engine_model(spec, args, d, 1)
    kw = {"device": d.device, "cuda_graphs": not args.eager and d.device != "cpu", "max_context": 32768}
    pool = BlockPool(mem.num_blocks, sc.serving.memory.block_size)
    data = None  # the KV goes over the default group: NCCL between GPUs, gloo on the CPU
    if d.rank == 0:
        ex = PrefillExecutor(m, tokens, b.max_num_seqs, peer=1, control=d.control, data=data, **kw)
        ex.warmup(max_prompt=b.max_num_batched_tokens)
        run_prefill(ex, reqs, pool, b.max_num_seqs, b.max_num_batched_tokens, barrier_group=d.control)
        return None
    ex = Executor(m, tokens, b.max_num_seqs, **kw)
    ex.warmup(print, max_prompt=b.max_num_batched_tokens)
    out = decode_loop(ex, reqs, pool, b.max_num_seqs, b.max_num_batched_tokens, peer=0, control=d.control,
                      data=data, barrier_group=d.control)  # fmt: skip
    fc = simulate(sc, requests=reqs)
    xfer = [
        {"rid": t.rid, "bytes": t.nbytes, "sent_s": t.sent_s, "seen_s": t.seen_s, "landed_s": t.landed_s,
         "wire_s": t.wire_s, "link_model_s": send["latency_us"] * 1e-6 + t.nbytes / (send["bandwidth_gbps"] * 1e9)}
        for t in out.transfers
    ]  # fmt: skip
    rec = _record(sc.name, out.run.table, out.run.wall_s, fc, args, {"kv_blocks": mem.num_blocks})
    wire = np.array([x["wire_s"] for x in xfer])
    model_s = np.array([x["link_model_s"] for x in xfer])
    rec["transfers"] = {"count": len(xfer), "bytes": int(sum(x["bytes"] for x in xfer)),
                        "median_wire_over_link_model": float(np.median(wire / model_s)) if len(xfer) else None}  # fmt: skip
    row_dir = Path(args.out) / sc.name
    with (row_dir / "transfers.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(xfer[0]) if xfer else ["rid"])
        w.writeheader()
        w.writerows(xfer)
    return rec


def _record(name: str, table, wall_s: float, fc, args, extra: dict) -> dict:
    row_dir = Path(args.out) / name
    row_dir.mkdir(parents=True, exist_ok=True)
    write_requests(row_dir / "engine_requests.csv", table)
    write_requests(row_dir / "simulator_requests.csv", fc.table)
    sim_wall = float(np.nanmax(fc.table.finish_s)) if np.isfinite(fc.table.finish_s).any() else float("nan")
    eng_wall = float(np.nanmax(table.finish_s)) if np.isfinite(table.finish_s).any() else wall_s
    rec = {"row": name, "requests": len(table.arrival_s), **extra, "engine": latency_figures(table, eng_wall),
           "simulator": latency_figures(fc.table, sim_wall)}  # fmt: skip
    (row_dir / "row.json").write_text(json.dumps(rec, indent=1))
    return rec


def markdown(records: list[dict], fits: dict, command: str) -> str:
    lines = [f"# Multi-GPU rows: engine vs simulator\n\n`{command}`\n", "## Interconnect (measured fit)\n",
             "| collective | latency µs | bandwidth GB/s | held-out median error |", "|---|---|---|---|"]  # fmt: skip
    for k, v in fits.items():
        lines.append(
            f"| {k} | {v['latency_us']:.1f} | {v['bandwidth_gbps']:.2f} | {v['holdout_median_pct']}% |"
        )
    lines += ["", "## Rows (error = simulator / engine − 1; bar: latency 10%, throughput 5%)\n",
              "| row | metric | engine | simulator | error | within bar |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in records:
        for k, eng in r["engine"].items():
            if k == "finished":
                continue
            sim, err = r["simulator"][k], error(r["simulator"][k], eng)
            bar = BAR_THROUGHPUT if k == "requests_per_s" else BAR_LATENCY
            ok = "yes" if abs(err) <= bar else "no"
            lines.append(f"| {r['row']} | {k} | {eng:.4g} | {sim:.4g} | {err:+.1%} | {ok} |")
        if "transfers" in r:
            t = r["transfers"]
            lines.append(f"\n{r['row']}: {t['count']} KV transfers, {t['bytes'] / 1e6:.1f} MB; median measured wire "
                         f"time / link model {t['median_wire_over_link_model']:.2f}")  # fmt: skip
    return "\n".join(lines) + "\n"


def run(rank: int, world: int, init_method: str | None, args) -> dict | None:
    """Every rank: calibrate the interconnect, then the TP row, then the disaggregated row."""
    from engine import distributed

    d = distributed.init(args.backend, rank, world, init_method)
    if d.device == "cpu":
        torch.set_num_threads(1)
    out = Path(args.out)
    ic_args = argparse.Namespace(profile=args.profile, name=f"{Path(args.profile).stem}-measured",
                                 out_dir=str(out / "profiles"), backend=args.backend, warmup=3, repeat=args.repeat)  # fmt: skip
    ic = interconnect.run(d.rank, d.world, None, ic_args)
    box = [ic.get("fits"), ic.get("path")]
    torch.distributed.broadcast_object_list(box, src=0, group=d.control)
    fits, profile_path = box
    records = []
    tp_model = (
        spec_from_config(TINY_CONFIG, name="tiny") if args.device == "cpu" else load_model(args.tp_model)
    )
    pd_model = (
        spec_from_config(TINY_CONFIG, name="tiny") if args.device == "cpu" else load_model(args.pd_model)
    )
    rec = tp_row(d, args, args.tp_model, tp_model, profile_path)
    records.append(rec)
    if d.world == 2:
        records.append(pd_row(d, args, args.pd_model, pd_model, profile_path, fits))
    gathered = [None] * d.world
    torch.distributed.all_gather_object(gathered, [r for r in records if r is not None], group=d.control)
    if d.rank == 0:
        records = [r for part in gathered for r in part]
        text = markdown(records, fits, args.command)
        (out / "multi_gpu.md").write_text(text)
        print(text)
    return records


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--profile", default="h200", help="the GPU's profile (the interconnect fit is added to a copy)"
    )
    p.add_argument(
        "--out", default=os.environ.get("OUT", "benchmarks/results/multi_gpu"), help="output folder"
    )
    p.add_argument(
        "--device", default="cuda", help="cuda (under torchrun) or cpu (2 gloo processes, tiny model)"
    )
    p.add_argument("--tp-model", default="qwen2.5-32b")
    p.add_argument("--pd-model", default="llama-3.1-8b")
    p.add_argument(
        "--rate", type=float, default=None, help="requests/s (default: 2 on the GPU, 10 on the CPU)"
    )
    p.add_argument(
        "--duration", type=float, default=None, help="seconds of arrivals (default: 60 GPU, 1 CPU)"
    )
    p.add_argument("--util", type=float, default=0.5, help="gpu_memory_utilization of both sides")
    p.add_argument("--repeat", type=int, default=10, help="timings per collective and size")
    p.add_argument("--eager", action="store_true", help="no CUDA graphs (if NCCL capture fails)")
    args = p.parse_args(argv)
    cpu = args.device == "cpu"
    args.rate = args.rate or (10.0 if cpu else 2.0)
    args.duration = args.duration or (1.0 if cpu else 60.0)
    args.backend = "gloo" if cpu else "nccl"
    args.command = " ".join(["benchmarks/multi_gpu.py", *(sys.argv[1:] if argv is None else argv)])
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if cpu:
        from engine.distributed import spawn_local

        cfg, args.profile = cpu_setup(Path(args.out))  # a toy config and a CPU profile of its step times
        args.tp_model = args.pd_model = cfg
        spawn_local(run, 2, args)
        return 0
    run(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), None, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
