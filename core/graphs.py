"""The padded sizes our engine's CUDA graphs are captured at, shared by the engine and the cost model.

The engine (engine/serving.py's Executor, engine/steps.py) replays a decode-only step of n sequences on the
graph of the next decode size, and a step with prompt tokens (up to MIXED_GRAPH_TOKENS tokens, at most
MIXED_PREFILL_SEQS prompt chunks) on the graph of the next mixed size; the padding rows run through every
linear layer, MoE layer and element-wise kernel. The cost model prices that work with
`CostModel(..., graph_padding=True)`; both read the sizes from here, so the two cannot disagree.
"""

from __future__ import annotations

import bisect

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


_MIXED = mixed_sizes(MIXED_GRAPH_TOKENS)


def padded_graph_tokens(tokens: int, top: int = MIXED_GRAPH_TOKENS) -> int:
    """The mixed-step graph a step of `tokens` tokens with prompt chunks replays (its token count), for graphs
    captured up to `top` tokens; a larger step runs eagerly, unpadded."""
    if tokens > top or tokens <= 0:
        return tokens
    sizes = _MIXED if top == MIXED_GRAPH_TOKENS else mixed_sizes(top)
    return sizes[bisect.bisect_left(sizes, tokens)]
