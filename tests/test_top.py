"""``sysmon top``: the table model, the tail reading, and the real terminal under tmux."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import ROOT, require_tool, run_sysmon

from sysmon import schema
from sysmon.commands import top as top_module
from sysmon.commands.top import (
    BLOCKS,
    WINDOW,
    Board,
    Line,
    LiveBoard,
    View,
    arrange,
    safe,
    screen,
    sparkline,
)

sys.path.insert(0, str(ROOT / "bench"))
import realistic

TS = datetime(2025, 8, 31, 12, 0, 0, tzinfo=UTC)
HOSTILE = "\x1b]0;owned\x07\x1b[2J\u202eevil"
DRAWABLE = set(map(chr, range(32, 127))) | set(BLOCKS) | {"\n"}


def _write(folder: Path, daily: schema.DailyFile, rows: list[Mapping[str, object]]) -> None:
    path = folder / daily.file_name
    new = not path.exists()
    with path.open("ab") as f:
        if new:
            f.write(daily.header)
        for row in rows:
            f.write(daily.encode(row))


def _tick(
    folder: Path,
    ts: datetime,
    vm: str,
    *,
    status: str = "ok",
    state: str = "Running",
    cpu: float | None = None,
    xen: float | None = None,
    mem: int = 250,
    net: Mapping[str, tuple[int, int]] | None = None,
    disk: int | None = None,
) -> None:
    """One qube's rows of one tick: a poll, its state, and the rows asked for."""
    _write(folder, schema.SCRAPES, [{"ts": ts, "vm": vm, "status": status}])
    _write(folder, schema.QUBES, [{"ts": ts, "vm": vm, "state": state}])
    if cpu is not None:
        system = {"cpu_user": cpu / 2, "cpu_system": cpu / 2, "mem_total_kb": 1000}
        _write(folder, schema.SYSTEM, [{"ts": ts, "vm": vm, **system, "mem_used_kb": mem}])
    if xen is not None:
        _write(folder, schema.XEN, [{"ts": ts, "vm": vm, "cpu_usage": xen}])
    for name, (rx, tx) in (net or {}).items():
        counters = {"if": name, "rx_bytes": rx, "tx_bytes": tx}
        _write(folder, schema.NETWORK, [{"ts": ts, "vm": vm, **counters}])
    if disk is not None:
        where = {"fs": "/dev/xvda", "mount": "/", "pct_used": disk}
        _write(folder, schema.DISK, [{"ts": ts, "vm": vm, **where}])


def _day(tmp_path: Path, ts: datetime = TS) -> Path:
    folder = tmp_path / ts.date().isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _board(tmp_path: Path) -> LiveBoard:
    board = LiveBoard(tmp_path, 10)
    board.refresh(TS + timedelta(hours=1))
    return board


def _lines(tmp_path: Path, width: int = 100, view: View | None = None) -> list[str]:
    board = _board(tmp_path)
    return screen(board, board.folder, TS.timestamp(), view or View(), width)


def _by_vm(board: Board) -> dict[str, Line]:
    return {line.vm: line for line in board.lines()}


# ---- the model ---------------------------------------------------------------


def test_each_qube_shows_its_newest_tick_and_no_older_value(tmp_path: Path) -> None:
    """A poll that failed this tick shows its status and no CPU: never last tick's number."""
    day = _day(tmp_path)
    _tick(day, TS, "work", cpu=40, xen=45, mem=500)
    _tick(day, TS, "flaky", cpu=90, xen=91)
    later = TS + timedelta(seconds=10)
    _tick(day, later, "work", cpu=20, xen=22, mem=250)
    _tick(day, later, "flaky", status="timeout", xen=88)
    _tick(day, later, "gone", state="Halted")
    lines = {line.vm: line for line in _board(tmp_path).lines()}
    work, flaky, gone = lines["work"], lines["flaky"], lines["gone"]
    assert (work.status, work.cpu, work.xen, work.mem) == ("ok", 20, 22, 25)
    assert (flaky.status, flaky.cpu, flaky.xen) == ("timeout", None, 88)
    assert (gone.status, gone.running, gone.cpu) == ("halted", False, None)
    assert flaky.trouble
    assert not work.trouble


