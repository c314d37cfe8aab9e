"""Seed experiment: Gemma-3-12B on one T4, batch 1, prompt length swept 128 → 8k, for each engine.

Runs examples/seed_gemma3_t4_int4.yaml through the simulator once per prompt length (requests spaced so
each runs alone) with each engine profile, and reports TTFT, TPOT and decode tokens/s, with a column
saying which engine the row is. Our engine (`ours`) serves the int4 weights. The Hugging Face transformers
profiles (`transformers-generate`: generate() at batch 1, what the seed experiment ran; `transformers`: its
continuous-batching manager) list kernels for 16-bit weights only, so int4 is refused by design, and the
same model in fp16 (24 GB of weights) does not fit the T4's 16 GB: those rows say so, with the numbers.
Expected shape for ours: TTFT grows roughly linearly with the prompt (prefill is compute bound on a T4
from ~40 tokens on); decode tokens/s stays roughly flat.

    python benchmarks/seed_experiment.py     # prints the table; writes benchmarks/results/seed_experiment.{md,csv}
"""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import _checkout  # noqa: F401  (first: the checkout's root on sys.path)

ROOT = Path(__file__).resolve().parent.parent

from core.engine_profile import load_engine_profile  # noqa: E402
from core.errors import ConfigError, read_yaml  # noqa: E402
from simulator.scenario import Scenario, parse_scenario  # noqa: E402
from simulator.simulation import simulate  # noqa: E402

SCENARIO = ROOT / "examples" / "seed_gemma3_t4_int4.yaml"
PROMPTS = (128, 256, 512, 1024, 2048, 4096, 8192)
RESULTS = ROOT / "benchmarks" / "results"
# (engine profile, weight dtype): the seed's int4 for every engine, and fp16 for the engines without int4 kernels
ENGINES = (
    ("ours", "int4"),
    ("transformers-generate", "int4"),
    ("transformers-generate", "fp16"),
    ("transformers", "int4"),
    ("transformers", "fp16"),
)
FIELDS = (
    "engine",
    "weights",
    "prompt_tokens",
    "ttft_s",
    "ttft_ms_per_1k_prompt",
    "tpot_ms",
    "decode_tokens_per_s",
    "note",
)


def variant(base: dict, engine: str, weights: str, prompt: int) -> Scenario:
    """The seed scenario with `engine`, `weights` and a fixed prompt length (the engine's defaults and refusals
    applied, as for a scenario file that says so)."""
    data = copy.deepcopy(base) | {"engine": engine}
    data["serving"]["precision"]["weight_dtype"] = weights
    data["workload"]["prompt_tokens"] = {"dist": "fixed", "value": prompt}
    return parse_scenario(data, f"{SCENARIO.name} with engine {engine}, {weights}")


def engine_rows(base: dict, engine: str, weights: str, prompts: tuple[int, ...]) -> list[dict]:
    """One row per prompt length, or one row saying why this engine cannot serve these weights on this GPU."""
    name = load_engine_profile(engine).display_name
    head = {"engine": f"{engine} ({name})", "weights": weights}
    rows = []
    for p in prompts:
        try:
            f = simulate(variant(base, engine, weights, p))
        except ConfigError as e:
            return [head | {"note": f"refused: {e}"}]
        if not f.memory.fits:
            return [head | {"note": f"does not fit: {f.memory.explain()}"}]
        lat = f.summary["latency_s"]
        ttft, tpot = lat["ttft"]["p50"], lat["tpot"]["p50"]
        rows.append(
            head
            | {
                "prompt_tokens": p,
                "ttft_s": ttft,
                "ttft_ms_per_1k_prompt": 1e3 * ttft / (p / 1000),
                "tpot_ms": 1e3 * tpot,
                "decode_tokens_per_s": 1.0 / tpot,
                "note": "",
            }
        )
    return rows


def sweep(prompts: tuple[int, ...] = PROMPTS, engines=ENGINES) -> list[dict]:
    base = read_yaml(SCENARIO, "scenario")
    return [r for e, w in engines for r in engine_rows(base, e, w, prompts)]


def table(rows: list[dict]) -> str:
    lines = [
        "| engine | weights | prompt tokens | TTFT (s) | TTFT per 1k prompt tokens (ms) | TPOT (ms) | decode tokens/s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for r in rows:
        if r.get("note"):
            notes.append(f"- **{r['engine']}, {r['weights']}**: {r['note']}")
            lines.append(
                f"| {r['engine']} | {r['weights']} | — | — | — | — | {r['note'].split(':')[0]} (below) |"
            )
            continue
        lines.append(
            f"| {r['engine']} | {r['weights']} | {r['prompt_tokens']} | {r['ttft_s']:.3f} | "
            f"{r['ttft_ms_per_1k_prompt']:.0f} | {r['tpot_ms']:.1f} | {r['decode_tokens_per_s']:.1f} |"
        )
    return "\n".join(lines + ([""] + notes if notes else []))


def main() -> None:
    rows = sweep()
    text = (
        "# Seed experiment: Gemma-3-12B on one T4, batch 1, by engine\n\n"
        f"`python benchmarks/seed_experiment.py`. Scenario: `{SCENARIO.relative_to(ROOT)}` (T4 profile: datasheet "
        "figures with efficiencies transferred from the H100, not measured on a T4), its weights set per row; "
        "128 output tokens per request. The transformers profiles were measured on an H200 and are used here as "
        "transferred.\n\n" + table(rows) + "\n"
    )
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "seed_experiment.md").write_text(text)
    with open(RESULTS / "seed_experiment.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(FIELDS))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()
