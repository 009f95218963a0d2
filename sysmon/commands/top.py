"""``sysmon top``: every qube at a glance, live, from the daily files alone.

It follows today's files with :class:`~sysmon.commands.status.Tail` (the
last 30 minutes found by bisection near the end of each file, then only the
lines appended since), every row through the bounded decoder, and never
talks to the daemon.  Every cell drawn is made of printable ASCII (and the
sparkline's blocks): a qube name with terminal escapes is drawn as text.
"""

from __future__ import annotations

import contextlib
import curses
import locale
import os
import shutil
import sys
from collections import deque
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import attrs

from sysmon import schema
from sysmon.commands.status import STALE_INTERVALS, Tail, format_age, latest_day
from sysmon.protocol.names import looks_disposable
from sysmon.records import Status
from sysmon.store.daily import day_dir

#: The sparkline's history, and what the first look reads of each file.
WINDOW = 1800
#: Qubes (and as many disposables) and per-qube interfaces or filesystems
#: kept: a planted file cannot grow the view.
MAX_QUBES = 1024
MAX_LABELS = 64
#: Points of history kept per qube (a tick every second for 30 minutes).
MAX_POINTS = 1800
#: Seconds between looks at the files.
REFRESH = 1.0
#: A disk is full enough to be trouble (the report's summary uses 90 % too).
DISK_TROUBLE = 90.0
BLOCKS = "▁▂▃▄▅▆▇█"
ASCII_BLOCKS = "_.:-=+*#"
OK_STATUSES = frozenset({Status.OK, Status.SKIPPED})
AGREEING = frozenset({"agree", "one-view"})
FILTERS = ("all", "running", "trouble")


def safe(text: str) -> str:
    """``text`` as printable ASCII: anything else (escapes, bidi, wide) becomes ``?``."""
    return "".join(ch if " " <= ch <= "~" else "?" for ch in text)


@attrs.define
class _Net:
    """The last two samples of one interface's counters."""

    samples: deque[tuple[int, float, float]] = attrs.field(factory=lambda: deque(maxlen=2))

    def rates(self) -> tuple[float | None, float | None]:
        if len(self.samples) < 2:
            return None, None
        (t0, rx0, tx0), (t1, rx1, tx1) = self.samples
        if t1 <= t0:
            return None, None
        # A counter that went back was reset (the qube restarted): no rate.
        rx = (rx1 - rx0) / (t1 - t0) if rx1 >= rx0 else None
        tx = (tx1 - tx0) / (t1 - t0) if tx1 >= tx0 else None
        return rx, tx


@attrs.define
class _Qube:
    """What the files said last of one qube."""

    seen: int = 0
    status: tuple[int, str] = (0, "")
    state: tuple[int, str] = (0, "")
    system: tuple[int, float | None, float | None] = (0, None, None)  # cpu, mem %
    xen: tuple[int, float | None] = (0, None)
    views: tuple[int, float | None, str] = (0, None, "")
    net: dict[str, _Net] = attrs.field(factory=dict)
    disk: tuple[int, float | None] = (0, None)
    history: deque[tuple[int, float]] = attrs.field(factory=lambda: deque(maxlen=MAX_POINTS))
    xen_history: deque[tuple[int, float]] = attrs.field(factory=lambda: deque(maxlen=MAX_POINTS))


@attrs.frozen
class Line:
    """One qube's line of the table: numbers to sort on, text to show."""

    vm: str
    status: str
    running: bool
    cpu: float | None
    xen: float | None
    gap: float | None
    flag: str
    mem: float | None
    rx: float | None
    tx: float | None
    disk: float | None
    history: tuple[tuple[int, float], ...]

    @property
    def disagree(self) -> bool:
        """The views disagree (views.csv's flag)."""
        return bool(self.flag) and self.flag not in AGREEING

    @property
    def trouble(self) -> bool:
        """Something to look at: a poll that failed, views that disagree, a full disk."""
        failed = self.running and self.status not in {*OK_STATUSES, "-", "running"}
        return failed or self.disagree or (self.disk or 0) >= DISK_TROUBLE


def _number(column: schema.Column, cell: str) -> float | None:
    return column.number(cell)


