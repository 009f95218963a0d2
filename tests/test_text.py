"""Text from a qube: no controls, bounded, never a formula in a spreadsheet."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sysmon.protocol.text import clean_text, neutralise_formula, strip_controls


def test_controls_format_and_line_separators_become_spaces() -> None:
    assert strip_controls("a\x00b\x1b[31mc\x7fd\u202ee\u2028f\r\ng") == "a b [31mc d e f  g"
    assert strip_controls("größe ✓ 名") == "größe ✓ 名"  # letters and symbols stay


@given(st.text(), st.integers(0, 50))
def test_clean_text_is_bounded_and_has_no_line_break(text: str, limit: int) -> None:
    cleaned = clean_text(text, limit)
    assert len(cleaned) <= limit
    assert not any(ch in cleaned for ch in "\r\n\x00\x85\u2028\u2029")


def test_a_cell_a_spreadsheet_would_evaluate_is_quoted() -> None:
    for formula in ("=cmd|' /C calc'!A0", "+1", "-1+1", "@SUM(A1)"):
        assert neutralise_formula(formula) == "'" + formula
    for plain in ("work", "1", "", " =x", "'=x"):
        assert neutralise_formula(plain) == plain
