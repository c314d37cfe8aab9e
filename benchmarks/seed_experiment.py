"""Seed experiment: Gemma-3-12B with int4 weights on one T4, batch 1, prompt length swept 128 → 8k.

Runs examples/seed_gemma3_t4_int4.yaml through the simulator once per prompt length (requests spaced
so each runs alone) and reports TTFT, TPOT and decode tokens/s. Expected shape: TTFT grows roughly
linearly with the prompt (prefill is compute bound on a T4 from ~40 tokens on); decode tokens/s stays
roughly flat (each step reads the int4 weights once; the KV read grows with context but stays small
next to them, and 40 of Gemma 3's 48 layers attend to a 1,024-token window only).

    python benchmarks/seed_experiment.py     # prints the table; writes benchmarks/results/seed_experiment.{md,csv}
"""

from __future__ import annotations

import csv
from pathlib import Path

import _checkout  # noqa: F401  (first: the checkout's root on sys.path)

ROOT = Path(__file__).resolve().parent.parent

from simulator.scenario import load_scenario  # noqa: E402
from simulator.simulation import simulate  # noqa: E402

SCENARIO = ROOT / "examples" / "seed_gemma3_t4_int4.yaml"
PROMPTS = (128, 256, 512, 1024, 2048, 4096, 8192)
RESULTS = ROOT / "benchmarks" / "results"


def sweep(prompts: tuple[int, ...] = PROMPTS) -> list[dict]:
    """One row per prompt length: median TTFT, TPOT and decode tokens/s at batch 1."""
    base = load_scenario(SCENARIO)
    rows = []
    for p in prompts:
        s = base.model_copy(deep=True)
        s.workload.prompt_tokens.value = p
        f = simulate(s)
        lat = f.summary["latency_s"]
        ttft, tpot = lat["ttft"]["p50"], lat["tpot"]["p50"]
        rows.append(
            {
                "prompt_tokens": p,
                "ttft_s": ttft,
                "ttft_ms_per_1k_prompt": 1e3 * ttft / (p / 1000),
                "tpot_ms": 1e3 * tpot,
                "decode_tokens_per_s": 1.0 / tpot,
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| prompt tokens | TTFT (s) | TTFT per 1k prompt tokens (ms) | TPOT (ms) | decode tokens/s |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['prompt_tokens']} | {r['ttft_s']:.3f} | {r['ttft_ms_per_1k_prompt']:.0f} | "
            f"{r['tpot_ms']:.1f} | {r['decode_tokens_per_s']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    rows = sweep()
    text = (
        "# Seed experiment: Gemma-3-12B, int4 weights, one T4, batch 1\n\n"
        f"Scenario: `{SCENARIO.relative_to(ROOT)}` (T4 profile: datasheet figures with efficiencies "
        "transferred from the H100, not measured on a T4). 128 output tokens per request.\n\n"
        + table(rows)
        + "\n"
    )
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "seed_experiment.md").write_text(text)
    with open(RESULTS / "seed_experiment.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()