def test_network_counters_become_rates_over_its_own_interfaces(tmp_path: Path) -> None:
    """Bytes per second between the last two samples, summed; a counter reset gives no rate;
    a netvm's vifs are left out (what they carry crossed its eth0 too)."""
    day = _day(tmp_path)
    _tick(day, TS, "net", cpu=1, net={"eth0": (1000, 500), "vif1": (0, 0), "wg0": (0, 0)})
    _tick(day, TS, "reset", cpu=1, net={"eth0": (9000, 9000)})
    later = TS + timedelta(seconds=10)
    _tick(
        day, later, "net", cpu=1, net={"eth0": (11000, 1500), "vif1": (2000, 100), "wg0": (50, 50)}
    )
    _tick(day, later, "reset", cpu=1, net={"eth0": (10, 10)})
    lines = {line.vm: line for line in _board(tmp_path).lines()}
    assert (lines["net"].rx, lines["net"].tx) == (1005, 105)
    assert (lines["reset"].rx, lines["reset"].tx) == (None, None)


def test_views_gap_and_flag_only_when_views_csv_exists(tmp_path: Path) -> None:
    """Without views.csv nothing is derived (GAP '-'); with it, the gap, '!' if they disagree."""
    day = _day(tmp_path)
    _tick(day, TS, "work", cpu=10, xen=40)
    _tick(day, TS, "calm", cpu=10, xen=11)
    shown = "\n".join(_lines(tmp_path))
    assert " -  " in shown.splitlines()[2]  # the GAP column of a row
    assert "+30" not in shown
    _write(
        day,
        schema.VIEWS,
        [
            {"ts": TS, "vm": "work", "cpu_gap": 30.0, "flag": "cpu"},
            {"ts": TS, "vm": "calm", "cpu_gap": 1.0, "flag": "agree"},
        ],
    )
    lines = {line.vm: line for line in _board(tmp_path).lines()}
    assert (lines["work"].gap, lines["work"].flag, lines["work"].disagree) == (30, "cpu", True)
    assert not lines["calm"].disagree
    shown = "\n".join(_lines(tmp_path, width=100))
    assert "+30!" in shown
    assert "+1 " in shown


def test_sort_keys_filter_and_find(tmp_path: Path) -> None:
    day = _day(tmp_path)
    _tick(day, TS, "a-idle", cpu=1, xen=50)
    _tick(day, TS, "b-busy", cpu=90, xen=2, disk=95)
    _tick(day, TS, "c-mid", cpu=40, xen=30)
    _tick(day, TS, "d-off", state="Halted")
    lines = _board(tmp_path).lines()

    def order(view: View) -> list[str]:
        return [line.vm for line in arrange(lines, view)]

    assert order(View()) == ["b-busy", "c-mid", "a-idle", "d-off"]  # busiest first, '-' last
    view = View().key("c")
    assert view.reverse  # the same key again turns the order
    assert order(view) == ["a-idle", "c-mid", "b-busy", "d-off"]
    assert order(View().key("x")) == ["a-idle", "c-mid", "b-busy", "d-off"]
    assert order(View().key("n")) == ["a-idle", "b-busy", "c-mid", "d-off"]
    running = View().key("f")
    assert running.filter == "running"
    assert order(running) == ["b-busy", "c-mid", "a-idle"]
    trouble = running.key("f")
    assert order(trouble) == ["b-busy"]  # a disk over 90 %
    assert trouble.key("f").filter == "all"
    assert order(View(find="MID")) == ["c-mid"]


def test_sparkline_is_the_last_30_minutes_on_a_fixed_scale() -> None:
    end = 10_000
    history = [(end - WINDOW + 1, 0.0), (end - 60, 50.0), (end - 30, 100.0), (end, 10.0)]
    line = sparkline(history, end, 10)
    assert len(line) == 10
    assert line[0] == BLOCKS[0]
    assert line[-1] == BLOCKS[-1]  # the bucket's busiest moment
    assert line[1:-1] == " " * 8  # no rows: no bar
    assert sparkline([(end - WINDOW - 1, 99.0)], end, 5) == " " * 5  # older than 30 minutes
    assert sparkline([(end, 250.0), (end - 1500, -5.0)], end, 2, "ab") == "ab"  # clamped


