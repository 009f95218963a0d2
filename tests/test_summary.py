"""The report's first screen: what needs attention, short, escaped, bounded."""

from __future__ import annotations

import contextlib
import os
import re
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

# The summary reads scrapes.csv and disk.csv through the report's fast path
# (report/frames.py): like the report, it needs pandas and numpy.
pytest.importorskip("pandas")

from sysmon import schema
from sysmon.commands.report import summary as summary_module
from sysmon.commands.report.render import import_pyplot
from sysmon.commands.report.summary import Summary, render_summary, summarize
from sysmon.schema.files import DailyFile
from sysmon.store.archive import build_archive
from sysmon.store.days import archive_dir
from sysmon.store.delivery import mark_delivered, record_attempt, record_refused

DAY = date(2025, 8, 31)
T0 = datetime(2025, 8, 31, 12, 0, 0, tzinfo=UTC)
TODAY = date(2025, 9, 10)
EVERYTHING = (float("-inf"), float("inf"))


def write(folder: Path, daily: DailyFile, rows: list[list[object]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / daily.file_name
    with path.open("ab") as f:
        if f.tell() == 0:
            f.write(daily.header)
        for row in rows:
            f.write(daily.format_row(row))


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def scrapes(vm: str, statuses: list[str]) -> list[list[object]]:
    return [[at(10 * i), vm, s, 5, 100, 3, 0] for i, s in enumerate(statuses)]


def alert(seconds: int, vm: str, msg: str) -> list[object]:
    return [at(seconds), vm, msg]


def text_of(html_text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html_text))


@pytest.fixture(name="day")
def _day(tmp_path: Path) -> Path:
    folder = tmp_path / "out" / DAY.isoformat()
    write(
        folder,
        schema.SCRAPES,
        scrapes("flaky", ["ok", "timeout", "timeout", "refused", "ok"])
        + scrapes("calm", ["ok", "skipped", "ok", "ok", "ok"])
        + scrapes("worse", ["timeout"] * 5),
    )
    write(
        folder,
        schema.DISK,
        [
            [at(0), "work", "/dev/xvdb", "/rw", 100, 95, 5, 95],
            [at(60), "work", "/dev/xvdb", "/rw", 100, 91, 9, 91],
            [at(0), "work", "/dev/xvda", "/", 100, 50, 50, 50],
            [at(0), "evil", "/dev/x", "<script>alert(1)</script>", 100, 99, 1, 99],
        ],
    )
    journal = [
        alert(i, "work", f"2025-08-31T11:{i % 60:02d}:00.000000Z sshd[{100 + i}]: Failed password")
        for i in range(1000)
    ]
    write(
        folder,
        schema.ALERTS,
        [
            *journal,
            alert(5, "work", "sysmon: rule cpu-busy firing on work: cpu_user > 90 (now 97)"),
            alert(50, "work", "sysmon: rule cpu-busy resolved on work: cpu_user > 90 (now 3)"),
            alert(60, "work", "sysmon: rule cpu-busy firing on work: cpu_user > 90 (now 95)"),
            alert(70, "evil", "sysmon: rule cpu-busy firing on evil: cpu_user > 90 (now 99)"),
            alert(80, "evil", "<img src=x onerror=alert(1)>\x1b[2J"),
            # A qube's journal line dressed as sysmon's: it has its entry time first.
            alert(90, "evil", "2025-08-31T12:00:00.000000Z sysmon: rule cpu-busy firing on x"),
        ],
    )
    return folder


def test_what_needs_attention(day: Path) -> None:
    s = summarize([day], None, *EVERYTHING, TODAY, workers=1)
    shown = text_of(render_summary(s))
    # Failed polls, the worst first, skipped is not a failure.
    assert shown.index("worse : 5 of 5 polls failed (timeout 5)") < shown.index(
        "flaky : 3 of 5 polls failed (timeout 2, refused 1)"
    )
    assert "calm" not in shown
    # Disks: the last value, and the peak when it was higher; 50 % is not listed.
    assert "work /rw: 91 % at 2025-08-31 12:01 (peak 95 %)" in shown
    assert "work / :" not in shown
    # Rules: the firings counted per qube.
    assert "cpu-busy : fired 3 times (work 2, evil 1)" in shown
    # A thousand journal lines, each with its own time and pid, are one kind.
    assert "1,000&times; work : sshd[100]: Failed password" in shown
    assert "Alerts: 1,006 in " in shown
    assert "Archive delivery 2025-08-31: NOT delivered: not archived yet" in shown


def test_a_qubes_names_and_messages_are_escaped(day: Path) -> None:
    page = render_summary(summarize([day], None, *EVERYTHING, TODAY, workers=1))
    assert "<script" not in page
    assert "<img" not in page
    assert "\x1b" not in page
    assert "&lt;script&gt;" in page


def test_every_link_leads_to_the_page(day: Path, tmp_path: Path) -> None:
    """The summary's links point at ids the report's page has."""
    pytest.importorskip("matplotlib")
    pytest.importorskip("pandas")
    from sysmon.commands.report import main  # noqa: PLC0415

    assert main([day], tmp_path / "page", None, None, None) == 0
    page = (tmp_path / "page" / "index.html").read_text()
    assert page.index("What needs attention") < page.index("<img")  # above the charts
    targets = set(re.findall(r"href='#([\w-]+)'", page))
    assert targets >= {"failures", "disk", "alerts", "alert-list"}
    for target in targets:
        assert f"id='{target}'" in page, target


def test_views_when_the_days_have_them(day: Path) -> None:
    assert "views disagree" not in render_summary(summarize([day], None, *EVERYTHING, TODAY))
    width = len(schema.VIEWS.columns)
    rows = [
        [at(10 * i), vm, *([1] * (width - 3)), flag]
        for i, (vm, flag) in enumerate(
            [("work", "agree"), ("work", "one-view"), ("evil", "busy-but-silent"), ("evil", "cpu")]
        )
    ]
    write(day, schema.VIEWS, rows)
    shown = text_of(render_summary(summarize([day], None, *EVERYTHING, TODAY, workers=1)))
    assert "Qubes whose views disagree" in shown
    assert "evil : busy-but-silent 1, cpu 1 polls" in shown
    assert "work :" not in shown.split("views disagree")[1].split("Archive")[0]


def test_planted_disagreeing_names_and_flags_stay_bounded(
    day: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the cap, a planted file's qubes are counted as others; an unknown flag is "other"."""
    monkeypatch.setattr(summary_module, "MAX_KEYS", 10)
    width = len(schema.VIEWS.columns)
    rows = [[at(i), f"q{i}", *([1] * (width - 3)), f"flag{i}"] for i in range(50)]
    write(day, schema.VIEWS, rows)
    s = summarize([day], None, *EVERYTHING, TODAY, workers=1)
    assert 0 < len(s.views) <= 10  # the day's other counts share the ten
    assert {f for counts in s.views.values() for f in counts} == {"other"}
    before = dict(s.views)
    later = summarize([day], None, *EVERYTHING, TODAY, workers=1)
    s.join(later)
    assert s.views.keys() == before.keys()


def test_a_line_per_day_on_delivery(tmp_path: Path) -> None:
    out = tmp_path / "out"
    days = [DAY + timedelta(days=i) for i in range(5)]
    for d in days:
        write(out / d.isoformat(), schema.SCRAPES, scrapes("a", ["ok"]))
    build_archive(out, days[0])
    mark_delivered(out, days[0], "monitor-2025-08-31.tgz")
    build_archive(out, days[1])
    record_attempt(out, days[1])
    record_refused(out, days[1])
    build_archive(out, days[2])
    lines = summarize([out / d.isoformat() for d in days], None, *EVERYTHING, days[4]).archive
    assert lines == [
        ("2025-08-31", "delivered to the vault as monitor-2025-08-31.tgz"),
        ("2025-09-01", "NOT delivered: 1 tries, the last refused by policy"),
        ("2025-09-02", "NOT delivered: archived, no copy tried yet"),
        ("2025-09-03", "NOT delivered: not archived yet"),
        ("2025-09-04", "today: archived and delivered after it ends (UTC)"),
    ]
    # Read from the archive itself (in the vault): said so.
    (line,) = summarize([archive_dir(out) / "monitor-2025-09-01.tgz"], None, *EVERYTHING).archive
    assert line == (
        "2025-09-01",
        "read from its archive monitor-2025-09-01.tgz (in the vault, or restored from it)",
    )


def test_filters_and_days_in_parallel_match_one_by_one(day: Path) -> None:
    second = day.parent / (DAY + timedelta(days=1)).isoformat()
    write(second, schema.SCRAPES, [[at(86400), "flaky", "timeout", 5, 100, 3, 0]])
    write(second, schema.DISK, [[at(86400), "work", "/dev/xvdb", "/rw", 100, 92, 8, 92]])
    one = summarize([day, second], None, *EVERYTHING, TODAY, workers=1)
    two = summarize([day, second], None, *EVERYTHING, TODAY, workers=2)
    assert render_summary(one) == render_summary(two)
    assert one.failed["flaky"]["timeout"] == 3
    assert one.disks[("work", "/rw")][1:] == (92.0, 95.0)  # the newest, the highest
    only = summarize([day, second], {"work"}, *EVERYTHING, TODAY, workers=1)
    assert set(only.polls) == set()
    assert set(only.alerts) == {key for key in only.alerts if key[0] == "work"}
    early = summarize([day, second], None, float("-inf"), at(25).timestamp(), TODAY, workers=1)
    assert early.polls["flaky"] == 3  # 12:00:00, :10, :20


def test_what_it_keeps_is_bounded(day: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A qube inventing messages cannot grow the summary: past the cap, "other"."""
    monkeypatch.setattr(summary_module, "MAX_KEYS", 3)
    write(day, schema.ALERTS, [alert(i, "evil", f"new {'x' * (i % 50)}") for i in range(200)])
    s = summarize([day], None, *EVERYTHING, TODAY, workers=1)
    assert len(s.alerts) == 3
    assert s.alerts.total() + s.alerts_other == 1006 + 200
    assert "more of other kinds" in text_of(render_summary(s))


def test_one_qube_inventing_messages_leaves_room_for_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kinds kept were first come, first kept: one qube sending a new message
    each poll (within its alert share) filled them in about two hours, and every
    other qube's alerts were "more of other kinds" after that.  Each qube has a
    share of the kinds; on one day and joined across days."""
    monkeypatch.setattr(summary_module, "MAX_KEYS", 10)
    monkeypatch.setattr(summary_module, "MAX_KINDS_PER_QUBE", 3)
    first, second = tmp_path / DAY.isoformat(), tmp_path / "2025-08-27"
    write(first, schema.ALERTS, [alert(i, "evil", f"new {'x' * (i % 50)}") for i in range(200)])
    write(first, schema.ALERTS, [alert(300, "work", "Out of memory: Killed process 1")])
    write(second, schema.ALERTS, [alert(86400 + i, "evil", f"y{'y' * i}") for i in range(20)])
    write(second, schema.ALERTS, [alert(86500, "vault", "I/O error, dev xvdb")])
    for days in ([first], [first, second]):
        s = summarize(days, None, *EVERYTHING, TODAY, workers=1)
        assert ("work", "Out of memory: Killed process #") in s.alerts
        assert sum(vm == "evil" for vm, _ in s.alerts) == 3
        assert s.alerts.total() + s.alerts_other == 201 + 21 * (len(days) - 1)
    assert ("vault", "I/O error, dev xvdb") in s.alerts


def test_disposables_share_one_qubes_kinds_of_alerts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each disposable a qube starts is a new name: twenty of them took every
    kind's place, as one qube alone no longer can.  Together they have one
    qube's share."""
    monkeypatch.setattr(summary_module, "MAX_KEYS", 10)
    monkeypatch.setattr(summary_module, "MAX_KINDS_PER_QUBE", 3)
    day = tmp_path / DAY.isoformat()
    write(day, schema.ALERTS, [alert(i, f"disp{i}", f"new {'x' * i}") for i in range(20)])
    write(day, schema.ALERTS, [alert(300, "work", "Out of memory: Killed process 1")])
    s = summarize([day], None, *EVERYTHING, TODAY, workers=1)
    assert ("work", "Out of memory: Killed process #") in s.alerts
    assert sum(vm.startswith("disp") for vm, _ in s.alerts) == 3


def test_one_screen_however_many_qubes(tmp_path: Path) -> None:
    folder = tmp_path / DAY.isoformat()
    write(folder, schema.SCRAPES, [r for i in range(300) for r in scrapes(f"q{i}", ["timeout"])])
    write(
        folder,
        schema.DISK,
        [[at(0), f"q{i}", "/dev/x", "/rw", 100, 99, 1, 99] for i in range(300)],
    )
    write(folder, schema.ALERTS, [alert(0, f"q{i}", f"m{'y' * i}") for i in range(300)])
    page = render_summary(summarize([folder], None, *EVERYTHING, TODAY, workers=1))
    assert page.count("<li>") <= 6 * 4 + 4 + 14
    assert "and 294 more qubes" in text_of(page)
    assert "and 294 more filesystems" in text_of(page)


def test_an_unreadable_archive_is_a_line_not_a_traceback(tmp_path: Path) -> None:
    broken = tmp_path / "monitor-2025-08-31.tgz"
    broken.write_bytes(b"\x1f\x8b not gzip")
    (line,) = summarize([broken], None, *EVERYTHING, TODAY).archive
    assert line[0] == "2025-08-31"
    assert line[1].startswith("cannot be read (")
    assert isinstance(Summary(), Summary)


def views_rows(
    vm: str, ticks: int, flag: str, cpu_self: float, cpu_xen: float
) -> list[list[object]]:
    """A qube's views.csv rows, a tick every 10 s: ``flag`` on each."""
    return [
        [at(10 * i), vm, cpu_self, cpu_xen, cpu_xen - cpu_self, 4_000_000, 4_096_000,
         1000, 1200, flag]
        for i in range(ticks)
    ]  # fmt: skip


def test_a_lying_qube_gets_its_views_on_one_chart(day: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    pytest.importorskip("numpy")
    write(
        day,
        schema.VIEWS,
        views_rows("miner", 120, "cpu", 2.0, 85.0) + views_rows("work", 120, "agree", 10, 11),
    )
    s = summarize([day], None, *EVERYTHING, TODAY, workers=1)
    # 20 min of ticks in 5-minute buckets: both series, the mean of each.
    points = s.view_points["miner"]
    assert points.width == summary_module.VIEW_BUCKET
    assert len(points.buckets) == 4
    first = points.buckets[min(points.buckets)]
    assert list(first[:6]) == [30, 30, 60.0, 30, 2550.0, 30]  # rows, disagreeing, cpu_self, cpu_xen
    charts = summary_module.draw_views(s, tmp_path / "page")
    assert list(charts) == ["miner"]  # the honest qube gets none
    assert (tmp_path / "page" / "views-1.png").read_bytes() == charts["miner"]
    assert charts["miner"].startswith(b"\x89PNG")
    page = render_summary(s, charts)
    assert "miner</b>: cpu 120 polls (<a href='#views-1'>chart</a>)" in page
    assert page.count("<figure id='views-1'><img alt='views of miner'") == 1
    assert "not a verdict" in page


def test_an_honest_day_gets_no_view_chart(day: Path, tmp_path: Path) -> None:
    write(day, schema.VIEWS, views_rows("work", 60, "agree", 10, 11))
    s = summarize([day], None, *EVERYTHING, TODAY, workers=1)
    assert summary_module.draw_views(s, tmp_path / "page") == {}
    page = render_summary(s, {})
    assert "none: inside, Xen and the netvm agree" in page
    assert "<figure" not in page
    assert not (tmp_path / "page").exists()


def test_a_hostile_name_on_a_view_chart_is_escaped(day: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    pytest.importorskip("numpy")
    evil = "<img src=x onerror=alert(1)>$x^2$\x1b[2J"
    write(day, schema.VIEWS, views_rows(evil, 40, "cpu", 1, 90))
    s = summarize([day], None, *EVERYTHING, TODAY, workers=1)
    page = render_summary(s, summary_module.draw_views(s, tmp_path / "page"))
    assert "<img src=x" not in page
    assert "\x1b" not in page
    assert "alt='views of &lt;img src=x onerror=alert(1)&gt;" in page
    assert sorted(p.name for p in (tmp_path / "page").iterdir()) == ["views-1.png"]


def test_planted_names_and_times_stay_bounded(
    day: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(summary_module, "MAX_VIEW_QUBES", 8)
    width = len(schema.VIEWS.columns)
    planted = [[at(i), f"planted-{i}", *([1] * (width - 3)), "agree"] for i in range(100)]
    # One qube's rows planted years apart: its buckets widen, they never multiply.
    far = [
        [datetime(1971 + i, 1, 1, tzinfo=UTC), "liar", 1, 90, 89, 1, 1, 1, 1, "cpu"]
        for i in range(0, 200, 3)
    ]
    write(day, schema.VIEWS, planted + far)
    s = summarize([day], None, *EVERYTHING, TODAY, workers=1)
    assert len(s.view_points) == 8
    # The liar came after the planted names: room was made for it.
    assert "liar" in s.view_points
    assert s.view_rows_other == 100 - 7
    points = s.view_points["liar"]
    assert points.last - points.first < summary_module.MAX_BUCKETS
    assert sum(b[0] for b in points.buckets.values()) == len(far)
    page = render_summary(s, {})
    assert "93 rows of views.csv not charted: past 8 qubes" in page


def test_view_points_join_across_days(tmp_path: Path) -> None:
    """Two days read apart and joined: one qube's points at the wider bucket."""
    early, late = summary_module.Points(), summary_module.Points()
    values: list[float | None] = [1.0, 2.0, None, None, None, None]
    for i in range(100):
        early.add(1_000_000 + 60 * i, values, disagree=False)
    for i in range(3):
        late.add(1_000_000 + 86_400 * 400 * i, values, disagree=True)
    assert early.width == summary_module.VIEW_BUCKET < late.width
    early.join(late)
    assert early.width == late.width
    assert sum(b[0] for b in early.buckets.values()) == 103
    assert sum(b[1] for b in early.buckets.values()) == 3
    assert early.last - early.first < summary_module.MAX_BUCKETS


def test_the_report_opens_with_the_view_charts(day: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    pytest.importorskip("pandas")
    from sysmon.commands.report import main  # noqa: PLC0415

    write(day, schema.VIEWS, views_rows("miner", 60, "cpu", 2.0, 85.0))
    assert main([day], tmp_path / "page", None, None, None) == 0
    page = (tmp_path / "page" / "index.html").read_text()
    assert page.index("<figure id='views-1'>") < page.index("<h2 id='cpu'>")
    assert (tmp_path / "page" / "views-1.png").exists()
    for target in set(re.findall(r"href='#([\w-]+)'", page)):
        assert f"id='{target}'" in page, target


@pytest.mark.parametrize(
    "cell",
    ["0", "12", "-3", "12.5", "1" * 19, "1" * 20, "²", "١٢", "", "1e5", "nan", " 1", "0.1234567"],
)
def test_view_cells_read_as_the_schema_reads_them(cell: str) -> None:
    """The fast path gives what Column.number gives, for every view column."""
    for column in summary_module._VIEW_COLUMNS:
        assert summary_module._view_number(cell) == column.number(cell), column.name
        assert summary_module._remembered(cell) == column.number(cell), column.name


def test_a_view_chart_shades_where_the_views_disagreed(tmp_path: Path) -> None:
    """Two runs of disagreeing ticks: two shaded spans on each panel, no more."""
    pytest.importorskip("matplotlib")
    np = pytest.importorskip("numpy")
    plt = import_pyplot()
    points = summary_module.Points()
    values: list[float | None] = [1.0, 80.0, 4e6, 4e6, None, None]
    for minute in range(60):
        points.add(1_756_641_600 + 60 * minute, values, disagree=minute < 10 or minute >= 50)
    spans: list[tuple[float, float]] = []
    real = plt.Axes.axvspan

    def counted(ax: object, begin: float, end: float, **kw: object) -> object:
        spans.append((begin, end))
        return real(ax, begin, end, **kw)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plt.Axes, "axvspan", counted)
        png = summary_module._draw_view(plt, "miner", points)
    assert png.startswith(b"\x89PNG")
    assert len(spans) == 4  # two runs, two panels (no traffic: no third)
    assert np.isclose(spans[1][1] - spans[1][0], 600 / 86400)


def test_a_planted_file_name_is_escaped(tmp_path: Path) -> None:
    """A file in the vault named as markup (``sysmon report QubesIncoming/*``) shows escaped."""
    planted = tmp_path / "<img src=x onerror=alert(1)>.tgz"
    planted.write_bytes(b"\x1f\x8b not gzip")
    folder = tmp_path / "<script>alert(2)"
    write(folder, schema.SCRAPES, scrapes("a", ["ok"]))
    page = render_summary(summarize([planted, folder], None, *EVERYTHING, TODAY, workers=1))
    assert "<img" not in page
    assert "<script" not in page
    assert "&lt;script&gt;" in page


def test_planted_names_cannot_grow_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Qubes, statuses, rules and flags a planted file invents: bounded in number and size."""
    monkeypatch.setattr(summary_module, "MAX_KEYS", 10)
    folder = tmp_path / DAY.isoformat()
    folder.mkdir()
    huge = "q" * 60_000  # a cell far longer than any qube's name (sysmon's writer cuts it)
    ts = "2025-08-31T12:00:00Z"
    lines = [
        f"{ts},{huge}{i},bad{i},5,100,3,0\n{ts},{huge}{i},worse{i},5,100,3,0\n" for i in range(50)
    ]
    (folder / "scrapes.csv").write_bytes(schema.SCRAPES.header + "".join(lines).encode())
    lines = [f"{ts},{huge}{i},sysmon: rule r{i} firing on q{i}: x (now 1)\n" for i in range(50)]
    (folder / "alerts.csv").write_bytes(schema.ALERTS.header + "".join(lines).encode())
    width = len(schema.VIEWS.columns)
    rows = [[at(i), f"q{i}", *([1] * (width - 3)), f"f{i}"] for i in range(50)]
    write(folder, schema.VIEWS, rows)
    s = Summary()
    for _ in range(2):  # read, and joined with another day
        s.join(summarize([folder], None, *EVERYTHING, TODAY, workers=1))
    assert s.skipped.rows == 0
    assert len(s.polls) <= 10
    kept = [*s.polls, *s.failed, *s.rules, *s.views, *(vm for vm, _ in s.alerts)]
    kept += [name for d in (s.failed, s.rules, s.views) for c in d.values() for name in c]
    assert max(len(name) for name in kept) <= summary_module.MAX_TEXT
    assert sum(len(c) for d in (s.failed, s.rules, s.views) for c in d.values()) <= 10
    # The first screen lists a few rules, and says how many more.
    page = render_summary(s)
    assert page.count("fired once") + page.count("fired 2 times") <= summary_module.SHOWN


def test_a_planted_fifo_or_huge_marker_cannot_hold_the_report(tmp_path: Path) -> None:
    """The archive's markers beside the days: a FIFO would block a plain read for ever,
    a huge file would be read whole."""
    out = tmp_path / "out"
    days = [DAY, DAY + timedelta(days=1)]
    for d in days:
        write(out / d.isoformat(), schema.SCRAPES, scrapes("a", ["ok"]))
    folder = archive_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    fifos = [folder / f"monitor-{DAY.isoformat()}.{kind}" for kind in ("delivered", "attempts")]
    for fifo in fifos:
        os.mkfifo(fifo)
    (folder / f"monitor-{days[1].isoformat()}.attempts").write_bytes(b"started\n" * 2_000_000)
    done: list[Summary] = []
    reader = threading.Thread(
        target=lambda: done.append(
            summarize([out / d.isoformat() for d in days], None, *EVERYTHING, TODAY, workers=1)
        ),
        daemon=True,
    )
    reader.start()
    reader.join(30)  # not a speed figure: without the fix it never returns
    for fifo in fifos:  # let a blocked reader go
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert done, "the report hung on a FIFO"
    lines = dict(done[0].archive)
    assert lines[DAY.isoformat()].startswith("NOT delivered")
    assert lines[days[1].isoformat()].startswith("NOT delivered")


def test_a_handler_note_says_its_time_is_the_boot(tmp_path: Path) -> None:
    """The handler's note carries the qube's boot time on purpose: the report says so."""
    folder = tmp_path / DAY.isoformat()
    note = "2025-08-30T06:00:00.000000Z sysmon-handler: journal not readable (exit 1)"
    write(folder, schema.ALERTS, [alert(0, "work", note), alert(10, "work", "x kernel: y")])
    shown = text_of(render_summary(summarize([folder], None, *EVERYTHING, TODAY, workers=1)))
    assert "journal not readable (exit 1) (dated the qube's boot, on purpose" in shown
    assert shown.count("dated the qube's boot") == 1


def test_disposables_share_one_place_among_the_qubes_whose_views_disagree(day: Path) -> None:
    """Any qube may start disposables and keep them running, each free to make its
    views disagree (a MemTotal of 1 kB): six of them, all day, took the six places
    (list and charts), dispNNNN sorting before most names, and ``work``, mined for
    half the day, was only "1 more".  Disposables share one place."""
    width = len(schema.VIEWS.columns)
    rows: list[list[object]] = []
    for i in range(100):
        rows += [[at(10 * i), f"disp{1000 + d}", *([1] * (width - 3)), "memory"] for d in range(6)]
        if i < 50:
            rows.append([at(10 * i), "work", *([1] * (width - 3)), "cpu"])
    write(day, schema.VIEWS, rows)
    summary = summarize([day], None, *EVERYTHING, TODAY, workers=1)
    listed = text_of(render_summary(summary)).split("views disagree")[1].split("Archive")[0]
    assert "disp1000 : memory 100 polls work : cpu 50 polls disp1001" in listed
    assert "work" in summary_module._disagreeing(summary)[: summary_module.SHOWN]


def test_disagreeing_disposables_do_not_take_every_chart_from_a_later_qube(
    day: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """View points are kept for MAX_VIEW_QUBES (256) qubes, room made only by an
    agreeing one: 256 disposables in a day (one every 6 minutes), each disagreeing
    once, kept a qube whose views disagreed from later in the day off the charts
    though first on the list.  A named qube makes room by a disposable's points."""
    monkeypatch.setattr(summary_module, "MAX_VIEW_QUBES", 8)
    rows: list[list[object]] = []
    for d in range(8):
        rows += [[at(10 * d), f"disp{1000 + d}", 1, 1, 0, 1, 1, 1, 1, "memory"]]
    rows += views_rows("work", 200, "cpu", 2.0, 85.0)[100:]
    write(day, schema.VIEWS, rows)
    s = summarize([day], None, *EVERYTHING, TODAY, workers=1)
    assert summary_module._disagreeing(s)[0] == "work"
    assert "work" in s.view_points
    assert len(s.view_points) <= 8
