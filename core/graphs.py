"""The padded sizes our engine's CUDA graphs are captured at, shared by the engine and the cost model.

The engine (engine/serving.py's Executor, engine/steps.py) replays a decode-only step of n sequences on the
graph of the next decode size, and a step with prompt tokens (up to MIXED_GRAPH_TOKENS tokens, at most
MIXED_PREFILL_SEQS prompt chunks) on the graph of the next mixed size; the padding rows run through every
linear layer, MoE layer and element-wise kernel. The cost model prices that work with
`CostModel(..., graph_padding=SERVING_GRAPHS)`; both read the sizes from here, so the two cannot disagree.

A `GraphRule` says which steps a runner replays on graphs. SERVING_GRAPHS is the serving loop's, which every
forecast of our engine prices; STEP_RUNNER_GRAPHS is engine/steps.py's own graphs, which timed calibration's
whole steps until 2026-12-02 (the stored H100 and H200 sweeps): a fit prices each store's steps by the rule
they ran under (calibrate.measurements.step_graphs).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

MIXED_GRAPH_TOKENS = 2048  # steps with prompt tokens up to this many tokens replay CUDA graphs (GPU)
MIXED_PREFILL_SEQS = 8  # prompt chunks a mixed-step graph takes (more: eager)


def capture_sizes(max_tokens: int) -> list[int]:
    """vLLM's default CUDA-graph batch sizes (1, 2, 4, 8, 16, 24, ...) up to `max_tokens`."""
    sizes = [s for s in (1, 2, 4) if s <= max_tokens] + list(range(8, max_tokens + 1, 8))
    if sizes[-1] < max_tokens:
        sizes.append(max_tokens)
    return sizes


def mixed_sizes(top: int) -> list[int]:
    """Padded token counts of mixed-step graphs: vLLM's capture sizes to 512, then every 64, then every 256."""
    sizes = capture_sizes(min(top, 512))
    sizes += list(range(576, min(top, 2048) + 1, 64)) + list(range(2304, top + 1, 256))
    if sizes[-1] < top:
        sizes.append(top)
    return sizes


def padded_decode_batch(n: int) -> int:
    """The decode graph a decode-only step of n sequences replays: n rounded up to 1, 2, 4 or a multiple of 8
    (capture_sizes; an engine whose max batch is no multiple of 8 caps its last size there, left out here)."""
    if n <= 4:
        return n if n <= 2 else 4
    return -(-n // 8) * 8


_MIXED = {MIXED_GRAPH_TOKENS: mixed_sizes(MIXED_GRAPH_TOKENS)}  # mixed_sizes by top, as asked for


def padded_graph_tokens(tokens: int, top: int = MIXED_GRAPH_TOKENS) -> int:
    """The mixed-step graph a step of `tokens` tokens with prompt chunks replays (its token count), for graphs
    captured up to `top` tokens; a larger step runs eagerly, unpadded."""
    if tokens > top or tokens <= 0:
        return tokens
    sizes = _MIXED.get(top) or _MIXED.setdefault(top, mixed_sizes(top))
    return sizes[bisect.bisect_left(sizes, tokens)]


@dataclass(frozen=True, slots=True)
class GraphRule:
    """Which steps a runner replays on CUDA graphs: decode-only steps always (the next decode size); steps with
    prompt tokens up to `mixed_tokens` tokens and `mixed_chunks` prompt chunks (None: any number), on the next
    of mixed_sizes(mixed_tokens); the others eagerly, unpadded. `alike_padding`: the padding rows are one dummy
    token repeated (the serving loop's: token 1 at position 0), so a MoE layer routes them like one more token,
    to the same experts; else they are random tokens, routed independently."""

    mixed_tokens: int = MIXED_GRAPH_TOKENS
    mixed_chunks: int | None = MIXED_PREFILL_SEQS
    alike_padding: bool = True

    def graphed(self, tokens: int, prefill_tokens: int, prefill_seqs: int) -> bool:
        """Whether a step of `tokens` tokens (`prefill_tokens` in `prefill_seqs` prompt chunks) replays a graph."""
        if not prefill_tokens:
            return True
        if self.mixed_chunks is not None and prefill_seqs > self.mixed_chunks:
            return False
        return tokens <= self.mixed_tokens

    def rows(self, tokens: int, prefill_tokens: int, prefill_seqs: int) -> int:
        """Token rows a step of `tokens` tokens (`prefill_tokens` of them in `prefill_seqs` prompt chunks) runs."""
        if not prefill_tokens:
            return padded_decode_batch(tokens)
        if not self.graphed(tokens, prefill_tokens, prefill_seqs):
            return tokens
        return padded_graph_tokens(tokens, self.mixed_tokens)


# engine/serving.py's Executor: what serve() runs; calibration's steps since 2026-12-02
SERVING_GRAPHS = GraphRule()
# engine/steps.py's StepRunner(serving=False) (graph_max_tokens=512): steps up to 512 tokens, any number of
# sequences, padded to capture_sizes(512) (= mixed_sizes(512)); how calibration timed whole steps until 2026-12-02
STEP_RUNNER_GRAPHS = GraphRule(mixed_tokens=512, mixed_chunks=None, alike_padding=False)
