"""Qubes' own rule for qube names (qubes-core-admin ``validate_name``).

A name is used in an argv, a path or a row only after it passes here.
"""

from __future__ import annotations

import re

_NAME_RE = re.compile(r"[a-zA-Z][a-zA-Z0-9_-]*")
_RESERVED = frozenset({"none", "default", "Domain-0"})
MAX_NAME_LENGTH = 31


def is_valid_qube_name(name: str) -> bool:
    """Whether ``name`` is a name qubesd would accept for a qube."""
    return (
        len(name) <= MAX_NAME_LENGTH
        and _NAME_RE.fullmatch(name) is not None
        and name not in _RESERVED
        and not name.endswith("-dm")
    )
