"""Retention, the byte ceiling and the disk guard: what goes, oldest delivered first.

Synchronous file work.  Never today, never a day the vault has not got
whole (:func:`sysmon.store.delivery.is_delivered`).
"""

from __future__ import annotations

import os
import shutil
from datetime import date, timedelta
from pathlib import Path

import attrs

from sysmon.store.daily import day_folders, locked
from sysmon.store.days import archive_dir, archived_days, tgz_path
from sysmon.store.delivery import is_delivered


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
    for day in day_folders(out_dir) + archived_days(out_dir):
        if day >= today or not is_delivered(out_dir, day):
            continue
        tgz = tgz_path(out_dir, day)
        if tgz.exists():
            tgz.unlink()
            archives.append(day)
        if day < cutoff and _remove_delivered(out_dir, day) is not None:
            folders.append(day)
    over_ceiling: list[date] = []
    ceiling_undelivered = False
    if max_bytes is not None:
        size = data_bytes(out_dir)
        for day in day_folders(out_dir):
            if size <= max_bytes:
                break
            if day >= today:
                continue
            freed = _remove_delivered(out_dir, day)
            if freed is not None:
                size -= freed
                over_ceiling.append(day)
        ceiling_undelivered = size > max_bytes
    low = False
    if out_dir.is_dir() and free_bytes(out_dir) < min_free_bytes:
        for day in day_folders(out_dir):
            if free_bytes(out_dir) >= min_free_bytes:
                break
            if day < today and _remove_delivered(out_dir, day) is not None:
                folders.append(day)
        low = free_bytes(out_dir) < min_free_bytes
    return Pruned(
        folders=tuple(sorted(set(folders) | set(over_ceiling))),
        archives=tuple(archives),
        low_on_space_undelivered=low,
        over_ceiling=tuple(over_ceiling),
        ceiling_undelivered=ceiling_undelivered,
    )


def _remove_delivered(out_dir: Path, day: date) -> int | None:
    """Remove ``day``'s folder if the vault has all of it: the bytes freed, or None.

    Checked and removed under the commit's lock (an undelivered day is never walked).
    A tick written between the check and the removal (a clock stepped back
    onto the day) would go with the folder: under the lock it waits, and
    makes the day anew, a later copy for the archive.
    """
    folder = out_dir / day.isoformat()
    with locked(out_dir):
        if not folder.is_dir() or not is_delivered(out_dir, day):
            return None
        freed = _tree_bytes(folder)
        shutil.rmtree(folder)
    return freed


def _tree_bytes(folder: Path) -> int:
    # Regular files only: a planted link to a big file is not the data's bytes.
    return sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def data_bytes(out_dir: Path) -> int:
    """What the day folders and the local archives take, in bytes."""
    total = sum(_tree_bytes(out_dir / day.isoformat()) for day in day_folders(out_dir))
    folder = archive_dir(out_dir)
    return total + (_tree_bytes(folder) if folder.is_dir() else 0)
