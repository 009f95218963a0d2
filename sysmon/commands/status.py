"""``sysmon status``: what a person checks first, from the files alone.

Every daily file is read through :func:`sysmon.schema.decode_untrusted`;
the newest rows come from :class:`Tail`, which reads only the end of a file
(``sysmon top`` follows the files with it too).
"""

from __future__ import annotations

import io
import os
import stat
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import attrs

from sysmon import schema
from sysmon.protocol.names import looks_disposable
from sysmon.protocol.text import strip_controls
from sysmon.records import Status
from sysmon.store.daily import day_dir, day_folders

STALE_INTERVALS = 3
#: A row this far ahead of now means a wrong clock, then or now.
FUTURE_TOLERANCE = 60
#: How far back from a file's newest row ``status`` looks for each qube's values.
VALUES_WINDOW = 600
#: The most of a file one look reads: 30 minutes of a 300 MB day are about
#: 6 MB over all its files, under 3 MB in the largest.
MAX_TAIL = 16 << 20
#: Bytes read at each step of the bisection (a row is under 4 KiB).
PROBE = 8192
#: Qubes in the table (as ``sysmon top``), and named on the views line: a
#: planted scrapes.csv of invented qubes cannot grow the memory or the output.
MAX_QUBES = 1024
SHOWN_DISAGREE = 12
#: views.csv flags that are not a disagreement.
AGREEING = frozenset({"agree", "one-view"})


def format_age(seconds: float) -> str:
    """An age as a person reads it: ``12 s``, ``3 min``, ``2 h 5 min``, ``3 d 4 h``."""
    whole = round(abs(seconds))
    if whole < 60:
        return f"{whole} s"
    minutes = whole // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def open_daily(path: Path) -> IO[bytes] | None:
    """``path`` opened for reading if it is a regular file; else None.

    A planted FIFO cannot block the read (O_NONBLOCK), a symlink is not followed.
    A file there but unreadable raises: shown as absent, its reason was lost.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except PermissionError:
        raise
    except OSError:
        return None
    raw = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raw.close()
        return None
    return raw


class Tail:
    """The rows appended to one daily file, read from near its end.

    The first look seeks to at most :data:`MAX_TAIL` bytes before the end and
    bisects on the rows' times (a file is written in time order) to the
    first row of the last ``window`` seconds before its newest row; each later
    look reads only the whole lines appended since.  A file replaced or cut
    is looked at afresh, and so is one that grew by more than ``MAX_TAIL``.
    """

    def __init__(self, path: Path, daily: schema.DailyFile) -> None:
        self.path = path
        self.daily = daily
        self.offset = -1  # where the next look starts; -1: look afresh
        self.identity: tuple[int, int] = (0, 0)
        self.header = b""
        #: Bytes read so far, all looks together (the bound is measured on it).
        self.bytes_read = 0

    def read(self, window: float, skipped: schema.Skipped) -> list[schema.DecodedRow]:
        """Rows new since the last look; at the first, the last ``window`` seconds' of them."""
        raw = open_daily(self.path)
        if raw is None:
            self.offset = -1
            return []
        with raw:
            info = os.fstat(raw.fileno())
            size, identity = info.st_size, (info.st_dev, info.st_ino)
            start: int | None = self.offset
            since = None
            if (
                identity != self.identity
                or not 0 <= self.offset <= size
                or size - self.offset > MAX_TAIL
            ):
                self.identity = identity
                start, since = self._first(raw, size, window)
            if start is None:
                skipped.not_sysmon += 1
                self.offset = -1
                return []
            raw.seek(start)
            data = raw.read(size - start)
            self.bytes_read += len(data)
            end = data.rfind(b"\n") + 1  # a line being written waits for the next look
            self.offset = start + end
            if not end:
                return []
            stream = io.BytesIO(self.header + data[:end])
            rows = schema.decode_untrusted(stream, self.daily, skipped)
            return [row for row in rows if since is None or row.ts >= since]

    def _first(self, raw: IO[bytes], size: int, window: float) -> tuple[int | None, float | None]:
        """Where the first look starts reading (None: no header line), and from what time."""
        raw.seek(0)
        header = raw.readline(schema.MAX_LINE)
        self.bytes_read += len(header)
        if not header.endswith(b"\n"):
            return None, None
        self.header = header
        lo = max(len(header), size - MAX_TAIL)
        if lo > len(header):
            lo = self._line_after(raw, lo, size) or size
        newest = self._newest(raw, lo, size)
        if newest is None:
            return lo, None
        since = newest - window
        hi = size
        while hi - lo > PROBE:
            mid = (lo + hi) // 2
            line = self._line_after(raw, mid, hi)
            ts = None if line is None else self._ts_at(raw, line)
            if line is not None and ts is not None and ts < since:
                lo = line
            else:
                hi = mid
        return lo, since

    def _line_after(self, raw: IO[bytes], pos: int, limit: int) -> int | None:
        """The first line start after ``pos - 1``, below ``limit``."""
        raw.seek(pos - 1)
        chunk = raw.read(512)  # a row is ~100 bytes; a longer one costs a second read
        newline = chunk.find(b"\n")
        if newline < 0:
            chunk += raw.read(PROBE)
            newline = chunk.find(b"\n")
        self.bytes_read += len(chunk)
        return pos + newline if newline >= 0 and pos + newline < limit else None

    def _ts_at(self, raw: IO[bytes], pos: int) -> int | None:
        raw.seek(pos)
        head = raw.read(40)
        self.bytes_read += len(head)
        return _seconds(head.split(b",", 1)[0])

    def _newest(self, raw: IO[bytes], lo: int, size: int) -> int | None:
        """The time of the last row that has one, in the last :data:`PROBE` bytes."""
        start = max(lo, size - PROBE)
        raw.seek(start)
        lines = raw.read(size - start).split(b"\n")
        self.bytes_read += size - start
        whole = lines[1:-1] if start > lo else lines[:-1]
        for line in reversed(whole):
            ts = _seconds(line.split(b",", 1)[0])
            if ts is not None:
                return ts
        return None


