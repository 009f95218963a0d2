"""The report's first screen: what needs attention, above the charts.

Qubes whose polls failed most, disks at 90 % or more, the rules that fired,
the alerts grouped by (qube, message) with counts, the qubes whose views
disagree (views.csv, when the days have it) and a line per day on the
archive's delivery.  Each list is short (the rest is counted, and linked to
the chart below).  Every file is read through the bounded decoder
(:func:`sysmon.schema.decode.decode_untrusted`); names and messages are a
qube's bytes, printed escaped and cut.  What it keeps is bounded too: at
most :data:`MAX_KEYS` distinct (qube, message) pairs (at most
:data:`MAX_KINDS_PER_QUBE` of one qube) and (qube, mount) pairs, the rest
counted as "other"; as many qubes polled, and (qube,
status), (rule, qube) and (qube, flag) pairs in all; a name cut to
:data:`MAX_TEXT`.

For the qubes whose views disagree it also draws both views on one chart
(:func:`draw_views`): the points of at most :data:`MAX_VIEW_QUBES` qubes are
kept, bucketed (:class:`Points`), so a planted file costs a bounded memory.
"""

from __future__ import annotations

import base64
import html
import io
import operator
import re
import tarfile
import zlib
from array import array
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import IO, Any

import attrs

from sysmon import schema
from sysmon.commands.report.render import (
    Bins,
    _duration,
    _label,
    _time_axis,
    import_pyplot,
    write_whole,
)
from sysmon.commands.report.workers import in_order
from sysmon.protocol.names import looks_disposable, share_of
from sysmon.protocol.text import strip_controls
from sysmon.records import Status
from sysmon.schema.decode import Skipped, decode_untrusted
from sysmon.store import days
from sysmon.store.delivery import MARKER_UNREADABLE, is_delivered, marker_lines

#: Lines of each list; the rest are counted.
SHOWN = 6
#: Distinct (qube, message) and (qube, mount) pairs kept; more are "other".
MAX_KEYS = 20_000
#: Distinct messages of one qube kept: one qube inventing them cannot take
#: every kind's place (first come, it filled them in about two hours).
MAX_KINDS_PER_QUBE = 1_000
#: Characters of a message or a name shown.
MAX_TEXT = 120
DISK_FULL = 90.0
#: A journal entry's own time before its text: not part of what it says.
_ENTRY_TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT[0-9:.]+Z ")
_DIGITS_RE = re.compile(r"\d+")
_RULE_RE = re.compile(r"sysmon: rule ([A-Za-z0-9_.-]{1,64}) (firing|resolved) ")
_FILES = {d.file_name: d for d in (schema.SCRAPES, schema.DISK, schema.ALERTS, schema.VIEWS)}
_AGREE = {"agree", "one-view", ""}
#: Said beside a handler's note: its old time is not a clock fault (README, alerts.csv).
HANDLER_NOTE = (
    " <i>(dated the qube's boot, on purpose: the handler files such a note once per"
    " boot, so an old time here is not a clock fault)</i>"
)
#: The flags views.csv is described with; a planted file's others count as "other".
_FLAGS = frozenset(schema.VIEWS.column("flag").values)
_OK = {Status.OK.value, Status.SKIPPED.value}
_STATUS = schema.SCRAPES.names.index("status")
_MOUNT = schema.DISK.names.index("mount")
_PCT = schema.DISK.names.index("pct_used")
_MSG = schema.ALERTS.names.index("msg")
_FLAG = schema.VIEWS.names.index("flag")
_VM = 1  # every daily file: ts, vm, ...
#: Qubes whose two views are kept as points for their charts; the rows of
#: the rest are counted.
MAX_VIEW_QUBES = 256
#: A qube's view points: buckets of this many seconds at first (the mean per
#: bucket), at most :data:`MAX_BUCKETS` of them from its first to its last.
VIEW_BUCKET = 300
MAX_BUCKETS = 720
_VIEW_COLUMNS = tuple(
    schema.VIEWS.column(name)
    for name in ("cpu_self", "cpu_xen", "mem_self_kb", "mem_xen_kb", "net_self_bytes",
                 "net_netvm_bytes")
)  # fmt: skip
_VIEW_CELLS = operator.itemgetter(*(schema.VIEWS.names.index(c.name) for c in _VIEW_COLUMNS))
#: CPU and memory cells as numbers, remembered: the same figures come back
#: tick after tick (a day has 6 view cells a qube a tick; traffic's differ
#: every tick, they are not kept).  At most :data:`_NUMBERS_KEPT` cells, so
#: planted values cost no more.
_NUMBERS: dict[str, float | None] = {}
_NUMBERS_KEPT = 1 << 14
#: A bucket: its rows, its disagreeing rows, then per view column a sum and a count.
_EMPTY = array("d", bytes(8 * (2 + 2 * len(_VIEW_COLUMNS))))


