"""Daily files: a header once, whole rows appended, torn lines repaired."""

from __future__ import annotations

from datetime import UTC, datetime

from csvcheck import read_day, read_strict

from sysmon import schema
from sysmon.store.daily import append_rows, ensure_day

TS = datetime(2025, 8, 31, 23, 59, 59, tzinfo=UTC)


class TestAppend:
    def test_header_once_then_rows(self, tmp_path):
        path = tmp_path / "alerts.csv"
        append_rows(path, schema.ALERTS, [schema.ALERTS.format_row([TS, "a", "x"])])
        append_rows(path, schema.ALERTS, [schema.ALERTS.format_row([TS, "a", "y"])])
        assert path.read_text() == "ts,vm,msg\n2025-08-31T23:59:59Z,a,x\n2025-08-31T23:59:59Z,a,y\n"

    def test_torn_last_line_is_cut_before_appending(self, tmp_path):
        path = tmp_path / "alerts.csv"
        path.write_bytes(b"ts,vm,msg\n2025-08-31T23:59:58Z,a,whole\n2025-08-31T23:5")
        append_rows(path, schema.ALERTS, [schema.ALERTS.format_row([TS, "a", "next"])])
        assert read_strict(path) == [
            {"ts": "2025-08-31T23:59:58Z", "vm": "a", "msg": "whole"},
            {"ts": "2025-08-31T23:59:59Z", "vm": "a", "msg": "next"},
        ]

    def test_torn_header_is_rewritten_once(self, tmp_path):
        path = tmp_path / "alerts.csv"
        path.write_bytes(b"ts,v")
        append_rows(path, schema.ALERTS, [])
        assert path.read_bytes() == b"ts,vm,msg\n"

    def test_all_files_exist_from_the_first_poll(self, tmp_path):
        folder = ensure_day(tmp_path, TS.date())
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            s.file_name for s in schema.DAILY_FILES
        )
        for data in read_day(folder).values():
            assert data == []