class Board:
    """Rows in, one line per qube out.  Pure: it is handed decoded rows."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self.qubes: dict[str, _Qube] = {}
        self.newest = 0  # the newest tick seen, epoch seconds
        self.ticks: deque[int] = deque(maxlen=2)  # the last two ticks of scrapes.csv
        self.dropped = 0  # rows of qubes past MAX_QUBES
        self.disposables = 0  # of self.qubes, dom0's dispNNNN: MAX_QUBES of their own
        self.decoded = schema.Skipped()  # rows the decoder left out
        self._may_forget = True

    def _full(self, disposable: bool) -> bool:
        # Any qube may start disposables, each named anew by dom0: they have
        # a cap of their own, or a churn of them hid every qube started later.
        mine = self.disposables if disposable else len(self.qubes) - self.disposables
        return mine >= MAX_QUBES

    def _qube(self, vm: str, ts: int) -> _Qube | None:
        qube = self.qubes.get(vm)
        if qube is None:
            disposable = looks_disposable(vm)
            if self._full(disposable) and self._may_forget:
                # Qubes gone for 30 minutes (lines() shows them no more) make
                # room: invented names, or weeks of DispVMs, do not fill the
                # board for good.  Once per feed: a full board costs one pass.
                self._may_forget = False
                for gone in [k for k, q in self.qubes.items() if q.seen < self.newest - WINDOW]:
                    del self.qubes[gone]
                self.disposables = sum(map(looks_disposable, self.qubes))
            if self._full(disposable):
                self.dropped += 1
                return None
            self.disposables += disposable
            qube = self.qubes[vm] = _Qube()
        qube.seen = max(qube.seen, ts)
        return qube

    def feed(self, daily: schema.DailyFile, rows: Iterable[schema.DecodedRow]) -> None:
        """Take rows of one daily file, in the file's order."""
        handle = self._handlers().get(daily.file_name)
        if handle is None:
            return
        self._may_forget = True
        for row in rows:
            self.newest = max(self.newest, row.ts)
            qube = self._qube(row.cells[1], row.ts)
            if qube is not None:
                handle(qube, row)

    def _handlers(self) -> dict[str, Callable[[_Qube, schema.DecodedRow], None]]:
        return {
            schema.SCRAPES.file_name: self._scrape,
            schema.QUBES.file_name: self._state,
            schema.SYSTEM.file_name: self._system,
            schema.XEN.file_name: self._xen,
            schema.VIEWS.file_name: self._views,
            schema.NETWORK.file_name: self._network,
            schema.DISK.file_name: self._disk,
        }

    def _scrape(self, qube: _Qube, row: schema.DecodedRow) -> None:
        qube.status = (row.ts, row.cells[2])
        if not self.ticks or row.ts > self.ticks[-1]:
            self.ticks.append(row.ts)

    @staticmethod
    def _state(qube: _Qube, row: schema.DecodedRow) -> None:
        qube.state = (row.ts, row.cells[2])

    @staticmethod
    def _system(qube: _Qube, row: schema.DecodedRow) -> None:
        s = schema.SYSTEM
        user = _number(s.column("cpu_user"), row.cells[2])
        system = _number(s.column("cpu_system"), row.cells[3])
        cpu = None if user is None or system is None else user + system
        used = _number(s.column("mem_used_kb"), row.cells[9])
        total = _number(s.column("mem_total_kb"), row.cells[8])
        mem = None if used is None or not total else 100 * used / total
        qube.system = (row.ts, cpu, mem)
        if cpu is not None:
            qube.history.append((row.ts, cpu))

    @staticmethod
    def _xen(qube: _Qube, row: schema.DecodedRow) -> None:
        cpu = _number(schema.XEN.column("cpu_usage"), row.cells[2])
        qube.xen = (row.ts, cpu)
        if cpu is not None:
            qube.xen_history.append((row.ts, cpu))

    @staticmethod
    def _views(qube: _Qube, row: schema.DecodedRow) -> None:
        v = schema.VIEWS
        gap = _number(v.column("cpu_gap"), row.cells[v.names.index("cpu_gap")])
        qube.views = (row.ts, gap, safe(row.cells[v.names.index("flag")]))

    @staticmethod
    def _network(qube: _Qube, row: schema.DecodedRow) -> None:
        n = schema.NETWORK
        name = row.cells[2]
        if schema.forwarded(name):  # on the netvm's uplink too: counted there
            return
        if name not in qube.net and len(qube.net) >= MAX_LABELS:
            return
        rx = _number(n.column("rx_bytes"), row.cells[3])
        tx = _number(n.column("tx_bytes"), row.cells[6])
        if rx is not None and tx is not None:
            qube.net.setdefault(name, _Net()).samples.append((row.ts, rx, tx))

    @staticmethod
    def _disk(qube: _Qube, row: schema.DecodedRow) -> None:
        pct = _number(schema.DISK.column("pct_used"), row.cells[7])
        when, fullest = qube.disk
        if row.ts != when:  # a new round of df lines: the fullest of it
            fullest = None
        if pct is not None:
            fullest = pct if fullest is None else max(fullest, pct)
        qube.disk = (row.ts, fullest)

    @property
    def tick_interval(self) -> float:
        """Seconds between the last two ticks (the configured interval until there are two)."""
        if len(self.ticks) == 2 and 0 < self.ticks[1] - self.ticks[0] <= 3600:
            return float(self.ticks[1] - self.ticks[0])
        return self.interval

    def lines(self) -> list[Line]:
        """Every qube seen in the last 30 minutes, at most one tick old."""
        tick = self.newest
        # This tick's values only: a poll that failed now shows no number of the last.
        fresh = tick - self.tick_interval / 2
        lines = []
        for vm, q in self.qubes.items():
            if q.seen < tick - WINDOW:
                continue  # gone (deleted, or renamed) for 30 minutes
            for history in (q.history, q.xen_history):
                while history and history[0][0] < tick - WINDOW:
                    history.popleft()
            state = q.state[1] if q.state[0] >= tick - max(120.0, 2 * self.tick_interval) else ""
            polled = q.status[0] >= fresh
            if state and state != "Running":
                status = state.lower()
            elif polled:
                status = q.status[1]
            else:
                status = state.lower() or "-"
            rates = [net.rates() for net in q.net.values() if net.samples[-1][0] >= fresh]
            rx = [r for r, _ in rates if r is not None]
            tx = [t for _, t in rates if t is not None]
            lines.append(
                Line(
                    vm=safe(vm),
                    status=safe(status),
                    running=state in {"", "Running"},
                    cpu=q.system[1] if q.system[0] >= fresh else None,
                    xen=q.xen[1] if q.xen[0] >= fresh else None,
                    gap=q.views[1] if q.views[0] >= fresh else None,
                    flag=q.views[2] if q.views[0] >= fresh else "",
                    mem=q.system[2] if q.system[0] >= fresh else None,
                    rx=sum(rx) if rx else None,
                    tx=sum(tx) if tx else None,
                    # df lines come once a minute (disk_every polls).
                    disk=q.disk[1] if q.disk[0] >= tick - 3 * 60 else None,
                    history=tuple(q.history or q.xen_history),
                )
            )
        return lines