def _view_number(cell: str) -> float | None:
    """A view column's cell as a number (each reads alike: none is a "pct")."""
    if len(cell) <= 19 and cell.isascii() and cell.isdigit():
        return int(cell)  # what Column.number gives a whole number, sooner
    return _VIEW_COLUMNS[0].number(cell)


def _remembered(cell: str) -> float | None:
    number = _NUMBERS[cell] = _view_number(cell)
    if len(_NUMBERS) > _NUMBERS_KEPT:
        del _NUMBERS[cell]
    return number


UNREADABLE = (tarfile.TarError, EOFError, zlib.error, OSError, days.ArchiveError)


@attrs.define
class Points:
    """One qube's two views over time, bucketed.

    Per bucket: its rows, how many disagreed, and each view column's sum and count.

    Buckets are :data:`VIEW_BUCKET` s wide, doubled (two merged into one)
    whenever the qube's first and last bucket are :data:`MAX_BUCKETS` apart:
    rows planted far apart in time cost that qube's detail, never memory.
    """

    width: int = VIEW_BUCKET
    buckets: dict[int, array[float]] = attrs.field(factory=dict)
    first: int = 0
    last: int = 0

    def add(self, ts: int, values: list[float | None], disagree: bool) -> None:
        """One row's view columns (None: empty), and whether its flag disagrees."""
        key = ts // self.width
        sums = self.buckets.get(key)
        new = sums is None
        if sums is None:
            sums = self.buckets[key] = _EMPTY[:]
            alone = len(self.buckets) == 1
            self.first = key if alone else min(self.first, key)
            self.last = key if alone else max(self.last, key)
        sums[0] += 1
        sums[1] += disagree
        i = 2
        for value in values:
            if value is not None:
                sums[i] += value
                sums[i + 1] += 1
            i += 2
        if new:
            self._coarsen(self.width)

    def _coarsen(self, width: int) -> None:
        """Buckets at least ``width`` s wide (a multiple of this one's) and few enough."""
        while self.width < width or self.last - self.first >= MAX_BUCKETS:
            merged: dict[int, array[float]] = {}
            for key, sums in self.buckets.items():
                into = merged.setdefault(key // 2, _EMPTY[:])
                for i, value in enumerate(sums):
                    into[i] += value
            self.buckets, self.width = merged, self.width * 2
            self.first, self.last = self.first // 2, self.last // 2

    def join(self, later: Points) -> None:
        """Add ``later``'s points, at the wider bucket of the two."""
        self._coarsen(later.width)
        later._coarsen(self.width)
        for key, sums in later.buckets.items():
            into = self.buckets.setdefault(key, _EMPTY[:])
            for i, value in enumerate(sums):
                into[i] += value
        self.first = min(self.buckets, default=0)
        self.last = max(self.buckets, default=0)
        self._coarsen(self.width)


@attrs.define
class Summary:
    """What the first screen shows, gathered over every day read."""

    polls: Counter[str] = attrs.field(factory=Counter)
    failed: dict[str, Counter[str]] = attrs.field(factory=dict)
    #: (qube, mount) -> (time of its last row, pct then, highest pct).
    disks: dict[tuple[str, str], tuple[int, float, float]] = attrs.field(factory=dict)
    rules: dict[str, Counter[str]] = attrs.field(factory=dict)
    #: (qube, message with its numbers as #) -> count, and the first such message.
    alerts: Counter[tuple[str, str]] = attrs.field(factory=Counter)
    example: dict[tuple[str, str], str] = attrs.field(factory=dict)
    alerts_other: int = 0
    #: Per qube (disposables together), its distinct messages in ``alerts``.
    kinds: Counter[str] = attrs.field(factory=Counter)
    views: dict[str, Counter[str]] = attrs.field(factory=dict)
    views_read: bool = False
    #: Per qube (at most MAX_VIEW_QUBES), its views over time; rows of the rest.
    view_points: dict[str, Points] = attrs.field(factory=dict)
    view_rows_other: int = 0
    archive: list[tuple[str, str]] = attrs.field(factory=list)
    skipped: Skipped = attrs.field(factory=Skipped)
    #: (key, name) pairs in failed, rules and views: at most MAX_KEYS.
    pairs: int = 0

    def _count(self, into: dict[str, Counter[str]], key: str, name: str, n: int = 1) -> None:
        counts = into.get(key)
        if counts is None or name not in counts:
            if self.pairs >= MAX_KEYS:  # names a planted file invents: not kept
                return
            self.pairs += 1
            if counts is None:
                counts = into[key] = Counter()
        counts[name] += n

    def join(self, later: Summary) -> None:
        """Add a later day's summary to this one."""
        for vm, n in later.polls.items():
            if vm in self.polls or len(self.polls) < MAX_KEYS:
                self.polls[vm] += n
        self._join_counts(self.failed, later.failed)
        for key, seen in later.disks.items():
            if key in self.disks:
                before = self.disks[key]
                newest = seen if seen[0] >= before[0] else before
                self.disks[key] = (newest[0], newest[1], max(seen[2], before[2]))
            elif len(self.disks) < MAX_KEYS:
                self.disks[key] = seen
        self._join_counts(self.rules, later.rules)
        self.alerts_other += later.alerts_other
        for key, n in later.alerts.items():
            self._alert(key, later.example[key], n)
        self._join_counts(self.views, later.views)
        self.views_read |= later.views_read
        self.view_rows_other += later.view_rows_other
        for vm, points in later.view_points.items():
            if self._tracks(vm):
                self.view_points.setdefault(vm, Points()).join(points)
            else:
                self.view_rows_other += sum(int(s[0]) for s in points.buckets.values())
        self.archive += later.archive
        for field in ("unreadable", "wrong_width", "bad_time", "not_sysmon"):
            setattr(
                self.skipped, field, getattr(self.skipped, field) + getattr(later.skipped, field)
            )

    def _alert(self, key: tuple[str, str], example: str, n: int = 1) -> None:
        """``n`` alerts of the kind ``key`` (qube, message), if there is room for the kind."""
        if key not in self.alerts:
            owner = share_of(key[0])  # disposables: one share
            if len(self.alerts) >= MAX_KEYS or self.kinds[owner] >= MAX_KINDS_PER_QUBE:
                self.alerts_other += n
                return
            self.kinds[owner] += 1
            self.example[key] = example
        self.alerts[key] += n

    def _join_counts(self, into: dict[str, Counter[str]], other: dict[str, Counter[str]]) -> None:
        for key, counts in other.items():
            for name, n in counts.items():
                self._count(into, key, name, n)

    def add_rows(self, name: str, rows: Any) -> None:
        """Rows of scrapes.csv or disk.csv as :func:`.frames.read_frame` gives them.

        The same as :meth:`add_row` for each in turn, but a step per distinct
        qube, status or mount, not per row.
        """
        import numpy as np  # noqa: PLC0415
        import pandas as pd  # noqa: PLC0415

        vm = _cut(rows["vm"], MAX_TEXT)
        if name == "scrapes.csv":
            codes, qubes = pd.factorize(vm)
            polled = np.zeros(len(qubes) + 1, dtype=bool)  # the last: a code of -1
            for i, (qube, n) in enumerate(
                zip(qubes, np.bincount(codes, minlength=len(qubes)), strict=True)
            ):
                if qube in self.polls or len(self.polls) < MAX_KEYS:
                    self.polls[qube] += int(n)
                    polled[i] = True
            failed = polled[codes] & ~_where(rows["status"], lambda status: status in _OK)
            status = _cut(rows["status"], 20)[failed]
            pairs, found = _pairs(vm[failed], status)
            counts = np.bincount(pairs, minlength=len(found))
            for (qube, word), n in zip(found, counts, strict=True):
                self._count(self.failed, qube, word, int(n))
        elif name == "disk.csv":
            pct = rows["pct_used"].to_numpy(dtype=float)
            has = ~np.isnan(pct)
            pct, t = pct[has], rows["t"].to_numpy(dtype=float)[has]
            keys, found = _pairs(vm[has], _cut(rows["mount"], MAX_TEXT)[has])
            if not len(found):
                return
            by_key = np.lexsort((np.arange(len(keys)), t, keys))  # the newest row last
            bounds = np.searchsorted(keys[by_key], np.arange(len(found) + 1))
            newest = by_key[bounds[1:] - 1]
            peaks = np.maximum.reduceat(pct[by_key], bounds[:-1])
            for key, at, peak in zip(found, newest, peaks, strict=True):
                before = self.disks.get(key)
                if before is None:
                    if len(self.disks) >= MAX_KEYS:
                        continue
                    before = (int(t[at]), float(pct[at]), float(peak))
                last_ts, last = before[:2]
                if int(t[at]) >= last_ts:
                    last_ts, last = int(t[at]), float(pct[at])
                self.disks[key] = (last_ts, last, max(before[2], float(peak)))
        else:
            raise ValueError(f"{name}: read row by row")

    def add_row(self, name: str, vm: str, ts: int, cells: tuple[str, ...]) -> None:
        """One decoded row of ``name``."""
        vm = vm[:MAX_TEXT]  # a key of each count: a planted cell may be 64 KiB
        if name == "scrapes.csv":
            if vm not in self.polls and len(self.polls) >= MAX_KEYS:
                return
            self.polls[vm] += 1
            status = cells[_STATUS]
            if status not in _OK:
                self._count(self.failed, vm, status[:20])
        elif name == "disk.csv":
            pct = schema.DISK.column("pct_used").number(cells[_PCT])
            key = (vm, cells[_MOUNT][:MAX_TEXT])
            if pct is None or (key not in self.disks and len(self.disks) >= MAX_KEYS):
                return
            last_ts, last, peak = self.disks.get(key, (ts, float(pct), float(pct)))
            if ts >= last_ts:
                last_ts, last = ts, float(pct)
            self.disks[key] = (last_ts, last, max(peak, float(pct)))
        elif name == "alerts.csv":
            msg = cells[_MSG]
            # Before the journal's time is cut: a journal line that says
            # "sysmon: rule ..." begins with its entry's time, sysmon's own do not.
            match = _RULE_RE.match(msg)
            if match and match[2] == "firing":
                self._count(self.rules, match[1], vm)
            if (entry_time := _ENTRY_TIME_RE.match(msg)) is not None:
                msg = msg[entry_time.end() :]
            msg = msg[:MAX_TEXT]
            # The same message with another pid, size or value is the same alert.
            self._alert((vm, _DIGITS_RE.sub("#", msg)), msg)
        elif name == "views.csv":  # the flag: where the views disagree
            flag = cells[_FLAG]
            disagree = flag not in _AGREE
            if disagree:
                self._count(self.views, vm, flag if flag in _FLAGS else "other")
            points = self.view_points.get(vm)
            if points is None and self._tracks(vm):
                points = self.view_points[vm] = Points()
            if points is None:
                self.view_rows_other += 1
                return
            known = _NUMBERS
            cpu_self, cpu_xen, mem_self, mem_xen, net_self, net_netvm = _VIEW_CELLS(cells)
            values = [
                known[cpu_self] if cpu_self in known else _remembered(cpu_self),
                known[cpu_xen] if cpu_xen in known else _remembered(cpu_xen),
                known[mem_self] if mem_self in known else _remembered(mem_self),
                known[mem_xen] if mem_xen in known else _remembered(mem_xen),
                _view_number(net_self),
                _view_number(net_netvm),
            ]
            points.add(ts, values, disagree)

    def _tracks(self, vm: str) -> bool:
        """Whether ``vm``'s view points are kept (room is made for one that disagrees).

        Planted rows of many agreeing names must not crowd out the qube that
        lies, nor disagreeing disposables a named qube (the least disagreeing
        of them makes room).
        """
        if vm in self.view_points or len(self.view_points) < MAX_VIEW_QUBES:
            return True
        if vm not in self.views:
            return False
        calm = next((other for other in self.view_points if other not in self.views), None)
        if calm is None and not looks_disposable(vm):
            # Disposables share one place on the page: 256 of them in a day,
            # each disagreeing once, kept a later named qube off the charts.
            shared = [other for other in self.view_points if looks_disposable(other)]
            calm = min(shared, key=lambda other: self.views[other].total(), default=None)
        if calm is None:
            return False
        dropped = self.view_points.pop(calm)
        self.view_rows_other += sum(int(s[0]) for s in dropped.buckets.values())
        return True


class _Lent(io.RawIOBase):
    """``raw`` lent to the decoder, which drops its text wrapper unclosed.

    Closing this does not close ``raw`` (its opener's ``with`` does), so the
    dropped wrapper has nothing to warn about.
    """

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _day_of(unit: Path) -> date | None:
    if unit.is_file():
        return days.archive_day(unit.name)
    try:
        return date.fromisoformat(unit.name)
    except ValueError:
        return None


def delivery(unit: Path, today: date) -> str:
    """One line on how this day stands with the vault."""
    day = _day_of(unit)
    if unit.is_file():
        return f"read from its archive {unit.name} (in the vault, or restored from it)"
    if day is None:
        return "a folder that is not a day's: its delivery is unknown"
    out_dir = unit.parent
    marker = marker_lines(out_dir, day, "delivered")
    marked = marker is not None and marker != [MARKER_UNREADABLE]
    if marked and is_delivered(out_dir, day):
        return f"delivered to the vault as {(marker or ['?'])[0][:80]}"
    tries = marker_lines(out_dir, day, "attempts") or []  # none tried
    if marked:
        return "delivered, but rows were added since: it goes again"
    if tries:
        last = "refused by policy" if tries[-1] == "refused" else "failed or cut short"
        return f"NOT delivered: {len(tries)} tries, the last {last}"
    if day >= today:
        return "today: archived and delivered after it ends (UTC)"
    if days.tgz_path(out_dir, day).exists():
        return "NOT delivered: archived, no copy tried yet"
    return "NOT delivered: not archived yet"


#: The files read as frames (:meth:`Summary.add_rows`), and the values each needs.
_COLUMNAR = {"scrapes.csv": (), "disk.csv": ("pct_used",)}


def _where(column: Any, test: Any) -> Any:
    """``test`` of each cell of a text column, asked once per distinct cell."""
    import numpy as np  # noqa: PLC0415
    import pandas as pd  # noqa: PLC0415

    codes, uniques = pd.factorize(column)
    return np.array([bool(test(u)) for u in uniques] + [False], dtype=bool)[codes]


def _cut(column: Any, size: int) -> Any:
    """A text column's cells cut to ``size`` characters, as an array."""
    import numpy as np  # noqa: PLC0415
    import pandas as pd  # noqa: PLC0415

    codes, uniques = pd.factorize(column)
    return np.array([str(u)[:size] for u in uniques] + [""], dtype=object)[codes]


def _pairs(first: Any, second: Any) -> tuple[Any, list[tuple[str, str]]]:
    """Rows numbered by their pair of cells, in the order the pairs first came; the pairs."""
    import numpy as np  # noqa: PLC0415
    import pandas as pd  # noqa: PLC0415

    a, left = pd.factorize(first)
    b, right = pd.factorize(second)
    codes, seen = pd.factorize(a.astype(np.int64) * max(len(right), 1) + b)
    width = max(len(right), 1)
    return codes, [(str(left[c // width]), str(right[c % width])) for c in seen]


def _wanted(frame: Any, vms: set[str] | None, start: float, end: float) -> Any:
    """The rows of the qubes and times asked for."""
    t = frame["t"].to_numpy()
    keep = (t >= start) & (t <= end)
    if vms is not None:
        keep &= _where(frame["vm"], lambda vm: vm in vms)
    return frame if keep.all() else frame[keep]


def summarize_unit(
    unit: Path, vms: set[str] | None, start: float, end: float, today: date
) -> Summary:
    """What the first screen needs from one day folder or archive."""
    summary = Summary()
    day = _day_of(unit)
    label = day.isoformat() if day else unit.name
    try:
        for name, opener in days.day_members(unit):
            daily = _FILES.get(name)
            if daily is None:
                continue
            summary.views_read |= name == "views.csv"
            if name in _COLUMNAR:  # the big files: a frame by the decoder's fast path
                from sysmon.commands.report.frames import read_frame  # noqa: PLC0415

                frame, skipped = read_frame(opener, daily, _COLUMNAR[name])
                for field in ("unreadable", "wrong_width", "bad_time", "not_sysmon"):
                    setattr(
                        summary.skipped,
                        field,
                        getattr(summary.skipped, field) + getattr(skipped, field),
                    )
                summary.add_rows(name, _wanted(frame, vms, start, end))
                continue
            with opener() as raw:
                lent = io.BufferedReader(_Lent(raw), 1 << 16)
                for row in decode_untrusted(lent, daily, summary.skipped):
                    vm = row.cells[_VM]
                    if (vms is not None and vm not in vms) or not start <= row.ts <= end:
                        continue
                    summary.add_row(name, vm, row.ts, row.cells)
    except UNREADABLE as exc:
        summary.archive.append((label, f"cannot be read ({exc})"))
        return summary
    summary.archive.append((label, delivery(unit, today)))
    return summary


def summarize(
    units: Iterable[Path],
    vms: set[str] | None,
    start: float,
    end: float,
    today: date | None = None,
    *,
    workers: int | None = None,
) -> Summary:
    """Read what the first screen needs, several days at a time, joined in day order."""
    today = today or datetime.now(UTC).date()
    merged = Summary()
    for part in in_order(summarize_unit, list(units), vms, start, end, today, workers=workers):
        merged.join(part)
    return merged


def _disagreeing(summary: Summary) -> list[str]:
    """The qubes whose views disagree, the most disagreeing polls first.

    Disposables share one place (the most disagreeing of them), the rest
    after every named qube: any qube may start disposables, each free to
    disagree all day, and six of them took every place on the list.
    """
    ranked = sorted(summary.views, key=lambda vm: (-summary.views[vm].total(), vm))
    later = [vm for vm in ranked if looks_disposable(vm)][1:]
    behind = set(later)
    return [vm for vm in ranked if vm not in behind] + later


def draw_views(summary: Summary, out: Path) -> dict[str, bytes]:
    """Per disagreeing qube with points (the first :data:`SHOWN`), its views' chart.

    Written as ``views-N.png`` into ``out`` (N: its place in the list; a
    qube's name never names a file) and returned, by qube, for the page.
    """
    charted = [vm for vm in _disagreeing(summary) if vm in summary.view_points][:SHOWN]
    if not charted:
        return {}
    plt = import_pyplot()
    out.mkdir(parents=True, exist_ok=True)
    charts: dict[str, bytes] = {}
    for n, vm in enumerate(charted, 1):
        png = _draw_view(plt, vm, summary.view_points[vm])
        write_whole(out / f"views-{n}.png", png)
        charts[vm] = png
    return charts


def _draw_view(plt: Any, vm: str, points: Points) -> bytes:
    """Both views of one qube: CPU on one axis; memory, and traffic if any, below."""
    import numpy as np  # noqa: PLC0415

    bins = Bins(
        float(points.first * points.width), float(points.width), points.last - points.first + 1
    )
    grid = np.zeros((bins.count, 2 + 2 * len(_VIEW_COLUMNS)))
    for key, sums in points.buckets.items():
        grid[key - points.first] = sums
    with np.errstate(invalid="ignore", divide="ignore"):
        counts = grid[:, 3::2]
        means = np.where(counts > 0, grid[:, 2::2] / counts, np.nan)
        # Bytes per tick summed over a bucket: a rate, comparable between the two.
        rates = np.where(counts[:, 4:] > 0, grid[:, 10::2] / points.width / 1024, np.nan)
    traffic = bool(np.isfinite(rates).any())
    heights = [2.4, 1.3] + ([1.3] if traffic else [])
    fig, axes = plt.subplots(
        len(heights), 1, sharex=True, figsize=(11, 1.2 + sum(heights)), constrained_layout=True,
        gridspec_kw={"height_ratios": heights},
    )  # fmt: skip
    edges = bins.edges(np)
    middles = (edges[:-1] + edges[1:]) / 2
    panels = [
        (axes[0], "CPU, % of its vCPUs", means[:, 0], means[:, 1], "Xen sees"),
        (axes[1], "memory, MiB", means[:, 2] / 1024, means[:, 3] / 1024, "Xen gives"),
    ]
    if traffic:
        panels.append((axes[2], "traffic, KiB/s", rates[:, 0], rates[:, 1], "its netvm carried"))
    # Buckets with a disagreeing tick, as runs [begin, end): one shaded span each.
    marked = np.concatenate(([0], (grid[:, 1] > 0).astype(int), [0]))
    changes = np.flatnonzero(np.diff(marked))
    runs = list(zip(changes[::2], changes[1::2], strict=True))
    for ax, unit, own, other, whose in panels:
        highest = 0.0
        for values, label in ((own, "the qube reports"), (other, whose)):
            finite = np.isfinite(values)
            if finite.any():
                highest = max(highest, float(np.nanmax(values)))
            style = "o" if finite.sum() == 1 else "-"
            ax.plot(middles, values, style, markersize=3, linewidth=1.2, label=label)
        for begin, end in runs:
            ax.axvspan(edges[begin], edges[end], color="#d62728", alpha=0.12, linewidth=0)
        ax.set_ylabel(unit, fontsize=8)
        ax.set_ylim(0, highest * 1.15 if highest > 0 else 1.0)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8, frameon=False, ncol=2)
    axes[-1].set_xlim(edges[0], edges[-1])
    _time_axis(axes[-1], bins)
    axes[0].set_title(
        f"the mean over {_duration(points.width)}; shaded: a tick in it where the views disagreed "
        "(a signal to look into, not a verdict)",
        loc="left", fontsize=9,
    )  # fmt: skip
    fig.suptitle(f"{_label(vm)}: its own report and what Xen saw", fontsize=12, x=0.01, ha="left")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def _text(value: str) -> str:
    shown = strip_controls(value)
    return html.escape(shown if len(shown) <= MAX_TEXT else shown[: MAX_TEXT - 1] + "…")


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n:,} times"


def _more(total: int, anchor: str, what: str) -> str:
    hidden = total - SHOWN
    if hidden <= 0:
        return ""
    return f"<li>and {hidden:,} more {what}: <a href='#{anchor}'>below</a></li>"


def render_summary(summary: Summary, charts: dict[str, bytes] | None = None) -> str:
    """The first screen as HTML: short lists with links to the charts below.

    ``charts``: :func:`draw_views`'s, shown under the list of disagreeing qubes.
    """
    charts = charts or {}
    anchors = {vm: f"views-{n}" for n, vm in enumerate(charts, 1)}
    parts = ["<section id='attention'><h2>What needs attention</h2>"]
    failing = sorted(summary.failed, key=lambda vm: (-sum(summary.failed[vm].values()), vm))
    parts.append(
        "<h3>Polls that failed (<a href='#failures'>chart</a>)</h3><ul>"
        if failing
        else "<h3>Polls</h3><ul><li>every poll answered (or was skipped while busy)</li>"
    )
    for vm in failing[:SHOWN]:
        counts = summary.failed[vm]
        kinds = ", ".join(f"{_text(k)} {n:,}" for k, n in counts.most_common(3))
        parts.append(
            f"<li><b>{_text(vm)}</b>: {sum(counts.values()):,} of {summary.polls[vm]:,} "
            f"polls failed ({kinds})</li>"
        )
    parts.append(_more(len(failing), "failures", "qubes") + "</ul>")
    full = sorted(
        (k for k, (_t, last, peak) in summary.disks.items() if peak >= DISK_FULL),
        key=lambda k: (-summary.disks[k][1], k),
    )
    parts.append(f"<h3>Disks at {DISK_FULL:g} % or more (<a href='#disk'>chart</a>)</h3><ul>")
    if not full:
        parts.append(f"<li>none reached {DISK_FULL:g} %</li>")
    for vm, mount in full[:SHOWN]:
        t, last, peak = summary.disks[(vm, mount)]
        when = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M")
        parts.append(
            f"<li><b>{_text(vm)}</b> {_text(mount)}: {last:g} % at {when}"
            + (f" (peak {peak:g} %)" if peak > last else "")
            + "</li>"
        )
    parts.append(_more(len(full), "disk", "filesystems") + "</ul>")
    parts.append("<h3>Rules that fired (<a href='#alerts'>alerts</a>)</h3><ul>")
    if not summary.rules:
        parts.append("<li>none</li>")
    fired = sorted(summary.rules.items(), key=lambda r: (-r[1].total(), r[0]))
    for rule, per_vm in fired[:SHOWN]:
        where = ", ".join(f"{_text(vm)} {n:,}" for vm, n in per_vm.most_common(4))
        rest = len(per_vm) - 4
        parts.append(
            f"<li><b>{_text(rule)}</b>: fired {_times(per_vm.total())} ({where}"
            + (f", {rest} more qubes" if rest > 0 else "")
            + ")</li>"
        )
    parts.append(_more(len(fired), "alerts", "rules") + "</ul>")
    total = summary.alerts.total() + summary.alerts_other
    parts.append(
        f"<h3>Alerts: {total:,} in {len(summary.alerts):,} kinds "
        "(<a href='#alerts'>chart</a>, <a href='#alert-list'>all</a>)</h3><ul>"
    )
    for key, n in summary.alerts.most_common(SHOWN):
        example = summary.example[key]
        # The handler's own notes carry the qube's boot time as their entry time.
        handler = example.startswith("sysmon-handler: ") or " sysmon-handler: " in example
        boot = HANDLER_NOTE if handler else ""
        parts.append(f"<li>{n:,}&times; <b>{_text(key[0])}</b>: {_text(example)}{boot}</li>")
    if summary.alerts_other:
        parts.append(f"<li>{summary.alerts_other:,} more of other kinds</li>")
    parts.append(_more(len(summary.alerts), "alert-list", "kinds") + "</ul>")
    if summary.views_read:
        parts.append("<h3>Qubes whose views disagree (<a href='#xen_cpu'>Xen's view</a>)</h3><ul>")
        if not summary.views:
            parts.append("<li>none: inside, Xen and the netvm agree</li>")
        ranked = _disagreeing(summary)
        for vm in ranked[:SHOWN]:
            flags = ", ".join(f"{_text(f)} {n:,}" for f, n in summary.views[vm].most_common())
            link = f" (<a href='#{anchors[vm]}'>chart</a>)" if vm in anchors else ""
            parts.append(f"<li><b>{_text(vm)}</b>: {flags} polls{link}</li>")
        parts.append(_more(len(ranked), "xen_cpu", "qubes") + "</ul>")
        if charts:
            parts.append(
                "<p>Each chart: what the qube reports about itself against what Xen "
                "(and its netvm) saw. An honest qube's gap is small and brief (Xen also "
                "counts its kernel's and I/O time); a lasting gap is a signal to look "
                "into, not a verdict, and agreement proves nothing either (docs/views.md).</p>"
            )
        for vm, png in charts.items():
            encoded = base64.b64encode(png).decode()
            parts.append(
                f"<figure id='{anchors[vm]}'><img alt='views of {_text(vm)}' "
                f"src='data:image/png;base64,{encoded}'></figure>"
            )
        if summary.view_rows_other:
            parts.append(
                f"<p>{summary.view_rows_other:,} rows of views.csv not charted: past "
                f"{MAX_VIEW_QUBES} qubes.</p>"
            )
    parts.append("<h3>Archive delivery</h3><ul>")
    for day, line in summary.archive[-14:]:
        parts.append(f"<li>{_text(day)}: {_text(line)}</li>")  # a planted file's name
    if len(summary.archive) > 14:
        parts.append(f"<li>and {len(summary.archive) - 14} earlier days</li>")
    parts.append("</ul></section>")
    return "\n".join(parts)
