"""``sysmon report``: rates without negative spikes, hostile text escaped, archives read."""

from __future__ import annotations

import builtins
from datetime import UTC, datetime, timedelta

import attrs
import pytest
from conftest import IN_CI, run_sysmon
from fakes import write_tick

from sysmon.commands.report import ReportError, _import_pyplot, load, parse_when
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


def require_pyplot() -> None:
    """matplotlib, or skip (it is an optional extra); CI installs it."""
    try:
        _import_pyplot()
    except ReportError:
        if IN_CI:
            raise
        pytest.skip("matplotlib not installed")


def test_rates_have_no_negative_spike_across_a_reset(out):
    data = load([out], None, float("-inf"), float("inf"))
    assert data.rx["work"].v == [1.0, 1.0, 1.0, 1.0]  # KiB/s; the reset is a gap
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
    require_pyplot()
    report = tmp_path / "report"
    done = run_sysmon("report", out, "--out", report, timeout=120)
    assert done.returncode == 0, done.stderr
    page = (report / "index.html").read_text()
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("data:image/png;base64,") >= 5
    for name in ("cpu", "memory", "network", "disk", "connections", "failures"):
        assert (report / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_missing_matplotlib_is_a_clear_message(monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ReportError, match="pip install 'sysmon\\[report\\]'"):
        _import_pyplot()


def test_days_read_in_parallel_match_one_by_one(tmp_path):
    """Two days read by two processes give the same series as one process,
    including the rate across midnight."""
    base = datetime(2025, 8, 31, 23, 59, 40, tzinfo=UTC)
    for i in range(5):  # 23:59:40 ... 00:00:20
        result = ScrapeResult("work", "ok", 3, snapshot=snap(i + 1, 10240 * i))
        write_tick(tmp_path, base + timedelta(seconds=10 * i), [result], None)
    one = load([tmp_path], None, float("-inf"), float("inf"), workers=1)
    two = load([tmp_path], None, float("-inf"), float("inf"), workers=2)
    assert one == two
    assert one.rx["work"].v == [1.0, 1.0, 1.0, 1.0]  # 23:59:50, 00:00:00 (across days), :10, :20
    assert one.rows == two.rows


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_names_a_qube_chose_cannot_break_or_swell_the_report(tmp_path):
    """40 qubes, fresh mount names every poll, `$` mathtext, a 200 KiB field, years 1 and
    9999: the page is drawn, charts stay a bounded size, and skipped rows are counted."""
    require_pyplot()
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
    assert "3 rows skipped" in page
    _, height = _png_size(report / "cpu.png")
    assert height < 4000, height  # 12 panels at most; the rest in a table
    assert "q39" in page  # the qubes not drawn are listed
    _, height = _png_size(report / "disk.png")
    assert height < 4000, height
