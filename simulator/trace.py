"""A request trace read from a file: arrival times and token counts as numpy arrays.

Formats: CSV with a header (vidur/splitwise processed traces, the Azure LLM inference trace) and
Mooncake JSONL (one JSON object per line, timestamps in ms, optional `hash_ids`). Rows are read one at a
time into numpy chunks, so a million-row trace costs about its arrays' size, not a Python object per
cell. Every row is checked as it is read; a bad one stops the read with its line number and the fix.

Rule for token counts: every row must have a prompt and an output of 1 to MAX_TRACE_TOKENS tokens.
A row outside that is refused (not dropped), so what is simulated is always every row of the file.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import ConfigError, cut
from simulator.resources import shipped

TRACE_DIR = shipped("traces")
BUILTIN_TRACES = {
    "conversation": "splitwise_conv.csv",
    "code": "splitwise_code.csv",
    "summarization": "arxiv_summarization.csv",
}
# Column names used by the common public traces: vidur/splitwise processed CSVs, the Azure LLM
# inference trace (TIMESTAMP, ContextTokens, GeneratedTokens), Mooncake JSONL (timestamp in ms).
ARRIVAL_COLUMNS = ("arrived_at", "arrival_time", "arrival_s", "TIMESTAMP", "timestamp")
PROMPT_COLUMNS = ("num_prefill_tokens", "prompt_tokens", "ContextTokens", "input_length", "input_tokens")
OUTPUT_COLUMNS = ("num_decode_tokens", "output_tokens", "GeneratedTokens", "output_length")
# The longest context any published model accepts is 10M tokens (Llama 4 Scout); a count above it is
# a corrupt row, and bounding it keeps every sum of token counts far inside int64.
MAX_TRACE_TOKENS = 10_000_000
CHUNK_ROWS = 1 << 14  # rows parsed per numpy conversion: a few MB of strings, enough to amortise numpy's call


class HashIds:
    """Mooncake `hash_ids` of every row, flat: row i's ids are `ids[offsets[i]:offsets[i + 1]]`."""

    __slots__ = ("ids", "offsets")

    def __init__(self, ids: np.ndarray, offsets: np.ndarray) -> None:
        self.ids, self.offsets = ids, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, row: int) -> list[int]:
        return self.ids[self.offsets[row] : self.offsets[row + 1]].tolist()

    def take(self, rows: np.ndarray) -> HashIds:
        """The ids of `rows`, in that order."""
        counts = np.diff(self.offsets)[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        # position k of the new flat array is old position start(row) + (k - new start(row))
        at = np.arange(offsets[-1]) + np.repeat(self.offsets[rows] - offsets[:-1], counts)
        return HashIds(self.ids[at], offsets)


@dataclass
class Trace:
    arrival_s: np.ndarray | None
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    source: str
    hash_ids: HashIds | None = None  # Mooncake: one id per 512-token block of the prompt


def hourly_counts(name_or_path: str) -> list[float]:
    """Arrivals in each hour of a trace, counted from its first arrival (a rate schedule's hourly counts)."""
    t = read_trace(name_or_path)
    if t.arrival_s is None or not len(t.arrival_s):
        raise ConfigError(
            f"workload.schedule.from_trace {name_or_path!r}: the trace has no arrival times "
            f"(a column named one of {', '.join(ARRIVAL_COLUMNS)}); give requests_per_hour instead"
        )
    hours = ((t.arrival_s - t.arrival_s.min()) // 3600.0).astype(np.int64)
    return [float(c) for c in np.bincount(hours)]


def read_trace(name_or_path: str) -> Trace:
    """A built-in trace by name or a CSV/JSONL file with arrival and token-count columns."""
    builtin = name_or_path in BUILTIN_TRACES
    path = TRACE_DIR / BUILTIN_TRACES[name_or_path] if builtin else Path(name_or_path).expanduser()
    if not builtin and _measured_run(path):
        return _measured_trace(name_or_path)
    if not path.exists():
        raise ConfigError(
            f"workload.trace {name_or_path!r} not found; use {', '.join(BUILTIN_TRACES)} or a CSV/JSONL path"
        )
    src = str(path)
    if path.is_dir():
        raise ConfigError(f"{src}: workload.trace: is a folder; give a CSV or JSONL file inside it")
    if not path.is_file():  # a device or a pipe (/dev/zero would be read forever)
        raise ConfigError(f"{src}: workload.trace: is not a regular file; give a CSV or JSONL file")
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            columns = _read_any(f, path.suffix.lower(), src)
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{src}: workload.trace: not UTF-8 text (byte {e.object[e.start]:#04x}); "
            "give a CSV or JSONL trace saved as UTF-8"
        ) from None
    except OSError as e:
        raise ConfigError(f"{src}: workload.trace: cannot be read ({e.strerror}); check the path") from None
    return _trace(columns, src)


# a measured run's JSON (simulator/measured.py) names one of these in its first few KB
MEASURED_MARKS = ('"num_prompts"', '"benchmarks"', '"time_to_first_token"', '"metrics"')


def _measured_run(path: Path) -> bool:
    """Whether the file is a benchmark tool's result (simulator/measured.py), judged by its content; a path
    ending in `#K` names one run of a file of several."""
    if not path.exists() and "#" in path.name:
        base = path.with_name(path.name.rpartition("#")[0])
        return base.is_file() and _measured_run(base)
    if not path.is_file():
        return False
    try:
        with path.open(encoding="utf-8-sig") as f:
            head = f.read(4096)
    except (OSError, UnicodeDecodeError):
        return False  # (read_trace says why, in its own words)
    return head.lstrip().startswith("{") and any(m in head for m in MEASURED_MARKS)


def _measured_trace(name: str) -> Trace:
    """A measured run as a trace: its requests' lengths, and their send times where the file has them."""
    from simulator.measured import one_run

    run = one_run(name)
    if not run.per_request:
        raise ConfigError(
            f"{run.source}: workload.trace: a {run.format} result without per-request lengths; rerun the "
            "benchmark with per-request output (vLLM: --save-detailed), or compare it with `validate`"
        )
    return Trace(run.start_s, run.prompt_tokens, run.output_tokens, run.source)


@dataclass(slots=True)
class _Columns:
    """What a reader hands back: the chosen columns' values, in file order."""

    prompt: np.ndarray
    output: np.ndarray
    arrival: np.ndarray | None
    hash_ids: HashIds | None


FORMATS = (
    "a CSV with a header row (.csv), a JSON array of objects (.json), JSON Lines (.jsonl), or a benchmark's "
    "result (vLLM bench serve --save-detailed, GuideLLM, AIPerf profile_export.jsonl)"
)


def _read_any(f, suffix: str, src: str) -> _Columns:
    """The reader the file's name and content call for; JSON is never parsed as CSV."""
    if suffix == ".jsonl":
        return _read_jsonl(jsonl_rows(f, src), src)
    if suffix == ".json":
        return _read_json(f.read(), src)
    head = f.read(1)
    while head.isspace():
        head = f.read(1)
    if head in ("[", "{"):  # JSON under another name: say what to call it rather than guess
        raise ConfigError(
            f"{src}: workload.trace: looks like JSON in a {suffix or 'nameless'} file; give {FORMATS}"
        )
    f.seek(0)
    return _read_csv(f, src)


def _read_json(text: str, src: str) -> _Columns:
    """A .json trace: a JSON array of objects, or JSON Lines (one object per line)."""
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # more than one value: JSON Lines
            return _read_jsonl(jsonl_rows(io.StringIO(text), src), src)
        raise ConfigError(
            f"{src}: workload.trace: not JSON (line {e.lineno}: {e.msg}); give {FORMATS}"
        ) from None
    if isinstance(rows, dict) and _pick(list(rows), PROMPT_COLUMNS) is not None:
        rows = [rows]  # JSON Lines of one request
    if not isinstance(rows, list):
        raise ConfigError(
            f"{src}: workload.trace: a JSON {type(rows).__name__}, not an array of requests; give {FORMATS}"
        )
    return _read_jsonl(_array_rows(rows, src), src, unit="item")


def _array_rows(rows: list, src: str) -> Iterator[tuple[int, dict]]:
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise ConfigError(
                f"{src}: item {i}: a {type(row).__name__}, not a JSON object; "
                'write an array of objects ([{"timestamp": ..., "input_length": ..., "output_length": ...}])'
            )
        yield i, row


def _pick(cols: list[str], names: tuple[str, ...]) -> str | None:
    lower = {c.lower(): c for c in cols}
    for n in names:
        if n.lower() in lower:
            return lower[n.lower()]
    return None


def _need_columns(cols: list[str], src: str) -> tuple[str, str, str | None]:
    pc, oc, ac = _pick(cols, PROMPT_COLUMNS), _pick(cols, OUTPUT_COLUMNS), _pick(cols, ARRIVAL_COLUMNS)
    if pc is None or oc is None:
        # every alias, and what was found cut short (a JSON file's "header" is its whole content)
        found = ", ".join(_shown(c) for c in cols[:8]) + (
            f" and {len(cols) - 8} more" if len(cols) > 8 else ""
        )
        raise ConfigError(
            f"{src}: needs a prompt-length column (one of {', '.join(PROMPT_COLUMNS)}) and an output-length "
            f"column (one of {', '.join(OUTPUT_COLUMNS)}), and optionally an arrival time (one of "
            f"{', '.join(ARRIVAL_COLUMNS)}); found {found or 'no columns'}"
        )
    return pc, oc, ac


class _Growing:
    """A numpy column that grows in place: `ndarray.resize` reallocs, which for large blocks remaps pages
    instead of copying, so the peak stays near the column's size (concatenating chunks would double it)."""

    def __init__(self, dtype: type) -> None:
        self.values = np.empty(CHUNK_ROWS, dtype=dtype)
        self.n = 0

    def extend(self, chunk: np.ndarray) -> None:
        end = self.n + len(chunk)
        if end > len(self.values):
            self.values.resize(max(end, 2 * len(self.values)), refcheck=False)  # (no views of it exist)
        self.values[self.n : end] = chunk
        self.n = end

    def done(self) -> np.ndarray:
        self.values.resize(self.n, refcheck=False)
        return self.values


class _Chunks:
    """Cells of the chosen columns, gathered row by row and turned into numpy arrays a chunk at a time."""

    def __init__(self, names: tuple[str, str, str | None], src: str, unit: str = "line") -> None:
        self.names, self.src, self.unit = names, src, unit
        self.cells: list[list] = [[], [], []]
        self.lines: list[int] = []
        self.columns = (_Growing(np.int64), _Growing(np.int64), _Growing(np.float64))
        self.time_kind: str | None = None  # "seconds" or "dates", fixed by the first chunk

    def add(self, line: int, prompt, output, arrival) -> None:
        self.lines.append(line)
        self.cells[0].append(prompt)
        self.cells[1].append(output)
        self.cells[2].append(arrival)
        if len(self.lines) >= CHUNK_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.lines:
            return
        for k in (0, 1):
            self.columns[k].extend(self._tokens(self.cells[k], self.names[k]))
        if self.names[2] is not None:
            self.columns[2].extend(self._times(self.cells[2], self.names[2]))
        self.cells, self.lines = [[], [], []], []

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        self.flush()
        prompt, output, arrival = (c.done() for c in self.columns)
        return prompt, output, arrival if self.names[2] is not None else None

    def _where(self, i: int, column: str) -> str:
        return f"{self.src}: {self.unit} {self.lines[i]}: {column}"

    def _tokens(self, cells: list, column: str) -> np.ndarray:
        try:
            v = np.array(cells, dtype=np.float64)
        except (ValueError, TypeError, OverflowError):
            i = next(i for i, c in enumerate(cells) if _not_a_number(c))
            raise ConfigError(
                f"{self._where(i, column)}: {_shown(cells[i])} is not a token count; "
                "write a whole number of tokens"
            ) from None
        bad = np.flatnonzero(~((v >= 1) & (v <= MAX_TRACE_TOKENS)))  # (NaN fails both)
        if len(bad):
            i = int(bad[0])
            raise ConfigError(
                f"{self._where(i, column)}: {_shown(cells[i])} tokens is outside 1..{MAX_TRACE_TOKENS:,}; "
                "fix the count or remove the row (every row of a trace is simulated)"
            )
        return v.astype(np.int64)  # truncates as int(float(cell)) does

    def _times(self, cells: list, column: str) -> np.ndarray:
        try:
            t, kind = np.array(cells, dtype=np.float64), "seconds"
            if column == "timestamp":
                t = t / 1000.0  # Mooncake writes milliseconds
        except (ValueError, TypeError, OverflowError):
            t, kind = self._dates(cells, column), "dates"
        if self.time_kind is not None and kind != self.time_kind:
            raise ConfigError(
                f"{self._where(0, column)}: {_shown(cells[0])} is in {kind} where earlier rows are in "
                f"{self.time_kind}; write every arrival time the same way"
            )
        self.time_kind = kind
        bad = np.flatnonzero(~(np.isfinite(t) & (t >= 0)))
        if len(bad):
            i = int(bad[0])
            raise ConfigError(
                f"{self._where(i, column)}: {_shown(cells[i])} is not a finite time >= 0; "
                "write arrival times as seconds from the start (or dates), or remove the row"
            )
        return t

    def _dates(self, cells: list, column: str) -> np.ndarray:
        """Dates as seconds since the epoch (the Azure trace's TIMESTAMP)."""
        try:
            with warnings.catch_warnings():  # numpy applies a zone's offset (to UTC) and warns that it did
                warnings.filterwarnings("ignore", "no explicit representation of timezones", UserWarning)
                stamps = np.array(cells, dtype="datetime64[us]")
        except (ValueError, TypeError, OverflowError):
            stamps = None
        bad = (
            [int(i) for i in np.flatnonzero(np.isnat(stamps))]
            if stamps is not None
            else [i for i, c in enumerate(cells) if _not_a_number(c) and _not_a_date(c)]
        )
        if bad:
            raise ConfigError(
                f"{self._where(bad[0], column)}: {_shown(cells[bad[0]])} is neither seconds nor a date; "
                "write arrival times as seconds or ISO dates (2023-11-16 18:15:46.680)"
            )
        return stamps.astype(np.int64) / 1e6


def _not_a_number(cell) -> bool:
    try:
        float(cell)
    except (ValueError, TypeError, OverflowError):
        return True
    return False


def _not_a_date(cell) -> bool:
    try:
        np.datetime64(cell, "us")
    except (ValueError, TypeError, OverflowError):
        return True
    return False


def _shown(cell) -> str:
    return cut(repr(cell), 40)


def _read_csv(f, src: str) -> _Columns:
    try:
        return _csv_columns(f, src)
    except csv.Error as e:
        raise ConfigError(
            f"{src}: line {getattr(e, 'line', '?')}: not a CSV row ({e}); "
            "give a comma-separated text file with a header row"
        ) from None


def _csv_columns(f, src: str) -> _Columns:
    reader = csv.reader(f)
    header = next((row for row in reader if row), [])
    names = _need_columns(header, src)
    at = [header.index(n) if n is not None else None for n in names]
    pi, oi, ai = at
    hi = header.index("hash_ids") if "hash_ids" in header else None
    ids = _HashRows()
    chunks = _Chunks(names, src)
    width = len(header)
    row = None
    try:
        for row in reader:
            if not row:
                continue  # a blank line (csv.DictReader skips these too)
            if len(row) != width:
                raise ConfigError(
                    f"{src}: line {reader.line_num}: {len(row)} fields where the header has {width} "
                    f"({', '.join(header)}); give every row one value per column"
                )
            chunks.add(reader.line_num, row[pi], row[oi], row[ai] if ai is not None else None)
            if hi is not None:
                ids.add(_hash_text(row[hi], f"{src}: line {reader.line_num}: hash_ids"))
    except csv.Error as e:
        e.line = reader.line_num + (row is not None)  # (csv.Error fails before line_num moves on)
        raise
    prompt, output, arrival = chunks.arrays()
    return _Columns(prompt, output, arrival, ids.done() if hi is not None else None)


def jsonl_rows(f, src: str) -> Iterator[tuple[int, dict]]:
    for line_no, line in enumerate(f, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(
                f"{src}: line {line_no}: not JSON ({e.msg}); write one JSON object per line"
            ) from None
        except (ValueError, RecursionError) as e:  # a number of over 4,300 digits; arrays in arrays...
            why = "nested too deeply" if isinstance(e, RecursionError) else "a number too long to read"
            raise ConfigError(
                f"{src}: line {line_no}: not JSON ({why}); write one JSON object per line"
            ) from None
        if not isinstance(row, dict):
            raise ConfigError(
                f"{src}: line {line_no}: a {type(row).__name__}, not a JSON object; "
                'write one object per line ({"timestamp": ..., "input_length": ..., "output_length": ...})'
            )
        yield line_no, row


def _read_jsonl(rows: Iterator[tuple[int, dict]], src: str, unit: str = "line") -> _Columns:
    """Rows of JSON objects (JSON Lines, or a JSON array's items)."""
    first = next(rows, None)
    names = _need_columns(list(first[1]) if first else [], src)
    chunks = _Chunks(names, src, unit)
    hash_key = "hash_ids" if first is not None and "hash_ids" in first[1] else None
    ids = _HashRows()
    for line_no, row in _chain(first, rows):
        cells = []
        for name in names:
            if name is None:
                cells.append(None)
                continue
            if name not in row:
                raise ConfigError(f"{src}: {unit} {line_no}: {name}: missing; give it on every {unit}")
            value = row[name]
            date = name == names[2] and isinstance(value, str)  # arrival times may be dates
            if isinstance(value, bool) or not (date or isinstance(value, (int, float))):
                raise ConfigError(
                    f"{src}: {unit} {line_no}: {name}: {_shown(value)} is not a number; write a JSON number"
                )
            cells.append(value)
        chunks.add(line_no, *cells)
        if hash_key is not None:
            ids.add(_hash_list(row.get(hash_key, []), f"{src}: {unit} {line_no}: hash_ids"))
        elif "hash_ids" in row:  # read only when the first row has them: the others' would be dropped
            raise ConfigError(
                f"{src}: {unit} {line_no}: hash_ids: given here but not on {unit} {first[0]}; give them on the "
                f"first {unit} too (an empty list where a request shares nothing), or on no {unit}"
            )
    prompt, output, arrival = chunks.arrays()
    return _Columns(prompt, output, arrival, ids.done() if hash_key is not None else None)


def _chain(first, rows):
    if first is not None:
        yield first
        yield from rows


_HASH_FIX = "write a list of non-negative integers, one per 512-token block (or leave the field out)"


def _hash_list(value, where: str) -> list[int]:
    """A JSONL row's `hash_ids`: a list of integers from 0 to 2**62 (prefix-block ids)."""
    if not isinstance(value, list):
        raise ConfigError(f"{where}: {_shown(value)} is not a list; {_HASH_FIX}")
    for x in value:
        if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < 2**62:
            raise ConfigError(f"{where}: {_shown(x)} is not a non-negative integer; {_HASH_FIX}")
    return value


def _hash_text(text: str, where: str) -> list[int]:
    """A CSV cell's `hash_ids`: "[1, 2, 3]" or "1 2 3"."""
    values = []
    for x in text.strip().strip("[]").replace(",", " ").split():
        try:
            values.append(int(x))
        except ValueError:
            raise ConfigError(f"{where}: {_shown(x)} is not an integer; {_HASH_FIX}") from None
    return _hash_list(values, where)


class _HashRows:
    """Rows' hash ids gathered flat in machine integers (a list of small arrays per row costs ~100 B a row)."""

    def __init__(self) -> None:
        self.ids, self.ends = array("q"), array("q")

    def add(self, ids: list[int]) -> None:
        self.ids.extend(ids)
        self.ends.append(len(self.ids))

    def done(self) -> HashIds:
        offsets = np.zeros(len(self.ends) + 1, dtype=np.int64)
        offsets[1:] = np.frombuffer(self.ends, dtype=np.int64)
        return HashIds(np.frombuffer(self.ids, dtype=np.int64).copy(), offsets)


def _trace(columns: _Columns, src: str) -> Trace:
    prompt, output, arrival = columns.prompt, columns.output, columns.arrival
    if not len(prompt):
        raise ConfigError(
            f"{src}: workload.trace: read 0 data rows (the file has a header or nothing); "
            "give a trace with at least one request row"
        )
    hashes = columns.hash_ids
    if arrival is None:
        return Trace(None, prompt, output, src, hashes)
    arrival -= arrival.min()  # (in place: the column is ours)
    if np.all(arrival[1:] >= arrival[:-1]):  # in time order, as traces are: a stable sort changes nothing
        return Trace(arrival, prompt, output, src, hashes)
    order = np.argsort(arrival, kind="stable")
    return Trace(
        arrival[order], prompt[order], output[order], src, hashes.take(order) if hashes is not None else None
    )
