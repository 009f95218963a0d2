"""Where the days are: day folders and archives under an out_dir, and their members.

The read side of the store: ``export``, ``report`` and ``status`` find the
days they read here, whether a day is still a folder or already a
``monitor-YYYY-MM-DD.tgz``, and open its files through :func:`day_members`.
Archives live under ``<out_dir>/archives/`` (outside every tailer's
``*/<file>.csv`` glob).
"""

from __future__ import annotations

import functools
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from datetime import date
from pathlib import Path
from typing import IO, NoReturn

from sysmon.store.daily import day_folders

ARCHIVE_DIR = "archives"
#: Members a day's archive may have (it has a file per daily file and its
#: metadata): tarfile keeps a list of every member read, so a planted archive
#: of millions of empty ones is refused before that list fills memory.
MAX_MEMBERS = 256
#: Bytes a day's archive may unpack to (members, skipped or read, and whatever
#: follows the tar's end): gzip packs 1 MiB of zeros into 1 KiB, so a planted
#: file of 1 GB would be a TB to read (about an hour a pass).  A day at every
#: qube's budget (16 MiB) is this much for 512 qubes; gunzip reads it in ~20 s.
MAX_DAY_BYTES = 8 << 30
#: Bytes of a long name or pax header: tarfile reads one whole, so a planted
#: header of gigabytes of zeros (megabytes gzipped) would fill memory.
MAX_HEADER = 1 << 16
_LONG_HEADERS = frozenset(
    {
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
    }
)


class _DayMember(tarfile.TarInfo):
    """A member of a day's archive: a long name or pax header past MAX_HEADER is refused."""

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _LONG_HEADERS and self.size > MAX_HEADER:
            raise tarfile.ReadError(f"a header of {self.size:,} bytes: not a day's archive")
        return super()._proc_member(tar)  # type: ignore[misc,no-any-return]

    def _no_sparse(self, *_: object) -> NoReturn:
        # tarfile keeps every entry of a sparse map, and the map may have no end.
        raise tarfile.ReadError("a sparse member: not a day's archive")

    _proc_sparse = _proc_gnusparse_00 = _proc_gnusparse_01 = _proc_gnusparse_10 = _no_sparse


class ArchiveError(Exception):
    """A day could not be archived, or found as one; the message says why."""


def archive_dir(out_dir: Path) -> Path:
    """Where archives and their markers live."""
    return out_dir / ARCHIVE_DIR


def tgz_path(out_dir: Path, day: date) -> Path:
    """The verified archive of ``day``."""
    return archive_dir(out_dir) / f"monitor-{day.isoformat()}.tgz"


#: What sysmon names an archive: the day, and a later copy's number.
_ARCHIVE_NAME = re.compile(r"monitor-([0-9]{4}-[0-9]{2}-[0-9]{2})(?:\.([0-9]+))?\.tgz")


def archive_day(name: str) -> date | None:
    """The day of an archive named ``monitor-YYYY-MM-DD[.N].tgz``, else None.

    Nothing else: a stray ``monitor-DAY-old.tgz`` beside the vault's copies
    is no copy of the day (it sorted first, and was read instead).
    """
    if (match := _ARCHIVE_NAME.fullmatch(name)) is None:
        return None
    try:
        return date.fromisoformat(match[1])
    except ValueError:
        return None


def _copy_number(name: str) -> int:
    """Which copy of its day an archive is: 1 for ``monitor-DAY.tgz``, N for ``.N``.

    Read by the same pattern as :func:`archive_day`: N is ASCII digits only
    (``str.isdigit`` also takes '²', which ``int`` refuses, and other scripts'
    digits, which no sender writes).
    """
    match = _ARCHIVE_NAME.fullmatch(name)
    return int(match[2]) if match is not None and match[2] is not None else 1


def archived_days(out_dir: Path) -> list[date]:
    """The days of the local archives (in no particular order)."""
    folder = archive_dir(out_dir)
    if not folder.is_dir():
        return []
    return [day for p in folder.glob("monitor-*.tgz") if (day := archive_day(p.name)) is not None]


