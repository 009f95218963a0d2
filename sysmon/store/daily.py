"""Append-only daily CSV files under ``<out_dir>/<YYYY-MM-DD>/`` (UTC days).

Synchronous; the daemon calls it through ``trio.to_thread``.  The rules:

- a file is created with its header once and never rewritten or renamed;
- each row is one ``write()`` ending in ``\\n``;
- a row that could not be written whole (full disk, I/O error) is cut back
  off, so no reader ever sees half a row;
- a torn last line left by a crash or power loss is cut back to the last
  newline before anything is appended, and logged.

Callers hold :func:`locked` around a whole tick, so a ``once`` and the
daemon never interleave.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from collections.abc import Iterator, Sequence
from datetime import date
from pathlib import Path

import structlog

from sysmon import events
from sysmon.schema import DAILY_FILES, Schema
from sysmon.store.fs import write_all

LOCK_NAME = ".sysmon.lock"
FILE_MODE = 0o640
DIR_MODE = 0o750


class WriteError(Exception):
    """Rows could not be written; ``written`` of them were, whole."""

    def __init__(self, message: str, *, written: int, errno_: int | None) -> None:
        super().__init__(message)
        self.written = written
        self.errno = errno_


@contextlib.contextmanager
def locked(out_dir: Path) -> Iterator[None]:
    """Hold the out_dir's write lock (blocking) for the ``with`` block."""
    out_dir.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    fd = os.open(out_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def day_folders(out_dir: Path) -> list[date]:
    """Every day folder under ``out_dir``, oldest first."""
    if not out_dir.is_dir():
        return []
    days = []
    for path in out_dir.iterdir():
        with contextlib.suppress(ValueError):
            if path.is_dir() and len(path.name) == len("YYYY-MM-DD"):
                days.append(date.fromisoformat(path.name))
    return sorted(days)


def day_dir(out_dir: Path, day: date) -> Path:
    """The folder of one UTC day."""
    return out_dir / day.isoformat()


class _NotOursError(Exception):
    """A daily file that sysmon did not make: not a regular file, or a wrong header."""


def _open_regular(path: Path) -> int:
    """``path`` opened for appending, only if it is a regular file (or new).

    O_NOFOLLOW: a planted symlink is never followed.  O_NONBLOCK: a planted
    FIFO cannot block the commit (which holds the lock).
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, FILE_MODE)
    except OSError as exc:
        if exc.errno in {errno.ELOOP, errno.ENXIO}:  # a symlink; a FIFO with no reader
            raise _NotOursError(exc.strerror) from exc
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _NotOursError("not a regular file")
    return fd


def _move_aside(path: Path, why: str) -> str:
    """Rename what is at ``path`` to ``NAME.bad-<time>`` (a rename never follows a link)."""
    aside = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    n = 1
    while aside.exists() or aside.is_symlink():
        n += 1
        aside = aside.with_name(f"{aside.name.split('~')[0]}~{n}")
    path.rename(aside)
    structlog.get_logger().error(
        events.DAILY_FILE_MOVED_ASIDE, file=str(path), to=aside.name, why=why
    )
    return aside.name


def _open_appending(
    path: Path, schema: Schema, moved: list[str] | None = None
) -> tuple[int, int, int]:
    """Open ``path`` for appending; create it with its header if new or empty.

    Returns the descriptor, the size and the width of the file's layout: the
    schema's, or an older one (``schema.older``) a day begun before an upgrade
    has, which the rest of the day keeps.  A file sysmon did not make -- a
    symlink, a FIFO, anything not regular, or a header that is neither -- is
    moved aside (its new name added to ``moved``) and a fresh file started.
    """
    width = len(schema.columns)
    try:
        fd = _open_regular(path)
    except _NotOursError as exc:
        aside = _move_aside(path, str(exc))
        if moved is not None:
            moved.append(aside)
        fd = _open_regular(path)
    try:
        # O_APPEND ignores offsets for writes; pread needs a readable fd.
        rfd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            size = os.fstat(rfd).st_size
            head = os.pread(rfd, len(schema.header), 0) if size else b""
            older = [w for w in schema.older if head.startswith(schema.header_of(w))]
            if older:
                width = older[0]
            if size and not head.startswith(schema.header) and not older:
                os.close(fd)
                aside = _move_aside(path, "a header that is not sysmon's")
                if moved is not None:
                    moved.append(aside)
                fd = _open_regular(path)
                size = 0
            else:
                size = _repair_tail_rw(path, rfd, fd)
        finally:
            os.close(rfd)
        if size == 0:
            write_all(fd, schema.header)
            size = len(schema.header)
    except BaseException:
        os.close(fd)
        raise
    return fd, size, width


def _repair_tail_rw(path: Path, rfd: int, wfd: int) -> int:
    size = os.fstat(rfd).st_size
    if size == 0 or os.pread(rfd, 1, size - 1) == b"\n":
        return size
    end, keep = size, 0
    while end > 0:
        start = max(0, end - 65536)
        block = os.pread(rfd, end - start, start)
        newline = block.rfind(b"\n")
        if newline >= 0:
            keep = start + newline + 1
            break
        end = start
    os.ftruncate(wfd, keep)
    structlog.get_logger().warning(
        events.TORN_LINE_REPAIRED, file=str(path), cut_bytes=size - keep, kept_bytes=keep
    )
    return keep


def append_rows(path: Path, schema: Schema, rows: Sequence[bytes], *, sync: bool = True) -> None:
    """Append whole rows to ``path``, creating it with its header if needed.

    Raises:
        WriteError: a row could not be written; it was cut back off, and the
            rows before it stand (``written``).
    """
    fd, start, width = _open_appending(path, schema)
    if width != len(schema.columns):
        rows = [schema.in_layout(row, width) for row in rows]
    size = start
    try:
        for index, row in enumerate(rows):
            try:
                write_all(fd, row)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise WriteError(
                    f"{path}: {exc.strerror or exc}", written=index, errno_=exc.errno
                ) from exc
            size += len(row)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def ensure_day(out_dir: Path, day: date, moved: list[str] | None = None) -> Path:
    """Create the day's folder and all its files with headers (tailers look for them).

    Files moved aside (see :func:`_open_appending`) are added to ``moved``.
    """
    folder = day_dir(out_dir, day)
    if folder.is_symlink():
        aside = _move_aside(folder, "a symlink, not a folder")
        if moved is not None:
            moved.append(aside)
    folder.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    for schema in DAILY_FILES:
        fd, _, _ = _open_appending(folder / schema.file_name, schema, moved)
        os.close(fd)
    return folder


def truncate_to(path: Path, size: int) -> None:
    """Cut ``path`` back to ``size`` bytes (recovery of an interrupted tick)."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        if os.fstat(fd).st_size > size:
            os.ftruncate(fd, size)
    finally:
        os.close(fd)
