"""Raw measurements as JSONL, one line per point, appended as they are taken.

The file is the sweep's memory: a rerun skips every key already present, so an interrupted
sweep resumes where it stopped. A first `meta` line names the GPU and model the file belongs to.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from simulator.errors import ConfigError


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


@dataclass
class Store:
    """Append-only JSONL store keyed by point key."""

    path: Path
    records: dict[str, Record] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    skipped_lines: int = 0

    @classmethod
    def open(cls, path: Path, meta: dict | None = None, fresh: bool = False, warn=None) -> Store:
        """Read what is there (skipping corrupt lines with a warning) and check it belongs to `meta`."""
        warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if fresh and path.exists():
                path.unlink()
            path.touch()
        except OSError as e:
            raise ConfigError(f"cannot write measurements to {str(path)!r}: {e.strerror or e}") from None
        if not os.access(path, os.W_OK):
            raise ConfigError(f"cannot write measurements to {str(path)!r}: permission denied")
        store = cls(path)
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                if d.get("kind") == "meta":
                    store.meta = d
                    continue
                rec = Record(
                    key=d["key"],
                    kind=d["kind"],
                    params=d["params"],
                    seconds=d.get("seconds"),
                    status=d.get("status", "ok"),
                    holdout=bool(d.get("holdout", False)),
                    note=d.get("note", ""),
                )
                ok = isinstance(rec.seconds, (int, float)) and (
                    rec.seconds > 0 or (rec.kind == "serving" and rec.seconds >= 0)  # a cost may be nil
                )
                if rec.status == "ok" and not ok:
                    raise ValueError("no positive seconds")
            except (ValueError, KeyError, TypeError, AttributeError):
                store.skipped_lines += 1
                warn(f"{path}:{i}: corrupt measurement line skipped (it will be measured again)")
                continue
            store.records[rec.key] = rec
        if meta:
            store._check_meta(meta)
        return store

    def _check_meta(self, meta: dict) -> None:
        if not self.meta:
            self.meta = dict(meta)
            self._append({"kind": "meta", **meta})
            return
        for k in ("gpu", "model", "device"):
            if k in meta and k in self.meta and self.meta[k] != meta[k]:
                raise ConfigError(
                    f"{self.path} holds measurements of {k} {self.meta[k]!r}, not {meta[k]!r}; "
                    "pass --fresh to start over or --work-dir for another folder"
                )

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def add(self, rec: Record) -> None:
        self.records[rec.key] = rec
        self._append(_line(rec))

    def _append(self, d: dict) -> None:
        # one write per line, flushed and synced: a kill loses at most the point being measured
        with self.path.open("a") as f:
            f.write(json.dumps(d, separators=(",", ":")) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def forget(self, kinds: set[str]) -> int:
        """Drop every record of these kinds (to measure them again, e.g. after an engine change); the file is
        rewritten whole and swapped in atomically, so an interruption leaves the old or the new one. Returns
        how many records were dropped."""
        drop = [k for k, r in self.records.items() if r.kind in kinds]
        if not drop:
            return 0
        for k in drop:
            del self.records[k]
        meta = {"kind": "meta", **{k: v for k, v in self.meta.items() if k != "kind"}}
        lines = [json.dumps(d, separators=(",", ":")) for d in [meta, *map(_line, self.records.values())]]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, self.path)
        return len(drop)

    def ok(self, kind: str | None = None) -> list[Record]:
        """Measured points (status ok), optionally of one kind, in file order."""
        return [r for r in self.records.values() if r.status == "ok" and (kind is None or r.kind == kind)]


def _line(rec: Record) -> dict:
    """A record as its JSONL line stores it."""
    d = {"key": rec.key, "kind": rec.kind, "params": rec.params, "seconds": rec.seconds, "status": rec.status,
         "holdout": rec.holdout}  # fmt: skip
    if rec.note:
        d["note"] = rec.note
    return d