def test_a_hostile_name_is_drawn_as_text(tmp_path: Path) -> None:
    """Escapes, BEL and bidi controls in a planted file reach the screen as '?'."""
    day = _day(tmp_path)
    _tick(day, TS, "work", cpu=10)
    with (day / "scrapes.csv").open("a") as f:
        f.write(f'{schema.format_ts(TS)},"{HOSTILE}",ok,1,1,1,0\n')
    for width in (80, 160):
        shown = "\n".join(_lines(tmp_path, width))
        assert set(shown) <= DRAWABLE
        assert "?]0;owned??" in shown
    assert safe("\x1b[31mred\u0301\t") == "?[31mred??"


@pytest.mark.parametrize("width", [60, 72, 80, 100, 132, 200])
def test_every_line_fits_the_terminal(tmp_path: Path, width: int) -> None:
    day = _day(tmp_path)
    for i, name in enumerate(["work", "a-very-long-qube-name-of-31-chars", "sys-net"]):
        _tick(day, TS, name, cpu=10 * i, xen=11 * i, disk=50, net={"eth0": (i, i)})
    board = _board(tmp_path)
    drawn = screen(board, board.folder, TS.timestamp(), View(), width, 24)
    assert len(drawn) == 24
    assert all(len(text) <= width for text in drawn), [len(t) for t in drawn]
    assert drawn[-1].startswith("q quit")
    assert "a-very-long" in "\n".join(drawn)


def test_a_screen_too_short_for_every_qube_says_how_many_more(tmp_path: Path) -> None:
    day = _day(tmp_path)
    for i in range(30):
        _tick(day, TS, f"q{i:02d}", cpu=i)
    board = _board(tmp_path)
    drawn = screen(board, board.folder, TS.timestamp(), View(), 80, 10)
    assert len(drawn) == 10
    assert "24 more" in drawn[-2]
    scrolled = screen(board, board.folder, TS.timestamp(), View(scroll=100), 80, 10)
    assert "q00" in scrolled[-2]  # the last rows, not past them


# ---- reading -----------------------------------------------------------------


def _big_day(tmp_path: Path, qubes: int, ticks: int) -> Path:
    start = TS - timedelta(seconds=10 * (ticks - 1))
    realistic.generate(tmp_path, qubes=qubes, start=start, ticks=ticks)
    return tmp_path / TS.date().isoformat()


def test_the_first_look_reads_the_last_30_minutes_and_then_only_what_was_appended(
    tmp_path: Path,
) -> None:
    """On a long day only the end of each file is read: bisection, then the appended bytes."""
    day = _big_day(tmp_path, qubes=6, ticks=1440)  # 4 h: about 9 MB
    board = LiveBoard(tmp_path, 10)
    board.refresh(TS)
    total = sum(p.stat().st_size for p in day.glob("*.csv"))
    first = sum(t.bytes_read for t in board.tails.values())
    assert first < total / 6, (first, total)  # 30 minutes of 4 h, and the bisection
    assert board.newest == int(TS.timestamp())
    assert len(board.lines()) == 6
    history = max(len(line.history) for line in board.lines())
    assert 170 <= history <= 181  # 30 minutes at 10 s
    later = TS + timedelta(seconds=10)
    _tick(day, later, "work", cpu=77, xen=80)
    board.refresh(later)
    appended = sum(t.bytes_read for t in board.tails.values()) - first
    assert appended < 2000
    assert _by_vm(board)["work"].cpu == 77


def test_a_partly_written_line_waits_and_a_replaced_file_is_read_afresh(tmp_path: Path) -> None:
    day = _day(tmp_path)
    _tick(day, TS, "work", cpu=10)
    board = _board(tmp_path)
    later = TS + timedelta(seconds=10)
    row = schema.SYSTEM.encode({"ts": later, "vm": "work", "cpu_user": 30, "cpu_system": 30})
    with (day / "system.csv").open("ab") as f:
        f.write(row[:20])
    board.refresh(later)
    assert board.qubes["work"].system[1] == 10
    with (day / "system.csv").open("ab") as f:
        f.write(row[20:])
    _write(day, schema.SCRAPES, [{"ts": later, "vm": "work", "status": "ok"}])
    board.refresh(later)
    assert board.qubes["work"].system[1] == 60
    (day / "system.csv").unlink()
    _write(day, schema.SYSTEM, [{"ts": later, "vm": "work", "cpu_user": 1, "cpu_system": 1}])
    board.refresh(later)
    assert board.qubes["work"].system[1] == 2


