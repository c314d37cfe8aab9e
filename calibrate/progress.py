"""A one-line progress bar on stderr, with no dependencies."""

from __future__ import annotations

import shutil
import sys
import time


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """`[#####.....] 45/120 37% 1m02s left  gemm m=1024` redrawn in place on a terminal.

    When stderr is not a terminal (a log file, a remote run), one plain line is written every
    `log_every_s` seconds instead, so logs stay short.
    """

    def __init__(self, total: int, label: str = "", stream=None, log_every_s: float = 20.0) -> None:
        self.total, self.label = max(total, 0), label
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.done = 0
        self.t0 = time.monotonic()
        self._last_log = -1e9
        self.log_every_s = log_every_s

    def advance(self, detail: str = "", n: int = 1) -> None:
        self.done = min(self.total, self.done + n)
        self.show(detail)

    def show(self, detail: str = "") -> None:
        now = time.monotonic()
        frac = self.done / self.total if self.total else 1.0
        elapsed = now - self.t0
        left = elapsed / frac * (1 - frac) if frac > 0 else 0.0
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
