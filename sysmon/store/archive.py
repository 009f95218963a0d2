"""The nightly archive: pack a complete UTC day, verify it, say where it came from.

Synchronous file work (the daemon runs it in a thread).  The day folder
becomes ``<out_dir>/archives/monitor-YYYY-MM-DD.tgz``: ``YYYY-MM-DD/<file>.csv``
and ``YYYY-MM-DD/sysmon-meta.json`` (where the day came from: the host's
identity, sysmon's and the schema's versions, the poll interval); written
under a temporary name, fsynced, renamed, then read back and checked
(members and sizes) before it is sent.

Delivery (the lock, attempts, delivered markers) is
:mod:`sysmon.store.delivery`, retention :mod:`sysmon.store.retention`, and
finding days to read :mod:`sysmon.store.days`; their names are re-exported
here for the modules that still import them from this one.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tarfile
from collections.abc import Mapping
from datetime import date
from pathlib import Path

import structlog

from sysmon import events
from sysmon.schema import SCHEMA_VERSION
from sysmon.store import identity
from sysmon.store.commit import roll_back_interrupted
from sysmon.store.daily import _move_aside
from sysmon.store.days import (
    ArchiveError,
    folder_members,
    tgz_path,
)
from sysmon.store.fs import fsync_dir, write_all

__all__ = [
    "HOST_ID_NAME",
    "META_NAME",
    "build_archive",
    "day_meta",
    "host_identity",
    "verify_archive",
]

#: The archive's metadata member, written into the day folder before packing.
META_NAME = "sysmon-meta.json"
#: The host's identity, made at the first tick (:mod:`sysmon.store.identity`).
HOST_ID_NAME = identity.HOST_ID_NAME


def verify_archive(path: Path, folder: Path) -> None:
    """Read ``path`` back: the same members with the same sizes as ``folder``.

    Raises:
        ArchiveError: a member is missing, extra, of another size, or the
            archive does not read back whole.
    """
    expected = folder_members(folder)
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
            structlog.get_logger().error(events.META_LINK_REMOVED, file=str(path))
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
    try:
        roll_back_interrupted(out_dir)
    except OSError as exc:
        raise ArchiveError(f"rolling back an interrupted tick: {exc.strerror or exc}") from exc
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
                for name in sorted(folder_members(folder)):
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