def read_day(board: Board, tails: dict[str, Tail], skipped: schema.Skipped) -> None:
    """Feed the board what was appended to each followed file since the last look."""
    for daily in (*schema.DAILY_FILES, schema.VIEWS):
        tail = tails.get(daily.file_name)
        if tail is not None:
            board.feed(daily, tail.read(WINDOW, skipped))


# ---- the table --------------------------------------------------------------

#: Sort keys: the column initials.
SORTS: dict[str, tuple[str, Callable[[Line], object]]] = {
    "n": ("name", lambda line: line.vm),
    "s": ("status", lambda line: line.status),
    "c": ("cpu", lambda line: line.cpu),
    "x": ("xen", lambda line: line.xen),
    "g": ("gap", lambda line: None if line.gap is None else abs(line.gap)),
    "m": ("mem", lambda line: line.mem),
    "r": ("rx", lambda line: line.rx),
    "t": ("tx", lambda line: line.tx),
    "d": ("disk", lambda line: line.disk),
}


@attrs.frozen
class View:
    """How the table is shown: sort key, reversed, filter, a name to find, scrolled rows."""

    sort: str = "c"
    reverse: bool = False
    filter: str = "all"
    find: str = ""
    scroll: int = 0

    def key(self, char: str) -> View:
        """The view after a single key (sort, filter)."""
        if char in SORTS:
            return attrs.evolve(self, sort=char, reverse=char == self.sort and not self.reverse)
        if char == "f":
            return attrs.evolve(self, filter=FILTERS[(FILTERS.index(self.filter) + 1) % 3])
        return self


