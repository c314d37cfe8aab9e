"""A one-line progress bar on stderr whose time left comes from each remaining item's predicted cost.

A sweep's points differ in cost by orders of magnitude (a kernel point takes milliseconds, a whole
model step seconds, and the steps come last), so "elapsed / fraction of points done" says seconds
left when minutes remain. Instead each item carries a prior (predicted seconds), and as items finish
`Eta` fits measured ≈ a + b·prior per group (a point kind), so the time left is the sum of the
remaining items' corrected priors.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

# An affine fit (a + b·prior) needs this many items of a group and priors this far apart (max/min);
# with fewer, or all alike, the group's ratio of sums (b alone) is steadier.
MIN_AFFINE_ITEMS = 4
MIN_AFFINE_SPREAD = 2.0
# Theil–Sen's pairs grow as n²: past this many items it fits an evenly spaced subset (700 items of one
# group, refitted after each: 1.3 s in all on this 2-core machine, 0.2 s with the subset)
MAX_FIT_ITEMS = 128


@dataclass(frozen=True, slots=True)
class Item:
    """One unit of work: its group (items of a group share a correction) and its predicted seconds.

    `one_off_s` is the part of the prior a single item pays for the rest (building the model before the
    first step, the serving loop's one run): such an item is not a sample of its group's rate."""

    group: str
    prior_s: float
    one_off_s: float = 0.0
    family: str = ""  # groups alike enough to lend each other a correction (the whole-step kinds)


def fit_line(prior_s: Sequence[float], measured_s: Sequence[float]) -> tuple[float, float]:
    """(a, b) of measured ≈ a + b·prior, both ≥ 0: Theil–Sen (median pairwise slope, median intercept)
    when there are enough items with spread priors, else the ratio of sums (a = 0)."""
    x, y = np.asarray(prior_s, dtype=float), np.asarray(measured_s, dtype=float)
    ratio = float(y.sum() / x.sum()) if x.sum() > 0 else 1.0
    if len(x) < MIN_AFFINE_ITEMS or x.min() <= 0 or x.max() < MIN_AFFINE_SPREAD * x.min():
        return 0.0, ratio
    if len(x) > MAX_FIT_ITEMS:
        pick = np.linspace(0, len(x) - 1, MAX_FIT_ITEMS).astype(int)
        x, y = x[pick], y[pick]
    i, j = np.triu_indices(len(x), 1)
    dx = x[j] - x[i]
    keep = np.abs(dx) > 1e-12
    b = max(float(np.median((y[j] - y[i])[keep] / dx[keep])), 0.0)
    a = float(np.median(y - b * x))
    if a < 0:  # a negative fixed cost is noise: through the origin instead
        return 0.0, ratio
    return a, b


class Eta:
    """Seconds left in a list of items done in order, from their priors corrected by what the done ones took.

    A group with measured items uses its own fit; a group with none yet borrows its family's ratio of
    measured to predicted seconds, or else keeps its priors as they are: across families the priors'
    errors differ too much to lend (on the 2-core CPU the attention points took 10-40x their priors and
    the whole steps about 1x; benchmarks/calibration_eta.py). One-off work is not corrected."""

    def __init__(self, items: Sequence[Item]) -> None:
        self.items = list(items)
        self.done = 0
        self._samples: dict[str, tuple[list[float], list[float]]] = {}
        self._family: dict[str, list[float]] = {}  # family -> [measured, predicted] seconds
        self._fits: dict[str, tuple[float, float]] = {}
        self._left: tuple[int, float, float] | None = None  # (done, the next item's, the rest's seconds)

    def record(self, measured_s: float) -> None:
        """The next item finished in `measured_s` seconds."""
        item = self.items[self.done]
        self.done += 1
        if item.one_off_s > 0 or item.prior_s <= 0:
            return
        xs, ys = self._samples.setdefault(item.group, ([], []))
        xs.append(item.prior_s)
        ys.append(measured_s)
        self._fits.pop(item.group, None)
        if item.family:
            sums = self._family.setdefault(item.family, [0.0, 0.0])
            sums[0] += measured_s
            sums[1] += item.prior_s

    def predict(self, item: Item) -> float:
        """Corrected seconds of one item."""
        rest = item.prior_s - item.one_off_s
        if rest <= 0:
            return item.one_off_s
        if item.group in self._samples:
            if item.group not in self._fits:
                self._fits[item.group] = fit_line(*self._samples[item.group])
            a, b = self._fits[item.group]
            return item.one_off_s + a + b * rest
        measured, predicted = self._family.get(item.family, (0.0, 0.0))
        return item.one_off_s + rest * (measured / predicted if predicted > 0 else 1.0)

    def left_s(self, running_s: float = 0.0) -> float:
        """Seconds left: the items not done, less the `running_s` the current one has already run."""
        if self._left is None or self._left[0] != self.done:  # once per item done, not per redraw
            todo = self.items[self.done :]
            first = self.predict(todo[0]) if todo else 0.0
            self._left = (self.done, first, sum(self.predict(i) for i in todo[1:]))
        _, first, rest = self._left
        return max(first - running_s, 0.0) + rest


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """`[#####.....] 45/120 37% 1m02s elapsed, 4m10s left  gemm m=1024` redrawn in place on a terminal.

    `work` is the number of items or the items themselves (with their priors); the percentage and the
    bar are of the predicted work, the time left is `Eta`'s. When the stream is not a terminal (a log
    file, a remote run), one plain line is written every `log_every_s` seconds instead, so logs stay short.
    """

    def __init__(
        self,
        work: int | Sequence[Item],
        label: str = "",
        stream=None,
        log_every_s: float = 20.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        items = [Item("", 1.0)] * max(work, 0) if isinstance(work, int) else list(work)
        self.eta = Eta(items)
        self.total, self.label = len(items), label
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.done = 0
        self.clock = clock or time.monotonic
        self.t0 = self._item_t0 = self.clock()
        self._last_log = -1e9
        self.log_every_s = log_every_s

    def advance(self, detail: str = "", n: int = 1) -> None:
        """`n` more items done; the time since the last one is what they took (shared evenly)."""
        now = self.clock()
        n = min(n, self.total - self.done)
        for _ in range(n):
            self.eta.record((now - self._item_t0) / n)
        self.done += n
        self._item_t0 = now
        self.show(detail)

    def left_s(self) -> float:
        return self.eta.left_s(self.clock() - self._item_t0)

    def show(self, detail: str = "") -> None:
        now = self.clock()
        elapsed = now - self.t0
        left = self.left_s()
        if self.done >= self.total:
            frac = 1.0
        else:  # of the predicted work: elapsed against elapsed plus what is left
            frac = elapsed / (elapsed + left) if elapsed + left > 0 else self.done / self.total
        head = f"{self.label} " if self.label else ""
        stats = f"{self.done}/{self.total} {100 * frac:3.0f}% {_clock(elapsed)} elapsed, {_clock(left)} left"
        if self.tty:
            width = shutil.get_terminal_size((100, 20)).columns
            bar_w = 24
            filled = int(round(bar_w * frac))
            line = f"{head}[{'#' * filled}{'.' * (bar_w - filled)}] {stats}  {detail}"
            self.stream.write("\r" + line[: width - 1].ljust(width - 1))
            self.stream.flush()
        elif now - self._last_log >= self.log_every_s or self.done == self.total:
            self._last_log = now
            self.stream.write(f"{head}{stats}  {detail}\n")
            self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
