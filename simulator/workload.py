"""Requests from a workload: arrival times and prompt/output lengths as numpy arrays.

Arrivals: Poisson, gamma (burstiness by coefficient of variation), constant, or a trace's own times.
Lengths: fixed, uniform, lognormal, exponential, or a trace's columns. Each aspect draws from its
own stream spawned from the scenario seed, so changing one setting does not reshuffle the others.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulator.errors import ConfigError
from simulator.scenario import Exponential, Fixed, FromTrace, Lognormal, Uniform, Workload

TRACE_DIR = Path(__file__).parent / "traces"
BUILTIN_TRACES = {
    "conversation": "splitwise_conv.csv",
    "code": "splitwise_code.csv",
    "summarization": "arxiv_summarization.csv",
}
# Column names used by the common public traces: vidur/splitwise processed CSVs, the Azure LLM
# inference trace (TIMESTAMP, ContextTokens, GeneratedTokens), Mooncake JSONL (timestamp in ms).
ARRIVAL_COLUMNS = ("arrived_at", "arrival_time", "arrival_s", "TIMESTAMP", "timestamp")
PROMPT_COLUMNS = ("num_prefill_tokens", "prompt_tokens", "ContextTokens", "input_length", "input_tokens")
OUTPUT_COLUMNS = ("num_decode_tokens", "output_tokens", "GeneratedTokens", "output_length", "output_tokens")
DEFAULT_REQUESTS = 1000


@dataclass
class Requests:
    """The generated requests, sorted by arrival (seconds from 0)."""

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray

    def __len__(self) -> int:
        return len(self.arrival_s)


@dataclass
class Trace:
    arrival_s: np.ndarray | None
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    source: str


def _pick(cols: list[str], names: tuple[str, ...]) -> str | None:
    lower = {c.lower(): c for c in cols}
    for n in names:
        if n.lower() in lower:
            return lower[n.lower()]
    return None


def _times(values: list[str], column: str, source: str) -> np.ndarray:
    try:
        t = np.array([float(v) for v in values])
        if column == "timestamp":
            t = t / 1000.0  # Mooncake writes milliseconds
    except ValueError:
        try:
            t = np.array(values, dtype="datetime64[us]").astype(np.int64) / 1e6
        except ValueError:
            raise ConfigError(
                f"{source}: column {column!r} has values that are neither seconds nor dates"
            ) from None
    return t - t.min()


def read_trace(name_or_path: str) -> Trace:
    """A built-in trace by name or a CSV/JSONL file with arrival and token-count columns."""
    path = TRACE_DIR / BUILTIN_TRACES[name_or_path] if name_or_path in BUILTIN_TRACES else Path(name_or_path)
    if not path.exists():
        raise ConfigError(
            f"workload.trace {name_or_path!r} not found; use {', '.join(BUILTIN_TRACES)} or a CSV/JSONL path"
        )
    src = str(path)
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        cols = list(rows[0]) if rows else []
        table = {c: [str(r.get(c, "")) for r in rows] for c in cols}
    else:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            cols = list(reader.fieldnames or [])
            table = {c: [] for c in cols}
            for r in reader:
                for c in cols:
                    table[c].append(r[c])
    pc, oc, ac = _pick(cols, PROMPT_COLUMNS), _pick(cols, OUTPUT_COLUMNS), _pick(cols, ARRIVAL_COLUMNS)
    if pc is None or oc is None:
        raise ConfigError(
            f"{src}: needs a prompt-length column ({PROMPT_COLUMNS[0]}) and an output-length column "
            f"({OUTPUT_COLUMNS[0]}); found {', '.join(cols) or 'no columns'}"
        )
    if not table[pc]:
        raise ConfigError(f"{src}: the trace has no rows")
    try:
        prompt = np.array([int(float(v)) for v in table[pc]], dtype=np.int64)
        output = np.array([int(float(v)) for v in table[oc]], dtype=np.int64)
    except ValueError as e:
        raise ConfigError(f"{src}: token counts must be numbers ({e})") from None
    arrival = _times(table[ac], ac, src) if ac else None
    keep = (prompt >= 1) & (output >= 1)
    if arrival is not None:
        order = np.argsort(arrival[keep], kind="stable")
        return Trace(arrival[keep][order], prompt[keep][order], output[keep][order], src)
    return Trace(None, prompt[keep], output[keep], src)


def _loop(values: np.ndarray, n: int) -> np.ndarray:
    reps = -(-n // len(values))
    return np.tile(values, reps)[:n]


def _loop_times(t: np.ndarray, n: int) -> np.ndarray:
    """Repeat a trace's arrival times back to back, each pass starting one mean gap after the last."""
    period = t[-1] + (t[-1] / max(len(t) - 1, 1))
    reps = -(-n // len(t))
    return (t[None, :] + period * np.arange(reps)[:, None]).ravel()[:n]


def _lengths(spec, n: int, rng: np.random.Generator, trace_col: np.ndarray | None) -> np.ndarray:
    if isinstance(spec, Fixed):
        return np.full(n, spec.value, dtype=np.int64)
    if isinstance(spec, Uniform):
        return rng.integers(spec.min, spec.max + 1, size=n)
    if isinstance(spec, Lognormal):
        v = np.round(spec.median * np.exp(spec.sigma * rng.standard_normal(n)))
        return np.clip(v, spec.min, spec.max).astype(np.int64)
    if isinstance(spec, Exponential):
        return rng.geometric(1.0 / max(spec.mean, 1.0), size=n).astype(np.int64)
    if isinstance(spec, FromTrace):
        assert trace_col is not None
        return _loop(trace_col, n)
    raise ConfigError(f"unknown length distribution {spec!r}")


def _gaps(w: Workload, n: int, rng: np.random.Generator) -> np.ndarray:
    rate = w.arrival.rate_per_s
    if w.arrival.process == "poisson":
        return rng.exponential(1.0 / rate, size=n)
    if w.arrival.process == "gamma":
        shape = 1.0 / w.arrival.cv**2
        return rng.gamma(shape, 1.0 / (rate * shape), size=n)
    return np.full(n, 1.0 / rate)


def generate(w: Workload, seed: int) -> Requests:
    """Draw the requests of a workload; deterministic for a given seed."""
    arr_rng, p_rng, o_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    trace = read_trace(w.trace) if w.trace else None
    if w.arrival.process == "trace" and trace is not None and trace.arrival_s is None:
        raise ConfigError(
            f"workload.trace {w.trace!r} has no arrival times; use arrival.process poisson/gamma/constant"
        )

    if w.arrival.process == "trace":
        t0 = trace.arrival_s
        if w.arrival.rate_per_s:
            t0 = t0 * (len(t0) / max(t0[-1], 1e-9)) / w.arrival.rate_per_s
        if w.duration_s:
            per_pass = t0[-1] + t0[-1] / max(len(t0) - 1, 1)
            n = int(len(t0) * (w.duration_s / per_pass + 1)) + 1
            arrival = _loop_times(t0, n)
            arrival = arrival[arrival < w.duration_s]
        else:
            arrival = _loop_times(t0, w.num_requests or len(t0))
    else:
        if w.duration_s:
            est = int(w.duration_s * w.arrival.rate_per_s * 1.2 + 50)
            arrival = np.cumsum(_gaps(w, est, arr_rng))
            while arrival[-1] < w.duration_s:
                arrival = np.concatenate([arrival, arrival[-1] + np.cumsum(_gaps(w, est, arr_rng))])
            arrival = arrival[arrival < w.duration_s]
        else:
            n = w.num_requests or (len(trace.prompt_tokens) if trace else DEFAULT_REQUESTS)
            gaps = _gaps(w, n, arr_rng)
            gaps[0] = 0.0 if w.arrival.process == "constant" else gaps[0]
            arrival = np.cumsum(gaps)
    n = len(arrival)
    prompt = _lengths(w.prompt_tokens, n, p_rng, trace.prompt_tokens if trace else None)
    output = _lengths(w.output_tokens, n, o_rng, trace.output_tokens if trace else None)
    return Requests(np.asarray(arrival, dtype=float), prompt.astype(np.int64), output.astype(np.int64))
