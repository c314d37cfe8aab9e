"""Tensor- and pipeline-parallel models: one process per rank, each holding its shard of engine.model's weights.

Tensor parallel (Megatron-LM's split, as gpt-fast's tp.py and vLLM run it): qkv and gate_up are split by
output columns (each rank computes its heads and its slice of the MLP), o and down by input rows, so each
rank's partial sums meet in one all-reduce after o and one after down: two per layer. KV heads are split
across ranks; with fewer KV heads than ranks each KV head is replicated on tp / kv_heads ranks (vLLM's
rule), so every rank keeps the KV heads its query heads read. The embedding is replicated; the LM head is
vocab-parallel (each rank its rows of the vocabulary) and the logits are all-gathered.

Pipeline parallel: the layers are split into contiguous stages, one per rank; a stage receives the
(hidden, residual) pair from the one before, runs its layers over its own KV pools, and sends the pair on;
the last stage applies the final norm and LM head. One batch at a time (no micro-batches).

Weights: each full parameter of the one-process model is drawn in the order `engine.model._init_weights`
draws it, from the same seed, and each rank keeps its shard, so with the same seed the ranks together hold
exactly the weights `build_model` gives one process (greedy tokens match; tests/engine/test_parallel.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from core.errors import ConfigError
from core.model_spec import ModelSpec
from engine.model import Dense, Transformer, build_options, finish_model, init_parameter


# ------------------------------------------------------------------------------------------ sharding rules
def check_tp(spec: ModelSpec, tp: int) -> None:
    """One clear line when `spec` cannot be split over `tp` ranks."""
    if spec.is_mla or spec.is_moe:
        raise ConfigError(
            f"tensor parallel in the engine covers dense attention and MLPs; {spec.name} is "
            f"{'MLA' if spec.is_mla else 'MoE'} (run it with tp: 1)"
        )
    h, kv, inter = spec.num_heads, spec.num_kv_heads, spec.intermediate_size
    if h % tp or inter % tp or (kv % tp and tp % kv):
        raise ConfigError(
            f"tp={tp} does not divide {spec.name}: heads {h}, KV heads {kv} (or tp a multiple of them), "
            f"intermediate {inter} must split evenly; choose tp among the common divisors"
        )


def kv_heads_of(spec: ModelSpec, tp: int, rank: int) -> list[int]:
    """The global KV heads rank keeps: its 1/tp of them, or the one its query heads read (kv_heads < tp)."""
    kv = spec.num_kv_heads
    if kv >= tp:
        n = kv // tp
        return list(range(rank * n, (rank + 1) * n))
    return [rank * kv // tp]


def tp_spec(spec: ModelSpec, tp: int) -> ModelSpec:
    """The architecture one rank holds: its heads, its KV heads, its slice of the MLP (same hidden size)."""
    check_tp(spec, tp)
    return dataclasses.replace(
        spec,
        num_heads=spec.num_heads // tp,
        num_kv_heads=len(kv_heads_of(spec, tp, 0)),
        intermediate_size=spec.intermediate_size // tp,
    )


def vocab_shard(vocab: int, tp: int) -> int:
    """Rows of the LM head per rank (the last rank's are padded when tp does not divide the vocabulary)."""
    return -(-vocab // tp)


def tp_shard(spec: ModelSpec, tp: int, rank: int) -> Callable[[str, torch.Tensor], torch.Tensor]:
    """rank's slice of a full parameter, by its name in the one-process model."""
    hd, nh = spec.head_dim, spec.num_heads
    q = nh // tp
    q_rows = torch.arange(rank * q * hd, (rank + 1) * q * hd)
    kv = torch.tensor([i * hd + j for i in kv_heads_of(spec, tp, rank) for j in range(hd)])
    qkv_rows = torch.cat([q_rows, nh * hd + kv, (nh + spec.num_kv_heads) * hd + kv])
    inter = spec.intermediate_size // tp
    mlp = slice(rank * inter, (rank + 1) * inter)
    vl = vocab_shard(spec.vocab_size, tp)

    def shard(name: str, t: torch.Tensor) -> torch.Tensor:
        if ".attn.wqkv." in name:
            return t.index_select(0, qkv_rows.to(t.device))
        if name.endswith("attn.wo.weight"):
            return t[:, rank * q * hd : (rank + 1) * q * hd]
        if name.endswith("mlp.gate_up.weight"):  # [gate; up]: each rank its rows of both
            i = t.shape[0] // 2
            return torch.cat([t[:i][mlp], t[i:][mlp]])
        if name.endswith("mlp.down.weight"):
            return t[:, mlp]
        if name == "lm_head.weight":
            part = t[rank * vl : (rank + 1) * vl]
            return (
                torch.cat([part, part.new_zeros(vl - part.shape[0], t.shape[1])]) if len(part) < vl else part
            )
        return t

    return shard


# ------------------------------------------------------------------------------------------ modules
# torch 2.13 renames all_gather_into_tensor (deprecated there) to all_gather_single; 2.11 has only the former
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


class AllReduce(nn.Module):
    """A row-parallel projection: each rank's partial product, summed over the group (o and down)."""

    def __init__(self, inner: nn.Module, group) -> None:
        super().__init__()
        self.inner, self.group = inner, group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        dist.all_reduce(y, group=self.group)
        return y


class VocabParallelHead(nn.Module):
    """Each rank's rows of the LM head; the logits all-gathered to every rank (padding rows cut off)."""

    def __init__(self, inner: nn.Module, vocab: int, tp: int, group) -> None:
        super().__init__()
        self.inner, self.vocab, self.tp, self.group = inner, vocab, tp, group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = self.inner(x).contiguous()
        rows, vl = local.shape
        out = local.new_empty((self.tp * rows, vl))  # rank-major, as gloo and NCCL both take it
        _all_gather(out, local, group=self.group)
        return out.view(self.tp, rows, vl).permute(1, 0, 2).reshape(rows, self.tp * vl)[:, : self.vocab]


# ------------------------------------------------------------------------------------------ building
def _meta_model(spec: ModelSpec, n: int, tdtype: torch.dtype) -> Transformer:
    with torch.device("meta"):
        model = Transformer(spec, n).to(tdtype)
    if spec.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    return model


def _fill(
    model: nn.Module,
    full: Transformer,
    seed: int,
    device,
    pick: Callable[[str, torch.Tensor], list[tuple[str, torch.Tensor]]],
) -> None:
    """Draw every parameter of `full` (meta) as `_init_weights` would, and copy what `pick` returns
    (local name, tensor) into `model`: at most one full tensor is ever materialised."""
    local = dict(model.named_parameters())
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in full.named_parameters():
            t = torch.empty(p.shape, dtype=p.dtype, device=device)
            init_parameter(name, t, full.spec, g)
            for local_name, part in pick(name, t):
                local[local_name].copy_(part)


def build_tp_model(spec: ModelSpec, tp: int, rank: int, group=None, **build) -> Transformer:
    """rank's shard of `build_model(spec, **build)` (dtype, device, num_layers, seed, max_position), its
    row-parallel projections all-reducing over `group` (the default group if None). Call `allocate_kv` as
    for a one-process model: the pools hold this rank's KV heads."""
    n, quant, tdtype, device, seed, max_position = build_options(spec, **build)
    local_spec = tp_spec(spec, tp)
    h, vl = spec.hidden_size, vocab_shard(spec.vocab_size, tp)
    with torch.device("meta"):
        model = Transformer(local_spec, n).to(tdtype)
        model.lm_head = Dense(h, vl, bias=False).to(tdtype)
    model = model.to_empty(device=device)
    shard = tp_shard(spec, tp, rank)

    def pick(name: str, t: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        out = [(name, shard(name, t))]
        if name == "embed.weight" and spec.tie_embeddings:
            out.append(("lm_head.weight", shard("lm_head.weight", t)))
        return out

    _fill(model, _meta_model(spec, n, tdtype), seed, device, pick)
    finish_model(model, quant, max_position)
    for blk in model.layers:
        blk.attn.wo = AllReduce(blk.attn.wo, group)
        blk.mlp.down = AllReduce(blk.mlp.down, group)
    model.lm_head = VocabParallelHead(model.lm_head, spec.vocab_size, tp, group)
    return model.eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------ pipeline
def stage_layers(num_layers: int, pp: int, stage: int) -> range:
    """The layers of `stage`: contiguous, as even as possible, earlier stages one more when uneven."""
    if not 1 <= pp <= num_layers:
        raise ConfigError(f"pp={pp} needs at least one layer per stage ({num_layers} layers); lower pp")
    base, extra = divmod(num_layers, pp)
    start = stage * base + min(stage, extra)
    return range(start, start + base + (stage < extra))


class PipelineStage(Transformer):
    """One stage of a pipeline: the embedding (first stage), its layers, the final norm and LM head (last
    stage). `forward` receives the (hidden, residual) pair from the previous rank, sends its own to the
    next, and returns the logits on the last stage (a [rows, 1] zero tensor elsewhere)."""

    def __init__(self, spec: ModelSpec, layers: range, pp: int, stage: int, ranks: list[int], group) -> None:
        super().__init__(spec, layers.stop)
        self.layers = nn.ModuleList(self.layers[i] for i in layers)
        self.layer_ids, self.num_layers = layers, len(layers)
        self.first, self.last = stage == 0, stage == pp - 1
        self.prev = None if self.first else ranks[stage - 1]
        self.next = None if self.last else ranks[stage + 1]
        self.group = group
        self.rope_bases = sorted({blk.attn.rope_base for blk in self.layers})

    def forward(self, tokens: torch.Tensor, lay, logits_index: torch.Tensor | None = None) -> torch.Tensor:
        t = tokens.shape[0]
        if self.first:
            x, residual = self.embed(tokens), None
            if self.embed_scale != 1.0:
                x = x * self.embed_scale
        else:
            pair = self.embed.weight.new_empty((2, t, self.spec.hidden_size))
            dist.recv(pair, self.prev, group=self.group)
            x, residual = pair[0], pair[1]
        for blk, (k_pool, v_pool) in zip(self.layers, self.kv, strict=True):
            x, residual = blk(x, residual, lay, self.ropes, k_pool, v_pool)
        if not self.last:
            dist.send(torch.stack([x, residual]), self.next, group=self.group)
            rows = t if logits_index is None else logits_index.shape[0]
            return x.new_zeros((rows, 1))
        return self.logits(x, residual, logits_index)


def build_stage_model(
    spec: ModelSpec, pp: int, stage: int, ranks: list[int] | None = None, group=None, **build
) -> PipelineStage:
    """Stage `stage` of `pp` of `build_model(spec, **build)`: its layers' weights exactly the one-process
    model's. `ranks[s]` is the global rank of stage s (default: s)."""
    if spec.is_mla:
        raise ConfigError(f"pipeline stages in the engine cover standard attention; {spec.name} is MLA")
    n, quant, tdtype, device, seed, max_position = build_options(spec, **build)
    layers = stage_layers(n, pp, stage)
    with torch.device("meta"):
        model = PipelineStage(spec, layers, pp, stage, ranks or list(range(pp)), group).to(tdtype)
    model = model.to_empty(device=device)
    if spec.tie_embeddings:
        model.lm_head.weight = model.embed.weight

    def pick(name: str, t: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        if name.startswith("layers."):
            _, i, rest = name.split(".", 2)
            return [(f"layers.{int(i) - layers.start}.{rest}", t)] if int(i) in layers else []
        return [(name, t)]  # embedding, final norm, LM head: kept on every stage (small next to the layers)

    _fill(model, _meta_model(spec, n, tdtype), seed, device, pick)
    finish_model(model, quant, max_position)
    return model.eval().requires_grad_(False)