def folder_members(folder: Path) -> dict[str, int]:
    """A day folder's regular files as an archive names them (``DAY/<file>``), with their sizes.

    Not a symlink (a planted daily file is moved aside as one, in its day
    folder): packed as a link member it failed verification every night.
    """
    return {
        f"{folder.name}/{p.name}": p.lstat().st_size
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.is_symlink()
    }


def day_units(paths: Iterable[Path]) -> list[Path]:
    """Day folders and ``monitor-*.tgz`` archives under ``paths``, one per day, by day.

    A folder wins over its archive; of a day's archives, the newest copy
    (the highest ``.N``, by number): a copy is sent again only when the one
    before may be cut or lacks rows, so the last is the whole day.
    ``paths`` are day folders, archives, folders of archives, or out_dirs
    (their day folders and their ``archives/``).

    Raises:
        ArchiveError: a path that is none of these.
    """
    by_day: dict[str, Path] = {}
    for path in paths:
        if path.is_file():
            day = archive_day(path.name)
            _keep_newest(by_day, day.isoformat() if day else path.name, path)
        elif path.is_dir() and (_is_day(path.name) or (path / "system.csv").exists()):
            by_day[path.name] = path
        elif path.is_dir():
            # An out_dir's archives/, or a folder of archives (the vault's QubesIncoming).
            for tgz in sorted(
                [*archive_dir(path).glob("monitor-*.tgz"), *path.glob("monitor-*.tgz")]
            ):
                if (day := archive_day(tgz.name)) is not None and tgz.is_file():
                    _keep_newest(by_day, day.isoformat(), tgz)
            for folder_day in day_folders(path):
                by_day[folder_day.isoformat()] = path / folder_day.isoformat()
        else:
            raise ArchiveError(f"{path}: not a day folder, an out_dir or a monitor-*.tgz")
    return [by_day[day] for day in sorted(by_day)]


def _keep_newest(by_day: dict[str, Path], day: str, tgz: Path) -> None:
    held = by_day.get(day)
    if held is None or (held.is_file() and _copy_number(tgz.name) > _copy_number(held.name)):
        by_day[day] = tgz


def _is_day(name: str) -> bool:
    try:
        date.fromisoformat(name)
    except ValueError:
        return False
    return len(name) == 10  # YYYY-MM-DD, not 20250831


def day_members(unit: Path) -> Iterator[tuple[str, Callable[[], IO[bytes]]]]:
    """(file name, opener) of a day folder's regular files or a day archive's members.

    Each name once, in the archive's own order (so that each member is read
    on from where the gzip stream is, not from its start again).
    """
    if unit.is_dir():
        for child in sorted(unit.iterdir()):
            if child.is_file() and not child.is_symlink():
                yield child.name, functools.partial(_open_binary, child)
        return
    seen: set[str] = set()
    unpacked = 0
    with tarfile.open(unit, "r:gz", tarinfo=_DayMember) as tar:
        for n, member in enumerate(tar, 1):
            if n > MAX_MEMBERS:
                raise tarfile.ReadError(f"more than {MAX_MEMBERS} members: not a day's archive")
            unpacked = _unpacking(unpacked, member.size)  # before tarfile reads past it
            name = Path(member.name).name
            if member.isfile() and name not in seen:
                seen.add(name)
                yield name, functools.partial(_extract, tar, member)
        # On to gzip's trailer, whose CRC finds a damaged archive that still unpacks.
        while tar.fileobj is not None and (chunk := tar.fileobj.read(1 << 20)):
            unpacked = _unpacking(unpacked, len(chunk))


def _unpacking(so_far: int, more: int) -> int:
    """``so_far + more`` bytes unpacked, if within :data:`MAX_DAY_BYTES`."""
    if so_far + more > MAX_DAY_BYTES:
        raise tarfile.ReadError(f"more than {MAX_DAY_BYTES:,} bytes unpacked: not a day's archive")
    return so_far + more


def _open_binary(path: Path) -> IO[bytes]:
    return path.open("rb")


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    stream = tar.extractfile(member)
    if stream is None:  # a regular member always has one
        raise ArchiveError(f"{member.name}: not a file")
    return stream