def _seconds(cell: bytes) -> int | None:
    when = schema.parse_ts(cell.decode("ascii", errors="replace"))
    return None if when is None else int(when.timestamp())


class _Borrowed(io.RawIOBase):
    """``raw`` lent to the decoder, which drops its text wrapper unclosed.

    Closing this does not close ``raw``; the lender does.  (Over a file
    object itself, the dropped wrapper warns of an unclosed file.)
    """

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._raw.readinto(buffer)  # type: ignore[attr-defined,no-any-return]


def whole_file(
    path: Path, daily: schema.DailyFile, skipped: schema.Skipped
) -> Iterator[schema.DecodedRow]:
    """Every row of a daily file, through the bounded decoder."""
    raw = open_daily(path)
    if raw is None:
        return
    with raw:
        yield from schema.decode_untrusted(io.BufferedReader(_Borrowed(raw)), daily, skipped)


@attrs.frozen
class QubeLine:
    """One qube's line of the table."""

    vm: str
    status: str
    last_ts: str
    failures_today: int
    cpu_user: str
    mem_used_kb: str
    last_age: float | None = None


@attrs.frozen
class StatusReport:
    """Newest row per file, per-qube summary, and whether the collector is alive."""

    folder: Path | None
    file_ages: dict[str, float | None]
    qubes: tuple[QubeLine, ...]
    healthy: bool
    reason: str
    skipped: schema.Skipped = attrs.field(factory=schema.Skipped)
    #: Qubes whose views disagree in views.csv's newest tick, with the flag.
    disagree: tuple[tuple[str, str], ...] = ()
    #: Qubes of scrapes.csv past :data:`MAX_QUBES`: not in the table.
    qubes_dropped: int = 0

    @property
    def skipped_rows(self) -> int:
        """Rows left out of the files read, whatever the reason."""
        return self.skipped.rows


def latest_day(out_dir: Path, now: datetime | None = None) -> Path | None:
    """The newest day folder, not after ``now``'s day when there is one.

    A folder from the future is left by a clock that ran ahead; the folder
    being written now is the one to judge.
    """
    days = day_folders(out_dir)
    if now is not None:
        days = [d for d in days if d <= now.date()] or days
    return day_dir(out_dir, days[-1]) if days else None


def _cells(daily: schema.DailyFile, row: schema.DecodedRow) -> dict[str, str]:
    return {name: strip_controls(cell) for name, cell in zip(daily.names, row.cells, strict=True)}


def _newest_tick(rows: list[schema.DecodedRow]) -> list[schema.DecodedRow]:
    newest = max((row.ts for row in rows), default=None)
    return [row for row in rows if row.ts == newest]


