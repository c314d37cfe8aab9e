"""Raw measurements as JSONL, one line per point, appended as they are taken.

The file is the sweep's memory: a rerun skips every key already present, so an interrupted
sweep resumes where it stopped. What was measured (GPU, model shapes, dtype, torch and CUDA) is
the store's identity: a `meta` line states it in full and every point carries its fingerprint,
so a point is reused only by a run of the same identity, even when the `meta` line is damaged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from calibrate.plan import point_key
from core.errors import ConfigError
from core.graphs import SERVING_GRAPHS, STEP_RUNNER_GRAPHS, GraphRule
from core.model_spec import ModelSpec

# The dtype the engine builds weights and KV in for every step and kernel timed (engine.model's default);
# GEMM points of other dtypes name theirs in their parameters.
ENGINE_DTYPE = "bf16"
# Identity keys a store written before fingerprints (its meta line only) can be checked on.
LEGACY_KEYS = ("gpu", "model", "device", "torch", "cuda")
# The CUDA graphs a store's whole steps ran through, by its meta line's `step_graphs`: engine/steps.py's
# StepRunner timed them on its own graphs until 2026-12-02 (a store that does not say), through the serving
# loop's Executor since (calibrate writes "serving"); a fit prices each store's steps by its own rule.
STEP_GRAPHS = {"step_runner": STEP_RUNNER_GRAPHS, "serving": SERVING_GRAPHS}
STEP_GRAPHS_NOW = "serving"  # how engine/steps.py's StepRunner times steps today (its default, serving=True)


def step_graphs_name(meta: dict) -> str:
    """The STEP_GRAPHS name a store's meta line records (a store that does not say timed on the step runner's)."""
    return meta.get("step_graphs", "step_runner")


def step_graphs(meta: dict) -> GraphRule | None:
    """The CUDA-graph rule the whole steps of a store with this meta line ran under (None on the CPU, where
    every step runs eagerly)."""
    if meta.get("device") == "cpu":
        return None
    name = step_graphs_name(meta)
    if name not in STEP_GRAPHS:
        raise ConfigError(f"step_graphs {name!r} in a measurement store: one of {', '.join(STEP_GRAPHS)}")
    return STEP_GRAPHS[name]


def model_fingerprint(spec: ModelSpec) -> str:
    """A hash of the shapes the engine builds from `spec` (name aside). Fields at their default are left
    out, so a field added to ModelSpec later keeps the fingerprints of stored measurements."""
    shape = {
        f.name: getattr(spec, f.name)
        for f in dataclasses.fields(spec)
        if f.name not in ("name", "config") and getattr(spec, f.name) != f.default
    }
    return _hash(shape)


def identity(gpu: str, device: str, spec: ModelSpec, versions: dict) -> dict:
    """What a measurement depends on: the GPU, the model's shapes, the dtype and the software that ran it."""
    return {
        "gpu": gpu,
        "device": device,
        "model": spec.name,
        "model_config": model_fingerprint(spec),
        "dtype": ENGINE_DTYPE,
        "torch": versions.get("torch", ""),
        "cuda": versions.get("cuda", ""),
    }


def fingerprint_of(ident: dict) -> str:
    return _hash(ident)


