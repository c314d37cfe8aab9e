"""Published vLLM 0.18 serving runs on one Kaggle Tesla T4, written as measured-run files (vLLM bench serve keys).

    python benchmarks/published_kaggle_t4_runs.py   # writes benchmarks/results/published_runs/kaggle_t4/*.json

Source: github.com/kaggle-vllm/kaggle-vllm at 39f194e (39f194eebf56c44e0f56bff54c1123a41725c049),
research/tables/m4_crossover_cells.csv: the TP=1 columns (tp1_output_tokens_per_second, tp1_ttft_ms, tp1_tpot_ms,
tp1_itl_ms, tp1_e2e_latency_ms) of the rows for Qwen/Qwen2.5-3B-Instruct and meta-llama/Llama-3.2-3B-Instruct,
each the mean of 5 fresh-server repetitions. The rows of the two other models in the table (Phi-4-mini,
Ministral-3-3B) are left out: the planner has no config of theirs here.

How each cell was served and loaded (the same repository):
- server: artifacts/kaggle-2026-09-08-milestone-4/compatibility/qwen25_3b/qwen25_3b-short-r00-tp1-c01.json
  `server_command`: `vllm serve ... --dtype float16 --max-model-len 4096 --gpu-memory-utilization 0.9
  --max-num-seqs 64 --no-enable-prefix-caching --enforce-eager`, vLLM 0.18.2.dev0 (v0.18.1 built for sm75);
  its server.log: 'Chunked prefill is enabled with max_num_batched_tokens=2048', 'Asynchronous scheduling is
  enabled', 'Cudagraph is disabled under eager mode', 'Using TRITON_ATTN attention backend' (FlashAttention 2
  needs compute capability 8).
- load: src/kaggle_vllm/serving_benchmark.py `ServingWorkloadSpec`: a closed loop keeping `concurrency`
  requests in flight, `total_requests = max(20, 3 x concurrency)` measured after `concurrency` warm-up requests
  (excluded), streaming completions with exact token lengths (research/m4_protocol.json: short 128/64, balanced
  512/256, prefill_heavy 2048/128) and ignore_eos.
- metrics: TTFT = first streamed token - send; TPOT = (completion - first token) / (output tokens - 1);
  output throughput = output tokens / measured wall time (the table's tp1_* columns, means over repetitions).

Each file holds those figures under vLLM's result keys (`mean_ttft_ms`, `mean_tpot_ms`, `mean_itl_ms`,
`mean_e2el_ms`, `output_throughput`, `request_throughput`, `duration` = requests x output tokens / output
throughput); `max_concurrency` carries the closed loop's users. Nothing else is added.
"""

from __future__ import annotations

import json
from pathlib import Path

