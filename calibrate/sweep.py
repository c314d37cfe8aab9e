"""Run a sweep plan point by point, appending each result to the store as it is measured.

Points already in the store (measured, or recorded as out of memory) are skipped, so a rerun
after an interruption measures only what is missing. An out-of-memory point is recorded as
`oom`, the allocator's cache is emptied, and the sweep goes on.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

from calibrate.accounting import label
from calibrate.measurements import Record, Store
from calibrate.plan import Point
from calibrate.progress import Progress


def is_oom(exc: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError (or an allocator's 'out of memory' RuntimeError), without importing torch."""
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


@dataclass
class SweepReport:
    measured: int = 0
    skipped: int = 0
    oom: int = 0
    errors: int = 0


def run_sweep(
    points: list[Point],
    store: Store,
    measure: Callable[[Point], float],
    recover: Callable[[], None] = lambda: None,
    label_text: str = "sweep",
    stream=None,
) -> SweepReport:
    """Measure every point not yet in `store`; `recover()` runs after an out-of-memory point."""
    rep = SweepReport()
    todo = []
    for p in points:
        r = store.records.get(p.key)
        if r is not None and r.status in ("ok", "oom"):
            rep.skipped += 1
        else:
            todo.append(p)
    bar = Progress(len(todo), label_text, stream=stream)
    if rep.skipped:
        (stream or sys.stderr).write(
            f"{label_text}: {rep.skipped} points already measured, {len(todo)} to go\n"
        )
    try:
        for p in todo:
            bar.show(f"{p.kind} {label(p.kind, p.params)}")
            try:
                s = float(measure(p))
                store.add(Record(p.key, p.kind, p.params, s, "ok", p.holdout))
                rep.measured += 1
            except Exception as e:  # noqa: BLE001 - one bad point must not lose the sweep
                if is_oom(e):
                    recover()
                    store.add(
                        Record(
                            p.key, p.kind, p.params, None, "oom", p.holdout, note=str(e).splitlines()[0][:200]
                        )
                    )
                    rep.oom += 1
                else:
                    msg = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                    store.add(Record(p.key, p.kind, p.params, None, "error", p.holdout, note=msg))
                    rep.errors += 1
                    (stream or sys.stderr).write(
                        f"\nwarning: {p.kind} {label(p.kind, p.params)} failed ({msg})\n"
                    )
            bar.advance(f"{p.kind} {label(p.kind, p.params)}")
    finally:
        bar.show("done" if bar.done == bar.total else "interrupted")
        bar.close()
    return rep
