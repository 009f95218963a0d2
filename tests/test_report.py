"""``sysmon report``: rates without negative spikes, hostile text escaped, archives read."""

from __future__ import annotations

import base64
import builtins
import gzip
import json
import math
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import pytest
from conftest import IN_CI, run_sysmon
from fakes import write_tick
from hypothesis import given, settings
from hypothesis import strategies as st

from sysmon import schema
from sysmon.commands.report.read import (
    MAX_CELL,
    Data,
    ReportError,
    import_pandas,
    load,
    parse_when,
    units,
)
from sysmon.commands.report.render import (
    Bins,
    _time_axis,
    charts_of,
    identical,
    import_pyplot,
    listed_alerts,
    render,
)
from sysmon.protocol.metrics import (
    AlertRecord,
    ConnRecord,
    DiskRecord,
    NetRecord,
    Snapshot,
    SysRecord,
)
from sysmon.records import ScrapeResult
from sysmon.store.archive import build_archive

T0 = datetime(2025, 8, 31, 12, 0, 0, tzinfo=UTC)


def snap(n: int, rx: int, boot: str = "b", alerts: tuple[AlertRecord, ...] = ()) -> Snapshot:
    ticks = {f"cpu_ticks_{k}": n * v for k, v in (("user", 10), ("system", 5), ("idle", 85))}
    zero = {f"cpu_ticks_{k}": 0 for k in ("nice", "iowait", "irq", "softirq", "steal")}
    return Snapshot(
        SysRecord(boot_id=boot, mem_total_kb=4096, mem_avail_kb=1024, **ticks, **zero),
        (NetRecord("eth0", rx, 0, 0, rx // 2, 0, 0), NetRecord("lo", 10**9 * n, 0, 0, 0, 0, 0)),
        ConnRecord(3, 1),
        (DiskRecord("/dev/xvdb", "/rw", 100, 30, 70),),
        alerts,
        0,
        5,
        5,
        0,
    )


@pytest.fixture(name="out")
def _out(tmp_path):
    """Six polls of one qube; its counters reset (a restart) at the fourth."""
    rx = [0, 10240, 20480, 100, 10340, 20580]
    for i, value in enumerate(rx):
        boot = "b" if i < 3 else "b2"
        alerts = (
            (AlertRecord(1_700_000_000_000_000 + i, "x", "<script>alert(1)</script>"),)
            if i == 1
            else ()
        )
        result = ScrapeResult("work", "ok", 3, snapshot=snap(i + 1, value, boot, alerts))
        write_tick(
            tmp_path,
            T0 + timedelta(seconds=10 * i),
            [result, ScrapeResult("dead", "timeout", 8000)],
            None,
        )
    return tmp_path


def require_report() -> None:
    """pandas and matplotlib, or skip (an optional extra); CI installs them."""
    try:
        import_pandas()
        import_pyplot()
    except ReportError:
        if IN_CI:
            raise
        pytest.skip("pandas or matplotlib not installed")


@pytest.fixture(autouse=True)
def _report_extra() -> None:
    require_report()


def plain(data: Data) -> dict[str, object]:
    """Every series, count and alert of ``data`` as plain lists (the golden file's shape)."""
    out: dict[str, object] = {
        name: {
            ("\t".join(k) if isinstance(k, tuple) else k): [s.t.tolist(), s.v.tolist()]
            for k, s in series.items()
        }
        for name, series in data.lines().items()
    }
    out["health"] = {vm: dict(sorted(c.items())) for vm, c in data.health.items()}
    out["alerts"] = sorted([float(t), vm, msg] for t, vm, msg in data.alerts)
    out.update(rows=data.rows, skipped=data.skipped, cut_series=data.cut_series)
    return out


def test_rates_have_no_negative_spike_across_a_reset(out):
    data = load([out], None, float("-inf"), float("inf"))
    assert data.rx["work"].v.tolist() == [1.0, 1.0, 1.0, 1.0]  # KiB/s; the reset is a gap
    assert all(v >= 0 for v in data.tx["work"].v)
    assert "lo" not in str(data.rx)
    assert data.health["dead"] == {"timeout": 6}
    assert data.cpu["work"].v[0] == pytest.approx(15.0)


def test_filters(out):
    only = load([out], {"dead"}, float("-inf"), float("inf"))
    assert not only.cpu
    window = load(
        [out], None, parse_when("2025-08-31T12:00:15"), parse_when("2025-08-31T12:00:35Z")
    )
    assert len(window.mem["work"].t) == 2
    with pytest.raises(ReportError):
        parse_when("yesterday")


def test_archives_and_folders_are_read_once(out):
    build_archive(out, T0.date())
    both = load(
        [out / "2025-08-31", out / "archives" / "monitor-2025-08-31.tgz"],
        None,
        float("-inf"),
        float("inf"),
    )
    single = load([out / "2025-08-31"], None, float("-inf"), float("inf"))
    assert both.rows == single.rows


def test_page_and_charts(out, tmp_path):
    """A self-contained page with every chart, and a qube's text escaped."""
    report = tmp_path / "report"
    done = run_sysmon("report", out, "--out", report, timeout=120)
    assert done.returncode == 0, done.stderr
    page = (report / "index.html").read_text()
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("data:image/png;base64,") >= 5
    for name in ("cpu", "memory", "network", "disk", "connections", "failures"):
        assert (report / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


@pytest.mark.parametrize(
    ("library", "entry"), [("matplotlib", import_pyplot), ("pandas", import_pandas)]
)
def test_a_missing_library_is_a_clear_message(monkeypatch, library, entry):
    real_import = builtins.__import__

    def without(name, *args, **kwargs):
        if name.startswith(library):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without)
    with pytest.raises(ReportError, match=f"pip install 'sysmon\\[report\\]'.*python3-{library}"):
        entry()


def test_a_day_folder_read_in_shares_is_the_day_read_whole(tmp_path):
    """Each day folder is two pieces of work; joined they are the day in one piece."""
    from sysmon.commands.report.reduce import Merge, read_share, read_unit, shares  # noqa: PLC0415

    base = datetime(2025, 8, 31, 23, 59, 40, tzinfo=UTC)
    for i in range(5):  # across midnight: two days
        result = ScrapeResult("work", "ok", 3, snapshot=snap(i + 1, 10240 * i))
        write_tick(tmp_path, base + timedelta(seconds=10 * i), [result], None)
    days = units([tmp_path])
    inf = float("inf")
    whole, pieces = Merge(), Merge()
    for day in days:
        whole.add(read_unit(day, None, -inf, inf))
    work = shares(days)
    assert len(work) == 2 * len(days) == 4
    for share in work:
        pieces.add(read_share(share, None, -inf, inf))
    assert plain(pieces.data()) == plain(whole.data())


def test_days_read_in_parallel_match_one_by_one(tmp_path):
    """Two days read by two processes give the same series as one process,
    including the rate across midnight."""
    base = datetime(2025, 8, 31, 23, 59, 40, tzinfo=UTC)
    for i in range(5):  # 23:59:40 ... 00:00:20
        result = ScrapeResult("work", "ok", 3, snapshot=snap(i + 1, 10240 * i))
        write_tick(tmp_path, base + timedelta(seconds=10 * i), [result], None)
    one = load([tmp_path], None, float("-inf"), float("inf"), workers=1)
    two = load([tmp_path], None, float("-inf"), float("inf"), workers=2)
    assert plain(one) == plain(two)
    assert one.rx["work"].v.tolist() == [
        1.0,
        1.0,
        1.0,
        1.0,
    ]  # 23:59:50, 00:00:00 (across days), :10, :20
    assert one.rows == two.rows


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_names_a_qube_chose_cannot_break_or_swell_the_report(tmp_path):
    """40 qubes, fresh mount names every poll, `$` mathtext, a 200 KiB field, years 1 and
    9999: the page is drawn, charts stay a bounded size, and skipped rows are counted."""
    out = tmp_path / "out"
    for i in range(6):
        results = []
        for q in range(40):
            disks = tuple(DiskRecord("/dev/x", f"/m{i}-{j}", 100, 50, 50) for j in range(20))
            s = attrs.evolve(snap(i + 1, 1024 * i), disk=disks)
            results.append(
                ScrapeResult(f"q{q:02d}-$x^2$" if q == 0 else f"q{q:02d}", "ok", 3, snapshot=s)
            )
        write_tick(out, T0 + timedelta(seconds=10 * i), results, None)
    day = out / "2025-08-31"
    with (day / "system.csv").open("a") as f:
        f.write('2025-08-31T12:01:00Z,"' + "x" * 200_000 + '",1,1,1,,,,,,,,,,\n')
        f.write("0001-01-01T00:00:00Z,old,1,1,98,,,,,,,,,,\n")
        f.write("9999-12-31T23:59:59Z,future,1,1,98,,,,,,,,,,\n")
    report = tmp_path / "report"
    done = run_sysmon("report", out, "--out", report, timeout=300)
    assert done.returncode == 0, done.stderr
    page = (report / "index.html").read_text()
    # The decoder reads the 200 KiB line in pieces: its quoted record past the
    # longest line at the second piece, then the third and the rest of the line,
    # of too few cells; then years 1 and 9999.
    assert "5 rows skipped" in page
    _, height = _png_size(report / "cpu.png")
    assert height < 4000, height  # 12 panels at most; the rest in a table
    assert "q39" in page  # the qubes not drawn are listed
    _, height = _png_size(report / "disk.png")
    assert height < 4000, height


GOLDEN = Path(__file__).parent / "fixtures" / "report"


@pytest.mark.parametrize("workers", [1, 2])
def test_a_realistic_sample_gives_the_first_readers_points(workers):
    """Every point the csv-module reader drew from 12 realistic hours around midnight
    (restart, halted hour, timeouts, quoted alerts), exactly: the C reader moved no point."""
    golden = json.loads(gzip.decompress((GOLDEN / "old-reader.json.gz").read_bytes()))
    data = load(sorted(GOLDEN.glob("monitor-*.tgz")), None, -math.inf, math.inf, workers=workers)
    got = plain(data)
    assert got.keys() == golden.keys()
    for name, expected in golden.items():
        assert got[name] == expected, name
    assert data.rows == 31_061
    assert len(data.rx["sys-firewall"].t) > 1000  # rates go on across midnight and the restart
    assert (data.rx["sys-firewall"].v >= 0).all()


def test_rows_that_cannot_be_read_are_counted_not_guessed(tmp_path):
    day = tmp_path / "2025-08-31"
    day.mkdir()
    ok = "2025-08-31T12:00:{:02d}Z,work,1.0,2.0,97.0,,,,,2048,,,,,\n"
    (day / "system.csv").write_text(
        schema.SYSTEM.header.decode()
        + ok.format(0)
        + "2025-08-31T12:00:10Z,work,1.0,2.0,97.0,,,,,2048,,,,,,,extra\n"  # 17 cells
        + "2025-08-31T12:00:20Z,"
        + "w" * (MAX_CELL + 1)
        + ",1,1,1,,,,,,,,,,\n"  # not our cell
        + "yesterday,work,1,1,1,,,,,,,,,,\n"  # not a time
        + "\n"  # a blank line
        + ok.format(30)
    )
    (day / "connections.csv").write_text(
        schema.CONNECTIONS.header.decode()
        + "2025-08-31T12:00:00Z,work,3,1\n"
        + "2025-08-31T12:00:10Z,work,=cmd|x,1\n"  # not a number: this cell empty, the file read
        + "2025-08-31T12:00:20Z,work,inf,1\n"
        + "2025-08-31T12:00:30Z,work,5,1\n"
    )
    (day / "alerts.csv").write_text(
        schema.ALERTS.header.decode()
        + '2025-08-31T12:00:00Z,work,"a, ""quoted"" message"\n'
        + '2025-08-31T12:00:10Z,work,"cut inside its quotes\n'  # a torn file's last row
    )
    data = load([day], None, -math.inf, math.inf)
    # The decoder reads on past the torn quote: nothing before is lost
    assert data.alerts == [
        (T0.timestamp(), "work", 'a, "quoted" message'),
        (T0.timestamp() + 10, "work", "cut inside its quotes\n"),
    ]
    assert data.cpu["work"].v.tolist() == [3.0, 3.0]
    assert data.mem["work"].v.tolist() == [2.0, 2.0]
    assert data.tcp["work"].v.tolist() == [3.0, 5.0]
    assert data.skipped == 4  # 17 cells, the long cell, the time, the blank line
    assert data.rows == 2 + 4 + 2  # a row whose time is not one is not a row


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.none() | st.floats(0, 100), st.none() | st.floats(0, 100),
                          st.none() | st.integers(0, 2**52)), min_size=1, max_size=20))  # fmt: skip
