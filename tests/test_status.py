"""``sysmon status`` from the files alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from conftest import run_sysmon
from fakes import write_tick

from sysmon.commands.status import build_status, render_status
from sysmon.protocol.metrics import Snapshot, SysRecord
from sysmon.records import ScrapeResult

TS = datetime(2025, 8, 31, 12, 0, 10, tzinfo=UTC)


def _fill(out):
    snap = Snapshot(
        SysRecord(boot_id="b", mem_total_kb=10, mem_avail_kb=4), (), None, (), (), 0, 1, 1, 0
    )
    write_tick(
        out,
        TS,
        [ScrapeResult("work", "ok", 5, snapshot=snap), ScrapeResult("bad", "timeout", 8000)],
        None,
    )


def test_fresh_rows_are_healthy(tmp_path):
    _fill(tmp_path)
    report = build_status(tmp_path, TS + timedelta(seconds=5), 10)
    assert report.healthy
    assert [(q.vm, q.status, q.failures_today, q.mem_used_kb) for q in report.qubes] == [
        ("bad", "timeout", 1, ""),
        ("work", "ok", 0, "6"),
    ]
    assert report.file_ages["system.csv"] == 5
    assert report.file_ages["alerts.csv"] is None
    assert "OK: rows are coming" in render_status(report)


def test_three_intervals_without_rows_is_not_ok(tmp_path):
    _fill(tmp_path)
    report = build_status(tmp_path, TS + timedelta(seconds=31), 10)
    assert not report.healthy
    assert "nothing written for 31 s" in report.reason


def test_cli_exit_codes(tmp_path):
    done = run_sysmon("status", "--out-dir", tmp_path)
    assert done.returncode == 1
    assert "NOT OK: no day folder" in done.stdout
    _fill(tmp_path)  # rows from 2025: stale now
    done = run_sysmon("status", "--out-dir", tmp_path)
    assert done.returncode == 1
    assert "work" in done.stdout


def test_a_newest_row_in_the_future_is_a_fault(tmp_path):
    """Rows stamped ahead of now mean a wrong clock, not "rows are coming"."""
    _fill(tmp_path)
    report = build_status(tmp_path, TS - timedelta(hours=1), 10)
    assert not report.healthy
    assert "in the future" in report.reason


def test_after_the_clock_came_back_the_real_day_is_judged(tmp_path):
    """A day folder left in the future by a clock that ran ahead does not mask today's."""
    _fill(tmp_path)
    snap = Snapshot(SysRecord(boot_id="b"), (), None, (), (), 0, 1, 1, 0)
    write_tick(
        tmp_path, TS.replace(year=2031), [ScrapeResult("work", "ok", 5, snapshot=snap)], None
    )
    report = build_status(tmp_path, TS + timedelta(seconds=5), 10)
    assert report.healthy, report.reason
    assert report.folder is not None
    assert report.folder.name == "2025-08-31"


def test_hostile_cells_reach_the_terminal_escaped_and_never_crash(tmp_path):
    """A name with terminal escapes is shown inert; a field over 128 KiB is skipped, counted."""
    _fill(tmp_path)
    scrapes = tmp_path / "2025-08-31" / "scrapes.csv"
    with scrapes.open("a") as f:
        f.write("2025-08-31T12:00:10Z,\x1b]0;owned\x07\x1b[2Jevil,ok,1,1,1,0\n")
        f.write('2025-08-31T12:00:10Z,"' + "x" * 200_000 + '",ok,1,1,1,0\n')
    report = build_status(tmp_path, TS + timedelta(seconds=5), 10)
    shown = render_status(report)
    assert "\x1b" not in shown
    assert "\x07" not in shown
    assert "evil" in shown
    assert report.skipped_rows == 1
    assert "1 row could not be read" in shown


def test_no_day_folder_is_one_clear_line_not_empty_tables(tmp_path):
    """A fresh install: say where it looked and what to do, not `folder: None`."""
    report = build_status(tmp_path / "nothing", TS, 10)
    shown = render_status(report)
    assert "None" not in shown
    assert "qube" not in shown  # no empty table
    assert f"NOT OK: no day folder under {tmp_path / 'nothing'}" in shown
