"""``sysmon status`` from the files alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from conftest import run_sysmon
from fakes import write_tick

from sysmon import schema
from sysmon.commands import status as status_module
from sysmon.commands.status import (
    VALUES_WINDOW,
    Tail,
    build_status,
    format_age,
    render_status,
)
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
    """A name with terminal escapes is shown inert; a line past the decoder's limit is skipped."""
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
    # The shared decoder reads a line past its limit in pieces and skips each.
    assert report.skipped_rows >= 1
    assert "rows could not be read (unreadable" in shown


def test_no_day_folder_is_one_clear_line_not_empty_tables(tmp_path):
    """A fresh install: say where it looked and what to do, not `folder: None`."""
    report = build_status(tmp_path / "nothing", TS, 10)
    shown = render_status(report)
    assert "None" not in shown
    assert "qube" not in shown  # no empty table
    assert f"NOT OK: no day folder under {tmp_path / 'nothing'}" in shown


def test_ages_read_as_a_person_says_them():
    """12 s, 3 min, 2 h 5 min: not 7500 s."""
    assert [format_age(s) for s in (0, 12, 59.6, 60, 185, 3600, 7500, 86400, 90061)] == [
        "0 s",
        "12 s",
        "1 min",
        "1 min",
        "3 min",
        "1 h",
        "2 h 5 min",
        "1 d",
        "1 d 1 h",
    ]


def test_the_tables_show_ages_not_seconds(tmp_path):
    _fill(tmp_path)
    report = build_status(tmp_path, TS + timedelta(hours=2, minutes=5), 10)
    shown = render_status(report)
    assert "nothing written for 2 h 5 min" in shown
    assert "2 h 5 min ago" in shown  # the files' newest rows and the qubes' last polls
    assert "7500" not in shown


def _views(tmp_path, rows):
    path = tmp_path / "2025-08-31" / "views.csv"
    path.write_bytes(
        schema.VIEWS.header
        + b"".join(schema.VIEWS.encode({"ts": ts, "vm": vm, "flag": flag}) for ts, vm, flag in rows)
    )


def test_qubes_whose_views_disagree_now_are_named(tmp_path):
    """Only the newest tick counts; agree and one-view are no disagreement."""
    _fill(tmp_path)
    before = TS - timedelta(seconds=10)
    _views(
        tmp_path,
        [
            (before, "old", "cpu"),
            (TS, "work", "traffic"),
            (TS, "bad", "one-view"),
            (TS, "calm", "agree"),
            (TS, "net", "busy-but-silent"),
        ],
    )
    report = build_status(tmp_path, TS + timedelta(seconds=5), 10)
    assert report.disagree == (("net", "busy-but-silent"), ("work", "traffic"))
    shown = render_status(report)
    assert "views disagree now: net (busy-but-silent), work (traffic)" in shown
    assert "views.csv" in shown


def test_without_views_csv_nothing_is_said_of_views(tmp_path):
    _fill(tmp_path)
    report = build_status(tmp_path, TS + timedelta(seconds=5), 10)
    assert report.disagree == ()
    shown = render_status(report)
    assert "views disagree" not in shown


def test_status_reads_only_the_end_of_a_big_file(tmp_path):
    """The newest rows come from the file's end: a big system.csv is not read whole."""
    _fill(tmp_path)
    system = tmp_path / "2025-08-31" / "system.csv"
    old = schema.SYSTEM.encode({"ts": TS - timedelta(hours=1), "vm": "work", "mem_used_kb": 1})
    with system.open("r+b") as f:
        body = f.read()
        header = schema.SYSTEM.header
        f.seek(0)
        f.write(header + old * (2_000_000 // len(old)) + body[len(header) :])
    tail = Tail(system, schema.SYSTEM)
    rows = tail.read(VALUES_WINDOW, schema.Skipped())
    assert [r.cells[1] for r in rows] == ["work"]
    assert tail.bytes_read < 100_000
    report = build_status(tmp_path, TS + timedelta(seconds=5), 10)
    assert [q.mem_used_kb for q in report.qubes] == ["", "6"]


def test_a_planted_file_of_invented_qubes_gives_a_bounded_table(tmp_path, monkeypatch):
    """Thousands of made-up qubes in scrapes.csv and views.csv: a bounded table, the rest
    counted, and the views line a few names long."""
    monkeypatch.setattr(status_module, "MAX_QUBES", 50)
    _fill(tmp_path)
    folder = tmp_path / "2025-08-31"
    with (folder / "scrapes.csv").open("a") as f:
        f.writelines(f"2025-08-31T12:00:10Z,q{i}{'x' * 500},timeout,1,1,1,0\n" for i in range(2000))
    _views(tmp_path, [(TS, f"q{i}{'x' * 500}", "cpu" * 100) for i in range(2000)])
    with (folder / "system.csv").open("a") as f:  # and values no column can hold
        f.write(f"2025-08-31T12:00:10Z,work,{'9' * 30_000},1,1,1,1,1,10,{'8' * 30_000},1,1,1,1,1\n")
    report = build_status(tmp_path, TS + timedelta(seconds=5), 10)
    shown = render_status(report)
    assert len(report.qubes) <= 50
    assert len(shown.splitlines()) <= 50 + 30
    assert max(len(line) for line in shown.splitlines()) <= 2000
    assert "more qubes not shown" in shown


def test_a_churn_of_disposables_does_not_hide_a_qube_started_later(tmp_path, monkeypatch):
    """Any qube may start disposables, each named anew by dom0 (``dispNNNN``): past the
    table's cap of qubes, every qube started later that day was left out of it.
    Disposables have a cap of their own."""
    monkeypatch.setattr(status_module, "MAX_QUBES", 20)
    for i in range(25):
        write_tick(
            tmp_path,
            TS + timedelta(seconds=10 * i),
            [ScrapeResult(f"disp{i + 1}", "timeout", 8000)],
            None,
        )
    later = TS + timedelta(seconds=300)
    write_tick(tmp_path, later, [ScrapeResult("work", "timeout", 8000)], None)
    report = build_status(tmp_path, later + timedelta(seconds=5), 10)
    assert "work" in [q.vm for q in report.qubes]
    assert report.qubes_dropped == 5  # the disposables past their own cap


def test_disagreeing_disposables_do_not_push_a_named_qube_off_the_views_line(tmp_path):
    """Any qube may start disposables (``dispNNNN``, sorted before most names), and
    each can make its views disagree at will (a MemTotal of 1 kB): twelve of them
    filled the views line, and ``work``'s disagreement was only "and 1 more".
    Named qubes come first, then disposables as room allows, the rest counted."""
    _fill(tmp_path)
    _views(
        tmp_path,
        [(TS, f"disp{1000 + i}", "memory") for i in range(40)] + [(TS, "work", "cpu")],
    )
    report = build_status(tmp_path, TS + timedelta(seconds=5), 10)
    shown = render_status(report)
    (line,) = [text for text in shown.splitlines() if text.startswith("views disagree now")]
    assert line.startswith("views disagree now: work (cpu), disp1000 (memory), ")
    assert line.endswith(", and 29 disposables")
    assert len(line) < 400
