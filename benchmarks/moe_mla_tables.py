"""Tables from a raw run of benchmarks/moe_mla_gpu.py: the MoE/MLA bars and the Mixtral / DeepSeek fidelity rows.

    cp <the run's $OUT files>/* benchmarks/results/moe_mla/h200/          # moe_mla_raw.json and the row CSVs
    python benchmarks/moe_mla_tables.py                                   # benchmarks/results/moe_mla/h200
    python benchmarks/moe_mla_tables.py --raw DIR --results benchmarks/results

Reads DIR/moe_mla_raw.json (and the per-row CSVs beside it), writes <results>/moe_bars_<profile>.md, and
files each fidelity row as benchmarks/fidelity.py files its own (<results>/fidelity/<profile>/<row>/row.json
plus its engine CSVs), then rewrites <results>/fidelity_<profile>.md over every row in that folder. A row already
there is kept (a later run of it, by fidelity.py or a newer raw run) unless --replace-rows: the bars table
regenerates from the committed raw run without putting its older rows back.
No device, no simulation: the raw file holds both sides of each row.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import _checkout  # noqa: F401  (first: the checkout's root on sys.path)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def kernel_roofline_lines(raw: dict, dec: list[dict]) -> list[str]:
    """The same steps against the per-phase roofline (fidelity.kernel_roofline_s), from the run's ceilings."""
    import fidelity

    from core.cost_model import BatchShape, CostModel
    from core.hardware import load_profile
    from core.model_spec import load_model

    if raw.get("tiny"):  # toy configs are not catalogue models; their CPU "ceilings" are no roofline
        return []
    prof = committed = load_profile(raw["profile"])
    c = raw.get("ceilings") or {}
    if c:  # the run's own ceilings, not the profile's
        cal = prof.calibration.model_copy(
            update={
                "ceilings": {
                    "copy_bandwidth_gbps": c["copy_bytes_per_s"] / 1e9,
                    "gemm_bf16_tflops": c["gemm_flops_per_s"] / 1e12,
                }
            }
        )
        prof = prof.model_copy(update={"calibration": cal})  # fmt: skip
    out = ["", "Per-phase roofline (linear layers at max(weights read, FLOPs) plus attention at max(KV read, "
           "FLOPs), the run's ceilings: the GEMMs are compute-bound at these batches while attention is not), and "
           "the cost model of the profile as committed now (the table above has the one the run used):", "",
           "| batch | step (ms) | per-phase roofline (ms) | × per-phase roofline | cost model now (ms) | error |",
           "|---|---|---|---|---|---|"]  # fmt: skip
    for r in dec:
        spec = load_model(r["model"])
        shape = BatchShape(decode_seqs=r["batch"], decode_context_tokens=int(r["mean_context"] * r["batch"]))
        roof = fidelity.kernel_roofline_s(prof, spec, shape, "bf16", "bf16")
        model = CostModel(committed, spec, "bf16", "bf16").step_time(shape) * 1e3
        out.append(
            f"| {r['batch']} | {r['step_ms']:.2f} | {roof * 1e3:.2f} | {r['step_ms'] / 1e3 / roof:.2f} | "
            f"{model:.2f} | {(model - r['step_ms']) / r['step_ms'] * 100:+.1f}% |"
        )
    return out