def arrange(lines: list[Line], view: View) -> list[Line]:
    """Filtered and sorted: numbers busiest first, text A to Z, missing values last."""
    shown = [
        line
        for line in lines
        if view.find.lower() in line.vm.lower()
        and (
            view.filter == "all"
            or (view.filter == "running" and line.running)
            or (view.filter == "trouble" and line.trouble)
        )
    ]
    shown.sort(key=lambda line: line.vm)
    _, key = SORTS[view.sort]
    numeric = view.sort not in {"n", "s"}
    present = [line for line in shown if key(line) is not None]
    missing = [line for line in shown if key(line) is None]
    present.sort(key=key, reverse=numeric != view.reverse)  # type: ignore[arg-type]
    return present + missing


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _rate(value: float | None) -> str:
    """Bytes per second in four characters or so: 0, 512, 1.2K, 45K, 1.2M."""
    if value is None:
        return "-"
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if value >= size:
            scaled = value / size
            return f"{scaled:.1f}{unit}" if scaled < 10 else f"{scaled:.0f}{unit}"
    return f"{value:.0f}"


def _gap(line: Line) -> str:
    mark = "!" if line.disagree else ""
    if line.gap is None:
        return "-" + mark if mark else "-"
    return f"{line.gap:+.0f}{mark}"


