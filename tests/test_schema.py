"""The CSV contract: one RFC 4180 row per write, cleaned text, seed formats."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from sysmon import schema
from sysmon.protocol.text import FORMULA_START, strip_controls

TS = datetime(2025, 8, 31, 23, 59, 59, tzinfo=UTC)


class TestRowFormat:
    @given(st.text(max_size=2000))
    def test_any_text_is_one_line_and_reads_back_cleaned(self, text):
        """Whatever a qube says ends up as exactly one parseable line."""
        row = schema.ALERTS.format_row([TS, "work", text])
        assert row.endswith(b"\n")
        assert row.count(b"\n") == 1
        assert b"\r" not in row
        assert len(row) <= schema.MAX_ROW_BYTES
        (fields,) = list(csv.reader(io.StringIO(row.decode()), strict=True))
        expected = strip_controls(text)[: schema.MAX_TEXT_CHARS]
        if expected.startswith(FORMULA_START):
            expected = "'" + expected
        assert fields == ["2025-08-31T23:59:59Z", "work", expected]

    def test_seed_formats(self):
        row = schema.DISK.format_row(
            [TS, "work", "/dev/xvda3", "/rw", 52428800, 1000000, 51428800, 2]
        )
        assert row == b"2025-08-31T23:59:59Z,work,/dev/xvda3,/rw,52428800,1000000,51428800,2%\n"
        sysrow = schema.SYSTEM.format_row(
            [TS, "w", 3.14, 1.66, 95.0, 0.37, 0.28, 0.22, 1, 2, 3, 0, 0, 1, 0]
        )
        assert sysrow == b"2025-08-31T23:59:59Z,w,3.1,1.7,95.0,0.37,0.28,0.22,1,2,3,0,0,1,0\n"

    def test_nan_is_an_empty_cell(self):
        row = schema.SYSTEM.format_row([TS, "w", float("nan"), None, float("inf")] + [0] * 10)
        assert row.startswith(b"2025-08-31T23:59:59Z,w,,,,")