def test_cpu_and_memory_are_what_the_rows_say(tmp_path_factory, cells):
    """Rows written by the schema's own writer read back cell for cell."""
    out = tmp_path_factory.mktemp("out")
    (out / "2025-08-31").mkdir()
    rows = [
        schema.SYSTEM.format_row([T0 + timedelta(seconds=10 * i), "work", user, system, None,
                                  None, None, None, None, used, None, None, None, None, None])
        for i, (user, system, used) in enumerate(cells)
    ]  # fmt: skip
    (out / "2025-08-31" / "system.csv").write_bytes(schema.SYSTEM.header + b"".join(rows))
    data = load([out], None, -math.inf, math.inf, workers=1)

    def dec1(value: float | None) -> float | None:
        return None if value is None else float(f"{value:.1f}")  # as the file holds it

    as_written = [(dec1(user), dec1(system), used) for user, system, used in cells]
    cpu = [u + s for u, s, _ in as_written if u is not None and s is not None]
    assert (data.cpu["work"].v.tolist() if "work" in data.cpu else []) == cpu
    mem = [n / 1024 for _, _, n in as_written if n is not None]
    assert (data.mem["work"].v.tolist() if "work" in data.mem else []) == mem
    assert data.rows == len(cells)


def test_one_machine_under_several_names_is_said_on_the_page(tmp_path):
    """The demo's qubes are this machine: the page says so instead of looking broken."""
    out = tmp_path / "out"
    for i in range(4):
        results = [ScrapeResult(vm, "ok", 3, snapshot=snap(i + 1, 1024 * i)) for vm in ("a", "b")]
        restarted = snap(i + 1, 1024 * i, boot="b" if i < 2 else "b2")  # c differs: a gap
        results.append(ScrapeResult("c", "ok", 3, snapshot=restarted))
        write_tick(out, T0 + timedelta(seconds=10 * i), results, None)
    data = load([out], None, -math.inf, math.inf)
    assert identical(data) == [["a", "b"]]
    page = render(data, tmp_path / "report").read_text()
    assert "a, b report identical CPU series" in page


