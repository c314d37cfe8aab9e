"""Tensor, pipeline and expert parallelism: how a model is split over GPUs and what the split costs.

How a replica with pipeline_parallel = pp > 1 is simulated (note for the cluster):
  vLLM keeps pp micro-batches in flight ("virtual engines", V1's batch queue of depth pp): while
  stage 2 runs micro-batch A, stage 1 runs micro-batch B. A pp replica therefore behaves like pp
  engines that share the stage GPUs, each with `max_num_seqs // pp` sequences and `num_blocks // pp`
  KV blocks (`virtual_engines`), each advancing by the step time of
  `CostModel(..., tp=tp, pp=pp)`, which is one micro-batch's latency through all pp stages
  (all layers plus pp − 1 activation sends). Route requests to the virtual engine with the least
  outstanding work, as the single V1 scheduler filling the next free batch slot effectively does.
  While the micro-batches are balanced this is exact; an unbalanced one stalls the others (the
  pipeline bubble), which independent engines do not model. `plan_memory(..., tp, pp, ep)` gives
  the whole replica's blocks (per GPU of the fullest stage); split them with `virtual_engines`.

Tensor parallel (Megatron-LM, as vLLM runs it): column-parallel QKV and gate/up, row-parallel O and
down, vocabulary-parallel embedding and LM head; attention heads split tp ways, KV heads split too
or replicated when there are fewer KV heads than GPUs; two all-reduces of the hidden states per layer.
Expert parallel (vLLM `enable_expert_parallel`): the routed experts are dealt over the tp GPUs of a
stage instead of being sharded, and each MoE layer exchanges tokens by all-to-all (dispatch and
combine) and all-gathers its output instead of the all-reduce.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from core.errors import ConfigError
from core.hardware import Interconnect
from core.model_spec import Gemm, ModelSpec, dtype_bytes

ACT_BYTES = 2.0  # activations and collectives in 16-bit

# How each weight matrix is split under tensor parallelism (vLLM's model files: QKVParallelLinear and
# MergedColumnParallelLinear are column-parallel, RowParallelLinear row-parallel; DeepSeek's MLA
# down-projections q_a/kv_a and the MoE router are ReplicatedLinear).
COLUMN = {"qkv", "q", "q_b", "kv_b", "gate_up", "shared_gate_up", "expert_gate_up", "lm_head"}
ROW = {"o", "down", "shared_down", "expert_down"}


@dataclass(frozen=True, slots=True)
class Parallelism:
    """tp GPUs per stage, pp stages; ep = tp when the experts are dealt over the stage's GPUs, else 1."""

    tp: int = 1
    pp: int = 1
    ep: int = 1

    @property
    def gpus(self) -> int:
        return self.tp * self.pp

    @classmethod
    def of(cls, hardware) -> Parallelism:
        """From a scenario's `hardware` section: gpus_per_replica = tp × pipeline_parallel."""
        pp = getattr(hardware, "pipeline_parallel", 1)
        tp = hardware.gpus_per_replica // pp
        return cls(tp, pp, tp if getattr(hardware, "expert_parallel", False) else 1)

    def check(self, model: ModelSpec) -> None:
        """The splits vLLM accepts for this model; a ConfigError naming the fix otherwise."""
        tp, pp, ep = self.tp, self.pp, self.ep
        if model.num_heads % tp:
            raise ConfigError(
                f"{model.name}: {model.num_heads} attention heads do not split over tensor_parallel={tp}; "
                "use a divisor of the head count for gpus_per_replica / pipeline_parallel"
            )
        kv = model.num_kv_heads
        if not model.is_mla and (kv % tp if kv >= tp else tp % kv):
            raise ConfigError(f"{model.name}: {kv} KV heads do not split over tensor_parallel={tp}")
        if pp > model.num_layers:
            raise ConfigError(f"{model.name}: pipeline_parallel={pp} exceeds its {model.num_layers} layers")
        if ep > 1 and not model.is_moe:
            raise ConfigError(f"{model.name} has no experts; expert_parallel needs an MoE model")
        if ep not in (1, tp):
            raise ConfigError(f"expert parallel size {ep} must be 1 or the tensor-parallel size {tp}")