def test_a_fifo_or_symlink_in_the_day_folder_is_not_read(tmp_path: Path) -> None:
    day = _day(tmp_path)
    _tick(day, TS, "work", cpu=10)
    os.mkfifo(day / "xen.csv")
    (day / "views.csv").symlink_to("/etc/passwd")
    assert [line.vm for line in _board(tmp_path).lines()] == ["work"]  # and it did not block


def test_soon_after_midnight_the_last_30_minutes_begin_yesterday(tmp_path: Path) -> None:
    _tick(_day(tmp_path), TS.replace(hour=23, minute=50), "work", cpu=10)
    tomorrow = TS.replace(hour=23, minute=50) + timedelta(minutes=15)
    folder = tmp_path / tomorrow.date().isoformat()
    folder.mkdir()
    _tick(folder, tomorrow, "work", cpu=70)
    board = LiveBoard(tmp_path, 10)
    board.refresh(tomorrow)
    assert board.folder == folder
    assert [value for _, value in _by_vm(board)["work"].history] == [10, 70]


def test_a_new_day_folder_is_followed(tmp_path: Path) -> None:
    _tick(_day(tmp_path), TS, "work", cpu=10)
    board = _board(tmp_path)
    tomorrow = TS + timedelta(days=1)
    folder = tmp_path / tomorrow.date().isoformat()
    folder.mkdir()
    _tick(folder, tomorrow, "work", cpu=70)
    board.refresh(tomorrow)
    assert board.folder == folder
    assert _by_vm(board)["work"].cpu == 70


# ---- the command -------------------------------------------------------------


