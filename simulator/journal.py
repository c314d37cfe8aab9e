"""A search's journal: each finished configuration appended to `configs.jsonl` as it completes.

A search that is interrupted (Ctrl-C, a crash, a killed process) keeps every configuration it finished,
and the same command run again reads them back instead of simulating them again. The first line keys
the journal by the spec and by everything in the code and data that changes a configuration's result,
so a changed spec, profile or simulator starts over rather than mixing results.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import core
import simulator
from core.hardware import profile_dirs
from simulator.search import ConfigResult, Probe, SearchSpec

JOURNAL = "configs.jsonl"

# spec fields that rank or draw the results but do not change any configuration's own result
_NOT_IN_KEY = ("name", "target_rate_per_s", "load_points")


def search_key(spec: SearchSpec) -> str:
    """A hash of the spec and of the inputs a configuration's result depends on.

    Those are the code of the simulator and of the shared core, the catalogue and bundled traces, the GPU profiles it can find, and
    any file the spec names (a trace of the user's).
    """
    h = hashlib.sha256()
    data = spec.model_dump(mode="json", exclude=set(_NOT_IN_KEY))
    h.update(json.dumps(data, sort_keys=True).encode())
    files = []
    for pkg in (Path(core.__file__).parent, Path(simulator.__file__).parent):
        files += sorted(pkg.rglob("*.py")) + sorted(pkg.glob("catalogue/*")) + sorted(pkg.glob("traces/*"))
    for d in profile_dirs():
        files += sorted(Path(d).glob("*.yaml"))
    files += [Path(v) for v in _strings(data) if len(v) < 4096 and Path(v).is_file()]
    for f in files:
        h.update(str(f).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:32]


def _strings(x: object) -> Iterable[str]:
    if isinstance(x, str):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from _strings(v)
    elif isinstance(x, list):
        for v in x:
            yield from _strings(v)


class Journal:
    """`configs.jsonl` in a run's work folder: the configurations finished so far, earlier runs' included.

    `done` holds the results read back from `earlier` journals with the same key (configurations that
    ended in `error` are left out, so a rerun tries them again); they are copied into the new journal.
    """

    def __init__(self, path: Path, key: str, earlier: Iterable[Path] = ()) -> None:
        self.path, self.key = path, key
        self.done: dict[int, ConfigResult] = {}
        for p in reversed(list(earlier)):  # the first named wins: a killed run's journal is the newest
            self.done |= read_journal(p, key)
        self.done = {i: r for i, r in self.done.items() if r.status != "error"}
        self.results: dict[int, ConfigResult] = {}  # everything recorded: `done`, then each new one
        self._file = path.open("w")
        self._write({"journal": "inferplan search", "key": key})
        for r in self.done.values():
            self.append(r)

    def append(self, r: ConfigResult) -> None:
        """Record one finished configuration, on disk before the next one is reported."""
        self.results[r.index] = r  # first: a Ctrl-C during the write must not drop it from the partial table
        self._write(dataclasses.asdict(r))

    def _write(self, obj: dict) -> None:
        self._file.write(json.dumps(obj, default=str) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def read_journal(path: Path, key: str) -> dict[int, ConfigResult]:
    """The configurations a journal holds, by index; none when its key differs or it cannot be read."""
    try:
        lines = path.read_text(errors="replace").splitlines()
        if not lines or json.loads(lines[0]).get("key") != key:
            return {}
    except (OSError, ValueError, AttributeError):
        return {}
    out: dict[int, ConfigResult] = {}
    for line in lines[1:]:
        try:
            r = _config_result(json.loads(line))
        except (ValueError, TypeError, AttributeError):
            continue  # the last line of a run killed mid-write
        out[r.index] = r
    return out


def _config_result(d: dict) -> ConfigResult:
    """Rebuild a ConfigResult from its asdict() form, ignoring fields this version does not have."""
    probes = [Probe(**_known(Probe, p)) for p in d.get("probes", [])]
    return ConfigResult(**(_known(ConfigResult, d) | {"probes": probes}))


def _known(cls: type, d: dict) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names}
