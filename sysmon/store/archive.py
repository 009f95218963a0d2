"""The nightly archive: pack a complete UTC day, verify it, mark it delivered.

Synchronous file work (the daemon runs it in a thread); the copy to the
vault itself is :func:`sysmon.archiver.deliver`.  Files under
``<out_dir>/archives/`` (outside every tailer's ``*/<file>.csv`` glob):

- ``monitor-YYYY-MM-DD.tgz`` -- the day folder as ``YYYY-MM-DD/<file>.csv``
  and ``YYYY-MM-DD/sysmon-meta.json`` (where the day came from: the host's
  identity, sysmon's and the schema's versions, the poll interval);
  written under a temporary name, fsynced, renamed, then read back and
  checked (members and sizes) before it is sent;
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
import functools
import json
import os
import shutil
import stat
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import date, timedelta
from pathlib import Path
from typing import IO

import attrs
import structlog

from sysmon.schema import SCHEMA_VERSION
from sysmon.store import identity
from sysmon.store.daily import _move_aside, day_folders
from sysmon.store.fs import fsync_dir, write_all, write_file

ARCHIVE_DIR = "archives"
#: The archive's metadata member, written into the day folder before packing.
META_NAME = "sysmon-meta.json"
#: The host's identity, made at the first tick (:mod:`sysmon.store.identity`).
HOST_ID_NAME = identity.HOST_ID_NAME


class ArchiveError(Exception):
    """A day could not be archived; the message says why."""


def archive_dir(out_dir: Path) -> Path:
    """Where archives and their markers live."""
    return out_dir / ARCHIVE_DIR


def tgz_path(out_dir: Path, day: date) -> Path:
    """The verified archive of ``day``."""
    return archive_dir(out_dir) / f"monitor-{day.isoformat()}.tgz"


def _marker(out_dir: Path, day: date, kind: str) -> Path:
    return archive_dir(out_dir) / f"monitor-{day.isoformat()}.{kind}"


ARCHIVE_LOCK = ".sysmon-archive.lock"


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


def archive_day(name: str) -> date | None:
    """The day of an archive named ``monitor-YYYY-MM-DD[.N].tgz``, else None."""
    if not (name.startswith("monitor-") and name.endswith(".tgz")):
        return None
    try:
        return date.fromisoformat(name.removeprefix("monitor-")[:10])
    except ValueError:
        return None


def day_units(paths: Iterable[Path]) -> list[Path]:
    """Day folders and ``monitor-*.tgz`` archives under ``paths``, one per day, by day.

    A folder wins over its archive, the first archive over its ``.N`` copies.
    ``paths`` are day folders, archives, folders of archives, or out_dirs
    (their day folders and their ``archives/``).

    Raises:
        ArchiveError: a path that is none of these.
    """
    by_day: dict[str, Path] = {}
    for path in paths:
        if path.is_file():
            day = archive_day(path.name)
            by_day.setdefault(day.isoformat() if day else path.name, path)
        elif path.is_dir() and (_is_day(path.name) or (path / "system.csv").exists()):
            by_day[path.name] = path
        elif path.is_dir():
            # An out_dir's archives/, or a folder of archives (the vault's QubesIncoming).
            for tgz in sorted(
                [*archive_dir(path).glob("monitor-*.tgz"), *path.glob("monitor-*.tgz")]
            ):
                if (day := archive_day(tgz.name)) is not None:
                    by_day.setdefault(day.isoformat(), tgz)
            for folder_day in day_folders(path):
                by_day[folder_day.isoformat()] = path / folder_day.isoformat()
        else:
            raise ArchiveError(f"{path}: not a day folder, an out_dir or a monitor-*.tgz")
    return [by_day[day] for day in sorted(by_day)]


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
    with tarfile.open(unit, "r:gz") as tar:
        for member in tar:
            name = Path(member.name).name
            if member.isfile() and name not in seen:
                seen.add(name)
                yield name, functools.partial(_extract, tar, member)
        # On to gzip's trailer, whose CRC finds a damaged archive that still unpacks.
        while tar.fileobj is not None and tar.fileobj.read(1 << 20):
            pass


def _open_binary(path: Path) -> IO[bytes]:
    return path.open("rb")


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    stream = tar.extractfile(member)
    if stream is None:  # a regular member always has one
        raise ArchiveError(f"{member.name}: not a file")
    return stream


def is_delivered(out_dir: Path, day: date) -> bool:
    """Whether ``day`` reached the vault whole: no row was added to it since.

    A marker without sizes (an older sysmon's) is taken at its word; one that
    cannot be read means the day goes again.
    """
    try:
        lines = _marker(out_dir, day, "delivered").read_text().splitlines()
    except FileNotFoundError:
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
    return all(sent.get(name) == size for name, size in _expected_members(folder).items())


def days_to_deliver(out_dir: Path, today: date) -> list[date]:
    """Complete days (before today, UTC) not yet delivered, oldest first."""
    return [d for d in day_folders(out_dir) if d < today and not is_delivered(out_dir, d)]


def _write_marker(path: Path, text: str, *, append: bool = False) -> None:
    write_file(path, text.encode(), append=append)


def _expected_members(folder: Path) -> dict[str, int]:
    return {
        f"{folder.name}/{p.name}": p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()
    }


def verify_archive(path: Path, folder: Path) -> None:
    """Read ``path`` back: the same members with the same sizes as ``folder``.

    Raises:
        ArchiveError: a member is missing, extra, of another size, or the
            archive does not read back whole.
    """
    expected = _expected_members(folder)
    found: dict[str, int] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                if not member.isfile():
                    raise ArchiveError(f"{path.name}: unexpected member {member.name}")
                extracted = tar.extractfile(member)
                if extracted is None:
                    raise ArchiveError(f"{path.name}: cannot read {member.name}")
                size = 0
                while chunk := extracted.read(1 << 20):
                    size += len(chunk)
                found[member.name] = size
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArchiveError(f"{path.name} does not read back: {exc}") from exc
    if found != expected:
        raise ArchiveError(f"{path.name} does not match {folder}: {found} != {expected}")


def host_identity(out_dir: Path) -> str:
    """This sys-monitor's identity (32 hex digits), made on first use.

    Raises:
        ArchiveError: the file holds something else (it was replaced).
    """
    try:
        return identity.host_identity(out_dir)
    except identity.IdentityError as exc:
        raise ArchiveError(str(exc)) from None


def day_meta(out_dir: Path, day: date, *, version: str, interval: float) -> dict[str, object]:
    """What a day's archive says about where it came from."""
    return {
        "schema": SCHEMA_VERSION,
        "sysmon": version,
        "host": host_identity(out_dir),
        "day": day.isoformat(),
        "interval_s": interval,
    } | _host_name(out_dir)


def _host_name(out_dir: Path) -> dict[str, object]:
    """The readable name beside the identity, if one is set (junk there: none)."""
    with contextlib.suppress(identity.IdentityError, OSError):
        if name := identity.read_host_name(out_dir):
            return {"host_name": name}
    return {}


def _write_meta(path: Path, data: bytes) -> None:
    """Write the day's metadata unless a regular file (an earlier run's) is there.

    Like the daily files: never through a planted symlink (the link is removed,
    its target untouched; archived, a link member would fail verification
    every night), never into a FIFO or anything else (moved aside).
    """
    try:
        there = path.lstat()
    except FileNotFoundError:
        pass
    else:
        if stat.S_ISREG(there.st_mode):
            return
        if stat.S_ISLNK(there.st_mode):
            path.unlink()
            structlog.get_logger().error("meta_link_removed", file=str(path))
        else:
            _move_aside(path, "not a regular file")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)