def test_a_single_filesystem_is_named_and_short_runs_read_as_times_of_day(out):
    """Each heatmap row names qube and mount; a minute of polls is labelled HH:MM:SS,
    a lone instant spans ten minutes (not 2025-2029)."""
    data = load([out], None, -math.inf, math.inf)
    disk = next(c for c in charts_of(data) if c.name == "disk")
    assert list(disk.series) == ["work /rw"]
    bins = Bins.spanning(data)
    assert bins is not None
    assert bins.width * bins.count <= 3600
    plt = import_pyplot()
    fig, ax = plt.subplots()
    ax.set_xlim(bins.start / 86400, (bins.start + bins.width * bins.count) / 86400)
    _time_axis(ax, bins)
    fig.canvas.draw()
    labels = [label.get_text() for label in ax.get_xticklabels() if label.get_text()]
    plt.close(fig)
    assert labels
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d", text) for text in labels), labels
    assert ax.get_xlabel() == "UTC, 2025-08-31"
    lone = load([out], None, -math.inf, parse_when("2025-08-31T12:00:00"))
    lone_bins = Bins.spanning(lone)
    assert lone_bins is not None
    assert 600 <= lone_bins.width * lone_bins.count <= 700


def test_the_realistic_generator_writes_what_the_schema_writes(tmp_path, monkeypatch):
    """bench/realistic.py formats rows by templates for speed: byte for byte what
    ``Schema.format_row`` writes for the same values (checked on two days of polls)."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
    try:
        import realistic  # noqa: PLC0415
    finally:
        sys.path.pop(0)
    start = datetime(2025, 8, 31, 23, 0, tzinfo=UTC)
    fast = realistic.generate(tmp_path / "fast", qubes=4, start=start, ticks=720, seed=3)

    def exact(file_name: str, values: list[object]) -> str:
        daily = next(s for s in schema.DAILY_FILES if s.file_name == file_name)
        return daily.format_row([schema.parse_ts(str(values[0])), *values[1:]]).decode()

    monkeypatch.setattr(realistic, "fast_row", exact)
    slow = realistic.generate(tmp_path / "slow", qubes=4, start=start, ticks=720, seed=3)
    assert [p.name for p in fast] == [p.name for p in slow] == ["2025-08-31", "2025-09-01"]
    for a, b in zip(fast, slow, strict=True):
        for daily in schema.DAILY_FILES:
            assert (a / daily.file_name).read_bytes() == (b / daily.file_name).read_bytes()
    alerts = (fast[1] / "alerts.csv").read_text() + (fast[0] / "alerts.csv").read_text()
    assert '""' in alerts  # quoted quotes: the alerts are the hard kind


def test_a_line_without_end_is_not_held_whole(tmp_path):
    """A planted 256 MB line in a day's file: the report's peak memory does not follow
    it (pandas' reader would hold the whole row), and the rows after it are still read."""
    day = tmp_path / "2025-08-31"
    day.mkdir()
    with (day / "connections.csv").open("wb") as f:
        f.write(schema.CONNECTIONS.header)
        f.write(b"2025-08-31T12:00:00Z,work,3,1\n")
        f.write(b"2025-08-31T12:00:10Z,work," + b"9" * (256 << 20) + b"\n")
        f.write(b"2025-08-31T12:00:20Z,work,5,1\n")
    script = (  # VmHWM: this program's own peak (ru_maxrss would count the forked pytest)
        "import sys; from pathlib import Path\n"
        "from sysmon.commands.report.read import load\n"
        "d = load([Path(sys.argv[1])], None, float('-inf'), float('inf'), workers=1)\n"
        "hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
        "print(d.tcp['work'].v.tolist(), d.skipped, int(hwm.split()[1]) // 1024)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(day)],
        capture_output=True, text=True, timeout=300, check=False, cwd=Path(__file__).parents[1],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    values, skipped, peak_mib = done.stdout.rsplit(" ", 2)
    assert values.startswith("[3.0, 5.0]")
    assert int(skipped) >= 1
    assert int(peak_mib) < 220, peak_mib  # pandas and numpy alone are about 100 MiB


def test_the_realistic_generator_writes_no_negative_xen_cpu(tmp_path):
    """Xen's CPU share is never below 0: a qube just above 1% plus noise gave -1 and -2
    (``int`` cuts toward 0 and nothing held the low end; ~40 rows of a 30-qube day)."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
    try:
        import realistic  # noqa: PLC0415
    finally:
        sys.path.pop(0)
    start = datetime(2025, 8, 25, tzinfo=UTC)
    for seed in (1, 2, 3):
        folders = realistic.generate(
            tmp_path / str(seed), qubes=4, start=start, ticks=720, seed=seed
        )
        usage = [
            int(line.split(",")[2])
            for folder in folders
            for line in (folder / "xen.csv").read_text().splitlines()[1:]
        ]
        assert len(usage) > 2000
        assert min(usage) >= 0, seed
        assert max(usage) <= 100, seed


def test_charts_drawn_by_worker_processes_are_the_ones_drawn_here(out, tmp_path):
    """Each chart is the same PNG, byte for byte, drawn in this process or by two workers,
    and each stays in its place on the page."""
    data = load([out], None, -math.inf, math.inf, workers=1)
    here = render(data, tmp_path / "here", workers=1)
    there = render(data, tmp_path / "there", workers=2)
    assert here.read_text() == there.read_text()
    pngs = sorted(p.name for p in (tmp_path / "here").glob("*.png"))
    assert len(pngs) >= 5
    for name in pngs:
        assert (tmp_path / "here" / name).read_bytes() == (tmp_path / "there" / name).read_bytes()
    shown = re.findall(r"<img alt='(\w+)' src='data:image/png;base64,([^']+)'>", there.read_text())
    assert sorted(f"{name}.png" for name, _ in shown) == pngs
    for name, encoded in shown:
        assert base64.b64decode(encoded) == (tmp_path / "there" / f"{name}.png").read_bytes()


def test_a_qube_flooding_its_journal_cannot_push_anothers_alerts_off_the_page(tmp_path):
    """The page listed the newest 2,000 alerts of all qubes: a qube filing 200 alerts a
    poll (the parser's cap, well within its share of the day) pushed every other
    qube's alert off it within 10 polls.  The room is shared: each qube's newest."""
    out = tmp_path / "out"
    oom = (AlertRecord(1_700_000_000_000_000, "kernel", "Out of memory: Killed process 42"),)
    for i in range(12):
        flood = tuple(
            AlertRecord(1_700_000_000_000_000 + 1000 * i + j, "evil", f"noise {i}-{j}")
            for j in range(200)
        )
        results = [ScrapeResult("evil", "ok", 3, snapshot=snap(i + 1, 0, alerts=flood))]
        if i == 0:
            results.append(ScrapeResult("work", "ok", 3, snapshot=snap(1, 0, alerts=oom)))
        write_tick(out, T0 + timedelta(seconds=10 * i), results, None)
    data = load([out], None, -math.inf, math.inf)
    assert len(data.alerts) == 12 * 200 + 1
    page = render(data, tmp_path / "report").read_text()
    listed = page[page.index("id='alert-list'") :]
    assert "Out of memory: Killed process 42" in listed
    assert listed.count("<td>evil</td>") == 1999  # the rest of the room, newest first
    assert "noise 11-199" in listed
    assert "noise 0-0" not in listed


@given(
    st.lists(st.tuples(st.integers(0, 50), st.sampled_from("abcde"), st.just("m")), max_size=80),
    st.integers(0, 30),
)
def test_listed_alerts_share_the_room_and_keep_each_qubes_newest(alerts, limit):
    listed = listed_alerts([(float(t), vm, msg) for t, vm, msg in alerts], limit)
    assert len(listed) <= limit
    assert listed == sorted(listed)
    qubes = {vm for _, vm, _ in alerts}
    for vm in qubes:
        mine = sorted(float(t) for t, v, _ in alerts if v == vm)
        shown = [t for t, v, _ in listed if v == vm]
        assert shown == mine[len(mine) - len(shown) :]  # its newest
        if len(mine) <= limit // len(qubes):
            assert len(shown) == len(mine)  # its fair share at least: all of them


def test_more_qubes_than_room_still_fills_the_room() -> None:
    """With more qubes than the room (a week of disposables, each with its boot's
    notices), each qube's share rounded down to 0 and the page listed no alert at
    all; and the room the rounding left was never used.  The rest of the room goes
    to the qubes whose next alert is the newest."""
    alerts = [(float(i), f"disp{i}", "m") for i in range(3000)]
    listed = listed_alerts(alerts, 2000)
    assert listed == alerts[1000:]  # the newest qube's alerts, one each
    three = [(float(t), vm, "m") for vm in "abc" for t in range(10)]
    assert len(listed_alerts(three, 10)) == 10  # 3 each, and one more: a tie, by name


@given(
    st.lists(st.tuples(st.integers(0, 50), st.text("abcde", min_size=1, max_size=2), st.just("m")),
             max_size=120),
    st.integers(0, 30),
)  # fmt: skip
def test_listed_alerts_use_all_the_room(alerts, limit):
    listed = listed_alerts([(float(t), vm, msg) for t, vm, msg in alerts], limit)
    assert len(listed) == min(limit, len(alerts))


def test_disposables_share_one_place_in_the_alert_list():
    """Any qube may start disposables, each a new name: as many qubes, they took
    the list's room from the others.  Together they have one qube's share."""
    alerts = [(float(i), f"disp{i}", "noise") for i in range(100)]
    alerts += [(float(i), "work", f"work {i}") for i in range(5)]
    alerts += [(float(i), "vault", f"vault {i}") for i in range(5)]
    listed = listed_alerts(alerts, limit=15)
    assert sum(vm == "work" for _, vm, _ in listed) == 5
    assert sum(vm == "vault" for _, vm, _ in listed) == 5
    assert sum(vm.startswith("disp") for _, vm, _ in listed) == 5