# ---------------------------------------------------------------- how the weights split
def kv_heads_per_gpu(model: ModelSpec, tp: int) -> int:
    """KV heads each GPU stores: split tp ways, or one replicated head per GPU when kv_heads < tp."""
    return max(1, model.num_kv_heads // tp)


def shard(model: ModelSpec, g: Gemm, tp: int) -> tuple[int, int]:
    """(k, n) of one GPU's shard of a weight matrix."""
    if tp == 1:
        return g.k, g.n
    if g.name == "qkv":  # query heads split; KV heads split, or replicated when fewer than tp
        return g.k, (model.num_heads // tp + 2 * kv_heads_per_gpu(model, tp)) * model.head_dim
    if g.name in COLUMN:
        return g.k, math.ceil(g.n / tp)
    if g.name in ROW:
        return math.ceil(g.k / tp), g.n
    return g.k, g.n  # replicated


def stage_layers(model: ModelSpec, pp: int) -> int:
    """Layers of the fullest pipeline stage (vLLM splits layers evenly, the remainder to early stages)."""
    return math.ceil(model.num_layers / pp)


def weight_bytes_per_gpu(model: ModelSpec, dtype: str, par: Parallelism) -> float:
    """Weight bytes on one GPU of the fullest stage: linear layers in `dtype`, the rest in 16-bit."""
    tp, pp, ep = par.tp, par.pp, par.ep
    if tp == pp == 1:
        return model.weight_bytes(dtype)
    wb = dtype_bytes(dtype)
    dense = sum(g.layers * math.prod(shard(model, g, tp)) for g in model.dense_gemms)
    expert = sum(g.layers * g.k * g.n for g in model.expert_gemms)
    experts = math.ceil(model.num_experts / ep) * expert if ep > 1 else model.num_experts * expert / tp
    per_layer = (dense + experts) * wb
    h, L = model.hidden_size, model.num_layers
    norms = (model.other_params - model.vocab_size * h * (1 if model.tie_embeddings else 2)) * 2.0
    table = model.vocab_size * h * 2.0 / tp  # vocabulary-parallel embedding or LM head
    # pp = 1: embedding and LM head (one table when tied); pp > 1: the first stage holds the embedding,
    # the last the LM head (a tied model keeps a copy on each), so the fullest stage holds one table.
    tables = table * (1 if (model.tie_embeddings or pp > 1) else 2)
    return (per_layer + norms) * stage_layers(model, pp) / L + tables


def kv_bytes_per_token_per_gpu(model: ModelSpec, kv_dtype: str, par: Parallelism) -> tuple[float, float]:
    """(full-attention, sliding-window) KV bytes per token on one GPU of the fullest stage.

    MLA's latent cache is not split by heads: every tensor-parallel rank keeps all of it (vLLM)."""
    split = 1.0 if model.is_mla else kv_heads_per_gpu(model, par.tp) / model.num_kv_heads
    frac = split * stage_layers(model, par.pp) / model.num_layers
    return model.kv_bytes_per_token(kv_dtype) * frac, model.sliding_kv_bytes_per_token(kv_dtype) * frac


def virtual_engines(pp: int, max_num_seqs: int, num_blocks: int) -> list[tuple[int, int]]:
    """(max_num_seqs, KV blocks) of each of a pp replica's virtual engines (see the module note)."""
    return [
        (max_num_seqs // pp + (i < max_num_seqs % pp), num_blocks // pp + (i < num_blocks % pp))
        for i in range(pp)
    ]


# ---------------------------------------------------------------- collectives
# A collective costs a fixed latency plus its bytes at efficiency × link bandwidth. The bytes are the
# bandwidth-optimal ones (ring all-reduce: each GPU sends 2(n−1)/n of the buffer; Thakur, Rabenseifner
# & Gropp 2005, "Optimization of collective communication operations in MPICH"). The latency is not the
# ring's 2(n−1) hops: the small-message kernels engines use (vLLM's one-shot custom all-reduce) write to
# all peers at once and synchronise through flags, about three one-way link latencies whatever n is.
# Measured: vLLM's custom all-reduce on H100 NVLink took 8.5–10 µs for messages up to 64 KB at tp = 2, 4
# and 8 (github.com/sgl-project/sglang/pull/2904), 3 × the h100-sxm profile's 3 µs.
LATENCY_HOPS = 3.0


def collective_latency(ic: Interconnect) -> float:
    return LATENCY_HOPS * ic.latency_us * 1e-6


def allreduce_time(nbytes: float, n: int, ic: Interconnect) -> float:
    """All-reduce of an `nbytes` buffer held by each of n GPUs: latency + 2(n−1)/n × nbytes / rate."""
    if n <= 1:
        return 0.0
    return _cost("all_reduce", 2 * (n - 1) / n * nbytes, ic)


def allgather_time(nbytes: float, n: int, ic: Interconnect) -> float:
    """All-gather of an `nbytes` result of which each GPU holds 1/n: latency + (n−1)/n × nbytes / rate."""
    if n <= 1:
        return 0.0
    return _cost("all_gather", (n - 1) / n * nbytes, ic)


def all_to_all_time(nbytes: float, n: int, ic: Interconnect) -> float:
    """All-to-all where each GPU scatters `nbytes` evenly over the n GPUs ((n−1)/n of it leaves)."""
    if n <= 1:
        return 0.0
    return _cost("all_to_all", (n - 1) / n * nbytes, ic)


def send_time(nbytes: float, ic: Interconnect) -> float:
    """Point-to-point send between neighbouring pipeline stages."""
    return _cost("send", nbytes, ic)


def _cost(name: str, wire_bytes: float, ic: Interconnect) -> float:
    """A collective's time for its bus bytes: the measured fit when the profile has one, else the datasheet's
    latency and rate."""
    fit = ic.measured.get(name) if ic.measured else None
    if fit is not None:
        return fit.latency_us * 1e-6 + wire_bytes / (fit.bandwidth_gbps * 1e9)
    return collective_latency(ic) + wire_bytes / _rate(ic)


def _rate(ic: Interconnect) -> float:
    return ic.efficiency * ic.bandwidth_gbps * 1e9


# ---------------------------------------------------------------- MoE routing
def expert_inclusion(num_experts: int, top_k: int, skew: float = 0.0) -> np.ndarray:
    """Probability that one token's top-k includes each expert, hottest first (sums to top_k).

    Expert loads follow a Zipf law with exponent `skew` over the experts (0 = uniform: k/E each); an
    expert cannot be chosen twice by one token, so shares above 1/k are capped at certainty and the
    excess goes to the others in proportion (water-filling).
    """
    w = np.arange(1, num_experts + 1, dtype=float) ** -skew
    q = np.zeros(num_experts)
    free = np.ones(num_experts, dtype=bool)
    k = float(top_k)
    while True:
        q[free] = k * w[free] / w[free].sum()
        over = free & (q > 1.0)
        if not over.any():
            return q
        q[over] = 1.0
        k -= over.sum()
        free &= ~over


def expected_touched(q: np.ndarray, tokens: float) -> float:
    """Expected distinct experts hit by `tokens` independently routed tokens with inclusion probabilities q."""
    return float(np.sum(1.0 - (1.0 - q) ** tokens)) if tokens > 0 else 0.0


def experts_by_gpu(q: np.ndarray, ep: int) -> list[np.ndarray]:
    """Inclusion probabilities of the experts on each of ep GPUs: popularity ranks dealt round-robin,
    the spread a load-balancing placement (vLLM's EPLB) aims for; with ep = 1, all on one."""
    return [q[g::ep] for g in range(max(ep, 1))]
