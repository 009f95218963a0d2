"""The CSV contract: one RFC 4180 row per write, cleaned text, seed formats."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import pytest
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


class TestDescription:
    def test_every_file_starts_with_time_and_qube(self):
        for daily in schema.DAILY_FILES:
            assert [c.role for c in daily.columns[:2]] == [schema.Role.TIME, schema.Role.KEY]

    def test_a_series_is_named_by_its_narrowest_label(self):
        """What rules key their state by: the mount, not its device; no label, no instance."""
        assert schema.DISK.instance_label == "mount"
        assert schema.NETWORK.instance_label == "if"
        assert schema.SYSTEM.instance_label is None

    def test_encode_from_a_mapping_is_the_positional_row(self):
        values = {"ts": TS, "vm": "work", "fs": "/dev/xvda3", "mount": "/rw", "size_kb": 5}
        assert schema.DISK.encode(values) == schema.DISK.format_row(
            [TS, "work", "/dev/xvda3", "/rw", 5, None, None, None]
        )

    def test_encode_names_a_column_the_file_has_not(self):
        with pytest.raises(ValueError, match=r"disk\.csv: no column size_bytes"):
            schema.DISK.encode({"ts": TS, "vm": "w", "size_bytes": 1})

    def test_a_value_without_a_type_is_refused(self):
        with pytest.raises(ValueError, match="has a type"):
            schema.Column("x", "int", schema.Role.VALUE)

    def test_labels_and_states_are_declared(self):
        assert schema.NETWORK.labels == ("if",)
        assert schema.DISK.labels == ("fs", "mount")
        assert schema.SCRAPES.column("status").values[0] == "ok"
        assert schema.by_name("qubes.csv").column("state").values == schema.QUBE_STATES
