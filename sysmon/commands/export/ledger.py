"""The export's ledger: the days an engine or a file has taken whole, so none goes twice.

One line per day, ``host<TAB>day<TAB>content hash``, appended and fsync'd only
after the day's file was renamed into place or the engine answered that it
took the day.  A second export of the same day (or of the vault's
``monitor-DAY.2.tgz`` copy) then writes nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol


class LedgerBusyError(Exception):
    """Another export holds the ledger; the message says which."""


@contextlib.contextmanager
def held(path: Path) -> Iterator[None]:
    """The ledger to one export from its plan to its last day (``PATH.lock``, flock'd).

    Two at once each found a day not noted yet, and both sent it.

    Raises:
        LedgerBusyError: another export holds it (no waiting: it may push for hours).
        OSError: the lock cannot be made.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LedgerBusyError(f"another sysmon export is using the ledger {path}") from None
        yield
    finally:
        os.close(fd)


class Exported(Protocol):
    """What the ledger keeps of a day."""

    @property
    def key(self) -> tuple[str, str, str]:
        """(host, day, content hash)."""


class Ledger:
    """The days exported before: (host, day, content hash), one per line."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.done: set[tuple[str, str, str]] = set()
        if path is not None and path.exists():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                match line.split("\t"):
                    case [host, day, digest]:
                        self.done.add((host, day, digest))

    def seen(self, day: Exported) -> bool:
        """Exported before, with the same content."""
        return day.key in self.done

    def record(self, days: Iterable[Exported]) -> None:
        """Remember ``days`` (after their export was taken whole)."""
        if self.path is None:
            return
        keys = [day.key for day in days]
        if not keys:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join("\t".join(key) + "\n" for key in keys)
        with self.path.open("a+b") as f:
            end = f.seek(0, os.SEEK_END)
            if end:
                f.seek(end - 1)
                if f.read(1) != b"\n":  # a line a full disk cut: ended, not continued
                    text = "\n" + text
            f.write(text.encode())
            f.flush()
            os.fsync(f.fileno())
        self.done.update(keys)


def default_ledger(engine: str = "", fmt: str = "openmetrics") -> Path:
    """``$XDG_STATE_HOME/sysmon/export-ledger.tsv`` (``~/.local/state`` by default).

    A push keeps a ledger per engine (``export-ledger-HOST-PORT[-PATHDIGEST].tsv``): a day
    written to a file, or pushed to another engine, is not in this one yet.
    Files keep one per format (OpenMetrics the plain name, as before;
    ``export-ledger.FORMAT.tsv`` the others): a day written as OpenMetrics is
    not yet JSON lines or Influx lines.
    """
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    if engine:
        suffix = "-" + re.sub(r"[^A-Za-z0-9.-]", "-", engine)[:100]
    else:  # after a "." where an engine has a "-": never taken for an engine's
        suffix = "" if fmt == "openmetrics" else "." + re.sub(r"[^a-z-]", "-", fmt)[:40]
    return Path(state) / "sysmon" / f"export-ledger{suffix}.tsv"