def _hash(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def describe(ident: dict) -> str:
    """'qwen2.5-0.5b on NVIDIA H100 80GB HBM3 (cuda, torch 2.11.0)' for messages."""
    sw = ", ".join(f"{k} {ident[k]}" for k in ("torch", "cuda") if ident.get(k))
    extra = ", ".join(x for x in (ident.get("device", ""), sw) if x)
    return f"{ident.get('model', '?')} on {ident.get('gpu', '?')}" + (f" ({extra})" if extra else "")


@dataclass(slots=True)
class Record:
    """One measured point: seconds (median) or a status saying why there is none."""

    key: str
    kind: str
    params: dict
    seconds: float | None
    status: str = "ok"  # ok | oom | error
    holdout: bool = False
    note: str = ""
    # of the identity it was measured under; empty in stores written before fingerprints
    fingerprint: str = ""
    # the engine code it ran (core.provenance.engine_code); empty in stores written before session 24
    engine: str = ""


def code_for(code: str | dict[str, str], kind: str) -> str:
    """The engine code of a point of `kind`: `code` itself, or its entry for the kind ("" where it has none)."""
    return code.get(kind, "") if isinstance(code, dict) else code


@dataclass
class Store:
    """Append-only JSONL store keyed by point key, of one identity."""

    path: Path
    records: dict[str, Record] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)  # the identity and the run's provenance (base, mode, driver)
    identity: dict = field(default_factory=dict)  # what was measured (see `identity()`)
    fingerprint: str = ""
    skipped_lines: int = 0
    # the engine code points added now ran (`add` stamps it), one for every kind or one per kind
    # (calibrate.plan.kind_engine_code); set by the sweep's caller
    engine: str | dict[str, str] = ""

    @classmethod
    def open(
        cls,
        path: Path,
        ident: dict | None = None,
        restart: bool = False,
        warn=None,
        provenance: dict | None = None,
    ) -> Store:
        """Read what is there and check it was measured as `ident` says (one clear line if not).

        Damaged lines (cut off by a kill, not UTF-8, not a point) are skipped and counted in one warning.
        Without `ident` (a refit, no device) the store's own meta line says what it holds."""
        warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if restart and path.exists():
                path.unlink()
            path.touch()
            raw = path.read_bytes()
            if raw and not raw.endswith(b"\n"):
                # a kill mid-write left half a line: end it, so the next point starts a line of its own
                with path.open("ab") as f:
                    f.write(b"\n")
        except OSError as e:
            raise ConfigError(
                f"{path}: cannot read or write measurements ({e.strerror or e}); pass --work-dir with a folder you can write"
            ) from None
        if not os.access(path, os.W_OK):
            raise ConfigError(
                f"{path}: cannot write measurements (permission denied); pass --work-dir with another folder"
            )
        store = cls(path)
        headers, records, bad = _parse(raw)
        store.skipped_lines = len(bad)
        store._adopt(headers, records, ident, provenance or {})
        if bad:  # after the identity check: a refused store is one line, not a warning and a line
            shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
            warn(
                f"{path}: {len(bad)} corrupt measurement line{'s' * (len(bad) > 1)} skipped (line {shown}); "
                "a rerun of python -m calibrate measures their points again"
            )
        return store

    def _adopt(
        self, headers: list[dict], records: list[Record], ident: dict | None, provenance: dict
    ) -> None:
        """Take the records that belong to the store's identity; refuse a store of another one."""
        header = next((h for h in headers if "fingerprint" in h), None)
        legacy = next((h for h in headers if "fingerprint" not in h), None) if header is None else None
        self.fingerprint = fingerprint_of(ident) if ident else (header or {}).get("fingerprint", "")
        if header is not None:
            self.identity = header.get("identity", {})
            self.meta = {**{k: v for k, v in header.items() if k not in ("kind", "identity", "fingerprint")},
                         **self.identity}  # fmt: skip
            if ident and header["fingerprint"] != self.fingerprint:
                raise self._refusal(self.identity, ident)
        elif legacy is not None:  # written before fingerprints: the meta line is all there is to check
            self.meta = {k: v for k, v in legacy.items() if k != "kind"}
            self.identity = {k: legacy[k] for k in LEGACY_KEYS if k in legacy}
            if ident and any(ident.get(k, v) != v for k, v in self.identity.items()):
                raise self._refusal(self.identity, ident)
        foreign = [
            r for r in records if r.fingerprint != self.fingerprint and (r.fingerprint or legacy is None)
        ]
        if foreign:
            raise self._foreign(foreign, header or legacy, ident)
        self.records = {r.key: r for r in records}
        if ident is None:
            return
        self.identity = dict(ident)
        if header is None and legacy is None:
            self.meta = {**provenance, **ident}
            self._append(self._header())
        elif legacy is not None:  # stamp the old points (their meta line matched) so the file is one format
            self.meta = {**self.meta, **ident}
            for r in self.records.values():
                r.fingerprint = self.fingerprint
            self._rewrite()

    def _refusal(self, held: dict, ident: dict) -> ConfigError:
        differ = [k for k in ident if k in held and held[k] != ident[k]]
        return ConfigError(
            f"{self.path}: holds measurements of {describe(held)}, not {describe(ident)} "
            f"({', '.join(differ) or 'identity'} differ{'s' * (len(differ) == 1)}); "
            "pass --restart to measure again or --work-dir for another folder"
        )

    def _foreign(self, foreign: list[Record], header: dict | None, ident: dict | None) -> ConfigError:
        n = len(foreign)
        points = f"{n} stored measurement{'s' * (n > 1)}"
        if header is None and ident is None:
            what = "the line naming what was measured (GPU, model) is missing or damaged"
            fix = "rerun python -m calibrate with the same --model on the same GPU to restore it, or pass --restart"
        elif not any(r.fingerprint for r in foreign):
            what = f"{points} do not say what was measured and the line naming it is missing or damaged"
            fix = "pass --restart to measure again or --work-dir for another folder"
        else:
            tags = sorted({r.fingerprint for r in foreign if r.fingerprint})
            want = describe(ident) if ident else describe(self.identity)
            what = (
                f"{points} of another GPU, model or software (fingerprint {', '.join(tags[:3])}), not {want}"
            )
            fix = "pass --restart to measure again or --work-dir for another folder"
        return ConfigError(f"{self.path}: {what}; {fix}")

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def add(self, rec: Record) -> None:
        rec.fingerprint = rec.fingerprint or self.fingerprint
        rec.engine = rec.engine or code_for(self.engine, rec.kind)
        self.records[rec.key] = rec
        self._append(_line(rec))

    def _append(self, d: dict) -> None:
        # one write per line, flushed and synced: a kill loses at most the point being measured
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(d, separators=(",", ":")) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def forget(self, kinds: set[str] | dict[str, list[dict[str, str]]]) -> int:
        """Drop every record of these kinds (to measure them again, e.g. after an engine change), or with a dict
        {kind: [{param: value}, ...]} those whose parameters match any of the kind's filters (values compared as
        text); the file is rewritten whole and swapped in atomically, so an interruption leaves the old or the new
        one. Returns how many records were dropped."""
        where = kinds if isinstance(kinds, dict) else {k: [{}] for k in kinds}

        def match(r: Record) -> bool:
            return any(all(str(r.params.get(p)) == v for p, v in c.items()) for c in where.get(r.kind, []))

        drop = [k for k, r in self.records.items() if match(r)]
        if not drop:
            return 0
        for k in drop:
            del self.records[k]
        self._rewrite()
        return len(drop)

    def other_engine(self, code: str | dict[str, str]) -> dict[str, int]:
        """Stored points measured on other engine code than `code` (one for every kind, or one per kind), or before
        points recorded it, by kind."""
        out: dict[str, int] = {}
        for r in self.records.values():
            if r.engine != code_for(code, r.kind):
                out[r.kind] = out.get(r.kind, 0) + 1
        return out

    def steps_through(self, graphs: str, kinds: set[str]) -> int:
        """Record that the store's whole steps (`kinds`) are timed through `graphs` (a STEP_GRAPHS name) from
        now on; the ones it holds from other graphs are dropped, to be measured again. Returns how many."""
        if step_graphs_name(self.meta) == graphs:
            return 0
        drop = [k for k, r in self.records.items() if r.kind in kinds]
        for k in drop:
            del self.records[k]
        self.meta["step_graphs"] = graphs
        self._rewrite()
        return len(drop)

    def _rewrite(self) -> None:
        """The whole file again (meta line, then the records), swapped in atomically."""
        lines = [
            json.dumps(d, separators=(",", ":")) for d in [self._header(), *map(_line, self.records.values())]
        ]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)

    def _header(self) -> dict:
        # a store from before fingerprints, read without an identity, keeps its meta line
        if not self.fingerprint:
            return {"kind": "meta", **self.meta}
        rest = {k: v for k, v in self.meta.items() if k not in self.identity}
        return {"kind": "meta", "fingerprint": self.fingerprint, "identity": self.identity, **rest}

    def ok(self, kind: str | None = None) -> list[Record]:
        """Measured points (status ok), optionally of one kind, in file order."""
        return [r for r in self.records.values() if r.status == "ok" and (kind is None or r.kind == kind)]


