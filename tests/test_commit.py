"""Daily files and state: append-only, whole rows, recovery after a crash."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import pytest
from conftest import run_on_small_tmpfs
from csvcheck import read_day, read_strict
from fakes import write_tick
from hypothesis import given
from hypothesis import strategies as st

from sysmon import schema
from sysmon.protocol.metrics import AlertRecord, Snapshot, SysRecord
from sysmon.protocol.text import FORMULA_START, strip_controls
from sysmon.records import AlertCursor, PendingAlerts, QubeState, ScrapeResult, State
from sysmon.store.daily import append_rows, ensure_day
from sysmon.store.state import load_state, save_state

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


def _alert_result(vm: str, n: int, boot: str = "b") -> ScrapeResult:
    alerts = tuple(AlertRecord(1_700_000_000_000_000 + i, "k", f"{vm} {i}") for i in range(n))
    snap = Snapshot(SysRecord(boot_id=boot), (), None, (), alerts, 0, 1 + n, 1 + n, 0)
    return ScrapeResult(vm=vm, status="ok", duration_ms=1, snapshot=snap)


class TestCommitTick:
    def test_midnight_moves_rows_to_the_new_day(self, tmp_path):
        """23:59:59.9 and 00:00:00.1 land in their own UTC day folders."""
        before = datetime(2025, 8, 31, 23, 59, 59, 900000, tzinfo=UTC).replace(microsecond=0)
        after = datetime(2025, 9, 1, 0, 0, 0, 100000, tzinfo=UTC).replace(microsecond=0)
        write_tick(tmp_path, before, [_alert_result("a", 0)], None)
        write_tick(tmp_path, after, [_alert_result("a", 0)], None)
        day1 = read_day(tmp_path / "2025-08-31")["system.csv"]
        day2 = read_day(tmp_path / "2025-09-01")["system.csv"]
        assert [r["ts"] for r in day1] == ["2025-08-31T23:59:59Z"]
        assert [r["ts"] for r in day2] == ["2025-09-01T00:00:00Z"]

    def test_same_or_earlier_second_is_not_written_twice(self, tmp_path):
        assert write_tick(tmp_path, TS, [_alert_result("a", 0)], None).skipped is None
        again = write_tick(tmp_path, TS, [_alert_result("a", 0)], None)
        assert again.skipped is not None
        assert len(read_day(tmp_path / "2025-08-31")["system.csv"]) == 1

    def test_alerts_once_across_polls(self, tmp_path):
        write_tick(tmp_path, TS, [_alert_result("a", 3)], None)
        later = TS.replace(second=58, minute=58, hour=23, day=31)
        write_tick(tmp_path, later.replace(day=31, hour=23, minute=59, second=59), [], None)
        write_tick(tmp_path, datetime(2025, 9, 1, tzinfo=UTC), [_alert_result("a", 4)], None)
        msgs = [r["msg"] for r in read_day(tmp_path / "2025-08-31")["alerts.csv"]]
        msgs += [r["msg"] for r in read_day(tmp_path / "2025-09-01")["alerts.csv"]]
        assert [m.split(" ", 1)[1] for m in msgs] == [f"k: a {i}" for i in range(4)]

    @pytest.mark.parametrize("cut", ["nothing", "half-of-b", "all"])
    def test_crash_between_alert_rows_and_commit(self, tmp_path, cut):
        """After a crash, exactly the qubes whose rows are whole keep them."""
        folder = ensure_day(tmp_path, TS.date())
        alerts = folder / "alerts.csv"
        start = alerts.stat().st_size
        row_a = schema.ALERTS.format_row([TS, "a", "a0"])
        row_b = schema.ALERTS.format_row([TS, "b", "b0"])
        cursor_a = QubeState("b", None, AlertCursor("b", 1, frozenset({"ka"})))
        cursor_b = QubeState("b", None, AlertCursor("b", 1, frozenset({"kb"})))
        pending = PendingAlerts(
            file="2025-08-31/alerts.csv",
            start=start,
            commits=(
                ("a", start + len(row_a), cursor_a),
                ("b", start + len(row_a + row_b), cursor_b),
            ),
        )
        save_state(tmp_path, State(qubes={}, last_ts=0, pending=pending))
        written = {"nothing": b"", "half-of-b": row_a + row_b[:7], "all": row_a + row_b}[cut]
        with alerts.open("ab") as f:
            f.write(written)
        write_tick(tmp_path, TS, [], None)  # any next tick recovers first
        state = load_state(tmp_path)
        rows = read_strict(alerts)
        if cut == "nothing":
            assert rows == []
            assert state.qubes == {}
        elif cut == "half-of-b":
            assert [r["msg"] for r in rows] == ["a0"]
            assert state.qubes == {"a": cursor_a}
        else:
            assert [r["msg"] for r in rows] == ["a0", "b0"]
            assert state.qubes == {"a": cursor_a, "b": cursor_b}
        assert state.pending is None

    def test_damaged_state_is_set_aside(self, tmp_path):
        (tmp_path / "sysmon-state.json").write_text("{not json")
        assert load_state(tmp_path) == State()
        assert any(p.name.startswith("sysmon-state.json.damaged-") for p in tmp_path.iterdir())


FULL_DISK_SCRIPT = """
import functools, sys
from datetime import UTC, datetime
from pathlib import Path
from sysmon.records import ScrapeResult
from sysmon.protocol.metrics import AlertRecord, Snapshot, SysRecord
from sysmon.store.commit import commit_tick
from sysmon.transform.tick import build_tick
out = Path(sys.argv[1]) / "out"
filler = out.parent / "filler"
filler.write_bytes(b"x" * 64 * 1024)
freed = False
for second in range(1, 60):
    base = 1_700_000_000_000_000 + second * 1000
    big = tuple(AlertRecord(base + i, "k", "x" * 900) for i in range(20))
    snap = Snapshot(SysRecord(boot_id="b"), (), None, (), big, 0, 1, 1, 0)
    ts = datetime(2025, 8, 31, 12, 0, second, tzinfo=UTC)
    results = [ScrapeResult("a", "ok", 1, snapshot=snap)]
    plan = functools.partial(build_tick, ts=ts, results=results, qubes=None)
    outcome = commit_tick(out, ts, plan)
    print(second, outcome.rows_dropped, len(outcome.errors), int(freed))
    if outcome.rows_dropped and not freed:
        filler.unlink()  # space comes back
        freed = True
"""


def test_full_disk_drops_rows_whole_and_keeps_files_clean(tmp_path):
    """On a tiny real filesystem: rows that do not fit are dropped whole, logged,
    and what was written stays strictly parseable; alerts are retried later."""
    done = run_on_small_tmpfs(
        FULL_DISK_SCRIPT, "256k", tmp_path, then=f'cp -r "$1/out" {tmp_path}/copy'
    )
    assert done.returncode == 0, done.stderr
    # (structlog's default output shares stdout: keep the script's own lines)
    lines = [
        tuple(map(int, line.split()))
        for line in done.stdout.splitlines()
        if line.replace(" ", "").isdigit()
    ]
    assert any(dropped > 0 for _, dropped, _, _ in lines), "the disk never filled"
    first_drop = next(i for i, (_, dropped, _, _) in enumerate(lines) if dropped)
    # With the space back, the very next tick is written whole.
    assert lines[first_drop + 1][1:3] == (0, 0)
    files = read_day(tmp_path / "copy" / "2025-08-31")
    msgs = [r["msg"] for r in files["alerts.csv"]]
    assert len(msgs) == len(set(msgs)), "an alert was filed twice"