def test_once_prints_the_table(tmp_path: Path) -> None:
    # A day and 3 hours before now, so that the age ("1 d 3 h ago") and with it the
    # title's length are the same whenever the test runs (at a fixed past time, an
    # age of whole days is shorter and left room for the name).
    now = datetime.now(UTC).replace(microsecond=0)
    ts = now.replace(second=now.second // 10 * 10) - timedelta(days=1, hours=3)
    day = _day(tmp_path, ts)
    _tick(day, ts, "work", cpu=12, xen=15, disk=42)
    with (day / "scrapes.csv").open("a") as f:
        f.write(f'{schema.format_ts(ts)},"{HOSTILE}",ok,1,1,1,0\n')
    done = run_sysmon("top", "--once", "--out-dir", tmp_path, "--width", 80)
    assert done.returncode == 0, done.stderr
    assert set(done.stdout) <= DRAWABLE
    lines = done.stdout.splitlines()
    # 82 characters with the name: no room for it.
    assert lines[0].startswith(f"{day.name}  {ts:%H:%M:%S}Z 1 d 3 h ago STALE ")
    assert lines[1].split()[:4] == ["NAME", "STATUS", "CPU", "XEN"]
    assert lines[2].split()[:4] == ["work", "ok", "12%", "15%"]
    assert all(len(text) <= 80 for text in lines)


def test_once_without_rows_says_so(tmp_path: Path) -> None:
    done = run_sysmon("top", "--once", "--out-dir", tmp_path / "none")
    assert done.returncode == 1
    assert done.stdout.strip() == "sysmon top: no rows yet"


def test_live_view_needs_a_terminal(tmp_path: Path) -> None:
    done = run_sysmon("top", "--out-dir", tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == "sysmon top: not a terminal (use --once for plain text)"


# ---- a person at a terminal (tmux) ---------------------------------------------


class Tmux:
    """A real terminal: a tmux server of its own, one window running a command."""

    def __init__(self, tmp_path: Path, width: int = 80, height: int = 24) -> None:
        self.tmux = require_tool("tmux")
        self.socket = str(tmp_path / "tmux.sock")
        self.size = (width, height)

    def run(self, *args: str) -> str:
        done = subprocess.run(
            [self.tmux, "-S", self.socket, "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        return done.stdout

    def start(self, argv: list[str]) -> None:
        env = f"PYTHONPATH={shlex.quote(str(ROOT))} LANG=C.UTF-8 LC_ALL=C.UTF-8"
        shell = f"{env} {shlex.join(argv)}; echo exited $?; sleep 30"
        width, height = self.size
        self.run("-u", "new-session", "-d", "-s", "t", "-x", str(width), "-y", str(height), shell)

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "t")

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", "t", *keys)

    def type(self, text: str) -> None:
        self.run("send-keys", "-t", "t", "-l", text)

    def wait(self, predicate: Callable[[str], bool], what: str, timeout: float = 30) -> str:
        """The screen once `predicate` holds and it has settled.

        curses sends a frame in several writes and tmux parses each as it comes, so a capture
        can hold the new header over the old rows; two equal captures in a row are one frame.
        """
        deadline = time.monotonic() + timeout
        shown = before = ""
        while time.monotonic() < deadline:
            shown = self.screen()
            if shown == before and predicate(shown):
                return shown
            before = shown
            time.sleep(0.2)
        pytest.fail(f"timed out waiting for {what}; the screen:\n{shown}")

    def stop(self) -> None:
        subprocess.run(
            [self.tmux, "-S", self.socket, "kill-server"], capture_output=True, check=False
        )


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    terminal = Tmux(tmp_path)
    yield terminal
    terminal.stop()


def _rows(shown: str) -> list[str]:
    """The qubes' names, in the order drawn."""
    lines = shown.splitlines()
    return [line.split()[0] for line in lines[2:] if line.strip() and not line.startswith("q quit")]


def _top(out: Path) -> list[str]:
    return [sys.executable, "-m", "sysmon", "top", "--out-dir", str(out)]


@pytest.mark.slow
def test_in_a_real_terminal_keys_sort_filter_find_and_quit(tmp_path: Path, tmux: Tmux) -> None:
    """80x24 under tmux on a realistic day: the keys a person presses, and q."""
    now = datetime.now(UTC).replace(microsecond=0)
    now -= timedelta(seconds=now.second % 10)
    realistic.generate(tmp_path, qubes=12, start=now - timedelta(seconds=1990), ticks=200)
    day = tmp_path / now.date().isoformat()
    with (day / "scrapes.csv").open("a") as f:
        f.write(f'{schema.format_ts(now)},"{HOSTILE}",timeout,1,1,1,0\n')
    tmux.start(_top(tmp_path))
    shown = tmux.wait(lambda s: "q quit" in s and len(_rows(s)) == 13, "the first screen")
    lines = shown.splitlines()
    assert "sysmon top" in lines[0]
    assert lines[1].startswith("NAME")
    assert all(len(line) <= 80 for line in lines)
    assert len(_rows(shown)) == 13
    assert "?]0;owned??" in shown  # drawn as text
    assert tmux.run("display-message", "-p", "-t", "t", "#{pane_title}").strip() != "owned"
    assert any(ch in shown for ch in BLOCKS[1:])  # the sparklines, in UTF-8

    # Each wait is for the whole expected screen: a capture may show a frame half drawn.
    tmux.keys("n")
    shown = tmux.wait(
        lambda s: "sort name" in s and _rows(s) == sorted(_rows(s)), "the rows sorted by name"
    )
    names = _rows(shown)
    assert len(names) == 13
    tmux.keys("n")
    tmux.wait(
        lambda s: "sort name rev" in s and _rows(s) == sorted(names, reverse=True), "reversed"
    )

    tmux.keys("f", "f")
    # its poll timed out
    tmux.wait(lambda s: "show trouble" in s and "?]0;owned" in s, "the trouble filter")

    tmux.keys("f", "/")
    tmux.type("sys-n")
    shown = tmux.wait(lambda s: "find: sys-n_" in s, "the find prompt")
    tmux.keys("Enter")
    tmux.wait(lambda s: "/sys-n" in s and _rows(s) == ["sys-net"], "the found qubes")
    tmux.keys("/", "Escape")
    tmux.wait(lambda s: "/sys-n" not in s and len(_rows(s)) == 13, "find cleared")

    tmux.keys("q")
    tmux.wait(lambda s: "exited 0" in s, "q to quit")


@pytest.mark.slow
def test_a_terminal_curses_cannot_use_is_one_line(tmp_path: Path, tmux: Tmux) -> None:
    tmux.start(["env", "TERM=no-such-terminal", *_top(tmp_path)])
    shown = tmux.wait(lambda s: "exited" in s, "the command to end")
    assert "sysmon top: cannot draw on this terminal (TERM=no-such-terminal)" in shown
    assert "exited 2" in shown
    assert "Traceback" not in shown


@pytest.mark.slow
def test_on_a_live_demo_the_view_follows_the_ticks(tmp_path: Path, tmux: Tmux) -> None:
    """`sysmon demo` writes; `sysmon top` beside it shows each new tick, a wide terminal."""
    out = tmp_path / "demo"
    demo = subprocess.Popen(
        [sys.executable, "-m", "sysmon", "demo", "--out-dir", str(out), "--duration", "40",
         "--interval", "2"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        tmux.size = (120, 30)
        tmux.start(_top(out))
        shown = tmux.wait(lambda s: "-work " in s and " ok " in s, "the demo's qubes", 60)
        first = shown.splitlines()[0]
        tmux.wait(lambda s: s.splitlines()[0].split("(")[0] != first.split("(")[0], "a new tick")
        # three qubes, dom0, sys-monitor, a halted one
        shown = tmux.wait(
            lambda s: "%" in s and any(ch in s for ch in BLOCKS) and len(_rows(s)) == 6, "values"
        )
        assert "halted" in shown
        size = tmux.run("display-message", "-p", "-t", "t", "#{window_width}x#{window_height}")
        assert size.strip() == "120x30"
        assert "VIEWS" in shown.splitlines()[1], shown  # a wide terminal shows the views' column
        tmux.keys("q")
        tmux.wait(lambda s: "exited 0" in s, "q to quit")
    finally:
        demo.terminate()
        demo.wait(timeout=30)


def test_qubes_gone_for_30_minutes_make_room_for_new_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """The board keeps MAX_QUBES qubes; a planted burst of invented names (or weeks of
    DispVMs) must not hide every qube that comes after it."""
    monkeypatch.setattr(top_module, "MAX_QUBES", 3)
    board = Board()
    t0 = int(TS.timestamp())

    def scrape(ts: int, vm: str) -> schema.DecodedRow:
        return schema.DecodedRow(ts, (str(ts), vm, "ok", "1", "1", "1", "0"))

    board.feed(schema.SCRAPES, [scrape(t0, f"planted{i}") for i in range(3)])
    later = t0 + WINDOW + 10
    board.feed(schema.SCRAPES, [scrape(later, "work")])
    assert [line.vm for line in board.lines()] == ["work"]
    assert len(board.qubes) <= 3
    # Disposables too, within their own cap.
    board.feed(schema.SCRAPES, [scrape(later, f"disp{i}") for i in range(3)])
    board.feed(schema.SCRAPES, [scrape(later + WINDOW + 10, "disp1234")])
    assert [line.vm for line in board.lines()] == ["disp1234"]
    assert board.disposables == 1


def test_a_churn_of_disposables_does_not_hide_a_qube_started_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Any qube may start disposables, each named anew by dom0 (``dispNNNN``):
    past the board's cap of qubes, a qube started later was not drawn until
    the churn had been gone for 30 minutes.  Disposables have a cap of their own."""
    monkeypatch.setattr(top_module, "MAX_QUBES", 20)
    board = Board()
    t0 = int(TS.timestamp())

    def scrape(ts: int, vm: str) -> schema.DecodedRow:
        return schema.DecodedRow(ts, (str(ts), vm, "ok", "1", "1", "1", "0"))

    for i in range(25):
        board.feed(schema.SCRAPES, [scrape(t0 + 10 * i, f"disp{i + 1}")])
    board.feed(schema.SCRAPES, [scrape(t0 + 300, "work")])
    shown = [line.vm for line in board.lines()]
    assert "work" in shown
    assert sum(vm.startswith("disp") for vm in shown) == 20
    assert board.dropped == 5
