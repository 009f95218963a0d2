"""Reading day folders and archives for the report: every file once, a day per process.

Each daily file is read by the one decoder (:mod:`.frames`, pandas and numpy
its fast path; Debian packages python3-pandas, ``pip install 'sysmon[report]'``)
and reduced to the charts' points by :mod:`.reduce`.  Everything read is
untrusted text: cells are parsed as numbers or kept as text to be escaped,
never interpreted.  A row that cannot be read -- the decoder's skips (wrong
number of cells, a line past its limit, a time that is not one), a text cell
longer than any row sysmon writes, a time outside 1970-2199 -- is counted in
:attr:`Data.skipped`, never guessed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import attrs

from sysmon import schema
from sysmon.commands.progress import Progress
from sysmon.commands.report.workers import in_order
from sysmon.store.days import ArchiveError, archive_day, day_units


class ReportError(Exception):
    """The report cannot be made; the message says why."""


def import_pandas() -> Any:
    """Pandas (and numpy), or a clear :class:`ReportError`."""
    try:
        import pandas as pd  # noqa: PLC0415
    except ImportError:
        raise ReportError(
            "sysmon report needs pandas and matplotlib: pip install 'sysmon[report]', "
            "or apt-get install python3-pandas python3-matplotlib"
        ) from None
    return pd


def parse_when(text: str) -> float:
    """``YYYY-MM-DD`` or ``YYYY-MM-DDTHH:MM[:SS][Z]`` (UTC) as epoch seconds."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ReportError(f"not a UTC date or time: {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    elif when.utcoffset():
        raise ReportError(f"not a UTC date or time: {text!r}")
    return when.timestamp()


#: Times a report can draw: 1970 up to 2200 (matplotlib has no year 0 or 10000).
FIRST_T, LAST_T = 0.0, 7_258_118_400.0
#: Lines one qube may have in one chart (mounts); a qube inventing names gets no more.
MAX_SERIES = 8
#: No cell of a row sysmon writes is longer: a longer one is not ours.
MAX_CELL = schema.MAX_ROW_BYTES
#: The values the page draws of each file it reads (qubes.csv it does not); the
#: text columns (the qube, labels, states, messages) come from the schema.
NUMBERS = {
    schema.SYSTEM: ("cpu_user", "cpu_system", "mem_used_kb"),
    schema.NETWORK: ("rx_bytes", "tx_bytes"),
    schema.CONNECTIONS: ("tcp_established",),
    schema.DISK: ("used_kb", "avail_kb"),
    schema.XEN: ("cpu_usage", "memory_kb"),
    schema.SCRAPES: (),
    schema.ALERTS: (),
}


@attrs.define(eq=False)
class Series:
    """Points of one line: times (epoch s) and values, numpy arrays in time order."""

    t: Any
    v: Any


@attrs.define
class Data:
    """What the report shows, per qube (disk: per qube and mount)."""

    cpu: dict[str, Series] = attrs.field(factory=dict)
    mem: dict[str, Series] = attrs.field(factory=dict)
    rx: dict[str, Series] = attrs.field(factory=dict)
    tx: dict[str, Series] = attrs.field(factory=dict)
    tcp: dict[str, Series] = attrs.field(factory=dict)
    disk: dict[tuple[str, str], Series] = attrs.field(factory=dict)
    xen_cpu: dict[str, Series] = attrs.field(factory=dict)
    xen_mem: dict[str, Series] = attrs.field(factory=dict)
    failures: dict[str, Series] = attrs.field(factory=dict)
    health: dict[str, Counter[str]] = attrs.field(factory=dict)
    alerts: list[tuple[float, str, str]] = attrs.field(factory=list)
    rows: int = 0
    #: Rows that could not be read (see the module's docstring).
    skipped: int = 0
    #: Rows of mounts past :data:`MAX_SERIES` of a qube, not drawn.
    cut_series: int = 0

    def lines(self) -> dict[str, dict[Any, Series]]:
        """Every drawn metric by name."""
        return {
            name: getattr(self, name)
            for name in ("cpu", "mem", "rx", "tx", "tcp", "disk", "xen_cpu", "xen_mem", "failures")
        }


@attrs.define
class _Part:
    """What one day folder or archive gave: plain arrays, cheap to send back from a worker."""

    #: metric -> key -> (times, values), keys in the order they first came.
    series: dict[str, dict[Any, tuple[Any, Any]]] = attrs.field(factory=dict)
    #: qube -> (times, rx, tx): rates within the day (KiB/s), interfaces summed.
    net: dict[str, tuple[Any, Any, Any]] = attrs.field(factory=dict)
    #: (qube, interface) -> (time, rx, tx): its first and last counters of the day.
    net_first: dict[tuple[str, str], tuple[float, float, float]] = attrs.field(factory=dict)
    net_last: dict[tuple[str, str], tuple[float, float, float]] = attrs.field(factory=dict)
    health: Counter[tuple[str, str]] = attrs.field(factory=Counter)
    alerts: list[tuple[float, str, str]] = attrs.field(factory=list)
    rows: int = 0
    skipped: int = 0


def units(paths: Iterable[Path]) -> list[Path]:
    """Day folders and archives, one per day (a folder wins over its archive), by day."""
    try:
        return day_units(paths)
    except ArchiveError as exc:
        raise ReportError(str(exc)) from None


def load(
    paths: Iterable[Path],
    vms: set[str] | None,
    start: float,
    end: float,
    *,
    workers: int | None = None,
    progress: Progress | None = None,
) -> Data:
    """Read every day once, several days at a time; keep what the charts need.

    Days are joined in order as they come back, so memory holds the week's
    points once, not every day's rows.
    """
    import_pandas()
    from sysmon.commands.report.reduce import Merge, read_share, shares  # noqa: PLC0415

    days = units(paths)
    work = shares(days)
    merged = Merge()
    parts = in_order(read_share, work, vms, start, end, workers=workers)
    for part in _each_day(days, [unit for unit, _ in work], parts, progress or Progress.quiet()):
        merged.add(part)
    return merged.data()


def _each_day(
    days: list[Path], of: list[Path], parts: Iterable[_Part], progress: Progress
) -> Iterator[_Part]:
    """``parts`` (each of the day ``of`` it), telling each day read and the rows so far."""
    rows = done = 0
    for n, (unit, part) in enumerate(zip(of, parts, strict=False), 1):
        rows += part.rows
        yield part
        if n < len(of) and of[n] == unit:
            continue  # more of the day to come
        done += 1
        day = archive_day(unit.name) if unit.is_file() else _folder_day(unit)
        progress.update(f"read day {done}/{len(days)}{f' {day}' if day else ''}", rows, "rows")


def _folder_day(unit: Path) -> date | None:
    try:
        return date.fromisoformat(unit.name)
    except ValueError:
        return None
