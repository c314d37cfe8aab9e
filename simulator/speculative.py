"""Speculative decoding: what a round costs, what it yields, and the draft model's memory.

Each round drafts k tokens (k steps of a draft model, or a fraction of a target step each for
self-speculation such as MTP heads or n-gram lookup), then verifies them in one target step over
k + 1 positions per sequence. With per-token acceptance α a round yields the accepted prefix plus one
token from the target: on average (1 − α^(k+1)) / (1 − α) tokens.
"""

from __future__ import annotations

from dataclasses import replace

from core.cost_model import BatchShape, CostModel
from core.model_spec import ModelSpec
from simulator.memory import MemoryPlan
from simulator.scenario import Speculative


def expected_tokens(alpha: float, k: int) -> float:
    """Expected tokens a round yields: accepted drafts plus the target's own token."""
    return float(k + 1) if alpha >= 1.0 else (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


class DraftCost:
    """Seconds the drafting part of a round takes for n sequences with `context` tokens in total."""

    def __init__(
        self, spec: Speculative, target: CostModel, draft: CostModel | None, in_graph: CostModel | None = None
    ) -> None:
        self.k, self.fraction = spec.num_speculative_tokens, spec.draft_cost_fraction
        self.target, self.draft = target, draft
        # graphed rounds: the draft's steps priced without the serving loop's host terms (the round pays them
        # once, in its verification step); its prompt chunks still run as steps of their own (`prefill`)
        self.rounds = in_graph if in_graph is not None else draft
        # a draft-model round's own cost beyond its steps as priced (the profile's, measured on our engine)
        self.round_s = target.eff.spec_round_s if target is not None and draft is not None else 0.0

    def __call__(self, n: int, context: int) -> float:
        shape = BatchShape(decode_seqs=n, decode_context_tokens=context)
        if self.draft is not None:  # k autoregressive steps of the draft model, and the round's own cost
            return self.round_s + sum(
                self.rounds.step_time(BatchShape(decode_seqs=n, decode_context_tokens=context + i * n))
                for i in range(self.k)
            )
        return self.k * self.fraction * self.target.step_time(shape)

    def prefill(self, shape: BatchShape) -> float:
        """The draft model also prefills every prompt chunk (self-speculation heads reuse the target's)."""
        if self.draft is None or not shape.prefill_tokens:
            return 0.0
        return self.draft.step_time(shape)


def with_draft_memory(mem: MemoryPlan, draft: ModelSpec, serving, tp: int = 1) -> MemoryPlan:
    """The memory plan once the draft model's weights and its KV (per token, same pool) are added."""
    weights = draft.weight_bytes(serving.precision.weight_dtype) / tp
    kv = mem.kv_bytes - weights
    per_token = mem.block_bytes / mem.block_size + draft.kv_bytes_per_token(serving.precision.kv_dtype) / tp
    block_bytes = mem.block_size * per_token
    blocks = int(kv // block_bytes) if kv > 0 else 0
    return replace(
        mem, weight_bytes=mem.weight_bytes + weights, kv_bytes=kv, block_bytes=block_bytes, num_blocks=blocks
    )
