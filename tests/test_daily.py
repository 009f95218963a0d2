"""Daily files: a header once, whole rows appended, torn lines repaired."""

from __future__ import annotations

import os
import threading
from datetime import UTC, date, datetime

import pytest
from csvcheck import read_day, read_strict
from hypothesis import given
from hypothesis import strategies as st

from sysmon import schema
from sysmon.records import State
from sysmon.store.daily import append_rows, ensure_day
from sysmon.store.state import load_state, save_state

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


class TestPlantedFiles:
    """What someone plants in the out dir is moved aside, never followed or appended to."""

    def test_a_symlink_is_not_followed(self, tmp_path):
        victim = tmp_path / "victim.txt"
        victim.write_text("precious\n")
        folder = tmp_path / "out" / "2025-08-31"
        folder.mkdir(parents=True)
        (folder / "system.csv").symlink_to(victim)
        moved: list[str] = []
        ensure_day(tmp_path / "out", date(2025, 8, 31), moved)
        assert victim.read_text() == "precious\n"
        assert not (folder / "system.csv").is_symlink()
        assert (folder / "system.csv").read_bytes() == schema.SYSTEM.header
        (aside,) = moved
        assert aside.startswith("system.csv.bad-")
        assert (folder / aside).is_symlink()

    def test_a_fifo_does_not_hang_the_commit(self, tmp_path):
        folder = tmp_path / "2025-08-31"
        folder.mkdir()
        os.mkfifo(folder / "alerts.csv")
        moved: list[str] = []
        # A plain open blocks forever: run it where a hang fails the test instead.
        worker = threading.Thread(
            target=ensure_day, args=(tmp_path, date(2025, 8, 31), moved), daemon=True
        )
        worker.start()
        worker.join(timeout=10)
        assert not worker.is_alive(), "opening the FIFO hung"
        assert (folder / "alerts.csv").is_file()
        assert len(moved) == 1

    def test_a_wrong_header_is_moved_aside_not_appended_to(self, tmp_path):
        folder = tmp_path / "2025-08-31"
        folder.mkdir()
        (folder / "disk.csv").write_text("ts,vm,evil\n1,2,3\n")
        moved: list[str] = []
        ensure_day(tmp_path, date(2025, 8, 31), moved)
        assert (folder / "disk.csv").read_bytes() == schema.DISK.header
        (aside,) = moved
        assert (folder / aside).read_text() == "ts,vm,evil\n1,2,3\n"

    def test_a_planted_state_tmp_symlink_is_not_overwritten(self, tmp_path):
        victim = tmp_path / "victim.txt"
        victim.write_text("precious\n")
        (tmp_path / "sysmon-state.json.tmp").symlink_to(victim)
        save_state(tmp_path, State())
        assert victim.read_text() == "precious\n"
        assert load_state(tmp_path) == State()


class TestAnOlderLayout:
    """A day begun by an older sysmon keeps its layout after an upgrade (xen.csv: schema 1)."""

    OLD = schema.XEN.header_of(6)

    def test_the_rest_of_the_day_is_appended_in_it_not_moved_aside(self, tmp_path):
        day = tmp_path / "2025-08-31"
        day.mkdir()
        path = day / "xen.csv"
        path.write_bytes(self.OLD + b"2025-08-31T12:00:00Z,work,12,48,9000,400000\n")
        moved: list[str] = []
        ensure_day(tmp_path, date(2025, 8, 31), moved)
        values = {"ts": TS, "vm": "work", "cpu_usage": 13, "memory_kb": 5, "online_vcpus": 2}
        append_rows(path, schema.XEN, [schema.XEN.encode(values)])
        assert moved == []
        assert [p.name for p in day.iterdir() if ".bad-" in p.name] == []
        assert path.read_bytes() == (
            self.OLD
            + b"2025-08-31T12:00:00Z,work,12,48,9000,400000\n"
            + b"2025-08-31T23:59:59Z,work,13,,,5\n"
        )

    def test_a_header_that_is_neither_is_still_moved_aside(self, tmp_path):
        day = tmp_path / "2025-08-31"
        day.mkdir()
        (day / "xen.csv").write_bytes(b"ts,vm,cpu_usage\n")
        moved: list[str] = []
        ensure_day(tmp_path, date(2025, 8, 31), moved)
        assert len(moved) == 1
        assert (day / "xen.csv").read_bytes() == schema.XEN.header

    @given(
        st.fixed_dictionaries(
            {"vm": st.sampled_from(["work", "sys-net"])},
            optional={c.name: st.integers(0, 2**62) for c in schema.XEN.columns[2:]},
        )
    )
    def test_a_row_cut_to_the_older_layout_is_that_layout_encoded(self, values):
        old = schema.DailyFile("xen.csv", schema.XEN.columns[:6])
        row = {"ts": TS, **values}
        kept = {k: v for k, v in row.items() if k in old.names}
        assert schema.XEN.in_layout(schema.XEN.encode(row), 6) == old.encode(kept)

    def test_only_numbers_may_be_cut(self):
        with pytest.raises(ValueError, match="older layout"):
            schema.DailyFile("alerts.csv", schema.ALERTS.columns, older=(2,))