def bars_markdown(raw: dict) -> str:
    c = raw["ceilings"]
    st = raw["mixtral_steps"]
    lines = [f"# Fused MoE and MLA bars ({raw['profile']}: {raw['device']}, torch {raw['torch']})", "",
             f"`{raw['command']}` (raw: moe_mla_raw.json); tables by `python benchmarks/moe_mla_tables.py`.", "",
             f"Ceilings measured in the same run: copy {c['copy_bytes_per_s'] / 1e9:.0f} GB/s, dense GEMM "
             f"{c['gemm_flops_per_s'] / 1e12:.1f} TFLOP/s.", "",
             "## Kernel checks (Triton vs torch reference)", "",
             "| kernel | shape | max rel error | tolerance | ok |", "|---|---|---|---|---|"]  # fmt: skip
    for k in raw["checks"]:
        if k["kernel"] == "fused_moe":
            shape = f"E={k['experts']} top-{k['top_k']} H={k['hidden']} I={k['inter']} T={k['tokens']}"
        elif k["kernel"] == "mla_prefill":
            shape = (f"{k['heads']} heads, latent {k['rank']}+{k['rope']}, chunk {k['chunk']} after "
                     f"{k['context'] - k['chunk']}")  # fmt: skip
        else:
            shape = f"{k['heads']} heads, latent {k['rank']}+{k['rope']}, context {k['context']}"
        lines.append(
            f"| {k['kernel']} | {shape} | {k['rel_err']:.1e} | {k['tol']:g} | {'yes' if k['ok'] else 'NO'} |"
        )
    n_dec = len(st["decode"])
    ok_dec = sum(r["ok"] for r in st["decode"])
    lines += ["", f"## {st['model']} decode steps (bar: ≤ {st['decode'][0]['bar'] if n_dec else '—'}× the floor)", "",
              "Floor: the dense weights (all but the embedding table and the routed experts, "
              f"{st['dense_bytes'] / 1e9:.2f} GB) plus the experts the step's routing touched "
              f"({st['expert_bytes'] / 1e6:.0f} MB each per layer, counted per layer in an eager run of the same "
              "tokens) plus the KV read, at the measured copy bandwidth. Steps under CUDA graphs, context "
              f"{st['decode'][0]['context'] if n_dec else '—'} tokens.", "",
              "| batch | experts touched / layer | step (ms) | floor (ms) | step / floor | bar met |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for r in st["decode"]:
        lines.append(f"| {r['batch']} | {r['experts_touched_per_layer']:.2f} | {r['step_s'] * 1e3:.2f} | "
                     f"{r['floor_s'] * 1e3:.2f} | {r['ratio']:.2f}× | {'yes' if r['ok'] else 'no'} |")  # fmt: skip
    lines += ["", f"{ok_dec} of {n_dec} decode rows meet the bar.", "",
              f"## {st['model']} prefill steps (bar: ≥ 70% of the dense GEMM rate)", "",
              "Model FLOPs: linear layers with the top-k experts per token plus causal attention; one prompt "
              "per step. Tiles: the engine's default (engine.moe.kernel_config), or tuned: the fastest config of "
              "the sweep below for that step's shape, set for the run (engine.moe.set_tuned), where it beat the "
              "default by over 3%.", "",
              "| tokens | tiles | step (ms) | TFLOP/s | share of dense GEMM rate | bar met |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for r in st["prefill"]:
        lines.append(f"| {r['tokens']} | {r.get('tiles', 'default')} | {r['step_s'] * 1e3:.1f} | "
                     f"{r['flops_per_s'] / 1e12:.1f} | {r['share_of_gemm_rate']:.0%} | {'yes' if r['ok'] else 'no'} |")  # fmt: skip
    lines += ["", "## The grouped GEMMs of one MoE layer alone, per tile config (first row per size: the engine's)", "",
              "| tokens | BM × BN × BK, group, warps, stages | ms | TFLOP/s |", "|---|---|---|---|"]  # fmt: skip
    for r in st.get("tiles", []):
        cfg = r["config"]
        label = (f"{cfg['BM']} × {cfg['BN']} × {cfg['BK']}, {cfg['GROUP']}, {cfg['num_warps']}, "
                 f"{cfg['num_stages']}")  # fmt: skip
        if "error" in r:
            lines.append(f"| {r['tokens']} | {label} | failed: {r['error']} | |")
        else:
            lines.append(
                f"| {r['tokens']} | {label} | {r['seconds'] * 1e3:.2f} | {r['flops_per_s'] / 1e12:.1f} |"
            )
    dec = raw.get("decode_large") or []
    if dec or raw.get("decode_large_error"):
        import fidelity

        lines += ["", f"## Large-batch decode ({dec[0]['model'] if dec else '—'})", ""]
        if raw.get("decode_large_error"):
            lines.append(f"Failed: {raw['decode_large_error']}")
        else:
            table = fidelity.decode_table(dec, provenance=False)
            lines += table[4:-1]  # the table without its heading and caption
            lines += [
                "",
                "Bar (issue 13): within 1.3× of the roofline and the cost model within 5% at batch 64-256.",
                *kernel_roofline_lines(raw, dec),
            ]
    fid = raw.get("fidelity", [])
    if fid:
        lines += ["", "## Fidelity rows (conversation trace, 80% of the simulated capacity)", "",
                  "error = (simulator − engine) / engine; the full rows are in the fidelity table.", "",
                  "| row | model | TTFT p50 | TTFT p90 | TPOT p50 | TPOT p90 | out tok/s |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in fid:
            if "error" in r:
                lines.append(f"| {r['row']} | {r['model']} | failed: {r['error'][:120]} |||||")
                continue
            e, s = r["engine"], r["simulator"]
            cells = [f"{(s[k] - e[k]) / e[k] * 100:+.1f}%" if e[k] else "—"
                     for k in ("ttft_p50", "ttft_p90", "tpot_p50", "tpot_p90", "output_tokens_per_s")]  # fmt: skip
            lines.append(f"| {r['row']} | {r['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def file_fidelity_rows(raw: dict, raw_dir: Path, results: Path, replace: bool = False) -> Path | None:
    """Each fidelity row where fidelity.py keeps its rows (one already there kept, unless `replace`), then that
    profile's fidelity table over all of them; None where no row was filed."""
    import fidelity

    recs = [r for r in raw.get("fidelity", []) if "error" not in r]
    tag = "cpu-tiny" if raw.get("tiny") else raw["profile"]
    folder = results / "fidelity" / tag
    kept = [r["row"] for r in recs if (folder / r["row"] / "row.json").exists() and not replace]
    if kept:
        print(
            f"kept the rows already in {folder} (--replace-rows files this run's over them): {', '.join(kept)}"
        )
    recs = [r for r in recs if r["row"] not in kept]
    if not recs:
        return None
    for r in recs:
        d = folder / r["row"]
        d.mkdir(parents=True, exist_ok=True)
        (d / "row.json").write_text(json.dumps(r, indent=1))
        for f in ("engine_requests.csv", "engine_steps.csv"):
            src = raw_dir / f"{r['model'].replace('/', '_')}__{f}"
            if src.exists():
                shutil.copy(src, d / f)
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*/row.json"))]
    md = results / f"fidelity_{tag}.md"
    md.write_text(
        fidelity.table(records, tag, raw["command"] + " (rows filed by benchmarks/moe_mla_tables.py)")
    )
    return md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--raw", default=str(RESULTS / "moe_mla" / "h200"), help="folder with moe_mla_raw.json")
    p.add_argument("--results", default=str(RESULTS), help="results folder (default benchmarks/results)")
    p.add_argument(
        "--replace-rows", action="store_true", help="file the run's fidelity rows over rows already there"
    )
    args = p.parse_args(argv)
    raw_dir, results = Path(args.raw), Path(args.results)
    path = raw_dir / "moe_mla_raw.json"
    if not path.exists():
        print(
            f"error: --raw {raw_dir}: no moe_mla_raw.json there; copy a run's $OUT files into it",
            file=sys.stderr,
        )
        return 2
    raw = json.loads(path.read_text())
    if "mixtral_steps" not in raw:
        print(
            f"error: {path} holds no step timings (the run stopped after its kernel checks)", file=sys.stderr
        )
        return 2
    results.mkdir(parents=True, exist_ok=True)
    tag = "cpu_tiny" if raw.get("tiny") else raw["profile"]
    md = results / f"moe_bars_{tag}.md"
    text = bars_markdown(raw)
    md.write_text(text)
    print(text)
    fmd = file_fidelity_rows(raw, raw_dir, results, args.replace_rows)
    print(f"wrote {md}" + (f" and {fmd}" if fmd else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
