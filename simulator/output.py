"""Result folders a run owns: written beside the target, swapped in whole, one writer at a time.

Every command that writes results (`run`, `compare`, `search`, `report`) writes into a work folder next
to its output folder and renames it into place only once every file is complete, so the output folder
always holds one whole run: a failure, Ctrl-C or a full disk leaves the previous results, and no file of
an earlier run survives beside the new ones. A lock file beside the folder (`.NAME.lock`, held with
flock, so the kernel releases it when its process dies) keeps a second run off the same folder.

The swap replaces only files inferplan writes (RESULT_FILES); a folder holding anything else is refused
rather than emptied, and sub-folders (a report inside a run's folder) and hidden files are carried over.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
from pathlib import Path

from core.errors import ConfigError

# every file name a command writes; the swap drops these from the previous run and refuses any other
# (a command that writes a new file adds its name here, or its next run is refused)
RESULT_FILES = frozenset(
    {
        "scenario.yaml",
        "summary.json",
        "requests.csv",
        "timeline.csv",
        "day_timeline.csv",
        "compare.json",
        "compare.csv",
        "search.csv",
        "frontier_curves.csv",
        "configs.jsonl",
        "report.html",
        "report.md",
        "latency_cdf.png",
        "latency_vs_load.png",
        "cost.png",
        "timelines.png",
        "day_fleet.png",
        "validation.json",
    }
)

# what a full or read-only disk raises while writing; one line for the user, not a traceback
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO)


class ResultFolder:
    """An output folder replaced whole: use as a context manager, write into `work`, then `commit()`.

    Entering takes the lock (ConfigError, one line, when another live process holds it or the folder
    cannot be written); leaving without a commit drops the work folder and keeps the previous results.
    """

    def __init__(self, path: str | Path, where: str = "--out", keep_unfinished: bool = False) -> None:
        self.path = Path(path)  # as the user named it, for messages
        # a search's journal must outlive even a second Ctrl-C during its partial write: left for `previous`
        self.keep_unfinished = keep_unfinished
        self.where = where  # which setting named it: --out or output.dir
        # renames act on the real folder: through a symlink, and never on '.' or '..' as a name
        self._dir = Path(os.path.realpath(self.path))
        parent, name = self._dir.parent, self._dir.name
        self.work = parent / f".{name}.writing"
        self._lock_path = parent / f".{name}.lock"
        self._old = parent / f".{name}.old"
        self._killed = parent / f".{name}.killed"  # the work folder of a run that was killed, kept to read
        self._lock_fd: int | None = None
        self.written: list[str] = []  # file names the commit put in place
        self.committed = False

    # ------------------------------------------------------------ entering: check, lock, recover
    def __enter__(self) -> ResultFolder:
        if self._dir.exists() and not self._dir.is_dir():
            raise ConfigError(f"{self._name()}: is a file, not a folder; choose a folder (new or empty)")
        if self._dir.parent == self._dir:
            raise ConfigError(f"{self._name()}: is the file system's root; choose a folder for the results")
        try:
            self._dir.parent.mkdir(parents=True, exist_ok=True)
            self._lock()
        except OSError as e:
            raise self._unwritable(e) from None
        try:
            if self._old.exists() and not self._dir.exists():
                self._old.rename(self._dir)  # a run killed between the two renames of its swap
            shutil.rmtree(self._old, ignore_errors=True)
            if self.work.exists():  # a killed run's files; `previous` offers them (a search's journal)
                shutil.rmtree(self._killed, ignore_errors=True)
                self.work.rename(self._killed)
            self._check_owned()
            self.work.mkdir()
        except OSError as e:
            self._unlock()
            raise self._unwritable(e) from None
        except BaseException:
            self._unlock()
            raise
        return self

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: object) -> None:
        if self.committed:
            shutil.rmtree(self._killed, ignore_errors=True)
        elif not self.keep_unfinished:
            shutil.rmtree(self.work, ignore_errors=True)
        self._unlock()
        if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
            raise ConfigError(
                f"{self._name()}: results not written ({exc.strerror}); the previous results are kept; "
                "free some space or choose another folder"
            ) from None

    def previous(self, name: str) -> list[Path]:
        """The file `name` as earlier runs left it: a killed run's copy first, then the folder's."""
        return [p for p in (self._killed / name, self._dir / name) if p.is_file()]

    def _name(self) -> str:
        return f"{self.where} {str(self.path)!r}"

    def _unwritable(self, e: OSError) -> ConfigError:
        why = e.strerror or str(e)
        for above in reversed(self.path.absolute().parents):
            if above.exists() and not above.is_dir():
                why = f"{str(above)!r} is a file, not a folder"
                break
        return ConfigError(f"{self._name()}: cannot be written ({why}); choose another folder")

    def _lock(self) -> None:
        """flock on `.NAME.lock` beside the folder; the file names the holder's pid for the message."""
        while True:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise ConfigError(
                    f"{self._name()}: another run (pid {holder}) is writing results there; "
                    "wait for it to finish or choose another folder"
                ) from None
            # the holder before us may have unlinked the file between our open and flock: retry on the new one
            try:
                same = os.stat(self._lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is None:
            return
        # unlinked while still held, so no one can lock the file after we let go and before it goes
        self._lock_path.unlink(missing_ok=True)
        os.close(self._lock_fd)
        self._lock_fd = None

    def _check_owned(self) -> None:
        """Refuse to replace a folder holding files inferplan did not write (a user's own folder)."""
        if not self._dir.is_dir():
            return
        for p in sorted(self._dir.iterdir()):
            if p.is_file() and not p.name.startswith(".") and p.name not in RESULT_FILES:
                raise ConfigError(
                    f"{self._name()}: holds {p.name!r}, which inferplan did not write, and results replace "
                    "the folder's files; choose a new or empty folder"
                )

    # ------------------------------------------------------------ committing: one rename into place
    def commit(self) -> list[str]:
        """Put the work folder in place of the output folder; returns the file names written."""
        written = sorted(p.name for p in self.work.iterdir() if p.is_file())
        if self._dir.is_dir():
            self._swap()
        else:
            self.work.rename(self._dir)
        self.written, self.committed = written, True
        return written

    def _swap(self) -> None:
        # another command's folder or a hidden file is not this run's to drop: carry it over
        carried = [
            p.name
            for p in self._dir.iterdir()
            if (p.is_dir() or p.name.startswith(".")) and not (self.work / p.name).exists()
        ]
        try:
            for name in carried:
                (self._dir / name).rename(self.work / name)
            exchanged = _exchange(self.work, self._dir)  # readers see the old folder, then the new one
            if not exchanged:
                self._dir.rename(self._old)
        except BaseException:
            self._carry_back(carried, self._dir)
            raise
        if exchanged:
            shutil.rmtree(self.work, ignore_errors=True)  # the previous run's files
            return
        try:
            self.work.rename(self._dir)
        except BaseException:
            self._carry_back(carried, self._old)
            self._old.rename(self._dir)
            raise
        shutil.rmtree(self._old, ignore_errors=True)

    def _carry_back(self, names: list[str], to: Path) -> None:
        for name in names:
            if (self.work / name).exists():
                (self.work / name).rename(to / name)


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one step (Linux renameat2 RENAME_EXCHANGE); False where the system cannot.

    Without it the swap is two renames, and for that instant the folder is missing (a run killed there
    is put back by the next one, see __enter__).
    """
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0
