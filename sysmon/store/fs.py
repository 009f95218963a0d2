"""The few file operations every store module needs, once each.

A whole write (``write`` may write less), a folder's fsync (so a rename or a
new file survives power loss), and an atomic replace (temporary file, fsync,
rename, fsync of the folder): a crash leaves the old content or the new one,
never a mix.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

FILE_MODE = 0o640


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd``.  Raises OSError."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n == 0:  # pragma: no cover -- regular files don't do this
            raise OSError(errno.EIO, "write returned 0")
        view = view[n:]


def fsync_dir(path: Path) -> None:
    """Make the entries of folder ``path`` (renames, new files) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes, *, append: bool = False, sync: bool = True) -> None:
    """Create or overwrite (or append to) ``path`` with ``data``, durably with ``sync``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags, FILE_MODE)
    try:
        write_all(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    if sync:
        fsync_dir(path.parent)


def replace_atomically(
    path: Path, data: bytes, *, sync: bool = True, mode: int = FILE_MODE
) -> None:
    """Replace ``path`` with ``data``: the old content or the new, never a mix.

    The temporary file is created afresh (O_EXCL | O_NOFOLLOW): whatever was
    left or planted under its name -- a symlink to somewhere else -- is
    removed, never written through; one cut short (a full disk) is removed too.
    ``mode``: as ``open(2)``'s, less the umask.
    """
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
        if sync:
            fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    if sync:
        fsync_dir(path.parent)