from published_runs import fixed_length_totals

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "published_runs" / "kaggle_t4"
TABLE = (
    "github.com/kaggle-vllm/kaggle-vllm at 39f194eebf56c44e0f56bff54c1123a41725c049, "
    "research/tables/m4_crossover_cells.csv"
)
WORKLOADS = {"short": (128, 64), "balanced": (512, 256), "prefill_heavy": (2048, 128)}
MODELS = {"qwen2.5-3b-instruct": "Qwen/Qwen2.5-3B-Instruct", "llama-3.2-3b-instruct": "meta-llama/Llama-3.2-3B-Instruct"}  # fmt: skip
# (model, workload, concurrency): tp1 output tokens/s, TTFT ms, TPOT ms, ITL ms, e2e latency ms (the table's means)
ROWS = {
    ("qwen2.5-3b-instruct", "balanced", 1): (24.937158863388174, 200.51610981001545, 40.24220784000006, 40.24171658298041, 10462.279109010033),
    ("qwen2.5-3b-instruct", "balanced", 4): (100.42334295840064, 630.8888946299908, 37.503994853803896, 37.50254916631367, 10194.407582349984),
    ("qwen2.5-3b-instruct", "balanced", 8): (181.38469945460733, 1067.1022322166586, 39.910596066209166, 39.9094373429412, 11244.304229099997),
    ("qwen2.5-3b-instruct", "balanced", 16): (291.7059865504094, 1747.148379233336, 48.000625512287584, 47.998985710065334, 13987.307884866672),
    ("qwen2.5-3b-instruct", "balanced", 32): (385.0258357134177, 2500.9851062083244, 73.2575962588318, 73.25537179046572, 21181.672152210427),
    ("qwen2.5-3b-instruct", "balanced", 64): (494.61682181526294, 3636.383876174995, 114.94440679881544, 114.94086808290035, 32947.20760987293),
    ("qwen2.5-3b-instruct", "prefill_heavy", 1): (21.578021139023424, 1339.1535662699846, 36.21129230724413, 36.472958331256585, 5937.987689289989),
    ("qwen2.5-3b-instruct", "prefill_heavy", 4): (49.128866248076704, 3832.388115719982, 51.76304688669296, 52.07892273806159, 10406.29507032999),
    ("qwen2.5-3b-instruct", "prefill_heavy", 8): (60.49907005699604, 5691.8970358500455, 88.01253862434365, 88.57116245035147, 16869.48944114169),
    ("qwen2.5-3b-instruct", "prefill_heavy", 16): (68.50678286360039, 8020.694878004133, 171.6883272985238, 172.72026157553015, 29825.112444916653),
    ("qwen2.5-3b-instruct", "prefill_heavy", 32): (72.48794065646923, 12059.379656479174, 347.9871593153051, 350.0679628511822, 56253.74888952293),
    ("qwen2.5-3b-instruct", "prefill_heavy", 64): (75.86644677125827, 20156.791922310407, 684.5842239995163, 688.9504654982202, 107098.98837024898),
    ("qwen2.5-3b-instruct", "short", 1): (26.745085889405704, 79.61993845002098, 36.710988739841575, 36.72171632265224, 2392.4122290600403),
    ("qwen2.5-3b-instruct", "short", 4): (100.59720486808024, 171.43312306000553, 37.230455181746166, 37.22530451777784, 2516.9517995100136),
    ("qwen2.5-3b-instruct", "short", 8): (186.5182477064303, 318.78101072500726, 37.754730645899016, 37.7456822425923, 2697.3290414166454),
    ("qwen2.5-3b-instruct", "short", 16): (334.1351954429136, 604.5665700416673, 38.36402221653454, 38.34401194867729, 3021.4999696833434),
    ("qwen2.5-3b-instruct", "short", 32): (496.10790143042084, 907.0246778604244, 50.24685962645496, 50.232726962962886, 4072.5768343270875),
    ("qwen2.5-3b-instruct", "short", 64): (674.7249214180298, 1486.986367106246, 71.66380496593919, 71.64853966157416, 6001.806079960415),
    ("llama-3.2-3b-instruct", "balanced", 1): (24.692790326854354, 233.76585643999647, 44.42102594533326, 44.42626254510896, 11561.127472499978),
    ("llama-3.2-3b-instruct", "balanced", 4): (94.74617156975253, 680.1326914500055, 39.62191102992149, 39.61974317111121, 10783.720004079987),
    ("llama-3.2-3b-instruct", "balanced", 8): (147.6064104846217, 1170.7566426583658, 49.6340775783333, 49.632518632853284, 13827.446425133356),
    ("llama-3.2-3b-instruct", "balanced", 16): (204.24316393240167, 1957.6205044416972, 70.7265790024999, 70.71274994440054, 19992.89815007917),
    ("llama-3.2-3b-instruct", "balanced", 32): (257.21587658698576, 2900.482880174984, 113.12320702246734, 113.08408157549601, 31746.900670904153),
    ("llama-3.2-3b-instruct", "balanced", 64): (314.7110805327928, 4364.303494896881, 186.1335526480923, 185.86463904699124, 51828.359420160414),
    ("llama-3.2-3b-instruct", "prefill_heavy", 1): (20.923519999357207, 1576.9357776700224, 35.756004026850306, 35.7550507693702, 6117.948289080012),
    ("llama-3.2-3b-instruct", "prefill_heavy", 4): (37.44118059850015, 4313.140711349964, 73.4712953170869, 73.47000769188983, 13643.99521662),
    ("llama-3.2-3b-instruct", "prefill_heavy", 8): (43.97491830340694, 6441.143107150007, 131.91474060170574, 131.9132238905508, 23194.315163566636),
    ("llama-3.2-3b-instruct", "prefill_heavy", 16): (48.34926750421824, 9404.780884025018, 257.8845813322506, 257.959051952037, 42156.12271322085),
    ("llama-3.2-3b-instruct", "prefill_heavy", 32): (47.765072854208846, 17609.8313063229, 515.9132017703084, 515.8002153173592, 83130.80793115207),
    ("llama-3.2-3b-instruct", "prefill_heavy", 64): (48.64415588661522, 87599.3779159531, 536.6986722661829, 536.411064327044, 155760.10929375832),
    ("llama-3.2-3b-instruct", "short", 1): (25.700237171871994, 74.07511290002276, 46.61631226349245, 46.614436940476914, 3010.9027855000477),
    ("llama-3.2-3b-instruct", "short", 4): (113.50489788943325, 177.14590406007346, 32.53415145380886, 32.52954337111045, 2226.7974456500315),
    ("llama-3.2-3b-instruct", "short", 8): (193.53577445299192, 322.6765081916502, 35.97807744312182, 35.96979658478819, 2589.295387108325),
    ("llama-3.2-3b-instruct", "short", 16): (302.6841419745097, 579.2865979999988, 43.737026193518744, 43.72007553088597, 3334.71924819168),
    ("llama-3.2-3b-instruct", "short", 32): (418.2419601045393, 940.7104165312367, 61.917651498181485, 61.90530842628999, 4841.522460916671),
    ("llama-3.2-3b-instruct", "short", 64): (555.0408999448543, 1541.0214165000077, 91.53399457766206, 91.51888212187515, 7307.663074892717),
}  # fmt: skip