def build_archive(out_dir: Path, day: date, meta: Mapping[str, object] | None = None) -> Path:
    """Pack ``day`` into its verified ``.tgz`` (kept if already verified).

    ``meta`` is written first as the day's ``sysmon-meta.json`` (kept if the
    folder has one), so the archive says where it came from.

    Raises:
        ArchiveError: no such day, a full disk, or an archive that does not
            verify.  No partial archive is ever left under the final name.
    """
    folder = out_dir / day.isoformat()
    if not folder.is_dir():
        raise ArchiveError(f"no day folder {folder}")
    if meta is not None:
        try:
            _write_meta(folder / META_NAME, json.dumps(dict(meta), sort_keys=True).encode() + b"\n")
        except OSError as exc:
            raise ArchiveError(f"writing {META_NAME}: {exc.strerror or exc}") from exc
    target = tgz_path(out_dir, day)
    if target.exists():
        try:
            verify_archive(target, folder)
        except ArchiveError:
            target.unlink()
        else:
            return target
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        with tmp.open("wb") as raw:
            with tarfile.open(fileobj=raw, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
                for name in sorted(_expected_members(folder)):
                    tar.add(out_dir / name, arcname=name, recursive=False)
            raw.flush()
            os.fsync(raw.fileno())
        tmp.replace(target)
        fsync_dir(target.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ArchiveError(f"writing {target.name}: {exc.strerror or exc}") from exc
    verify_archive(target, folder)
    return target


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
    _write_marker(_marker(out_dir, day, "delivered"), text)


def stage_for_copy(out_dir: Path, day: date, name: str) -> Path:
    """A hard link of the archive under the name it should land as."""
    outgoing = archive_dir(out_dir) / "outgoing"
    if outgoing.exists():
        shutil.rmtree(outgoing)
    outgoing.mkdir(mode=0o750)
    link = outgoing / name
    os.link(tgz_path(out_dir, day), link)
    return link


@attrs.frozen
class Pruned:
    """What retention or the disk guard removed, and what it could not."""

    folders: tuple[date, ...] = ()
    archives: tuple[date, ...] = ()
    low_on_space_undelivered: bool = False
    #: Delivered days removed because the data was over its byte ceiling.
    over_ceiling: tuple[date, ...] = ()
    #: Still over the ceiling with only undelivered days (and today) left.
    ceiling_undelivered: bool = False


def free_bytes(path: Path) -> int:
    """Space available to us on ``path``'s filesystem."""
    vfs = os.statvfs(path)
    return vfs.f_bavail * vfs.f_frsize


def prune(
    out_dir: Path,
    today: date,
    retention_days: int,
    min_free_bytes: int,
    max_bytes: int | None = None,
) -> Pruned:
    """Retention, the byte ceiling, then the disk guard.  Never today, never undelivered.

    - a delivered archive's local ``.tgz`` is removed;
    - a delivered day folder older than ``retention_days`` is removed;
    - while the day folders and archives take more than ``max_bytes``, the
      oldest delivered day folders go (retention by size: a day is 163 MB
      for 30 qubes, so days alone cannot bound the volume);
    - while free space is below ``min_free_bytes``, the oldest delivered day
      folders go first; if only undelivered data is left, say so.
    """
    folders: list[date] = []
    archives: list[date] = []
    cutoff = today - timedelta(days=retention_days)
    for day in day_folders(out_dir) + _archived_days(out_dir):
        if day >= today or not is_delivered(out_dir, day):
            continue
        tgz = tgz_path(out_dir, day)
        if tgz.exists():
            tgz.unlink()
            archives.append(day)
        folder = out_dir / day.isoformat()
        if day < cutoff and folder.is_dir():
            shutil.rmtree(folder)
            folders.append(day)
    over_ceiling: list[date] = []
    ceiling_undelivered = False
    if max_bytes is not None:
        size = data_bytes(out_dir)
        for day in day_folders(out_dir):
            if size <= max_bytes:
                break
            if day >= today or not is_delivered(out_dir, day):
                continue
            folder = out_dir / day.isoformat()
            size -= _tree_bytes(folder)
            shutil.rmtree(folder)
            over_ceiling.append(day)
        ceiling_undelivered = size > max_bytes
    low = False
    if out_dir.is_dir() and free_bytes(out_dir) < min_free_bytes:
        for day in day_folders(out_dir):
            if free_bytes(out_dir) >= min_free_bytes:
                break
            if day >= today or not is_delivered(out_dir, day):
                continue
            shutil.rmtree(out_dir / day.isoformat())
            folders.append(day)
        low = free_bytes(out_dir) < min_free_bytes
    return Pruned(
        folders=tuple(sorted(set(folders) | set(over_ceiling))),
        archives=tuple(archives),
        low_on_space_undelivered=low,
        over_ceiling=tuple(over_ceiling),
        ceiling_undelivered=ceiling_undelivered,
    )


def _tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def data_bytes(out_dir: Path) -> int:
    """What the day folders and the local archives take, in bytes."""
    total = sum(_tree_bytes(out_dir / day.isoformat()) for day in day_folders(out_dir))
    folder = archive_dir(out_dir)
    return total + (_tree_bytes(folder) if folder.is_dir() else 0)


def _archived_days(out_dir: Path) -> list[date]:
    folder = archive_dir(out_dir)
    if not folder.is_dir():
        return []
    return [day for p in folder.glob("monitor-*.tgz") if (day := archive_day(p.name)) is not None]