def _parse(raw: bytes) -> tuple[list[dict], list[Record], list[int]]:
    """Meta lines, records and the numbers of damaged lines, each line decoded on its own."""
    headers: list[dict] = []
    records: list[Record] = []
    bad: list[int] = []
    for i, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line.decode("utf-8"))
            if not isinstance(d, dict):
                raise TypeError("not an object")
            if d.get("kind") == "meta":
                if "fingerprint" in d and d["fingerprint"] != fingerprint_of(d.get("identity")):
                    raise ValueError("meta line's identity does not match its fingerprint")
                headers.append(d)
                continue
            records.append(_record(d))
        # (UnicodeDecodeError is a ValueError; RecursionError: arrays nested past Python's limit)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            bad.append(i)
    return headers, records, bad


def _record(d: dict) -> Record:
    """A record from its line, checked whole: a line garbled into valid JSON is as damaged as a cut one."""
    rec = Record(
        key=d["key"],
        kind=d["kind"],
        params=d["params"],
        seconds=d.get("seconds"),
        status=d.get("status", "ok"),
        holdout=d.get("holdout", False),
        note=d.get("note", ""),
        fingerprint=d.get("fingerprint", ""),
        engine=d.get("engine", ""),
    )
    if not (isinstance(rec.params, dict) and isinstance(rec.key, str) and isinstance(rec.kind, str)):
        raise TypeError("key, kind or params of the wrong type")
    if rec.key != point_key(rec.kind, rec.params):
        raise ValueError("key does not match kind and params")
    if rec.status not in ("ok", "oom", "error") or not isinstance(rec.holdout, bool):
        raise ValueError("unknown status")
    if not all(isinstance(x, str) for x in (rec.note, rec.fingerprint, rec.engine)):
        raise TypeError("note, fingerprint or engine not a string")
    if rec.status == "ok":
        s = rec.seconds
        if not (isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s)):
            raise ValueError("no finite seconds")
        if not (s > 0 or (rec.kind == "serving" and s >= 0)):  # a serving cost may be nil
            raise ValueError("no positive seconds")
    return rec


def _line(rec: Record) -> dict:
    """A record as its JSONL line stores it."""
    d = {"key": rec.key, "kind": rec.kind, "params": rec.params, "seconds": rec.seconds, "status": rec.status,
         "holdout": rec.holdout}  # fmt: skip
    if rec.note:
        d["note"] = rec.note
    if rec.fingerprint:
        d["fingerprint"] = rec.fingerprint
    if rec.engine:
        d["engine"] = rec.engine
    return d