def requests(concurrency: int) -> int:
    """Measured requests of a cell (kaggle-vllm ServingWorkloadSpec: at least 20 and three waves)."""
    return max(20, 3 * concurrency)


def file_name(model: str, workload: str, concurrency: int) -> str:
    return f"vllm_t4_{model}_{workload}_c{concurrency:02d}.json"


def run_file(model: str, workload: str, concurrency: int, row: tuple[float, ...]) -> dict:
    out_tps, ttft, tpot, itl, e2e = row
    isl, osl = WORKLOADS[workload]
    n = requests(concurrency)
    return {
        "date": "published",
        "backend": "vllm 0.18.2.dev0 (v0.18.1 for sm75), vllm serve --dtype float16 --enforce-eager --max-num-seqs 64 "
        "--max-model-len 4096 --no-enable-prefix-caching; closed loop, streaming completions",
        "model_id": MODELS[model],
        "tokenizer_id": MODELS[model],
        "num_prompts": n,
        "request_rate": "inf",
        "burstiness": 1.0,
        "max_concurrency": concurrency,
        "ignore_eos": True,
        "source": f"{TABLE} (row {MODELS[model]}, {workload}, concurrency {concurrency}; tp1 columns)",
        "gpu": "t4",
        "tensor_parallel_size": 1,
        **fixed_length_totals(n, isl, osl, out_tps),
        "mean_ttft_ms": ttft,
        "mean_tpot_ms": tpot,
        "mean_itl_ms": itl,
        "mean_e2el_ms": e2e,
    }


def paths(model: str) -> list[Path]:
    """The files of one model's cells, in the table's order."""
    return [OUT / file_name(m, w, c) for (m, w, c) in ROWS if m == model]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for (model, workload, c), row in ROWS.items():
        (OUT / file_name(model, workload, c)).write_text(
            json.dumps(run_file(model, workload, c, row), indent=1) + "\n"
        )
    print(f"wrote {len(ROWS)} runs to {OUT}")


if __name__ == "__main__":
    main()
