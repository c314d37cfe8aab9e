"""Memory per GPU: weights + activations + runtime reserve + paged KV blocks must fit.

Follows how vLLM sizes its KV pool: usable = gpu_memory_utilization × capacity; the KV pool is what
is left after weights, the peak activations of a max-sized step, and the runtime's own memory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from core.hardware import HardwareProfile
from core.model_spec import ModelSpec
from core.parallelism import Parallelism, kv_bytes_per_token_per_gpu, weight_bytes_per_gpu
from core.scheduler import every_layer_slides, pool_kv_bytes_per_token
from simulator.scenario import Serving

GIB = 2**30


@dataclass(frozen=True)
class MemoryPlan:
    capacity_bytes: float
    usable_bytes: float
    weight_bytes: float
    activation_bytes: float
    reserved_bytes: float
    kv_bytes: float
    block_bytes: float
    num_blocks: int
    max_model_len: int

    block_size: int
    note: str = ""  # how the KV is charged where that is not plain (a model whose every layer slides)

    @property
    def fits(self) -> bool:
        """Weights, activations and runtime fit, with room for at least one KV block."""
        return self.num_blocks >= 1

    @property
    def kv_tokens(self) -> int:
        """Tokens the KV pool holds (full-attention layers)."""
        return self.num_blocks * self.block_size

    def explain(self) -> str:
        """One line with the numbers, for the 'does not fit' report."""
        g = lambda b: f"{b / GIB:.1f} GiB"  # noqa: E731
        return (
            f"weights {g(self.weight_bytes)} + activations {g(self.activation_bytes)} + runtime {g(self.reserved_bytes)}"
            f" of {g(self.usable_bytes)} usable ({g(self.capacity_bytes)} × utilisation) per GPU; "
            f"KV room left {g(self.kv_bytes)} = {self.num_blocks} blocks"
            + (f"; {self.note}" if self.note else "")
        )

    def as_dict(self) -> dict:
        d = asdict(self)
        d["kv_tokens"] = self.kv_tokens
        return d


def activation_bytes(model: ModelSpec, serving: Serving, tp: int = 1) -> float:
    """Peak activations of a step of max_num_batched_tokens tokens, plus fp32 logits for every sequence.

    A few live [tokens, width] buffers in 16-bit: residual and normed hidden (2h), fused qkv, the MLP's
    gate_up output (2I) and its activation (I); only one layer's worth is live at a time.
    """
    t = serving.batching.max_num_batched_tokens
    h = model.hidden_size
    inter = (
        (model.moe_intermediate_size * model.experts_per_token) if model.is_moe else model.intermediate_size
    )
    qkv = (model.num_heads + 2 * model.num_kv_heads) * model.head_dim
    per_token = 2.0 * (2 * h + qkv / tp + 3 * inter / tp)
    logits = min(serving.batching.max_num_seqs, t) * model.vocab_size * 4.0 / tp
    return t * per_token + logits


def plan_memory(
    profile: HardwareProfile, model: ModelSpec, serving: Serving, tp: int = 1, pp: int = 1, ep: int = 1
) -> MemoryPlan:
    """Size the KV pool per GPU after sharding `tp` ways within a stage over `pp` stages (experts dealt
    over `ep` GPUs); the fullest stage sets the number of blocks, which every stage then allocates.

    Blocks are sized by the full-attention layers' KV; sliding-window layers draw from the same pool
    (see `Scheduler.window_blocks`), as vLLM's hybrid allocator does. A model whose every layer slides has its
    blocks sized by those layers' KV, charged for every token (core.scheduler.sliding_terms).
    """
    par = Parallelism(tp, pp, ep)
    capacity = profile.memory_bytes
    usable = serving.memory.gpu_memory_utilization * capacity
    weights = weight_bytes_per_gpu(model, serving.precision.weight_dtype, par)
    acts = activation_bytes(model, serving, tp)
    reserved = serving.memory.runtime_reserved_gib * GIB
    max_len = serving.memory.max_model_len or model.max_position_embeddings or 32768
    kv = usable - weights - acts - reserved
    block_bytes = serving.memory.block_size * pool_kv_bytes_per_token(
        model, *kv_bytes_per_token_per_gpu(model, serving.precision.kv_dtype, par)
    )
    blocks = int(kv // block_bytes) if kv > 0 and block_bytes > 0 else 0
    return MemoryPlan(
        capacity_bytes=capacity,
        usable_bytes=usable,
        weight_bytes=weights,
        activation_bytes=acts,
        reserved_bytes=reserved,
        kv_bytes=kv,
        block_bytes=block_bytes,
        num_blocks=blocks,
        max_model_len=max_len,
        block_size=serving.memory.block_size,
        note=(
            f"every layer slides ({model.sliding_window}-token window): its KV charged for every token, as full "
            "attention's (exact up to the window; past it, an engine that frees the blocks leaving the window "
            "holds more sequences)"
            if every_layer_slides(model)
            else ""
        ),
    )
