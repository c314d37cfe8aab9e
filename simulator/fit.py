"""What fits: a model on GPUs × weight formats × GPUs per replica, by the memory plan the simulator enforces:
whether it fits, the KV-cache room left, the batch that room holds at a given context, and for a setup that
does not fit, the smallest change that would."""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import ConfigError
from core.hardware import load_profile, profile_names, weight_format
from core.model_spec import load_model
from simulator.cluster import plan_groups
from simulator.memory import GIB
from simulator.scenario import parse_scenario

DTYPES = ("bf16", "fp8", "int8", "int4")  # widest first: the first that fits loses the least
GPU_COUNTS = (1, 2, 4, 8)
# any workload will do: memory depends on the model and serving settings only
_WORKLOAD = {"arrival": {"process": "constant", "rate_per_s": 1.0}, "num_requests": 1}


@dataclass(slots=True)
class FitRow:
    gpu: str
    weight_dtype: str
    gpus: int
    fits: bool
    weights_gib_per_gpu: float = float("nan")
    kv_gib_per_gpu: float = float("nan")
    kv_tokens: int = 0
    max_batch: int = 0  # sequences of `context_tokens` the KV room holds at once
    note: str = ""  # why not (invalid sharding), or the smallest change that fits
    format_note: str = ""  # the format runs through an engine's fallback on this GPU, or engines refuse it
    refused: bool = False  # engines refuse the format on this GPU: one row, no GPU count tried


def what_fits(
    model: str,
    gpus: list[str] | None = None,
    dtypes: tuple[str, ...] = DTYPES,
    counts: tuple[int, ...] = GPU_COUNTS,
    context_tokens: int = 4096,
    serving: dict | None = None,
) -> list[FitRow]:
    """Every (GPU, weight format, GPUs per replica) for `model`, in that order."""
    if context_tokens < 1:
        raise ConfigError(f"fit: --context: {context_tokens} tokens; give 1 or more")
    spec = load_model(model)
    rows = []
    for gpu in gpus or profile_names():
        profile = load_profile(gpu)
        for dtype in dtypes:
            refused = profile.formats.unsupported.get(dtype) if profile.formats else None
            if refused:  # the GPU has no units for it and engines refuse it: not offered, one row says why
                rows.append(
                    FitRow(gpu, dtype, counts[0], False, format_note=f"refused: {refused}", refused=True)
                )
                continue
            fallback = weight_format(profile, dtype)
            for n in counts:
                row = _row(model, spec, gpu, dtype, n, context_tokens, serving or {})
                if fallback:  # say what runs instead: "fallback: runs as fp16", "fallback: weight-only"
                    row.format_note = "fallback: " + fallback.split(": ", 1)[1].split(":", 1)[0]
                rows.append(row)
    for r in rows:
        if not r.fits and not r.note:
            r.note = smallest_change(r, rows)
    return rows


def _row(model: str, spec, gpu: str, dtype: str, n: int, context: int, serving: dict) -> FitRow:
    row = FitRow(gpu, dtype, n, False)
    try:
        sc = parse_scenario(
            {
                "model": model,
                "hardware": {"gpu": gpu, "gpus_per_replica": n},
                "serving": serving | {"precision": serving.get("precision", {}) | {"weight_dtype": dtype}},
                "workload": _WORKLOAD,
            },  # fmt: skip
            "fit",
        )
        mem = plan_groups(sc, spec)[0].mem
    except ConfigError as e:  # e.g. heads that do not divide over n GPUs
        row.note = f"cannot shard: {str(e).split(': ', 1)[-1]}"
        return row
    row.fits = mem.fits
    row.weights_gib_per_gpu, row.kv_gib_per_gpu = mem.weight_bytes / GIB, max(mem.kv_bytes, 0.0) / GIB
    row.kv_tokens = mem.kv_tokens
    row.max_batch = mem.kv_tokens // context
    return row


def smallest_change(r: FitRow, rows: list[FitRow]) -> str:
    """The fewest more GPUs of the same kind, or the widest weight format that fits on these GPUs."""
    more = min((x.gpus for x in rows if x.fits and x.gpu == r.gpu and x.weight_dtype == r.weight_dtype
                and x.gpus > r.gpus), default=None)  # fmt: skip
    order = list(DTYPES)
    narrower = next((x.weight_dtype for x in sorted(rows, key=lambda x: order.index(x.weight_dtype))
                     if x.fits and x.gpu == r.gpu and x.gpus == r.gpus
                     and order.index(x.weight_dtype) > order.index(r.weight_dtype)), None)  # fmt: skip
    options = ([f"{more} GPUs per replica"] if more else []) + ([f"{narrower} weights"] if narrower else [])
    if options:
        return "fits with " + " or ".join(options)
    both = min((x for x in rows if x.fits and x.gpu == r.gpu), default=None,
               key=lambda x: (x.gpus, order.index(x.weight_dtype)))  # fmt: skip
    if both is not None:
        return f"fits with {both.gpus} GPUs per replica and {both.weight_dtype} weights"
    return "nothing tried on this GPU fits; use a GPU with more memory"


FIT_HEAD = [
    "GPU",
    "weights",
    "GPUs",
    "fits",
    "weights GiB/GPU",
    "KV GiB/GPU",
    "KV tokens",
    "max batch",
    "note",
]


def fit_cells(r: FitRow) -> list[str]:
    """A row as table cells."""
    note = "; ".join(x for x in (r.format_note, r.note) if x)
    if r.refused:
        return [r.gpu, r.weight_dtype, "—", "no", "—", "—", "—", "—", note]
    if not r.fits and r.weights_gib_per_gpu != r.weights_gib_per_gpu:  # could not be planned
        return [r.gpu, r.weight_dtype, str(r.gpus), "no", "—", "—", "—", "—", note]
    return [
        r.gpu, r.weight_dtype, str(r.gpus), "yes" if r.fits else "no", f"{r.weights_gib_per_gpu:.1f}",
        f"{r.kv_gib_per_gpu:.1f}" if r.fits else "—", f"{r.kv_tokens:,}" if r.fits else "—",
        f"{r.max_batch:,}" if r.fits else "—", note,
    ]  # fmt: skip


def format_fit(model: str, rows: list[FitRow], context_tokens: int) -> str:
    """The table for a terminal."""
    cells = [FIT_HEAD, *(fit_cells(r) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(FIT_HEAD) - 1)]
    lines = [
        f"{model}: what fits (max batch: sequences of {context_tokens:,} tokens the KV room holds at once)"
    ]
    for c in cells:
        lines.append("  ".join(x.rjust(w) if i in (2, 4, 5, 6, 7) else x.ljust(w)
                               for i, (x, w) in enumerate(zip(c, widths))) + "  " + c[-1])  # fmt: skip
    return "\n".join(line.rstrip() for line in lines)
