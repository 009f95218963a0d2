"""Text from a qube, made safe to store and to open in a spreadsheet.  Pure."""

from __future__ import annotations

import unicodedata

#: OWASP CSV injection: a cell starting with one of these may be evaluated.
#: Tab, CR and LF are on the list too; control characters never get this far.
FORMULA_START = ("=", "+", "-", "@")
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def strip_controls(text: str) -> str:
    """Replace control and format characters with a space.

    C0/C1 controls and DEL could break a row or a terminal; format characters
    (bidi overrides such as U+202E) and line separators could make a row read
    differently from what it holds.
    """
    return "".join(" " if unicodedata.category(ch) in _UNSAFE_CATEGORIES else ch for ch in text)


def clean_text(text: str, max_chars: int) -> str:
    """Text fit for a record: no control characters, at most ``max_chars``."""
    return strip_controls(text)[:max_chars]


def neutralise_formula(text: str) -> str:
    """Prefix ``'`` to text a spreadsheet would take for a formula."""
    return "'" + text if text.startswith(FORMULA_START) else text
