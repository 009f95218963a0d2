"""Qubes' own rules for qube names and UUIDs (qubes-core-admin ``validate_name``).

A name is used in an argv, a path or a row only after it passes here.  Qubes
4.3 allows dots in names (core-admin release4.3 ``qubes/vm/__init__.py``,
commit a306d836); 4.2 did not.  A name still starts with a letter, so it can
never be a flag, a formula, ``.`` or ``..``.
"""

from __future__ import annotations

import re

_NAME_RE_4_2 = re.compile(r"[a-zA-Z][a-zA-Z0-9_-]*")
_NAME_RE_4_3 = re.compile(r"[a-zA-Z][a-zA-Z0-9_.-]*")
_RESERVED = frozenset({"none", "default", "Domain-0"})
MAX_NAME_LENGTH = 31
#: What dom0 lists on 4.3 (``uuid.uuid4()``, printed by ``str()``): lower-case hex.
_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
DOM0_UUID = "00000000-0000-0000-0000-000000000000"
#: How dom0 names a disposable it makes (core-admin ``DispVM``: ``disp`` and its number).
_DISPOSABLE_RE = re.compile(r"disp[0-9]+")


def is_valid_qube_name(name: str, *, dots: bool = True) -> bool:
    """Whether ``name`` is a name qubesd would accept for a qube.

    ``dots`` follows Qubes 4.3 (the default); ``dots=False`` is 4.2's rule,
    used when dom0 answers as 4.2 does.
    """
    pattern = _NAME_RE_4_3 if dots else _NAME_RE_4_2
    return (
        len(name) <= MAX_NAME_LENGTH
        and pattern.fullmatch(name) is not None
        and name not in _RESERVED
        and not name.endswith("-dm")
    )


def is_valid_uuid(text: str) -> bool:
    """Whether ``text`` is a UUID written as dom0 writes one."""
    return _UUID_RE.fullmatch(text) is not None


def looks_disposable(name: str) -> bool:
    """Whether ``name`` is one dom0 gives a disposable (a qube named so by hand is taken as one).

    For readers of the files, which do not know a row's class: any qube may
    start disposables all day, so their names get caps of their own.
    """
    return _DISPOSABLE_RE.fullmatch(name) is not None


#: Whose share a disposable's rows count in: all of them together (no qube is named so).
DISPOSABLES = "(disposables)"


def share_of(name: str) -> str:
    """The qube whose share ``name``'s rows count in: itself, or :data:`DISPOSABLES`."""
    return DISPOSABLES if looks_disposable(name) else name