def build_status(out_dir: Path, now: datetime, interval: float) -> StatusReport:
    """Read the newest day folder and judge whether rows are still coming."""
    folder = latest_day(out_dir, now)
    if folder is None:
        return StatusReport(None, {}, (), healthy=False, reason=f"no day folder under {out_dir}")
    skipped = schema.Skipped()
    ages: dict[str, float | None] = {}
    tails: dict[str, list[schema.DecodedRow]] = {}
    for daily in schema.DAILY_FILES:  # views.csv among them, made with each day folder
        window = VALUES_WINDOW if daily in {schema.SYSTEM, schema.VIEWS} else 0
        rows = Tail(folder / daily.file_name, daily).read(window, skipped)
        tails[daily.file_name] = rows
        latest = max((row.ts for row in rows), default=None)
        ages[daily.file_name] = None if latest is None else now.timestamp() - latest
    last: dict[str, schema.DecodedRow] = {}
    failures: Counter[str] = Counter()
    dropped: set[str] = set()
    disposables = 0
    for row in whole_file(folder / schema.SCRAPES.file_name, schema.SCRAPES, skipped):
        vm, status = row.cells[1], row.cells[2]
        disposable = looks_disposable(vm)
        if vm not in last and (disposables if disposable else len(last) - disposables) >= MAX_QUBES:
            if len(dropped) < MAX_QUBES:  # counted up to a bound too
                dropped.add(vm[:32])
            continue
        disposables += disposable and vm not in last
        last[vm] = row
        if status not in {Status.OK, Status.SKIPPED}:
            failures[vm] += 1
    values = {row.cells[1]: _cells(schema.SYSTEM, row) for row in tails[schema.SYSTEM.file_name]}
    qubes = tuple(
        QubeLine(
            vm=strip_controls(vm),
            status=strip_controls(row.cells[2]),
            last_ts=row.cells[0],
            failures_today=failures.get(vm, 0),
            cpu_user=values.get(vm, {}).get("cpu_user", ""),
            mem_used_kb=values.get(vm, {}).get("mem_used_kb", ""),
            last_age=now.timestamp() - row.ts,
        )
        for vm, row in sorted(last.items())
    )
    flag = schema.VIEWS.names.index("flag")
    disagree = tuple(
        sorted(
            (strip_controls(row.cells[1]), strip_controls(row.cells[flag]))
            for row in _newest_tick(tails.get(schema.VIEWS.file_name, []))
            if row.cells[flag] not in AGREEING
        )
    )
    newest = ages.get(schema.SCRAPES.file_name)
    limit = STALE_INTERVALS * interval
    healthy, reason = False, "no poll recorded yet"
    if newest is not None and newest < -FUTURE_TOLERANCE:
        reason = f"the newest row is {format_age(newest)} in the future: is the clock right?"
    elif newest is not None and newest > limit:
        reason = f"nothing written for {format_age(newest)} (more than {STALE_INTERVALS} intervals)"
    elif newest is not None:
        healthy, reason = True, "rows are coming"
    return StatusReport(folder, ages, qubes, healthy, reason, skipped, disagree, len(dropped))


def _ago(age: float | None) -> str:
    if age is None:
        return "-"
    return f"in {format_age(age)}" if age < 0 else f"{format_age(age)} ago"


def render_status(report: StatusReport) -> str:
    """The report as a terminal table."""
    if report.folder is None:  # nothing written yet: no tables to show
        return (
            f"NOT OK: {report.reason}\n"
            "(has `sysmon run` started? `systemctl status sysmon`; see docs/deploy.md)"
        )
    lines = [f"folder: {report.folder}", ""]
    lines.append(f"{'file':<16} {'newest row':>14}")
    lines.extend(f"{name:<16} {_ago(age):>14}" for name, age in report.file_ages.items())
    lines.append("")
    lines.append(
        f"{'qube':<32} {'status':<11} {'last poll':>14} {'fails':>5} "
        f"{'cpu_user':>8} {'mem_used_kb':>12}"
    )
    lines.extend(
        f"{q.vm[:32]:<32} {q.status[:11]:<11} {_ago(q.last_age):>14} {q.failures_today:>5} "
        f"{q.cpu_user[:8] or '-':>8} {q.mem_used_kb[:12] or '-':>12}"
        for q in report.qubes
    )
    if report.qubes_dropped:
        more = f"{report.qubes_dropped}" + ("+" if report.qubes_dropped >= MAX_QUBES else "")
        lines.append(f"({more} more qubes not shown: at most {MAX_QUBES}, and as many disposables)")
    lines.append("")
    if report.disagree:
        # Named qubes first: any qube may start disposables, each free to
        # disagree, and dispNNNN sorts before most names.
        ordered = sorted(report.disagree, key=lambda pair: (looks_disposable(pair[0]), pair[0]))
        shown = ordered[:SHOWN_DISAGREE]
        named = ", ".join(f"{vm[:32]} ({flag[:20]})" for vm, flag in shown)
        rest = [vm for vm, _ in ordered[SHOWN_DISAGREE:]]
        disposables = sum(map(looks_disposable, rest))
        counted = [f"{len(rest) - disposables} more"] if len(rest) > disposables else []
        counted += [f"{disposables} disposables"] if disposables else []
        tail = f", and {' and '.join(counted)}" if counted else ""
        lines.append(f"views disagree now: {named}{tail}")
    skipped = report.skipped
    if skipped.rows:
        rows = "1 row" if skipped.rows == 1 else f"{skipped.rows} rows"
        why = ", ".join(
            f"{what.replace('_', ' ')} {n}"
            for what, n in (
                ("unreadable", skipped.unreadable),
                ("wrong_width", skipped.wrong_width),
                ("bad_time", skipped.bad_time),
            )
            if n
        )
        lines.append(f"{rows} could not be read ({why})")
    lines.append(("OK: " if report.healthy else "NOT OK: ") + report.reason)
    return "\n".join(lines)


def main(out_dir: Path, interval: float, now: datetime) -> int:
    """``sysmon status``: exit 1 when nothing was written for three intervals."""
    report = build_status(out_dir, now, interval)
    print(render_status(report))
    return 0 if report.healthy else 1
