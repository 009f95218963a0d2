"""Who this sys-monitor is: ``out_dir/host-id``, and the readable ``out_dir/host-name``.

The identity is random, made once at the first tick (so any day folder
exports without ``--host``) and kept: it survives a rename of the qube (the
private volume goes with it), so a machine's days stay one host.  It is
created whole or not at all (written under a temporary name, then linked into
place: ``link`` never replaces what is there, a planted link included).  The
name is the ``host_name`` setting, replaced atomically when it changes and
removed when it is unset.

Both are read like every file of the out dir: never through a link, never
from a FIFO or anything but a regular file, a bounded number of bytes, and
only what looks like one is believed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
from pathlib import Path

from sysmon.store.fs import FILE_MODE, fsync_dir, replace_atomically, write_all

HOST_ID_NAME = "host-id"
HOST_NAME_NAME = "host-name"
HOST_ID = re.compile(r"[0-9a-f]{32}")
#: What a host label may be: what a qube name or a host identity can be.
HOST_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: Bytes read of either file (each is one short line).
_MAX_READ = 256


class IdentityError(Exception):
    """The identity or name file is not one (a link, a FIFO, junk); the message says which."""


def _read(path: Path) -> str | None:
    """The text of regular file ``path`` (at most _MAX_READ bytes), None if it is absent."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise IdentityError(f"{path} is not a regular file (a link)") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise IdentityError(f"{path} is not a regular file")
        data = os.read(fd, _MAX_READ)
    finally:
        os.close(fd)
    return data.decode("ascii", errors="replace").strip()


def read_host_id(out_dir: Path) -> str | None:
    """The identity in ``out_dir``, None if none was made.

    Raises:
        IdentityError: the file is not a regular file or holds something else.
        OSError: it cannot be read.
    """
    path = out_dir / HOST_ID_NAME
    text = _read(path)
    if text is not None and not HOST_ID.fullmatch(text):
        raise IdentityError(f"{path} does not hold a host identity")
    return text


def read_host_name(out_dir: Path) -> str | None:
    """The readable name in ``out_dir``, None if none is set.

    Raises:
        IdentityError: the file is not a regular file or holds no label.
        OSError: it cannot be read.
    """
    path = out_dir / HOST_NAME_NAME
    text = _read(path)
    if text is not None and not HOST_LABEL.fullmatch(text):
        raise IdentityError(f"{path} does not hold a host_name")
    return text


def host_identity(out_dir: Path) -> str:
    """This sys-monitor's identity (32 hex digits), made on first use.

    Raises:
        IdentityError: the file is there and is not an identity (it was replaced).
        OSError: it cannot be written.
    """
    existing = read_host_id(out_dir)
    if existing is not None:
        return existing
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    identity = secrets.token_hex(16)
    tmp = out_dir / f".{HOST_ID_NAME}.{secrets.token_hex(8)}.tmp"
    fd = os.open(
        tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE
    )
    try:
        try:
            write_all(fd, identity.encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, out_dir / HOST_ID_NAME)
        except FileExistsError:  # another run made it first, or something was planted
            return host_identity(out_dir)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsync_dir(out_dir)
    return identity


def set_host_name(out_dir: Path, name: str) -> None:
    """Make ``out_dir/host-name`` say ``name`` ("" removes it).

    The old file is never read through or written through: a link or junk in
    its place is replaced (the name is the configuration's, not the file's).

    Raises:
        OSError: it cannot be written.
    """
    path = out_dir / HOST_NAME_NAME
    if not name:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    with contextlib.suppress(IdentityError):
        if read_host_name(out_dir) == name:
            return
    replace_atomically(path, name.encode() + b"\n")
