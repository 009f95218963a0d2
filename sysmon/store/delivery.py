"""Delivery to the vault: the archive lock, the attempts and the delivered markers.

Synchronous file work; the copy itself is the ``archive`` command's.  Beside
each archive under ``<out_dir>/archives/``:

- ``monitor-YYYY-MM-DD.attempts`` -- one line per copy started, so a copy
  whose outcome a crash hid is never re-sent under a name the vault already
  holds (qfile-unpacker creates files with ``O_EXCL``);
- ``monitor-YYYY-MM-DD.delivered`` -- written (fsynced) only after the copy
  returned success, with the size of each member it held; the day is then
  never sent again without ``--force`` -- unless its folder grew since (a
  clock that ran a day ahead delivered it early): then the whole day goes
  again as a later copy, ``monitor-DAY.N.tgz``, and retention waits for it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator
from datetime import date
from pathlib import Path

from sysmon.store.daily import day_folders
from sysmon.store.days import archive_dir, folder_members, tgz_path
from sysmon.store.fs import replace_atomically, write_file

ARCHIVE_LOCK = ".sysmon-archive.lock"


def _marker(out_dir: Path, day: date, kind: str) -> Path:
    return archive_dir(out_dir) / f"monitor-{day.isoformat()}.{kind}"


@contextlib.contextmanager
def archive_lock(out_dir: Path) -> Iterator[bool]:
    """Hold the archive lock for a whole run, if no other run holds it.

    Yields False when another run (the nightly task, a ``sysmon archive``)
    is under way: two runs at once would deliver a day twice.  Separate from
    the commit's lock, which a copy of up to minutes must not hold.
    """
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    fd = os.open(out_dir / ARCHIVE_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


#: The most of a marker read: sysmon writes a name and a line of sizes.
MARKER_BYTES = 1 << 16
#: What :func:`marker_lines` gives for a marker it will not read (no marker line has a NUL).
MARKER_UNREADABLE = "\0unreadable"


def marker_lines(out_dir: Path, day: date, kind: str) -> list[str] | None:
    """A day's ``delivered`` or ``attempts`` marker, by line; None if there is none.

    A marker that is not a small regular file (a planted FIFO, a huge file) is
    not read: ``[MARKER_UNREADABLE]``.
    """
    try:
        fd = os.open(
            _marker(out_dir, day, kind), os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
        )
    except FileNotFoundError:
        return None
    except OSError:
        return [MARKER_UNREADABLE]
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MARKER_BYTES:
            return [MARKER_UNREADABLE]
        return f.read(MARKER_BYTES).decode("utf-8", "replace").splitlines()


def is_delivered(out_dir: Path, day: date) -> bool:
    """Whether ``day`` reached the vault whole: no row was added to it since.

    A marker without sizes (an older sysmon's) is taken at its word; one that
    cannot be read means the day goes again.
    """
    lines = marker_lines(out_dir, day, "delivered")
    if lines is None or lines == [MARKER_UNREADABLE]:
        return False
    if len(lines) < 2:  # the name, then the sizes
        return True
    try:
        sent = json.loads(lines[1])
    except ValueError:
        return False
    folder = out_dir / day.isoformat()
    if not isinstance(sent, dict) or not folder.is_dir():
        return isinstance(sent, dict)
    return all(sent.get(name) == size for name, size in folder_members(folder).items())


def days_to_deliver(out_dir: Path, today: date) -> list[date]:
    """Complete days (before today, UTC) not yet delivered, oldest first."""
    return [d for d in day_folders(out_dir) if d < today and not is_delivered(out_dir, d)]


def _write_marker(path: Path, text: str, *, append: bool = False) -> None:
    write_file(path, text.encode(), append=append)


def outgoing_name(out_dir: Path, day: date) -> str:
    """The name the next copy of ``day`` lands under in the vault.

    The plain name the first time; after a copy whose outcome is unknown (it
    may have landed), ``monitor-DAY.N.tgz``, because the vault refuses a name
    it already has.
    """
    attempts = _marker(out_dir, day, "attempts")
    try:
        uncertain = sum(1 for line in attempts.read_text().splitlines() if line != "refused")
    except FileNotFoundError:
        uncertain = 0
    base = f"monitor-{day.isoformat()}"
    return f"{base}.tgz" if uncertain == 0 else f"{base}.{uncertain + 1}.tgz"


def record_attempt(out_dir: Path, day: date) -> None:
    """Note that a copy of ``day`` is starting (before it starts)."""
    _write_marker(_marker(out_dir, day, "attempts"), "started\n", append=True)


def record_refused(out_dir: Path, day: date) -> None:
    """The last copy was refused by policy before anything was sent."""
    path = _marker(out_dir, day, "attempts")
    lines = path.read_text().splitlines() if path.exists() else []
    if lines and lines[-1] == "started":
        lines[-1] = "refused"
    _write_marker(path, "".join(line + "\n" for line in lines))


def mark_delivered(out_dir: Path, day: date, sent_as: str) -> None:
    """The copy of ``day`` returned success: never send it again, as it was.

    The sizes are the archive's members (rows appended to the folder while
    it was copied are not in it).
    """
    sizes: dict[str, int] = {}
    with tarfile.open(tgz_path(out_dir, day), "r:gz") as tar:
        for member in tar:
            sizes[member.name] = member.size
    text = sent_as + "\n" + json.dumps(sizes, sort_keys=True, separators=(",", ":")) + "\n"
    # Whole or not at all: a marker cut short (a full disk) would read as an
    # older sysmon's, taken at its word without the sizes.
    replace_atomically(_marker(out_dir, day, "delivered"), text.encode())


def stage_for_copy(out_dir: Path, day: date, name: str) -> Path:
    """A hard link of the archive under the name it should land as."""
    outgoing = archive_dir(out_dir) / "outgoing"
    if outgoing.exists():
        shutil.rmtree(outgoing)
    outgoing.mkdir(mode=0o750)
    link = outgoing / name
    os.link(tgz_path(out_dir, day), link)
    return link
