"""Queueing sanity: the simulator at batch size 1 against closed-form M/D/1 and M/G/1 waiting times.

Batch size 1 (max_num_seqs = 1) makes a replica a single FCFS server. Deterministic service: every
request has the same prompt and one output token, so service is one prefill step (M/D/1).
Exponential-like service: one-token prompts and geometric output lengths (mean 100), so service is
a geometric number of nearly identical decode steps; checked against Pollaczek–Khinchine with the
exact moments of that service law (M/M/1's formula is its exponential special case, shown too).

    python benchmarks/queueing.py            # loads 0.5, 0.7, 0.9; writes benchmarks/results/queueing.md
    python benchmarks/queueing.py --quick    # fewer requests (wider error bars)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import _checkout  # noqa: F401  (first: the checkout's root on sys.path)
import numpy as np

from core.cost_model import BatchShape, CostModel, chunk_pairs  # noqa: E402
from core.hardware import load_profile  # noqa: E402
from core.model_spec import load_model  # noqa: E402
from simulator.scenario import parse_scenario  # noqa: E402
from simulator.simulation import simulate  # noqa: E402
from simulator.theory import batch_means_stderr, md1_wait, mg1_wait, mm1_wait  # noqa: E402

MODEL, GPU = "llama-3.1-8b", "h100-sxm"
D_PROMPT = 512
G_PROMPT, G_MEAN_OUT = 1, 100


def service_law(kind: str, max_tokens: int = 5000) -> tuple[np.ndarray, np.ndarray]:
    """(service times, probabilities) of the service law, computed from the cost model alone."""
    cm = CostModel(load_profile(GPU), load_model(MODEL))
    if kind == "D":
        s = cm.step_time(
            BatchShape(prefill_tokens=D_PROMPT, prefill_seqs=1, prefill_pairs=chunk_pairs(0, D_PROMPT))
        )
        return np.array([s]), np.array([1.0])
    pre = cm.step_time(
        BatchShape(prefill_tokens=G_PROMPT, prefill_seqs=1, prefill_pairs=chunk_pairs(0, G_PROMPT))
    )
    dec = cm.decode_step_times(1, G_PROMPT + np.arange(1, max_tokens))  # decode step j sees prompt + j tokens
    n = np.arange(1, max_tokens + 1)
    s = pre + np.concatenate([[0.0], np.cumsum(dec)])  # output of n tokens: prefill + (n − 1) decode steps
    p = 1.0 / G_MEAN_OUT
    prob = p * (1 - p) ** (n - 1)
    return s, prob / prob.sum()


def scenario(kind: str, rho: float, n: int, seed: int):
    s, p = service_law(kind)
    rate = rho / float(s @ p)
    out = {"dist": "fixed", "value": 1} if kind == "D" else {"dist": "exponential", "mean": G_MEAN_OUT}
    return parse_scenario(
        {
            "seed": seed,
            "model": MODEL,
            "hardware": {"gpu": GPU},
            "serving": {"batching": {"max_num_seqs": 1}, "memory": {"max_model_len": 10_000}},
            "workload": {
                "arrival": {"process": "poisson", "rate_per_s": rate},
                "prompt_tokens": {"dist": "fixed", "value": D_PROMPT if kind == "D" else G_PROMPT},
                "output_tokens": out,
                "num_requests": n,
            },
        }
    ), rate


def closed_form(kind: str, rate: float) -> float:
    s, p = service_law(kind)
    return md1_wait(rate, float(s[0])) if kind == "D" else mg1_wait(rate, float(s @ p), float(s**2 @ p))


def measure(kind: str, rho: float, n: int, seed: int = 0) -> dict:
    sc, rate = scenario(kind, rho, n, seed)
    t0 = time.perf_counter()
    f = simulate(sc)
    wall = time.perf_counter() - t0
    waits = f.table.scheduled_s - f.table.arrival_s
    w, theory = float(waits.mean()), closed_form(kind, rate)
    s, p = service_law(kind)
    return {
        "law": "M/D/1" if kind == "D" else "M/G/1 (geometric decode)",
        "load": rho,
        "requests": n,
        "simulated_wait_s": w,
        "closed_form_s": theory,
        "error": w / theory - 1,
        "stderr": batch_means_stderr(waits) / theory,
        "mm1_s": mm1_wait(rate, float(s @ p)) if kind == "G" else float("nan"),
        "wall_s": wall,
    }


# Requests per point: enough for a standard error near 0.7% (2% ≈ 3σ) from the asymptotic variance of
# the mean wait; the 0.9-load M/G/1 point is capped by run time, its σ is printed beside it.
FULL = {("D", 0.5): 300_000, ("D", 0.7): 800_000, ("D", 0.9): 4_000_000,
        ("G", 0.5): 600_000, ("G", 0.7): 1_500_000, ("G", 0.9): 4_000_000}  # fmt: skip


def pin_profile() -> None:
    """Use a frozen copy of the profile for the whole run, so a recalibration mid-run cannot mix two."""
    global GPU
    import tempfile

    from core.hardware import write_profile

    path = Path(tempfile.mkdtemp()) / f"{GPU}.yaml"
    write_profile(load_profile(GPU), path)
    GPU = str(path)


def main() -> None:
    pin_profile()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a tenth of the requests")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "queueing.md"))
    args = ap.parse_args()
    rows = []
    for (kind, rho), n in FULL.items():
        r = measure(kind, rho, n // 10 if args.quick else n)
        rows.append(r)
        print(
            f"{r['law']:<26} load {rho:.1f}  n={r['requests']:>9,}  sim {r['simulated_wait_s'] * 1e3:9.3f} ms"
            f"  closed form {r['closed_form_s'] * 1e3:9.3f} ms  error {r['error']:+.2%} (σ {r['stderr']:.2%})"
            f"  [{r['wall_s']:.0f} s]",
            flush=True,
        )
    lines = [
        "| service | load | requests | simulated mean wait (ms) | closed form (ms) | error | std. error | M/M/1 formula (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mm1 = "—" if np.isnan(r["mm1_s"]) else f"{r['mm1_s'] * 1e3:.3f}"
        lines.append(
            f"| {r['law']} | {r['load']:.1f} | {r['requests']:,} | {r['simulated_wait_s'] * 1e3:.3f} | "
            f"{r['closed_form_s'] * 1e3:.3f} | {r['error']:+.2%} | {r['stderr']:.2%} | {mm1} |"
        )
    text = "\n".join(lines)
    print("\n" + text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(f"# Queueing sanity\n\n`python benchmarks/queueing.py`\n\n{text}\n")


if __name__ == "__main__":
    main()
