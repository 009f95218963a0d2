"""The report's reading side: times asked for, and what it reads of each file."""

from __future__ import annotations

import pytest

from sysmon import schema
from sysmon.commands.report.read import NUMBERS, ReportError, parse_when


def test_a_date_or_a_utc_time() -> None:
    assert parse_when("2025-08-31") == 1_756_598_400
    assert parse_when("2025-08-31T12:00") == 1_756_598_400 + 43_200
    assert parse_when("2025-08-31T12:00:10Z") == 1_756_598_400 + 43_210


@pytest.mark.parametrize("text", ["yesterday", "2025-08-31T12:00+02:00", "31.08.2025", ""])
def test_anything_else_is_a_clear_error(text: str) -> None:
    with pytest.raises(ReportError, match="not a UTC date or time"):
        parse_when(text)


def test_what_is_drawn_is_value_columns_of_the_schema() -> None:
    """The page's numbers are value columns of their files; the rest comes from the schema."""
    assert set(NUMBERS) <= set(schema.DAILY_FILES)
    for daily, names in NUMBERS.items():
        for name in names:
            assert daily.column(name).role is schema.Role.VALUE, (daily.file_name, name)