def sparkline(
    history: Iterable[tuple[int, float]], end: int, width: int, blocks: str = BLOCKS
) -> str:
    """The last 30 minutes before ``end`` in ``width`` cells, each its busiest moment (0-100 %)."""
    if width <= 0:
        return ""
    cells: list[float | None] = [None] * width
    start = end - WINDOW
    for ts, value in history:
        if start < ts <= end:
            i = min(width - 1, (ts - start) * width // WINDOW)
            old = cells[i]
            cells[i] = value if old is None else max(old, value)
    top = len(blocks) - 1
    return "".join(
        " " if v is None else blocks[round(min(max(v, 0.0), 100.0) / 100 * top)] for v in cells
    )


@attrs.frozen
class _Col:
    title: str
    width: int
    cell: Callable[[Line], str]
    left: bool = False


_COLUMNS = (
    _Col("STATUS", 11, lambda line: line.status[:11], left=True),
    _Col("CPU", 4, lambda line: _pct(line.cpu)),
    _Col("XEN", 4, lambda line: _pct(line.xen)),
    _Col("GAP", 5, _gap),
    _Col("MEM", 4, lambda line: _pct(line.mem)),
    _Col("RX/s", 6, lambda line: _rate(line.rx)),
    _Col("TX/s", 6, lambda line: _rate(line.tx)),
    _Col("DISK", 4, lambda line: _pct(line.disk)),
)
#: Shown from this width on: which way the views disagree, in words.
_VIEWS_COL = _Col("VIEWS", 15, lambda line: line.flag[:15] or "-", left=True)
WIDE = 100
MIN_WIDTH = 60


def _fit(text: str, width: int, left: bool) -> str:
    text = text[:width]
    return f"{text:<{width}}" if left else f"{text:>{width}}"


def table(lines: list[Line], newest: int, width: int, blocks: str = BLOCKS) -> list[str]:
    """The column titles and one line per qube, ``width`` characters at most."""
    width = max(width, MIN_WIDTH)
    columns = [*_COLUMNS, *((_VIEWS_COL,) if width >= WIDE else ())]
    # Under 73 columns the rates go first, then the gap: name, status and CPU stay.
    for title in ("TX/s", "RX/s", "GAP"):
        if sum(c.width + 1 for c in columns) + 12 + 1 + 8 > width:
            columns = [c for c in columns if c.title != title]
    fixed = sum(c.width + 1 for c in columns)
    name = max(12, min(24, width - fixed - 1 - 30))
    spark = max(8, min(60, width - fixed - name - 1))
    heads = ["NAME".ljust(name)]
    heads += [_fit(c.title, c.width, c.left) for c in columns]
    heads.append("CPU, last 30 min" if spark >= 16 else "CPU 30 min"[:spark])
    out = [" ".join(heads).rstrip()]
    for line in lines:
        vm = line.vm if len(line.vm) <= name else line.vm[: name - 1] + "~"
        cells = [vm.ljust(name)]
        cells += [_fit(c.cell(line), c.width, c.left) for c in columns]
        cells.append(sparkline(line.history, newest, spark, blocks))
        out.append(" ".join(cells).rstrip())
    return out


def title(
    board: Board, folder: Path | None, now: float, view: View, shown: int, total: int, width: int
) -> str:
    """The first line: how old the newest tick is, what is shown, and how (as fits)."""
    if folder is None or not board.newest:
        return "sysmon top: no rows yet" + (f" in {folder}" if folder else "")
    age = now - board.newest
    when = datetime.fromtimestamp(board.newest, UTC).strftime("%H:%M:%SZ")
    late = STALE_INTERVALS * board.tick_interval
    fresh = f"{format_age(age)} ago" if age >= 0 else f"in {format_age(age)}: clock?"
    stale = " STALE" if age > late else ""
    order = SORTS[view.sort][0] + (" rev" if view.reverse else "")
    found = f" /{safe(view.find)}" if view.find else ""
    parts = [
        f"{when} {fresh}{stale}",
        f"{shown}/{total} qubes",
        f"sort {order}",
        f"show {view.filter}{found}",
    ]
    for extra in (folder.name, "sysmon top"):  # the day, then the name, as they fit
        if len("  ".join([extra, *parts])) <= width:
            parts.insert(0, extra)
    return "  ".join(parts)


HELP = (
    "q quit  sort: n name s status c cpu x xen g gap m mem r rx t tx d disk"
    "  f all/running/trouble  / find"
)
SHORT_HELP = "q quit  sort: n s c x g m r t d (column initials)  f filter  / find"


def help_line(width: int) -> str:
    """The keys, in as many words as fit."""
    return HELP if len(HELP) <= width else SHORT_HELP[:width]


def screen(
    board: Board,
    folder: Path | None,
    now: float,
    view: View,
    width: int,
    height: int | None = None,
    blocks: str = BLOCKS,
) -> list[str]:
    """What is drawn: title, table and, on a terminal (``height``), the help line."""
    every = board.lines()
    shown = arrange(every, view)
    head = title(board, folder, now, view, len(shown), len(every), width)[:width]
    if not board.newest:
        return [head] if height is None else [head, *[""] * max(0, height - 2), help_line(width)]
    rows = table(shown, board.newest, width, blocks)
    out = [head, *rows]
    if height is None:
        if board.decoded.rows:
            out.append(f"({board.decoded.rows} rows could not be read)")
        return out
    body = max(0, height - 3)
    lines = rows[1:]
    scroll = min(view.scroll, max(0, len(lines) - body))
    visible = lines[scroll : scroll + body]
    more = len(lines) - scroll - len(visible)
    if more and visible:
        visible[-1] = f"... {more + 1} more (arrow keys scroll)"
    prompt = help_line(width)
    return [out[0], rows[0], *visible, *[""] * (body - len(visible)), prompt]


# ---- following the files ----------------------------------------------------


class LiveBoard(Board):
    """A board that follows the newest day folder of an out_dir."""

    def __init__(self, out_dir: Path, interval: float) -> None:
        super().__init__(interval)
        self.out_dir = out_dir
        self.folder: Path | None = None
        self.tails: dict[str, Tail] = {}

    def refresh(self, now: datetime) -> None:
        """Read what was appended; at midnight (a new folder), follow the new day."""
        folder = latest_day(self.out_dir, now)
        if folder != self.folder:
            if self.folder is None and folder is not None:
                # Started soon after midnight: the last 30 minutes begin yesterday.
                yesterday = day_dir(self.out_dir, date.fromisoformat(folder.name) - timedelta(1))
                read_day(self, _tails(yesterday), self.decoded)
            self.folder = folder
            self.tails = {} if folder is None else _tails(folder)
        read_day(self, self.tails, self.decoded)


def _tails(folder: Path) -> dict[str, Tail]:
    return {d.file_name: Tail(folder / d.file_name, d) for d in (*schema.DAILY_FILES, schema.VIEWS)}


def _blocks(encoding: str | None) -> str:
    try:
        BLOCKS.encode(encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return ASCII_BLOCKS
    return BLOCKS


def once(out_dir: Path, interval: float, width: int | None) -> int:
    """``sysmon top --once``: the table as plain text; exit 1 without rows."""
    board = LiveBoard(out_dir, interval)
    now = datetime.now(UTC)
    board.refresh(now)
    if width is None:
        width = shutil.get_terminal_size((WIDE, 24)).columns
    blocks = _blocks(sys.stdout.encoding)
    for text in screen(board, board.folder, now.timestamp(), View(), width, None, blocks):
        print(text)
    return 0 if board.newest else 1


# ---- the terminal -----------------------------------------------------------

_ENTER = {10, 13, curses.KEY_ENTER}
_BACKSPACE = {8, 127, curses.KEY_BACKSPACE}
_ESC = 27


def _draw(window: curses.window, lines: list[str], bold: set[int]) -> None:
    height, width = window.getmaxyx()
    window.erase()
    for y, text in enumerate(lines[:height]):
        with contextlib.suppress(curses.error):  # the bottom-right cell cannot be written
            window.addnstr(y, 0, text, width - 1, curses.A_BOLD if y in bold else curses.A_NORMAL)
    window.refresh()


def _follow_size() -> None:
    """Take the terminal's size now: a resize signalled before curses started is not lost."""
    try:
        columns, rows = os.get_terminal_size(sys.stdout.fileno())
    except (OSError, AttributeError, ValueError):
        return
    if curses.is_term_resized(rows, columns):
        curses.resizeterm(rows, columns)


def _loop(window: curses.window, board: LiveBoard, blocks: str) -> int:
    with contextlib.suppress(curses.error):
        curses.curs_set(0)
    window.timeout(int(REFRESH * 1000))
    view = View()
    finding = False
    while True:
        now = datetime.now(UTC)
        board.refresh(now)
        _follow_size()
        height, width = window.getmaxyx()
        # The last column stays empty: curses cannot write the bottom-right cell.
        lines = screen(board, board.folder, now.timestamp(), view, width - 1, height, blocks)
        if finding:
            lines[-1] = f"find: {safe(view.find)}_  (Enter keeps it, Esc clears it)"
        _draw(window, lines, {0, 1})
        key = window.getch()
        if key in (-1, curses.KEY_RESIZE):
            continue
        if finding:
            if key in _ENTER:
                finding = False
            elif key == _ESC:
                finding, view = False, attrs.evolve(view, find="")
            elif key in _BACKSPACE:
                view = attrs.evolve(view, find=view.find[:-1])
            elif 32 <= key < 127 and len(view.find) < 32:
                view = attrs.evolve(view, find=view.find + chr(key), scroll=0)
            continue
        if key in {ord("q"), ord("Q")}:
            return 0
        if key == ord("/"):
            finding = True
        elif key in {curses.KEY_DOWN, ord("j")}:
            view = attrs.evolve(view, scroll=view.scroll + 1)
        elif key in {curses.KEY_UP, ord("k")}:
            view = attrs.evolve(view, scroll=max(0, view.scroll - 1))
        elif key == curses.KEY_NPAGE:
            view = attrs.evolve(view, scroll=view.scroll + max(1, height - 4))
        elif key == curses.KEY_PPAGE:
            view = attrs.evolve(view, scroll=max(0, view.scroll - max(1, height - 4)))
        elif 0 <= key < 127:
            view = view.key(chr(key))


def main(out_dir: Path, interval: float, *, once_only: bool, width: int | None) -> int:
    """``sysmon top``: live on a terminal; ``--once``, the table as text."""
    if once_only:
        return once(out_dir, interval, width)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        print("sysmon top: not a terminal (use --once for plain text)", file=sys.stderr)
        return 2
    locale.setlocale(locale.LC_ALL, "")
    os.environ.setdefault("ESCDELAY", "25")  # Esc leaves the find prompt at once
    board = LiveBoard(out_dir, interval)
    blocks = _blocks(locale.getpreferredencoding(do_setlocale=False))
    try:
        curses.setupterm()
        if curses.tigetstr("cup") is None:  # TERM=dumb: its lines would run together
            cannot = "it cannot move the cursor (use --once for plain text)"
            raise curses.error(cannot)
        return curses.wrapper(_loop, board, blocks)
    except curses.error as exc:
        term = safe(os.environ.get("TERM", ""))
        print(f"sysmon top: cannot draw on this terminal (TERM={term}): {exc}", file=sys.stderr)
        return 2
